import json
import os
import threading

import pandas as pd
import pytest
import yaml

from glio_kit.run import batch as B
from glio_kit.run import grid as G
from glio_kit.errors import GlioKitError
from glio_kit.run.rundir import RunDir
from glio_kit.run.steps import by_notebook

COMMON = {"profile", "run_dir", "seed", "device", "overwrite"}
DECLARED = {
    "01_data_prep.ipynb": COMMON | {"train_healthy_dir", "test_healthy_dir", "test_tumor_dir",
                                    "image_size", "n_slices"},
    "02_train_dcgan.ipynb": COMMON | {"epochs", "lr", "batch_size"},
    "03_scoring.ipynb": COMMON | {"lam", "mapping", "mapping_steps"},
    "04_residuals.ipynb": COMMON | {"median_filter"},
    "05_metrics.ipynb": COMMON | {"fpr_target"},
}


class FakeRunner:
    """Stands in for runner.run_chain: records calls, writes step records and outputs."""

    def __init__(self, fail=lambda params: False):
        self.calls = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, run_dir, profile, params, notebooks=None, force=False):
        nbs = notebooks or list(DECLARED)
        allowed = set().union(*[DECLARED[n] for n in nbs])
        assert set(params) <= allowed, f"undeclared parameters passed: {set(params) - allowed}"
        with self.lock:
            self.calls.append(dict(run_dir=str(run_dir), notebooks=list(nbs), params=dict(params),
                                   force=force))
        run = RunDir(run_dir)
        for nb in nbs:
            step = by_notebook(nb).name
            if step == "score" and self.fail(params):
                raise RuntimeError("CUDA out of memory\nsecond line of the traceback")
            run.claim(step, {k: v for k, v in params.items() if k in DECLARED[nb]}, overwrite=True)
            if step == "prep":
                (run / "cache").mkdir(exist_ok=True)
                (run / "cache" / "images.npy").write_bytes(b"x" * 100)
            if step == "train":
                (run / "train").mkdir(exist_ok=True)
                (run / "train" / "generator.pt").write_bytes(b"g")
                (run / "figures" / "train_losses.png").write_bytes(b"png")
            if step == "metrics":
                lam = float(params.get("lam", 0))
                (run / "metrics.json").write_text(json.dumps(dict(
                    subject_auc=0.8 + lam / 10, accuracy=0.75, precision=0.7, recall=0.8, pixel_dice=0.3,
                    ci=dict(subject_auc=[0.7, 0.9], accuracy=[0.6, 0.85]), baseline=dict(subject_auc=0.6))))
            run.mark_done(step)
        return [dict(notebook=nb, status="ran", seconds=0.0) for nb in nbs]

    def run_calls(self):
        return [c for c in self.calls if f"{os.sep}{B.SHARED_DIR}{os.sep}" not in c["run_dir"]]

    def prefix_calls(self):
        return [c for c in self.calls if f"{os.sep}{B.SHARED_DIR}{os.sep}" in c["run_dir"]]


def write_grid(tmp_path, grid, base=None, profile="smoke"):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(dict(profile=profile, out=str(tmp_path / "batch"),
                                        base=base or {"seed": 0}, grid=grid)))
    return path


# --------------------------------------------------------------- pure functions
def test_grid_expansion_and_names():
    pts = G.expand_grid({"lam": [0, 0.1, 0.5], "mapping": ["iterative", "encoder"]})
    assert len(pts) == 6 and pts[0] == {"lam": 0, "mapping": "iterative"} and pts[1]["mapping"] == "encoder"
    assert G.run_name({"lam": 0.1, "mapping": "encoder"}) == "lam=0.1_mapping=encoder"
    assert G.run_name({"image_size": [64, 64]}) == "image_size=64x64"
    assert G.run_name({"data": "/x/y z"}) == "data=-x-y-z"
    assert G.run_name({"amp": True}) == "amp=true"
    assert G.expand_grid({}) == [{}] and G.run_name({}) == "base"


def test_examples_are_valid_grids():
    from glio_kit.paths import project_root

    demo = G.load_grid(project_root() / "examples" / "grid.yaml")
    assert demo["profile"] == "demo" and len(G.plan_runs(demo)) == 6
    smoke = G.load_grid(project_root() / "examples" / "grid_smoke.yaml")
    assert smoke["profile"] == "smoke" and len(G.plan_runs(smoke)) == 4


def test_bad_grid_files(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("profile: smoke\nout: x\ngrid:\n  lam: 0.1\n")
    with pytest.raises(GlioKitError, match="list"):
        G.load_grid(p)
    p.write_text("profile: smoke\ngrid: {lam: [0]}\n")
    with pytest.raises(GlioKitError, match="out"):
        G.load_grid(p)
    p.write_text("profile: fast\nout: x\n")
    with pytest.raises(GlioKitError, match="profile"):
        G.load_grid(p)
    with pytest.raises(GlioKitError, match="not found"):
        G.load_grid(tmp_path / "missing.yaml")


def test_prefix_sharing_rules():
    def runs(grid, base=None):
        spec = dict(profile="smoke", out="x", base=base or {"seed": 0}, grid=grid)
        return G.plan_runs(spec)

    # lam and mapping are parameters of later notebooks: all four runs share one prefix
    r = runs({"lam": [0, 0.5], "mapping": ["iterative", "encoder"]})
    groups = G.share_prefixes(r, DECLARED, "smoke")
    assert list(groups.values()) == [[x["name"] for x in r]]
    # epochs is a training parameter: runs with different epochs never share
    r = runs({"epochs": [1, 2], "lam": [0, 0.5]})
    groups = G.share_prefixes(r, DECLARED, "smoke")
    assert sorted(map(sorted, groups.values())) == [["epochs=1_lam=0", "epochs=1_lam=0.5"],
                                                    ["epochs=2_lam=0", "epochs=2_lam=0.5"]]
    assert len(set(groups)) == 2
    # a grid over epochs only: nobody shares
    assert G.share_prefixes(runs({"epochs": [1, 2]}), DECLARED, "smoke") == {}
    # the profile is part of the prefix, run_dir is not
    a = {"seed": 0, "epochs": 1, "run_dir": "a"}
    assert G.prefix_key(a, DECLARED, "smoke") == G.prefix_key(dict(a, run_dir="b"), DECLARED, "smoke")
    assert G.prefix_key(a, DECLARED, "smoke") != G.prefix_key(a, DECLARED, "demo")
    assert (G.prefix_params(dict(a, lam=0.3), DECLARED, "smoke")
            == {"epochs": 1, "seed": 0, "profile": "smoke"})


# ---------------------------------------------------------------- running a batch
def test_batch_shares_prefix_and_resumes(tmp_path):
    grid = write_grid(tmp_path, {"lam": [0, 0.5], "mapping": ["iterative", "encoder"]})
    fake = FakeRunner()
    table = B.run_batch(grid, workers=2, executor=fake, declared=DECLARED, progress=False)
    out = tmp_path / "batch"
    assert table.status.tolist() == ["ok"] * 4
    prefix = fake.prefix_calls()
    assert len(prefix) == 1 and prefix[0]["notebooks"] == ["01_data_prep.ipynb", "02_train_dcgan.ipynb"]
    assert "lam" not in prefix[0]["params"] and "mapping" not in prefix[0]["params"]
    runs = fake.run_calls()
    assert len(runs) == 4
    assert all(c["notebooks"] == ["03_scoring.ipynb", "04_residuals.ipynb", "05_metrics.ipynb"] for c in runs)
    shared = out / B.SHARED_DIR / table.shared_prefix[0]
    for name in table.run:
        d = out / name
        assert os.path.samefile(d / "cache" / "images.npy", shared / "cache" / "images.npy")  # hard link
        assert os.path.samefile(d / "train" / "generator.pt", shared / "train" / "generator.pt")
        assert (d / "figures" / "train_losses.png").exists() and RunDir(d).is_done("train")
        assert RunDir(d).is_done("metrics")
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.run) == ["lam=0_mapping=iterative", "lam=0_mapping=encoder",
                                 "lam=0.5_mapping=iterative", "lam=0.5_mapping=encoder"]
    assert summary.subject_auc.tolist() == pytest.approx([0.8, 0.8, 0.85, 0.85])
    assert summary.baseline_auc.tolist() == pytest.approx([0.6] * 4)
    assert (out / "summary.md").exists() and (out / "summary.png").stat().st_size > 1000

    # resume: nothing left to do, the executor is not called
    fake2 = FakeRunner()
    table2 = B.run_batch(grid, workers=2, executor=fake2, declared=DECLARED, progress=False)
    assert fake2.calls == [] and set(table2.status) == {"done earlier"}
    assert table2.subject_auc.tolist() == pytest.approx([0.8, 0.8, 0.85, 0.85])

    # one run lost its metrics: only that run's notebooks execute again
    (out / "lam=0.5_mapping=iterative" / "metrics.json").unlink()
    fake3 = FakeRunner()
    B.run_batch(grid, workers=1, executor=fake3, declared=DECLARED, progress=False)
    assert [c["run_dir"] for c in fake3.run_calls()] == [str(out / "lam=0.5_mapping=iterative")]

    # force: everything again
    fake4 = FakeRunner()
    B.run_batch(grid, workers=2, executor=fake4, declared=DECLARED, force=True, progress=False)
    assert len(fake4.run_calls()) == 4 and all(c["force"] for c in fake4.calls)


def test_unshared_runs_execute_every_notebook(tmp_path):
    grid = write_grid(tmp_path, {"epochs": [1, 2]})
    fake = FakeRunner()
    table = B.run_batch(grid, workers=2, executor=fake, declared=DECLARED, progress=False)
    assert fake.prefix_calls() == [] and len(fake.run_calls()) == 2
    assert all(len(c["notebooks"]) == 5 for c in fake.run_calls())
    assert set(table.status) == {"ok"} and set(table.shared_prefix) == {""}


def test_failed_run_is_reported_and_others_go_on(tmp_path):
    grid = write_grid(tmp_path, {"lam": [0, 0.5], "mapping": ["iterative", "encoder"]})
    fake = FakeRunner(fail=lambda p: p.get("lam") == 0.5 and p.get("mapping") == "encoder")
    table = B.run_batch(grid, workers=2, executor=fake, declared=DECLARED, progress=False)
    st = dict(zip(table.run, table.status))
    assert st.pop("lam=0.5_mapping=encoder") == "failed" and set(st.values()) == {"ok"}
    row = table[table.run == "lam=0.5_mapping=encoder"].iloc[0]
    assert row.error == "RuntimeError: CUDA out of memory" and pd.isna(row.subject_auc)
    md = (tmp_path / "batch" / "summary.md").read_text()
    assert "failed: RuntimeError: CUDA out of memory" in md
    assert "CUDA out of memory" in (tmp_path / "batch" / "errors" / "lam=0.5_mapping=encoder.txt").read_text()
    assert (tmp_path / "batch" / "summary.png").exists()
    # resuming retries only the failed run
    fake2 = FakeRunner()
    table2 = B.run_batch(grid, executor=fake2, declared=DECLARED, progress=False)
    assert [os.path.basename(c["run_dir"]) for c in fake2.run_calls()] == ["lam=0.5_mapping=encoder"]
    assert set(table2.status) == {"ok", "done earlier"}


def test_failed_prefix_fails_its_runs(tmp_path):
    grid = write_grid(tmp_path, {"lam": [0, 0.5]})

    def broken(run_dir, profile, params, notebooks=None, force=False):
        raise ValueError("no subjects found in /data/x")

    table = B.run_batch(grid, executor=broken, declared=DECLARED, progress=False)
    assert set(table.status) == {"failed"}
    assert all(e == "shared prefix failed: ValueError: no subjects found in /data/x" for e in table.error)


def test_undeclared_grid_parameter_stops_early(tmp_path):
    grid = write_grid(tmp_path, {"lamda": [0, 0.5]})
    fake = FakeRunner()
    with pytest.raises(GlioKitError, match="lamda"):
        B.run_batch(grid, executor=fake, declared=DECLARED, progress=False)
    assert fake.calls == []


def test_seed_copies_when_links_fail(tmp_path, monkeypatch):
    src = RunDir(tmp_path / "shared")
    (src / "cache").mkdir()
    (src / "cache" / "a.npy").write_bytes(b"abc")
    src.claim("prep", {})
    src.mark_done("prep")

    def no_link(a, b):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    files = B.seed_from_prefix(src.path, tmp_path / "run")
    assert (tmp_path / "run" / "cache" / "a.npy").read_bytes() == b"abc"
    assert not os.path.samefile(tmp_path / "run" / "cache" / "a.npy", src / "cache" / "a.npy")
    assert RunDir(tmp_path / "run").is_done("prep") and len(files) >= 3


def test_synthetic_cohorts_prepared_once_per_seed(monkeypatch):
    import glio_kit.data.preprocess as P

    made = []
    monkeypatch.setattr(P, "resolve_cohort", lambda s, *a, **k: made.append((s.profile, s.seed)))
    spec = dict(profile="smoke", out="x", base={}, grid={"seed": [0, 1], "lam": [0, 0.5]})
    assert B.prepare_synthetic_cohorts(G.plan_runs(spec), "smoke", say=lambda *a: None) == 2
    assert made == [("smoke", 0), ("smoke", 1)]
    made.clear()
    spec["base"] = {"train_healthy_dir": "a", "test_healthy_dir": "b", "test_tumor_dir": "c"}
    assert B.prepare_synthetic_cohorts(G.plan_runs(spec), "smoke", say=lambda *a: None) == 0 and made == []

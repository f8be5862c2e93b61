"""A run folder you can trust: `glio-kit run` skips a step only when nothing it depends on changed,
stops naming every changed value otherwise, never records a failed step as done, resolves paths
against the user's folder and stops its kernel with it.

Most tests replace papermill by a fake notebook that does what each step's function does with
the step record (claim with the same identity, write the products, mark done), so the runner's
decisions are tested in milliseconds. One module-scoped real `glio-kit run` in the smoke profile
(into a folder copied for each variant) checks the same end to end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import papermill as pm
import pytest

from glio_kit.run import runner
from glio_kit.run.cli import main
from glio_kit.run.config import get_config
from glio_kit.errors import GlioKitError, RunFolderError
from glio_kit.run.kernels import TrackedKernelManager
from glio_kit.data.preprocess import cohort_folders
from glio_kit.run.rundir import RunDir
from glio_kit.run.steps import STEPS, by_notebook

NOTEBOOKS = [s.notebook for s in STEPS]
PRODUCTS = {"prep": "cache/prep.json", "train": "train/checkpoints/last.pt",
            "score": "score/slice_scores.csv", "residuals": "figures/04_figure5_tumour.png",
            "metrics": "metrics.json"}


class FakeNotebooks:
    """Stands in for papermill.execute_notebook: each notebook claims its step as the step's
    function does (same identity, same extras), writes its products and marks the step done.

    fail : {notebook: "before" | "after"}: raise a cell error before the claim (a typo'd
    folder) or after the step was marked done (a figure cell failing)."""

    def __init__(self, fail=None, interrupt=None):
        self.calls, self.fail, self.interrupt, self.env = [], dict(fail or {}), interrupt, []

    def __call__(self, input_path, output_path, parameters=None, **kw):
        name = Path(input_path).name
        self.calls.append((name, dict(parameters), kw))
        self.env.append(os.environ.get("GLIO_KIT_DATA"))
        Path(output_path).write_text("{}")  # papermill writes the executed copy, even on failure
        if self.interrupt == name:
            raise KeyboardInterrupt
        if self.fail.get(name) == "before":
            raise pm.PapermillExecutionError(3, 3, "", "InputError", "folder does not exist", [])
        st = by_notebook(name)
        knobs = {k: v for k, v in parameters.items() if k in st.settings.knobs()}
        s = get_config(parameters["profile"], **knobs)
        run = RunDir(parameters["run_dir"])
        extra = None
        if st.name == "prep":
            extra = cohort_folders(s.prep, *(parameters.get(k, "") for k in
                                             ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir")))
        elif st.name == "train":
            extra = {"image_size": run.record("prep")["params"]["image_size"]}
        overwrite = parameters.get("overwrite", False) or st.name == "residuals"
        if not run.claim_step(st.name, s.step(st.name), extra=extra, overwrite=overwrite):
            product = run / PRODUCTS[st.name]
            product.parent.mkdir(parents=True, exist_ok=True)
            product.write_text(f"{st.name} {parameters}")
            run.mark_done(st.name)
        if self.fail.get(name) == "after":
            raise pm.PapermillExecutionError(5, 5, "", "ZeroDivisionError", "division by zero", [])
        return {}

    def ran(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("GLIO_KIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("GLIO_KIT_QUIET", "1")
    nbs = FakeNotebooks()
    monkeypatch.setattr(pm, "execute_notebook", nbs)
    return nbs


def chain(run_dir, fake, **kw):
    """run_chain in the smoke profile; returns the notebooks the fake executed this time."""
    before = len(fake.calls)
    runner.run_chain(run_dir, "smoke", **kw)
    return [c[0] for c in fake.calls[before:]]


def test_rerun_skips_unchanged_steps_and_refuses_changed_values(tmp_path, fake):
    run_dir = tmp_path / "run"
    assert chain(run_dir, fake) == NOTEBOOKS
    assert chain(run_dir, fake) == []  # nothing changed: every step skipped
    records = {p.name: p.read_bytes() for p in (run_dir / "steps").iterdir()}
    with pytest.raises(RunFolderError) as err:
        chain(run_dir, fake, params={"lam": 0.5, "epochs": 85})
    msg = str(err.value)
    assert "epochs: 2 -> 85" in msg and "lam: 0.1 -> 0.5" in msg, msg
    assert "new folder" in msg and "--force train" in msg  # the two ways on, from the first changed step
    assert "residuals" not in msg  # steps that only read a changed step are not listed
    assert len(fake.calls) == 2 * len(NOTEBOOKS) - len(NOTEBOOKS)  # nothing ran
    assert {p.name: p.read_bytes() for p in (run_dir / "steps").iterdir()} == records  # nothing written


def test_force_on_one_step_redoes_every_step_after_it(tmp_path, fake):
    run_dir = tmp_path / "run"
    chain(run_dir, fake)
    old = {s.name: RunDir(run_dir).record(s.name)["attempt"] for s in STEPS}
    assert chain(run_dir, fake, params={"lam": 0.5}, force="score") == NOTEBOOKS[2:]
    new = {s.name: RunDir(run_dir).record(s.name)["attempt"] for s in STEPS}
    assert [n for n in old if old[n] != new[n]] == ["score", "residuals", "metrics"]
    assert RunDir(run_dir).record("score")["params"]["lam"] == 0.5
    # --force on notebook 03 alone redoes 04 and 05 too, so no stale metrics.json survives
    assert chain(run_dir, fake, params={"lam": 0.5}, notebooks=["03_scoring.ipynb"],
                 force=True) == NOTEBOOKS[2:]
    assert chain(run_dir, fake, params={"lam": 0.5}) == []
    with pytest.raises(GlioKitError, match="--force scoring: no such step"):
        chain(run_dir, fake, force="scoring")
    # steps after it that never ran in the folder are not added (a batch's shared prefix folder)
    prefix = ["01_data_prep.ipynb", "02_train_dcgan.ipynb"]
    assert chain(tmp_path / "prefix", fake, notebooks=prefix) == prefix
    assert chain(tmp_path / "prefix", fake, notebooks=prefix, force=True) == prefix


def test_step_redone_in_a_notebook_makes_later_steps_refuse(tmp_path, fake):
    """Scoring redone alone with the same values (notebook 03 with overwrite=True): the metrics
    made from the old scores are not reported as current."""
    run_dir = tmp_path / "run"
    chain(run_dir, fake)
    run, score = RunDir(run_dir), get_config("smoke").score
    run.mark_failed("score", "redo", status="stale")
    assert run.claim_step("score", score, overwrite=True) is False  # what notebook 03 does
    run.mark_done("score")
    with pytest.raises(RunFolderError) as err:
        chain(run_dir, fake)
    assert "metrics (05_metrics.ipynb): step 'score' was redone after this step ran" in str(err.value)
    assert "--force residuals" in str(err.value)
    assert chain(run_dir, fake, force="residuals") == NOTEBOOKS[3:]


def test_other_cohort_folder_is_refused(tmp_path, fake):
    folders = {}
    for k in ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir", "other_tumor"):
        folders[k] = tmp_path / k
        folders[k].mkdir()
    params = {k: str(v) for k, v in folders.items() if k != "other_tumor"}
    chain(tmp_path / "run", fake, params=params)
    with pytest.raises(RunFolderError) as err:
        chain(tmp_path / "run", fake, params=dict(params, test_tumor_dir=str(folders["other_tumor"])))
    assert "prep (01_data_prep.ipynb): test_tumor:" in str(err.value) and "other_tumor" in str(err.value)


def test_failed_notebook_is_never_done_and_runs_again(tmp_path, fake):
    """Notebook 01 fails after its step was marked done (a figure cell): the next run does not skip
    it (before: "done earlier" and its cache trained on)."""
    run_dir = tmp_path / "run"
    fake.fail = {"01_data_prep.ipynb": "after"}
    with pytest.raises(GlioKitError, match="01_data_prep.ipynb failed in cell 5: ZeroDivisionError"):
        chain(run_dir, fake)
    rec = RunDir(run_dir).record("prep")
    assert rec["status"] == "failed" and "ZeroDivisionError" in rec["error"]
    fake.fail = {}
    assert chain(run_dir, fake) == NOTEBOOKS


def test_failed_attempt_that_left_nothing_does_not_block_the_corrected_retry(tmp_path, fake):
    good, typo = tmp_path / "ixi_train", tmp_path / "ixi_trian"
    good.mkdir()
    params = dict(train_healthy_dir=str(good), test_healthy_dir=str(good), test_tumor_dir=str(good))
    # the typo is refused before anything starts (issue 20, point 7)
    with pytest.raises(GlioKitError, match="train_healthy_dir .*ixi_trian: no such folder"):
        chain(tmp_path / "run", fake, params=dict(params, train_healthy_dir=str(typo)))
    # an attempt that claimed the step, failed and left no cache is replaced without --force
    run = RunDir(tmp_path / "run")
    run.claim_step("prep", get_config("smoke").prep, extra={"train_healthy": str(typo)})
    run.mark_failed("prep", "InputError: folder does not exist")
    assert chain(tmp_path / "run", fake, params=params) == NOTEBOOKS
    assert run.record("prep")["params"]["train_healthy"] == str(good)


def test_interrupted_notebook_is_marked_failed(tmp_path, fake):
    run_dir = tmp_path / "run"
    chain(run_dir, fake)
    fake.interrupt = "03_scoring.ipynb"
    with pytest.raises(KeyboardInterrupt):
        chain(run_dir, fake, force="score")
    assert RunDir(run_dir).record("score")["status"] in ("failed", "stale")
    assert RunDir(run_dir).record("metrics")["status"] == "stale"
    fake.interrupt = None
    assert chain(run_dir, fake) == NOTEBOOKS[2:]  # the same values again: a retry, no --force needed


def test_missing_outputs_are_made_again(tmp_path, fake):
    run_dir = tmp_path / "run"
    chain(run_dir, fake)
    (run_dir / "metrics.json").unlink()
    (run_dir / "notebooks" / "04_residuals.ipynb").unlink()
    assert chain(run_dir, fake) == ["04_residuals.ipynb", "05_metrics.ipynb"]


def test_paths_are_taken_from_the_working_directory(tmp_path, fake, monkeypatch):
    """`--train-healthy data/ixi_train` from the user's folder, although the kernels run in notebooks/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLIO_KIT_DATA", "data")  # relative, as a user may set it
    for k in ("ixi_train", "ixi_test", "brats"):
        (tmp_path / "data" / k).mkdir(parents=True)
    assert main(["run", "--profile", "smoke", "--run-dir", "runs/r", "--train-healthy", "data/ixi_train",
                 "--test-healthy", "data/ixi_test", "-p", "test_tumor_dir=data/brats"]) == 0
    name, params, kw = fake.calls[0]
    assert params["train_healthy_dir"] == str(tmp_path / "data" / "ixi_train")
    assert params["test_tumor_dir"] == str(tmp_path / "data" / "brats")
    assert params["run_dir"] == str(tmp_path / "runs" / "r")
    assert kw["cwd"].endswith("notebooks") and kw["kernel_manager_class"] is TrackedKernelManager
    assert set(fake.env) == {str(tmp_path / "data")}  # the kernels see an absolute data folder
    assert os.environ["GLIO_KIT_DATA"] == "data"  # and the environment is put back
    assert RunDir("runs/r").record("prep")["params"]["test_healthy"] == str(tmp_path / "data" / "ixi_test")


def test_cli_refusal_names_the_value_and_exits_2(tmp_path, fake, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["run", "--profile", "smoke", "--run-dir", run_dir]) == 0
    assert main(["run", "--profile", "smoke", "--run-dir", run_dir, "-p", "mapping_steps=9"]) == 2
    err = capsys.readouterr().err
    assert "mapping_steps: 5 -> 9" in err and "--force score" in err


# ------------------------------------------------------------------ stopping the kernel
SLEEPER = """
import os, time
open({pid!r}, "w").write(str(os.getpid()))
time.sleep(120)
"""
DRIVER = """
import sys
import papermill as pm
from glio_kit.run.kernels import TrackedKernelManager, stop_kernels_on_signals
with stop_kernels_on_signals():
    pm.execute_notebook(sys.argv[1], sys.argv[2], kernel_name="python3", progress_bar=False,
                        kernel_manager_class=TrackedKernelManager)
"""


def _state(pid: int) -> str:
    """The process's state letter (R, S, Z, ...), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_runner_stops_its_kernel(tmp_path, sig):
    """The kernel runs in its own session, so a signal to the runner does not reach it; the
    runner stops it before exiting (without that it would still be running at that moment)."""
    import nbformat

    cell = nbformat.v4.new_code_cell(SLEEPER.format(pid=str(tmp_path / "pid")))
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "sleep.ipynb")
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "sleep.ipynb"),
                             str(tmp_path / "out.ipynb")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text():
                break
            time.sleep(0.1)
        kernel = int((tmp_path / "pid").read_text())
        assert _state(kernel) in ("R", "S")
        proc.send_signal(sig)
        proc.wait(timeout=30)
        assert _state(kernel) in ("", "Z"), f"kernel {kernel} still running after the runner stopped"
        if sig != signal.SIGINT:  # Ctrl-C: glio-kit's main says one line instead (tests/test_first_hour.py)
            assert "stopping the notebook's kernel" in proc.stderr.read().decode()
    finally:
        proc.kill()
        if (tmp_path / "pid").exists() and _state(int((tmp_path / "pid").read_text())) not in ("", "Z"):
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)


# ------------------------------------------------- files the kit wrote, found damaged
def test_atomic_write_leaves_the_old_file_whole_on_failure(tmp_path):
    from glio_kit.atomic import atomic_path, write_text

    target = write_text(tmp_path / "losses.csv", "epoch\n1\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("epo")  # killed half way
            raise RuntimeError("killed")
    assert target.read_text() == "epoch\n1\n" and sorted(os.listdir(tmp_path)) == ["losses.csv"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_damaged_checkpoint_is_named(tmp_path, damage):
    import torch

    from glio_kit.gan.checkpoints import checkpoint_path, load_models, resumable_checkpoint, save_checkpoint

    run = RunDir(tmp_path / "run")
    path = checkpoint_path(run)
    path.parent.mkdir(parents=True)
    save_checkpoint(dict(epoch=1, G={"w": torch.zeros(50_000)}, D={}, config={"epochs": 2}), path)
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"",
                      "foreign": b"PK\x03\x04 not a torch file"}[damage])
    for call in (lambda: resumable_checkpoint(run, {"epochs": 2}, 2), lambda: load_models(run)):
        with pytest.raises(RunFolderError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(str(path)) and "cannot be read" in msg and "--force train" in msg, msg
        assert "epoch_XXX.pt" in msg


def test_damaged_encoder_is_named(tmp_path):
    from glio_kit.detect.encoder import load_encoder

    run = RunDir(tmp_path / "run")
    (run / "score").mkdir()
    (run / "score" / "encoder.pt").write_bytes(b"")
    with pytest.raises(RunFolderError, match="encoder.pt: the checkpoint cannot be read.*--force score"):
        load_encoder(run)


def test_damaged_loss_log_is_named_and_written_atomically(tmp_path):
    from glio_kit.gan.loss_log import LOSSES, log_epoch, read_losses
    from glio_kit.gan.train import EpochStats

    run = RunDir(tmp_path / "run")
    (run / "train").mkdir()
    losses = log_epoch(run, read_losses(run), 1, EpochStats(1.0, 2.0, 0.5, 0.4, 64), 2.0)
    assert len(read_losses(run)) == 1 and sorted(os.listdir(run / "train")) == ["losses.csv"]
    for body in ("", "epoch,loss_d\n1,0.5\n"):  # a kill during a non-atomic rewrite; another file
        (run / LOSSES).write_text(body)
        with pytest.raises(RunFolderError, match="losses.csv: the training's loss log cannot be read"):
            read_losses(run)
    assert len(losses) == 1


@pytest.mark.parametrize("name", ["images.npy", "index.csv", "prep.json"])
def test_damaged_slice_cache_is_named(tmp_path, tiny_cohort, name):
    from glio_kit.data.cohort import discover
    from glio_kit.data.slice_cache import SliceCache, build_cache
    from glio_kit.data.preprocess import assign_splits

    settings = get_config("smoke").prep
    subjects = assign_splits(*(discover(tiny_cohort[k]) for k in ("train_healthy", "test_healthy",
                                                                    "test_tumor")), 0.25, 0)
    build_cache(subjects, tmp_path / "cache", settings, progress=False)
    f = tmp_path / "cache" / name
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(RunFolderError, match=f"slice cache is damaged: .*{name}.*--force prep"):
        SliceCache(tmp_path / "cache")


# ------------------------------------------------------ nothing of the user's deleted
def test_synth_overwrite_removes_only_the_cohorts_own_files(tmp_path):
    from glio_kit.data.synth import make_cohort

    small = dict(n_train_healthy=1, n_test_healthy=0, n_test_tumor=1, seed=0, voxel_size=8.0, progress=False,
                 workers=1)
    root = tmp_path / "cohort"
    make_cohort(root, **small)
    notes = root / "test_tumor" / "my_notes.txt"
    notes.write_text("mine")
    (root / "extra").mkdir()
    with pytest.raises(RunFolderError) as err:
        make_cohort(root, **dict(small, seed=1), overwrite=True)
    assert "test_tumor/my_notes.txt" in str(err.value) and "extra" in str(err.value)
    assert notes.read_text() == "mine" and json.loads((root / "cohort.json").read_text())[
        "parameters"]["seed"] == 0  # nothing changed
    notes.unlink()
    (root / "extra").rmdir()
    make_cohort(root, **dict(small, seed=1), overwrite=True)
    assert json.loads((root / "cohort.json").read_text())["parameters"]["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_batch_refuses_a_folder_of_the_users_and_reads_paths_from_the_working_directory(tmp_path,
                                                                                       monkeypatch):
    import yaml

    from glio_kit.run.batch import load_grid, run_batch

    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "summary.csv").write_text("my own table")
    grids = tmp_path / "grids"
    grids.mkdir()
    grid = grids / "g.yaml"
    grid.write_text(yaml.safe_dump(dict(profile="smoke", out="../results", test_tumor_dir="data/brats",
                                        grid=dict(lam=[0.0]))))
    monkeypatch.chdir(grids)  # paths come from where the command runs (issue 20, point 9)
    spec = load_grid(grid)
    assert spec["out"] == str(mine) and spec["test_tumor_dir"] == str(grids / "data" / "brats")
    monkeypatch.chdir(tmp_path)
    assert load_grid(grid)["out"] == str(tmp_path.parent / "results")
    monkeypatch.chdir(grids)

    def executor(*a, **k):
        raise AssertionError("nothing may run")

    with pytest.raises(GlioKitError, match="not empty and was not made by glio-kit batch.*summary.csv"):
        run_batch(grid, executor=executor, progress=False, cohorts=False)
    assert (mine / "summary.csv").read_text() == "my own table" and os.listdir(mine) == ["summary.csv"]


# ----------------------------------------------- end to end: two real `glio-kit run`s
COHORT_ARGS = ["--train-healthy", "data/train_healthy", "--test-healthy", "data/test_healthy",
               "--test-tumor", "data/test_tumor"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One real `glio-kit run` in the smoke profile on a tiny NIfTI cohort given by paths relative
    to the working directory (as the README's example does); variants work on copies."""
    import conftest

    home = tmp_path_factory.mktemp("user")
    conftest.write_tiny_cohort(home / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        mp.setenv("GLIO_KIT_QUIET", "1")
        mp.setenv("GLIO_KIT_DATA", str(home / "synthetic"))
        assert main(["run", "--profile", "smoke", "--run-dir", "runs/first", *COHORT_ARGS]) == 0
    return home


def _copy(home: Path, name: str) -> Path:
    shutil.copytree(home / "runs" / "first", home / "runs" / name)
    return home / "runs" / name


def _stamps(run_dir: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted((run_dir / "notebooks").iterdir())}


def test_real_rerun_with_a_changed_parameter_is_refused(smoke_run, monkeypatch, capsys):
    monkeypatch.chdir(smoke_run)
    monkeypatch.setenv("GLIO_KIT_QUIET", "1")
    run_dir = _copy(smoke_run, "changed")
    assert RunDir(run_dir).record("prep")["params"]["test_tumor"] == str(smoke_run / "data" / "test_tumor")
    before, records = _stamps(run_dir), {p.name: p.read_bytes() for p in (run_dir / "steps").iterdir()}
    capsys.readouterr()
    assert main(["run", "--profile", "smoke", "--run-dir", str(run_dir), *COHORT_ARGS, "-p", "lam=0.5"]) == 2
    err = capsys.readouterr().err
    assert "score (03_scoring.ipynb): lam: 0.1 -> 0.5" in err and "--force score" in err, err
    (smoke_run / "data" / "other").mkdir()
    assert main(["run", "--profile", "smoke", "--run-dir", str(run_dir), *COHORT_ARGS[:4],
                 "--test-tumor", "data/other"]) == 2
    assert "test_tumor:" in capsys.readouterr().err
    assert _stamps(run_dir) == before  # nothing ran
    assert {p.name: p.read_bytes() for p in (run_dir / "steps").iterdir()} == records


def test_real_force_on_one_step_redoes_the_steps_after_it(smoke_run, monkeypatch):
    monkeypatch.chdir(smoke_run)
    monkeypatch.setenv("GLIO_KIT_QUIET", "1")
    run_dir = _copy(smoke_run, "forced")
    before, metrics = _stamps(run_dir), (run_dir / "metrics.json").stat().st_mtime_ns
    args = ["run", "--profile", "smoke", "--run-dir", str(run_dir), *COHORT_ARGS, "-p", "lam=0.5"]
    assert main([*args, "--force", "score"]) == 0
    after = _stamps(run_dir)
    assert [n for n in before if after[n] != before[n]] == NOTEBOOKS[2:]
    assert (run_dir / "metrics.json").stat().st_mtime_ns != metrics
    run = RunDir(run_dir)
    assert run.record("score")["params"]["lam"] == 0.5
    assert run.record("metrics")["upstream_attempts"]["score"] == run.record("score")["attempt"]
    assert main(args) == 0 and _stamps(run_dir) == after  # the same values again: every step skipped

"""Scoring step: score_run end to end on a tiny cache, subject reduction, scaling on val only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from glio_kit.run.config import ScoreSettings, get_config  # noqa: E402
from glio_kit.errors import RunFolderError  # noqa: E402
from glio_kit.figures import scoring as F  # noqa: E402
from glio_kit.detect.encoder import load_encoder  # noqa: E402
from glio_kit.data.slice_cache import SliceCache  # noqa: E402
from glio_kit.detect.residuals import residual_map  # noqa: E402
from glio_kit.run.rundir import RunDir  # noqa: E402
from glio_kit.detect import scoring as S  # noqa: E402

SIZE = (16, 16)
N_SLICES = 3
# (subject, label, split): 4 healthy train, 2 healthy val, 2 healthy test, 2 tumour test
SUBJECTS = ([(f"TR{i}", 0, "train") for i in range(4)] + [(f"VA{i}", 0, "val") for i in range(2)]
            + [(f"TH{i}", 0, "test") for i in range(2)] + [(f"TT{i}", 1, "test") for i in range(2)])


def write_cache(folder, seed=0, test_shift=0.0):
    """A slice cache in SliceCache's format: noisy discs on a -1 background; tumour slices
    get a bright blob (the lesion mask). ``test_shift`` brightens the test slices only."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = SIZE
    n = len(SUBJECTS) * N_SLICES
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    images = np.full((n, h, w), -1.0, np.float32)
    brain = np.zeros((n, h, w), np.uint8)
    lesion = np.zeros((n, h, w), np.uint8)
    rows = []
    for s, (subj, label, split) in enumerate(SUBJECTS):
        for j in range(N_SLICES):
            i = s * N_SLICES + j
            r = 0.7 + 0.15 * rng.random()
            m = (yy / r) ** 2 + (xx / (r * 0.85)) ** 2 < 1
            img = np.clip(0.1 * rng.standard_normal((h, w)) + 0.5 * np.cos(3 * yy) - 0.2, -1, 1)
            les = np.zeros_like(m)
            if label == 1:
                les = ((yy - 0.2) ** 2 + (xx + 0.2) ** 2 < 0.12) & m
                img = np.where(les, 0.95, img)
            if split == "test":
                img = np.clip(img + test_shift, -1, 1)
            images[i] = np.where(m, img, -1.0)
            brain[i], lesion[i] = m, les
            rows.append(dict(row=i, subject=subj, label=label, split=split, slice_index=10 + j, slice_pos=j,
                             lesion_pixels=int(les.sum()), brain_pixels=int(m.sum()), image="", mask=""))
    np.save(folder / "images.npy", images)
    np.save(folder / "brain.npy", brain)
    np.save(folder / "lesion.npy", lesion)
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    (folder / "prep.json").write_text(json.dumps(dict(image_size=list(SIZE), n_slices=N_SLICES)))
    return SliceCache(folder)


def settings_for(**kw):
    """Every step's settings of the tiny test run (``.train``, ``.score``)."""
    knobs = dict(image_size=16, ngf=8, ndf=8, epochs=1, batch_size=6, checkpoint_every=1, device="cpu",
                 latent_dim=16, mapping_steps=6, mapping_batch_size=8, encoder_epochs=4, encoder_batch_size=6)
    knobs.update(kw)
    return get_config("smoke", **knobs)


def score_for(**kw) -> ScoreSettings:
    return settings_for(**kw).score


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with prep done (tiny cache) and a 1-epoch DCGAN."""
    from glio_kit.gan.train import train_dcgan

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = RunDir(tmp_path_factory.mktemp("score") / "run")
        cache = write_cache(run / "cache")
        run.claim("prep", {"tiny": True})
        run.mark_done("prep")
        train_dcgan(run, cache, settings_for().train, progress=False)
    finally:
        torch.set_num_threads(n)
    return run


def copy_run(run, dest) -> RunDir:
    """A copy of a trained run folder without its scoring (to score it another way)."""
    shutil.copytree(run.path, dest)
    for p in ("steps/score.json", "score", "subjects.csv"):
        q = Path(dest) / p
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
    return RunDir(dest)


# ------------------------------------------------------------------ subject scores
def test_reduce_subjects_mean_max_topk():
    df = pd.DataFrame(dict(subject=["a"] * 4 + ["b"] * 2, label=[0] * 4 + [1] * 2, split=["test"] * 6,
                           A=[0.1, 0.9, 0.5, 0.3, 0.2, 0.4]))
    mean = S.reduce_subjects(df, "mean").set_index("subject")["score"]
    mx = S.reduce_subjects(df, "max").set_index("subject")["score"]
    top = S.reduce_subjects(df, "topk", topk=3).set_index("subject")["score"]
    assert mean["a"] == pytest.approx(0.45) and mean["b"] == pytest.approx(0.3)
    assert mx["a"] == pytest.approx(0.9) and mx["b"] == pytest.approx(0.4)
    assert top["a"] == pytest.approx((0.9 + 0.5 + 0.3) / 3)
    assert top["b"] == pytest.approx(0.3)  # b: all it has
    assert S.reduce_subjects(df, "topk", topk=1).set_index("subject")["score"]["a"] == pytest.approx(0.9)
    out = S.reduce_subjects(df, "mean")
    assert list(out.columns) == ["subject", "label", "split", "score"] and list(out["label"]) == [0, 1]
    with pytest.raises(ValueError):
        S.reduce_subjects(df, "median")


def _slices_at(sds, subject, label=1, split="test"):
    return [dict(subject=subject, label=label, split=split, A_raw=float(a)) for a in sds]


def test_paper_score_is_rank_preserving_the_issue_counter_example():
    """4 slices at +6 SD and 12 at 0 SD (raw mean +1.5 SD) against 16 slices at +1.2 SD: the mean
    of sigmoid-scaled slices puts the second first (0.769 > 0.624); the paper's order (mean of raw
    A, then the scaling) keeps the raw order. Slice scaling: mean 0, SD 1 (healthy validation)."""
    from glio_kit.detect.detectors import subject_anomaly_scores
    from glio_kit.detect.slice_scores import ScoreScaling

    rng = np.random.default_rng(0)
    val = np.concatenate([[-1.0, 1.0]] * 8)  # slice mean 0, SD ~1: the slice scaling is ~identity in SD
    rows = [*_slices_at([6.0] * 4 + [0.0] * 12, "focal"), *_slices_at([1.2] * 16, "diffuse")]
    for i in range(12):  # healthy validation subjects around 0
        rows += _slices_at(val + rng.normal(0, 0.1), f"val{i}", label=0, split="val")
    df = pd.DataFrame(rows)
    df["A"] = ScoreScaling(0.0, 1.0)(df["A_raw"])
    old = subject_anomaly_scores(df, "mean_of_scaled").set_index("subject")["score"]
    new = subject_anomaly_scores(df, "mean").set_index("subject")
    assert old["focal"] == pytest.approx(0.624, abs=1e-3) and old["diffuse"] == pytest.approx(0.769, abs=1e-3)
    assert old["focal"] < old["diffuse"]  # the flip the old aggregation makes
    assert new.loc["focal", "score_raw"] == pytest.approx(1.5)
    assert new.loc["diffuse", "score_raw"] == pytest.approx(1.2)
    assert new.loc["focal", "score"] > new.loc["diffuse", "score"]  # the raw order, kept
    # rank-preserving in general: the scaled subject scores sort like the raw means
    raw = df.groupby("subject", sort=False)["A_raw"].mean()
    assert (np.argsort(new.loc[raw.index, "score"].to_numpy(), kind="stable")
            == np.argsort(raw.to_numpy(), kind="stable")).all()
    assert ((new["score"] > 0) & (new["score"] < 1)).all()


# --------------------------------------------------------------------- end to end
def test_score_run_end_to_end(trained):
    run = trained
    cache = SliceCache(run / "cache")
    s = score_for()
    df = S.score_run(run, cache, s, progress=False)
    sdir = run / "score"
    m = len(cache.rows(split="val")) + len(cache.rows(split="test"))
    assert len(df) == m and list(df["k"]) == list(range(m))
    assert set(df["split"]) == {"val", "test"}
    assert df["A"].between(0, 1, inclusive="neither").all()
    lam = s.lam
    assert np.allclose(df["A_raw"], (1 - lam) * df["R"] + lam * df["D"])
    assert df.equals(S.load_slice_scores(run))

    recon = np.load(sdir / "recon.npy")
    pos, ab = np.load(sdir / "residual_pos.npy"), np.load(sdir / "residual_abs.npy")
    assert recon.shape == pos.shape == ab.shape == (m, *SIZE) and recon.dtype == np.float32
    assert np.array_equal(S.load_reconstructions(run), recon)
    assert np.array_equal(S.load_residual_maps(run), pos)  # the recorded residual_kind: positive
    assert np.array_equal(S.load_residual_maps(run, "absolute"), ab)
    x = np.asarray(cache.images[df["row"]])
    assert np.allclose(df["R"], np.abs(x - recon).mean((1, 2)), atol=1e-5)  # R from the saved G(z)
    brain = np.asarray(cache.brain[df["row"]]).astype(bool)
    assert (pos[~brain] == 0).all() and (ab[~brain] == 0).all()  # brain-masked
    assert (pos >= 0).all() and (ab >= pos - 1e-6).all()
    # recon is G(latents)
    from glio_kit.gan.checkpoints import load_models

    G, _, _ = load_models(run)
    with torch.no_grad():
        g = G(torch.from_numpy(np.load(sdir / "latents.npy")))[:, 0].numpy()
    assert np.allclose(g, recon, atol=1e-5)

    sc = json.loads((sdir / "scaling.json").read_text())
    val = df[(df.split == "val") & (df.label == 0)]["A_raw"]
    assert sc["mean_val"] == pytest.approx(val.mean()) and sc["sd_val"] == pytest.approx(val.std(ddof=1))

    subj = pd.read_csv(sdir / "subject_scores.csv", dtype={"subject": str})
    assert list(subj.columns) == ["subject", "label", "split", "score", "score_raw"]
    assert set(subj["subject"]) == {s for s, _, sp in SUBJECTS if sp != "train"}
    # the paper's order: the mean of raw A per subject, then the logistic of the validation subjects
    raw = df.groupby("subject")["A_raw"].mean().loc[subj["subject"]]
    assert np.allclose(subj["score_raw"], raw)
    v = raw[((subj["split"] == "val") & (subj["label"] == 0)).to_numpy()]
    assert np.allclose(subj["score"], 1 / (1 + np.exp(-(raw - v.mean()) / v.std(ddof=1))))
    top = pd.read_csv(run / "subjects.csv", dtype={"subject": str})
    assert list(top.columns) == ["subject", "label", "score"]
    assert set(top["subject"]) == {s for s, _, sp in SUBJECTS if sp == "test"}

    hist = S.load_mapping_history(run)
    assert list(hist.columns) == ["step", "val_healthy", "test_healthy", "test_tumour"]
    assert len(hist) == s.mapping_steps + 1
    rec = run.record("score")
    assert rec["status"] == "done" and rec["info"]["slices"] == m
    assert S.score_settings(run) == s  # every knob recorded, read back as typed settings

    # done: a second call loads, recomputes nothing
    stamp = (sdir / "recon.npy").stat().st_mtime_ns
    again = S.score_run(run, cache, s, progress=False)
    assert again.equals(df) and (sdir / "recon.npy").stat().st_mtime_ns == stamp
    # other knobs into the same folder: stop, overwrite nothing
    with pytest.raises(RunFolderError):
        S.score_run(run, cache, s.replace(mapping_steps=7), progress=False)
    assert (sdir / "recon.npy").stat().st_mtime_ns == stamp

    # the figures
    import matplotlib.figure

    for fig in (F.plot_mapping_steps(run), F.plot_loss_over_steps(run),
                F.plot_slice_and_subject_scores(run)):
        assert isinstance(fig, matplotlib.figure.Figure)
    assert not list((run / "figures").glob("*.png"))  # returned, not saved: the notebook saves them


def test_residual_settings_reach_the_saved_maps_and_the_record(trained, tmp_path):
    """median_filter and erode given in ScoreSettings change the saved maps (one definition:
    residual_map with those values) and are in the step record; residual_kind picks the map
    the loaders hand on."""
    maps = {}
    for name, kw in (("default", {}), ("other", dict(median_filter=0, erode=2, residual_kind="absolute"))):
        run = copy_run(trained, tmp_path / name)
        cache = SliceCache(run / "cache")
        s = score_for(mapping_steps=2, **kw)
        df = S.score_run(run, cache, s, progress=False)
        rec = run.record("score")
        for knob in ("median_filter", "erode", "residual_kind"):
            assert rec["params"][knob] == rec["settings"][knob] == getattr(s, knob)
        assert S.score_settings(run) == s
        rows = df["row"].to_numpy()
        x, brain = np.asarray(cache.images[rows]), np.asarray(cache.brain[rows])
        recon = np.asarray(S.load_reconstructions(run))
        for kind in ("positive", "absolute"):
            want = residual_map(x, recon, brain, kind=kind, median=s.median_filter, erode=s.erode)
            assert np.array_equal(S.load_residual_maps(run, kind), want)
        assert np.array_equal(S.load_residual_maps(run), S.load_residual_maps(run, s.residual_kind))
        maps[name] = (recon, np.asarray(S.load_residual_maps(run, "positive")))
    (r0, p0), (r1, p1) = maps["default"], maps["other"]
    assert np.array_equal(r0, r1)  # the same mapping ...
    assert not np.array_equal(p0, p1)  # ... other residual maps
    with pytest.raises(ValueError, match="kind"):
        S.load_residual_maps(trained, "squared")


def test_loaders_say_what_to_run(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RunFolderError, match="notebook 03"):
        S.load_residual_maps(run, "positive")
    with pytest.raises(RunFolderError, match="notebook 03"):
        S.score_settings(run)


def test_mapping_snapshots_are_the_scorings_own_mapping(trained, tmp_path, monkeypatch):
    """The scoring step keeps, for the slices the figure shows, G(z) along the way and the
    per-slice loss of the very mapping that gave the scores; the figure draws only these."""
    run = copy_run(trained, tmp_path / "run")
    cache = SliceCache(run / "cache")
    s = score_for(restarts=2)
    df = S.score_run(run, cache, s, progress=False)
    snap = S.load_mapping_snapshots(run)
    ks = snap["k"].tolist()
    kinds = df.set_index("k").loc[ks, "label"].tolist()
    assert kinds == [0] * S.SHOWN_HEALTHY + [1] * S.SHOWN_TUMOUR  # healthy test slices, then tumours
    assert snap["steps"].tolist() == [0, 1, 2, 3, 6] and snap["steps"][-1] == s.mapping_steps
    recon = np.asarray(S.load_reconstructions(run))
    assert np.array_equal(snap["gz"][:, -1], recon[ks])  # the last snapshot is the scored G(z)
    assert np.array_equal(snap["loss"][:, -1], df.set_index("k").loc[ks, "loss"].to_numpy())
    assert snap["loss"].shape == (len(ks), s.mapping_steps + 1)
    assert np.array_equal(snap["x"], np.asarray(cache.images[df.set_index("k").loc[ks, "row"].to_numpy()]))
    # the figure neither loads the models nor maps
    import glio_kit.detect.mapping as M
    import glio_kit.gan.checkpoints as C

    def refuse(*a, **k):
        raise AssertionError("the figure must draw saved data only")

    monkeypatch.setattr(M, "map_iterative", refuse)
    monkeypatch.setattr(C, "load_checkpoint", refuse)
    fig = F.plot_mapping_steps(run)
    assert len(fig.axes) == len(ks) * (len(snap["steps"]) + 2)


def test_scaling_uses_only_validation_slices(trained, tmp_path):
    """Changing the test slices changes their scores but not the map fitted on val."""
    s = score_for()
    out = []
    for shift, name in ((0.0, "a"), (0.4, "b")):
        run = copy_run(trained, tmp_path / name)
        cache = write_cache(tmp_path / f"cache_{name}", test_shift=shift)
        df = S.score_run(run, cache, s, progress=False)
        out.append((json.loads((run / "score" / "scaling.json").read_text()), df))
    (s0, d0), (s1, d1) = out
    assert s0["mean_val"] == pytest.approx(s1["mean_val"], rel=1e-9)
    assert s0["sd_val"] == pytest.approx(s1["sd_val"], rel=1e-9)
    v0, v1 = d0[d0.split == "val"], d1[d1.split == "val"]
    assert np.allclose(v0["A"], v1["A"])
    t0, t1 = d0[d0.split == "test"], d1[d1.split == "test"]
    assert not np.allclose(t0["A_raw"], t1["A_raw"])  # the test slices did change


@pytest.mark.parametrize("how", ["max", "topk"])
def test_score_run_subject_reduction(trained, tmp_path, how):
    run = copy_run(trained, tmp_path / "run")
    cache = SliceCache(run / "cache")
    df = S.score_run(run, cache, score_for(subject_reduction=how, topk=2, mapping_steps=2), progress=False)
    subj = S.load_subject_scores(run).set_index("subject")["score_raw"]
    g = df.groupby("subject")["A_raw"]
    exp = g.max() if how == "max" else g.apply(lambda s: s.nlargest(2).mean())
    assert np.allclose(subj, exp.loc[subj.index])


def test_encoder_mapping_trains_and_scores(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    cache = SliceCache(run / "cache")
    s = score_for(mapping="encoder", encoder_epochs=8)
    df = S.score_run(run, cache, s, progress=False)
    losses = pd.read_csv(run / "score" / "encoder_losses.csv")
    assert len(losses) == 8 and losses["loss"].iloc[-1] < losses["loss"].iloc[0]
    # the encoder's training is part of the score step's record: no step of its own
    assert run.record("encoder") is None and not (run / "steps" / "encoder.json").exists()
    rec = run.record("score")
    assert rec["params"]["encoder_lr"] == s.encoder_lr and rec["params"]["encoder_epochs"] == 8
    info = rec["info"]["encoder"]
    assert info["epochs"] == 8 and info["loss"] == pytest.approx(losses["loss"].iloc[-1])
    assert info["n_train"] == 4 * N_SLICES and info["encoder_batch_size"] == s.encoder_batch_size
    E = load_encoder(run)
    assert E.latent_dim == 16 and not E.training
    hist = S.load_mapping_history(run)
    assert len(hist) == 1  # one forward pass, no search
    assert df["A"].between(0, 1, inclusive="neither").all()
    # z of every slice is E(x)
    from glio_kit.detect.mapping import encode

    z = encode(E, np.asarray(cache.images[df["row"].to_numpy()]))
    assert np.allclose(z.numpy(), np.load(run / "score" / "latents.npy"), atol=1e-5)
    fig = F.plot_mapping_steps(run)
    assert len(fig.axes) == len(S.load_mapping_snapshots(run)["k"]) * 3  # input, G(E(x)) at step 0, residual
    assert S.load_mapping_snapshots(run)["steps"].tolist() == [0]
    # encoder + iterative: the scoring redone trains the same (seeded) encoder and searches from E(x)
    run2 = RunDir(run.path)
    df2 = S.score_run(run2, cache, s.replace(mapping="encoder+iterative", mapping_steps=4), overwrite=True,
                      progress=False)
    assert df2["loss"].mean() < df["loss"].mean()  # the search improves on E(x)
    assert len(S.load_mapping_history(run)) == 5


def test_score_run_needs_training(tmp_path):
    run = RunDir(tmp_path / "run")
    cache = write_cache(run / "cache")
    run.claim("prep", {"tiny": True})
    run.mark_done("prep")
    with pytest.raises(RunFolderError, match="train"):
        S.score_run(run, cache, score_for(), progress=False)
    with pytest.raises(ValueError):
        score_for(mapping="magic")
    with pytest.raises(TypeError, match="ScoreSettings"):
        S.score_run(run, cache, settings_for(), progress=False)  # the bundle, not its .score

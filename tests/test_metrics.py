import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from glio_kit import metrics as M
from glio_kit.errors import GlioKitError, RunFolderError
from glio_kit.preprocess import SliceCache
from glio_kit.runtime import RunDir


# ------------------------------------------------------------------ tiny cache helper
def write_tiny_cache(folder, n_val=4, n_test_healthy=4, n_test_tumor=4, n_train=2, n_slices=3, size=16, seed=0,
                     blob_value=0.9):
    """A SliceCache on disk: disc 'brains' with a bright 'ventricle'; tumour slices get a
    bright 4x4 blob (the lesion). Returns (cache, healthy) where ``healthy`` are the images
    without blobs (a perfect healthy reconstruction)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2) < (size / 2 - 1) ** 2
    groups = ([("train", 0)] * n_train + [("val", 0)] * n_val + [("test", 0)] * n_test_healthy
              + [("test", 1)] * n_test_tumor)
    imgs, healthy, brains, lesions, rows = [], [], [], [], []
    for s, (split, label) in enumerate(groups):
        for j in range(n_slices):
            img = np.full((size, size), -1.0, np.float32)
            img[disc] = -0.2 + 0.05 * rng.standard_normal(disc.sum())
            img[size // 2 - 1:size // 2 + 1, size // 2 - 1:size // 2 + 1] = 0.5  # ventricles: bright on T2
            les = np.zeros((size, size), np.uint8)
            clean = img.copy()
            if label == 1:
                les[4:8, 4:8] = 1
                img[les > 0] = blob_value
            imgs.append(img)
            healthy.append(clean)
            brains.append(disc.astype(np.uint8))
            lesions.append(les)
            rows.append(dict(row=len(rows), subject=f"S{s:02d}", label=label, split=split, slice_index=10 + j,
                             slice_pos=j, lesion_pixels=int(les.sum()), brain_pixels=int(disc.sum()), image="", mask=""))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", np.stack(imgs))
    np.save(folder / "brain.npy", np.stack(brains))
    np.save(folder / "lesion.npy", np.stack(lesions))
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    (folder / "prep.json").write_text(json.dumps(dict(normalisation="sd", image_size=[size, size], n_slices=n_slices)))
    return SliceCache(folder), np.stack(healthy)


def write_scored_run(path, flip=(), **kw):
    """A run folder with a cache and the scoring step's outputs (contract of notebook 03).

    The reconstruction is the healthy image plus noise; the slice score is the mean positive
    residual. ``flip`` = subject ids whose scores are swapped to look like the other class."""
    run = RunDir(path)
    cache, healthy = write_tiny_cache(run / "cache", **kw)
    run.claim("prep", {"x": 1})
    run.mark_done("prep")
    run.claim("score", {"lam": 0.1})
    rows = cache.rows(split="val").tolist() + cache.rows(split="test").tolist()
    rng = np.random.default_rng(1)
    recon = (healthy[rows] + 0.02 * rng.standard_normal(healthy[rows].shape)).clip(-1, 1).astype(np.float32)
    (run / "score").mkdir(exist_ok=True)
    np.save(run / "score" / "recon.npy", recon)
    idx = cache.index.iloc[rows]
    a_raw = np.maximum(np.asarray(cache.images[rows]) - recon, 0).mean(axis=(1, 2))
    sl = pd.DataFrame(dict(row=rows, k=np.arange(len(rows)), subject=idx.subject.values, label=idx.label.values,
                           split=idx.split.values, slice_index=idx.slice_index.values, R=a_raw, D=a_raw, A_raw=a_raw))
    sl["A"] = (sl.A_raw - sl.A_raw.min()) / (sl.A_raw.max() - sl.A_raw.min())
    subj = sl.groupby("subject", sort=False).agg(label=("label", "first"), split=("split", "first"),
                                                  score=("A", "mean")).reset_index()
    for s in flip:
        lab = subj.loc[subj.subject == s, "label"].item()
        subj.loc[subj.subject == s, "score"] = 0.0 if lab == 1 else 1.0
    sl.to_csv(run / "score" / "slice_scores.csv", index=False)
    subj.to_csv(run / "score" / "subject_scores.csv", index=False)
    test = subj[subj.split == "test"]
    test[["subject", "label", "score"]].to_csv(run / "subjects.csv", index=False)
    run.mark_done("score")
    return run, cache


CFG = dict(fpr_target=0.05, pixel_percentile=99.0, n_bootstrap=200, median_filter=0, seed=0,
           subject_reduction="mean")


# ---------------------------------------------------------------- subject level
def test_paper_counts_and_consistency():
    labels = np.r_[np.zeros(27), np.ones(27)]
    # 25 healthy below, 2 above; 24 tumours above, 3 below the threshold 0.5
    scores = np.r_[np.full(25, 0.2), np.full(2, 0.8), np.full(24, 0.9), np.full(3, 0.1)]
    m = M.subject_metrics(labels, scores, 0.5)
    assert m["confusion"] == dict(tn=25, fp=2, fn=3, tp=24)
    assert round(m["accuracy"], 3) == M.PAPER["accuracy"] == 0.907
    assert m["precision"] == pytest.approx(24 / 26) and m["recall"] == pytest.approx(24 / 27)
    assert m["specificity"] == pytest.approx(25 / 27)
    assert m["f1"] == pytest.approx(2 * (24 / 26) * (24 / 27) / (24 / 26 + 24 / 27))
    c = M.paper_consistency()
    assert c["matches"] == dict(accuracy=True, precision=False, recall=False)
    assert c["implied"]["precision"] == pytest.approx(0.9231, abs=1e-4)
    assert c["implied"]["recall"] == pytest.approx(0.8889, abs=1e-4)
    assert c["printed"]["precision"] == 0.892 and c["printed"]["recall"] == 0.923
    assert "0.892" in c["note"]


def test_undefined_ratios_are_zero():
    m = M.subject_metrics([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], threshold=1.0)  # nothing called abnormal
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["specificity"] == 1.0 and m["accuracy"] == 0.5
    assert m["subject_auc"] == 1.0  # AUC is threshold-free


def test_threshold_at_fpr_convention():
    s = np.arange(1, 11) / 10.0  # 0.1 .. 1.0
    assert M.threshold_at_fpr(s, 0.05) == 1.0  # 0.05*10 < 1: no healthy score above
    assert M.threshold_at_fpr(s, 0.0) == 1.0
    assert M.threshold_at_fpr(s, 0.1) == 0.9  # one of ten above (1.0)
    assert M.threshold_at_fpr(s, 0.25) == 0.8  # floor(2.5) = 2 above
    rng = np.random.default_rng(0)
    for fpr in (0.05, 0.1, 0.3):
        h = np.round(rng.normal(size=37), 1)  # with ties
        t = M.threshold_at_fpr(h, fpr)
        assert (h > t).mean() <= fpr  # at most fpr above
        assert (h > t - 1e-9).mean() > fpr  # any smaller threshold breaks it: it is the smallest
    with pytest.raises(GlioKitError):
        M.threshold_at_fpr([], 0.05)
    with pytest.raises(ValueError):
        M.threshold_at_fpr(s, 1.0)


def test_perfect_separation_auc_and_ci():
    labels = np.r_[np.zeros(10), np.ones(12)]
    scores = np.r_[np.linspace(0, 0.4, 10), np.linspace(0.6, 1, 12)]
    m = M.subject_metrics(labels, scores, 0.5)
    assert m["subject_auc"] == 1.0 and m["accuracy"] == 1.0
    ci = M.bootstrap_ci(labels, scores, 0.5, n=300, seed=0)
    assert set(ci) == set(M.METRIC_NAMES)
    for k in M.METRIC_NAMES:
        assert ci[k] == (1.0, 1.0), k


def test_bootstrap_ci_is_stratified_and_brackets_estimate():
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(27), np.ones(27)]
    scores = np.r_[rng.normal(0, 1, 27), rng.normal(1.2, 1, 27)].round(1)  # ties on purpose
    thr = 0.6
    m = M.subject_metrics(labels, scores, thr)
    ci = M.bootstrap_ci(labels, scores, thr, n=500, seed=1)
    for k in M.METRIC_NAMES:
        lo, hi = ci[k]
        assert lo <= m[k] <= hi and lo < hi, k
    assert M.bootstrap_ci(labels, scores, thr, n=500, seed=1) == ci  # seeded
    # ties count one half: identical scores everywhere give AUC 0.5 in every replicate
    assert M.bootstrap_ci(labels, np.ones(54), 0.5, n=50)["subject_auc"] == (0.5, 0.5)
    # the vectorised AUC equals scikit-learn's on a resample (ties count one half)
    sh, st = scores[:27], scores[27:]
    ih, it = rng.integers(0, 27, 27), rng.integers(0, 27, 27)
    wh = np.bincount(ih, minlength=27)[None].astype(float)
    wt = np.bincount(it, minlength=27)[None].astype(float)
    pair = (st[:, None] > sh[None]).astype(float) + 0.5 * (st[:, None] == sh[None])
    ours = M._auc_from_counts(wt, wh, pair)[0]
    ref = roc_auc_score(np.r_[np.zeros(27), np.ones(27)], np.r_[sh[ih], st[it]])
    assert ours == pytest.approx(ref)


# ------------------------------------------------------------------ pixel level
def test_dice_of_known_overlap():
    pred = np.zeros((1, 6, 6), bool)
    pred[0, 1, 1:5] = True  # 4 pixels
    target = np.zeros((1, 6, 6), bool)
    target[0, 1, 3:5] = True
    target[0, 2, 3:5] = True  # 4 pixels, 2 shared
    assert M.dice(pred, target) == pytest.approx(0.5)
    res = pred.astype(np.float32)
    out = M.pixel_metrics(res, target, np.ones_like(target), threshold=0.5, subjects=["a"])
    assert out["dice"] == pytest.approx(0.5) and out["dice_per_subject"] == pytest.approx(0.5)
    assert M.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_pixel_metrics_per_subject_and_ranking():
    res = np.zeros((2, 8, 8), np.float32)
    les = np.zeros((2, 8, 8), np.uint8)
    les[0, 2:4, 2:4] = 1
    les[1, 5:7, 5:7] = 1
    res[0, 2:4, 2:4] = 1.0  # perfect on slice 0
    res[1, 0:2, 0:2] = 1.0  # wrong place on slice 1
    brain = np.ones_like(les)
    out = M.pixel_metrics(res, les, brain, 0.5, subjects=["A", "B"])
    assert out["dice_by_subject"] == {"A": 1.0, "B": 0.0}
    assert out["dice_per_subject"] == pytest.approx(0.5) and out["dice"] == pytest.approx(0.5)
    assert 0.5 < out["auroc"] < 1.0 and out["lesion_fraction"] == pytest.approx(8 / 128)
    # pixels outside the brain do not count
    brain[1] = 0
    assert M.pixel_metrics(res, les, brain, 0.5)["dice"] == 1.0


def test_pixel_threshold_from_healthy():
    rng = np.random.default_rng(0)
    res = rng.uniform(0, 1, (4, 20, 20)).astype(np.float32)
    brain = np.zeros((4, 20, 20), np.uint8)
    brain[:, 5:15, 5:15] = 1
    res[brain == 0] = 5.0  # outside values must be ignored
    t = M.pixel_threshold_from_healthy(res, brain, 99.0)
    assert 0.95 < t < 1.0
    assert np.mean(res[brain > 0] > t) == pytest.approx(0.01, abs=0.005)


def test_best_dice_upper_bound_beats_validation_threshold():
    rng = np.random.default_rng(0)
    les = np.zeros((3, 16, 16), np.uint8)
    les[:, 4:9, 4:9] = 1
    res = (0.3 * rng.random((3, 16, 16)) + 0.5 * les).astype(np.float32)
    brain = np.ones_like(les)
    val_thr = 0.25  # a poor threshold from "validation"
    at_val = M.pixel_metrics(res, les, brain, val_thr)["dice"]
    ub = M.best_dice_upper_bound(res, les, brain, extra_thresholds=[val_thr])
    assert ub["dice"] >= at_val and ub["dice"] > at_val + 0.1
    ub2 = M.best_dice_upper_bound(res, les, brain, n_thresholds=300)  # sweep alone, no help
    assert ub2["dice"] >= at_val
    # the sorted-cumsum Dice equals the direct Dice at every swept threshold
    for t, d in list(zip(ub["thresholds"], ub["dices"]))[::37]:
        assert d == pytest.approx(M.dice(res > t, les))


# -------------------------------------------------------------------- baseline
def test_intensity_baseline_finds_bright_blob(tmp_path):
    cache, _ = write_tiny_cache(tmp_path / "cache")
    out = M.intensity_baseline(cache, erode=1, percentile=99.0, fpr=0.05)
    subj = out["subject_scores"]
    test = subj[subj.split == "test"]
    assert roc_auc_score(test.label, test.score) == 1.0
    m = M.subject_metrics(test.label, test.score, out["threshold"])
    assert m["confusion"]["tp"] == 4 and m["confusion"]["fp"] == 0
    assert out["threshold"] == M.threshold_at_fpr(subj[subj.split == "val"].score, 0.05)
    assert 0.4 < out["pixel_threshold"] + 0 < 2.0  # at least the bright ventricles (0.5 + 1)
    assert set(out["slice_scores"].split) == {"val", "test"}  # train slices are never scored


def test_intensity_baseline_misses_a_dim_lesion(tmp_path):
    """A lesion no brighter than the ventricles is below the healthy percentile: no detection."""
    cache, _ = write_tiny_cache(tmp_path / "cache", blob_value=-0.2)
    out = M.intensity_baseline(cache)
    test = out["subject_scores"][out["subject_scores"].split == "test"]
    assert M.subject_metrics(test.label, test.score, out["threshold"])["confusion"]["tp"] == 0


# ------------------------------------------------------------------ the metrics step
REQUIRED = {"subject_auc", "accuracy", "precision", "recall", "specificity", "f1", "threshold", "confusion",
            "n_test_healthy", "n_test_tumor", "ci", "pixel_dice", "pixel_dice_per_subject", "pixel_auprc",
            "pixel_auroc", "pixel_threshold", "dice_upper_bound_test_tuned", "baseline", "paper"}


def test_evaluate_run_end_to_end(tmp_path):
    run, cache = write_scored_run(tmp_path / "run", flip=("S08",))  # S08: a healthy test subject scored high
    res = M.evaluate_run(run, CFG)
    assert REQUIRED <= set(res)
    assert REQUIRED - {"paper", "baseline"} <= set(res["baseline"])
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["confusion"] == res["confusion"] and set(on_disk["confusion"]) == {"tn", "fp", "fn", "tp"}
    assert res["n_test_healthy"] == 4 and res["n_test_tumor"] == 4
    assert res["confusion"] == dict(tn=3, fp=1, fn=0, tp=4)
    # threshold from healthy validation subjects only
    subj = pd.read_csv(run / "score" / "subject_scores.csv", dtype={"subject": str})
    assert res["threshold"] == pytest.approx(M.threshold_at_fpr(subj[subj.split == "val"].score, 0.05))
    assert set(res["ci"]) == set(M.METRIC_NAMES) and all(len(v) == 2 for v in res["ci"].values())
    assert res["pixel_dice"] > 0.5 and res["pixel_auroc"] > 0.9
    assert res["dice_upper_bound_test_tuned"] >= res["pixel_dice"]
    assert res["baseline"]["subject_auc"] == 1.0
    assert res["paper"]["consistency"]["matches"]["precision"] is False
    md = (run / "metrics.md").read_text()
    assert "| metric | paper | kit: paper's score (95% CI) | kit: residual area (95% CI) | baseline (95% CI) |" in md
    assert "TEST-TUNED" in md
    # the residual-area detector: calibrated on validation, scored on the same subjects
    area = res["residual_area"]
    assert area["n_test_healthy"] == 4 and area["n_test_tumor"] == 4 and 0 <= area["subject_auc"] <= 1
    assert (run / "score" / "subject_scores_residual_area.csv").exists()
    assert RunDir(run.path).is_done("metrics")
    # done: a second call reads it back; other parameters need overwrite
    assert M.evaluate_run(run, CFG)["accuracy"] == res["accuracy"]
    with pytest.raises(RunFolderError):
        M.evaluate_run(run, dict(CFG, fpr_target=0.2))
    wrong = M.misclassified(run)
    assert wrong.subject.tolist() == ["S08"] and wrong.error.tolist() == ["false positive"]
    figs = M.metric_figures(run, res)
    assert {"roc", "confusion", "score_distributions", "pixel_comparison"} <= set(figs)
    import matplotlib.pyplot as plt

    for f in figs.values():
        plt.close(f)


def test_evaluate_run_without_masks_or_scores(tmp_path):
    run, cache = write_scored_run(tmp_path / "run")
    np.save(run / "cache" / "lesion.npy", np.zeros_like(np.asarray(cache.lesion)))
    res = M.evaluate_run(run, CFG)
    assert res["has_masks"] is False and "pixel_dice" not in res
    empty = RunDir(tmp_path / "empty")
    empty.claim("score", {})
    empty.mark_done("score")
    with pytest.raises(GlioKitError):
        M.evaluate_run(empty, CFG)


def test_metrics_needs_score_step(tmp_path):
    with pytest.raises(RunFolderError, match="score"):
        M.evaluate_run(RunDir(tmp_path / "r"), CFG)

"""The metric functions (arrays in, numbers out) and the paper's numbers."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from glio_kit.evaluate import metrics as M
from glio_kit.evaluate import paper as P
from glio_kit.errors import GlioKitError


# ---------------------------------------------------------------- subject level
def test_paper_counts_and_consistency():
    labels = np.r_[np.zeros(27), np.ones(27)]
    # 25 healthy below, 2 above; 24 tumours above, 3 below the threshold 0.5
    scores = np.r_[np.full(25, 0.2), np.full(2, 0.8), np.full(24, 0.9), np.full(3, 0.1)]
    m = M.subject_metrics(labels, scores, 0.5)
    assert m["confusion"] == dict(tn=25, fp=2, fn=3, tp=24)
    assert round(m["accuracy"], 3) == P.PAPER["accuracy"] == 0.907
    assert m["precision"] == pytest.approx(24 / 26) and m["recall"] == pytest.approx(24 / 27)
    assert m["specificity"] == pytest.approx(25 / 27)
    assert m["f1"] == pytest.approx(2 * (24 / 26) * (24 / 27) / (24 / 26 + 24 / 27))
    c = P.paper_consistency()
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


def test_expected_fpr_of_the_validation_rule():
    """The rule's guarantee for new healthy subjects: (k+1)/(n+1), k = floor(fpr n)."""
    assert M.expected_fpr(12, 0.05) == pytest.approx(1 / 13)  # the old demo: 7.7 %, not 5 %
    assert M.expected_fpr(19, 0.05) == pytest.approx(0.05)
    assert M.expected_fpr(20, 0.05) == pytest.approx(2 / 21)  # one more subject allows one above
    assert M.expected_fpr(39, 0.05) == pytest.approx(0.05)
    # checked by simulation: new healthy subjects above the threshold of 19 validation ones
    rng = np.random.default_rng(0)
    val, new = rng.normal(size=(4000, 19)), rng.normal(size=4000)
    above = np.mean([n > M.threshold_at_fpr(v, 0.05) for v, n in zip(val, new)])
    assert above == pytest.approx(0.05, abs=0.012)


def test_bootstrap_resamples_the_validation_threshold_too():
    """With the validation scores, each replicate chooses its threshold again: the specificity
    interval widens (12 validation subjects: the threshold is their maximum, a noisy statistic),
    the AUC interval (no threshold) stays exactly as it was."""
    rng = np.random.default_rng(1)
    val = rng.normal(size=12)
    labels = np.r_[np.zeros(27), np.ones(27)]
    scores = np.r_[rng.normal(size=27), rng.normal(1.5, 1, 27)]
    thr = M.threshold_at_fpr(val, 0.05)
    fixed = M.bootstrap_ci(labels, scores, thr, n=2000, seed=0)
    moving = M.bootstrap_ci(labels, scores, thr, n=2000, seed=0, val_scores=val, fpr=0.05)
    assert moving["subject_auc"] == fixed["subject_auc"]
    width = {k: ci["specificity"][1] - ci["specificity"][0]
             for k, ci in (("fixed", fixed), ("moving", moving))}
    assert width["moving"] > 1.1 * width["fixed"]
    assert moving["specificity"][0] < fixed["specificity"][0]

"""Metrics as pure functions: arrays in, numbers out (the conventions of the whole kit).

Conventions
-----------
* Tumour = **positive** (label 1), healthy = negative (label 0), as in the paper.
* A subject is called abnormal when ``score > threshold`` (strictly greater).
* Thresholds come from **healthy validation** data only (subjects held out of training):
  the subject threshold is the smallest value that keeps at most ``fpr`` of the healthy
  validation subjects above it (:func:`threshold_at_fpr`); the pixel threshold is a high
  percentile of the in-brain residuals of healthy validation slices
  (:func:`pixel_threshold_from_healthy`). The test set never chooses a threshold. The one
  exception is :func:`best_dice_upper_bound`, a *test-tuned upper bound* shown for context
  and never used as the result.
* The confusion matrix is reported in the paper's Table I layout: rows = actual
  (negative, positive), columns = predicted (negative, positive)::

                     predicted negative   predicted positive
      actual negative        TN                   FP
      actual positive        FN                   TP

The paper's own numbers are in :mod:`glio_kit.evaluate.paper`; the evaluation step that applies these
functions to a run is :mod:`glio_kit.evaluate.evaluation`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import GlioKitError
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from ..detect.residuals import binarise

#: The subject-level metrics every detector reports (and bootstraps).
METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "subject_auc")
#: Pixel AUPRC/AUROC use at most this many pixels (a deterministic subsample beyond it).
MAX_PIXELS = 2_000_000


# ------------------------------------------------------------------ subject level
def threshold_at_fpr(healthy_scores, fpr: float = 0.05) -> float:
    """Smallest threshold with at most ``fpr`` of the healthy scores **above** it.

    Convention: a subject is abnormal when ``score > threshold``. With ``n`` healthy
    (validation) scores, ``k = floor(fpr * n)`` false positives are allowed, and the
    threshold is the (k+1)-th largest healthy score: exactly the k largest lie above it (fewer
    with ties), and any smaller threshold would put k+1 above it. With few validation
    subjects (fpr * n < 1) this is the largest healthy score, i.e. zero validation false
    positives.

    healthy_scores : (n,) scores of healthy validation subjects (never test ones); nan ignored.
    fpr : allowed false-positive rate, 0 <= fpr < 1.
    Returns the threshold (float, in the scores' units).
    """
    s = np.asarray(healthy_scores, dtype=float).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise GlioKitError("threshold_at_fpr: no healthy validation scores to choose a threshold from")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    k = int(math.floor(fpr * s.size + 1e-9))
    return float(np.sort(s)[::-1][k])


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def rates(tn, fp, fn, tp) -> dict:
    """Accuracy, precision, recall, specificity and F1 from confusion counts.

    Each is 0 where its denominator is 0 (e.g. precision when nothing is called abnormal).
    Returns dict ``accuracy, precision, recall, specificity, f1`` (floats in [0, 1]).
    """
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return dict(
        accuracy=_safe_div(tp + tn, tn + fp + fn + tp),
        precision=precision,
        recall=recall,
        specificity=_safe_div(tn, tn + fp),
        f1=_safe_div(2 * precision * recall, precision + recall),
    )


def operating_point(counts: dict) -> tuple[float, float]:
    """``(false-positive rate, true-positive rate)`` of confusion ``counts`` {tn, fp, fn, tp}."""
    c = counts
    return _safe_div(c["fp"], c["fp"] + c["tn"]), _safe_div(c["tp"], c["tp"] + c["fn"])


def confusion(labels, scores, threshold: float) -> dict:
    """Confusion counts with tumour = positive and abnormal = ``score > threshold``.

    labels : (n,) 0 = healthy, 1 = tumour. scores : (n,) subject scores.
    Returns dict ``tn, fp, fn, tp`` (ints).
    """
    y = np.asarray(labels).astype(int).ravel()
    pred = np.asarray(scores, dtype=float).ravel() > threshold
    return dict(tn=int(((y == 0) & ~pred).sum()), fp=int(((y == 0) & pred).sum()),
                fn=int(((y == 1) & ~pred).sum()), tp=int(((y == 1) & pred).sum()))


def roc(labels, scores) -> dict:
    """ROC curve (scikit-learn) of ``scores`` (n,) against ``labels`` (n,).

    Returns dict ``fpr``, ``tpr``, ``thresholds`` (arrays of one length) and ``auc``. With a
    single class present the curve is undefined: empty arrays and ``auc`` = nan.
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if len(np.unique(y)) < 2:
        return dict(fpr=np.array([]), tpr=np.array([]), thresholds=np.array([]), auc=float("nan"))
    fpr, tpr, thr = roc_curve(y, s)
    return dict(fpr=fpr, tpr=tpr, thresholds=thr, auc=float(roc_auc_score(y, s)))


def subject_metrics(labels, scores, threshold: float) -> dict:
    """Subject-level detection metrics at a fixed ``threshold``.

    labels : (n,) 0 = healthy, 1 = tumour. scores : (n,) subject scores.
    Returns dict: ``confusion`` {tn, fp, fn, tp} (Table I layout), ``accuracy``,
    ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN), ``specificity`` = TN/(TN+FP),
    ``f1`` (each 0 where its denominator is 0, see :func:`rates`), ``subject_auc`` (ROC AUC,
    threshold-free; nan with one class), ``threshold``, ``n_healthy``, ``n_tumor`` and
    ``roc`` (fpr, tpr, thresholds arrays).
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    c = confusion(y, s, threshold)
    out = dict(confusion=c, **rates(**c))
    curve = roc(y, s)
    out["subject_auc"] = curve.pop("auc")
    out.update(threshold=float(threshold), n_healthy=int((y == 0).sum()), n_tumor=int((y == 1).sum()),
               roc=curve)
    return out


def _auc_from_counts(wt: np.ndarray, wh: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """AUC of resamples given multiplicity weights of tumour (B, nt) and healthy (B, nh) scores
    and ``pair`` (nt, nh) = 1 where the tumour scores higher, 0.5 on a tie. Returns (B,)."""
    num = np.einsum("bi,ij,bj->b", wt, pair, wh)
    return num / (wt.sum(1) * wh.sum(1))


def bootstrap_ci(labels, scores, threshold: float, n: int = 1000, seed: int = 0, alpha: float = 0.05,
                 val_scores=None, fpr: float = 0.05) -> dict:
    """Percentile confidence intervals of every subject metric by a stratified bootstrap.

    labels : (n_subjects,) 0 = healthy, 1 = tumour. scores : (n_subjects,).
    Healthy and tumour subjects are resampled separately (with replacement, each group at
    its own size), so every replicate keeps both classes and AUC is always defined.
    val_scores : (n_val,) healthy validation scores, or None. Given, they are resampled too and
        each replicate's threshold is chosen again from them (:func:`threshold_at_fpr` at
        ``fpr``), so the intervals include the threshold's own uncertainty (with 12 validation
        subjects the threshold is their maximum, a noisy statistic). None: ``threshold`` stays
        fixed in every replicate.

    Returns dict metric -> (lo, hi) for :data:`METRIC_NAMES` at level ``1 - alpha``
    (default 95%); ``n`` replicates drawn from ``np.random.default_rng(seed)``.
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    sh, st = s[y == 0], s[y == 1]
    if sh.size == 0 or st.size == 0:
        raise GlioKitError("bootstrap_ci needs healthy and tumour subjects")
    rng = np.random.default_rng(seed)
    n = int(n)
    # multiplicities of each subject in each replicate (multinomial = resampling with replacement)
    wh = rng.multinomial(sh.size, np.full(sh.size, 1.0 / sh.size), size=n).astype(float)
    wt = rng.multinomial(st.size, np.full(st.size, 1.0 / st.size), size=n).astype(float)
    thr = np.full(n, float(threshold))
    if val_scores is not None:  # drawn after the test weights: the AUC's interval stays as it was
        v = np.asarray(val_scores, dtype=float).ravel()
        v = v[np.isfinite(v)]
        k = int(math.floor(fpr * v.size + 1e-9))  # the rule of threshold_at_fpr, per replicate
        thr = -np.sort(-v[rng.integers(0, v.size, size=(n, v.size))], axis=1)[:, k]
    fp = (wh * (sh[None, :] > thr[:, None])).sum(axis=1)
    tn = sh.size - fp
    tp = (wt * (st[None, :] > thr[:, None])).sum(axis=1)
    # recall = tp / (tp + fn), and tp + fn = st.size in every replicate
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = tp / st.size
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    pair = (st[:, None] > sh[None, :]).astype(float) + 0.5 * (st[:, None] == sh[None, :])
    reps = dict(
        accuracy=(tp + tn) / (sh.size + st.size),
        precision=precision,
        recall=recall,
        specificity=tn / sh.size,
        f1=f1,
        subject_auc=_auc_from_counts(wt, wh, pair),
    )
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {k: tuple(float(v) for v in np.percentile(r, q)) for k, r in reps.items()}


def expected_fpr(n_val: int, fpr: float) -> float:
    """The expected share of *new* healthy subjects above :func:`threshold_at_fpr`'s threshold.

    The threshold is the (k+1)-th largest of ``n_val`` healthy validation scores, k = floor(fpr n);
    for exchangeable healthy subjects a new one lies above it with probability (k+1) / (n+1)
    (order statistics). So 12 validation subjects give 1/13 = 7.7 % at fpr 0.05, not 5 %;
    19 give 1/20 = 5 %, 39 give 2/40 = 5 %.
    """
    if n_val < 1:
        raise ValueError("expected_fpr needs at least one validation subject")
    k = int(math.floor(fpr * n_val + 1e-9))
    return (k + 1) / (n_val + 1)


# -------------------------------------------------------------------- pixel level
def _subsample(n: int, max_n: int = MAX_PIXELS, seed: int = 0) -> np.ndarray | slice:
    """Deterministic subset of ``n`` items (all of them when n <= max_n)."""
    if n <= max_n:
        return slice(None)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def pixel_threshold_from_healthy(res_maps_val, brain_val, percentile: float = 99.0) -> float:
    """Pixel threshold = ``percentile`` of in-brain residuals of healthy validation slices.

    res_maps_val : (N, H, W) residual maps of healthy *validation* slices.
    brain_val : (N, H, W) masks of the pixels that count (pass the eroded brain used for
        the maps, so the zeroed rim does not pull the percentile down).
    With percentile 99, about 1% of healthy in-brain pixels end up above the threshold.
    Returns the threshold in the maps' units (a subsample of 10 million pixels when more).
    """
    vals = np.asarray(res_maps_val, dtype=np.float32)[np.asarray(brain_val) > 0]
    if vals.size == 0:
        raise GlioKitError("pixel_threshold_from_healthy: no in-brain pixels in the healthy validation "
                           "slices; check the brain masks of the slice cache")
    vals = vals[_subsample(vals.size, 5 * MAX_PIXELS)]
    return float(np.percentile(vals, percentile))


def dice(pred, target) -> float:
    """Dice = 2|P ∩ T| / (|P| + |T|) of two masks of one shape; 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(target, bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)


def _dice_by_subject(pred: np.ndarray, target: np.ndarray, subjects) -> dict:
    """Dice per subject id (slices of (N, H, W) grouped by ``subjects`` (N,)), for subjects with a lesion."""
    subjects = np.asarray(subjects)
    per = {}
    for sid in pd.unique(subjects):
        m = subjects == sid
        if target[m].any():
            per[str(sid)] = dice(pred[m], target[m])
    return per


def pixel_metrics(res_maps, lesion, brain, threshold: float, subjects=None, min_size: int = 0) -> dict:
    """Segmentation quality of residual maps against lesion masks.

    res_maps : (N, H, W) residual (or baseline) maps of the **test tumour** slices.
    lesion, brain : (N, H, W) masks; only in-brain pixels count (pass the eroded brain).
    threshold : pixel threshold from healthy validation data (never from these slices).
    subjects : (N,) subject id per slice, for the per-subject Dice (optional).
    min_size : connected components smaller than this are dropped before Dice.

    Returns dict: ``dice`` (pooled over all pixels of all slices), ``dice_per_subject``
    (mean over subjects with a lesion; nan without ``subjects``), ``dice_by_subject``,
    ``auprc`` (average precision) and ``auroc`` of the raw map values over in-brain pixels
    (a deterministic subsample of :data:`MAX_PIXELS` when there are more), ``threshold``,
    ``n_pixels``, ``lesion_fraction`` (share of in-brain pixels in the lesion: the AUPRC of
    chance).
    """
    res = np.asarray(res_maps, dtype=np.float32)
    les = np.asarray(lesion) > 0
    inb = np.asarray(brain) > 0
    if not (res.shape == les.shape == inb.shape):
        raise ValueError(f"res_maps {res.shape}, lesion {les.shape} and brain {inb.shape} must match")
    pred = binarise(res, threshold, min_size) & inb
    target = les & inb
    out = dict(dice=dice(pred, target), threshold=float(threshold))
    per = _dice_by_subject(pred, target, subjects) if subjects is not None else {}
    out["dice_per_subject"] = float(np.mean(list(per.values()))) if per else float("nan")
    out["dice_by_subject"] = per
    vals, y = res[inb], target[inb]
    sel = _subsample(vals.size)
    vals, y = vals[sel], y[sel]
    if y.any() and not y.all():
        out["auprc"] = float(average_precision_score(y, vals))
        out["auroc"] = float(roc_auc_score(y, vals))
    else:
        out["auprc"] = out["auroc"] = float("nan")
    out["n_pixels"] = int(inb.sum())
    out["lesion_fraction"] = float(target.sum() / max(inb.sum(), 1))
    return out


def best_dice_upper_bound(res_maps, lesion, brain, n_thresholds: int = 200, extra_thresholds=()) -> dict:
    """TEST-TUNED UPPER BOUND: the best pooled Dice over a threshold sweep on the test set.

    This picks the threshold by looking at the test lesions, which a real user cannot do;
    it shows how good the maps *could* be with a perfect threshold and must never be
    reported as the kit's result (that is :func:`pixel_metrics` at the validation
    threshold). The sweep covers ``n_thresholds`` quantiles of the in-brain values plus
    ``extra_thresholds`` (pass the validation threshold so the bound is never below it).

    res_maps, lesion, brain : (N, H, W).
    Returns dict ``dice``, ``threshold`` (the test-tuned one), ``thresholds`` (T,) and
    ``dices`` (T,).
    """
    res = np.asarray(res_maps, dtype=np.float32)
    inb = np.asarray(brain) > 0
    y = (np.asarray(lesion) > 0)[inb]
    v = res[inb]
    n_les = int(y.sum())
    qs = np.quantile(v, np.linspace(0.0, 1.0, int(n_thresholds))) if v.size else np.array([])
    thr = np.unique(np.concatenate([qs, np.asarray(list(extra_thresholds), dtype=float)]))
    # Dice at every threshold from one sort: predicted = v > t
    order = np.argsort(v, kind="stable")
    vs, ys = v[order], y[order]
    tail_les = np.concatenate([np.cumsum(ys[::-1])[::-1], [0]])  # lesion pixels at positions >= i
    first_above = np.searchsorted(vs, thr, side="right")
    n_pred = v.size - first_above
    tp = tail_les[first_above]
    denom = n_pred + n_les
    dices = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)
    best = int(np.argmax(dices)) if dices.size else None
    return dict(dice=float(dices[best]) if best is not None else float("nan"),
                threshold=float(thr[best]) if best is not None else float("nan"),
                thresholds=thr, dices=dices)

"""Evaluation: subject-level detection as in the paper, pixel-level segmentation, a baseline.

Conventions (used everywhere in the kit)
----------------------------------------
* Tumour = **positive** (label 1), healthy = negative (label 0), as in the paper.
* A subject is called abnormal when ``score > threshold`` (strictly greater).
* Thresholds come from **healthy validation** data only (subjects held out of training):
  the subject threshold is the smallest value that keeps at most ``fpr_target`` of the
  healthy validation subjects above it (:func:`threshold_at_fpr`); the pixel threshold is a
  high percentile of the in-brain residuals of healthy validation slices
  (:func:`pixel_threshold_from_healthy`). The test set never chooses a threshold. The one
  exception is :func:`best_dice_upper_bound`, a *test-tuned upper bound* shown for context
  and never used as the result.
* The confusion matrix is reported in the paper's Table I layout: rows = actual
  (negative, positive), columns = predicted (negative, positive)::

                     predicted negative   predicted positive
      actual negative        TN                   FP
      actual positive        FN                   TP

The paper's printed numbers are in :data:`PAPER`; :func:`paper_consistency` shows that its
precision and recall do not follow from its own counts (see there).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import GlioKitError
from .residuals import eroded_brain, residual_map
from .scoring import load_slice_scores, load_subject_scores

# ------------------------------------------------------------------------------ paper
#: What the paper reports (abstract and Results). Test set: 27 healthy + 27 HGG subjects;
#: 24/27 tumours and 25/27 healthy subjects classified correctly.
#:
#: Those counts imply TP 24, FN 3, TN 25, FP 2, hence accuracy 49/54 = 0.907 (matches),
#: precision 24/26 = 0.923 and recall 24/27 = 0.889. The printed precision 0.892 and recall
#: 0.923 do not match the paper's own counts (the printed recall equals the precision the
#: counts imply). The kit reports both and fixes neither; see :func:`paper_consistency`.
PAPER = dict(
    accuracy=0.907,
    precision=0.892,
    recall=0.923,
    subject_auc=0.907,
    tumours_right=24,
    healthy_right=25,
    n_test_tumor=27,
    n_test_healthy=27,
    confusion=dict(tn=25, fp=2, fn=3, tp=24),  # implied by the counts above
    source="seed paper, abstract and Results",
)

#: The paper's operating point on the ROC curve, from its counts: FPR = 2/27, TPR = 24/27.
PAPER_OPERATING_POINT = (2 / 27, 24 / 27)

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "subject_auc")


def paper_consistency() -> dict:
    """The paper's printed metrics next to the metrics its own counts imply.

    The paper says 24 of 27 tumours and 25 of 27 healthy subjects were classified correctly:
    TP 24, FN 3, TN 25, FP 2. From these, accuracy = 49/54 = 0.907 (matches the printed
    0.907), precision = 24/26 = 0.923 and recall = 24/27 = 0.889, whereas the paper prints
    precision 0.892 and recall 0.923. The printed values cannot both come from these counts
    (the printed recall equals the implied precision; the printed precision is close to, but
    not, the implied recall). AUC cannot be checked from counts. Nothing is "corrected":
    the kit compares itself with the printed values and shows the implied ones beside them.

    Returns dict with ``printed``, ``implied`` (metric -> value), ``confusion`` (the implied
    counts), ``matches`` (metric -> bool at the paper's 3-decimal rounding) and ``note``.
    """
    c = PAPER["confusion"]
    implied = _rates(c["tn"], c["fp"], c["fn"], c["tp"])
    printed = {k: PAPER[k] for k in ("accuracy", "precision", "recall", "subject_auc")}
    matches = {k: abs(round(implied[k], 3) - printed[k]) < 1e-9 for k in ("accuracy", "precision", "recall")}
    note = (
        "The paper's counts (24/27 tumours and 25/27 healthy right) imply TP 24, FN 3, TN 25, FP 2: "
        f"accuracy {implied['accuracy']:.3f}, precision {implied['precision']:.3f}, recall {implied['recall']:.3f}. "
        "The paper prints precision 0.892 and recall 0.923, which its own counts do not give "
        "(accuracy 0.907 does match). Both are reported; neither is changed."
    )
    return dict(printed=printed, implied={k: round(v, 4) for k, v in implied.items()}, confusion=dict(c),
                matches=matches, note=note)


# ------------------------------------------------------------------ subject level
def threshold_at_fpr(healthy_scores, fpr: float = 0.05) -> float:
    """Smallest threshold with at most ``fpr`` of the healthy scores **above** it.

    Convention: a subject is abnormal when ``score > threshold``. With ``n`` healthy
    (validation) scores, ``k = floor(fpr * n)`` false positives are allowed, and the
    threshold is the (k+1)-th largest healthy score: exactly the k largest lie above it (fewer
    with ties), and any smaller threshold would put k+1 above it. With few validation
    subjects (fpr * n < 1) this is the largest healthy score, i.e. zero validation false
    positives.

    healthy_scores : 1-D array of scores of healthy validation subjects (never test ones).
    fpr : allowed false-positive rate, 0 <= fpr < 1.
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


def _rates(tn, fp, fn, tp) -> dict:
    """Accuracy, precision, recall, specificity, F1 from counts; 0 where a ratio is 0/0."""
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return dict(
        accuracy=_safe_div(tp + tn, tn + fp + fn + tp),
        precision=precision,
        recall=recall,
        specificity=_safe_div(tn, tn + fp),
        f1=_safe_div(2 * precision * recall, precision + recall),
    )


def confusion(labels, scores, threshold: float) -> dict:
    """Counts ``tn, fp, fn, tp`` (ints) with tumour = positive and abnormal = score > threshold."""
    y = np.asarray(labels).astype(int).ravel()
    pred = np.asarray(scores, dtype=float).ravel() > threshold
    return dict(tn=int(((y == 0) & ~pred).sum()), fp=int(((y == 0) & pred).sum()),
                fn=int(((y == 1) & ~pred).sum()), tp=int(((y == 1) & pred).sum()))


def roc(labels, scores) -> dict:
    """ROC curve (scikit-learn): ``fpr``, ``tpr``, ``thresholds`` arrays and ``auc``.

    With a single class present the curve is undefined: empty arrays and ``auc`` = nan.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if len(np.unique(y)) < 2:
        return dict(fpr=np.array([]), tpr=np.array([]), thresholds=np.array([]), auc=float("nan"))
    fpr, tpr, thr = roc_curve(y, s)
    return dict(fpr=fpr, tpr=tpr, thresholds=thr, auc=float(roc_auc_score(y, s)))


def subject_metrics(labels, scores, threshold: float) -> dict:
    """Subject-level detection metrics at a fixed ``threshold``.

    Returns dict: ``confusion`` {tn, fp, fn, tp} (Table I layout), ``accuracy``,
    ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN), ``specificity`` = TN/(TN+FP),
    ``f1`` (each 0 where its denominator is 0, e.g. precision when nothing is called
    abnormal), ``subject_auc`` (ROC AUC, threshold-free; nan with one class),
    ``threshold``, ``n_healthy``, ``n_tumor`` and ``roc`` (fpr, tpr, thresholds arrays).
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    c = confusion(y, s, threshold)
    out = dict(confusion=c, **_rates(**c))
    curve = roc(y, s)
    out["subject_auc"] = curve.pop("auc")
    out.update(threshold=float(threshold), n_healthy=int((y == 0).sum()), n_tumor=int((y == 1).sum()), roc=curve)
    return out


def _auc_from_counts(wt: np.ndarray, wh: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """AUC of resamples given multiplicity weights of tumour (B, nt) and healthy (B, nh) scores."""
    num = np.einsum("bi,ij,bj->b", wt, pair, wh)
    return num / (wt.sum(1) * wh.sum(1))


def bootstrap_ci(labels, scores, threshold: float, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile confidence intervals of every subject metric by a stratified bootstrap.

    Healthy and tumour subjects are resampled separately (with replacement, each group at
    its own size), so every replicate keeps both classes and AUC is always defined. The
    threshold stays fixed: it was chosen on validation data, not on the test set.

    Returns dict metric -> (lo, hi) for ``accuracy, precision, recall, specificity, f1,
    subject_auc`` at level ``1 - alpha`` (default 95%).
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
    fp = wh @ (sh > threshold)
    tn = sh.size - fp
    tp = wt @ (st > threshold)
    # recall = tp / (tp + fn), and tp + fn = st.size in every replicate
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = tp / st.size
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
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


# -------------------------------------------------------------------- pixel level
MAX_PIXELS = 2_000_000


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
    """
    vals = np.asarray(res_maps_val, dtype=np.float32)[np.asarray(brain_val) > 0]
    if vals.size == 0:
        raise GlioKitError("pixel_threshold_from_healthy: no in-brain pixels in the healthy validation slices")
    vals = vals[_subsample(vals.size, 5 * MAX_PIXELS)]
    return float(np.percentile(vals, percentile))


def dice(pred, target) -> float:
    """Dice = 2|P ∩ T| / (|P| + |T|); 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(target, bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)


def pixel_metrics(res_maps, lesion, brain, threshold: float, subjects=None, min_size: int = 0) -> dict:
    """Segmentation quality of residual maps against lesion masks.

    res_maps : (N, H, W) residual (or baseline) maps of the **test tumour** slices.
    lesion, brain : (N, H, W) masks; only in-brain pixels count (pass the eroded brain).
    threshold : pixel threshold from healthy validation data (never from these slices).
    subjects : length-N subject id per slice, for the per-subject Dice (optional).
    min_size : connected components smaller than this are dropped before Dice.

    Returns dict: ``dice`` (pooled over all pixels of all slices), ``dice_per_subject``
    (mean over subjects with a lesion; nan without ``subjects``), ``auprc`` (average
    precision) and ``auroc`` of the raw map values over in-brain pixels (a deterministic
    subsample of 2 million pixels when there are more), ``threshold``, ``n_pixels``,
    ``lesion_fraction`` (share of in-brain pixels in the lesion: the AUPRC of chance).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .residuals import binarise

    res = np.asarray(res_maps, dtype=np.float32)
    les = np.asarray(lesion) > 0
    inb = np.asarray(brain) > 0
    if not (res.shape == les.shape == inb.shape):
        raise ValueError(f"res_maps {res.shape}, lesion {les.shape} and brain {inb.shape} must match")
    pred = binarise(res, threshold, min_size) & inb
    target = les & inb
    out = dict(dice=dice(pred, target), threshold=float(threshold))
    per = {}
    if subjects is not None:
        subjects = np.asarray(subjects)
        for sid in pd.unique(subjects):
            m = subjects == sid
            if target[m].any():
                per[str(sid)] = dice(pred[m], target[m])
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

    Returns dict ``dice``, ``threshold`` (the test-tuned one), ``thresholds`` and ``dices``.
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


# ----------------------------------------------------------------------- baseline
def intensity_map(images, brain, erode: int = 1, median: int = 0) -> np.ndarray:
    """The baseline's pixel map: the normalised T2 intensity itself inside the eroded brain.

    ``images`` are in [-1, 1]; the map is ``x + 1`` (in [0, 2], the same units as residuals),
    0 outside the eroded brain, i.e. :func:`~glio_kit.residuals.residual_map` against a
    reconstruction that is all background (``G(z) = -1``).
    """
    return residual_map(images, -1.0, brain, kind="positive", median=median, erode=erode)


def intensity_baseline(cache, rows=None, erode: int = 1, median: int = 0, percentile: float = 99.0,
                       fpr: float = 0.05, chunk: int = 512) -> dict:
    """A simple, honest baseline in the same harness: "bright on T2 = lesion".

    Glioma and edema are hyperintense on T2, so the normalised intensity itself is a lesion
    map (:func:`intensity_map`). Its pixel threshold is the ``percentile`` of in-brain
    values of the healthy validation slices (the rule the GAN's residuals use), and a
    subject's score is the mean over its slices of the fraction of in-brain pixels above
    that threshold. The subject threshold comes from the healthy validation subjects at
    ``fpr`` (:func:`threshold_at_fpr`). CSF and the ventricles are bright on T2 too, which is
    exactly why this is a baseline and not a method: a model has to beat it to be useful.

    cache : a :class:`~glio_kit.preprocess.SliceCache`.
    rows : cache rows to score (default: every validation and test slice); those with
        split ``val`` and label 0 calibrate both thresholds.
    Returns dict: ``pixel_threshold``, ``threshold`` (subject level), ``slice_scores``
    (DataFrame row, subject, label, split, score) and ``subject_scores`` (DataFrame
    subject, label, split, score).
    """
    idx = cache.index
    if rows is None:
        rows = np.flatnonzero(idx["split"].isin(["val", "test"]).to_numpy())
    rows = np.asarray(rows, dtype=int)

    def maps(sel):
        r = rows[sel]
        return intensity_map(cache.images[r], cache.brain[r], erode, median), eroded_brain(cache.brain[r], erode)

    out = area_detector(maps, idx.iloc[rows], percentile, fpr, chunk)
    out["slice_scores"].insert(0, "row", rows)
    out.update(erode=int(erode), median=int(median), percentile=float(percentile))
    return out


def area_detector(maps, info: pd.DataFrame, percentile: float = 99.0, fpr: float = 0.05, chunk: int = 512) -> dict:
    """Subject scores from any lesion map by one rule: the share of in-brain pixels above a
    pixel threshold taken from healthy validation slices, averaged over a subject's slices.

    maps : callable ``maps(positions) -> (map (n, H, W), in_brain bool (n, H, W))`` for
        positions (0-based, into ``info``).
    info : DataFrame with ``subject, label, split`` per slice; ``split == "val"`` and
        ``label == 0`` calibrate both thresholds.
    Returns dict: ``pixel_threshold``, ``threshold`` (subject level), ``slice_scores``
    (subject, label, split, score) and ``subject_scores`` (subject, label, split, score).
    """
    n = len(info)
    val = np.flatnonzero(((info["split"] == "val") & (info["label"] == 0)).to_numpy())
    if val.size == 0:
        raise GlioKitError("no healthy validation slices among the rows to calibrate on")
    vmaps, vbrain = maps(val)
    pix_thr = pixel_threshold_from_healthy(vmaps, vbrain, percentile)
    frac = np.empty(n, dtype=float)
    for i in range(0, n, chunk):
        m, inb = maps(np.arange(i, min(i + chunk, n)))
        frac[i:i + chunk] = ((m > pix_thr) & inb).sum(axis=(1, 2)) / np.maximum(inb.sum(axis=(1, 2)), 1)
    slices = pd.DataFrame(dict(subject=info["subject"].astype(str).to_numpy(), label=info["label"].to_numpy(),
                               split=info["split"].to_numpy(), score=frac))
    subj = (slices.groupby("subject", sort=False)
            .agg(label=("label", "first"), split=("split", "first"), score=("score", "mean")).reset_index())
    healthy_val = subj[(subj.split == "val") & (subj.label == 0)]
    thr = threshold_at_fpr(healthy_val["score"], fpr)
    return dict(pixel_threshold=pix_thr, threshold=thr, slice_scores=slices, subject_scores=subj)


# ------------------------------------------------------------------ the metrics step
def _jsonable(obj):
    """numpy -> Python; nan/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _read_scores(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    recon = Path(run / "score") / "recon.npy"
    if not recon.exists():
        raise GlioKitError(f"{recon}: missing; run the scoring notebook (03) first")
    return load_slice_scores(run), load_subject_scores(run)


def _detection_block(subj: pd.DataFrame, fpr: float, n_boot: int, seed: int) -> dict:
    """Threshold from healthy validation subjects; metrics and CIs on the test subjects."""
    val = subj[(subj["split"] == "val") & (subj["label"] == 0)]
    test = subj[subj["split"] == "test"]
    if len(val) == 0:
        raise GlioKitError("no healthy validation subjects in the scores: the threshold cannot be chosen")
    if len(test) == 0:
        raise GlioKitError("no test subjects in the scores")
    thr = threshold_at_fpr(val["score"].to_numpy(), fpr)
    m = subject_metrics(test["label"].to_numpy(), test["score"].to_numpy(), thr)
    out = {k: m[k] for k in METRIC_NAMES}
    out.update(threshold=thr, confusion=m["confusion"], n_test_healthy=m["n_healthy"], n_test_tumor=m["n_tumor"],
               n_val_healthy=int(len(val)), fpr_target=float(fpr),
               val_fpr=float((val["score"].to_numpy() > thr).mean()), roc=m["roc"])
    if m["n_healthy"] and m["n_tumor"] and n_boot > 0:
        out["ci"] = {k: list(v) for k, v in bootstrap_ci(test["label"], test["score"], thr, n=n_boot, seed=seed).items()}
    else:
        out["ci"] = {}
    return out


def _pixel_block(val_maps, val_brain, test_maps, test_lesion, test_brain, test_subjects, percentile) -> dict:
    thr = pixel_threshold_from_healthy(val_maps, val_brain, percentile)
    pm_ = pixel_metrics(test_maps, test_lesion, test_brain, thr, subjects=test_subjects)
    ub = best_dice_upper_bound(test_maps, test_lesion, test_brain, extra_thresholds=[thr])
    return dict(pixel_dice=pm_["dice"], pixel_dice_per_subject=pm_["dice_per_subject"], pixel_auprc=pm_["auprc"],
                pixel_auroc=pm_["auroc"], pixel_threshold=thr, pixel_lesion_fraction=pm_["lesion_fraction"],
                dice_upper_bound_test_tuned=ub["dice"], dice_upper_bound_threshold_test_tuned=ub["threshold"],
                pixel_percentile=float(percentile))


def evaluate_run(run, cfg: dict, overwrite: bool = False) -> dict:
    """Step 05: every metric of a scored run -> ``metrics.json`` and ``metrics.md``.

    Reads the slice cache (``run/cache``) and the scoring step's outputs (``run/score``:
    ``slice_scores.csv``, ``subject_scores.csv``, ``recon.npy``). Thresholds come from the
    healthy validation subjects/slices only. Computes, for the DCGAN and for the intensity
    baseline (:func:`intensity_baseline`): subject metrics at the validation threshold with
    stratified-bootstrap 95% CIs, and, when the test tumour slices have lesion masks, pixel
    Dice (pooled and per subject), AUPRC, pixel AUROC and the test-tuned Dice upper bound.
    Also writes ``baseline/slice_scores.csv`` and ``baseline/subject_scores.csv``.

    cfg keys used: ``fpr_target``, ``pixel_percentile``, ``n_bootstrap``, ``median_filter``,
    ``seed`` and optionally ``residual_kind`` (default "positive") and ``erode`` (default 1).
    Returns the dictionary written to ``metrics.json``.
    """
    from .preprocess import SliceCache
    from .runtime import RunDir

    run = run if isinstance(run, RunDir) else RunDir(run)
    kind = cfg.get("residual_kind", "positive")
    erode = int(cfg.get("erode", 1))
    median = int(cfg.get("median_filter", 3) or 0)
    params = dict(fpr_target=float(cfg["fpr_target"]), pixel_percentile=float(cfg["pixel_percentile"]),
                  n_bootstrap=int(cfg["n_bootstrap"]), median_filter=median, seed=int(cfg.get("seed", 0)),
                  residual_kind=kind, erode=erode)
    if run.claim("metrics", params, after=("score",), overwrite=overwrite) and (run / "metrics.json").exists():
        return json.loads((run / "metrics.json").read_text())

    cache = SliceCache(run / "cache")
    slices, subj = _read_scores(run)
    fpr, n_boot, seed = params["fpr_target"], params["n_bootstrap"], params["seed"]

    result = dict(method="dcgan", reduction=cfg.get("subject_reduction", "mean"),
                  residual=dict(kind=kind, median=median, erode=erode))
    result.update(_detection_block(subj, fpr, n_boot, seed))

    # --- baseline on the same slices and subjects
    base = intensity_baseline(cache, slices["row"].to_numpy(), erode=erode, median=0,
                              percentile=params["pixel_percentile"], fpr=fpr)
    bdir = run.reset_dir("baseline")
    base["slice_scores"].to_csv(bdir / "slice_scores.csv", index=False)
    base["subject_scores"].to_csv(bdir / "subject_scores.csv", index=False)
    baseline = dict(method="intensity", description="normalised T2 intensity in the eroded brain; subject score = "
                    "mean over slices of the fraction of in-brain pixels above the healthy-validation percentile")
    baseline.update(_detection_block(base["subject_scores"], fpr, n_boot, seed))

    # --- beyond the paper: the DCGAN's residual scored by the baseline's rule (same harness)
    recon = np.load(run / "score" / "recon.npy", mmap_mode="r")
    if recon.shape[0] != len(slices):
        raise GlioKitError(f"{run / 'score' / 'recon.npy'}: {recon.shape[0]} reconstructions for "
                           f"{len(slices)} scored slices")
    s_rows, s_k = slices["row"].to_numpy(), slices["k"].to_numpy()

    def residual_maps(sel):
        r, k = s_rows[sel], s_k[sel]
        return (residual_map(np.asarray(cache.images[r]), np.asarray(recon[k]), np.asarray(cache.brain[r]),
                             kind, median, erode), eroded_brain(np.asarray(cache.brain[r]), erode))

    area = area_detector(residual_maps, slices, params["pixel_percentile"], fpr)
    area["subject_scores"].to_csv(run / "score" / "subject_scores_residual_area.csv", index=False)
    residual_area = dict(method="dcgan-residual-area",
                         description="DCGAN positive residual in the eroded brain, scored by the baseline's rule")
    residual_area.update(_detection_block(area["subject_scores"], fpr, n_boot, seed))

    # --- pixel level, when the test tumour slices have masks
    val_sel = ((slices["split"] == "val") & (slices["label"] == 0)).to_numpy()
    tum_sel = ((slices["split"] == "test") & (slices["label"] == 1)).to_numpy()
    tum_rows = slices.loc[tum_sel, "row"].to_numpy()
    has_masks = bool(tum_rows.size) and bool(np.asarray(cache.lesion[np.sort(tum_rows)]).any())
    result["has_masks"] = baseline["has_masks"] = has_masks
    if has_masks:
        vr, vk = slices.loc[val_sel, "row"].to_numpy(), slices.loc[val_sel, "k"].to_numpy()
        tr, tk = tum_rows, slices.loc[tum_sel, "k"].to_numpy()
        tsub = slices.loc[tum_sel, "subject"].to_numpy()
        v_img, v_brain = np.asarray(cache.images[vr]), np.asarray(cache.brain[vr])
        t_img, t_brain, t_les = np.asarray(cache.images[tr]), np.asarray(cache.brain[tr]), np.asarray(cache.lesion[tr])
        v_eb, t_eb = eroded_brain(v_brain, erode), eroded_brain(t_brain, erode)
        v_res = residual_map(v_img, np.asarray(recon[vk]), v_brain, kind, median, erode)
        t_res = residual_map(t_img, np.asarray(recon[tk]), t_brain, kind, median, erode)
        result.update(_pixel_block(v_res, v_eb, t_res, t_les, t_eb, tsub, params["pixel_percentile"]))
        baseline.update(_pixel_block(intensity_map(v_img, v_brain, erode), v_eb, intensity_map(t_img, t_brain, erode),
                                     t_les, t_eb, tsub, params["pixel_percentile"]))
    result["baseline"] = baseline
    result["residual_area"] = residual_area
    result["paper"] = dict(PAPER, operating_point=dict(fpr=PAPER_OPERATING_POINT[0], tpr=PAPER_OPERATING_POINT[1]),
                           consistency=paper_consistency())
    result["params"] = params
    result = _jsonable(result)
    (run / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "metrics.md").write_text(metrics_markdown(result))
    run.mark_done("metrics", subject_auc=result["subject_auc"], accuracy=result["accuracy"],
                  baseline_auc=baseline.get("subject_auc"))
    return result


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and all(c is not None for c in ci):
        s += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return s


def metrics_markdown(result: dict) -> str:
    """The ``metrics.md`` table: metric | paper | kit (95% CI) | baseline (95% CI)."""
    base = result.get("baseline", {})
    area = result.get("residual_area", {})
    paper = result.get("paper", PAPER)
    implied = paper_consistency()["implied"]
    rows = [
        ("subject AUC", "subject_auc", paper.get("subject_auc")),
        ("accuracy", "accuracy", paper.get("accuracy")),
        ("precision", "precision", paper.get("precision")),
        ("recall (sensitivity)", "recall", paper.get("recall")),
        ("specificity", "specificity", None),
        ("F1", "f1", None),
    ]
    lines = ["| metric | paper | kit: paper's score (95% CI) | kit: residual area (95% CI) | baseline (95% CI) |",
             "|---|---|---|---|---|"]
    for label, key, p in rows:
        pv = _fmt(p)
        if key in implied and p is not None and round(implied[key], 3) != p:
            pv += f" (counts imply {implied[key]:.3f})"
        elif key in ("specificity", "f1"):
            pv = f"{implied[key]:.3f} (from counts)"
        lines.append(f"| {label} | {pv} | {_fmt(result.get(key), result.get('ci', {}).get(key))} | "
                     f"{_fmt(area.get(key), area.get('ci', {}).get(key))} | "
                     f"{_fmt(base.get(key), base.get('ci', {}).get(key))} |")
    pc = paper.get("confusion", PAPER["confusion"])
    for name in ("tp", "fn", "tn", "fp"):
        lines.append(f"| {name.upper()} | {pc[name]} | {result['confusion'][name]} | "
                     f"{area.get('confusion', {}).get(name, '–')} | {base.get('confusion', {}).get(name, '–')} |")
    lines.append(f"| test subjects (healthy + tumour) | 27 + 27 | {result['n_test_healthy']} + {result['n_test_tumor']} | "
                 f"{area.get('n_test_healthy', '–')} + {area.get('n_test_tumor', '–')} | "
                 f"{base.get('n_test_healthy', '–')} + {base.get('n_test_tumor', '–')} |")
    def g(v):
        return "–" if v is None else f"{v:.4g}"

    lines.append(f"| subject threshold (from healthy validation) | – | {g(result.get('threshold'))} | "
                 f"{g(area.get('threshold'))} | {g(base.get('threshold'))} |")
    if result.get("has_masks"):
        for label, key in (("pixel Dice (pooled)", "pixel_dice"), ("pixel Dice (mean per subject)", "pixel_dice_per_subject"),
                           ("pixel AUPRC", "pixel_auprc"), ("pixel AUROC", "pixel_auroc"),
                           ("pixel threshold (healthy validation)", "pixel_threshold"),
                           ("Dice upper bound (TEST-TUNED, not a result)", "dice_upper_bound_test_tuned")):
            lines.append(f"| {label} | – | {_fmt(result.get(key))} | (same maps) | {_fmt(base.get(key))} |")
    notes = [
        "",
        "Kit, paper's score: subject score = mean of slice anomaly scores A = (1-lambda) R + lambda D (the paper). "
        "Kit, residual area (beyond the paper): the DCGAN's positive residual max(x - G(z), 0) in the eroded brain, "
        "subject score = mean over slices of the share of pixels above the healthy-validation pixel threshold, the "
        "same rule the baseline applies to the intensity.",
        "",
        f"Thresholds: subject score > threshold = abnormal; threshold chosen on {result.get('n_val_healthy', '?')} healthy "
        f"validation subjects at a target false-positive rate of {result.get('fpr_target', '?')}. "
        "The test set chooses nothing, except the Dice upper bound, which is labelled test-tuned.",
        "",
        f"Paper: {paper_consistency()['note']}",
        "",
    ]
    return "\n".join(lines + notes)


def misclassified(run, threshold: float | None = None) -> pd.DataFrame:
    """Test subjects on the wrong side of ``threshold`` (default: the one in ``metrics.json``).

    Returns DataFrame ``subject, label, score, predicted, error`` ("false positive" /
    "false negative"), sorted by distance from the threshold (most confident mistakes first).
    """
    run_path = Path(getattr(run, "path", run))
    if threshold is None:
        mfile = run_path / "metrics.json"
        if not mfile.exists():
            raise GlioKitError(f"{mfile}: not found; pass a threshold or run the metrics step first")
        threshold = json.loads(mfile.read_text())["threshold"]
    subj = load_subject_scores(run_path)
    test = subj[subj["split"] == "test"].copy()
    test["predicted"] = (test["score"] > threshold).astype(int)
    wrong = test[test["predicted"] != test["label"]].copy()
    wrong["error"] = np.where(wrong["label"] == 1, "false negative", "false positive")
    wrong["margin"] = (wrong["score"] - threshold).abs()
    cols = ["subject", "label", "score", "predicted", "error", "margin"]
    info = cohort_annotations(run_path)
    if info is not None:
        wrong = wrong.merge(info, on="subject", how="left")
        cols += [c for c in info.columns if c != "subject"]
    return wrong.sort_values("margin", ascending=False)[cols].reset_index(drop=True)


def cohort_annotations(run_path) -> pd.DataFrame | None:
    """Per-subject facts a synthetic cohort records (``has_wmh``, ``lesion_ml``), or None.

    Found through the prep step's record: the cohort's ``cohort.json`` sits beside its
    ``train_healthy`` folder. Real cohorts have no such file.
    """
    rec = Path(run_path) / "steps" / "prep.json"
    if not rec.exists():
        return None
    train_dir = json.loads(rec.read_text()).get("params", {}).get("train_healthy", "")
    cj = Path(train_dir).parent / "cohort.json"
    if not train_dir or not cj.exists():
        return None
    subjects = json.loads(cj.read_text()).get("subjects", [])
    df = pd.DataFrame([{"subject": s.get("id"), "has_wmh": bool(s.get("has_wmh", False)),
                        "lesion_ml": s.get("lesion_ml")} for s in subjects])
    return df if len(df) else None


# -------------------------------------------------------------------------- figures
def plot_roc(result: dict, ax=None):
    """ROC curves of the kit (and baseline), the kit's operating point at its validation
    threshold, and the paper's operating point (FPR 2/27, TPR 24/27)."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(4.6, 4.4)) if ax is None else (ax.figure, ax))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    for res, name, color in ((result, "DCGAN, paper's score", "C0"),
                             (result.get("residual_area") or {}, "DCGAN, residual area", "C2"),
                             (result.get("baseline") or {}, "intensity baseline", "C1")):
        curve = res.get("roc") or {}
        if curve.get("fpr"):
            auc = res.get("subject_auc")
            ax.plot(curve["fpr"], curve["tpr"], color=color, drawstyle="steps-post",
                    label=f"{name}, AUC {auc:.3f}" if auc is not None else name)
        c = res.get("confusion")
        if c:
            ax.plot(_safe_div(c["fp"], c["fp"] + c["tn"]), _safe_div(c["tp"], c["tp"] + c["fn"]), "o", color=color,
                    mec="k", label=f"{name} at validation threshold")
    ax.plot(*PAPER_OPERATING_POINT, "*", color="C3", ms=13, mec="k", label="paper (24/27 TP, 2/27 FP)")
    ax.set(xlabel="false-positive rate (healthy called tumour)", ylabel="true-positive rate (recall)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Subject-level ROC (test set)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def plot_confusion(confusion_counts: dict, title: str = "Confusion matrix (Table I layout)", ax=None):
    """Confusion matrix laid out as the paper's Table I: rows actual, columns predicted."""
    import matplotlib.pyplot as plt

    c = confusion_counts
    mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = (plt.subplots(figsize=(3.8, 3.4)) if ax is None else (ax.figure, ax))
    ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(int(mat.max()), 1))
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{names[i][j]}\n{mat[i, j]}", ha="center", va="center",
                    color="white" if mat[i, j] > mat.max() / 2 else "black", fontsize=11)
    ax.set_xticks([0, 1], ["negative\n(healthy)", "positive\n(tumour)"])
    ax.set_yticks([0, 1], ["negative\n(healthy)", "positive\n(tumour)"])
    ax.set(xlabel="predicted label", ylabel="actual label", title=title)
    return fig


def plot_score_distributions(subject_scores: pd.DataFrame, threshold: float, title: str = "Subject scores", ax=None):
    """Subject scores of healthy validation, healthy test and tumour test subjects, with the
    threshold (chosen on the healthy validation subjects)."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(6, 3.2)) if ax is None else (ax.figure, ax))
    groups = [("healthy (validation)", (subject_scores.split == "val") & (subject_scores.label == 0), "C2"),
              ("healthy (test)", (subject_scores.split == "test") & (subject_scores.label == 0), "C0"),
              ("tumour (test)", (subject_scores.split == "test") & (subject_scores.label == 1), "C3")]
    rng = np.random.default_rng(0)
    for y, (name, sel, color) in enumerate(groups):
        s = subject_scores.loc[sel, "score"].to_numpy()
        ax.scatter(s, y + rng.uniform(-0.15, 0.15, s.size), s=18, color=color, alpha=0.8, edgecolor="k", lw=0.3)
        if s.size:
            box = dict(positions=[y], widths=0.5, showfliers=False, manage_ticks=False)
            try:  # matplotlib >= 3.10 spells it orientation=; vert= is deprecated there
                ax.boxplot(s, orientation="horizontal", **box)
            except TypeError:
                ax.boxplot(s, vert=False, **box)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_yticks(range(len(groups)), [g[0] for g in groups])
    ax.set(xlabel="subject score (mean of slice scores)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_pixel_comparison(result: dict, ax=None):
    """Pixel metrics of the kit vs the intensity baseline (bars), with the test-tuned Dice
    upper bound drawn hatched so nobody mistakes it for a result."""
    import matplotlib.pyplot as plt

    keys = [("pixel_dice", "Dice"), ("pixel_dice_per_subject", "Dice / subject"), ("pixel_auprc", "AUPRC"),
            ("pixel_auroc", "AUROC"), ("dice_upper_bound_test_tuned", "Dice upper bound\n(test-tuned)")]
    fig, ax = (plt.subplots(figsize=(6.4, 3.4)) if ax is None else (ax.figure, ax))
    base = result.get("baseline") or {}
    x = np.arange(len(keys))
    for off, res, name, color in ((-0.2, result, "DCGAN (kit)", "C0"), (0.2, base, "intensity baseline", "C1")):
        vals = [res.get(k) if res.get(k) is not None else np.nan for k, _ in keys]
        bars = ax.bar(x + off, vals, width=0.4, color=color, label=name)
        bars[-1].set_hatch("//")
        bars[-1].set_alpha(0.5)
    if result.get("pixel_lesion_fraction") is not None:
        ax.axhline(result["pixel_lesion_fraction"], color="grey", ls=":", lw=1, label="AUPRC of chance")
    ax.set_xticks(x, [k[1] for k in keys], fontsize=8)
    ax.set(ylim=(0, 1), title="Pixel level, test tumour slices (thresholds from healthy validation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_figures(run, result: dict | None = None) -> dict:
    """All figures of the metrics step as ``name -> Figure`` (the notebook shows and saves them)."""
    run_path = Path(getattr(run, "path", run))
    result = result or json.loads((run_path / "metrics.json").read_text())
    figs = dict(roc=plot_roc(result), confusion=plot_confusion(result["confusion"], "DCGAN (kit): Table I layout"))
    subj = load_subject_scores(run_path)
    figs["score_distributions"] = plot_score_distributions(subj, result["threshold"], "DCGAN subject scores")
    bfile = run_path / "baseline" / "subject_scores.csv"
    if bfile.exists() and result.get("baseline"):
        figs["baseline_score_distributions"] = plot_score_distributions(
            pd.read_csv(bfile, dtype={"subject": str}), result["baseline"]["threshold"], "Intensity-baseline subject scores")
    if result.get("has_masks"):
        figs["pixel_comparison"] = plot_pixel_comparison(result)
    return figs

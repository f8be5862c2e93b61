"""Step 05: every metric of a scored run -> ``metrics.json`` and ``metrics.md``.

:func:`evaluate_run` reads the slice cache (``<run>/cache``) and the score step's outputs
(``<run>/score``: ``slice_scores.csv``, ``subject_scores.csv`` and the residual maps it saved
with the settings in its step record; see :mod:`glio_kit.detect.scoring`). It recomputes no
residual map: the maps it evaluates are the ones notebooks 03 and 04 made and showed.

Three detectors are scored on the same test subjects, each with its subject threshold from
the healthy validation subjects (:func:`~glio_kit.evaluate.metrics.threshold_at_fpr`) and stratified
bootstrap 95% CIs:

* **dcgan**: the paper's subject score (mean of slice anomaly scores A);
* **residual_area** (beyond the paper): the saved residual maps scored by the baseline's
  rule (:func:`~glio_kit.detect.baseline.area_detector`);
* **lesion_load** (beyond the paper): the largest 3-D connected component of the thresholded
  residual across a subject's slices (:mod:`glio_kit.detect.lesion_load`);
* **baseline**: the intensity baseline (:func:`~glio_kit.detect.baseline.intensity_baseline`).

``recommended`` repeats the block of the score ``recommended_score`` names (chosen on
development cohorts, never on the demo's test subjects). ``site_shift`` is a control: the
AUC of tumour subjects' lesion-free slices against healthy test slices (0.5 = the detector
does not tell the two groups apart where there is no lesion; far from 0.5 = it finds the
scanner, the site or the group, not the tumour).

When the test tumour slices have lesion masks, the residual maps and the baseline's map are
also scored pixel by pixel (Dice, AUPRC, AUROC, and the test-tuned Dice upper bound).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..detect.baseline import area_detector, intensity_baseline, intensity_map
from ..detect.lesion_load import lesion_load_scores
from ..run.config import EvaluateSettings, ScoreSettings
from ..errors import GlioKitError
from .metrics import (METRIC_NAMES, best_dice_upper_bound, bootstrap_ci, pixel_metrics,
                      pixel_threshold_from_healthy, roc, subject_metrics, threshold_at_fpr)
from .paper import PAPER, paper_block, paper_consistency
from ..data.preprocess import SliceCache
from ..detect.residuals import eroded_brain
from ..run.runtime import RunDir
from ..detect.scoring import load_residual_maps, load_slice_scores, load_subject_scores, score_settings

#: The intensity baseline's map is not median-filtered (the raw intensity is the point).
BASELINE_MEDIAN = 0
RESIDUAL_FORMULAS = {"positive": "max(x - G(z), 0)", "absolute": "|x - G(z)|"}


# ------------------------------------------------------------------------ the step
def evaluate_run(run, settings: EvaluateSettings, overwrite: bool = False) -> dict:
    """Step 05: every metric of a scored run -> ``metrics.json`` and ``metrics.md``.

    run : :class:`~glio_kit.run.runtime.RunDir` (or its path) whose ``score`` step is done.
    settings : ``fpr_target`` (subject thresholds), ``pixel_percentile`` (pixel thresholds),
        ``n_bootstrap`` and ``seed`` (the CIs). The residual maps' ``residual_kind``,
        ``median_filter`` and ``erode`` are the score step's (read from its record).
    overwrite : redo the step when the run folder holds metrics made with other settings.

    Also writes ``baseline/slice_scores.csv``, ``baseline/subject_scores.csv`` and
    ``score/subject_scores_residual_area.csv``. Returns the dictionary written to
    ``metrics.json`` (read back when this exact evaluation is already done).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if run.claim_step("metrics", settings, overwrite=overwrite) and (run / "metrics.json").exists():
        return json.loads((run / "metrics.json").read_text())

    slices, subj = load_slice_scores(run), load_subject_scores(run)
    score = score_settings(run)
    maps = _residual_maps(run, len(slices))
    cache = SliceCache(run / "cache")

    result = dict(method="dcgan", reduction=score.subject_reduction, residual=residual_settings(score))
    result.update(detection_block(subj, settings))
    baseline = _baseline(run, cache, slices, score.erode, settings)
    residual_area = _residual_area(run, cache, slices, maps, score, settings)
    lesion_load = _lesion_load(run, cache, slices, maps, score, settings)
    detectors = dict(paper=result, residual_area=residual_area, lesion_load=lesion_load)
    _write_subjects_csv(run, subj, residual_area["subject_scores"], lesion_load["subject_scores"])
    has_masks = _test_tumours_have_masks(cache, slices)
    result["has_masks"] = baseline["has_masks"] = has_masks
    if has_masks:
        dcgan_pixels, base_pixels = _pixel_level(cache, slices, maps, score.erode, settings.pixel_percentile)
        result.update(dcgan_pixels)
        baseline.update(base_pixels)
    result.update(baseline=baseline, residual_area=residual_area, lesion_load=lesion_load,
                  paper=paper_block(), params=_params(settings, score), site_shift=site_shift(slices, maps))
    for block in (residual_area, lesion_load):
        block.pop("subject_scores")
    rec = detectors[settings.recommended_score]
    result["recommended"] = dict(name=settings.recommended_score,
                                 **{k: v for k, v in rec.items() if k not in ("baseline", "residual_area",
                                                                               "lesion_load", "paper")})
    result = _jsonable(result)
    (run / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "metrics.md").write_text(metrics_markdown(result))
    run.mark_done("metrics", subject_auc=result["subject_auc"], accuracy=result["accuracy"],
                  baseline_auc=baseline.get("subject_auc"))
    return result


def residual_settings(score: ScoreSettings) -> dict:
    """The ``residual`` entry of ``metrics.json``: how the score step made the maps."""
    return dict(kind=score.residual_kind, median=int(score.median_filter), erode=int(score.erode))


def _params(settings: EvaluateSettings, score: ScoreSettings) -> dict:
    """The ``params`` entry of ``metrics.json``: this step's knobs and the residual maps' ones."""
    return dict(fpr_target=float(settings.fpr_target), pixel_percentile=float(settings.pixel_percentile),
                n_bootstrap=int(settings.n_bootstrap), median_filter=int(score.median_filter),
                seed=int(settings.seed), residual_kind=score.residual_kind, erode=int(score.erode),
                lesion_min_size=int(settings.lesion_min_size), recommended_score=settings.recommended_score)


def _residual_maps(run, n_slices: int):
    """The score step's residual maps (M, H, W), memory-mapped, checked against the slice table."""
    maps = load_residual_maps(run)
    if maps.shape[0] != n_slices:
        raise GlioKitError(f"{run / 'score'}: {maps.shape[0]} residual maps for {n_slices} scored slices; "
                           f"rerun the scoring step (notebook 03) with overwrite=True")
    return maps


# ------------------------------------------------------------------ the detectors
def detection_block(subj: pd.DataFrame, settings: EvaluateSettings) -> dict:
    """Threshold from the healthy validation subjects; metrics and CIs on the test subjects.

    subj : one row per subject: ``subject, label, split, score``.
    Returns :data:`~glio_kit.evaluate.metrics.METRIC_NAMES`, ``threshold``, ``confusion``,
    ``n_test_healthy``, ``n_test_tumor``, ``n_val_healthy``, ``fpr_target``, ``val_fpr``
    (share of healthy validation subjects above the threshold), ``roc`` and ``ci``
    (metric -> [lo, hi]; empty without both classes or with ``n_bootstrap = 0``).
    """
    fpr, n_boot, seed = float(settings.fpr_target), int(settings.n_bootstrap), int(settings.seed)
    val = subj[(subj["split"] == "val") & (subj["label"] == 0)]
    test = subj[subj["split"] == "test"]
    if len(val) == 0:
        raise GlioKitError("no healthy validation subjects in the scores: the threshold cannot be chosen; "
                           "prepare the cohort with val_fraction > 0")
    if len(test) == 0:
        raise GlioKitError("no test subjects in the scores; check the cohort's test folders")
    thr = threshold_at_fpr(val["score"].to_numpy(), fpr)
    m = subject_metrics(test["label"].to_numpy(), test["score"].to_numpy(), thr)
    out = {k: m[k] for k in METRIC_NAMES}
    out.update(threshold=thr, confusion=m["confusion"], n_test_healthy=m["n_healthy"],
               n_test_tumor=m["n_tumor"], n_val_healthy=int(len(val)), fpr_target=fpr,
               val_fpr=float((val["score"].to_numpy() > thr).mean()), roc=m["roc"])
    if m["n_healthy"] and m["n_tumor"] and n_boot > 0:
        ci = bootstrap_ci(test["label"], test["score"], thr, n=n_boot, seed=seed)
        out["ci"] = {k: list(v) for k, v in ci.items()}
    else:
        out["ci"] = {}
    return out


def _baseline(run: RunDir, cache, slices: pd.DataFrame, erode: int, settings: EvaluateSettings) -> dict:
    """The intensity baseline on the scored slices; writes ``baseline/*.csv``."""
    base = intensity_baseline(cache, slices["row"].to_numpy(), erode=erode, median=BASELINE_MEDIAN,
                              percentile=settings.pixel_percentile, fpr=settings.fpr_target)
    bdir = run.reset_dir("baseline")
    base["slice_scores"].to_csv(bdir / "slice_scores.csv", index=False)
    base["subject_scores"].to_csv(bdir / "subject_scores.csv", index=False)
    out = dict(method="intensity", description="normalised T2 intensity in the eroded brain; subject score = "
               "mean over slices of the fraction of in-brain pixels above the healthy-validation percentile")
    out.update(detection_block(base["subject_scores"], settings))
    return out


def _residual_area(run: RunDir, cache, slices: pd.DataFrame, maps, score: ScoreSettings,
                   settings: EvaluateSettings) -> dict:
    """Beyond the paper: the saved residual maps scored by the baseline's rule (same harness);
    writes ``score/subject_scores_residual_area.csv``."""
    s_rows, s_k = slices["row"].to_numpy(), slices["k"].to_numpy()

    def residual_maps(sel):
        r, k = s_rows[sel], s_k[sel]
        return np.asarray(maps[k]), eroded_brain(np.asarray(cache.brain[r]), score.erode)

    area = area_detector(residual_maps, slices, settings.pixel_percentile, settings.fpr_target)
    area["subject_scores"].to_csv(run / "score" / "subject_scores_residual_area.csv", index=False)
    out = dict(method="dcgan-residual-area",
               description=f"DCGAN {score.residual_kind} residual in the eroded brain, "
                           "scored by the baseline's rule")
    out.update(detection_block(area["subject_scores"], settings))
    out["subject_scores"] = area["subject_scores"]
    return out


def _lesion_load(run: RunDir, cache, slices: pd.DataFrame, maps, score: ScoreSettings,
                 settings: EvaluateSettings) -> dict:
    """Beyond the paper: the largest 3-D connected component of the saved residual maps above the
    healthy-validation pixel threshold, per subject; writes ``score/subject_scores_lesion_load.csv``."""
    val = ((slices["split"] == "val") & (slices["label"] == 0)).to_numpy()
    vk, vr = slices.loc[val, "k"].to_numpy(), slices.loc[val, "row"].to_numpy()
    v_brain = eroded_brain(np.asarray(cache.brain[vr]), score.erode)
    pix = pixel_threshold_from_healthy(np.asarray(maps[vk]), v_brain, settings.pixel_percentile)
    ordered = np.asarray(maps[slices["k"].to_numpy()])  # (M, H, W) in the rows of `slices`
    subj = lesion_load_scores(ordered, slices, pix, settings.lesion_min_size)
    subj.to_csv(run / "score" / "subject_scores_lesion_load.csv", index=False)
    out = dict(method="dcgan-lesion-load", pixel_threshold=pix, min_size=int(settings.lesion_min_size),
               description=f"largest 3-D connected component (voxels of the slice cache) of the DCGAN's "
                           f"{score.residual_kind} residual above the healthy-validation pixel threshold, "
                           f"across the subject's slices; components under {settings.lesion_min_size} voxels "
                           "count as none")
    out.update(detection_block(subj, settings))
    out["subject_scores"] = subj
    return out


def _write_subjects_csv(run: RunDir, paper: pd.DataFrame, area: pd.DataFrame, load: pd.DataFrame) -> None:
    """``subjects.csv``: ``subject, label, score`` (the paper's score) of the test subjects, then
    one column per other subject score, named after it."""
    out = paper[paper["split"] == "test"][["subject", "label", "score"]].reset_index(drop=True)
    for name, other in (("residual_area", area), ("lesion_load", load)):
        out[name] = out["subject"].map(other.set_index("subject")["score"])
    out.to_csv(run / "subjects.csv", index=False)


def site_shift(slices: pd.DataFrame, maps=None) -> dict:
    """The site-shift control: lesion-free slices of tumour subjects against healthy test slices.

    slices : the score step's slice table (``split``, ``label``, ``lesion_pixels``, ``A``).
    With real data, healthy and tumour subjects often come from different scanners (IXI and
    BraTS); a detector that scores a tumour subject's lesion-free slices higher than a healthy
    subject's has learned the site, not the tumour. Returns ``auc_slice_A`` (0.5 is the ideal),
    the numbers of slices compared and their mean ``A``; ``auc_residual_mean`` too when the
    residual maps are given (their mean over each slice).
    """
    test = slices[slices["split"] == "test"]
    free = test[(test["label"] == 1) & (test["lesion_pixels"] == 0)]
    healthy = test[test["label"] == 0]
    out = dict(n_lesion_free_tumour_slices=int(len(free)), n_healthy_test_slices=int(len(healthy)),
               auc_slice_A=None, mean_A_lesion_free=None, mean_A_healthy=None, auc_residual_mean=None)
    if not len(free) or not len(healthy):
        return out
    labels = np.r_[np.ones(len(free)), np.zeros(len(healthy))]
    out.update(auc_slice_A=roc(labels, np.r_[free["A"], healthy["A"]])["auc"],
               mean_A_lesion_free=float(free["A"].mean()), mean_A_healthy=float(healthy["A"].mean()))
    if maps is not None:
        ks = np.r_[free["k"].to_numpy(), healthy["k"].to_numpy()]
        means = np.array([float(np.asarray(maps[k]).mean()) for k in ks])
        out["auc_residual_mean"] = roc(labels, means)["auc"]
    return out


# --------------------------------------------------------------------- pixel level
def _test_tumours_have_masks(cache, slices: pd.DataFrame) -> bool:
    """Whether any test tumour slice has a lesion mask (pixel metrics need them)."""
    tum = ((slices["split"] == "test") & (slices["label"] == 1)).to_numpy()
    rows = slices.loc[tum, "row"].to_numpy()
    return bool(rows.size) and bool(np.asarray(cache.lesion[np.sort(rows)]).any())


def _pixel_level(cache, slices: pd.DataFrame, maps, erode: int, percentile: float) -> tuple[dict, dict]:
    """Pixel blocks of the saved residual maps and of the baseline's map: thresholds from the
    healthy validation slices, metrics on the test tumour slices."""
    val = ((slices["split"] == "val") & (slices["label"] == 0)).to_numpy()
    tum = ((slices["split"] == "test") & (slices["label"] == 1)).to_numpy()
    vr, vk = slices.loc[val, "row"].to_numpy(), slices.loc[val, "k"].to_numpy()
    tr, tk = slices.loc[tum, "row"].to_numpy(), slices.loc[tum, "k"].to_numpy()
    tsub = slices.loc[tum, "subject"].to_numpy()
    v_img, v_brain = np.asarray(cache.images[vr]), np.asarray(cache.brain[vr])
    t_img, t_brain = np.asarray(cache.images[tr]), np.asarray(cache.brain[tr])
    t_les = np.asarray(cache.lesion[tr])
    v_eb, t_eb = eroded_brain(v_brain, erode), eroded_brain(t_brain, erode)
    dcgan = pixel_block(np.asarray(maps[vk]), v_eb, np.asarray(maps[tk]), t_les, t_eb, tsub, percentile)
    base = pixel_block(intensity_map(v_img, v_brain, erode, BASELINE_MEDIAN), v_eb,
                       intensity_map(t_img, t_brain, erode, BASELINE_MEDIAN), t_les, t_eb, tsub, percentile)
    return dcgan, base


def pixel_block(val_maps, val_brain, test_maps, test_lesion, test_brain, test_subjects,
                percentile: float) -> dict:
    """Pixel metrics of one kind of map, as stored in ``metrics.json``.

    val_maps, val_brain : (Nv, H, W) maps and eroded brains of healthy validation slices
        (they choose the pixel threshold at ``percentile``).
    test_maps, test_lesion, test_brain : (Nt, H, W) of the test tumour slices.
    test_subjects : (Nt,) subject id per test slice.
    Returns ``pixel_dice``, ``pixel_dice_per_subject``, ``pixel_auprc``, ``pixel_auroc``,
    ``pixel_threshold``, ``pixel_lesion_fraction``, ``dice_upper_bound_test_tuned`` (and its
    threshold) and ``pixel_percentile``.
    """
    thr = pixel_threshold_from_healthy(val_maps, val_brain, percentile)
    pm = pixel_metrics(test_maps, test_lesion, test_brain, thr, subjects=test_subjects)
    ub = best_dice_upper_bound(test_maps, test_lesion, test_brain, extra_thresholds=[thr])
    return dict(pixel_dice=pm["dice"], pixel_dice_per_subject=pm["dice_per_subject"], pixel_auprc=pm["auprc"],
                pixel_auroc=pm["auroc"], pixel_threshold=thr, pixel_lesion_fraction=pm["lesion_fraction"],
                dice_upper_bound_test_tuned=ub["dice"], dice_upper_bound_threshold_test_tuned=ub["threshold"],
                pixel_percentile=float(percentile))


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


# ---------------------------------------------------------------------- metrics.md
def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and all(c is not None for c in ci):
        s += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return s


def _g(v) -> str:
    return "–" if v is None else f"{v:.4g}"


SUBJECT_ROWS = (("subject AUC", "subject_auc"), ("accuracy", "accuracy"), ("precision", "precision"),
                ("recall (sensitivity)", "recall"), ("specificity", "specificity"), ("F1", "f1"))
PIXEL_ROWS = (("pixel Dice (pooled)", "pixel_dice"),
              ("pixel Dice (mean per subject)", "pixel_dice_per_subject"), ("pixel AUPRC", "pixel_auprc"),
              ("pixel AUROC", "pixel_auroc"),
              ("pixel threshold (healthy validation)", "pixel_threshold"),
              ("Dice upper bound (TEST-TUNED, not a result)", "dice_upper_bound_test_tuned"))
#: The table's detector columns: (key in metrics.json, header); "" = the top level (paper's score).
COLUMNS = (("", "kit: paper's score"), ("residual_area", "kit: residual area"),
           ("lesion_load", "kit: lesion load"), ("baseline", "baseline"))
#: recommended_score -> the column it names.
RECOMMENDED_COLUMN = dict(paper="", residual_area="residual_area", lesion_load="lesion_load")


def _columns(result: dict) -> list[tuple[str, dict]]:
    """(header, block) per detector column, the recommended one marked."""
    rec = RECOMMENDED_COLUMN.get((result.get("recommended") or {}).get("name"))
    out = []
    for key, header in COLUMNS:
        block = result if key == "" else result.get(key, {})
        out.append((header + (" = RECOMMENDED" if key == rec else "") + " (95% CI)", block))
    return out


def _subject_rows(result: dict, blocks: list[dict], paper: dict) -> list[str]:
    """Metric rows: the paper's printed value (with what its counts imply where they differ)."""
    implied = paper_consistency()["implied"]
    lines = []
    for label, key in SUBJECT_ROWS:
        p = paper.get(key) if key not in ("specificity", "f1") else None
        pv = _fmt(p)
        if key in implied and p is not None and round(implied[key], 3) != p:
            pv += f" (counts imply {implied[key]:.3f})"
        elif key in ("specificity", "f1"):
            pv = f"{implied[key]:.3f} (from counts)"
        lines.append(f"| {label} | {pv} | " + " | ".join(_fmt(b.get(key), b.get("ci", {}).get(key))
                                                       for b in blocks) + " |")
    return lines


def _count_rows(result: dict, blocks: list[dict], paper: dict) -> list[str]:
    """Confusion counts, numbers of test subjects and subject thresholds."""
    pc = paper.get("confusion", PAPER["confusion"])
    lines = [f"| {name.upper()} | {pc[name]} | "
             + " | ".join(str(b.get("confusion", {}).get(name, "–")) for b in blocks) + " |"
             for name in ("tp", "fn", "tn", "fp")]
    lines.append("| test subjects (healthy + tumour) | 27 + 27 | "
                 + " | ".join(f"{b.get('n_test_healthy', '–')} + {b.get('n_test_tumor', '–')}"
                              for b in blocks) + " |")
    lines.append("| subject threshold (from healthy validation) | – | "
                 + " | ".join(_g(b.get("threshold")) for b in blocks) + " |")
    return lines


def _notes(result: dict) -> list[str]:
    """The text under the table: what each column is, where thresholds come from, the paper."""
    res = result.get("residual") or {}
    kind = res.get("kind", "positive")
    load = result.get("lesion_load") or {}
    shift = result.get("site_shift") or {}
    n_val = result.get("n_val_healthy", "?")
    return [
        "",
        "Kit, paper's score: subject score = mean of slice anomaly scores A = (1-lambda) R + lambda D "
        "(the paper). "
        f"Kit, residual area (beyond the paper): the DCGAN's {kind} residual "
        f"{RESIDUAL_FORMULAS.get(kind, '')} "
        f"in the eroded brain (erosion {res.get('erode', '?')} px, median filter {res.get('median', '?')}, "
        "as the score step saved it), subject score = mean over slices of the share of pixels above the "
        "healthy-validation pixel threshold, the same rule the baseline applies to the intensity. "
        "Kit, lesion load (beyond the paper): the largest 3-D connected component of those above-threshold "
        f"pixels across the subject's slices, in voxels (components under {load.get('min_size', '?')} "
        "voxels count as none). The recommended score was chosen on development cohorts (other synthetic "
        "seeds), never on this run's test subjects.",
        "",
        "Thresholds: subject score > threshold = abnormal; threshold chosen on "
        f"{n_val} healthy validation subject{'' if n_val == 1 else 's'} at a target false-positive rate of "
        f"{result.get('fpr_target', '?')}. "
        "The test set chooses nothing, except the Dice upper bound, which is labelled test-tuned.",
        "",
        "Site-shift control (slice A of tumour subjects' lesion-free slices vs healthy test slices; 0.5 = "
        f"the detector does not tell the groups apart where there is no lesion): AUC "
        f"{_fmt(shift.get('auc_slice_A'))} ({shift.get('n_lesion_free_tumour_slices', '?')} vs "
        f"{shift.get('n_healthy_test_slices', '?')} slices); by mean residual: "
        f"{_fmt(shift.get('auc_residual_mean'))}.",
        "",
        f"Paper (see glio_kit.evaluate.paper): {paper_consistency()['note']}",
        "",
    ]


def metrics_markdown(result: dict) -> str:
    """The ``metrics.md`` table: metric | paper | one column per detector (paper's score,
    residual area, lesion load, baseline; each with its 95% CI, the recommended one marked),
    then the notes."""
    paper = result.get("paper", PAPER)
    cols = _columns(result)
    blocks = [b for _, b in cols]
    lines = ["| metric | paper | " + " | ".join(h for h, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    lines += _subject_rows(result, blocks, paper)
    lines += _count_rows(result, blocks, paper)
    if result.get("has_masks"):
        base = result.get("baseline", {})
        for label, key in PIXEL_ROWS:
            lines.append(f"| {label} | – | {_fmt(result.get(key))} | (same maps) | (same maps) | "
                         f"{_fmt(base.get(key))} |")
    return "\n".join(lines + _notes(result))


# -------------------------------------------------------------- what went wrong
def misclassified(run, threshold: float | None = None) -> pd.DataFrame:
    """Test subjects on the wrong side of ``threshold`` (default: the one in ``metrics.json``).

    Returns DataFrame ``subject, label, score, predicted, error`` ("false positive" /
    "false negative"), ``margin`` (distance from the threshold) and, for a synthetic cohort,
    :func:`cohort_annotations`; sorted by margin (most confident mistakes first).
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
    """Per-subject facts a synthetic cohort records (``subject, has_wmh, lesion_ml``), or None.

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

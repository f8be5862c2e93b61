"""Step 05: every metric of a scored run -> ``metrics.json`` and ``metrics.md``.

:func:`evaluate_run` reads the slice cache (``<run>/cache``) and the score step's outputs
(``<run>/score``: ``slice_scores.csv``, ``subject_scores.csv`` and the residual maps it saved
with the settings in its step record; see :mod:`glio_kit.detect.scoring`). It recomputes no
residual map: the maps it evaluates are the ones notebooks 03 and 04 made and showed.

Every subject score of the table :data:`glio_kit.detect.detectors.DETECTORS` (the paper's mean
of A, residual area, lesion load, the intensity baseline, ...) is scored on the same test
subjects, each with its subject threshold from the healthy validation subjects
(:func:`~glio_kit.evaluate.metrics.threshold_at_fpr`) and stratified bootstrap 95% CIs
(:func:`detection_block`). The first detector's block is the top level of ``metrics.json``,
every other one's the entry named after it.

``recommended`` repeats the block of the score ``recommended_score`` names (chosen on
development cohorts, never on the demo's test subjects). ``site_shift`` is a control: the
AUC of tumour subjects' lesion-free slices against healthy test slices (0.5 = the detector
does not tell the two groups apart where there is no lesion; far from 0.5 = it finds the
scanner, the site or the group, not the tumour).

When the test tumour slices have lesion masks, the detectors' pixel maps (the residual maps,
the baseline's intensity map) are also scored pixel by pixel (Dice, AUPRC, AUROC, and the
test-tuned Dice upper bound).

The step writes only its own outputs: ``metrics.json``, ``metrics.md`` and ``detectors/``
(``subject_scores.csv``: one column per detector; ``<name>_slice_scores.csv`` where a detector
has slice scores). It never writes into the score step's ``score/``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.slice_cache import SliceCache
from ..detect import detectors as D
from ..detect.detectors import ScoredSlices, residual_settings
from ..detect.scoring import load_residual_maps, load_slice_scores, load_subject_scores, score_settings
from ..errors import GlioKitError, RunFolderError
from ..run.config import SMOKE_NOTE, EvaluateSettings, ScoreSettings
from .markdown import metrics_markdown
from .metrics import (METRIC_NAMES, best_dice_upper_bound, bootstrap_ci, pixel_metrics,
                      expected_fpr, pixel_threshold_from_healthy, roc, subject_metrics, threshold_at_fpr)
from .paper import paper_block

__all__ = ["evaluate_run", "scored_slices", "detection_block", "load_detector_scores", "site_shift",
           "pixel_block", "residual_settings", "metrics_markdown", "misclassified", "cohort_annotations",
           "DETECTOR_DIR"]

#: The step's folder of per-detector scores (``<run>/detectors``).
DETECTOR_DIR = "detectors"


# ------------------------------------------------------------------------ the step
def evaluate_run(run, settings: EvaluateSettings, overwrite: bool = False) -> dict:
    """Step 05: every metric of a scored run -> ``metrics.json`` and ``metrics.md``.

    Parameters
    ----------
    run : RunDir
        A run folder (:class:`glio_kit.run.rundir.RunDir`) whose ``score`` step is done.
    settings : EvaluateSettings
        ``fpr_target`` (subject thresholds), ``pixel_percentile`` (pixel thresholds),
        ``n_bootstrap`` and ``seed`` (the CIs), ``lesion_min_size``, ``recommended_score``.
        The residual maps' ``residual_kind``, ``median_filter`` and ``erode`` are the score
        step's (read from its record).
    overwrite : bool
        Redo the step when the run folder holds metrics made with other settings.

    Returns
    -------
    dict
        What is written to ``metrics.json`` (read back when this exact evaluation is done).
        Also writes ``metrics.md`` and ``detectors/``.
    """
    if run.claim_step("metrics", settings, overwrite=overwrite) and (run / "metrics.json").exists():
        return json.loads((run / "metrics.json").read_text())

    data = scored_slices(run)
    scores = {name: det.subject_scores(data, settings) for name, det in D.DETECTORS.items()}
    blocks = {name: {**s.info, **detection_block(s.subjects, settings)} for name, s in scores.items()}
    _write_detector_scores(run, scores)
    _add_pixel_metrics(blocks, data, settings)

    top = D.top_level().name
    result = blocks[top]
    result.update({name: b for name, b in blocks.items() if name != top})
    result.update(paper=paper_block(), params=_params(settings, data.score),
                  site_shift=site_shift(data.slices, data.maps))
    others = set(blocks) - {top} | {"paper"}
    rec = blocks[settings.recommended_score]
    result["recommended"] = dict(name=settings.recommended_score, **{k: v for k, v in rec.items()
                                                                     if k not in others})
    result = _jsonable(result)
    if settings.profile == "smoke":  # its numbers (an AUC of 1.000 too) mean nothing: say so in both files
        result["note"] = SMOKE_NOTE
    (run / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "metrics.md").write_text(metrics_markdown(result))
    run.mark_done("metrics", subject_auc=result["subject_auc"], accuracy=result["accuracy"],
                  **{f"{name}_auc": result[name].get("subject_auc") for name in blocks if name != top})
    return result


def scored_slices(run) -> ScoredSlices:
    """What the score step saved, as the detectors read it (:class:`~glio_kit.detect.detectors.ScoredSlices`).

    Parameters
    ----------
    run : RunDir
        A run folder whose ``score`` step is done.

    Returns
    -------
    ScoredSlices
        The slice and subject tables, the recorded residual maps (memory-mapped, checked
        against the slice table), the slice cache and the score step's settings.
    """
    slices, subjects = load_slice_scores(run), load_subject_scores(run)
    maps = load_residual_maps(run)
    if maps.shape[0] != len(slices):
        raise GlioKitError(f"{run / 'score'}: {maps.shape[0]} residual maps for {len(slices)} scored slices; "
                           f"rerun the scoring step (notebook 03) with overwrite=True")
    return ScoredSlices(slices, maps, SliceCache(run / "cache"), score_settings(run), subjects)


def _params(settings: EvaluateSettings, score: ScoreSettings) -> dict:
    """The ``params`` entry of ``metrics.json``: this step's knobs and the residual maps' ones."""
    return dict(fpr_target=float(settings.fpr_target), pixel_percentile=float(settings.pixel_percentile),
                n_bootstrap=int(settings.n_bootstrap), median_filter=int(score.median_filter),
                seed=int(settings.seed), residual_kind=score.residual_kind, erode=int(score.erode),
                lesion_min_size=int(settings.lesion_min_size), recommended_score=settings.recommended_score)


def _write_detector_scores(run, scores: dict) -> None:
    """``detectors/subject_scores.csv`` (``subject, label, split`` and one column per detector,
    validation and test subjects) and ``detectors/<name>_slice_scores.csv`` where a detector
    has slice scores."""
    folder = run.reset_dir(DETECTOR_DIR)
    names = list(scores)
    table = scores[names[0]].subjects[["subject", "label", "split"]].reset_index(drop=True)
    for name in names:
        table[name] = table["subject"].map(scores[name].subjects.set_index("subject")["score"])
        if scores[name].slices is not None:
            scores[name].slices.to_csv(folder / f"{name}_slice_scores.csv", index=False)
    table.to_csv(folder / "subject_scores.csv", index=False)


def load_detector_scores(run, name: str) -> pd.DataFrame:
    """One detector's subject scores as the evaluation step wrote them.

    Parameters
    ----------
    run : RunDir or path
        A run folder whose ``metrics`` step is done.
    name : str
        A detector of :data:`~glio_kit.detect.detectors.DETECTORS`.

    Returns
    -------
    DataFrame
        ``subject, label, split, score`` (validation and test subjects).
    """
    path = Path(getattr(run, "path", run)) / DETECTOR_DIR / "subject_scores.csv"
    if not path.exists():
        raise RunFolderError(f"{path}: not in this run folder; run the metrics step (notebook 05) first")
    table = pd.read_csv(path, dtype={"subject": str})
    if name not in table:
        raise RunFolderError(f"{path}: no scores of the detector {name!r} (evaluated with another table of "
                             f"detectors); redo the metrics step (notebook 05, overwrite=True)")
    return table[["subject", "label", "split", name]].rename(columns={name: "score"})


# ------------------------------------------------------------------ subject level
def detection_block(subj: pd.DataFrame, settings: EvaluateSettings) -> dict:
    """Threshold from the healthy validation subjects; metrics and CIs on the test subjects.

    Parameters
    ----------
    subj : DataFrame
        One row per subject: ``subject, label, split, score``.
    settings : EvaluateSettings
        ``fpr_target``, ``n_bootstrap``, ``seed``.

    Returns
    -------
    dict
        :data:`~glio_kit.evaluate.metrics.METRIC_NAMES`, ``threshold``, ``confusion``,
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
               val_fpr=float((val["score"].to_numpy() > thr).mean()), roc=m["roc"],
               val_specificity=float((val["score"].to_numpy() <= thr).mean()),
               expected_fpr=expected_fpr(len(val), fpr), ci_resamples_validation=True)
    if m["n_healthy"] and m["n_tumor"] and n_boot > 0:
        ci = bootstrap_ci(test["label"], test["score"], thr, n=n_boot, seed=seed,
                          val_scores=val["score"].to_numpy(), fpr=fpr)
        out["ci"] = {k: list(v) for k, v in ci.items()}
    else:
        out["ci"] = {}
    return out


def site_shift(slices: pd.DataFrame, maps=None) -> dict:
    """The site-shift control: lesion-free slices of tumour subjects against healthy test slices.

    With real data, healthy and tumour subjects often come from different scanners (IXI and
    BraTS); a detector that scores a tumour subject's lesion-free slices higher than a healthy
    subject's has learned the site, not the tumour.

    Parameters
    ----------
    slices : DataFrame
        The score step's slice table (``split``, ``label``, ``lesion_pixels``, ``A``, ``k``).
    maps : array-like, shape (M, H, W), optional
        The residual maps (row ``k``); their mean over each slice is compared too.

    Returns
    -------
    dict
        ``auc_slice_A`` (0.5 is the ideal), the numbers of slices compared and their mean
        ``A``; ``auc_residual_mean`` when ``maps`` is given (None where nothing compares).
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
def _test_tumours_have_masks(data: ScoredSlices) -> bool:
    """Whether any test tumour slice has a lesion mask (pixel metrics need them)."""
    rows = data.slices["row"].to_numpy()[data.test_tumour()]
    return bool(rows.size) and bool(np.asarray(data.cache.lesion[np.sort(rows)]).any())


def _add_pixel_metrics(blocks: dict, data: ScoredSlices, settings: EvaluateSettings) -> None:
    """Into the block of the first detector of each pixel map (:data:`~glio_kit.detect.detectors.PIXEL_MAPS`):
    ``has_masks`` and, when the test tumour slices have masks, that map's :func:`pixel_block`
    (thresholds from the healthy validation slices at that detector's percentile knob, metrics
    on the test tumour slices)."""
    owners = {}
    for name, det in D.DETECTORS.items():
        if det.pixel_map:
            owners.setdefault(det.pixel_map, name)
    has_masks = _test_tumours_have_masks(data)
    val, tum = data.healthy_val(), data.test_tumour()
    if has_masks:
        v_eb, t_eb = data.brain(val), data.brain(tum)
        t_les = np.asarray(data.cache.lesion[data.slices["row"].to_numpy()[tum]])
        tsub = data.slices["subject"].to_numpy()[tum]
    for kind, name in owners.items():
        blocks[name]["has_masks"] = has_masks
        if has_masks:
            pixel_map = D.PIXEL_MAPS[kind]
            percentile = getattr(settings, D.DETECTORS[name].percentile)
            blocks[name].update(pixel_block(pixel_map(data, val), v_eb, pixel_map(data, tum), t_les, t_eb,
                                            tsub, percentile))


def pixel_block(val_maps, val_brain, test_maps, test_lesion, test_brain, test_subjects,
                percentile: float) -> dict:
    """Pixel metrics of one kind of map, as stored in ``metrics.json``.

    Parameters
    ----------
    val_maps, val_brain : ndarray, shape (Nv, H, W)
        Maps and eroded brains of healthy validation slices (they choose the pixel threshold
        at ``percentile``).
    test_maps, test_lesion, test_brain : ndarray, shape (Nt, H, W)
        Maps, lesion masks and eroded brains of the test tumour slices.
    test_subjects : ndarray, shape (Nt,)
        Subject id per test slice.
    percentile : float
        Pixel threshold percentile in (0, 100].

    Returns
    -------
    dict
        ``pixel_dice``, ``pixel_dice_per_subject``, ``pixel_auprc``, ``pixel_auroc``,
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

"""Figures for the metrics step (notebook 05): ROC, Table I, subject scores, pixel metrics.

Every function draws from ``metrics.json`` (the dictionary :func:`glio_kit.evaluate.evaluation.evaluate_run`
returns) or from the score tables, and returns a matplotlib Figure; the notebook shows it and
saves it with :func:`glio_kit.run.notebook.show`.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..detect import detectors as D
from ..detect.scoring import load_slice_scores
from ..evaluate.evaluation import load_detector_scores
from ..evaluate.metrics import operating_point
from ..evaluate.paper import PAPER_OPERATING_POINT
from .style import GROUP_COLOURS

PAPER_COLOUR = "C3"


def plot_roc(result: dict, ax=None):
    """Subject-level ROC curves of the detectors (:data:`~glio_kit.detect.detectors.DETECTORS`),
    each one's operating point at its validation threshold, and the paper's operating point
    (FPR 2/27, TPR 24/27).

    Parameters
    ----------
    result : dict
        ``metrics.json``.
    ax : matplotlib Axes, optional
        Where to draw (default: a new figure).

    Returns
    -------
    Figure
        The legend sits beside the axes, so it never covers a curve.
    """
    fig, ax = (plt.subplots(figsize=(7.6, 4.4)) if ax is None else (ax.figure, ax))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    for det in D.DETECTORS.values():
        res, name, colour = D.block(result, det), det.label, det.colour
        curve = res.get("roc") or {}
        if curve.get("fpr"):
            auc = res.get("subject_auc")
            ax.plot(curve["fpr"], curve["tpr"], color=colour, drawstyle="steps-post",
                    label=f"{name}, AUC {auc:.3f}" if auc is not None else name)
        if res.get("confusion"):
            ax.plot(*operating_point(res["confusion"]), "o", color=colour, mec="k",
                    label=f"{name} at validation threshold")
    ax.plot(*PAPER_OPERATING_POINT, "*", color=PAPER_COLOUR, ms=13, mec="k",
            label="paper (24/27 TP, 2/27 FP)")
    ax.set(xlabel="false-positive rate (healthy called tumour)", ylabel="true-positive rate (recall)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Subject-level ROC (test set)")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_confusion(confusion_counts: dict, title: str = "Confusion matrix (Table I layout)", ax=None):
    """Confusion counts {tn, fp, fn, tp} laid out as the paper's Table I: rows actual,
    columns predicted."""
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


def _boxplot_horizontal(ax, values: np.ndarray, y: float) -> None:
    box = dict(positions=[y], widths=0.5, showfliers=False, manage_ticks=False)
    try:  # matplotlib >= 3.10 spells it orientation=; vert= is deprecated there
        ax.boxplot(values, orientation="horizontal", **box)
    except TypeError:
        ax.boxplot(values, vert=False, **box)


def plot_subject_score_distributions(subject_scores: pd.DataFrame, threshold: float,
                                     title: str = "Subject scores", xlabel: str = "subject score", ax=None):
    """Subject scores of healthy validation, healthy test and tumour test subjects (points and
    boxes), with the subject threshold chosen on the healthy validation subjects.

    subject_scores : one row per subject: ``subject, label, split, score``.
    """
    fig, ax = (plt.subplots(figsize=(6, 3.2)) if ax is None else (ax.figure, ax))
    s = subject_scores
    groups = [("healthy (validation)", (s.split == "val") & (s.label == 0), GROUP_COLOURS["validation"]),
              ("healthy (test)", (s.split == "test") & (s.label == 0), GROUP_COLOURS["healthy"]),
              ("tumour (test)", (s.split == "test") & (s.label == 1), GROUP_COLOURS["tumour"])]
    rng = np.random.default_rng(0)  # vertical jitter of the points only
    for y, (_, sel, colour) in enumerate(groups):
        v = s.loc[sel, "score"].to_numpy()
        ax.scatter(v, y + rng.uniform(-0.15, 0.15, v.size), s=18, color=colour, alpha=0.8,
                   edgecolor="k", lw=0.3)
        if v.size:
            _boxplot_horizontal(ax, v, y)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_yticks(range(len(groups)), [g[0] for g in groups])
    # few ticks with short labels: the baseline's scores (fractions of pixels) have long ones
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_pixel_comparison(result: dict, ax=None):
    """Pixel metrics of each pixel map of the detectors (the residual maps, the baseline's
    intensity; bars in the colour of the first detector that reads the map), with the
    test-tuned Dice upper bound drawn hatched so nobody mistakes it for a result."""
    keys = [("pixel_dice", "Dice"), ("pixel_dice_per_subject", "Dice / subject"), ("pixel_auprc", "AUPRC"),
            ("pixel_auroc", "AUROC"), ("dice_upper_bound_test_tuned", "Dice upper bound\n(test-tuned)")]
    fig, ax = (plt.subplots(figsize=(6.4, 3.4)) if ax is None else (ax.figure, ax))
    owners = {}
    for det in D.DETECTORS.values():
        if det.pixel_map and "pixel_dice" in D.block(result, det):
            owners.setdefault(det.pixel_map, det)
    x, width = np.arange(len(keys)), 0.8 / max(len(owners), 1)
    for i, (kind, det) in enumerate(owners.items()):
        res, off = D.block(result, det), (i - (len(owners) - 1) / 2) * width
        vals = [res.get(k) if res.get(k) is not None else np.nan for k, _ in keys]
        bars = ax.bar(x + off, vals, width=width, color=det.colour, label=f"{kind} map ({det.label})")
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
    """All figures of the metrics step as ``name -> Figure`` (the notebook shows and saves them).

    Parameters
    ----------
    run : RunDir or path
        A run folder whose metrics step is done.
    result : dict, optional
        Its ``metrics.json`` (read from the folder when None).

    Returns
    -------
    dict
        ``roc``, ``confusion``, one ``<detector>_score_distributions`` per detector (the
        paper's score: ``score_distributions``), ``pixel_comparison`` (with lesion masks) and
        ``site_shift``.
    """
    run_path = Path(getattr(run, "path", run))
    result = result or json.loads((run_path / "metrics.json").read_text())
    figs = dict(roc=plot_roc(result),
                confusion=plot_confusion(result["confusion"], "DCGAN (kit): Table I layout"))
    for det in D.DETECTORS.values():  # one score distribution per detector; the first is the paper's
        block = D.block(result, det)
        if block.get("threshold") is not None:
            name = "score_distributions" if det is D.top_level() else f"{det.name}_score_distributions"
            figs[name] = plot_subject_score_distributions(load_detector_scores(run_path, det.name),
                                                          block["threshold"], f"{det.label}: subject scores",
                                                          det.unit)
    if result.get("has_masks"):
        figs["pixel_comparison"] = plot_pixel_comparison(result)
    if (result.get("site_shift") or {}).get("auc_slice_A") is not None:
        figs["site_shift"] = plot_site_shift(run_path, result["site_shift"])
    return figs


def plot_site_shift(run_path, shift: dict):
    """The site-shift control: slice anomaly scores A of the tumour subjects' lesion-free
    slices beside the healthy test slices. Overlapping histograms (AUC near 0.5) mean the
    detector reacts to the lesion, not to whatever else tells the two groups apart."""
    sl = load_slice_scores(run_path)
    test = sl[sl["split"] == "test"]
    free = test[(test["label"] == 1) & (test["lesion_pixels"] == 0)]["A"]
    healthy = test[test["label"] == 0]["A"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(min(free.min(), healthy.min()), max(free.max(), healthy.max()), 25)
    ax.hist(healthy, bins=bins, alpha=0.6, density=True, color=GROUP_COLOURS["healthy"],
            label=f"healthy test slices (n={len(healthy)})")
    ax.hist(free, bins=bins, alpha=0.6, density=True, color=GROUP_COLOURS["tumour"],
            label=f"tumour subjects' lesion-free slices (n={len(free)})")
    ax.set(xlabel="slice anomaly score A", ylabel="density",
           title=f"Site-shift control: AUC {shift['auc_slice_A']:.3f} (0.5 = no shift)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""Figures of the scoring step (notebook 03): the mapping made visible, the mapping loss over
steps, slice and subject score distributions.

Every figure reads what the scoring step saved (``score/``) and the settings it recorded
(:func:`glio_kit.detect.scoring.score_settings`), never defaults. Each returns a matplotlib Figure;
the notebook shows it and saves it with :func:`glio_kit.run.notebook.show`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..detect.scoring import (GROUPS, load_mapping_history, load_mapping_snapshots, load_residual_maps,
                              load_slice_scores, load_subject_scores, score_settings)
from .style import GREY, GROUP_COLOURS, RESIDUAL, bare, show_slice

#: How each slice group of :data:`glio_kit.detect.scoring.GROUPS` is drawn: (legend, colour).
GROUP_STYLE = {"val_healthy": ("healthy (val)", GROUP_COLOURS["validation"]),
               "test_healthy": ("healthy (test)", GROUP_COLOURS["healthy"]),
               "test_tumour": ("tumour (test)", GROUP_COLOURS["tumour"])}


def plot_mapping_steps(run):
    """A few test slices (healthy, then tumour) and G(z) at several steps of the mapping.

    Draws what the scoring step saved while it mapped (``score/mapping_snapshots.npz``,
    :func:`glio_kit.detect.scoring.load_mapping_snapshots`): the slices it picked, G(z) after a
    few of the steps the recorded mapping method takes (one column, step 0, without a search),
    and the saved residual map ``|x - G(z)|`` (``residual_abs.npy``: inside the eroded brain,
    median-filtered). Columns: the input (red: ground-truth lesion), G(z) per step (with the
    slice's mapping loss there), the residual map.

    Parameters
    ----------
    run : RunDir
        A run folder whose scoring step is done.

    Returns
    -------
    matplotlib.figure.Figure
    """
    s = score_settings(run)
    snap = load_mapping_snapshots(run)
    by_k = load_slice_scores(run).set_index("k")
    ks, steps = snap["k"].tolist(), snap["steps"].tolist()
    residual = load_residual_maps(run, "absolute")
    ncol = len(steps) + 2
    nrow = max(len(ks), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.45 * ncol, 1.5 * nrow + 0.5), squeeze=False)
    for i, k in enumerate(ks):
        r = by_k.loc[k]
        show_slice(axes[i, 0], snap["x"][i], snap["lesion"][i], "input x" if i == 0 else "")
        group = "tumour" if r["label"] == 1 else "healthy"
        axes[i, 0].set_ylabel(f"{group}\n{r['subject']}"[:28], fontsize=7)
        for j, t in enumerate(steps):
            axes[i, j + 1].imshow(snap["gz"][i, j], **GREY)
            axes[i, j + 1].set_xlabel(f"loss {snap['loss'][i, t]:.4g}", fontsize=6)
            if i == 0:
                axes[i, j + 1].set_title(f"G(z), step {t}", fontsize=8)
        axes[i, -1].imshow(residual[k], **RESIDUAL)
    for ax in axes.flat:
        bare(ax)
    axes[0, -1].set_title("|x - G(z)| in brain", fontsize=8)
    fig.suptitle(f"Latent mapping ({s.mapping}, lr {s.mapping_lr}, lambda {s.lam})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_loss_over_steps(run):
    """Mean mapping loss per step for healthy validation, healthy test and tumour test slices."""
    hist = load_mapping_history(run)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, _, _ in GROUPS:
        label, colour = GROUP_STYLE[name]
        if name in hist:
            ax.plot(hist["step"], hist[name], color=colour, label=label,
                    marker="o" if len(hist) < 3 else None)  # a dot when there are no steps to draw a line
    ax.set_xlabel("mapping step")
    ax.set_ylabel("mean loss (1-lambda) L_R + lambda L_D")
    ax.set_title("Latent mapping: loss over steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_slice_and_subject_scores(run, bins: int = 30):
    """Anomaly scores A of healthy and tumour slices (left, histograms) and subject scores
    (right, one dot per subject, median as a bar); healthy validation in grey."""
    sl = load_slice_scores(run)
    su = load_subject_scores(run)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    edges = np.linspace(0, 1, bins + 1)
    for name, split, lab in GROUPS:
        label, colour = GROUP_STYLE[name]
        v = sl[(sl.split == split) & (sl.label == lab)]["A"]
        if len(v):
            a1.hist(v, bins=edges, density=True, alpha=0.45 if split == "test" else 0.35, color=colour,
                    label=f"{label}, n={len(v)}")
    a1.set_xlabel("slice anomaly score A")
    a1.set_ylabel("density")
    a1.set_title("slices", fontsize=10)
    a1.legend(fontsize=7)
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for i, (name, split, lab) in enumerate(GROUPS):
        colour = GROUP_STYLE[name][1]
        v = su[(su.split == split) & (su.label == lab)]["score"].to_numpy()
        if len(v):
            a2.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=14, color=colour, alpha=0.8)
            a2.hlines(np.median(v), i - 0.3, i + 0.3, color="k", lw=1)
    a2.set_xticks(range(len(GROUPS)))
    a2.set_xticklabels([GROUP_STYLE[name][0] for name, _, _ in GROUPS], fontsize=8)
    a2.set_ylabel("subject score")
    how = score_settings(run).subject_reduction
    a2.set_title("subjects (" + ("mean of slice-scaled A)" if how == "mean_of_scaled" else
                                 f"{how} of raw slice A, scaled on validation)"), fontsize=10)
    fig.tight_layout()
    return fig

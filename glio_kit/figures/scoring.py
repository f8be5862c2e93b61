"""Figures of the scoring step (notebook 03): the mapping made visible, the mapping loss over
steps, slice and subject score distributions.

Every figure reads what the scoring step saved (``score/``) and the settings it recorded
(:func:`glio_kit.detect.scoring.score_settings`), never defaults. Each returns a matplotlib Figure;
the notebook shows it and saves it with :func:`glio_kit.run.notebook.show`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..gan.checkpoints import load_models
from ..detect.mapping import initial_latents, load_encoder, map_slices
from ..device import choose_device
from ..detect.scoring import (GROUPS, load_mapping_history, load_residual_maps, load_slice_scores,
                       load_subject_scores, score_settings)
from .style import GREY, GROUP_COLOURS, RESIDUAL, bare, show_slice

#: How each slice group of :data:`glio_kit.detect.scoring.GROUPS` is drawn: (legend, colour).
GROUP_STYLE = {"val_healthy": ("healthy (val)", GROUP_COLOURS["validation"]),
               "test_healthy": ("healthy (test)", GROUP_COLOURS["healthy"]),
               "test_tumour": ("tumour (test)", GROUP_COLOURS["tumour"])}


def pick_slices(df: pd.DataFrame, n_healthy: int, n_tumour: int, seed: int) -> list[int]:
    """``k`` of a few test slices: healthy ones (seeded pick) and the tumour slices with the
    largest lesions (different subjects where possible)."""
    rng = np.random.default_rng(seed)
    healthy = df[(df.split == "test") & (df.label == 0)]
    if not len(healthy):
        healthy = df[df.split == "val"]
    ks = []
    if len(healthy) and n_healthy:
        pick = rng.choice(healthy["k"].to_numpy(), min(n_healthy, len(healthy)), replace=False)
        ks += sorted(pick.tolist())
    tum = df[(df.split == "test") & (df.label == 1)]
    if len(tum) and n_tumour:
        tum = tum.sort_values(["lesion_pixels", "A"], ascending=False).drop_duplicates("subject")
        ks += tum["k"].to_numpy()[:n_tumour].tolist()
    return [int(k) for k in ks]


def plot_mapping_steps(run, cache, n_healthy: int = 2, n_tumour: int = 2, steps=None, device=None, ks=None):
    """A few test slices (healthy, then tumour) and G(z) at several steps of the mapping.

    The slices are mapped again with the recorded settings from the very starts the scoring
    step used (so the last G(z) matches ``recon.npy``), keeping G(z) at ``steps`` (default:
    about five from 0 to ``mapping_steps``). Columns: the input (red: ground-truth lesion),
    G(z) per step, and the saved residual map ``|x - G(z)|`` (``residual_abs.npy``: inside the
    eroded brain, median-filtered). ``ks`` picks the slices (``k`` of slice_scores.csv);
    ``device`` overrides the recorded one.
    """
    s = score_settings(run)
    df = load_slice_scores(run)
    ks = list(ks) if ks is not None else pick_slices(df, n_healthy, n_tumour, s.seed)
    n_steps = s.mapping_steps if s.mapping != "encoder" else 0
    if steps is None:
        steps = sorted({int(round(t)) for t in np.geomspace(1, n_steps + 1, 5) - 1}) if n_steps else [0]
    steps = sorted({int(t) for t in steps if 0 <= int(t) <= n_steps})
    dev = choose_device(device or s.device)
    G, D, _ = load_models(run, dev)
    E = load_encoder(run, dev) if s.mapping != "iterative" else None
    starts = initial_latents(len(df), G.latent_dim, s.restarts, s.seed)
    by_k = df.set_index("k")
    rows = by_k.loc[ks, "row"].to_numpy()
    x = np.asarray(cache.images[rows], dtype=np.float32)
    res = map_slices(G, D, x, s, E=E, z0=starts[:, ks], record_steps=steps)
    residual = load_residual_maps(run, "absolute")
    ncol = len(steps) + 2
    fig, axes = plt.subplots(len(ks), ncol, figsize=(1.45 * ncol, 1.5 * len(ks) + 0.5), squeeze=False)
    for i, k in enumerate(ks):
        r = by_k.loc[k]
        show_slice(axes[i, 0], x[i], np.asarray(cache.lesion[rows[i]]), "input x" if i == 0 else "")
        group = "tumour" if r["label"] == 1 else "healthy"
        axes[i, 0].set_ylabel(f"{group}\n{r['subject']}"[:28], fontsize=7)
        for j, t in enumerate(steps):
            axes[i, j + 1].imshow(res.snapshots[t][i, 0].float().numpy(), **GREY)
            if i == 0:
                axes[i, j + 1].set_title(f"G(z), step {t}", fontsize=8)
        axes[i, -1].imshow(residual[k], **RESIDUAL)
        for ax in axes[i]:
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
    a2.set_title(f"subjects ({score_settings(run).subject_reduction} of slice A)", fontsize=10)
    fig.tight_layout()
    return fig

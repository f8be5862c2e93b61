"""Figures for the training step (notebook 02).

Every function returns a matplotlib Figure; the notebook shows it and saves it as PNG in
the run folder with :func:`glio_kit.run.notebook.show`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..gan.checkpoints import load_models
from ..errors import RunFolderError
from ..gan.samples import SAMPLES, grid_meta, read_samples, sample_epochs
from ..gan.train import LOSSES, read_losses
from .style import GREY, bare

__all__ = ["plot_figure3", "plot_losses", "plot_real_vs_generated", "plot_learning_rates"]


def plot_figure3(run, epochs=None, n: int = 6):
    """Paper Figure 3: generator samples from one fixed latent batch at several epochs
    (columns; default about five from the first to the last) beside real healthy slices.
    ``n``: rows (latents) shown."""
    meta = grid_meta(run)
    have = sample_epochs(run)
    if not have:
        raise RunFolderError(f"{run / SAMPLES}: no epoch samples yet; train first")
    if epochs is None:
        epochs = sorted({int(round(e)) for e in np.linspace(have[0], have[-1], min(5, len(have)))})
    missing = [e for e in epochs if e not in have]
    if missing:
        raise ValueError(f"no samples for epoch(s) {missing}; available: {have[0]}..{have[-1]}")
    cols = [(f"epoch {e}", read_samples(run, e)) for e in epochs]
    real = read_samples(run)
    cols.append(("real (healthy)", real))
    n = min(n, meta["n"], len(real))
    h, w, cw = meta["height"], meta["width"], 1.4
    fig, axes = plt.subplots(n, len(cols), figsize=(cw * len(cols), cw * n * h / w + 0.4), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(n):
            axes[i, j].imshow(imgs[i], **GREY)
            bare(axes[i, j])
        axes[0, j].set_title(title, fontsize=9)
    fig.suptitle("Generator samples during training (fixed latents) and real slices", fontsize=10)
    fig.tight_layout()
    return fig


def _loss_axes(a1, a2, curves) -> None:
    """Losses (left) and mean discriminator outputs (right) per epoch; ``curves``:
    ``(df, label suffix, colour, (style D, style G))``."""
    for df, suffix, colour, (sd, sg) in curves:
        a1.plot(df["epoch"], df["loss_d"], sd, ms=3, color=colour, label=f"discriminator{suffix}")
        a1.plot(df["epoch"], df["loss_g"], sg, ms=3, color=colour, label=f"generator{suffix}")
        a2.plot(df["epoch"], df["d_x"], sd, ms=3, color=colour, label=f"D(x), real{suffix}")
        a2.plot(df["epoch"], df["d_g_z"], sg, ms=3, color=colour, label=f"D(G(z)), generated{suffix}")
    last = max(int(df["epoch"].max()) for df, *_ in curves)
    for ax, title, ylabel in ((a1, "losses", "BCE loss"), (a2, "discriminator outputs", "mean probability")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if last <= 10:  # few epochs: one tick each
            ax.set_xticks(range(1, last + 1))
        ax.legend(fontsize=7)
    a2.set_ylim(0, 1)


def plot_losses(run):
    """Loss curves of D and G, and the mean D(x) and D(G(z)) probabilities, per epoch."""
    df = read_losses(run)
    if not len(df):
        raise RunFolderError(f"{run / LOSSES}: no training log yet; train first")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    _loss_axes(a1, a2, [(df, "", None, ("o-", "s-"))])
    a2.axhline(0.5, color="grey", lw=0.8, ls="--")
    fig.tight_layout()
    return fig


def plot_real_vs_generated(run, cache, n: int = 8, seed: int = 0):
    """A row of real healthy slices (validation subjects when there are some, never seen in
    training) above a row of samples of the trained generator (eval mode, what the later
    steps use) from random latents seeded by ``seed``."""
    G, _, meta = load_models(run, "cpu")
    split = "val" if len(cache.rows(split="val", label=0)) else "train"
    rows = cache.rows(split=split, label=0)
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False))
    real = np.asarray(cache.images[pick])
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fake = G(z)[:, 0].numpy()
    h, w = real.shape[1:]
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 2 * 1.4 * h / w + 0.5), squeeze=False)
    for j in range(n):
        if j < len(real):
            axes[0, j].imshow(real[j], **GREY)
        axes[1, j].imshow(fake[j], **GREY)
        bare(axes[0, j]), bare(axes[1, j])
    axes[0, 0].set_ylabel(f"real ({split})", fontsize=9)
    axes[1, 0].set_ylabel(f"G(z), epoch {meta['epoch']}", fontsize=9)
    fig.suptitle(f"Real healthy slices vs generated (epoch {meta['epoch']})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_learning_rates(comparison):
    """Loss and D(x) / D(G(z)) curves per learning rate above a row of samples per learning
    rate; ``comparison``: :func:`glio_kit.gan.lr_comparison.compare_learning_rates`'s result."""
    lrs = list(comparison.histories)
    n, h, w = next(iter(comparison.samples.values())).shape
    width = max(8.0, 1.3 * n)
    sample_height = width / n * len(lrs) * h / w + 0.3 * len(lrs)
    fig = plt.figure(figsize=(width, 3.0 + sample_height), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.0, sample_height])
    a1, a2 = top.subplots(1, 2)
    _loss_axes(a1, a2, [(df, f", lr {lr:g}", f"C{k}", ("o-", "s--"))
                        for k, (lr, df) in enumerate(comparison.histories.items())])
    top.suptitle("Same initial weights, batches and noise; only the learning rate differs", fontsize=10)
    axes = bottom.subplots(len(lrs), n, squeeze=False)
    for i, lr in enumerate(lrs):
        for j in range(n):
            axes[i, j].imshow(comparison.samples[lr][j], **GREY)
            bare(axes[i, j])
        axes[i, 0].set_ylabel(f"lr {lr:g}", fontsize=9)
    bottom.suptitle(f"samples after epoch {comparison.epochs} (the first {n} fixed latents of Figure 3)",
                    fontsize=9)
    return fig

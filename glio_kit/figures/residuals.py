"""Figures of the residual maps: the paper's Figures 4 and 5 and the residual browser's drawing
(notebook 04), and the misclassified subjects (notebook 05).

They draw what :class:`glio_kit.figures.widgets.ResidualViewer` reads from the scoring step's saved
maps (``score/residual_*.npy``); nothing here computes a residual. Images are in the generator's
range [-1, 1] (:data:`~.style.GREY`), residuals in generator units from 0 (:data:`~.style.RESIDUAL`,
its upper end set per figure), ground truth in :data:`~.style.LESION_COLOUR`, a thresholded
residual in :data:`~.style.RESIDUAL_COLOUR`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from .style import GREY, LESION_COLOUR, RESIDUAL, RESIDUAL_COLOUR, bare, show_slice
from matplotlib import patheffects

#: What the browser draws over the input: the thresholded residual, the ground truth, both, none.
OVERLAYS = ("residual", "ground truth", "both", "none")


def residual_style(vmax: float) -> dict:
    """:data:`~.style.RESIDUAL` with the upper end of the colour scale at ``vmax`` (generator units)."""
    return dict(RESIDUAL, vmax=max(1e-6, float(vmax)))


def _contour(ax, lesion) -> None:
    """The ground truth's contour in :data:`~.style.LESION_COLOUR`, edged in white so that it shows
    on the residual's red-yellow colour map too."""
    if np.any(lesion):
        cs = ax.contour(np.asarray(lesion, float), levels=[0.5], colors=LESION_COLOUR, linewidths=0.9)
        cs.set(path_effects=[patheffects.withStroke(linewidth=2.4, foreground="white")])


def draw_slice_panels(fig, panels: dict, subject: str, overlay: str = "both", threshold: float = 0.2,
                      kind: str = "positive", vmax: float = 1.0) -> dict:
    """The browser's figure: input (with the overlay) | G(z) | residual, into ``fig`` (cleared).

    panels : :meth:`ResidualViewer.panels` of one slice: ``x``, ``gz``, ``residual`` (H, W),
        ``lesion`` (H, W) bool, ``A``, ``slice_index``, ``label``.
    overlay : one of :data:`OVERLAYS`. threshold : residual threshold (generator units, 0..2)
        of the overlay. vmax : upper end of the residual's colour scale.
    Returns dict: ``flagged_pixels`` (pixels above the threshold) and ``contour`` (whether a
    ground-truth contour was drawn).
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay must be one of {OVERLAYS}, got {overlay!r}")
    fig.clf()
    axes = fig.subplots(1, 3)
    flagged = panels["residual"] > threshold
    axes[0].imshow(panels["x"], **GREY)
    if overlay in ("residual", "both") and flagged.any():
        axes[0].imshow(np.ma.masked_where(~flagged, flagged), cmap=ListedColormap([RESIDUAL_COLOUR]),
                       alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
    contour = overlay in ("ground truth", "both") and bool(panels["lesion"].any())
    if contour:
        _contour(axes[0], panels["lesion"])
    axes[1].imshow(panels["gz"], **GREY)
    im = axes[2].imshow(panels["residual"], **residual_style(vmax))
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    titles = (f"input x  ({'tumour' if panels['label'] else 'healthy'})", "generated G(z)",
              f"residual ({kind})  A={panels['A']:.2f}")
    for ax, t in zip(axes, titles):
        ax.set_title(t, fontsize=9)
        bare(ax)
    key = {"residual": f"{RESIDUAL_COLOUR}: residual > {threshold:.2f}",
           "ground truth": f"{LESION_COLOUR}: ground truth",
           "both": f"{RESIDUAL_COLOUR}: residual > {threshold:.2f}, {LESION_COLOUR}: ground truth",
           "none": ""}[overlay]
    fig.suptitle(f"{subject}  slice z={panels['slice_index']}" + (f"   ({key})" if key else ""), fontsize=10)
    return dict(flagged_pixels=int(flagged.sum()), contour=contour)


def figure_input_generated_difference(viewer, subject: str, n: int = 4, kind: str = "absolute"):
    """The paper's Figures 4 and 5: rows input (A), generated (B), difference (C) for ``n``
    slices of one subject, with the ground-truth contour where there is one.

    viewer : :class:`~glio_kit.figures.widgets.ResidualViewer` of a scored run. kind : the residual
    map shown (the paper's difference image is ``absolute``). The slices are spread through
    the subject's scored slab, centred on the slice with the most lesion for tumour subjects.
    """
    df = viewer.slices_of(subject)
    lesion_px = np.array([viewer.cache.lesion[int(r)].sum() for r in df.row])
    centre = int(np.argmax(lesion_px)) if lesion_px.any() else len(df) // 2
    pos = np.unique(np.clip(centre + np.round(np.linspace(-(n - 1), n - 1, n)).astype(int), 0, len(df) - 1))
    style = residual_style(viewer.display_max(kind))
    fig, axes = plt.subplots(3, len(pos), figsize=(2.1 * len(pos), 6.6), squeeze=False)
    for c, p in enumerate(pos):
        d = viewer.panels(subject, int(p), kind)
        show_slice(axes[0, c], d["x"], d["lesion"], f"z={d['slice_index']}  A={d['A']:.2f}")
        show_slice(axes[1, c], d["gz"])
        axes[2, c].imshow(d["residual"], **style)
        _contour(axes[2, c], d["lesion"])
        bare(axes[2, c])
    for r, name in enumerate(("A) input", "B) generated", "C) difference")):
        axes[r, 0].set_ylabel(name, fontsize=9)
    label = "HGG patient" if df.label.iloc[0] else "healthy subject"
    fig.suptitle(f"{subject} ({label}): input, generated and difference"
                 + (f"; {LESION_COLOUR} = ground truth" if lesion_px.any() else ""), fontsize=10)
    fig.tight_layout()
    return fig


def plot_misclassified(viewer, wrong: pd.DataFrame, n: int = 6, kind: str | None = None):
    """For each misclassified test subject (up to ``n``): its most anomalous slice, G(z) and the
    residual, titled with the error type (and ``has_wmh`` where the cohort records it).

    viewer : :class:`~glio_kit.figures.widgets.ResidualViewer`. wrong : ``subject, error, score``
    (optionally ``has_wmh``), one row per misclassified subject. kind : the residual map
    shown; ``None``: the ``residual_kind`` the run was scored with.
    """
    kind = kind or viewer.settings.residual_kind
    wrong = wrong.head(n)
    fig, axes = plt.subplots(len(wrong), 3, figsize=(6.6, 2.3 * len(wrong)), squeeze=False)
    style = residual_style(viewer.display_max(kind))
    for i, r in enumerate(wrong.itertuples()):
        d = viewer.panels(r.subject, viewer.default_slice(r.subject), kind)
        extra = " (WMH)" if getattr(r, "has_wmh", False) is True else ""
        show_slice(axes[i, 0], d["x"], d["lesion"])
        show_slice(axes[i, 1], d["gz"])
        axes[i, 2].imshow(d["residual"], **style)
        _contour(axes[i, 2], d["lesion"])
        bare(axes[i, 2])
        axes[i, 0].set_ylabel(f"{r.subject}\n{r.error}{extra}", fontsize=7)
        axes[i, 2].set_title(f"score {r.score:.3f}", fontsize=8)
    axes[0, 0].set_title("input (most anomalous slice)", fontsize=8)
    axes[0, 1].set_title("G(z)", fontsize=8)
    fig.tight_layout()
    return fig

"""What every figure shares: how a slice is drawn, overlay colours, bare axes."""
from __future__ import annotations

import numpy as np

#: A slice in the generator's range [-1, 1], grey, no smoothing.
GREY = dict(cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
#: A residual map in generator units (0 = reproduced exactly).
RESIDUAL = dict(cmap="hot", vmin=0, vmax=1, interpolation="nearest")
#: Contour colours: ground-truth lesion, thresholded residual.
LESION_COLOUR = "red"
RESIDUAL_COLOUR = "yellow"
#: Healthy, tumour and validation colours of score plots.
GROUP_COLOURS = dict(healthy="tab:blue", tumour="tab:red", validation="0.6")


def bare(ax) -> None:
    """No ticks: images are not plots."""
    ax.set_xticks([])
    ax.set_yticks([])


def show_slice(ax, img, lesion=None, title: str = "", colour: str = LESION_COLOUR) -> None:
    """One slice (grey, -1..1) with the lesion's contour, on bare axes."""
    ax.imshow(img, **GREY)
    if lesion is not None and np.any(lesion):
        ax.contour(np.asarray(lesion, float), levels=[0.5], colors=colour, linewidths=0.8)
    if title:
        ax.set_title(title, fontsize=8)
    bare(ax)

"""A voxel-wise healthy atlas: the classic statistical baseline a learned model has to beat.

For every position of the slab (``slice_pos``: the k-th of a subject's ``n_slices`` slices,
taken relative to the brain's own extent) and every pixel, the mean and the SD of the
normalised T2 across the healthy *training* slices -- after the kit's own preprocessing, the
same input the DCGAN learns from. A slice's lesion map is ``|z| = |x - mean| / SD`` inside the
eroded brain, median-filtered like the residual maps, so it is scored by the same rules (the
area rule and the lesion-load rule, :mod:`glio_kit.detect.detectors`) and thresholded at the
same percentile of healthy validation pixels. No test subject and no validation subject enters
the atlas; validation subjects only set its thresholds, as for every detector.

Where almost no training subject has brain (the brain's rim), the SD across subjects is near 0
and ``|z|`` would explode on one misplaced edge; the SD is floored at a low quantile
(:data:`SD_FLOOR_QUANTILE`) of the SDs inside the training brains.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RunFolderError
from .residuals import residual_map

__all__ = ["HealthyAtlas", "fit_atlas", "healthy_atlas", "SD_FLOOR_QUANTILE"]

#: The SD floor: this quantile of the per-pixel SDs where at least half the training slices
#: have brain.
SD_FLOOR_QUANTILE = 0.10


@dataclass(frozen=True)
class HealthyAtlas:
    """Mean and SD of the healthy training slices, per slab position and pixel.

    Attributes
    ----------
    mean, sd : (K, H, W) float32, in the generator's units ([-1, 1] intensities); ``sd`` floored.
    n : (K,) int, training slices at each slab position.
    sd_floor : float, the floor applied to ``sd``.
    """

    mean: np.ndarray
    sd: np.ndarray
    n: np.ndarray
    sd_floor: float

    def z_map(self, images, slab_pos, brain, erode: int = 1, median: int = 0) -> np.ndarray:
        """``|x - mean| / SD`` of slices, inside the brain eroded by ``erode`` pixels.

        images : (N, H, W) in [-1, 1]; slab_pos : (N,) ints in [0, K); brain : (N, H, W) masks.
        median : median filter size in pixels (0: off), as the residual maps'.
        Returns (N, H, W) float32 >= 0 (SDs), 0 outside the eroded brain.
        """
        pos = np.asarray(slab_pos, dtype=int)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self.mean)):
            raise ValueError(f"slab positions must be in [0, {len(self.mean)}), got {pos.min()}..{pos.max()}")
        z = (np.asarray(images, dtype=np.float32) - self.mean[pos]) / self.sd[pos]
        return residual_map(z, 0.0, brain, kind="absolute", median=median, erode=erode)


def fit_atlas(images, slab_pos, brain) -> HealthyAtlas:
    """The atlas of healthy slices.

    images : (N, H, W) float in [-1, 1] (a memory map is read one slab position at a time);
    slab_pos : (N,) int, each slice's position in its subject's slab; brain : (N, H, W) masks.
    Returns :class:`HealthyAtlas` with K = max(slab_pos) + 1 positions.
    """
    pos = np.asarray(slab_pos, dtype=int)
    if pos.size == 0:
        raise ValueError("no healthy training slices to build the atlas from")
    k = int(pos.max()) + 1
    h, w = np.asarray(images[:1]).shape[1:]
    mean = np.zeros((k, h, w), np.float32)
    sd = np.zeros((k, h, w), np.float32)
    n = np.zeros(k, int)
    inside = []  # SDs where at least half the slices have brain: they set the floor
    for j in range(k):
        sel = np.flatnonzero(pos == j)
        n[j] = sel.size
        if sel.size == 0:
            continue
        x = np.asarray(images[sel], dtype=np.float64)
        mean[j] = x.mean(axis=0)
        sd[j] = x.std(axis=0, ddof=1) if sel.size > 1 else 0.0
        inside.append(sd[j][np.asarray(brain[sel]).mean(axis=0) >= 0.5])
    vals = np.concatenate(inside) if inside else np.zeros(0)
    vals = vals[vals > 0]
    floor = float(np.quantile(vals, SD_FLOOR_QUANTILE)) if vals.size else 1.0
    return HealthyAtlas(mean, np.maximum(sd, floor).astype(np.float32), n, floor)


def healthy_atlas(cache) -> HealthyAtlas:
    """The atlas of a run's healthy training slices (split ``train``, label 0) of ``cache``."""
    rows = cache.rows(split="train", label=0)
    if len(rows) == 0:
        raise RunFolderError(f"{getattr(cache, 'folder', 'cache')}: no healthy training slices for the atlas "
                             f"baseline")
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    pos = cache.index["slice_pos"].to_numpy()[rows]
    return fit_atlas(cache.images[rows], pos, cache.brain[rows])

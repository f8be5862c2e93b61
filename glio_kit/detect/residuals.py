"""Residual maps: where the input differs from the generator's healthy reconstruction.

The paper's difference image is ``|x - G(z)|`` (its Figures 4 and 5). Benchmarks of
unsupervised lesion segmentation (Baur 2021) add the usual post-processing, which this
module provides:

* keep **positive** residuals only, ``max(x - G(z), 0)``: glioma and edema are
  hyperintense on T2, so a lesion is where the input is *brighter* than the healthy
  reconstruction (a dark residual is mostly a reconstruction that is too bright);
* zero everything outside the brain mask **eroded** by a pixel or two: the brain's edge is
  where a reconstruction disagrees most, and those rims are not lesions;
* a small **median filter** per slice removes isolated hot pixels;
* :func:`binarise` thresholds a map and drops connected components that are too small.

Units: images and reconstructions live in the generator's range [-1, 1] (background -1),
so residuals are in [0, 2]; a residual of 2 is the full intensity range.

:func:`residual_map` is the one definition of a residual map. The scoring step
(:func:`glio_kit.detect.scoring.score_run`) computes the maps of every scored slice once, with the
``median_filter`` and ``erode`` of its settings, and saves them; figures, the browser and the
evaluation read them with :func:`glio_kit.detect.scoring.load_residual_maps` and the recorded
settings with :func:`glio_kit.detect.scoring.score_settings`.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = ("positive", "absolute")


def _as_stack(a) -> tuple[np.ndarray, tuple]:
    """View (..., H, W) as (N, H, W); return it with the original shape."""
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"expected an image (H, W) or a stack (..., H, W), got shape {a.shape}")
    return a.reshape((-1,) + a.shape[-2:]), a.shape


def eroded_brain(brain, erode: int = 1) -> np.ndarray:
    """The brain mask eroded by ``erode`` pixels in-plane, slice by slice.

    brain : (H, W) or (..., H, W), bool or 0/1. Returns bool of the same shape. Pixels on the
    image border count as outside (an eroded mask never touches the border).
    """
    stack, shape = _as_stack(np.asarray(brain) > 0)
    erode = int(erode or 0)
    if erode <= 0:
        return stack.reshape(shape).copy()
    # 3x3 square structure in-plane, nothing across slices
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    out = ndimage.binary_erosion(stack, structure=structure, iterations=erode, border_value=0)
    return out.reshape(shape)


def median_slices(maps, size: int = 3) -> np.ndarray:
    """Median filter of ``size`` x ``size`` applied to each slice separately (0 or 1 = off)."""
    stack, shape = _as_stack(maps)
    size = int(size or 0)
    if size <= 1:
        return stack.reshape(shape).astype(np.float32, copy=True)
    out = ndimage.median_filter(stack.astype(np.float32, copy=False), size=(1, size, size), mode="constant",
                                cval=0.0)
    return out.reshape(shape)


def residual_map(x, gz, brain, kind: str = "positive", median: int = 3, erode: int = 1) -> np.ndarray:
    """Residual map of input slices against their reconstructions.

    Parameters
    ----------
    x, gz : (H, W) or (N, H, W) float arrays in the generator's range [-1, 1]: the input
        slice(s) and G(z). ``gz`` may also be a scalar (e.g. -1 for "reconstruct nothing",
        which turns the map into the intensity itself; see ``metrics.intensity_baseline``).
    brain : brain mask(s) of the same shape as ``x`` (bool or 0/1).
    kind : ``"absolute"`` = ``|x - G(z)|`` (the paper's difference image) or
        ``"positive"`` = ``max(x - G(z), 0)`` (hyperintense lesions on T2; the default).
    median : size of the per-slice median filter (0 or 1 = off).
    erode : pixels by which the brain mask is eroded before masking (0 = no erosion).

    Returns
    -------
    float32 array of ``x``'s shape, in [0, 2] generator units (2 = the full range), 0 outside
    the eroded brain. The median filter runs after masking and the mask is applied again
    after it, so nothing leaks outside the brain.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = np.asarray(x, dtype=np.float32)
    gz = np.asarray(gz, dtype=np.float32)
    if gz.ndim and gz.shape != x.shape:
        raise ValueError(f"x {x.shape} and G(z) {gz.shape} must have the same shape")
    if np.shape(brain) != x.shape:
        raise ValueError(f"x {x.shape} and brain {np.shape(brain)} must have the same shape")
    diff = x - gz
    res = np.abs(diff) if kind == "absolute" else np.maximum(diff, 0.0)
    mask = eroded_brain(brain, erode)
    res = np.where(mask, res, 0.0).astype(np.float32)
    if median and int(median) > 1:
        res = median_slices(res, median)
        res[~mask] = 0.0
    return res


def binarise(res_map, threshold: float, min_size: int = 0) -> np.ndarray:
    """Pixels with residual ``> threshold``; components smaller than ``min_size`` pixels dropped.

    res_map : (H, W) or (N, H, W). Connected components are found per slice with
    8-connectivity (diagonal neighbours connect). Returns bool of the same shape.
    """
    stack, shape = _as_stack(res_map)
    out = stack > threshold
    if min_size and int(min_size) > 1:
        eight = np.ones((3, 3), bool)
        for i in range(out.shape[0]):
            if not out[i].any():
                continue
            lab, n = ndimage.label(out[i], structure=eight)
            sizes = np.bincount(lab.ravel())
            small = sizes < int(min_size)
            small[0] = False
            out[i][small[lab]] = False
    return out.reshape(shape)

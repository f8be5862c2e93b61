"""Preprocessing of one volume as the paper does it, and the checks before it reaches the cache.

Per volume, streamed one at a time (peak memory does not grow with the cohort):

1. load in canonical RAS orientation, float32 (``glio_kit.data.io``);
2. brain mask = the non-zero voxels (the kit expects skull-stripped volumes, as BraTS ships);
3. normalise: the paper's ``I / SD(I)`` (SD of the whole volume) by default, or a z-score
   inside the brain, or scaling by the brain's 99th percentile;
4. map to the generator's range [-1, 1] with a fixed, documented window per method
   (:data:`GENERATOR_WINDOW`); background is -1;
5. take ``n_slices`` axial slices evenly spaced through a slab of the brain's
   inferior-superior extent (consecutive when the slab is exactly that thick);
6. crop every slice of a volume to the volume's in-plane brain bounding box (plus a margin),
   pad to the target aspect ratio (pad, never stretch) and resize: area-weighted
   (anti-aliased) for images, nearest neighbour for masks.

The cache (``<run>/cache/``) holds ``images.npy`` (float32, N x H x W, in [-1, 1]),
``brain.npy`` and ``lesion.npy`` (uint8, N x H x W), ``index.csv`` (one row per slice:
``row, subject, label, split, slice_index, slice_pos, lesion_pixels, brain_pixels``) and
``prep.json`` (the parameters). Arrays are opened memory-mapped.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .cohort import Subject
from ..run.config import PrepSettings
from ..errors import InputError
from .io import load_segmentation, load_volume

#: Window of normalised intensities mapped linearly onto [-1, 1] (values outside are clipped).
#: ``sd``: I / SD(I) of a skull-stripped volume puts brain tissue at roughly 1-4 and CSF
#: and lesions up to about 5-6; ``zscore``: standard deviations around the brain mean;
#: ``percentile``: fraction of the brain's 99th percentile.
GENERATOR_WINDOW = {"sd": (0.0, 6.0), "zscore": (-3.0, 5.0), "percentile": (0.0, 1.2)}
CROP_MARGIN = 0.04  # fraction of the bounding box added on each side


# ---------------------------------------------------------------------------- pieces
def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Boolean brain mask of a skull-stripped volume: non-zero voxels, holes filled.

    volume : (X, Y, Z) float array. Returns (X, Y, Z) bool.
    """
    mask = volume > 0
    # Dark CSF pockets or noise can punch holes; a slice-wise fill keeps the brain whole.
    for z in range(mask.shape[2]):
        if mask[:, :, z].any():
            mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def normalise(volume: np.ndarray, brain: np.ndarray, method: str = "sd") -> np.ndarray:
    """Intensity normalisation of one volume.

    ``sd`` is the paper's ``I_new = I / SD(I)`` with SD over the whole volume; ``zscore``
    uses mean and SD inside the brain; ``percentile`` divides by the brain's 99th
    percentile. Returns float32 of the same shape.
    """
    v = volume.astype(np.float32, copy=False)
    if method == "sd":
        sd = float(v.std())
        return v / sd
    vals = v[brain]
    if method == "zscore":
        return (v - vals.mean()) / vals.std()
    if method == "percentile":
        return v / float(np.percentile(vals, 99))
    raise ValueError(f"normalisation must be one of {sorted(GENERATOR_WINDOW)}, got {method!r}")


def to_generator_range(x: np.ndarray, brain: np.ndarray, method: str = "sd") -> np.ndarray:
    """Map normalised intensities to [-1, 1] through :data:`GENERATOR_WINDOW`; background -1."""
    lo, hi = GENERATOR_WINDOW[method]
    out = 2.0 * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1.0
    out[~brain] = -1.0
    return out.astype(np.float32)


def slab_indices(brain: np.ndarray, slab=(0.4, 0.7), n_slices: int = 16) -> np.ndarray:
    """Axial slice indices: ``n_slices`` evenly spaced through ``slab`` of the brain's z extent.

    slab : (low, high) fractions of the inferior-superior extent of the brain (0 = lowest
    brain slice). Returns int array of shape (n_slices,), ascending.
    """
    lo, hi = float(slab[0]), float(slab[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"slab must be two fractions 0 <= low < high <= 1, got {slab}")
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    z0, z1 = zs[0], zs[-1]
    return np.round(np.linspace(z0 + lo * (z1 - z0), z0 + hi * (z1 - z0), int(n_slices))).astype(int)


def axial_view(volume: np.ndarray, z: int) -> np.ndarray:
    """The axial slice ``z`` of a RAS volume as shown in radiology: anterior up, patient's right
    on the image's left. Returns (Y, X)."""
    return volume[:, :, z].T[::-1, ::-1]


def inplane_box(brain: np.ndarray, aspect: float, margin: float = CROP_MARGIN):
    """Crop box (r0, r1, c0, c1) in axial-view coordinates around the brain of the whole
    volume, grown to ``aspect`` = height / width so that resizing never stretches."""
    view = brain.any(axis=2).T[::-1, ::-1]
    rows, cols = np.flatnonzero(view.any(1)), np.flatnonzero(view.any(0))
    h = (rows[-1] - rows[0] + 1) * (1 + 2 * margin)
    w = (cols[-1] - cols[0] + 1) * (1 + 2 * margin)
    if h / w < aspect:
        h = w * aspect
    else:
        w = h / aspect
    rc, cc = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
    return (int(round(rc - h / 2)), int(round(rc - h / 2)) + int(round(h)),
            int(round(cc - w / 2)), int(round(cc - w / 2)) + int(round(w)))


def crop_pad(img: np.ndarray, box, fill: float) -> np.ndarray:
    """Crop ``img`` (H, W) to ``box``; parts of the box outside the image are ``fill``."""
    r0, r1, c0, c1 = box
    out = np.full((r1 - r0, c1 - c0), fill, dtype=img.dtype)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, img.shape[0]), max(c0, 0), min(c1, img.shape[1])
    out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = img[sr0:sr1, sc0:sc1]
    return out


def resize_slices(stack: np.ndarray, hw, kind: str = "image") -> np.ndarray:
    """Resize a (N, h, w) stack to (N, H, W): anti-aliased bilinear for images, nearest for masks."""
    # slow import (torch, ~1 s): only when slices are resized, not for the volume checks
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if kind == "image":
        t = F.interpolate(t, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    else:
        t = F.interpolate(t, size=tuple(hw), mode="nearest")
    return t[:, 0].numpy()


# ------------------------------------------------------------------- volume checks
#: A volume must be at least this many voxels along each axis, and its brain mask this many voxels.
MIN_SIDE, MIN_BRAIN_VOXELS = 8, 500
#: The brain mask (voxels above 0) of a skull-stripped volume covers well under half of the
#: field of view (a brain cropped tight to its bounding box: about half); more means skull,
#: scalp or a non-zero background are in it.
MAX_BRAIN_FOV = 0.6
#: Share of the non-zero voxels that may be negative: a raw T2 has none (a few from
#: resampling); a z-scored volume has about half, which the "above 0 = brain" rule would drop.
MAX_NEGATIVE = 0.05


def check_volume(subject: Subject, data: np.ndarray, brain: np.ndarray, seg, settings: PrepSettings) -> list:
    """Checks of one volume before it reaches the cache.

    data : (X, Y, Z) float32; brain : (X, Y, Z) bool (:func:`brain_mask`); seg : labels or None.
    Raises :class:`InputError` naming the file for what the kit cannot use (too small, constant,
    negative intensities of a normalised volume, a brain mask covering most of the field of view,
    fewer axial slices than ``n_slices``, a tumour case with an empty segmentation). Returns
    warnings (str) for what the user may mean: a tumour case without a segmentation, a healthy
    subject with a lesion mask (and, found later, a tumour outside the sampled slices).
    """
    img = subject.image
    if min(data.shape) < MIN_SIDE:
        raise InputError(img, f"volume of shape {data.shape} is too small to be a brain MRI (at least "
                              f"{MIN_SIDE} voxels along each axis)")
    nonzero = data[data != 0]
    if nonzero.size and float(nonzero.min()) == float(nonzero.max()) and nonzero.size > 0.99 * data.size:
        raise InputError(img, f"constant volume: every voxel is {float(nonzero[0]):g}; there is no image "
                              "to learn from")
    neg = int((nonzero < 0).sum())
    if neg > MAX_NEGATIVE * nonzero.size:
        raise InputError(img, f"{100 * neg / nonzero.size:.0f}% of the non-zero voxels are negative: the "
                              "volume looks already normalised (e.g. z-scored). The kit's brain mask is "
                              "the voxels above 0, so it would lose them; give the raw skull-stripped T2 "
                              "(the kit normalises it itself: normalisation = sd | zscore | percentile)")
    fov = float(brain.mean())
    if fov > MAX_BRAIN_FOV:
        raise InputError(img, f"the brain mask (voxels above 0) covers {100 * fov:.0f}% of the field of "
                              "view: the volume does not look skull-stripped (or its background is not 0). "
                              "Skull-strip it and write the background as 0 (data/README.md: HD-BET or "
                              "FSL BET)")
    if int(brain.sum()) < MIN_BRAIN_VOXELS:
        raise InputError(img, f"the brain mask (voxels above 0) holds only {int(brain.sum())} voxels; "
                              "too few for a brain volume")
    vals = data[brain]
    if float(vals.min()) == float(vals.max()):
        raise InputError(img, f"the brain holds one intensity value ({float(vals[0]):g}): no contrast "
                              "to learn from")
    zs = slab_indices(brain, settings.slab, settings.n_slices)
    n_unique, n = len(np.unique(zs)), settings.n_slices
    if n_unique < n:
        raise InputError(img, f"the brain spans only {n_unique} axial slices in the slab "
                              f"{list(settings.slab)} of its extent, fewer than n_slices={n}: slices would "
                              "repeat. Lower n_slices or widen slab (or check the volume's orientation and "
                              "slice thickness)")
    warnings = []
    if seg is not None and not seg.any() and subject.label == 1:
        raise InputError(subject.mask, "segmentation of a tumour case is empty (no labelled voxel); "
                                       "check the file, or leave the mask out to use the case without "
                                       "pixel metrics")
    if seg is None and subject.label == 1:
        warnings.append("tumour case without a segmentation: it counts for detection, not for the pixel "
                        "metrics")
    if seg is not None and seg.any() and subject.label == 0:
        warnings.append(f"healthy subject whose mask {Path(subject.mask).name} marks {int((seg > 0).sum())} "
                        "voxels; the mask is used for pixel metrics only, the subject counts as healthy")
    return warnings


def preprocess_volume(subject: Subject, settings: PrepSettings) -> dict:
    """Everything the cache stores for one subject (checked first: :func:`check_volume`).

    Returns dict with ``images`` (n_slices, H, W) float32 in [-1, 1], ``brain`` and
    ``lesion`` (n_slices, H, W) uint8, ``slice_index`` (n_slices,) int and ``warnings``
    (list of str, for the cohort summary).
    """
    vol = load_volume(subject.image)
    brain = brain_mask(vol.data)
    seg = load_segmentation(subject.mask, vol) if subject.mask else None
    warnings = check_volume(subject, vol.data, brain, seg, settings)
    method = settings.normalisation
    x = to_generator_range(normalise(vol.data, brain, method), brain, method)
    zs = slab_indices(brain, settings.slab, settings.n_slices)
    hw = settings.image_size
    box = inplane_box(brain, hw[0] / hw[1])
    img = np.stack([crop_pad(axial_view(x, z), box, -1.0) for z in zs])
    brn = np.stack([crop_pad(axial_view(brain, z), box, False) for z in zs]).astype(np.float32)
    brain_small = resize_slices(brn, hw, "mask") > 0.5
    images = np.clip(resize_slices(img, hw, "image"), -1.0, 1.0)
    images[~brain_small] = -1.0  # the blur of resizing must not leak outside the brain mask
    out = dict(images=images.astype(np.float32), brain=brain_small.astype(np.uint8), slice_index=zs)
    if seg is not None:
        les = np.stack([crop_pad(axial_view(seg > 0, z), box, False) for z in zs]).astype(np.float32)
        out["lesion"] = (resize_slices(les, hw, "mask") > 0.5).astype(np.uint8) * out["brain"]
        if subject.label == 1 and not out["lesion"].any():
            warnings.append(f"the tumour lies outside the {settings.n_slices} sampled slices (slab "
                            f"{list(settings.slab)}): the subject counts as tumour but its slices show "
                            "none; widen slab if this is not meant")
    else:
        out["lesion"] = np.zeros_like(out["brain"])
    out["warnings"] = warnings
    return out

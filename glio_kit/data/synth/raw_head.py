"""Raw-like synthetic heads: a synthetic brain inside skull and scalp, in a scanner's pose and grid.

What a real download looks like before ``glio-kit prepare``: not skull-stripped, in each scanner's
native pose, with IXI-like voxels (0.94 x 0.94 x 1.2 mm) stored in varying orientations. Built
around :func:`~glio_kit.data.synth.synth_subject`'s brain, so the ground truth is known: the brain
mask (the extraction's Dice), the pose (the registration's error) and, for tumours, the labels.

Layers outward from the brain, by distance to the brain mask (mm), each thickness varied by a
smooth random field: cerebrospinal fluid (bright in T2), the skull's inner table (dark), diploe
(marrow fat, middle), outer table (dark), scalp fat (bright) and skin. A neck below the brain
keeps the head from ending in a floating shell. Background: Rician noise around zero.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .fields import smooth_noise
from .subject import synth_subject

__all__ = ["IXI_VOXEL_MM", "ORIENTATIONS", "raw_head"]

IXI_VOXEL_MM = (0.9375, 0.9375, 1.2)
#: Storage orientations drawn for the raw file (axis codes of the voxel axes).
ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("L", "A", "S"), ("R", "S", "A"))
_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
# (outer edge in mm from the brain, T2 level relative to CSF): CSF, inner table, diploe, outer
# table, scalp fat, skin
_LAYERS = ((2.0, 0.95), (4.0, 0.04), (6.5, 0.45), (8.5, 0.04), (13.0, 0.75), (15.0, 0.35))
_PAD_MM = 24


def _head_layers(rng, brain: np.ndarray, t2: np.ndarray, csf_level: float, voxel: float) -> np.ndarray:
    """``t2`` (a stripped brain) padded by :data:`_PAD_MM` and wrapped in CSF, skull and scalp."""
    pad = int(round(_PAD_MM / voxel))
    brain = np.pad(brain, pad)
    head = np.pad(t2, pad)
    # the neck: the brain's lowest axial outline, extended down to the bottom of the volume
    zs = np.nonzero(brain.any(axis=(0, 1)))[0]
    z_low = zs[0] + int(round(12 / voxel))
    neck = np.zeros_like(brain)
    foot = ndimage.binary_erosion(brain[:, :, z_low], iterations=int(round(18 / voxel)))
    neck[:, :, :z_low] = foot[:, :, None] if foot.any() else brain[:, :, z_low][:, :, None]
    dist = ndimage.distance_transform_edt(~(brain | neck), sampling=voxel)
    # thickness varies by ~25 % over ~5 cm: a smooth field drawn on a 4x coarser grid (speed)
    coarse = smooth_noise(rng, tuple(s // 4 + 1 for s in brain.shape), 5.0 / voxel)[0]
    zoom = [s / c for s, c in zip(brain.shape, coarse.shape)]
    wobble = 1.0 + 0.25 * ndimage.zoom(coarse, zoom, order=1)[tuple(slice(0, s) for s in brain.shape)]
    d = dist / wobble
    inner = 0.0
    for outer, level in _LAYERS:
        shell = (d > inner) & (d <= outer)
        head[shell] = level * csf_level * (1.0 + 0.05 * rng.standard_normal(int(shell.sum())))
        inner = outer
    head[neck & ~brain] = 0.40 * csf_level  # neck muscle and cord
    return head, brain


def _scanner_grid(rng, shape_mm, codes=None) -> tuple:
    """An IXI-like voxel grid in a storage orientation (``codes``, else drawn) covering ``shape_mm``
    (RAS extents in mm)."""
    drawn = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    codes = tuple(codes) if codes is not None else drawn
    rot = np.zeros((3, 3))
    vox = np.zeros(3)
    for i, c in enumerate(codes):
        axis, sign = _AXIS[c]
        rot[axis, i] = sign
        vox[i] = IXI_VOXEL_MM[i]
    extent = np.abs(rot.T) @ np.asarray(shape_mm)
    shape = tuple(int(np.ceil(e / v)) for e, v in zip(extent, vox))
    affine = np.eye(4)
    affine[:3, :3] = rot * vox
    # put the field of view's centre at the world origin's neighbourhood
    centre_vox = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre_vox
    return shape, affine, "".join(codes)


def _pose(rng, max_deg=12.0, max_mm=12.0) -> np.ndarray:
    """A random rigid head pose (4, 4): rotations up to ``max_deg`` per axis, shifts up to ``max_mm``."""
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz, sx, sy, sz = *np.cos(a), *np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ ry @ rx
    pose[:3, 3] = rng.uniform(-max_mm, max_mm, 3)
    return pose


def raw_head(kind="healthy", rng_seed=0, orientation=None) -> dict:
    """One raw-like synthetic head scan with its ground truth.

    Parameters
    ----------
    kind : {"healthy", "healthy_wmh", "tumor"}
        The brain inside (:func:`~glio_kit.data.synth.synth_subject`).
    rng_seed : int
        Seeds the brain and the head (skull thickness, pose, grid, noise).
    orientation : tuple of 3 axis codes, optional
        The storage orientation (e.g. ``("L", "P", "S")``); drawn from :data:`ORIENTATIONS` when None.

    Returns
    -------
    head : dict
        ``image`` (X, Y, Z) float32 in the raw grid (not stripped, noisy background);
        ``brain`` (X, Y, Z) bool, the true brain mask on that grid; ``seg`` uint8 labels or None;
        ``affine`` (4, 4) voxel -> scanner mm; ``pose`` (4, 4) the rigid map from the brain's
        template-space mm to scanner mm; ``orientation`` (e.g. ``"LPS"``); ``info`` from
        synth_subject.
    """
    t2, seg, aff, info = synth_subject(kind, rng_seed=rng_seed, voxel_size=1.0)
    rng = np.random.default_rng(np.random.SeedSequence([int(rng_seed), 17]))
    brain = t2 > 0
    csf = float(np.percentile(t2[brain], 99))
    head, brain_p = _head_layers(rng, brain, t2, csf, 1.0)
    pad = int(round(_PAD_MM))
    src_aff = aff.copy()
    src_aff[:3, 3] -= src_aff[:3, :3] @ np.full(3, pad)
    seg_p = None if seg is None else np.pad(seg, pad)
    pose = _pose(rng)
    shape, raw_aff, codes = _scanner_grid(rng, np.asarray(head.shape) * 1.0, orientation)
    # raw voxel -> scanner mm -> template mm (pose inverse) -> source voxel
    to_src = np.linalg.inv(src_aff) @ np.linalg.inv(pose) @ raw_aff
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = to_src[:3, :3] @ idx + to_src[:3, 3:4]
    image = ndimage.map_coordinates(head, coords, order=1, cval=0.0).reshape(shape)
    truth = ndimage.map_coordinates(brain_p.astype(np.float32), coords, order=1).reshape(shape) > 0.5
    labels = None
    if seg_p is not None:
        labels = ndimage.map_coordinates(seg_p, coords, order=0).reshape(shape).astype(np.uint8)
    sigma = 0.02 * csf
    n1, n2 = rng.standard_normal((2, *shape), dtype=np.float32)
    image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)
    return {"image": image, "brain": truth, "seg": labels, "affine": raw_aff, "pose": pose,
            "orientation": codes, "info": info}

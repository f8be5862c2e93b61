"""One subject's anatomy: a smooth random deformation of the templates, bias and texture.

Everything is expressed as a pull-back map ``q``: for every output voxel, the template
voxel it shows. The map is drawn on a coarse grid (every ``COARSE_MM``) and upsampled,
together with the bias field and a faint tissue texture.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .fields import smooth_noise, upsample

__all__ = ["COARSE_MM", "SubjectFields", "Tissue", "deform", "sample_tissue"]

# Spacing (mm) of the coarse grid on which smooth fields are drawn before upsampling.
COARSE_MM = 4.0


class SubjectFields(NamedTuple):
    """A subject's smooth fields on the output grid (X, Y, Z); all float32."""

    q: np.ndarray  #: (3, X, Y, Z) template voxel sampled by each output voxel
    bias: np.ndarray  #: multiplicative bias field, around 1
    rough: np.ndarray  #: smooth unit-RMS noise: tissue texture, lesion border irregularity
    texture: np.ndarray  #: 1 + a few % of ``rough``: multiplies the tissue intensities
    vent_a: float  #: ventricle pull (> 0 enlarges the ventricles)
    bias_amp: float  #: RMS of the log bias field


class Tissue(NamedTuple):
    """Tissue probabilities of one subject on the output grid, float32 (X, Y, Z) in [0, 1]."""

    mask: np.ndarray  #: soft brain mask, CSF spaces included
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray


def _coarse_grid(shape, v):
    """Upsampling factor (int, fine voxels per coarse step) and the coarse shape covering ``shape``."""
    factor = max(1, int(round(COARSE_MM / v)))
    cshape = tuple(int(np.ceil((s - 1) / factor)) + 2 for s in shape)
    return factor, cshape


def _random_affine(rng_anat):
    """(3, 3) float32 pull-back matrix of a small affine.

    Rotation up to 5 degrees about each axis, scale 0.93-1.07 times 0.98-1.02 per axis;
    the pull-back uses the inverse scaling. Draws 7 uniforms from ``rng_anat``.
    """
    ang = np.deg2rad(rng_anat.uniform(-5, 5, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    scale = rng_anat.uniform(0.93, 1.07) * rng_anat.uniform(0.98, 1.02, 3)
    return (rot / scale[None, :]).astype(np.float32)


def _keep_in_view(rng_anat, src, mat, tpl, factor):
    """Shift the coarse pull-back map ``src`` (3, x, y, z) in place so the brain stays in view.

    Centres the deformed brain (found on the coarse grid, cheap), then adds a random shift
    of at most 4 mm, only as large as the margin to the volume edge allows.
    """
    shape, v = tpl["shape"], tpl["voxel_size"]
    cmask = ndimage.map_coordinates(tpl["mask"], src.reshape(3, -1), order=1,
                                    prefilter=False).reshape(src.shape[1:]) > 0.5
    pts = np.argwhere(cmask) * factor
    lo_b, hi_b = pts.min(axis=0), pts.max(axis=0)
    slack = np.maximum((np.array(shape) - 1 - (hi_b - lo_b)) / 2.0 - (factor + 4.0 / v), 0)
    jitter = rng_anat.uniform(-1, 1, 3) * np.minimum(slack, 4.0 / v)
    t_out = (np.array(shape) - 1) / 2.0 - (lo_b + hi_b) / 2.0 + jitter  # output shift
    src -= (mat @ t_out).astype(np.float32)[:, None, None, None]


def _ventricle_pull(rng_anat, src, tpl):
    """Radial pull of the pull-back map ``src`` (3, x, y, z) towards/away from the ventricles.

    ``a > 0`` samples tissue nearer the ventricle centre, i.e. enlarges the ventricles;
    the pull fades with a Gaussian of 16 x 28 x 16 mm. Returns the new map and ``a``.
    """
    vent_a = rng_anat.uniform(-0.25, 0.45)
    vc = tpl["vent_center"].astype(np.float32)[:, None, None, None]
    sig = (np.array([16.0, 28.0, 16.0], dtype=np.float32) / tpl["voxel_size"])[:, None, None, None]
    d = src - vc
    g = np.exp(-0.5 * np.sum((d / sig) ** 2, axis=0))
    return src - vent_a * d * g[None], vent_a


def _pullback(rng_anat, rng_field, tpl, factor, cshape):
    """The coarse pull-back map (3, *cshape), float32, in template voxels.

    Small affine about the volume centre, a smooth non-rigid field (a large-scale and a
    finer component, RMS 1.2-2.5 mm and 0.3-0.8 mm), a shift that keeps the brain in view
    and the ventricle size change.
    """
    shape, v = tpl["shape"], tpl["voxel_size"]
    cv = factor * v  # coarse spacing in mm
    cidx = np.indices(cshape, dtype=np.float32) * factor  # coarse points in fine voxels
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    rel = cidx - centre
    mat = _random_affine(rng_anat)
    src = np.einsum("ij,j...->i...", mat, rel) + centre
    big = smooth_noise(rng_field, cshape, 20.0 / cv, 3) * rng_anat.uniform(1.2, 2.5) / v
    fine = smooth_noise(rng_field, cshape, 7.0 / cv, 3) * rng_anat.uniform(0.3, 0.8) / v
    src += big + fine
    _keep_in_view(rng_anat, src, mat, tpl, factor)
    return _ventricle_pull(rng_anat, src, tpl)


def deform(rng_anat, rng_field, tpl) -> SubjectFields:
    """Draw one subject's deformation, bias field and tissue texture on the output grid.

    Parameters
    ----------
    rng_anat : numpy.random.Generator
        Scalar draws (affine, field amplitudes, shift, ventricle pull, bias and texture
        amplitudes); their number does not depend on the grid size.
    rng_field : numpy.random.Generator
        The coarse noise fields (grid-sized).
    tpl : dict
        From :func:`~glio_kit.data.synth.load_templates`.

    Returns
    -------
    SubjectFields
        Fields of shape ``tpl["shape"]`` (the pull-back map ``q`` with a leading 3).
    """
    shape, v = tpl["shape"], tpl["voxel_size"]
    factor, cshape = _coarse_grid(shape, v)
    cv = factor * v
    src, vent_a = _pullback(rng_anat, rng_field, tpl, factor, cshape)
    # Bias field and a faint tissue texture ride along on the coarse grid.
    bias_amp = rng_anat.uniform(0.05, 0.18)
    tex_amp = rng_anat.uniform(0.015, 0.035)
    extra = np.concatenate([
        smooth_noise(rng_field, cshape, 45.0 / cv, 1) * bias_amp,
        smooth_noise(rng_field, cshape, 5.0 / cv, 1),  # unit RMS, scaled below
    ])
    fields = upsample(np.concatenate([src, extra]), factor, shape)
    rough = fields[4]
    return SubjectFields(q=fields[:3], bias=np.exp(fields[3]), rough=rough,
                         texture=1.0 + tex_amp * rough, vent_a=vent_a, bias_amp=bias_amp)


def sample_tissue(tpl, q) -> Tissue:
    """Sample the template tissue maps through the pull-back map ``q`` (3, X, Y, Z), linearly."""
    shape = q.shape[1:]
    coords = q.reshape(3, -1)

    def sample(arr):
        return ndimage.map_coordinates(arr, coords, order=1, mode="constant",
                                       cval=0.0, prefilter=False).reshape(shape)

    mask = sample(tpl["mask"])
    gm = sample(tpl["gm"])
    wm = sample(tpl["wm"])
    return Tissue(mask=mask, gm=gm, wm=wm, csf=np.clip(mask - gm - wm, 0.0, 1.0))


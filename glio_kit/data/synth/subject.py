"""One synthetic T2-weighted subject in memory: :func:`synth_subject`."""
from __future__ import annotations

import numpy as np

from .anatomy import deform, sample_tissue
from .lesions import add_wmh, draw_tumor, glioma_info, mass_effect, paint_glioma
from .templates import load_templates

__all__ = ["KINDS", "synth_subject"]

KINDS = ("healthy", "healthy_wmh", "tumor")

# The independent random streams spawned from a subject's seed, in spawn order. Separate
# streams keep purposes apart: the scalar anatomy draws do not depend on the grid size (the
# grid-sized noise fields come from "fields"), so a seed gives the same subject parameters
# at every voxel size; and the same seed gives the same anatomy, contrast, bias and noise
# whatever lesion the subject gets. A spawned child depends only on its index: add a new
# stream at the end, never in between, or every subject changes.
STREAMS = ("anatomy", "fields", "tumor", "wmh", "noise")


def _streams(rng_seed) -> dict:
    """One ``numpy.random.Generator`` per name in :data:`STREAMS`, from an int, a tuple of
    ints or a ``SeedSequence``."""
    if isinstance(rng_seed, np.random.SeedSequence):
        ss = rng_seed
    elif isinstance(rng_seed, (tuple, list)):
        ss = np.random.SeedSequence([int(s) for s in rng_seed])
    else:
        ss = np.random.SeedSequence(int(rng_seed))
    return dict(zip(STREAMS, (np.random.default_rng(s) for s in ss.spawn(len(STREAMS)))))


def _t2_contrast(rng_anat, tissue, texture):
    """T2 (X, Y, Z) float32 relative to CSF ~ 1, mixed from the tissue probabilities.

    CSF bright (0.92-1.08), grey matter middle (0.42-0.55), white matter dark (0.27-0.36),
    times the texture. Returns ``t2`` and the three levels ``(csf, gm, wm)``.
    """
    i_csf = rng_anat.uniform(0.92, 1.08)
    i_gm = rng_anat.uniform(0.42, 0.55)
    i_wm = rng_anat.uniform(0.27, 0.36)
    t2 = (tissue.csf * i_csf + tissue.gm * i_gm + tissue.wm * i_wm) * texture
    return t2, (i_csf, i_gm, i_wm)


def _acquire(rng_noise, t2, bias, brain):
    """The scanner's part: bias field, Rician noise, global scale, skull stripping.

    ``t2`` (X, Y, Z) float32 relative to CSF ~ 1 (multiplied by ``bias`` in place); noise
    sigma 0.012-0.028 of CSF (white-matter SNR ~ 12-28); scale 400-2500 (log-uniform);
    zero outside ``brain`` (bool, X, Y, Z). Returns ``(t2, sigma, scale)``.
    """
    t2 *= bias
    sigma = rng_noise.uniform(0.012, 0.028)
    n1 = rng_noise.standard_normal(t2.shape, dtype=np.float32)
    n2 = rng_noise.standard_normal(t2.shape, dtype=np.float32)
    t2 = np.sqrt((t2 + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
    scale = float(np.exp(rng_noise.uniform(np.log(400.0), np.log(2500.0))))
    t2 *= scale
    t2[~brain] = 0.0  # skull-stripped: background exactly zero
    return t2, sigma, scale


def synth_subject(kind="healthy", rng_seed=0, voxel_size=1.0, lesion_radius_mm=None,
                  n_wmh=None):
    """Generate one synthetic T2-weighted subject.

    The same ``rng_seed`` gives the same anatomy, contrast, bias field and noise for every
    ``kind``; only the lesions differ. So ``synth_subject("healthy_wmh", s)`` minus
    ``synth_subject("healthy", s)`` is non-zero only at the hyperintensities.

    Parameters
    ----------
    kind : {"healthy", "healthy_wmh", "tumor"}
        Healthy brain, healthy brain with small white-matter hyperintensities, or a brain
        with a high-grade glioma.
    rng_seed : int, tuple of int or numpy.random.SeedSequence
        Seeds the subject's random streams (:data:`STREAMS`).
    voxel_size : float, default=1.0
        Isotropic output voxel size in mm.
    lesion_radius_mm : float, optional
        Total lesion radius (edema included) in mm for ``kind="tumor"``; drawn from
        8-32 mm when None.
    n_wmh : int, optional
        Number of hyperintense blobs for ``kind="healthy_wmh"``; drawn from 2-7 when None.

    Returns
    -------
    t2 : ndarray of shape (X, Y, Z), float32
        T2-weighted intensities in arbitrary scanner units (CSF roughly 400-2500);
        exactly 0 outside the brain mask.
    seg : ndarray of shape (X, Y, Z), uint8, or None
        BraTS labels (0 background, 1 necrosis, 2 edema, 4 enhancing) for tumours,
        None otherwise.
    affine : ndarray of shape (4, 4)
        Voxel-to-world (RAS, mm) affine.
    info : dict
        Parameters drawn for the subject: ``kind``, ``voxel_size``, ``intensity_scale``,
        ``contrast`` (csf, gm, wm levels), ``noise_sigma``, ``ventricle_scale``,
        ``bias_amplitude``, ``has_wmh``, ``n_wmh``, ``lesion_ml`` (whole lesion volume in
        ml, 0 if none), ``tumor_center_mm`` (label centroid in world mm or None),
        ``lesion_wm_fraction`` (share of lesion voxels whose displaced source tissue is
        mostly white matter, or None); tumours also ``lesion_radius_mm`` (drawn total
        radius) and ``tumor_center_template_vox`` (placement, template voxels).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tpl = load_templates(float(voxel_size))
    v = tpl["voxel_size"]
    rng = _streams(rng_seed)
    sf = deform(rng["anatomy"], rng["fields"], tpl)
    info = {"kind": kind, "voxel_size": v}
    tumor = None
    if kind == "tumor":
        # Placed and pushing the anatomy aside before the tissue is sampled.
        tumor = draw_tumor(rng["tumor"], tpl, lesion_radius_mm)
        mass_effect(sf.q, tumor)
    tissue = sample_tissue(tpl, sf.q)
    t2, (i_csf, i_gm, i_wm) = _t2_contrast(rng["anatomy"], tissue, sf.texture)
    info.update(contrast={"csf": float(i_csf), "gm": float(i_gm), "wm": float(i_wm)},
                ventricle_scale=float(1.0 / (1.0 - sf.vent_a)), bias_amplitude=float(sf.bias_amp))
    brain = tissue.mask > 0.5

    info["has_wmh"] = kind == "healthy_wmh"
    info["n_wmh"] = 0
    if kind == "healthy_wmh":
        info["n_wmh"] = add_wmh(rng["wmh"], tpl, sf.q, t2, tissue.wm, i_csf, n_wmh)

    seg = None
    info.update(lesion_ml=0.0, tumor_center_mm=None, lesion_wm_fraction=None)
    if tumor is not None:
        seg = paint_glioma(rng["tumor"], tumor, t2, tissue, brain, sf, i_csf, v)
        info.update(glioma_info(seg, tumor, tissue, tpl))

    t2, sigma, scale = _acquire(rng["noise"], t2, sf.bias, brain)
    info.update(noise_sigma=float(sigma), intensity_scale=scale)
    return t2.astype(np.float32), seg, tpl["affine"].copy(), info

"""Synthetic T2-weighted brain MRI cohort with ground-truth glioma labels.

Real T2 data cannot be downloaded by the kit, so the demo and the tests use subjects built
from real anatomy: the MNI ICBM152 2009a templates shipped inside ``nilearn`` (a
skull-stripped T1 whose support is the brain mask, and grey- and white-matter probability
maps). A T2-like contrast follows from the tissue classes (CSF bright, grey matter middle,
white matter dark), mixed by the probability maps so partial volume looks natural.

Each subject gets its own smooth non-rigid deformation and small affine, ventricle size,
tissue contrast, bias field, Rician noise and global intensity scale. Tumour subjects get
a glioma in white matter (necrotic core, enhancing rim, edema, irregular shape, mass
effect) with a BraTS-style label map (1 necrosis, 2 edema, 4 enhancing). A fraction of the
healthy test subjects get small white-matter hyperintensities, the kind of finding that
gave the paper its false positives.

:func:`make_cohort` writes NIfTI files in the IXI layout (healthy) and the BraTS layout
(tumour), so the demo goes through the same loaders as a user's real data.
:func:`synth_subject` makes one subject in memory.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import RunFolderError

__all__ = ["make_cohort", "synth_subject", "load_templates", "SYNTH_VERSION"]

#: Bumped whenever the generator's output changes, so an old cohort is not reused.
SYNTH_VERSION = 1

KINDS = ("healthy", "healthy_wmh", "tumor")

# Field of view in MNI millimetres: the template's brain bounding box (x -72..72,
# y -107..73, z -72..82) plus a margin that the affine, the elastic field and the mass
# effect cannot cross, so the brain always stays inside the volume.
_FOV_LO = np.array([-88.0, -123.0, -88.0])
_FOV_HI = np.array([88.0, 89.0, 98.0])

# Spacing (mm) of the coarse grid on which smooth fields are drawn before upsampling.
_COARSE_MM = 4.0

# Group codes that seed subjects: subject i of a group is the same whatever the counts.
_GROUP_CODE = {"train_healthy": 1, "test_healthy": 2, "test_tumor": 3}


# --------------------------------------------------------------------------- templates
def _template_dir() -> Path:
    # Locate nilearn's bundled data without importing nilearn.datasets (which pulls in
    # scikit-learn and costs seconds in every worker process).
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("glio_kit.synth needs nilearn (it ships the MNI ICBM152 templates)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _grid(voxel_size: float):
    """Shape and affine (RAS, mm) of the output grid for a voxel size in mm."""
    shape = tuple(int(np.floor((hi - lo) / voxel_size)) + 1 for lo, hi in zip(_FOV_LO, _FOV_HI))
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = _FOV_LO
    return shape, affine


@lru_cache(maxsize=1)
def _source_maps():
    """The 1 mm templates: brain mask, GM and WM probabilities (float32) and affine."""
    import nibabel as nib

    d = _template_dir()
    vols = {}
    for stem in ("t1", "gm", "wm"):
        img = nib.load(d / f"mni_icbm152_{stem}_tal_nlin_sym_09a_converted.nii.gz")
        vols[stem] = np.asarray(img.dataobj, dtype=np.float32) / np.float32(255.0)
        affine = img.affine
    # The T1 is skull-stripped: its support is the brain. GM leaks a little outside it.
    mask = (vols["t1"] > 0).astype(np.float32)
    gm = vols["gm"] * mask
    wm = np.minimum(vols["wm"] * mask, mask - gm)
    return {"mask": mask, "gm": gm, "wm": wm}, affine


@lru_cache(maxsize=1)
def _lesion_sites():
    """Candidate lesion positions in world mm, found once on a 2 mm copy of the templates.

    Working in world mm (not voxels) keeps a subject's lesion at the same place whatever
    the output voxel size.
    """
    maps, src_aff = _source_maps()
    # 2 mm block means: cheap distance transforms, enough precision for choosing sites.
    sh = [s // 2 * 2 for s in maps["mask"].shape]

    def half(a):
        a = a[: sh[0], : sh[1], : sh[2]]
        return a.reshape(sh[0] // 2, 2, sh[1] // 2, 2, sh[2] // 2, 2).mean(axis=(1, 3, 5))

    mask, gm, wm = half(maps["mask"]), half(maps["gm"]), half(maps["wm"])
    csf = np.clip(mask - gm - wm, 0, 1)
    aff = src_aff.copy()
    aff[:3, :3] *= 2
    aff[:3, 3] += 0.5 * np.diag(src_aff)[:3]  # block centre
    ijk = np.indices(mask.shape, dtype=np.float32)
    world = np.einsum("ij,j...->i...", aff[:3, :3], ijk) + aff[:3, 3, None, None, None]
    # Lateral ventricles: CSF near the centre of the brain.
    central = ((np.abs(world[0]) < 30) & (world[1] > -45) & (world[1] < 25)
               & (world[2] > 0) & (world[2] < 35) & (csf > 0.5))
    brain = mask > 0.5
    depth = ndimage.distance_transform_edt(brain) * 2.0  # mm to the brain surface
    zs = np.nonzero(brain.any(axis=(0, 1)))[0]
    z_frac = ((np.arange(mask.shape[2]) - zs[0]) / max(zs[-1] - zs[0], 1))[None, None, :]
    z_frac = np.broadcast_to(z_frac, mask.shape)
    deep_wm = (wm > 0.85) & (depth > 8.0)
    dist_vent = ndimage.distance_transform_edt(~central) * 2.0
    wmh_zone = (wm > 0.8) & (((dist_vent > 3) & (dist_vent < 14)) | (depth > 22))
    # Above the basal ganglia: corona radiata / centrum semiovale, where WMH usually sit.
    wmh_zone &= (z_frac > 0.53) & (z_frac < 0.85)
    return {
        "vent_center_mm": world[:, central].mean(axis=1).astype(np.float64),
        "tumor_mm": world[:, deep_wm].T.astype(np.float64),
        "tumor_depth_mm": depth[deep_wm].astype(np.float32),
        "tumor_z_frac": z_frac[deep_wm].astype(np.float32),
        "wmh_mm": world[:, wmh_zone].T.astype(np.float64),
    }


@lru_cache(maxsize=4)
def load_templates(voxel_size: float = 1.0) -> dict:
    """Load the ICBM152 2009a templates resampled onto the output grid (cached).

    Parameters
    ----------
    voxel_size : float
        Output voxel size in mm (isotropic).

    Returns
    -------
    templates : dict
        ``gm``, ``wm``, ``csf``, ``mask`` : float32 arrays of shape ``shape``, tissue
        probabilities in [0, 1] (``mask`` is the soft brain mask, CSF spaces included);
        ``affine`` : (4, 4) voxel-to-MNI-mm; ``shape`` : the grid shape (X, Y, Z);
        ``voxel_size`` : mm; ``vent_center`` : (3,) lateral-ventricle centre in voxels;
        ``tumor_cand`` and ``wmh_cand`` : (K, 3) candidate lesion centres in voxels, in
        deep white matter; ``depth_mm`` : (K,) distance of each tumour candidate to the
        brain surface in mm; ``z_frac`` : (K,) its position along the
        inferior-superior brain extent in [0, 1].
    """
    v = float(voxel_size)
    maps, src_affine = _source_maps()
    shape, affine = _grid(v)
    # Output voxel -> template voxel is a pure scale + shift (both grids are axis-aligned).
    to_src = np.linalg.inv(src_affine) @ affine
    out = {}
    for key, arr in maps.items():
        if v == 1.0 and np.allclose(to_src[:3, 3], np.round(to_src[:3, 3])):
            # Same spacing, integer shift: crop/pad, no interpolation needed.
            off = np.round(to_src[:3, 3]).astype(int)
            res = np.zeros(shape, dtype=np.float32)
            dst, srcs = [], []
            for o, n_out, n_src in zip(off, shape, arr.shape):
                lo, hi = max(0, -o), min(n_out, n_src - o)
                dst.append(slice(lo, hi))
                srcs.append(slice(lo + o, hi + o))
            res[tuple(dst)] = arr[tuple(srcs)]
            out[key] = res
            continue
        if v > 1.0:
            # Anti-alias before decimating so thin cortex does not turn into stripes.
            arr = ndimage.gaussian_filter(arr, sigma=0.42 * v, mode="constant")
        out[key] = ndimage.affine_transform(
            arr, to_src[:3, :3], offset=to_src[:3, 3], output_shape=shape, order=1,
            mode="constant", cval=0.0).astype(np.float32)
    out["mask"] = np.clip(out["mask"], 0.0, 1.0)
    out["gm"] = np.clip(out["gm"], 0.0, out["mask"])
    out["wm"] = np.clip(out["wm"], 0.0, out["mask"] - out["gm"])
    out["csf"] = np.clip(out["mask"] - out["gm"] - out["wm"], 0.0, 1.0)

    sites = _lesion_sites()

    def to_vox(mm):
        return (np.asarray(mm) - affine[:3, 3]) / v

    out.update(
        affine=affine, shape=shape, voxel_size=v, vent_center=to_vox(sites["vent_center_mm"]),
        tumor_cand=to_vox(sites["tumor_mm"]), depth_mm=sites["tumor_depth_mm"],
        z_frac=sites["tumor_z_frac"], wmh_cand=to_vox(sites["wmh_mm"]),
    )
    for key in ("gm", "wm", "csf", "mask"):
        out[key].setflags(write=False)
    return out


# --------------------------------------------------------------------------- helpers
def _smooth_noise(rng, shape, sigma_vox, n=1):
    """``n`` Gaussian-smoothed white-noise fields of unit RMS, shape ``(n, *shape)``."""
    f = rng.standard_normal((n, *shape)).astype(np.float32)
    for i in range(n):
        f[i] = ndimage.gaussian_filter(f[i], sigma_vox, mode="reflect")
        f[i] /= np.sqrt(np.mean(f[i] ** 2)) + 1e-8
    return f


def _upsample(coarse, factor, shape):
    """Trilinear upsampling of ``coarse`` (n, *cshape) by ``factor`` onto ``shape``."""
    if factor == 1:
        return coarse[(slice(None),) + tuple(slice(0, s) for s in shape)]
    axes = [np.arange(s, dtype=np.float32) / factor for s in shape]
    out = np.empty((coarse.shape[0], *shape), dtype=np.float32)
    # Separable linear interpolation: three cheap 1-D passes instead of one 3-D gather.
    for c in range(coarse.shape[0]):
        a = coarse[c]
        for ax, pos in enumerate(axes):
            i0 = np.clip(np.floor(pos).astype(np.intp), 0, a.shape[ax] - 2)
            w = (pos - i0).reshape([-1 if k == ax else 1 for k in range(3)])
            a = np.take(a, i0, axis=ax) * (1 - w) + np.take(a, i0 + 1, axis=ax) * w
        out[c] = a
    return out


def _direction_radius(rng, n_vec, n_lobes, amp):
    """Direction-dependent radius factor (>0) for irregular, lobulated shapes.

    ``n_vec`` is (3, N) unit vectors; returns (N,) factors around 1.
    """
    f = np.ones(n_vec.shape[1], dtype=np.float32)
    for _ in range(n_lobes):
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        kappa = rng.uniform(2.0, 7.0)
        a = rng.uniform(-amp, amp)
        f += a * np.exp(kappa * (u @ n_vec - 1.0)).astype(np.float32)
    return np.clip(f, 0.45, 1.6)


def _ramp(r, radius, width):
    """Soft inside-indicator: 1 well inside ``radius``, 0 outside, linear over ``width``."""
    return np.clip((radius - r) / width + 0.5, 0.0, 1.0)


def _seed_sequence(rng_seed):
    if isinstance(rng_seed, np.random.SeedSequence):
        return rng_seed
    if isinstance(rng_seed, (tuple, list)):
        return np.random.SeedSequence([int(s) for s in rng_seed])
    return np.random.SeedSequence(int(rng_seed))


# --------------------------------------------------------------------------- one subject
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
        Seeds the subject's random streams (anatomy, lesion, hyperintensities, noise).
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
        ``has_wmh``, ``n_wmh``, ``lesion_ml`` (whole lesion volume in ml, 0 if none),
        ``tumor_center_mm`` (label centroid in world mm or None),
        ``lesion_wm_fraction`` (share of lesion voxels whose displaced source tissue is
        mostly white matter, or None); tumours also ``lesion_radius_mm`` (drawn total
        radius) and ``tumor_center_template_vox`` (placement, template voxels).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tpl = load_templates(float(voxel_size))
    v = tpl["voxel_size"]
    shape = tpl["shape"]
    ss = _seed_sequence(rng_seed)
    # Separate streams: scalar draws (rng_anat) do not depend on the grid size, so a seed
    # gives the same subject parameters at every voxel size; fields come from rng_field.
    rng_anat, rng_field, rng_tum, rng_wmh, rng_noise = [
        np.random.default_rng(s) for s in ss.spawn(5)]

    # ---- pull-back map output voxel -> template voxel, drawn on a coarse grid ----------
    factor = max(1, int(round(_COARSE_MM / v)))
    cshape = tuple(int(np.ceil((s - 1) / factor)) + 2 for s in shape)
    cv = factor * v  # coarse spacing in mm
    cidx = np.indices(cshape, dtype=np.float32) * factor  # coarse points in fine voxels
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    rel = cidx - centre
    # Small affine: rotation up to 5 deg, scale 0.93-1.07 (+-2 % per axis).
    ang = np.deg2rad(rng_anat.uniform(-5, 5, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    scale = rng_anat.uniform(0.93, 1.07) * rng_anat.uniform(0.98, 1.02, 3)
    mat = (rot / scale[None, :]).astype(np.float32)  # pull-back: inverse scaling
    src = np.einsum("ij,j...->i...", mat, rel) + centre
    # Smooth non-rigid field: a large-scale and a finer component, RMS in mm.
    big = _smooth_noise(rng_field, cshape, 20.0 / cv, 3) * rng_anat.uniform(1.2, 2.5) / v
    fine = _smooth_noise(rng_field, cshape, 7.0 / cv, 3) * rng_anat.uniform(0.3, 0.8) / v
    src += big + fine
    # Keep the whole brain in the field of view: centre the deformed brain (found on the
    # coarse grid, cheap), then add a random shift only as large as the margin allows.
    cmask = ndimage.map_coordinates(tpl["mask"], src.reshape(3, -1), order=1,
                                    prefilter=False).reshape(cshape) > 0.5
    pts = np.argwhere(cmask) * factor
    lo_b, hi_b = pts.min(axis=0), pts.max(axis=0)
    slack = np.maximum((np.array(shape) - 1 - (hi_b - lo_b)) / 2.0 - (factor + 4.0 / v), 0)
    jitter = rng_anat.uniform(-1, 1, 3) * np.minimum(slack, 4.0 / v)
    t_out = (np.array(shape) - 1) / 2.0 - (lo_b + hi_b) / 2.0 + jitter  # output shift
    src -= (mat @ t_out).astype(np.float32)[:, None, None, None]
    # Ventricle size: radial pull towards/away from the ventricle centre in template space.
    # a > 0 samples tissue nearer the centre, i.e. enlarges the ventricles.
    vent_a = rng_anat.uniform(-0.25, 0.45)
    vc = tpl["vent_center"].astype(np.float32)[:, None, None, None]
    sig = (np.array([16.0, 28.0, 16.0], dtype=np.float32) / v)[:, None, None, None]
    d = src - vc
    g = np.exp(-0.5 * np.sum((d / sig) ** 2, axis=0))
    src = src - vent_a * d * g[None]
    # Bias field and a faint tissue texture ride along on the coarse grid.
    bias_amp = rng_anat.uniform(0.05, 0.18)
    tex_amp = rng_anat.uniform(0.015, 0.035)
    extra = np.concatenate([
        _smooth_noise(rng_field, cshape, 45.0 / cv, 1) * bias_amp,
        _smooth_noise(rng_field, cshape, 5.0 / cv, 1),  # unit RMS, scaled below
    ])
    fields = _upsample(np.concatenate([src, extra]), factor, shape)
    q = fields[:3]  # template voxel sampled by each output voxel
    bias = np.exp(fields[3])
    rough = fields[4]  # smooth unit noise: tissue texture, lesion border irregularity
    texture = 1.0 + tex_amp * rough
    del fields, src, extra, cidx, rel, d, g

    # ---- tumour: position, shape, mass effect (all in template voxel space) -----------
    info = {"kind": kind, "voxel_size": v}
    tumor = None
    if kind == "tumor":
        tumor = _draw_tumor(rng_tum, tpl, lesion_radius_mm)
        c = tumor["center"].astype(np.float32)
        reach = tumor["reach"]  # voxels beyond which nothing changes
        # Work only on a box of output voxels whose source lies near the centre.
        near = np.all(np.abs(q - c[:, None, None, None]) < reach, axis=0)
        box = ndimage.find_objects(near.astype(np.uint8))[0]
        qb = q[(slice(None),) + box] - c[:, None, None, None]
        r = np.sqrt(np.sum(qb ** 2, axis=0)) + 1e-6
        # Mass effect: tissue at distance rho moved out to r with r^3 = rho^3 + Rm^3 w(r):
        # volume-preserving near the tumour, fading far away so the brain keeps its shape.
        rm = tumor["r_mass"]
        w = np.exp(-((r / tumor["l_mass"]) ** 2))
        rho = np.cbrt(np.maximum(r ** 3 - rm ** 3 * w, 0.0))
        q[(slice(None),) + box] = c[:, None, None, None] + qb * (rho / r)[None]
        tumor.update(box=box, r=r, n_vec=(qb / r[None]).reshape(3, -1))

    # ---- sample tissue maps -------------------------------------------------------------
    coords = q.reshape(3, -1)

    def sample(arr):
        return ndimage.map_coordinates(arr, coords, order=1, mode="constant",
                                       cval=0.0, prefilter=False).reshape(shape)

    mask = sample(tpl["mask"])
    gm = sample(tpl["gm"])
    wm = sample(tpl["wm"])
    csf = np.clip(mask - gm - wm, 0.0, 1.0)

    # ---- T2 contrast -----------------------------------------------------------------------
    i_csf = rng_anat.uniform(0.92, 1.08)
    i_gm = rng_anat.uniform(0.42, 0.55)
    i_wm = rng_anat.uniform(0.27, 0.36)
    t2 = (csf * i_csf + gm * i_gm + wm * i_wm) * texture
    info.update(contrast={"csf": float(i_csf), "gm": float(i_gm), "wm": float(i_wm)},
                ventricle_scale=float(1.0 / (1.0 - vent_a)), bias_amplitude=float(bias_amp))
    brain = mask > 0.5

    # ---- white-matter hyperintensities -------------------------------------------------
    info["has_wmh"] = kind == "healthy_wmh"
    info["n_wmh"] = 0
    if kind == "healthy_wmh":
        info["n_wmh"] = _add_wmh(rng_wmh, tpl, q, t2, wm, i_csf, n_wmh)

    # ---- glioma ------------------------------------------------------------------------------
    seg = None
    info.update(lesion_ml=0.0, tumor_center_mm=None, lesion_wm_fraction=None)
    if tumor is not None:
        seg = np.zeros(shape, dtype=np.uint8)
        box = tumor["box"]
        tb = t2[box]
        # Roughen the borders at a ~5 mm scale on top of the lobulated radius.
        r = tumor["r"] / (1.0 + 0.12 * np.clip(rough[box], -2.0, 2.0))
        n_vec = tumor["n_vec"]
        width = 1.0  # one voxel of partial volume at the core borders
        r_enh = tumor["r_enh"] * _direction_radius(rng_tum, n_vec, 5, 0.35).reshape(r.shape)
        r_nec = np.minimum(
            tumor["nec_frac"] * r_enh * _direction_radius(rng_tum, n_vec, 4, 0.2).reshape(r.shape),
            r_enh - 2.0 / v)
        r_ed = tumor["r_ed"] * _direction_radius(rng_tum, n_vec, 6, 0.45).reshape(r.shape)
        # Edema spreads along white matter and spares CSF spaces.
        wm_b, csf_b, mask_b = wm[box], csf[box], mask[box]
        r_ed = np.maximum(r_ed * (0.45 + 0.75 * wm_b), r_enh)
        # Edema fades out over ~3 mm and thins towards its margin; the core is sharper.
        e = _ramp(r, r_ed, max(3.0 / v, 1.0)) * (1.0 - csf_b) * mask_b
        h = _ramp(r, r_enh, width) * mask_b
        c_ = _ramp(r, r_nec, width) * mask_b
        lv = tumor["levels"]
        depth = np.clip((r - r_enh) / np.maximum(r_ed - r_enh, 1e-3), 0.0, 1.0)
        ed_level = lv["edema"] * i_csf * (1.0 - 0.2 * depth) * (1.0 + 0.05 * rough[box])
        # Vasogenic edema: white matter turns bright, the cortex keeps most of its look;
        # water raises T2 and never darkens tissue.
        wm_share = wm_b / np.maximum(mask_b, 1e-3)
        tb += e * np.maximum(ed_level - tb, 0.0) * (0.35 + 0.65 * wm_share)
        tb += h * (lv["enh"] * i_csf * texture[box] - tb)
        tb += c_ * (lv["nec"] * i_csf * (1.0 + 0.08 * rough[box]) - tb)  # heterogeneous
        inside = brain[box]
        sb = np.zeros(r.shape, dtype=np.uint8)
        sb[e > 0.5] = 2
        sb[h > 0.5] = 4
        sb[c_ > 0.5] = 1
        sb[~inside] = 0
        seg[box] = sb
        lesion = seg > 0
        n_les = int(lesion.sum())
        info["lesion_ml"] = float(n_les * v ** 3 / 1000.0)
        if n_les:
            ctr = np.argwhere(lesion).mean(axis=0)
            info["tumor_center_mm"] = [float(x) for x in tpl["affine"][:3, :3] @ ctr
                                       + tpl["affine"][:3, 3]]
            info["lesion_wm_fraction"] = float(np.mean(wm[lesion] > 0.5 * mask[lesion]))
        info.update(lesion_radius_mm=float(tumor["radius_mm"]),
                    tumor_center_template_vox=[float(x) for x in tumor["center"]])

    # ---- bias, noise, scale ---------------------------------------------------------------
    t2 *= bias
    sigma = rng_noise.uniform(0.012, 0.028)  # relative to CSF ~ 1: WM SNR ~ 12-28
    n1 = rng_noise.standard_normal(shape, dtype=np.float32)
    n2 = rng_noise.standard_normal(shape, dtype=np.float32)
    t2 = np.sqrt((t2 + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
    scale = float(np.exp(rng_noise.uniform(np.log(400.0), np.log(2500.0))))
    t2 *= scale
    t2[~brain] = 0.0  # skull-stripped: background exactly zero
    if seg is not None:
        seg[~brain] = 0
    info.update(noise_sigma=float(sigma), intensity_scale=scale)
    return t2.astype(np.float32), seg, tpl["affine"].copy(), info


def _draw_tumor(rng, tpl, lesion_radius_mm=None):
    """Draw glioma size, position (deep WM, mostly mid-axial) and intensities."""
    v = tpl["voxel_size"]
    radius = float(lesion_radius_mm) if lesion_radius_mm else rng.uniform(8.0, 32.0)
    ed_factor = rng.uniform(1.3, 2.3)
    r_enh_mm = max(radius / ed_factor, 4.0)
    cand, depth, zf = tpl["tumor_cand"], tpl["depth_mm"], tpl["z_frac"]
    x_mm = tpl["affine"][0, 0] * cand[:, 0] + tpl["affine"][0, 3]
    lo, hi = (0.35, 0.75) if rng.random() < 0.85 else (0.25, 0.85)
    ok = None
    # Relax constraints stepwise if a large lesion finds no room.
    for need in (r_enh_mm + 4.0, r_enh_mm, 0.6 * r_enh_mm, 0.0):
        ok = (depth >= need) & (zf >= lo) & (zf <= hi) & (np.abs(x_mm) >= min(r_enh_mm, 22.0))
        if ok.any():
            break
    if not ok.any():
        ok = np.ones(len(cand), dtype=bool)
    center = cand[rng.choice(np.flatnonzero(ok))] + rng.uniform(-0.5, 0.5, 3)
    r_mass = rng.uniform(0.55, 0.9) * r_enh_mm
    levels = {"nec": rng.uniform(0.85, 1.0), "edema": rng.uniform(0.66, 0.8),
              "enh": rng.uniform(0.48, 0.6)}
    l_mass = 1.6 * r_enh_mm + 10.0  # mm; the push fades over a few tumour radii
    return {
        "center": center, "radius_mm": radius, "r_enh": r_enh_mm / v, "r_ed": radius / v,
        "nec_frac": rng.uniform(0.45, 0.8) if r_enh_mm > 6 or rng.random() < 0.5 else 0.0,
        "r_mass": r_mass / v, "l_mass": l_mass / v, "levels": levels,
        # Beyond 1.7 l_mass the push is < 0.1 mm; the edema never passes 2.6 radius
        # (lobes <= 1.6, WM spread <= 1.2, roughness <= 1/0.76): no need to go further.
        "reach": (max(2.6 * radius, 1.7 * l_mass) + 4.0) / v,
    }


def _add_wmh(rng, tpl, q, t2, wm, i_csf, n_wmh=None):
    """Paint a few small bright blobs in periventricular/deep WM; returns how many."""
    v = tpl["voxel_size"]
    n = int(n_wmh) if n_wmh is not None else int(rng.integers(2, 8))
    cand = tpl["wmh_cand"]
    for _ in range(n):
        c = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 3)
        rad = rng.uniform(1.5, 4.0) / v  # voxels
        axes = rng.uniform(0.7, 1.4, 3)
        reach = 2.0 * rad * axes.max() + 2
        near = np.all(np.abs(q - c[:, None, None, None]) < reach, axis=0)
        sl = ndimage.find_objects(near.astype(np.uint8))
        if not sl or sl[0] is None:
            continue
        box = sl[0]
        dq = (q[(slice(None),) + box] - c[:, None, None, None]) / axes[:, None, None, None]
        r = np.sqrt(np.sum(dq ** 2, axis=0))
        blob = _ramp(r, rad, 1.0) * np.clip(wm[box] * 1.5, 0, 1)
        level = rng.uniform(0.62, 0.85) * i_csf
        t2[box] += blob * (level - t2[box]).clip(min=0)
    return n


# --------------------------------------------------------------------------- cohort
def _subject_plan(n_train_healthy, n_test_healthy, n_test_tumor, seed, wmh_fraction):
    """Every subject's id, folder, kind and seed; each independent of the group sizes."""
    plan = []
    test_start = 501 if n_train_healthy <= 500 else (n_train_healthy // 100 + 1) * 100 + 1
    # WMH membership: a low-discrepancy sequence with a seed-dependent phase, so the share
    # is exact for any count and subject i's status does not depend on the count.
    phase = np.random.default_rng([seed, 99]).random()
    for group, n, start in (("train_healthy", n_train_healthy, 1),
                            ("test_healthy", n_test_healthy, test_start),
                            ("test_tumor", n_test_tumor, 1)):
        for i in range(n):
            key = (int(seed), _GROUP_CODE[group], i)
            if group == "test_tumor":
                sid = f"SynthBraTS_{start + i:05d}"
                kind = "tumor"
            else:
                site = int(np.random.default_rng(list(key) + [7]).integers(0, 10000))
                sid = f"IXI{start + i:03d}-Synth-{site:04d}"
                kind = "healthy"
                if group == "test_healthy" and (
                        np.floor((i + 1) * wmh_fraction + phase) > np.floor(i * wmh_fraction + phase)):
                    kind = "healthy_wmh"
            plan.append({"id": sid, "folder": group, "kind": kind, "seed": list(key)})
    return plan


def _write_subject(job, root, voxel_size):
    """Generate one subject and write its NIfTI file(s) under ``root``; return its record."""
    import nibabel as nib

    t2, seg, affine, info = synth_subject(job["kind"], job["seed"], voxel_size)
    folder = Path(root) / job["folder"]
    if job["kind"] == "tumor":
        sdir = folder / job["id"]
        sdir.mkdir(parents=True, exist_ok=True)
        t2_path = sdir / f"{job['id']}_t2.nii.gz"
        seg_path = sdir / f"{job['id']}_seg.nii.gz"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        t2_path = folder / f"{job['id']}-T2.nii.gz"
        seg_path = None
    # int16 with a scale factor, as many scanners store it: 12-bit-like raw values.
    slope = float(np.float32(max(float(t2.max()), 1.0) / 4000.0))
    raw = np.round(t2 / slope).astype(np.int16)
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(slope, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"glio_kit synthetic T2 (not a real subject)"
    nib.save(img, t2_path)
    rec = {
        "id": job["id"], "folder": job["folder"], "kind": job["kind"],
        "label": 1 if job["kind"] == "tumor" else 0, "has_wmh": bool(info["has_wmh"]),
        "lesion_ml": round(info["lesion_ml"], 3),
        "tumor_center_mm": (None if info["tumor_center_mm"] is None
                            else [round(x, 1) for x in info["tumor_center_mm"]]),
        "t2": str(t2_path.relative_to(root)),
        "seg": None, "seed": job["seed"],
    }
    if seg_path is not None:
        simg = nib.Nifti1Image(seg.astype(np.uint8), affine)
        simg.header.set_xyzt_units("mm", "sec")
        simg.header.set_qform(affine, code=1)
        simg.header.set_sform(affine, code=1)
        nib.save(simg, seg_path)
        rec["seg"] = str(seg_path.relative_to(root))
    return rec


def _params(n_train_healthy, n_test_healthy, n_test_tumor, seed, voxel_size, wmh_fraction):
    return {
        "generator": "glio_kit.synth", "synth_version": SYNTH_VERSION,
        "n_train_healthy": int(n_train_healthy), "n_test_healthy": int(n_test_healthy),
        "n_test_tumor": int(n_test_tumor), "seed": int(seed),
        "voxel_size": float(voxel_size), "wmh_fraction": float(wmh_fraction),
    }


def _read_cohort_json(root: Path):
    try:
        meta = json.loads((root / "cohort.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("parameters", {}).get("generator") != "glio_kit.synth":
        return None
    return meta


def _readme(params, records):
    n_wmh = sum(r["has_wmh"] for r in records)
    vols = [r["lesion_ml"] for r in records if r["label"] == 1]
    vol_line = (f"- lesion volumes: {min(vols):.1f} to {max(vols):.1f} ml "
                f"(median {float(np.median(vols)):.1f} ml)\n" if vols else "")
    p = params
    return f"""# Synthetic T2 brain MRI cohort (glio_kit)

**These images are synthetic.** No real person was scanned. They were generated by
`glio_kit.synth` (version {p['synth_version']}) from the MNI ICBM152 2009a templates shipped
with nilearn, for teaching and testing only. Do not use them for any clinical purpose.

## Folders

- `train_healthy/` ({p['n_train_healthy']} subjects): healthy brains, IXI layout
  (`IXI001-Synth-XXXX-T2.nii.gz`). Used to train the generative model.
- `test_healthy/` ({p['n_test_healthy']} subjects): healthy brains, IXI layout; {n_wmh} of them
  have small white-matter hyperintensities (ischemic-like changes, still labelled healthy).
- `test_tumor/` ({p['n_test_tumor']} subjects): brains with a high-grade glioma, BraTS
  layout (`SynthBraTS_00001/SynthBraTS_00001_t2.nii.gz` and `..._seg.nii.gz`; labels
  1 necrosis, 2 edema, 4 enhancing, 0 background).
- `cohort.json`: the parameters and one record per subject (id, folder, label 0/1,
  has_wmh, lesion volume in ml, tumour centre in mm).

## Parameters

- seed: {p['seed']}
- voxel size: {p['voxel_size']} mm isotropic, RAS, MNI-like world coordinates
- WMH fraction of healthy test subjects: {p['wmh_fraction']}
{vol_line}
## How each subject differs

Smooth non-rigid deformation and a small affine (rotation up to 5 degrees, scale
0.93-1.07), ventricle size (radial expansion or shrinkage around the lateral ventricles),
tissue contrast (CSF bright, grey matter middle, white matter dark), multiplicative bias
field (5-18 %), Rician noise, and a global intensity scale (CSF about 400-2500). Images
are skull-stripped: the background outside the brain is exactly 0. T2 is stored as int16
with a scale factor (`scl_slope`), labels as uint8.

Tumours sit in white matter, mostly in the middle 35-75 % of the brain's
inferior-superior extent, with total radius 8-32 mm, an irregular shape and mass effect
that pushes the surrounding anatomy aside. On T2 the necrotic core is brightest (near
CSF), edema hyperintense, the enhancing rim intermediate-bright.
"""


def make_cohort(out_dir, n_train_healthy=60, n_test_healthy=27, n_test_tumor=27, seed=0,
                voxel_size=1.0, wmh_fraction=0.3, overwrite=False, progress=True,
                workers=None) -> dict:
    """Write a synthetic T2 cohort (IXI layout for healthy, BraTS layout for tumours).

    Parameters
    ----------
    out_dir : str or Path
        Cohort folder. Created if missing. If it already holds a cohort with the same
        parameters, that cohort is reused and nothing is regenerated.
    n_train_healthy, n_test_healthy, n_test_tumor : int
        Subjects per folder (paper: 300 / 27 / 27).
    seed : int, default=0
        Cohort seed; subject ``i`` of a folder is seeded from ``(seed, folder, i)``, so it
        does not depend on the counts.
    voxel_size : float, default=1.0
        Isotropic voxel size in mm (demo profile 2.0, smoke 4.0).
    wmh_fraction : float, default=0.3
        Share of healthy test subjects that get white-matter hyperintensities.
    overwrite : bool, default=False
        Replace an existing synthetic cohort with different parameters (or an
        incomplete one). A complete cohort with the same parameters is always reused; a
        folder that is not a synthetic cohort is never replaced.
    progress : bool, default=True
        Show a tqdm progress bar.
    workers : int, optional
        Worker processes; default ``min(2, os.cpu_count())``. 1 runs in this process.

    Returns
    -------
    paths : dict
        ``{"train_healthy": Path, "test_healthy": Path, "test_tumor": Path, "root": Path}``.

    Raises
    ------
    RunFolderError
        ``out_dir`` holds a different cohort (and ``overwrite`` is False), an incomplete
        one, or other files.
    """
    root = Path(out_dir).expanduser().resolve()
    params = _params(n_train_healthy, n_test_healthy, n_test_tumor, seed, voxel_size,
                     wmh_fraction)
    if not 0.0 <= params["wmh_fraction"] <= 1.0:
        raise ValueError(f"wmh_fraction must be in [0, 1], got {wmh_fraction}")
    if params["voxel_size"] <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    paths = {"train_healthy": root / "train_healthy", "test_healthy": root / "test_healthy",
             "test_tumor": root / "test_tumor", "root": root}

    replace_old = False
    if root.exists():
        if not root.is_dir():
            raise RunFolderError(f"{root}: exists and is not a folder; choose another path.")
        if any(root.iterdir()):
            meta = _read_cohort_json(root)
            if meta is None:
                raise RunFolderError(
                    f"{root}: folder is not empty and holds no synthetic cohort (no glio_kit "
                    f"cohort.json); refusing to write there. Choose an empty or new folder.")
            old = meta.get("parameters", {})
            diff = {k: (old.get(k), params[k]) for k in params if old.get(k) != params[k]}
            if not diff:
                missing = [s["t2"] for s in meta.get("subjects", [])
                           if not (root / s["t2"]).exists()]
                if not missing:
                    return paths
                if not overwrite:
                    raise RunFolderError(
                        f"{root}: synthetic cohort with these parameters is incomplete "
                        f"({len(missing)} files missing, e.g. {missing[0]}); pass "
                        f"overwrite=True to regenerate it.")
            elif not overwrite:
                what = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
                raise RunFolderError(
                    f"{root}: holds a different synthetic cohort ({what}); nothing was "
                    f"changed. Use another folder or overwrite=True.")
            replace_old = True

    plan = _subject_plan(n_train_healthy, n_test_healthy, n_test_tumor, seed, wmh_fraction)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for key in ("train_healthy", "test_healthy", "test_tumor"):
            (tmp / key).mkdir()
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        workers = max(1, min(int(workers), len(plan) or 1))
        records = [None] * len(plan)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan), desc="synthetic cohort", unit="subject")
        if workers == 1:
            for i, job in enumerate(plan):
                records[i] = _write_subject(job, tmp, params["voxel_size"])
                if bar is not None:
                    bar.update()
        else:
            import multiprocessing as mp

            # spawn: safe even when the parent (a notebook) has torch/OpenMP threads running.
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futs = {pool.submit(_write_subject, job, tmp, params["voxel_size"]): i
                        for i, job in enumerate(plan)}
                for fut in as_completed(futs):
                    records[futs[fut]] = fut.result()
                    if bar is not None:
                        bar.update()
        if bar is not None:
            bar.close()
        (tmp / "README.md").write_text(_readme(params, records))
        # cohort.json last: its presence marks a complete cohort.
        (tmp / "cohort.json").write_text(json.dumps(
            {"parameters": params, "subjects": records}, indent=1))
        if root.exists():
            if replace_old:
                trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                root.rename(trash)
                tmp.rename(root)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                root.rmdir()  # empty folder
                tmp.rename(root)
        else:
            tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return paths

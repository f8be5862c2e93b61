"""Lesions: a high-grade glioma with mass effect and BraTS labels, and small white-matter
hyperintensities (the kind of finding that gave the paper its false positives).

Positions and radii are in template voxels of the output grid: the glioma is placed in
template space and the subject's pull-back map ``q`` (3, X, Y, Z) tells where each output
voxel looks.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .fields import direction_radius, ramp

__all__ = ["draw_tumor", "mass_effect", "paint_glioma", "glioma_info", "add_wmh"]

#: BraTS label values.
NECROSIS, EDEMA, ENHANCING = 1, 2, 4


def draw_tumor(rng, tpl, lesion_radius_mm=None) -> dict:
    """Draw a glioma's size, position (deep WM, mostly mid-axial) and intensities.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's tumour stream.
    tpl : dict
        From :func:`~glio_kit.data.synth.load_templates`.
    lesion_radius_mm : float, optional
        Total radius (edema included) in mm; drawn from 8-32 mm when None.

    Returns
    -------
    tumor : dict
        ``center`` (3,) in template voxels; ``radius_mm`` total radius; in voxels
        ``r_enh`` (enhancing core), ``r_ed`` (edema), ``r_mass`` and ``l_mass`` (mass
        effect strength and fall-off), ``reach`` (distance beyond which nothing changes);
        ``nec_frac`` necrotic share of the core radius; ``levels`` T2 levels relative to CSF.
    """
    v = tpl["voxel_size"]
    radius = float(lesion_radius_mm) if lesion_radius_mm else rng.uniform(8.0, 32.0)
    ed_factor = rng.uniform(1.3, 2.3)
    r_enh_mm = max(radius / ed_factor, 4.0)
    cand, depth, zf = tpl["tumor_cand"], tpl["depth_mm"], tpl["z_frac"]
    x_mm = tpl["affine"][0, 0] * cand[:, 0] + tpl["affine"][0, 3]
    lo, hi = (0.35, 0.75) if rng.random() < 0.85 else (0.25, 0.85)
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


def mass_effect(q, tumor) -> None:
    """Push the anatomy away from the tumour centre: edits the pull-back map ``q`` in place.

    Tissue at distance rho is moved out to r with r^3 = rho^3 + Rm^3 w(r): volume-preserving
    near the tumour, fading far away so the brain keeps its shape. Works only on the box of
    output voxels whose source lies within ``tumor["reach"]``; adds to ``tumor`` the
    ``box`` (tuple of slices), ``r`` (distances to the centre in template voxels, box
    shape) and ``n_vec`` ((3, N) unit directions) that :func:`paint_glioma` needs.
    """
    c = tumor["center"].astype(np.float32)
    reach = tumor["reach"]  # voxels beyond which nothing changes
    near = np.all(np.abs(q - c[:, None, None, None]) < reach, axis=0)
    box = ndimage.find_objects(near.astype(np.uint8))[0]
    qb = q[(slice(None),) + box] - c[:, None, None, None]
    r = np.sqrt(np.sum(qb ** 2, axis=0)) + 1e-6
    rm = tumor["r_mass"]
    w = np.exp(-((r / tumor["l_mass"]) ** 2))
    rho = np.cbrt(np.maximum(r ** 3 - rm ** 3 * w, 0.0))
    q[(slice(None),) + box] = c[:, None, None, None] + qb * (rho / r)[None]
    tumor.update(box=box, r=r, n_vec=(qb / r[None]).reshape(3, -1))


def _glioma_radii(rng, tumor, r_shape, v):
    """Lobulated radii (template voxels, shape ``r_shape``) of the enhancing core, the
    necrosis (at least 2 mm inside the core) and the edema, before the edema's WM spread."""
    n_vec = tumor["n_vec"]
    r_enh = tumor["r_enh"] * direction_radius(rng, n_vec, 5, 0.35).reshape(r_shape)
    r_nec = np.minimum(
        tumor["nec_frac"] * r_enh * direction_radius(rng, n_vec, 4, 0.2).reshape(r_shape),
        r_enh - 2.0 / v)
    r_ed = tumor["r_ed"] * direction_radius(rng, n_vec, 6, 0.45).reshape(r_shape)
    return r_enh, r_nec, r_ed


def paint_glioma(rng, tumor, t2, tissue, brain, sf, i_csf, v):
    """Paint the glioma into ``t2`` (X, Y, Z) in place and return its BraTS label map.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's tumour stream (after :func:`draw_tumor`).
    tumor : dict
        From :func:`draw_tumor`, after :func:`mass_effect`.
    t2 : ndarray of shape (X, Y, Z), float32
        T2 relative to CSF ~ 1, before bias and noise; edited in place.
    tissue : Tissue
        The subject's tissue maps; ``brain`` : bool (X, Y, Z), ``tissue.mask > 0.5``.
    sf : SubjectFields
        For the texture and the rough noise that irregularise the borders.
    i_csf : float
        The subject's CSF level; v : voxel size in mm.

    Returns
    -------
    seg : ndarray of shape (X, Y, Z), uint8
        0 background, 1 necrosis, 2 edema, 4 enhancing.
    """
    seg = np.zeros(t2.shape, dtype=np.uint8)
    box = tumor["box"]
    tb = t2[box]
    # Roughen the borders at a ~5 mm scale on top of the lobulated radius.
    r = tumor["r"] / (1.0 + 0.12 * np.clip(sf.rough[box], -2.0, 2.0))
    width = 1.0  # one voxel of partial volume at the core borders
    r_enh, r_nec, r_ed = _glioma_radii(rng, tumor, r.shape, v)
    # Edema spreads along white matter and spares CSF spaces.
    wm_b, csf_b, mask_b = tissue.wm[box], tissue.csf[box], tissue.mask[box]
    r_ed = np.maximum(r_ed * (0.45 + 0.75 * wm_b), r_enh)
    # Edema fades out over ~3 mm and thins towards its margin; the core is sharper.
    e = ramp(r, r_ed, max(3.0 / v, 1.0)) * (1.0 - csf_b) * mask_b
    h = ramp(r, r_enh, width) * mask_b
    c_ = ramp(r, r_nec, width) * mask_b
    lv = tumor["levels"]
    depth = np.clip((r - r_enh) / np.maximum(r_ed - r_enh, 1e-3), 0.0, 1.0)
    ed_level = lv["edema"] * i_csf * (1.0 - 0.2 * depth) * (1.0 + 0.05 * sf.rough[box])
    # Vasogenic edema: white matter turns bright, the cortex keeps most of its look;
    # water raises T2 and never darkens tissue.
    wm_share = wm_b / np.maximum(mask_b, 1e-3)
    tb += e * np.maximum(ed_level - tb, 0.0) * (0.35 + 0.65 * wm_share)
    tb += h * (lv["enh"] * i_csf * sf.texture[box] - tb)
    tb += c_ * (lv["nec"] * i_csf * (1.0 + 0.08 * sf.rough[box]) - tb)  # heterogeneous
    sb = np.zeros(r.shape, dtype=np.uint8)
    sb[e > 0.5] = EDEMA
    sb[h > 0.5] = ENHANCING
    sb[c_ > 0.5] = NECROSIS
    sb[~brain[box]] = 0
    seg[box] = sb
    return seg


def glioma_info(seg, tumor, tissue, tpl) -> dict:
    """What :func:`~glio_kit.data.synth.synth_subject` reports about a glioma.

    ``lesion_ml`` labelled volume in ml; ``tumor_center_mm`` (3,) label centroid in world
    mm (None if no voxel is labelled); ``lesion_wm_fraction`` share of labelled voxels
    whose source tissue is mostly white matter (or None); ``lesion_radius_mm`` drawn total
    radius; ``tumor_center_template_vox`` (3,) placement in template voxels.
    """
    v = tpl["voxel_size"]
    info = {}
    lesion = seg > 0
    n_les = int(lesion.sum())
    info["lesion_ml"] = float(n_les * v ** 3 / 1000.0)
    if n_les:
        ctr = np.argwhere(lesion).mean(axis=0)
        info["tumor_center_mm"] = [float(x) for x in tpl["affine"][:3, :3] @ ctr
                                   + tpl["affine"][:3, 3]]
        info["lesion_wm_fraction"] = float(np.mean(tissue.wm[lesion] > 0.5 * tissue.mask[lesion]))
    info.update(lesion_radius_mm=float(tumor["radius_mm"]),
                tumor_center_template_vox=[float(x) for x in tumor["center"]])
    return info


def add_wmh(rng, tpl, q, t2, wm, i_csf, n_wmh=None) -> int:
    """Paint a few small bright blobs in periventricular / deep white matter.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's hyperintensity stream.
    tpl : dict
        From :func:`~glio_kit.data.synth.load_templates` (``wmh_cand`` positions).
    q : ndarray of shape (3, X, Y, Z)
        The subject's pull-back map (template voxels).
    t2 : ndarray of shape (X, Y, Z), float32
        T2 relative to CSF ~ 1, before bias and noise; brightened in place.
    wm : ndarray of shape (X, Y, Z)
        The subject's white-matter probability.
    i_csf : float
        The subject's CSF level; blobs reach 62-85 % of it.
    n_wmh : int, optional
        Number of blobs; drawn from 2-7 when None.

    Returns
    -------
    n : int
        Number of blobs drawn (radius 1.5-4 mm each).
    """
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
        blob = ramp(r, rad, 1.0) * np.clip(wm[box] * 1.5, 0, 1)
        level = rng.uniform(0.62, 0.85) * i_csf
        t2[box] += blob * (level - t2[box]).clip(min=0)
    return n

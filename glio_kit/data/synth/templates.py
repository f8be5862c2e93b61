"""The MNI ICBM152 2009a templates on the output grid, and where lesions may sit.

The templates ship inside ``nilearn``: a skull-stripped T1 (its support is the brain
mask) and grey- and white-matter probability maps, all at 1 mm.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
import importlib.util
import nibabel as nib

__all__ = ["load_templates"]

# Field of view in MNI millimetres: the template's brain bounding box (x -72..72,
# y -107..73, z -72..82) plus a margin that the affine, the elastic field and the mass
# effect cannot cross, so the brain always stays inside the volume.
FOV_LO = np.array([-88.0, -123.0, -88.0])
FOV_HI = np.array([88.0, 89.0, 98.0])


def _template_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn.datasets.

    (nilearn.datasets pulls in scikit-learn and costs seconds in every worker process.)
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("glio_kit.data.synth needs nilearn (it ships the MNI ICBM152 templates); "
                          "install it with `pip install nilearn`")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def output_grid(voxel_size: float):
    """Shape (X, Y, Z) and (4, 4) affine (RAS, mm) of the output grid for a voxel size in mm."""
    shape = tuple(int(np.floor((hi - lo) / voxel_size)) + 1 for lo, hi in zip(FOV_LO, FOV_HI))
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = FOV_LO
    return shape, affine


@lru_cache(maxsize=1)
def _source_maps():
    """The 1 mm templates and their (4, 4) affine.

    Returns ``({"mask", "gm", "wm"}, affine)``: float32 arrays of the template shape,
    brain mask and GM/WM probabilities in [0, 1].
    """
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

    Returns
    -------
    sites : dict
        ``vent_center_mm`` (3,) lateral-ventricle centre; ``tumor_mm`` (K, 3) deep
        white-matter positions with ``tumor_depth_mm`` (K,) distance to the brain surface
        and ``tumor_z_frac`` (K,) inferior-superior position in [0, 1]; ``wmh_mm`` (L, 3)
        periventricular / deep white-matter positions for hyperintensities.
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


def _resample(arr, to_src, shape, v):
    """One 1 mm template map (float32) resampled onto the output grid ``shape``.

    ``to_src`` is the (4, 4) output-voxel -> template-voxel map (a scale and a shift,
    both grids being axis-aligned); ``v`` the output voxel size in mm.
    """
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
        return res
    if v > 1.0:
        # Anti-alias before decimating so thin cortex does not turn into stripes.
        arr = ndimage.gaussian_filter(arr, sigma=0.42 * v, mode="constant")
    return ndimage.affine_transform(
        arr, to_src[:3, :3], offset=to_src[:3, 3], output_shape=shape, order=1,
        mode="constant", cval=0.0).astype(np.float32)


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
        ``gm``, ``wm``, ``csf``, ``mask`` : read-only float32 arrays of shape ``shape``,
        tissue probabilities in [0, 1] (``mask`` is the soft brain mask, CSF spaces
        included); ``affine`` : (4, 4) voxel-to-MNI-mm; ``shape`` : the grid shape
        (X, Y, Z); ``voxel_size`` : mm; ``vent_center`` : (3,) lateral-ventricle centre in
        voxels; ``tumor_cand`` and ``wmh_cand`` : (K, 3) candidate lesion centres in
        voxels, in deep white matter; ``depth_mm`` : (K,) distance of each tumour
        candidate to the brain surface in mm; ``z_frac`` : (K,) its position along the
        inferior-superior brain extent in [0, 1].
    """
    v = float(voxel_size)
    maps, src_affine = _source_maps()
    shape, affine = output_grid(v)
    to_src = np.linalg.inv(src_affine) @ affine
    out = {key: _resample(arr, to_src, shape, v) for key, arr in maps.items()}
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

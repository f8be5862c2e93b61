"""Reading NIfTI volumes and BraTS segmentations, with checks that name the bad file.

Every volume leaves this module in one convention, whatever its header said:

- reoriented to the closest canonical orientation, RAS+ (axis 0 runs left -> Right,
  axis 1 posterior -> Anterior, axis 2 inferior -> Superior), so an axial slice is
  ``data[:, :, k]`` for every scanner and every file;
- ``float32`` with the header's ``scl_slope`` / ``scl_inter`` already applied, so an
  ``int16`` file with scaling and a ``float64`` file of the same image give the same array.

Anything the kit cannot use (not a NIfTI file, truncated download, a file that cannot be read
(permission, a dangling or looping link), a header claiming more data than the file or this
machine's memory can hold, 2-D or 4-D data, an empty or all-zero volume, NaN/Inf values, a
segmentation that does not match its image or holds labels outside BraTS's {0, 1, 2, 4})
raises :class:`~glio_kit.errors.InputError` whose message starts with the file's path.
Files are only ever read, never written.
"""
from __future__ import annotations

import errno
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError

__all__ = [
    "BRATS_LABELS",
    "NIFTI_SUFFIXES",
    "Volume",
    "is_nifti_name",
    "lesion_mask",
    "load_segmentation",
    "load_volume",
    "unreadable",
]

#: File name endings the loaders accept.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: BraTS (up to 2021) label values: 0 background, 1 necrosis / non-enhancing core,
#: 2 edema, 4 enhancing tumour.
BRATS_LABELS = (0, 1, 2, 4)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image in canonical RAS orientation.

    Attributes
    ----------
    data : ndarray of shape (X, Y, Z), float32
        Intensities with the header's scaling applied. Axis 0 runs to the subject's
        right, axis 1 to anterior, axis 2 to superior (axial slices are ``data[:, :, k]``).
    affine : ndarray of shape (4, 4), float64
        Voxel indices -> world coordinates in mm, for ``data`` as reoriented.
    zooms : tuple of 3 floats
        Voxel size along axes 0, 1, 2 in mm (taken from ``affine``).
    path : Path
        The file the volume was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple
    path: Path

    @property
    def shape(self) -> tuple:
        """Shape ``(X, Y, Z)`` of ``data``."""
        return tuple(self.data.shape)

    def __repr__(self) -> str:  # the default would print the whole array
        zooms = "x".join(f"{z:g}" for z in self.zooms)
        return f"Volume(shape={self.shape}, zooms={zooms} mm, path='{self.path}')"


def is_nifti_name(path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read (a dangling or looping symbolic link, no permission), or None.

    Data managed by git-annex or DataLad is a symbolic link into the annex until it is fetched:
    such a link is dangling, and the message says how to fetch it.
    """
    try:
        os.stat(path)  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            return (f"dangling symbolic link (to {os.readlink(path)}): the data it points to is not there; "
                    "if the data is managed by git-annex or DataLad, fetch it first (`datalad get` or "
                    "`git annex get`), else fix or remove the link")
        return "disappeared while the folder was read"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself); fix or remove the link"
        if isinstance(exc, PermissionError):
            return "permission denied; check the file's owner and mode (chmod)"
        return f"cannot be read ({exc.strerror or exc})"
    if not os.access(path, os.R_OK):
        return "permission denied: the file cannot be read; check its owner and mode (chmod)"
    return None


# ----------------------------------------------------------------------------- helpers
def _open_3d(path, what: str):
    """Open ``path`` lazily and return a 3-D NIfTI image (header checked, data not read).

    ``what`` ("volume" or "segmentation") only shapes the error messages.
    """
    path = Path(path).expanduser()
    if path.is_symlink() or path.exists():
        why = unreadable(path)
        if why:
            raise InputError(path, why)
    if not path.exists():
        raise InputError(path, f"{what} file does not exist; check the path or the folder "
                               "you pointed the kit at")
    if path.is_dir():
        raise InputError(path, f"is a folder, expected a NIfTI {what} file (.nii or .nii.gz)")
    if not is_nifti_name(path):
        raise InputError(path, "not a NIfTI file: the name must end in .nii or .nii.gz "
                               "(convert other formats, e.g. DICOM with dcm2niix)")
    if path.stat().st_size == 0:
        raise InputError(path, "not a NIfTI file: the file is empty (0 bytes); download it again")
    try:
        img = nib.load(str(path))
    except (EOFError, zlib.error) as exc:
        raise InputError(path, f"file is truncated or corrupt ({exc}); download it again") from exc
    except PermissionError as exc:
        raise InputError(path, "permission denied: the file cannot be read; check its owner and "
                               "mode (chmod)") from exc
    except Exception as exc:  # ImageFileError, BadGzipFile, HeaderDataError, ...
        raise InputError(path, "not a NIfTI file, or its header is corrupt "
                               f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI file (nibabel read it as {type(img).__name__})")

    shape = tuple(int(s) for s in img.shape)
    # A trailing singleton 4th (5th, ...) dimension is a 3-D volume saved by some tools
    # as a one-frame series: squeeze it. Anything else beyond 3-D is a real series.
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3:
        raise InputError(path, f"expected a 3-D volume, got shape {tuple(img.shape)} "
                               f"({len(shape)}-D); the kit needs whole brain volumes, not slices")
    if len(shape) > 3:
        raise InputError(path, f"expected a 3-D volume, got shape {tuple(img.shape)} "
                               f"({len(shape)}-D); split the series and pass one volume "
                               "(e.g. fslsplit, or nibabel's four_to_three)")
    if 0 in shape:
        raise InputError(path, f"empty volume: shape {shape} has a zero-size dimension")
    if not np.all(np.isfinite(img.affine)):
        raise InputError(path, "header affine holds NaN/Inf values; fix the header "
                               "(e.g. fslorient or a re-export from the scanner software)")
    _check_size(path, img, shape)
    if shape != tuple(img.shape):
        img = nib.funcs.squeeze_image(img)
    return path, img


def _memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where it cannot be told."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_size(path: Path, img, shape: tuple) -> None:
    """Refuse a header whose claimed size cannot be true or cannot be read here, before any
    memory is taken: an uncompressed file shorter than its header says (truncated), or a volume
    whose float32 array would need more than half of this machine's memory."""
    n = int(np.prod(shape, dtype=np.float64))
    gib = n * 4 / 2**30
    if not str(path).lower().endswith(".gz"):
        need = int(img.header.get_data_offset()) + n * img.get_data_dtype().itemsize
        have = path.stat().st_size
        if need > have:
            raise InputError(path, f"file is truncated or its header is corrupt: the header claims shape "
                                   f"{shape} ({need} bytes with the data offset), the file holds {have} "
                                   "bytes; download or copy it again")
    mem = _memory_bytes()
    if mem and n * 4 > mem / 2:
        raise InputError(path, f"the header claims shape {shape}, {gib:.1f} GiB as float32, more than half "
                               f"of this machine's {mem / 2**30:.1f} GiB of memory; the header is probably "
                               "corrupt (or the volume is far larger than a brain MRI; crop or resample it)")


def _read_canonical(path: Path, img) -> tuple:
    """Read the data as float32 (scaling applied) and reorient to canonical RAS.

    Returns ``(data, affine)``. Truncated or corrupt data raises InputError.
    """
    try:
        data = img.get_fdata(dtype=np.float32)
    except MemoryError:
        raise InputError(path, f"the volume {tuple(img.shape)} does not fit in memory; crop or resample "
                               "it, or use a machine with more memory") from None
    except PermissionError as exc:
        raise InputError(path, "permission denied: the file cannot be read; check its owner and "
                               "mode (chmod)") from exc
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        # gzip streams cut short raise EOFError; a short uncompressed file raises
        # OSError/ValueError from the reader or the memory map.
        raise InputError(path, f"file is truncated or corrupt ({type(exc).__name__}: {exc}); "
                               "download or copy it again") from exc
    except Exception as exc:  # e.g. RGB or complex voxel types get_fdata cannot cast
        raise InputError(path, f"cannot read the voxel data as numbers "
                               f"({type(exc).__name__}: {exc})") from exc
    # Reorient the array already in memory (as_closest_canonical on the file image would
    # read and scale the data a second time).
    try:
        canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    except Exception as exc:
        raise InputError(path, f"cannot determine the orientation from the header affine "
                               f"({exc}); fix the header (e.g. fslorient)") from exc
    data = np.ascontiguousarray(np.asanyarray(canon.dataobj), dtype=np.float32)
    return data, np.asarray(canon.affine, dtype=np.float64)


def _count_nonfinite(data: np.ndarray) -> tuple:
    """Return ``(n_nan, n_inf)``."""
    return int(np.isnan(data).sum()), int(np.isinf(data).sum())


# ----------------------------------------------------------------------------- public API
def load_volume(path) -> Volume:
    """Read a 3-D NIfTI image (``.nii`` or ``.nii.gz``) in canonical RAS, as float32.

    Parameters
    ----------
    path : str or Path
        A NIfTI-1 or NIfTI-2 file. A trailing singleton 4th dimension (shape
        ``(X, Y, Z, 1)``) is squeezed.

    Returns
    -------
    volume : Volume
        ``data`` of shape (X, Y, Z) float32 with ``scl_slope`` / ``scl_inter`` applied,
        reoriented to RAS (``nibabel.as_closest_canonical``); ``affine`` (4, 4) float64 for
        the reoriented data; ``zooms`` voxel sizes in mm; ``path``.

    Raises
    ------
    InputError
        The file is missing, not NIfTI, truncated or corrupt, not 3-D, empty, all zero,
        or holds NaN/Inf values. The message starts with the file's path.

    Examples
    --------
    >>> vol = load_volume("data/ixi/IXI002-Guys-0828-T2.nii.gz")  # doctest: +SKIP
    >>> vol.data.shape, vol.zooms                                  # doctest: +SKIP
    ((256, 256, 130), (0.94, 0.94, 1.2))
    """
    path, img = _open_3d(path, "volume")
    data, affine = _read_canonical(path, img)
    n_nan, n_inf = _count_nonfinite(data)
    if n_nan or n_inf:
        raise InputError(path, f"volume holds {n_nan} NaN and {n_inf} Inf values out of "
                               f"{data.size} voxels; replace them (e.g. with 0 outside the "
                               "brain) before using the file")
    if not np.any(data):
        raise InputError(path, "all-zero volume: every voxel is 0, there is no image to use")
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return Volume(data=data, affine=affine, zooms=zooms, path=path)


def load_segmentation(path, like: Volume) -> np.ndarray:
    """Read a BraTS-style label map, reoriented like :func:`load_volume`.

    Parameters
    ----------
    path : str or Path
        A NIfTI label map on the same voxel grid as the image ``like`` was read from.
    like : Volume
        The image the labels belong to; the reoriented shapes must be equal.

    Returns
    -------
    seg : ndarray of shape (X, Y, Z), uint8
        Labels in {0, 1, 2, 4}: 0 background, 1 necrosis / non-enhancing core, 2 edema,
        4 enhancing tumour (BraTS up to 2021).

    Raises
    ------
    InputError
        Any check of :func:`load_volume` except all-zero (an empty lesion mask is allowed),
        a shape that differs from ``like``'s, non-integer values, or labels outside
        {0, 1, 2, 4} (BraTS 2023+ label 3, enhancing tumour, is read as 4 when there is no 4). The
        message starts with the segmentation's path.
    """
    path, img = _open_3d(path, "segmentation")
    data, _ = _read_canonical(path, img)
    if data.shape != like.data.shape:
        raise InputError(path, f"segmentation shape {data.shape} differs from the image shape "
                               f"{like.data.shape} of {Path(like.path).name} (both after "
                               "reorientation to RAS); the label map must be on the image's "
                               "voxel grid (resample it with nearest-neighbour interpolation)")
    n_nan, n_inf = _count_nonfinite(data)
    if n_nan or n_inf:
        raise InputError(path, f"segmentation holds {n_nan} NaN and {n_inf} Inf values; "
                               "a label map must hold integer labels only")
    n_frac = int(np.count_nonzero(data != np.round(data)))
    if n_frac:
        raise InputError(path, f"segmentation holds {n_frac} non-integer values; a label map "
                               "must hold integer labels (was it resampled with linear "
                               "interpolation? use nearest-neighbour)")
    labels = np.unique(data).tolist()
    # BraTS 2023 and later label enhancing tumour 3 (up to 2021: 4, and 3 unused): read 3 as 4,
    # unless the map holds both, which mixes the two conventions.
    bad = [v for v in labels if v not in BRATS_LABELS and not (v == 3 and 4 not in labels)]
    if bad:
        shown = ", ".join(f"{int(v)}" for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        hint = ""
        if 3 in bad:
            hint = (" BraTS 2023 and later label enhancing tumour 3, which the kit reads as 4 "
                    "(remap 3 -> 4), but this map holds both 3 and 4: it mixes the two conventions.")
        raise InputError(path, f"segmentation holds labels {shown} outside the BraTS labels "
                               f"{{0, 1, 2, 4}} (1 necrosis, 2 edema, 4 enhancing).{hint}")
    data[data == 3] = 4
    return data.astype(np.uint8)


def lesion_mask(seg: np.ndarray) -> np.ndarray:
    """Whole-tumour mask: every labelled voxel.

    Parameters
    ----------
    seg : ndarray of shape (X, Y, Z), integer
        A label map from :func:`load_segmentation`.

    Returns
    -------
    mask : ndarray of shape (X, Y, Z), bool
        ``seg > 0`` (necrosis, edema and enhancing tumour together).
    """
    return np.asarray(seg) > 0

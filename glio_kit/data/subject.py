"""One scan of a cohort, and the labels a user may write for it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_LABEL_WORDS = {"0": 0, "1": 1, "healthy": 0, "tumor": 1, "tumour": 1}


@dataclass
class Subject:
    """One scan of the cohort.

    Attributes
    ----------
    subject : str
        Unique id: the IXI file name without ``-T2.nii.gz``, the BraTS case folder's name,
        or the manifest's ``subject`` column.
    image : Path
        The T2 volume (``.nii`` or ``.nii.gz``).
    mask : Path or None
        The lesion segmentation (BraTS labels 1/2/4), or None when there is none.
    label : int
        0 healthy, 1 tumour.
    split : str
        ``"train"``, ``"val"``, ``"test"`` or ``""`` when not assigned yet.
    """

    subject: str
    image: Path
    mask: Path | None
    label: int
    split: str = ""


def parse_label(value) -> int:
    """Return 0 or 1 for ``0``/``1``/``"healthy"``/``"tumor"``/``"tumour"`` (any case).

    Raises ValueError for anything else.
    """
    key = str(value).strip().lower()
    if key not in _LABEL_WORDS:
        raise ValueError(f"label {value!r} is not one of 0, 1, healthy, tumor, tumour")
    return _LABEL_WORDS[key]

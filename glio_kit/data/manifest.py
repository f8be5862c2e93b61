"""The manifest CSV: ``subject,image,mask,label`` (and optionally ``split``), one row per scan."""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import InputError
from .io import unreadable
from .subject import Subject, parse_label


def _check_listed(csv_path: Path, where: str, what: str, path: Path, sid: str) -> None:
    """A file a manifest lists that is there (or a link to it is) but cannot be read raises."""
    if path.is_symlink() or path.exists():
        why = unreadable(path)
        if why:
            raise InputError(csv_path, f"{where}: {what} file {path} of subject {sid!r}: {why}")


def read_manifest(csv_path) -> list:
    """Read a manifest CSV with the columns ``subject,image,mask,label``.

    Parameters
    ----------
    csv_path : str or Path
        Comma-separated, one header row. ``subject``, ``image`` and ``label`` are required;
        ``mask`` (may be empty, or the column absent) and ``split`` are optional, other
        columns are ignored. Relative paths are resolved against the CSV's folder.
        ``label`` is 0/1 or healthy/tumor/tumour.

    Returns
    -------
    subjects : list of Subject
        In the CSV's row order.

    Raises
    ------
    InputError
        Missing columns, an empty manifest, a missing image or mask file, an empty or
        duplicate subject id, or a bad label. The message names the CSV and the row
        (line number in the file, the header being line 1).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise InputError(csv_path, "manifest CSV does not exist")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(csv_path, f"cannot read the manifest as UTF-8 CSV ({exc})") from exc
    if not rows:
        raise InputError(csv_path, "manifest is empty; expected a header row "
                                   "subject,image,mask,label")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("subject", "image", "label") if c not in header]
    if missing:
        raise InputError(csv_path, f"manifest header {rows[0]} lacks the column(s) "
                                   f"{', '.join(missing)}; expected subject,image,mask,label")
    col = {name: header.index(name) for name in ("subject", "image", "mask", "label", "split")
           if name in header}

    subjects, first_row = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        get = {name: row[i].strip() for name, i in col.items()}
        sid = get["subject"]
        if not sid:
            raise InputError(csv_path, f"row {line}: empty subject id")
        if sid in first_row:
            raise InputError(csv_path, f"row {line}: duplicate subject id {sid!r} "
                                       f"(first on row {first_row[sid]}); ids must be unique")
        first_row[sid] = line
        subjects.append(_manifest_row(csv_path, f"row {line}", get))
    if not subjects:
        raise InputError(csv_path, "manifest has a header but no subject rows")
    return subjects


def _manifest_row(csv_path: Path, where: str, get: dict) -> Subject:
    """One manifest row (``get``: column -> stripped cell) as a Subject; its files checked."""
    base, sid = csv_path.parent, get["subject"]

    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    if not get["image"]:
        raise InputError(csv_path, f"{where}: subject {sid!r} has an empty image path")

    def listed(kind: str, hint: str) -> Path:
        path = resolve(get[kind])
        _check_listed(csv_path, where, kind, path, sid)
        if not path.is_file():
            raise InputError(csv_path, f"{where}: {kind} file {path} of subject {sid!r} does not exist "
                                       f"({hint})")
        return path

    image = listed("image", "relative paths are taken from the CSV's folder")
    mask = listed("mask", "leave the cell empty when there is no mask") if get.get("mask") else None
    try:
        label = parse_label(get["label"])
    except ValueError as exc:
        raise InputError(csv_path, f"{where}: subject {sid!r}: {exc}") from None
    return Subject(subject=sid, image=image, mask=mask, label=label, split=get.get("split", ""))

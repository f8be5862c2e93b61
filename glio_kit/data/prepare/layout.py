"""Which subjects a raw folder holds, where each prepared file goes, and what is already done.

The prepared cohort keeps the layout it came in, file names included (IXI files side by side,
BraTS case folders, or the manifest CSV beside relative paths), so the loaders and ``glio-kit run``
take ``OUT_DIR`` as it is. The kit's own records go under ``OUT_DIR/prepare/`` (one JSON record,
transform and QC picture per subject), which the loaders do not read (it holds no NIfTI file).

A subject counts as prepared when its record exists with the same fingerprint (the preparation
settings, the kit's preparation version and the input files' SHA-256): only then is it skipped.
The record is written last, after every output file, so a run killed in the middle redoes that
subject; each file is written atomically (:mod:`glio_kit.atomic`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...atomic import write_text
from ...errors import InputError
from ..cohort import Subject, discover, discover_brats, discover_ixi, read_manifest

__all__ = ["LAYOUTS", "PREPARE_VERSION", "Job", "clean_partial", "find_subjects", "plan_jobs",
           "read_record", "write_manifest"]

LAYOUTS = ("auto", "ixi", "brats", "manifest")
#: Bumped when a stage changes what it writes: earlier preparations are then redone.
PREPARE_VERSION = 1
RECORDS = "prepare"


@dataclass
class Job:
    """One subject to prepare: what to read, where to write, and the settings.

    Attributes
    ----------
    subject : Subject
        As discovered in the raw folder.
    image_out, seg_out : Path, Path or None
        The prepared image and segmentation, same names as the inputs.
    record, transform, qc : Path
        ``prepare/<subject>.json``, ``.tfm`` and ``_qc.png``.
    settings : dict
        ``brain_mask`` method, ``n4_shrink``, ``device``, ``threads``.
    fingerprint : str
        Settings + version + input checksums; equal fingerprints mean "already prepared".
    """

    subject: Subject
    image_out: Path
    seg_out: Path | None
    record: Path
    transform: Path
    qc: Path
    settings: dict = field(default_factory=dict)
    fingerprint: str = ""


def find_subjects(raw, layout: str = "auto") -> tuple:
    """The subjects of ``raw`` in the chosen layout.

    Parameters
    ----------
    raw : str or Path
        A folder (IXI or BraTS layout) or a manifest CSV (``layout="manifest"``, or ``auto``).
    layout : {"auto", "ixi", "brats", "manifest"}

    Returns
    -------
    subjects : list of Subject
    base : Path
        The folder relative to which the inputs' paths are kept in the output.
    """
    raw = Path(raw).expanduser()
    if layout not in LAYOUTS:
        raise InputError(raw, f"layout {layout!r} is not one of {LAYOUTS}")
    if layout == "manifest" and raw.is_dir():
        csvs = sorted(p for p in raw.glob("*.csv") if not p.name.startswith("."))
        if len(csvs) != 1:
            raise InputError(raw, f"--layout manifest needs the manifest CSV itself, or a folder holding "
                                  f"exactly one .csv (found {len(csvs)})")
        raw = csvs[0]
    finder = {"auto": discover, "ixi": discover_ixi, "brats": discover_brats, "manifest": read_manifest}
    subjects = finder[layout](raw)
    if not subjects:
        raise InputError(raw, f"no subjects found in the {layout} layout")
    return subjects, (raw.parent if raw.is_file() else raw)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _out_path(path: Path, base: Path, out: Path, subject: str) -> Path:
    """``path`` at the same place relative to ``out`` as to ``base``; outside ``base`` (a manifest
    naming files elsewhere): ``out/<subject>/<file name>``."""
    try:
        return out / Path(path).resolve().relative_to(base.resolve())
    except ValueError:
        return out / subject / Path(path).name


def _check_folders(raw: Path, out: Path) -> None:
    raw_r, out_r = raw.resolve(), out.resolve()
    base = raw_r.parent if raw_r.is_file() else raw_r
    if out_r == base or base in out_r.parents:
        raise InputError(out, f"the output folder must lie outside the raw folder {base} (inputs are never "
                              "modified, and prepared files there would be read as raw subjects); choose "
                              "another OUT_DIR")


def plan_jobs(raw, out, layout: str = "auto", settings: dict | None = None) -> tuple:
    """Every subject of ``raw`` as a :class:`Job`, and which of them are prepared already.

    Returns
    -------
    todo : list of Job
        Subjects to prepare (new, changed inputs or settings, or interrupted).
    done : list of dict
        The records of subjects prepared earlier with the same fingerprint.
    """
    raw, out = Path(raw).expanduser(), Path(out).expanduser()
    subjects, base = find_subjects(raw, layout)
    _check_folders(raw, out)
    settings = dict(settings or {})
    todo, done = [], []
    for s in subjects:
        inputs = [s.image] + ([s.mask] if s.mask else [])
        key = {"version": PREPARE_VERSION, "brain_mask": settings.get("brain_mask", "auto"),
               "n4_shrink": settings.get("n4_shrink", 4), "inputs": [_sha256(p) for p in inputs]}
        fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        rec = out / RECORDS / f"{s.subject}.json"
        job = Job(subject=s, image_out=_out_path(s.image, base, out, s.subject),
                  seg_out=_out_path(s.mask, base, out, s.subject) if s.mask else None, record=rec,
                  transform=out / RECORDS / f"{s.subject}.tfm", qc=out / RECORDS / f"{s.subject}_qc.png",
                  settings=settings, fingerprint=fp)
        old = read_record(rec)
        outputs = [job.image_out] + ([job.seg_out] if job.seg_out else [])
        if old and old.get("fingerprint") == fp and all(p.exists() for p in outputs):
            done.append(old["row"])
        else:
            todo.append(job)
    return todo, done


def read_record(path: Path) -> dict | None:
    """A subject's record (``{"fingerprint", "row"}``), or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def clean_partial(out) -> list:
    """Remove the temporary files a killed run left (``.<name>.tmp-<id>``, written by this kit's
    atomic writers only); returns their paths."""
    removed = []
    for dirpath, _, files in os.walk(out):
        for name in files:
            if name.startswith(".") and ".tmp-" in name:
                p = Path(dirpath) / name
                p.unlink()
                removed.append(p)
    return removed


def write_manifest(raw, out, rows: list) -> Path | None:
    """For a manifest input, the same CSV in ``out`` pointing at the prepared files (subjects that
    failed left out); None for folder layouts."""
    raw = Path(raw).expanduser()
    if not raw.is_file():
        return None
    ok = {r["subject"]: r for r in rows if r.get("status") in ("ok", "done earlier")}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["subject", "image", "mask", "label", "split"])
    for s in read_manifest(raw):
        r = ok.get(s.subject)
        if r is not None:
            writer.writerow([s.subject, r["image"], r.get("seg") or "", s.label, s.split])
    return write_text(Path(out) / raw.name, buf.getvalue())

"""Finding the subjects in a folder the user points at.

Three layouts are read (see ``data/README.md``):

- **IXI-style**: T2 volumes side by side, named like ``IXI002-Guys-0828-T2.nii.gz``;
  the subject id is the name without ``-T2.nii.gz``. PD, T1 and other IXI files are ignored.
- **BraTS-style**: one folder per case, ``<case>/<case>_t2.nii.gz`` and optionally
  ``<case>/<case>_seg.nii.gz``; the subject id is the case folder's name.
- **manifest CSV**: ``subject,image,mask,label`` with paths relative to the CSV's folder.

Discovery only looks at names (any letter case: ``.NII.GZ`` too); the volumes are opened
(and checked) later by :mod:`glio_kit.data.io`, so listing a cohort of hundreds of subjects is
instant. No subject is dropped silently: an entry that looks like a subject but cannot be
read (a dangling or looping symbolic link, e.g. git-annex / DataLad data not fetched yet, or
a file without read permission) stops discovery with an error naming every such entry.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import InputError
from .io import NIFTI_SUFFIXES, is_nifti_name, unreadable
from .manifest import read_manifest
from .subject import Subject, parse_label

__all__ = [
    "Subject",
    "discover",
    "discover_brats",
    "discover_ixi",
    "parse_label",
    "read_manifest",
]

_IXI_T2_SUFFIXES = tuple("-T2" + s for s in NIFTI_SUFFIXES)  # "-T2.nii.gz", "-T2.nii"
#: The endings of a case's T2 and segmentation file names: BraTS 2019-2021, then 2023 and later.
_CASE_ENDS = {"t2": ("_t2", "-t2w"), "seg": ("_seg", "-seg")}
_NO_SUBJECTS = ("no subjects found: expected IXI-style *-T2.nii.gz files, BraTS-style case "
                "folders or a manifest CSV")


def _hidden(p: Path) -> bool:
    # macOS "._x" resource forks, ".ipynb_checkpoints", ".DS_Store", ...
    return p.name.startswith(".")


def _check_folder(folder) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(folder, "folder does not exist; check the path you pointed the kit at")
    if not folder.is_dir():
        raise InputError(folder, "expected a folder of NIfTI files (or a manifest .csv)")
    _listdir(folder)  # a folder that cannot be listed is reported here, by name
    return folder


def _listdir(folder: Path) -> list:
    """The entries of ``folder`` (sorted); a folder that cannot be listed raises InputError."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(folder, f"cannot list the folder ({exc.strerror or exc}); check its owner and "
                                 "mode (chmod), or the link that leads to it") from None


def _may_be_subject(p: Path) -> bool:
    """A name that may hold a subject: an IXI T2 file, or a name without a suffix (a case folder)."""
    return bool(_ixi_suffix(p.name)) or "." not in p.name


def _case_kind(case: Path, f: Path) -> bool:
    """``f`` is the case's T2 or segmentation file (the two the kit reads), in any letter case."""
    return is_nifti_name(f.name) and _strip_nifti_suffix(f.name).lower() in (
        f"{case.name}{end}".lower() for ends in _CASE_ENDS.values() for end in ends)


def _raise_unreadable(folder: Path, bad: list) -> None:
    """One InputError naming every entry of ``bad`` (``[(path, why), ...]``), if any."""
    if bad:
        lines = "".join(f"\n  {p}: {why}" for p, why in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise InputError(folder, f"{len(bad)} file(s) that look like subjects cannot be read; nothing "
                                 f"was left out silently, so fix these first:{lines}{more}")


def unreadable_entries(folder) -> list:
    """``[(path, why), ...]`` for the entries of ``folder`` that look like subjects (IXI T2 files,
    case folders and their ``_t2`` / ``_seg`` files) but cannot be read (:func:`unreadable`).
    Files the kit does not read (other IXI modalities, BraTS's T1 or FLAIR) are not checked."""
    folder = Path(folder)
    bad = []
    for p in _listdir(folder):
        if _hidden(p) or not _may_be_subject(p):
            continue
        why = unreadable(p)
        if why:
            bad.append((p, why))
        elif p.is_dir():
            try:
                inner = _listdir(p)
            except InputError as err:
                bad.append((p, err.problem))
                continue
            wanted = [f for f in inner if not _hidden(f) and _case_kind(p, f)]
            bad += [(f, unreadable(f)) for f in wanted if unreadable(f)]
    return bad


def _strip_nifti_suffix(name: str) -> str:
    for s in NIFTI_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def _ixi_suffix(name: str) -> str | None:
    """The ``-T2.nii.gz`` / ``-T2.nii`` ending of ``name`` in any letter case, or None."""
    return next((name[-len(s):] for s in _IXI_T2_SUFFIXES if name.lower().endswith(s.lower())), None)


def _ixi_files(folder: Path) -> list:
    return [p for p in _listdir(folder) if p.is_file() and not _hidden(p) and _ixi_suffix(p.name)]


def _case_file(case: Path, kind: str) -> Path | None:
    """``<case>/<case>_<kind>.nii.gz`` or ``.nii`` in any letter case, whichever exists
    (``.nii.gz`` first); one that exists but cannot be read raises InputError."""
    names = {f.name.lower(): f for f in _listdir(case) if not _hidden(f)}
    for end, s in ((e, s) for e in _CASE_ENDS[kind] for s in NIFTI_SUFFIXES):
        p = names.get(f"{case.name}{end}{s}".lower())
        if p is not None:
            why = unreadable(p)
            if why:
                raise InputError(p, why)
            return p
    return None


def _brats_case_folders(folder: Path) -> list:
    """Sub-folders holding any NIfTI file: these are taken as BraTS cases."""
    return [p for p in _listdir(folder)
            if p.is_dir() and not _hidden(p)
            and any(is_nifti_name(f) and f.is_file() for f in _listdir(p))]


def _has_brats_t2(case: Path) -> bool:
    return any(f.is_file() and _strip_nifti_suffix(f.name).lower().endswith(_CASE_ENDS["t2"])
               and is_nifti_name(f) for f in _listdir(case))


def discover_ixi(folder) -> list:
    """List IXI-style T2 volumes ``<id>-T2.nii.gz`` (or ``.nii``) in ``folder``.

    Parameters
    ----------
    folder : str or Path
        A flat folder as unpacked from IXI's T2 archive. Other IXI modalities (PD, T1,
        MRA, DTI) lying beside them are ignored; sub-folders are not searched.

    Returns
    -------
    subjects : list of Subject
        Sorted by id, ``label=0``, ``mask=None``. Empty when there is no T2 file.
    """
    folder = _check_folder(folder)
    _raise_unreadable(folder, [(p, w) for p, w in unreadable_entries(folder) if _ixi_suffix(p.name)])
    subjects = []
    for p in _ixi_files(folder):
        sid = p.name[: -len(_ixi_suffix(p.name))]
        subjects.append(Subject(subject=sid, image=p, mask=None, label=0))
    return sorted(subjects, key=lambda s: s.subject)


def discover_brats(folder) -> list:
    """List BraTS-style cases: ``<case>/<case>_t2.nii.gz`` and optional ``<case>_seg.nii.gz``
    (BraTS 2023 and later: ``<case>-t2w.nii.gz`` and ``<case>-seg.nii.gz``).

    Parameters
    ----------
    folder : str or Path
        A folder with one sub-folder per case (e.g. ``BraTS2021_00000/``). Every sub-folder
        holding NIfTI files is taken as a case; sub-folders without any are ignored.

    Returns
    -------
    subjects : list of Subject
        Sorted by id (the case folder's name), ``label=1``, ``mask`` the ``_seg`` file or
        None.

    Raises
    ------
    InputError
        A case folder has no ``<case>_t2.nii.gz`` / ``<case>_t2.nii``.
    """
    folder = _check_folder(folder)
    _raise_unreadable(folder, unreadable_entries(folder))
    subjects = []
    for case in _brats_case_folders(folder):
        t2 = _case_file(case, "t2")
        if t2 is None:
            found = sorted(f.name for f in _listdir(case) if not _hidden(f))
            shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
            raise InputError(case, f"BraTS case {case.name} has no {case.name}_t2.nii.gz "
                                   f"(found: {shown}); the T2 volume must be named "
                                   "<case folder>_t2.nii.gz, or list the cases in a manifest CSV "
                                   "(see data/README.md)")
        seg = _case_file(case, "seg")
        subjects.append(Subject(subject=case.name, image=t2, mask=seg, label=1))
    return sorted(subjects, key=lambda s: s.subject)


def discover(path, label=None) -> list:
    """Find the subjects at ``path``: a manifest CSV, or a folder in IXI and/or BraTS layout.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` manifest, or a folder holding ``*-T2.nii.gz`` files (IXI-style), case
        folders with ``<case>_t2.nii.gz`` (BraTS-style), or both (combined).
    label : {None, 0, 1, "healthy", "tumor", "tumour"}
        When given, overrides every subject's label (e.g. ``label=0`` for healthy scans
        kept in a BraTS-style layout).

    Returns
    -------
    subjects : list of Subject
        Sorted by subject id.

    Raises
    ------
    InputError
        The path does not exist, no subject is found, or two subjects share an id.
    """
    path = Path(path).expanduser()
    if label is not None:
        try:
            label = parse_label(label)
        except ValueError as exc:
            raise InputError(path, f"bad label override: {exc}") from None
    if not path.exists():
        raise InputError(path, "does not exist; expected a folder of NIfTI files or a "
                               "manifest .csv")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise InputError(path, "expected a folder (IXI- or BraTS-style) or a manifest "
                                   ".csv file, got another file")
        subjects = read_manifest(path)
    else:
        _raise_unreadable(path, unreadable_entries(path))
        subjects = []
        if _ixi_files(path):
            subjects += discover_ixi(path)
        if any(_has_brats_t2(case) for case in _brats_case_folders(path)):
            subjects += discover_brats(path)
        if not subjects and _brats_case_folders(path):
            # Case folders exist but none has a <case>_t2 / <case>-t2w file: the
            # per-case error says which file is missing.
            discover_brats(path)
        if not subjects:
            niftis = [p.name for p in _listdir(path) if is_nifti_name(p) and not _hidden(p)]
            hint = ""
            if niftis:
                hint = (f"; the folder holds {len(niftis)} NIfTI file(s), e.g. {niftis[0]}, "
                        "but none named like IXI002-Guys-0828-T2.nii.gz: rename them or "
                        "list them in a manifest CSV (see data/README.md)")
            raise InputError(path, _NO_SUBJECTS + hint)
    seen = {}
    for s in subjects:
        if s.subject in seen:
            raise InputError(path, f"duplicate subject id {s.subject!r}: {seen[s.subject]} "
                                   f"and {s.image}; ids must be unique")
        seen[s.subject] = s.image
    if label is not None:
        subjects = [dataclasses.replace(s, label=label) for s in subjects]
    return sorted(subjects, key=lambda s: s.subject)

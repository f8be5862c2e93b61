"""The slice cache every later step reads: built one volume at a time, read memory-mapped.

``<run>/cache/`` holds ``images.npy`` (float32, N x H x W, in [-1, 1]), ``brain.npy`` and
``lesion.npy`` (uint8, N x H x W), ``index.csv`` (one row per slice), ``warnings.csv`` and
``prep.json`` (the parameters).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import Subject
from ..errors import InputError, RunFolderError
from ..progress import quiet, tqdm
from ..run.config import PrepSettings
from .harmonise import harmonise_cache
from .volumes import GENERATOR_WINDOW, preprocess_volume

# ----------------------------------------------------------------------------- cache
#: Columns of ``<cache>/warnings.csv``: one row per warning of :func:`check_volume`.
WARNING_COLUMNS = ["subject", "split", "label", "file", "warning"]


class SliceCache:
    """The preprocessed slices of a run, memory-mapped.

    Attributes
    ----------
    images : (N, H, W) float32 memmap in [-1, 1] (background -1)
    brain, lesion : (N, H, W) uint8 memmaps (1 = inside)
    index : DataFrame, one row per slice (``row, subject, label, split, slice_index,
        slice_pos, lesion_pixels, brain_pixels``)
    meta : dict, the preprocessing parameters
    warnings : DataFrame (:data:`WARNING_COLUMNS`), what the volume checks warned about

    A file of the cache that cannot be read (cut short, edited, of another shape than the
    index says) raises :class:`~glio_kit.errors.RunFolderError` naming it and saying how to
    rebuild the cache.
    """

    FILES = ("images.npy", "brain.npy", "lesion.npy", "index.csv", "prep.json")

    def __init__(self, folder):
        self.folder = Path(folder)
        missing = [f for f in self.FILES if not (self.folder / f).exists()]
        if missing:
            raise InputError(self.folder,
                             f"not a complete slice cache (missing {missing}); run notebook 01 first")
        self.index = self._read("index.csv", lambda p: pd.read_csv(p, dtype={"subject": str}))
        self.images, self.brain, self.lesion = (self._read(f, lambda p: np.load(p, mmap_mode="r"))
                                                for f in ("images.npy", "brain.npy", "lesion.npy"))
        self.meta = self._read("prep.json", lambda p: json.loads(p.read_text()))
        warn = self.folder / "warnings.csv"
        self.warnings = (self._read("warnings.csv", pd.read_csv) if warn.exists()
                         else pd.DataFrame(columns=WARNING_COLUMNS))
        shapes = {a.shape for a in (self.images, self.brain, self.lesion)}
        if len(shapes) != 1 or next(iter(shapes))[0] != len(self.index) or "subject" not in self.index:
            self._corrupt("the arrays and index.csv do not agree "
                          f"(shapes {sorted(shapes)}, {len(self.index)} index rows)")

    def _read(self, name: str, reader):
        try:
            return reader(self.folder / name)
        except Exception as err:  # noqa: BLE001 - any reader's error means the same to the user
            self._corrupt(f"{name} cannot be read ({type(err).__name__}: {err})")

    def _corrupt(self, problem: str):
        raise RunFolderError(f"{self.folder}: the slice cache is damaged: {problem}. Rebuild it: "
                             f"`glio-kit run --force prep` (or notebook 01 with overwrite=True), or use a "
                             f"new run folder")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])

    def rows(self, split: str | None = None, label: int | None = None) -> np.ndarray:
        """Row numbers of the slices in ``split`` (train/val/test) and/or with ``label``."""
        sel = np.ones(len(self.index), bool)
        if split is not None:
            sel &= (self.index["split"] == split).to_numpy()
        if label is not None:
            sel &= (self.index["label"] == label).to_numpy()
        return np.flatnonzero(sel)

    def subjects(self) -> pd.DataFrame:
        """One row per subject: ``subject, label, split, n_slices, lesion_pixels``."""
        g = self.index.groupby("subject", sort=False)
        return pd.DataFrame(dict(
            label=g["label"].first(), split=g["split"].first(),
            n_slices=g.size(), lesion_pixels=g["lesion_pixels"].sum(),
        )).reset_index()


def cohort_summary(cache) -> pd.DataFrame:
    """Subjects and slices per split and label (``<run>/cohort_summary.csv``, written by step 01).

    Parameters
    ----------
    cache : SliceCache

    Returns
    -------
    DataFrame
        One row per ``"<split> / healthy|tumour"`` group: ``subjects``, ``slices``,
        ``lesion_pixels_mean`` (lesion burden in cache pixels), ``slices_with_lesion`` and
        ``warnings`` (of the volume checks; ``cache.warnings`` lists them subject by subject).
    """
    subj = cache.subjects()
    subj["group"] = subj.split + np.where(subj.label == 1, " / tumour", " / healthy")
    tab = subj.groupby("group").agg(subjects=("subject", "size"), slices=("n_slices", "sum"),
                                    lesion_pixels_mean=("lesion_pixels", "mean"))
    slices = cache.index.groupby(cache.index.split
                                 + np.where(cache.index.label == 1, " / tumour", " / healthy"))
    tab["slices_with_lesion"] = slices["lesion_pixels"].apply(lambda v: int((v > 0).sum()))
    warn = getattr(cache, "warnings", None)
    if warn is not None:
        groups = warn.split + np.where(warn.label == 1, " / tumour", " / healthy")
        tab["warnings"] = groups.value_counts().reindex(tab.index, fill_value=0).astype(int)
    return tab.round(1)


def _all_errors(errors: list) -> InputError:
    """One InputError for every volume that cannot be used (the first one's file leads)."""
    if len(errors) == 1:
        return errors[0]
    rest = "".join(f"\n  {e}" for e in errors[1:21]) + ("\n  ..." if len(errors) > 21 else "")
    return InputError(errors[0].path, f"{errors[0].problem}\n{len(errors) - 1} more volume(s) cannot be "
                                      f"used:{rest}")


def build_cache(subjects: list[Subject], folder, settings: PrepSettings, progress: bool = True) -> SliceCache:
    """Preprocess ``subjects`` one volume at a time into a slice cache at ``folder``.

    The arrays are written slice-block by slice-block straight into pre-allocated ``.npy``
    files, so peak memory is that of one volume whatever the cohort size. The cache is built
    in ``<folder>.partial`` and renamed when complete: an interrupted run never leaves a
    cache that looks finished. Every volume is checked (:func:`check_volume`); the volumes
    that cannot be used are named together in one :class:`InputError` and no cache is left;
    warnings go to ``warnings.csv`` (:data:`WARNING_COLUMNS`).
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n, (h, w) = len(subjects) * settings.n_slices, settings.image_size
    specs = {"images.npy": np.float32, "brain.npy": np.uint8, "lesion.npy": np.uint8}
    offsets = {}
    for name, dtype in specs.items():
        arr = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dtype, shape=(n, h, w))
        offsets[name] = arr.offset
        del arr  # header written; data goes in by plain file writes (page cache, not our RSS)
    rows, warnings, errors = [], [], []
    files = {name: open(tmp / name, "r+b") for name in specs}
    try:
        bar = tqdm(subjects, desc="preprocess", unit="subject", disable=not progress or quiet())
        for k, subj in enumerate(bar):
            try:
                out = preprocess_volume(subj, settings)
            except InputError as err:  # every bad volume is reported, not only the first
                errors.append(err)
                continue
            for name, key in (("images.npy", "images"), ("brain.npy", "brain"), ("lesion.npy", "lesion")):
                block = np.ascontiguousarray(out[key], dtype=specs[name])
                files[name].seek(offsets[name] + k * block.nbytes)
                files[name].write(block.tobytes())
            for j, z in enumerate(out["slice_index"]):
                rows.append(dict(row=len(rows), subject=subj.subject, label=subj.label, split=subj.split,
                                 slice_index=int(z), slice_pos=j,
                                 lesion_pixels=int(out["lesion"][j].sum()),
                                 brain_pixels=int(out["brain"][j].sum()),
                                 image=str(subj.image), mask=str(subj.mask or "")))
            warnings += [dict(subject=subj.subject, split=subj.split, label=subj.label, file=str(subj.image),
                              warning=w) for w in out["warnings"]]
    finally:
        for f in files.values():
            f.close()
    if errors:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _all_errors(errors)
    pd.DataFrame(warnings, columns=WARNING_COLUMNS).to_csv(tmp / "warnings.csv", index=False)
    index = pd.DataFrame(rows)
    index.to_csv(tmp / "index.csv", index=False)
    meta = {k: v for k, v in settings.identity().items() if not k.startswith("synth_")}
    if settings.harmonisation == "landmarks":  # needs every subject: a second pass over the written slices
        images = np.load(tmp / "images.npy", mmap_mode="r+")
        meta["harmonisation_reference"] = harmonise_cache(images, np.load(tmp / "brain.npy", mmap_mode="r"),
                                                          index)
        images.flush()
        del images
    meta["generator_window"] = GENERATOR_WINDOW[settings.normalisation]
    (tmp / "prep.json").write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return SliceCache(folder)

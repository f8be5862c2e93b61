"""Real scans in: raw IXI / BraTS downloads turned into the kit's cohort (``glio-kit prepare``).

The stages, one module each, in the order a scan goes through them:

- ``read``: any NIfTI the loaders accept, reoriented to RAS, resampled to 1 mm (segmentations
  nearest-neighbour); 2-D, 4-D, constant and non-head volumes refused, naming the file;
- ``brain``: brain extraction (HD-BET, from the ``[real]`` extra; or the non-zero voxels of an
  already stripped volume);
- ``bias``: N4 bias-field correction inside the brain mask;
- ``register``: rigid then affine registration (Mattes MI, multi-resolution) onto nilearn's
  MNI152 2009 template grid; segmentations carried nearest-neighbour;
- ``subject``: one subject through the stages, its files written atomically;
- ``layout``: the subjects of a raw folder, where each prepared file goes, what is done already;
- ``qc``: flags, a QC picture per subject, ``prepare.csv`` and the overview page.

:func:`prepare_cohort` runs a whole folder; ``executor`` (any ``concurrent.futures`` executor:
``glio-kit prepare --workers N`` passes the Dask engine of ``glio-kit batch``) runs subjects in
parallel.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...filelock import exclusive
from .brain import MASK_METHODS, REAL_EXTRA, brain_mask
from .layout import LAYOUTS, PREPARE_VERSION, clean_partial, find_subjects, plan_jobs, write_manifest
from .qc import COLUMNS, write_overview, write_table
from .read import read_scan
from .register import load_template
from .subject import prepare_subject, run_stages

__all__ = ["COLUMNS", "LAYOUTS", "MASK_METHODS", "PREPARE_VERSION", "REAL_EXTRA", "brain_mask",
           "find_subjects", "load_template", "prepare_cohort", "prepare_subject", "read_scan", "run_stages"]


#: The lock file inside OUT_DIR while a prepare writes there (removed when it ends).
LOCK_NAME = ".glio-kit-prepare.lock"


def prepare_cohort(raw, out, layout: str = "auto", brain_mask: str = "auto", n4_shrink: int = 4,
                   device="cpu", executor=None, workers: int = 1, say=print) -> list:
    """Prepare every subject of a raw folder into ``out``, in the layout it came in.

    Parameters
    ----------
    raw : str or Path
        The downloaded cohort: an IXI folder, a folder of BraTS cases, or a manifest CSV.
    out : str or Path
        Where the prepared cohort goes (created; must lie outside ``raw``). Inputs are only read.
    layout : {"auto", "ixi", "brats", "manifest"}
    brain_mask : {"auto", "hd-bet", "given"}
        ``auto``: the non-zero voxels for stripped volumes (BraTS), HD-BET for raw heads (IXI).
    n4_shrink : int, default=4
    device : "cpu" or int
        Where HD-BET runs.
    executor : concurrent.futures.Executor, optional
        Runs :func:`prepare_subject` for each subject; None runs them one after another here.
    workers : int, default=1
        Subjects at the same time (with ``executor``); each gets ``cores // workers`` threads.
    say : callable
        Progress lines.

    Returns
    -------
    rows : list of dict
        One per subject (:data:`COLUMNS`), also written to ``out/prepare.csv``; ``status`` is
        ``ok``, ``done earlier`` (skipped: prepared before with the same settings and inputs) or
        ``failed`` (the reason in ``warnings``).
    """
    out = Path(out).expanduser()
    threads = max(1, (os.cpu_count() or 1) // max(1, int(workers)))
    settings = {"brain_mask": brain_mask, "n4_shrink": int(n4_shrink), "device": device, "threads": threads}
    plan_jobs(raw, out, layout, settings)  # refuses a bad RAW_DIR / OUT_DIR before anything is created
    out.mkdir(parents=True, exist_ok=True)
    # one writer per output folder: a second `glio-kit prepare` into it waits, then skips what is done
    with exclusive(out / LOCK_NAME, f"the prepared cohort {out}", say=say):
        return _prepare_locked(raw, out, layout, settings, executor, say)


def _prepare_locked(raw, out: Path, layout: str, settings: dict, executor, say) -> list:
    """:func:`prepare_cohort` while holding the output folder's lock."""
    todo, done = plan_jobs(raw, out, layout, settings)
    for p in clean_partial(out):
        say(f"[prepare] removed {p} (a partial file of an interrupted run)")
    rows = [dict(r, status="done earlier") for r in done]
    if done:
        say(f"[prepare] {len(done)} subject(s) prepared earlier with the same settings: skipped")
    say(f"[prepare] {len(todo)} subject(s) to prepare into {out}")
    if executor is None:
        results = (prepare_subject(job, out) for job in todo)
    else:
        results = (_result(f, job) for f, job in [(executor.submit(prepare_subject, job, out), job)
                                                  for job in todo])
    for i, row in enumerate(results, 1):
        tail = f"{row.get('seconds', 0)} s" + (f"; {row['warnings']}" if row.get("warnings") else "")
        say(f"[prepare] {i}/{len(todo)} {row['subject']}: {row['status']} ({tail})")
        rows.append(row)
    rows.sort(key=lambda r: r["subject"])
    for r in rows:
        r.pop("stage_seconds", None)
    write_table(out, rows)
    write_overview(out, rows)
    write_manifest(raw, out, rows)
    return rows


def _result(future, job) -> dict:
    """A worker's row; a worker that died (memory, a kill) gives a ``failed`` row naming the subject."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - the rest of the cohort goes on
        return {"subject": job.subject.subject, "status": "failed",
                "warnings": f"{job.subject.image}: the worker preparing it stopped "
                            f"({type(err).__name__}: {err})"}

"""One subject through every stage: read, brain mask, N4, registration, write, QC.

:func:`prepare_subject` is what a worker runs (a Dask worker process with ``--workers N``, or this
process): it never raises; a subject that cannot be prepared comes back as a row with status
``failed`` and the reason, so the rest of the cohort goes on.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # present: .read checked it with a clear message

from ...atomic import write_bytes, write_text
from ...errors import GlioKitError, InputError
from .bias import n4_correct
from .brain import brain_mask
from .layout import Job
from .qc import flags, qc_figure, touches_edge
from .read import read_scan
from .register import apply_transform, load_template, mask_dice, register_to_template

__all__ = ["MIN_BRAIN_ML", "prepare_subject", "run_stages"]

#: Below this a "brain" mask is no brain at all (a phantom, a knee, a failed extraction): refused.
MIN_BRAIN_ML = 300.0


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI file atomically (gzip in memory, then :func:`glio_kit.atomic.write_bytes`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=4)  # 4: MNI152 space
    img.header.set_sform(affine, code=4)
    raw = img.to_bytes()
    write_bytes(path, gzip.compress(raw, compresslevel=6) if path.name.lower().endswith(".gz") else raw)


def _save_transform(path: Path, transform) -> None:
    """Write a SimpleITK transform (.tfm) atomically: SimpleITK picks the format from the name's
    ending, so it writes into a temporary folder and the bytes are moved in with write_bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / path.name
        sitk.WriteTransform(transform, str(p))
        write_bytes(path, p.read_bytes())


def run_stages(image_path, seg_path=None, method="auto", n4_shrink=4, device="cpu") -> dict:
    """The stages on one scan, in memory (nothing written).

    Parameters
    ----------
    image_path : str or Path
        A raw T2 NIfTI volume.
    seg_path : str or Path, optional
        Its label map.
    method : {"auto", "hd-bet", "given"}
        Brain extraction (:mod:`.brain`).
    n4_shrink : int
        N4's shrink factor.
    device : "cpu" or int
        For HD-BET.

    Returns
    -------
    result : dict
        ``image`` (197, 233, 189) float32 on the template grid, zero outside the brain; ``mask``
        (same shape, bool); ``seg`` (uint8 or None); ``transform`` (SimpleITK affine, template ->
        subject mm); ``brain_ml``, ``registration_dice``, ``registration_mi``, ``touches_edge``,
        ``brain_mask`` (the method used), ``native_zooms``, ``seconds`` (per stage), and the native
        1 mm arrays ``native`` and ``native_mask`` (for figures).

    Raises
    ------
    InputError
        A file the loaders refuse, or a scan with no brain (mask under :data:`MIN_BRAIN_ML`).
    """
    t = {"start": time.perf_counter()}

    def lap(name):
        now = time.perf_counter()
        t[name] = round(now - t.pop("last", t["start"]), 2)
        t["last"] = now

    image, seg, affine, zooms = read_scan(image_path, seg_path)
    lap("read")
    mask, used = brain_mask(image, method, (1.0, 1.0, 1.0), device)
    brain_ml = float(mask.sum()) / 1000.0  # 1 mm voxels
    if brain_ml < MIN_BRAIN_ML:
        raise InputError(image_path, f"no brain found: the {used} brain mask holds {brain_ml:.0f} ml, "
                                     f"an adult brain about 1000-1900 ml (is this a brain MRI? if it is "
                                     f"already skull-stripped, use --brain-mask given)")
    lap("brain_mask")
    corrected, _ = n4_correct(image, mask, affine, shrink=n4_shrink)
    lap("n4")
    transform, mi = register_to_template(corrected, mask, affine)
    lap("register")
    _, tpl_mask, _ = load_template()
    warped_mask = apply_transform(mask.astype(np.uint8), affine, transform, nearest=True) > 0
    warped = apply_transform(corrected, affine, transform) * warped_mask
    np.maximum(warped, 0.0, out=warped)
    warped_seg = None if seg is None else apply_transform(seg, affine, transform, nearest=True) * warped_mask
    lap("resample")
    t.pop("start"), t.pop("last")
    return {"image": warped.astype(np.float32), "mask": warped_mask,
            "seg": None if warped_seg is None else warped_seg.astype(np.uint8), "transform": transform,
            "brain_ml": brain_ml, "registration_dice": mask_dice(warped_mask, tpl_mask),
            "registration_mi": mi, "touches_edge": touches_edge(mask), "brain_mask": used,
            "native_zooms": zooms, "seconds": t, "native": corrected, "native_mask": mask}


def _set_threads(threads) -> None:
    """Cap the threads of torch (HD-BET) and SimpleITK: N workers on N cores, one thread each."""
    if not threads:
        return
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        import torch  # already imported by HD-BET when it runs; only the cap is set here

        torch.set_num_threads(int(threads))
    except ImportError:
        pass


def _rel(path, out_dir: Path) -> str:
    return os.path.relpath(path, out_dir) if path else ""


def prepare_subject(job: Job, out_dir) -> dict:
    """Prepare one subject and write its files; the row for ``prepare.csv``.

    Parameters
    ----------
    job : Job
        From :func:`.layout.plan_jobs`.
    out_dir : str or Path
        The prepared cohort's folder (paths in the row are relative to it).

    Returns
    -------
    row : dict
        :data:`.qc.COLUMNS`; ``status`` ``ok``, or ``failed`` with the reason in ``warnings``.
        Never raises.
    """
    out_dir = Path(out_dir)
    s, cfg = job.subject, job.settings
    row = {"subject": s.subject, "status": "failed", "brain_mask": cfg.get("brain_mask", "auto")}
    start = time.perf_counter()
    try:
        _set_threads(cfg.get("threads"))
        res = run_stages(s.image, s.mask, cfg.get("brain_mask", "auto"), cfg.get("n4_shrink", 4),
                         cfg.get("device", "cpu"))
        _, _, tpl_affine = load_template()
        _save_nifti(job.image_out, res["image"], tpl_affine)
        if job.seg_out is not None:
            _save_nifti(job.seg_out, res["seg"], tpl_affine)
        _save_transform(job.transform, res["transform"])
        warn = flags(res["brain_ml"], res["registration_dice"], res["touches_edge"])
        qc_figure(res["image"], res["mask"], load_template()[0], job.qc,
                  title=f"{s.subject}" + (f" - {'; '.join(warn)}" if warn else ""))
        row.update(status="ok", brain_ml=round(res["brain_ml"], 1),
                   registration_dice=round(res["registration_dice"], 4),
                   registration_mi=round(res["registration_mi"], 4), warnings="; ".join(warn),
                   brain_mask=res["brain_mask"],
                   native_voxel_mm="x".join(f"{z:.2f}" for z in res["native_zooms"]),
                   seconds=round(time.perf_counter() - start, 1), image=_rel(job.image_out, out_dir),
                   seg=_rel(job.seg_out, out_dir), transform=_rel(job.transform, out_dir),
                   qc=_rel(job.qc, out_dir), stage_seconds=res["seconds"])
        write_text(job.record, json.dumps({"fingerprint": job.fingerprint, "row": row}, indent=1))
    except GlioKitError as err:
        row.update(warnings=str(err), seconds=round(time.perf_counter() - start, 1))
    except Exception as err:  # noqa: BLE001 - one bad subject must not stop the cohort
        where = traceback.extract_tb(err.__traceback__)[-1]
        row.update(warnings=f"{s.image}: {type(err).__name__}: {err} (at {Path(where.filename).name}:"
                            f"{where.lineno}); please report this",
                   seconds=round(time.perf_counter() - start, 1))
    return row

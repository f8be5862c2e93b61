"""A synthetic cohort on disk: :func:`make_cohort`.

Healthy subjects in the IXI layout, tumours in the BraTS layout, a ``cohort.json`` with
one record per subject and a README, so the demo goes through the same loaders as a
user's real data. The folder is built beside the target and moved into place at the end:
a cohort folder is either complete or absent. One process writes it (a sibling lock file);
others wanting the same cohort wait for it, then reuse it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from ...errors import RunFolderError
from ...filelock import exclusive
from .subject import synth_subject
import nibabel as nib
from ...progress import tqdm
import multiprocessing as mp

__all__ = ["make_cohort", "SYNTH_VERSION"]

#: Bumped whenever the generator's output changes, so an old cohort is not reused.
SYNTH_VERSION = 1

GROUPS = ("train_healthy", "test_healthy", "test_tumor")

# A subject's seed is (cohort seed, group code, index in the group): subject i of a group
# is the same whatever the group sizes, and no two groups share a seed.
GROUP_CODE = {"train_healthy": 1, "test_healthy": 2, "test_tumor": 3}
# Extra seed words for the two draws that are not images, so each has a stream of its own
# and never takes numbers from a subject's streams: appended to a subject's seed for its
# fake IXI site number, and paired with the cohort seed for the phase of the WMH sequence.
SITE_STREAM = 7
WMH_PHASE_STREAM = 99
# Healthy test ids start after the training ids (IXI501 for up to 500 training subjects),
# so the two healthy folders never share an id.
TEST_ID_START = 501


def _subject_plan(n_train_healthy, n_test_healthy, n_test_tumor, seed, wmh_fraction):
    """Every subject's ``id``, ``folder``, ``kind`` and ``seed`` (a list of 3 ints), in
    folder order; each independent of the group sizes."""
    plan = []
    if n_train_healthy < TEST_ID_START:
        test_start = TEST_ID_START
    else:
        test_start = (n_train_healthy // 100 + 1) * 100 + 1
    # WMH membership: a low-discrepancy sequence with a seed-dependent phase, so the share
    # is exact for any count and subject i's status does not depend on the count.
    phase = np.random.default_rng([seed, WMH_PHASE_STREAM]).random()
    for group, n, start in (("train_healthy", n_train_healthy, 1),
                            ("test_healthy", n_test_healthy, test_start),
                            ("test_tumor", n_test_tumor, 1)):
        for i in range(n):
            key = (int(seed), GROUP_CODE[group], i)
            if group == "test_tumor":
                sid = f"SynthBraTS_{start + i:05d}"
                kind = "tumor"
            else:
                site = int(np.random.default_rng(list(key) + [SITE_STREAM]).integers(0, 10000))
                sid = f"IXI{start + i:03d}-Synth-{site:04d}"
                kind = "healthy"
                if group == "test_healthy" and (
                        np.floor((i + 1) * wmh_fraction + phase) > np.floor(i * wmh_fraction + phase)):
                    kind = "healthy_wmh"
            plan.append({"id": sid, "folder": group, "kind": kind, "seed": list(key)})
    return plan


def _nifti(data, affine):
    """A NIfTI image of ``data`` with ``affine`` as qform and sform, units mm."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def _save_t2(t2, affine, path):
    """Save T2 (X, Y, Z) float32 as int16 with a scale factor, as many scanners store it:
    12-bit-like raw values (the brightest voxel maps to 4000)."""
    slope = float(np.float32(max(float(t2.max()), 1.0) / 4000.0))
    img = _nifti(np.round(t2 / slope).astype(np.int16), affine)
    img.header.set_slope_inter(slope, 0.0)
    img.header["descrip"] = b"glio_kit synthetic T2 (not a real subject)"
    nib.save(img, path)


def _write_subject(job, root, voxel_size):
    """Generate one subject of the plan and write its NIfTI file(s) under ``root``.

    Returns its ``cohort.json`` record (paths relative to ``root``). Module-level so that
    worker processes can run it.
    """
    t2, seg, affine, info = synth_subject(job["kind"], job["seed"], voxel_size)
    folder = Path(root) / job["folder"]
    if job["kind"] == "tumor":
        sdir = folder / job["id"]
        sdir.mkdir(parents=True, exist_ok=True)
        t2_path = sdir / f"{job['id']}_t2.nii.gz"
        seg_path = sdir / f"{job['id']}_seg.nii.gz"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        t2_path = folder / f"{job['id']}-T2.nii.gz"
        seg_path = None
    _save_t2(t2, affine, t2_path)
    rec = {
        "id": job["id"], "folder": job["folder"], "kind": job["kind"],
        "label": 1 if job["kind"] == "tumor" else 0, "has_wmh": bool(info["has_wmh"]),
        "lesion_ml": round(info["lesion_ml"], 3),
        "tumor_center_mm": (None if info["tumor_center_mm"] is None
                            else [round(x, 1) for x in info["tumor_center_mm"]]),
        "t2": str(t2_path.relative_to(root)), "seg": None, "seed": job["seed"],
    }
    if seg_path is not None:
        nib.save(_nifti(seg.astype(np.uint8), affine), seg_path)
        rec["seg"] = str(seg_path.relative_to(root))
    return rec


def _write_subjects(plan, root, voxel_size, workers, progress):
    """Write every subject of ``plan`` under ``root``; their records in plan order.

    ``workers`` processes (default ``min(2, os.cpu_count())``; 1 runs in this process).
    """
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(plan) or 1))
    records = [None] * len(plan)
    bar = None
    if progress:
        bar = tqdm(total=len(plan), desc="synthetic cohort", unit="subject")
    if workers == 1:
        for i, job in enumerate(plan):
            records[i] = _write_subject(job, root, voxel_size)
            if bar is not None:
                bar.update()
    else:
        # spawn: safe even when the parent (a notebook) has torch/OpenMP threads running.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_write_subject, job, root, voxel_size): i for i, job in enumerate(plan)}
            for fut in as_completed(futs):
                records[futs[fut]] = fut.result()
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()
    return records


def _params(n_train_healthy, n_test_healthy, n_test_tumor, seed, voxel_size, wmh_fraction):
    """The cohort's parameters as written to ``cohort.json`` (checked)."""
    params = {
        "generator": "glio_kit.synth", "synth_version": SYNTH_VERSION,
        "n_train_healthy": int(n_train_healthy), "n_test_healthy": int(n_test_healthy),
        "n_test_tumor": int(n_test_tumor), "seed": int(seed),
        "voxel_size": float(voxel_size), "wmh_fraction": float(wmh_fraction),
    }
    if not 0.0 <= params["wmh_fraction"] <= 1.0:
        raise ValueError(f"wmh_fraction must be in [0, 1], got {wmh_fraction}")
    if params["voxel_size"] <= 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    return params


def _read_cohort_json(root: Path):
    """The ``cohort.json`` of a synthetic cohort in ``root``, or None if there is none."""
    try:
        meta = json.loads((root / "cohort.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("parameters", {}).get("generator") != "glio_kit.synth":
        return None
    return meta


def _existing_cohort(root: Path, params: dict, overwrite: bool) -> str:
    """What ``root`` holds: ``"none"`` (missing or empty), ``"same"`` (this complete cohort:
    reuse it) or ``"replace"`` (a synthetic cohort to replace; only with ``overwrite``).

    Raises :class:`~glio_kit.errors.RunFolderError` for anything else, changing nothing.
    """
    if not root.exists():
        return "none"
    if not root.is_dir():
        raise RunFolderError(f"{root}: exists and is not a folder; choose another path.")
    if not any(root.iterdir()):
        return "none"
    meta = _read_cohort_json(root)
    if meta is None:
        raise RunFolderError(
            f"{root}: folder is not empty and holds no synthetic cohort (no glio_kit "
            f"cohort.json); refusing to write there. Choose an empty or new folder.")
    old = meta.get("parameters", {})
    diff = {k: (old.get(k), params[k]) for k in params if old.get(k) != params[k]}
    if not diff:
        missing = [s["t2"] for s in meta.get("subjects", []) if not (root / s["t2"]).exists()]
        if not missing:
            return "same"
        if not overwrite:
            raise RunFolderError(
                f"{root}: synthetic cohort with these parameters is incomplete "
                f"({len(missing)} files missing, e.g. {missing[0]}); pass "
                f"overwrite=True to regenerate it.")
    elif not overwrite:
        what = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in diff.items())
        raise RunFolderError(
            f"{root}: holds a different synthetic cohort ({what}); nothing was "
            f"changed. Use another folder or overwrite=True.")
    strangers = _strangers(root, meta)
    if strangers:
        shown = ", ".join(str(p.relative_to(root)) for p in strangers[:10])
        more = f" and {len(strangers) - 10} more" if len(strangers) > 10 else ""
        raise RunFolderError(
            f"{root}: holds files that are not part of the synthetic cohort (not listed in its "
            f"cohort.json): {shown}{more}. Nothing was changed; overwrite only ever removes the "
            f"cohort's own files. Move these elsewhere, or write the cohort to another folder.")
    return "replace"


def _listed(root: Path, meta: dict) -> set:
    """The files a cohort's ``cohort.json`` accounts for: itself, the README, every T2 and label map."""
    files = {root / "cohort.json", root / "README.md"}
    for rec in meta.get("subjects", []):
        files |= {root / rec[k] for k in ("t2", "seg") if rec.get(k)}
    return files


def _strangers(root: Path, meta: dict) -> list:
    """Everything under ``root`` that the cohort does not account for (files, links, and folders
    that hold none of its files), sorted."""
    listed = _listed(root, meta)
    folders = {d for f in listed for d in f.parents if root in d.parents} | {root / g for g in GROUPS}
    return sorted(p for p in root.rglob("*")
                  if (p not in listed if (p.is_file() or p.is_symlink()) else p not in folders))


def _move_into_place(tmp: Path, root: Path, existing: str) -> None:
    """Rename the finished folder ``tmp`` to ``root``, replacing what :func:`_existing_cohort` found.

    A replaced cohort is moved aside and only the files its ``cohort.json`` lists are deleted;
    anything else found there by then is left in the moved-aside folder, which is named.
    """
    if not root.exists():
        tmp.rename(root)
    elif existing == "replace":
        meta = _read_cohort_json(root) or {}
        trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        root.rename(trash)
        tmp.rename(root)
        for f in _listed(trash, meta):
            if f.is_file() or f.is_symlink():
                f.unlink()
        for d in sorted((d for d in trash.rglob("*") if d.is_dir() and not d.is_symlink()),
                        key=lambda d: -len(d.parts)):
            if not any(d.iterdir()):
                d.rmdir()
        if any(trash.iterdir()):
            print(f"[synth] {trash}: files that appeared in {root} while it was rewritten were kept here")
        else:
            trash.rmdir()
    else:
        root.rmdir()  # empty folder
        tmp.rename(root)


def _readme(params, records):
    """README.md text of a cohort: what the folders hold and how subjects differ."""
    n_wmh = sum(r["has_wmh"] for r in records)
    vols = [r["lesion_ml"] for r in records if r["label"] == 1]
    vol_line = (f"- lesion volumes: {min(vols):.1f} to {max(vols):.1f} ml "
                f"(median {float(np.median(vols)):.1f} ml)\n" if vols else "")
    p = params
    return f"""# Synthetic T2 brain MRI cohort (glio_kit)

**These images are synthetic.** No real person was scanned. They were generated by
`glio_kit.data.synth` (version {p['synth_version']}) from the MNI ICBM152 2009a templates shipped
with nilearn, for teaching and testing only. Do not use them for any clinical purpose.

## Folders

- `train_healthy/` ({p['n_train_healthy']} subjects): healthy brains, IXI layout
  (`IXI001-Synth-XXXX-T2.nii.gz`). Used to train the generative model.
- `test_healthy/` ({p['n_test_healthy']} subjects): healthy brains, IXI layout; {n_wmh} of them
  have small white-matter hyperintensities (ischemic-like changes, still labelled healthy).
- `test_tumor/` ({p['n_test_tumor']} subjects): brains with a high-grade glioma, BraTS
  layout (`SynthBraTS_00001/SynthBraTS_00001_t2.nii.gz` and `..._seg.nii.gz`; labels
  1 necrosis, 2 edema, 4 enhancing, 0 background).
- `cohort.json`: the parameters and one record per subject (id, folder, label 0/1,
  has_wmh, lesion volume in ml, tumour centre in mm).

## Parameters

- seed: {p['seed']}
- voxel size: {p['voxel_size']} mm isotropic, RAS, MNI-like world coordinates
- WMH fraction of healthy test subjects: {p['wmh_fraction']}
{vol_line}
## How each subject differs

Smooth non-rigid deformation and a small affine (rotation up to 5 degrees, scale
0.93-1.07), ventricle size (radial expansion or shrinkage around the lateral ventricles),
tissue contrast (CSF bright, grey matter middle, white matter dark), multiplicative bias
field (5-18 %), Rician noise, and a global intensity scale (CSF about 400-2500). Images
are skull-stripped: the background outside the brain is exactly 0. T2 is stored as int16
with a scale factor (`scl_slope`), labels as uint8.

Tumours sit in white matter, mostly in the middle 35-75 % of the brain's
inferior-superior extent, with total radius 8-32 mm, an irregular shape and mass effect
that pushes the surrounding anatomy aside. On T2 the necrotic core is brightest (near
CSF), edema hyperintense, the enhancing rim intermediate-bright.
"""


def make_cohort(out_dir, n_train_healthy=60, n_test_healthy=27, n_test_tumor=27, seed=0,
                voxel_size=1.0, wmh_fraction=0.3, overwrite=False, progress=True,
                workers=None) -> dict:
    """Write a synthetic T2 cohort (IXI layout for healthy, BraTS layout for tumours).

    Parameters
    ----------
    out_dir : str or Path
        Cohort folder. Created if missing. If it already holds a cohort with the same
        parameters, that cohort is reused and nothing is regenerated.
    n_train_healthy, n_test_healthy, n_test_tumor : int
        Subjects per folder (paper: 300 / 27 / 27).
    seed : int, default=0
        Cohort seed; subject ``i`` of a folder is seeded from ``(seed, folder, i)``, so it
        does not depend on the counts.
    voxel_size : float, default=1.0
        Isotropic voxel size in mm (demo profile 2.0, smoke 4.0).
    wmh_fraction : float, default=0.3
        Share of healthy test subjects that get white-matter hyperintensities.
    overwrite : bool, default=False
        Replace an existing synthetic cohort with different parameters (or an
        incomplete one). A complete cohort with the same parameters is always reused; a
        folder that is not a synthetic cohort is never replaced, nor one holding files its
        ``cohort.json`` does not list (they are named); only listed files are deleted.
    progress : bool, default=True
        Show a tqdm progress bar.
    workers : int, optional
        Worker processes; default ``min(2, os.cpu_count())``. 1 runs in this process.

    Returns
    -------
    paths : dict
        ``{"train_healthy": Path, "test_healthy": Path, "test_tumor": Path, "root": Path}``.

    Raises
    ------
    RunFolderError
        ``out_dir`` holds a different cohort (and ``overwrite`` is False), an incomplete
        one, or other files.
    """
    root = Path(out_dir).expanduser().resolve()
    params = _params(n_train_healthy, n_test_healthy, n_test_tumor, seed, voxel_size, wmh_fraction)
    paths = {**{g: root / g for g in GROUPS}, "root": root}
    if _existing_cohort(root, params, overwrite) == "same":
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    # one writer at a time (a sibling lock file): a cohort another process writes is waited for, then reused
    with exclusive(root.parent / f".{root.name}.lock", f"the synthetic cohort {root}"):
        existing = _existing_cohort(root, params, overwrite)
        if existing != "same":
            plan = _subject_plan(n_train_healthy, n_test_healthy, n_test_tumor, seed, wmh_fraction)
            _write_cohort(root, params, plan, existing, workers, progress)
    return paths


def _write_cohort(root: Path, params: dict, plan: list, existing: str, workers, progress: bool) -> None:
    """Write the cohort into a sibling temporary folder renamed to ``root``: never seen half-written."""
    for stale in root.parent.glob(f".{root.name}.partial-*"):  # a killed writer's: we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for group in GROUPS:
            (tmp / group).mkdir()
        records = _write_subjects(plan, tmp, params["voxel_size"], workers, progress)
        (tmp / "README.md").write_text(_readme(params, records))
        # cohort.json last: its presence marks a complete cohort.
        (tmp / "cohort.json").write_text(json.dumps(
            {"parameters": params, "subjects": records}, indent=1))
        _move_into_place(tmp, root, existing)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

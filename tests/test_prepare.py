"""glio-kit prepare on real scans and raw-like synthetic heads (glio_kit.data.prepare).

Real scans that ship in packages (no download): Colin27 with skull and its extracted brain
(Debian's mricron-data: /usr/share/mricron/templates/ch2.nii.gz, ch2bet.nii.gz) and dipy's
aniso_vox (a human b=0 image, T2-weighted, 4 x 4 x 5 mm). The raw-like synthetic heads give the
brain mask's ground truth.

HD-BET and the registrations take minutes on 2 cores: `make test` skips this module, `make
test-prepare` (called by `.ci/run`) installs the [real] extra and sets ``GLIO_KIT_PREPARE=1``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

if not os.environ.get("GLIO_KIT_PREPARE"):
    pytest.skip("minutes of HD-BET and registration on a CPU: run `make test-prepare`",
                allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

from glio_kit.data import prepare  # noqa: E402
from glio_kit.data.cohort import discover  # noqa: E402
from glio_kit.data.io import load_segmentation, load_volume  # noqa: E402
from glio_kit.data.prepare.read import from_sitk, read_scan, resample_to_1mm, to_sitk  # noqa: E402
from glio_kit.data.prepare.register import load_template, mask_dice, mean_displacement  # noqa: E402
from glio_kit.data.synth import synth_subject  # noqa: E402
from glio_kit.data.synth.raw_head import raw_head  # noqa: E402
from glio_kit.errors import InputError  # noqa: E402
from glio_kit.run import prepare_cli  # noqa: E402
from glio_kit.run.cli import main  # noqa: E402

COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN_BET = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
ROOT = Path(__file__).resolve().parents[1]


def _save(path, data, affine=np.eye(4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def _sha(folder) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def colin():
    if not COLIN_BET.exists():
        pytest.fail(f"{COLIN_BET} missing: apt-get install mricron-data (.ci/run does)")
    return COLIN, COLIN_BET


@pytest.fixture(scope="module")
def raw_cohort(tmp_path_factory, colin):
    """Two stripped IXI-layout subjects (Colin27's brain, and a shifted copy) and a BraTS 2023 case
    (synthetic glioma, names -t2w / -seg, enhancing tumour label 3)."""
    raw = tmp_path_factory.mktemp("raw")
    img = nib.load(colin[1])
    _save(raw / "IXI900-Colin-T2.nii.gz", img.get_fdata(dtype=np.float32), img.affine)
    shifted = img.affine.copy()
    shifted[:3, 3] += (6.0, -4.0, 3.0)
    flip = np.array([[-1, 0, 0, img.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    # the same brain shifted, stored left-to-right (LAS)
    _save(raw / "IXI901-Colin-T2.nii.gz", img.get_fdata(dtype=np.float32)[::-1], shifted @ flip)
    t2, seg, aff, _ = synth_subject("tumor", rng_seed=3, voxel_size=1.5)
    seg = seg.copy()
    seg[seg == 4] = 3  # BraTS 2023+: enhancing tumour is 3
    case = raw / "BraTS-GLI-00003-000"
    _save(case / "BraTS-GLI-00003-000-t2w.nii.gz", t2, aff)
    _save(case / "BraTS-GLI-00003-000-seg.nii.gz", seg, aff)
    return raw


@pytest.fixture(scope="module")
def prepared(raw_cohort, tmp_path_factory):
    """The raw cohort through `glio-kit prepare` (brain mask auto: given for these stripped volumes)."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    before = _sha(raw_cohort)
    rc = main(["prepare", str(raw_cohort), str(out)])
    return {"raw": raw_cohort, "out": out, "rc": rc, "before": before}


# ----------------------------------------------------------------------------- brain extraction
def test_hd_bet_on_colin27_matches_ch2bet(colin):
    """HD-BET on a real head with skull (Colin27) against the distributed extraction (ch2bet)."""
    image, _, affine, _ = read_scan(colin[0])
    mask, used = prepare.brain_mask(image, "hd-bet")
    truth, _, _, _ = read_scan(colin[1])
    dice = mask_dice(mask, truth > 0)
    print(f"Colin27 HD-BET Dice vs ch2bet: {dice:.4f} ({mask.sum() / 1000:.0f} ml vs "
          f"{(truth > 0).sum() / 1000:.0f} ml)")
    assert used == "hd-bet"
    assert dice >= 0.92


def test_hd_bet_on_raw_like_synthetic_head(tmp_path):
    """A raw-like synthetic head (skull, scalp, random pose, IXI voxels, LPS storage): the extracted
    brain against the synthetic brain mask, and `auto` choosing HD-BET for it."""
    head = raw_head("healthy", rng_seed=5, orientation=("L", "P", "S"))
    path = _save(tmp_path / "IXI905-Synth-T2.nii.gz", head["image"], head["affine"])
    truth = _save(tmp_path / "truth.nii.gz", head["brain"].astype(np.uint8), head["affine"])
    res = prepare.run_stages(path, method="auto")
    vol = load_volume(truth)
    truth_1mm, _ = resample_to_1mm(vol.data, vol.affine, nearest=True)
    dice = mask_dice(res["native_mask"], truth_1mm > 0)
    print(f"raw-like head HD-BET Dice {dice:.4f}; stages {res['seconds']}; registration Dice "
          f"{res['registration_dice']:.3f}")
    assert res["brain_mask"] == "hd-bet"
    assert dice >= 0.93
    assert res["registration_dice"] >= 0.9


# ----------------------------------------------------------------------------- registration
def _perturbation():
    """10 degrees about an oblique axis, (15, -10, 8) mm, scales 1.05 / 0.95 / 1.03."""
    rot = sitk.VersorRigid3DTransform()
    rot.SetRotation((0.3, 0.5, 0.8), float(np.deg2rad(10.0)))
    a = sitk.AffineTransform(3)
    a.SetMatrix((np.asarray(rot.GetMatrix()).reshape(3, 3) @ np.diag([1.05, 0.95, 1.03])).ravel().tolist())
    a.SetTranslation((15.0, -10.0, 8.0))
    a.SetCenter((0.0, -18.0, 18.0))
    return a


def test_registration_recovers_a_known_affine(colin, tmp_path):
    """Colin27's brain moved by a known affine, prepared: the recovered transform agrees with the
    unperturbed brain's within 1.5 mm on average over the template's brain."""
    image, _, affine, _ = read_scan(colin[1])
    a = _perturbation()
    big = np.eye(4)
    big[:3, 3] = affine[:3, 3] - 40.0  # a field of view the moved brain stays inside
    moved = sitk.Resample(to_sitk(image, affine), to_sitk(np.zeros((261, 297, 261), np.uint8), big),
                          a.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    data, moved_affine = from_sitk(moved)
    path = _save(tmp_path / "moved.nii.gz", data, moved_affine)
    ref = prepare.run_stages(colin[1], method="given")
    res = prepare.run_stages(path, method="given")
    _, tmask, taff = load_template()
    idx = np.argwhere(tmask)[::40]
    points = ((taff[:3, :3] @ idx.T).T + taff[:3, 3]) * [-1.0, -1.0, 1.0]  # RAS -> LPS
    back = sitk.CompositeTransform(3)
    back.AddTransform(a.GetInverse())
    back.AddTransform(res["transform"])  # applied first
    err = mean_displacement(back, ref["transform"], points)
    print(f"recovered the perturbation to {err:.2f} mm mean displacement over the brain")
    assert err <= 1.5
    assert res["registration_dice"] >= 0.9


# ----------------------------------------------------------------------------- the cohort
def test_cohort_prepared_in_its_layout(prepared):
    out = prepared["out"]
    assert prepared["rc"] == 0
    table = pd.read_csv(out / "prepare.csv")
    assert list(table["status"]) == ["ok"] * 3
    assert set(table["brain_mask"]) == {"given"}  # auto chose the non-zero voxels for stripped scans
    assert (table["registration_dice"] > 0.9).all()
    tpl = prepare.load_template()
    for name in ("IXI900-Colin-T2.nii.gz", "IXI901-Colin-T2.nii.gz",
                 "BraTS-GLI-00003-000/BraTS-GLI-00003-000-t2w.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == tpl[0].shape and np.allclose(img.affine, tpl[2])
    subjects = discover(out)
    assert [s.subject for s in subjects] == ["BraTS-GLI-00003-000", "IXI900-Colin", "IXI901-Colin"]
    assert (out / "prepare" / "IXI900-Colin_qc.png").stat().st_size > 10_000
    assert "IXI901-Colin_qc.png" in (out / "prepare_qc.html").read_text()
    assert sitk.ReadTransform(str(out / "prepare" / "IXI900-Colin.tfm")).GetDimension() == 3


def test_brats_2023_labels_carried(prepared):
    """BraTS 2023+ names read natively, label 3 read as enhancing tumour (4), carried
    nearest-neighbour (only whole labels), zero outside the brain."""
    out = prepared["out"]
    case = out / "BraTS-GLI-00003-000"
    vol = load_volume(case / "BraTS-GLI-00003-000-t2w.nii.gz")
    seg = load_segmentation(case / "BraTS-GLI-00003-000-seg.nii.gz", like=vol)
    raw_seg = np.asarray(nib.load(prepared["raw"] / case.name / f"{case.name}-seg.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and 4 in seg
    ml_raw = (raw_seg > 0).sum() * 1.5 ** 3 / 1000
    ml_out = (seg > 0).sum() / 1000
    assert abs(ml_out - ml_raw) < 0.15 * ml_raw
    assert (vol.data[seg > 0] > 0).mean() > 0.99  # the lesion lies in the brain
    assert (vol.data == 0).mean() > 0.4  # zero outside the brain


def test_inputs_unchanged_and_rerun_skips(prepared, capsys):
    assert _sha(prepared["raw"]) == prepared["before"]
    out = prepared["out"]
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert main(["prepare", str(prepared["raw"]), str(out)]) == 0
    assert "3 subject(s) prepared earlier with the same settings: skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamp
    assert list(pd.read_csv(out / "prepare.csv")["status"]) == ["done earlier"] * 3


def test_a_second_prepare_into_the_same_folder_waits_then_skips(prepared):
    """One writer per output folder: while another holds OUT_DIR's lock, prepare waits (saying
    so); once it is released it finds every subject done and skips them; the lock file goes."""
    import threading

    from glio_kit.filelock import exclusive

    out, said, rows = prepared["out"], [], []
    lock = out / prepare.LOCK_NAME
    with exclusive(lock, "a test holding the folder"):
        t = threading.Thread(target=lambda: rows.extend(prepare.prepare_cohort(prepared["raw"], out,
                                                                               say=said.append)))
        t.start()
        time.sleep(1.5)
        assert t.is_alive() and any("waiting for" in m for m in said), said
        assert not rows
    t.join(timeout=120)
    assert [r["status"] for r in rows] == ["done earlier"] * 3
    assert not lock.exists()


def test_out_inside_raw_refused(prepared, capsys):
    assert main(["prepare", str(prepared["raw"]), str(prepared["raw"] / "out")]) == 2
    assert "must lie outside the raw folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals
def _refusals(folder: Path) -> dict:
    head = nib.load(COLIN_BET)
    data = head.get_fdata(dtype=np.float32)
    cube = np.zeros((40, 40, 40), np.float32)
    cube[5:35, 5:35, 5:35] = 100.0  # a 30 mm phantom
    return {
        "4-D": (_save(folder / "IXI801-Series-T2.nii.gz", np.stack([data[::2, ::2, ::2]] * 3, -1)), "4-D"),
        "2-D": (_save(folder / "IXI802-Slice-T2.nii.gz", data[:, :, 90]), "2-D"),
        "constant": (_save(folder / "IXI803-Flat-T2.nii.gz", np.full((60, 70, 60), 7.0, np.float32),
                           np.diag([3, 3, 3, 1.0])), "constant volume"),
        "non-brain": (_save(folder / "IXI804-Phantom-T2.nii.gz", cube), "not a brain scan"),
    }


def test_refusals_name_the_file_and_the_rest_go_on(tmp_path, colin, capsys):
    raw = tmp_path / "raw"
    cases = _refusals(raw)
    for path, words in cases.values():
        with pytest.raises(InputError) as err:
            read_scan(path)
        assert str(err.value).startswith(str(path)) and words in str(err.value)
    shutil.copy(colin[1], raw / "IXI805-Colin-T2.nii.gz")
    assert main(["prepare", str(raw), str(tmp_path / "out"), "--brain-mask", "given"]) == 1
    table = pd.read_csv(tmp_path / "out" / "prepare.csv").set_index("subject")
    assert table.loc["IXI805-Colin", "status"] == "ok"
    err = capsys.readouterr().err
    for path, words in cases.values():
        sid = path.name[: -len("-T2.nii.gz")]
        assert table.loc[sid, "status"] == "failed" and words in table.loc[sid, "warnings"]
        assert f"{sid} failed: {path}" in err
    assert not (tmp_path / "out" / "IXI801-Series-T2.nii.gz").exists()


# ----------------------------------------------------------------------------- interrupted
def test_killed_run_resumes_without_partial_files(raw_cohort, tmp_path):
    """`glio-kit prepare` killed (SIGKILL) after its first subject: no half-written file is taken
    for a result, and the rerun (two Dask workers) prepares the rest and skips the first."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("IXI900-Colin-T2.nii.gz", "IXI901-Colin-T2.nii.gz"):
        shutil.copy(raw_cohort / name, raw / name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "glio_kit.run.cli", "prepare", str(raw), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "prepare" / "IXI900-Colin.json"
    deadline = time.time() + 400
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # into the second subject
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "prepare" / "IXI901-Colin.json").exists()
    for p in out.rglob("*.nii.gz"):
        nib.load(p).get_fdata()  # every file there is whole (atomic writes)
    rc = main(["prepare", str(raw), str(out), "--workers", "2"])
    assert rc == 0
    table = pd.read_csv(out / "prepare.csv").set_index("subject")
    assert table.loc["IXI900-Colin", "status"] == "done earlier"
    assert table.loc["IXI901-Colin", "status"] == "ok"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# ----------------------------------------------------------------------------- a real scan, then 01
def test_real_scan_smoke_aniso_vox_then_notebook_01(prepared, tmp_path):
    """dipy's aniso_vox (a real b=0 head, 4 x 4 x 5 mm) through notebook 00 (HD-BET, N4,
    registration, QC; every cell, the ones `make test` skips too), then notebook 01's prep step on
    the prepared files."""
    import papermill as pm

    out = tmp_path / "out"
    pm.execute_notebook(str(ROOT / "notebooks" / "00_prepare_real_data.ipynb"), str(tmp_path / "00.ipynb"),
                        parameters={"out_dir": str(out)}, progress_bar=False, kernel_name="python3")
    assert (out / "prepare" / "DIPY001-Aniso_qc.png").stat().st_size > 10_000
    row = pd.read_csv(out / "prepare.csv").iloc[0]
    print(dict(row))
    assert row["status"] == "ok" and row["native_voxel_mm"] == "4.00x4.00x5.00"
    assert row["registration_dice"] > 0.75
    # three healthy subjects from the one prepared scan (notebook 01 needs 2 for training)
    train, test = tmp_path / "train", tmp_path / "test"
    for folder, names in ((train, ("DIPY001", "DIPY002")), (test, ("DIPY003",))):
        folder.mkdir()
        for n in names:
            shutil.copy(out / "DIPY001-Aniso-T2.nii.gz", folder / f"{n}-Aniso-T2.nii.gz")
    tumor = tmp_path / "tumor"
    shutil.copytree(prepared["out"] / "BraTS-GLI-00003-000", tumor / "BraTS-GLI-00003-000")
    run_dir = tmp_path / "run"
    env = dict(os.environ, GLIO_KIT_PROFILE="smoke")
    done = subprocess.run([sys.executable, "-m", "glio_kit.run.cli", "run", "--profile", "smoke", "--run-dir",
                           str(run_dir), "--train-healthy", str(train), "--test-healthy", str(test),
                           "--test-tumor", str(tumor), "--notebook", "01_data_prep.ipynb"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = pd.read_csv(run_dir / "cohort_summary.csv")
    assert len(summary)


def test_cli_choices_match_the_library():
    assert prepare_cli.LAYOUTS == prepare.LAYOUTS
    assert prepare_cli.MASK_METHODS == prepare.MASK_METHODS


def test_template_ships_with_nilearn():
    """The template grid is nilearn's own 1 mm MNI152 2009, from its package data (no download)."""
    from nilearn.datasets import load_mni152_template

    tpl = load_mni152_template(resolution=1)
    data, mask, affine = load_template()
    assert data.shape == tpl.shape == (197, 233, 189) and np.array_equal(affine, tpl.affine)
    shipped = Path(sys.modules["nilearn"].__file__).parent / "datasets" / "data"
    assert (shipped / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file()

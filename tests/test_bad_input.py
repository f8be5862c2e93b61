"""Bad input stops with an InputError that names the file and the problem, and the
input files are left byte-for-byte as they were."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glio_kit.cohort import discover, discover_brats, read_manifest
from glio_kit.errors import InputError
from glio_kit.io import load_segmentation, load_volume

SHAPE = (8, 9, 10)


def save(path: Path, data, affine=None, dtype=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def image(shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 100, shape).astype(np.float32)


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def expect_error(root: Path, call, name: str, *keywords: str) -> InputError:
    """Run ``call``; it must raise InputError naming ``name`` and every keyword
    (case-insensitive), and leave every file under ``root`` unchanged."""
    before = snapshot(root)
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert name in message, message
    for word in keywords:
        assert word.lower() in message.lower(), (word, message)
    assert snapshot(root) == before, "an input file was modified"
    return info.value


# ----------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("name", ["notes.nii.gz", "notes.nii"])
def test_not_nifti(tmp_path, name):
    path = tmp_path / name
    path.write_text("subject,age\nIXI002,35\n" * 30)
    expect_error(tmp_path, lambda: load_volume(path), name, "not a NIfTI")


def test_wrong_suffix(tmp_path):
    path = tmp_path / "scan.mgz"
    path.write_bytes(b"\0" * 400)
    expect_error(tmp_path, lambda: load_volume(path), "scan.mgz", "not a NIfTI", ".nii.gz")


def test_missing_file(tmp_path):
    path = tmp_path / "gone-T2.nii.gz"
    expect_error(tmp_path, lambda: load_volume(path), "gone-T2.nii.gz", "does not exist")


def test_truncated_gzip(tmp_path):
    full = gzip.compress(save(tmp_path / "whole.nii", image()).read_bytes())
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(full[: len(full) // 2])
    err = expect_error(tmp_path, lambda: load_volume(path), "cut.nii.gz", "truncated")
    assert err.path == str(path)


def test_truncated_uncompressed(tmp_path):
    blob = save(tmp_path / "whole.nii", image()).read_bytes()
    path = tmp_path / "cut.nii"
    path.write_bytes(blob[: len(blob) - 1000])
    expect_error(tmp_path, lambda: load_volume(path), "cut.nii", "truncated")


def test_2d_volume(tmp_path):
    path = save(tmp_path / "slice.nii.gz", image((8, 9)))
    expect_error(tmp_path, lambda: load_volume(path), "slice.nii.gz", "expected a 3-D", "(8, 9)")


def test_4d_volume(tmp_path):
    path = save(tmp_path / "series.nii.gz", image((8, 9, 10, 3)))
    expect_error(tmp_path, lambda: load_volume(path), "series.nii.gz",
                 "expected a 3-D volume, got shape (8, 9, 10, 3)")


def test_empty_volume(tmp_path):
    path = save(tmp_path / "empty.nii.gz", np.zeros((8, 0, 10), np.float32))
    expect_error(tmp_path, lambda: load_volume(path), "empty.nii.gz", "empty", "(8, 0, 10)")


def test_all_zero_volume(tmp_path):
    path = save(tmp_path / "zeros.nii.gz", np.zeros(SHAPE, np.int16))
    expect_error(tmp_path, lambda: load_volume(path), "zeros.nii.gz", "all-zero")


def test_nan_inf_values(tmp_path):
    data = image()
    data[0, 0, :3] = np.nan
    data[1, 1, :2] = np.inf
    data[2, 2, 0] = -np.inf
    path = save(tmp_path / "nan.nii.gz", data)
    expect_error(tmp_path, lambda: load_volume(path), "nan.nii.gz", "3 NaN", "3 Inf")


# ----------------------------------------------------------------------------- segmentations
def test_segmentation_shape_differs(tmp_path):
    img = save(tmp_path / "t2.nii.gz", image())
    seg = save(tmp_path / "seg.nii.gz", np.zeros((8, 9, 11), np.uint8))
    vol = load_volume(img)
    expect_error(tmp_path, lambda: load_segmentation(seg, like=vol), "seg.nii.gz",
                 "(8, 9, 11)", "(8, 9, 10)", "t2.nii.gz")


def test_segmentation_bad_labels(tmp_path):
    img = save(tmp_path / "t2.nii.gz", image())
    labels = np.zeros(SHAPE, np.uint8)
    labels[1, 1, 1], labels[2, 2, 2], labels[3, 3, 3] = 4, 3, 7
    seg = save(tmp_path / "seg.nii.gz", labels)
    vol = load_volume(img)
    # 4 is a good label and is not listed among the bad ones
    expect_error(tmp_path, lambda: load_segmentation(seg, like=vol), "seg.nii.gz",
                 "labels 3, 7 outside", "{0, 1, 2, 4}", "remap 3 -> 4")


def test_segmentation_non_integer(tmp_path):
    img = save(tmp_path / "t2.nii.gz", image())
    labels = np.zeros(SHAPE, np.float32)
    labels[1, 1, 1] = 1.5
    seg = save(tmp_path / "seg.nii.gz", labels)
    vol = load_volume(img)
    expect_error(tmp_path, lambda: load_segmentation(seg, like=vol), "seg.nii.gz", "non-integer")


# ----------------------------------------------------------------------------- discovery
def test_brats_case_without_t2(tmp_path):
    ok = tmp_path / "BraTS2021_00000"
    bad = tmp_path / "BraTS2021_00001"
    ok.mkdir()
    bad.mkdir()
    save(ok / "BraTS2021_00000_t2.nii.gz", image())
    save(bad / "BraTS2021_00001_t1.nii.gz", image())
    save(bad / "BraTS2021_00001_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    for call in (lambda: discover_brats(tmp_path), lambda: discover(tmp_path)):
        expect_error(tmp_path, call, "BraTS2021_00001", "has no BraTS2021_00001_t2.nii.gz")


def test_brats_2023_names_are_explained(tmp_path):
    case = tmp_path / "BraTS-GLI-00000-000"
    case.mkdir()
    save(case / "BraTS-GLI-00000-000-t2w.nii.gz", image())
    expect_error(tmp_path, lambda: discover(tmp_path), "BraTS-GLI-00000-000",
                 "has no BraTS-GLI-00000-000_t2.nii.gz", "-t2w.nii.gz")


def test_folder_with_no_subjects(tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    save(folder / "IXI002-Guys-0828-PD.nii.gz", image())
    (folder / "readme.txt").write_text("nothing here")
    (folder / "empty_subfolder").mkdir()
    expect_error(tmp_path, lambda: discover(folder), "downloads", "no subjects found")


def test_missing_folder(tmp_path):
    expect_error(tmp_path, lambda: discover(tmp_path / "nowhere"), "nowhere", "does not exist")


def test_duplicate_ids_across_layouts(tmp_path):
    save(tmp_path / "case1-T2.nii.gz", image())
    (tmp_path / "case1").mkdir()
    save(tmp_path / "case1" / "case1_t2.nii.gz", image())
    expect_error(tmp_path, lambda: discover(tmp_path), tmp_path.name, "duplicate", "case1")


def test_bad_label_override(tmp_path):
    save(tmp_path / "a-T2.nii", image())
    expect_error(tmp_path, lambda: discover(tmp_path, label=2), tmp_path.name, "label")


# ----------------------------------------------------------------------------- manifest
def manifest(tmp_path: Path, body: str) -> Path:
    save(tmp_path / "a.nii.gz", image())
    save(tmp_path / "b.nii.gz", image())
    path = tmp_path / "cohort.csv"
    path.write_text(body)
    return path


@pytest.mark.parametrize("body, keywords", [
    ("subject,image,mask\ns1,a.nii.gz,\n", ["label", "lacks"]),
    ("subject,image,mask,label\ns1,a.nii.gz,,1\ns2,missing.nii.gz,,0\n",
     ["row 3", "missing.nii.gz", "does not exist"]),
    ("subject,image,mask,label\ns1,a.nii.gz,nomask.nii.gz,1\n",
     ["row 2", "nomask.nii.gz", "does not exist"]),
    ("subject,image,mask,label\ns1,a.nii.gz,,1\ns1,b.nii.gz,,0\n",
     ["row 3", "duplicate", "'s1'", "row 2"]),
    ("subject,image,mask,label\ns1,a.nii.gz,,1\ns2,b.nii.gz,,sick\n",
     ["row 3", "sick", "healthy"]),
    ("subject,image,mask,label\n", ["no subject rows"]),
])
def test_bad_manifest(tmp_path, body, keywords):
    path = manifest(tmp_path, body)
    expect_error(tmp_path, lambda: read_manifest(path), "cohort.csv", *keywords)
    expect_error(tmp_path, lambda: discover(path), "cohort.csv", *keywords)

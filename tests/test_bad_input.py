"""Bad input stops with an InputError that names the file and the problem, and the
input files are left byte-for-byte as they were."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glio_kit.data.cohort import discover, discover_brats, read_manifest
from glio_kit.errors import InputError
from glio_kit.data.io import load_segmentation, load_volume

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


def test_brats_2023_names_are_read(tmp_path):
    case = tmp_path / "BraTS-GLI-00000-000"
    case.mkdir()
    save(case / "BraTS-GLI-00000-000-t2w.nii.gz", image())
    save(case / "BraTS-GLI-00000-000-seg.nii.gz", np.zeros(SHAPE, np.uint8))
    (s,) = discover(tmp_path)
    assert (s.subject, s.image.name, s.mask.name) == (
        "BraTS-GLI-00000-000", "BraTS-GLI-00000-000-t2w.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz")


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


# ------------------------------------------------------- subjects never dropped silently
def test_dangling_and_looping_links_are_named(tmp_path):
    """git-annex / DataLad data not fetched yet: the subjects' links dangle. Discovery names each
    of them instead of going on without them."""
    save(tmp_path / "IXI001-Guys-0001-T2.nii.gz", image())
    (tmp_path / "IXI002-Guys-0002-T2.nii.gz").symlink_to(".git/annex/objects/XX/IXI002.nii.gz")
    (tmp_path / "IXI003-Guys-0003-T2.nii.gz").symlink_to("IXI003-Guys-0003-T2.nii.gz")  # a loop
    (tmp_path / "IXI002-Guys-0002-PD.nii.gz").symlink_to("missing-PD.nii.gz")  # not read by the kit
    err = expect_error(tmp_path, lambda: discover(tmp_path), tmp_path.name, "2 file(s)", "datalad get",
                       "IXI002-Guys-0002-T2.nii.gz", "dangling", "IXI003-Guys-0003-T2.nii.gz", "loop")
    assert "PD" not in str(err)
    expect_error(tmp_path, lambda: load_volume(tmp_path / "IXI002-Guys-0002-T2.nii.gz"),
                 "IXI002-Guys-0002-T2.nii.gz", "dangling symbolic link")


def test_dangling_brats_segmentation_is_named(tmp_path):
    case = tmp_path / "BraTS2021_00007"
    case.mkdir()
    save(case / "BraTS2021_00007_t2.nii.gz", image())
    (case / "BraTS2021_00007_seg.nii.gz").symlink_to("../.git/annex/seg")  # would be "no mask" silently
    for call in (lambda: discover(tmp_path), lambda: discover_brats(tmp_path)):
        expect_error(tmp_path, call, "BraTS2021_00007_seg.nii.gz", "dangling")


def test_unreadable_file_is_named_not_called_not_nifti(tmp_path, monkeypatch):
    """A permission error is reported as one, in discovery and in the loader."""
    import glio_kit.data.io as gio

    good = save(tmp_path / "IXI001-Guys-0001-T2.nii.gz", image())
    locked = save(tmp_path / "IXI002-Guys-0002-T2.nii.gz", image())
    real_access = os.access
    monkeypatch.setattr(gio.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    expect_error(tmp_path, lambda: discover(tmp_path), tmp_path.name, "IXI002-Guys-0002-T2.nii.gz",
                 "permission denied")
    err = expect_error(tmp_path, lambda: load_volume(locked), "IXI002-Guys-0002-T2.nii.gz",
                       "permission denied")
    assert "not a NIfTI" not in str(err)
    assert load_volume(good).shape == SHAPE


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path):
    locked = save(tmp_path / "IXI002-Guys-0002-T2.nii.gz", image())
    locked.chmod(0)
    try:
        expect_error(tmp_path, lambda: load_volume(locked), "IXI002", "permission denied")
        expect_error(tmp_path, lambda: discover(tmp_path), "IXI002", "permission denied")
    finally:
        locked.chmod(0o644)


def test_upper_case_suffixes_are_subjects(tmp_path):
    (tmp_path / "ixi").mkdir()
    save(tmp_path / "ixi" / "IXI001-Guys-0001-T2.NII.GZ", image())
    save(tmp_path / "ixi" / "IXI002-Guys-0002-t2.nii", image())
    found = discover(tmp_path / "ixi")
    assert [s.subject for s in found] == ["IXI001-Guys-0001", "IXI002-Guys-0002"]
    assert load_volume(found[0].image).shape == SHAPE
    case = tmp_path / "brats" / "Case1"
    case.mkdir(parents=True)
    save(case / "Case1_T2.NII.GZ", image())
    save(case / "Case1_SEG.NII.GZ", np.zeros(SHAPE, np.uint8))
    (tumour,) = discover(tmp_path / "brats")
    assert tumour.image.name == "Case1_T2.NII.GZ" and tumour.mask.name == "Case1_SEG.NII.GZ"


# ------------------------------------------------------------------- headers that lie
def _lying_header(shape, body: bytes) -> bytes:
    hdr = nib.Nifti1Image(np.ones(SHAPE, np.int16), np.eye(4)).header.copy()
    hdr.set_data_shape(shape)
    return hdr.binaryblock + b"\0" * 4 + body


def test_header_claiming_a_huge_volume(tmp_path):
    """A 238 GiB claim in a small file: a clear error, not a MemoryError."""
    blob = _lying_header((4000, 4000, 4000), np.ones(720, np.int16).tobytes())
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(blob))
    (tmp_path / "huge.nii").write_bytes(blob)
    expect_error(tmp_path, lambda: load_volume(tmp_path / "huge.nii.gz"), "huge.nii.gz", "238.4 GiB",
                 "header is probably corrupt")
    expect_error(tmp_path, lambda: load_volume(tmp_path / "huge.nii"), "huge.nii", "truncated",
                 "the file holds 1792 bytes")


# -------------------------------------------------- volumes checked before the cache
def _subject(tmp_path, data, name="IXI001-Test-0000-T2.nii.gz", label=0, seg=None):
    from glio_kit.data.cohort import Subject

    img = save(tmp_path / name, np.asarray(data, np.float32))
    mask = save(tmp_path / name.replace("T2", "seg"), seg.astype(np.uint8)) if seg is not None else None
    return Subject(name.split("-T2")[0], img, mask, label, "test")


def _brain(shape=(24, 28, 22), lesion=False, seed=1):
    import conftest

    return conftest.ellipsoid_brain(shape, seed=seed, lesion=lesion)


@pytest.mark.parametrize("case, keywords", [
    ("tiny", ["too small", "(6, 28, 22)"]),
    ("constant", ["constant volume", "every voxel is 7"]),
    ("flat_brain", ["one intensity value"]),
    ("not_skull_stripped", ["does not look skull-stripped", "HD-BET"]),
    ("zscored", ["negative", "z-scored", "raw skull-stripped T2"]),
    ("few_slices", ["spans only", "n_slices=8", "slices would repeat"]),
])
def test_volume_the_kit_cannot_use(tmp_path, case, keywords):
    from glio_kit.run.config import get_config
    from glio_kit.data.volumes import preprocess_volume

    t2, _ = _brain()
    rng = np.random.default_rng(0)
    data = {"tiny": lambda: t2[:6],
            "constant": lambda: np.full(t2.shape, 7.0),
            "flat_brain": lambda: np.where(t2 > 0, 50.0, 0.0),
            "not_skull_stripped": lambda: t2 + rng.uniform(5, 30, t2.shape) * (t2 == 0),
            "zscored": lambda: np.where(t2 > 0, (t2 - t2[t2 > 0].mean()) / t2[t2 > 0].std(), 0),
            "few_slices": lambda: t2}[case]()
    settings = get_config("smoke", n_slices=8 if case == "few_slices" else None).prep
    subj = _subject(tmp_path, data)
    expect_error(tmp_path, lambda: preprocess_volume(subj, settings), subj.image.name, *keywords)


def test_tumour_case_with_empty_segmentation(tmp_path):
    from glio_kit.run.config import get_config
    from glio_kit.data.volumes import preprocess_volume

    t2, seg = _brain(lesion=True)
    subj = _subject(tmp_path, t2, "BraTS_1-T2.nii.gz", label=1, seg=np.zeros_like(seg))
    expect_error(tmp_path, lambda: preprocess_volume(subj, get_config("smoke").prep), "BraTS_1-seg.nii.gz",
                 "tumour case is empty")


def test_every_bad_volume_is_named_and_warnings_reach_the_cohort_summary(tmp_path):
    """build_cache reports all unusable volumes at once (no cache left behind); what the user may
    mean is kept: warnings in cache/warnings.csv and a column of the cohort summary."""
    from glio_kit.run.config import get_config
    from glio_kit.data.slice_cache import cohort_summary
    from glio_kit.data.slice_cache import build_cache

    settings = get_config("smoke").prep
    t2, seg = _brain(lesion=True)
    low = np.zeros_like(seg)
    low[10:14, 12:16, 3:5] = 2  # a lesion far below the sampled slab
    healthy = [_subject(tmp_path, _brain(seed=i)[0], f"IXI00{i}-T-0-T2.nii.gz") for i in (1, 2)]
    warned = [_subject(tmp_path, t2, "Tum1-T2.nii.gz", label=1),                 # no segmentation
              _subject(tmp_path, t2, "Tum2-T2.nii.gz", label=1, seg=low)]       # lesion off the slab
    bad = [_subject(tmp_path, np.full(t2.shape, 7.0), "Flat-T2.nii.gz"),
           _subject(tmp_path, t2[:, :, :5], "Thin-T2.nii.gz")]
    expect_error(tmp_path, lambda: build_cache(healthy + bad, tmp_path / "cache", settings, progress=False),
                 "Flat-T2.nii.gz", "constant", "1 more volume(s)", "Thin-T2.nii.gz", "too small")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache.partial").exists()
    cache = build_cache(healthy + warned, tmp_path / "cache", settings, progress=False)
    assert list(cache.warnings.subject) == ["Tum1", "Tum2"]
    assert "without a segmentation" in cache.warnings.warning[0]
    assert "outside the 4 sampled slices" in cache.warnings.warning[1]
    assert cohort_summary(cache).loc["test / tumour", "warnings"] == 2

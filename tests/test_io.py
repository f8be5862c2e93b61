"""Loaders and discovery on tiny NIfTI files written here (8x9x10 voxels and similar)."""
from __future__ import annotations

import gzip
import shutil
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from glio_kit.data.cohort import Subject, discover, discover_brats, discover_ixi, read_manifest
from glio_kit.data.io import Volume, lesion_mask, load_segmentation, load_volume

SHAPE = (8, 9, 10)
# RAS, 2 x 2.5 x 3 mm voxels, shifted origin
AFFINE = np.array([[2.0, 0, 0, -8], [0, 2.5, 0, -11], [0, 0, 3.0, -15], [0, 0, 0, 1]])


def reference(shape=SHAPE) -> np.ndarray:
    """Values k * 0.5 + 10 with integer k: exact in int16 with slope 0.5, inter 10."""
    k = np.arange(int(np.prod(shape))).reshape(shape) % 500
    return (k * 0.5 + 10).astype(np.float32)


def save(path: Path, data, affine=AFFINE, dtype=None) -> Path:
    img = nib.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def save_int16_scaled(path: Path, raw: np.ndarray, affine, slope: float, inter: float) -> Path:
    """Write int16 ``raw`` with scl_slope/scl_inter set in the header (nibabel's own
    writer would rescale the data, so the header is patched on disk)."""
    plain = path.with_name("_plain_" + path.name.split(".")[0] + ".nii")
    nib.save(nib.Nifti1Image(raw.astype(np.int16), affine), str(plain))
    blob = bytearray(plain.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(BytesIO(bytes(blob[:348])))
    hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    blob[:348] = hdr.binaryblock
    plain.unlink()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(bytes(blob)))
    else:
        path.write_bytes(bytes(blob))
    return path


def flip_matrix(shape, axes) -> np.ndarray:
    """Voxel->voxel map i' = n-1-i along ``axes``: affine_stored = affine_ras @ F."""
    f = np.eye(4)
    for a in axes:
        f[a, a] = -1
        f[a, 3] = shape[a] - 1
    return f


# ----------------------------------------------------------------------------- load_volume
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip(tmp_path, suffix):
    ref = reference()
    path = save(tmp_path / f"img{suffix}", ref)
    vol = load_volume(path)
    assert isinstance(vol, Volume)
    assert vol.data.dtype == np.float32 and vol.data.shape == SHAPE
    np.testing.assert_array_equal(vol.data, ref)
    assert vol.affine.dtype == np.float64 and vol.affine.shape == (4, 4)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.zooms == pytest.approx((2.0, 2.5, 3.0))
    assert all(isinstance(z, float) for z in vol.zooms)
    assert vol.path == path and vol.shape == SHAPE
    assert "img" in repr(vol)


def test_same_image_any_dtype_scaling_orientation(tmp_path):
    ref = reference()
    k = ((ref - 10) / 0.5).round().astype(np.int16)
    lps = flip_matrix(SHAPE, (0, 1))
    # axes stored in the order (y, x, z): transpose data, swap affine columns
    swap = np.eye(4)[[1, 0, 2, 3]]
    files = {
        "float32 RAS": save(tmp_path / "f32.nii.gz", ref),
        "int16 slope/inter": save_int16_scaled(tmp_path / "i16.nii.gz", k, AFFINE, 0.5, 10.0),
        "int16 slope/inter .nii": save_int16_scaled(tmp_path / "i16.nii", k, AFFINE, 0.5, 10.0),
        "LPS stored": save(tmp_path / "lps.nii.gz", ref[::-1, ::-1, :], AFFINE @ lps),
        "float64": save(tmp_path / "f64.nii", ref.astype(np.float64), dtype=np.float64),
        "axes swapped": save(tmp_path / "yxz.nii.gz", ref.transpose(1, 0, 2), AFFINE @ swap),
        "4-D singleton": save(tmp_path / "s4.nii.gz", ref[..., None]),
    }
    # the scaled files really carry scl_slope / scl_inter
    # (nibabel moves them from the header into the array proxy when loading)
    for key in ("int16 slope/inter", "int16 slope/inter .nii"):
        stored = nib.load(str(files[key]))
        assert stored.get_data_dtype() == np.int16
        assert (stored.dataobj.slope, stored.dataobj.inter) == (0.5, 10.0)
    assert nib.aff2axcodes(AFFINE @ lps) == ("L", "P", "S")

    for what, path in files.items():
        vol = load_volume(path)
        assert vol.data.dtype == np.float32, what
        assert vol.data.shape == SHAPE, what
        np.testing.assert_allclose(vol.data, ref, rtol=0, atol=1e-5, err_msg=what)
        np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6, err_msg=what)
        assert vol.zooms == pytest.approx((2.0, 2.5, 3.0)), what


def test_other_size_and_anisotropic_voxels(tmp_path):
    shape = (5, 7, 4)
    aff = np.diag([0.9375, 0.9375, 1.2, 1.0])
    vol = load_volume(save(tmp_path / "x.nii", reference(shape), aff, dtype=np.int16))
    assert vol.shape == shape
    assert vol.zooms == pytest.approx((0.9375, 0.9375, 1.2))


# ----------------------------------------------------------------------------- segmentation
def labels(shape=SHAPE) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[2:5, 3:6, 4:7] = 2
    seg[3:5, 4:6, 5:7] = 4
    seg[3, 4, 5] = 1
    return seg


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_segmentation_follows_image_orientation(tmp_path, dtype):
    ref, seg = reference(), labels()
    lps = AFFINE @ flip_matrix(SHAPE, (0, 1))
    img = load_volume(save(tmp_path / "t2.nii.gz", ref[::-1, ::-1, :], lps))
    out = load_segmentation(save(tmp_path / "seg.nii.gz", seg[::-1, ::-1, :].astype(dtype), lps),
                            like=img)
    assert out.dtype == np.uint8 and out.shape == SHAPE
    np.testing.assert_array_equal(out, seg)
    assert set(np.unique(out)) == {0, 1, 2, 4}
    mask = lesion_mask(out)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, seg > 0)


def test_empty_segmentation_is_allowed(tmp_path):
    img = load_volume(save(tmp_path / "t2.nii", reference()))
    out = load_segmentation(save(tmp_path / "seg.nii", np.zeros(SHAPE, np.uint8)), like=img)
    assert not lesion_mask(out).any()


# ----------------------------------------------------------------------------- discovery
def make_ixi(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / "IXI002-Guys-0828-T2.nii.gz", reference())
    # another size, dtype and orientation, uncompressed
    shape = (6, 7, 5)
    save(folder / "IXI012-HH-1211-T2.nii", reference(shape)[::-1],
         AFFINE @ flip_matrix(shape, (0,)), dtype=np.int16)
    # other IXI modalities and clutter are ignored
    save(folder / "IXI002-Guys-0828-PD.nii.gz", reference())
    save(folder / "IXI002-Guys-0828-T1.nii.gz", reference())
    (folder / "IXI.xls").write_text("demographics")
    (folder / "._IXI002-Guys-0828-T2.nii.gz").write_bytes(b"macOS resource fork")
    return folder


def make_brats(folder: Path) -> Path:
    a = folder / "BraTS2021_00000"
    b = folder / "BraTS2021_00002"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    save(a / "BraTS2021_00000_t2.nii.gz", reference())
    save(a / "BraTS2021_00000_seg.nii.gz", labels())
    save(a / "BraTS2021_00000_t1.nii.gz", reference())
    shape = (7, 6, 5)
    save(b / "BraTS2021_00002_t2.nii", reference(shape), dtype=np.float64)  # no seg
    (folder / "notes").mkdir()  # a folder without NIfTI files is not a case
    return folder


def test_discover_ixi(tmp_path):
    folder = make_ixi(tmp_path / "ixi")
    subs = discover_ixi(folder)
    assert [s.subject for s in subs] == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert all(s.label == 0 and s.mask is None and s.split == "" for s in subs)
    assert subs[0].image == folder / "IXI002-Guys-0828-T2.nii.gz"
    assert subs[1].image.name == "IXI012-HH-1211-T2.nii"
    assert load_volume(subs[1].image).shape == (6, 7, 5)
    assert discover(folder) == subs


def test_discover_brats(tmp_path):
    folder = make_brats(tmp_path / "brats")
    subs = discover_brats(folder)
    assert [s.subject for s in subs] == ["BraTS2021_00000", "BraTS2021_00002"]
    assert all(s.label == 1 for s in subs)
    a, b = subs
    assert a.image.name == "BraTS2021_00000_t2.nii.gz"
    assert a.mask == folder / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    assert b.mask is None and b.image.name == "BraTS2021_00002_t2.nii"
    vol = load_volume(a.image)
    np.testing.assert_array_equal(load_segmentation(a.mask, like=vol), labels())
    assert load_volume(b.image).shape == (7, 6, 5)
    assert discover(folder) == subs


def test_discover_mixed_folder_sorted_and_deterministic(tmp_path):
    folder = make_brats(tmp_path / "mixed")
    make_ixi(folder)
    subs = discover(folder)
    ids = [s.subject for s in subs]
    assert ids == sorted(ids) and len(ids) == 4
    assert {s.subject: s.label for s in subs} == {
        "BraTS2021_00000": 1, "BraTS2021_00002": 1, "IXI002-Guys-0828": 0, "IXI012-HH-1211": 0}
    assert discover(str(folder)) == subs


def test_label_override(tmp_path):
    folder = make_brats(tmp_path / "brats")
    assert {s.label for s in discover(folder, label=0)} == {0}
    assert {s.label for s in discover(folder, label="healthy")} == {0}
    assert {s.label for s in discover(folder)} == {1}


def test_manifest(tmp_path):
    make_ixi(tmp_path / "ixi")
    make_brats(tmp_path / "brats")
    (tmp_path / "abs").mkdir()
    elsewhere = save(tmp_path / "abs" / "scan.nii.gz", reference())  # absolute path in the CSV
    csv_path = tmp_path / "lists" / "cohort.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "subject,image,mask,label,split\n"
        "b0,../brats/BraTS2021_00000/BraTS2021_00000_t2.nii.gz,"
        "../brats/BraTS2021_00000/BraTS2021_00000_seg.nii.gz,tumour,test\n"
        "\n"
        "a2, ../ixi/IXI012-HH-1211-T2.nii ,,healthy,train\n"
        f"z9,{elsewhere},,0,\n"
        "a1,../ixi/IXI002-Guys-0828-T2.nii.gz,,Tumor,\n"
    )
    subs = read_manifest(csv_path)
    assert [s.subject for s in subs] == ["b0", "a2", "z9", "a1"]  # file order
    assert [s.label for s in subs] == [1, 0, 0, 1]
    assert [s.split for s in subs] == ["test", "train", "", ""]
    assert subs[0].mask is not None and subs[0].mask.is_file()
    assert subs[1].mask is None and subs[1].image.is_file()
    assert subs[2].image == elsewhere
    assert isinstance(subs[0], Subject)
    found = discover(csv_path)
    assert [s.subject for s in found] == ["a1", "a2", "b0", "z9"]  # sorted
    vol = load_volume(found[2].image)
    assert load_segmentation(found[2].mask, like=vol).shape == SHAPE


def test_manifest_without_mask_column(tmp_path):
    save(tmp_path / "s.nii", reference())
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("\ufeffsubject,image,label\ns1,s.nii,1\n", encoding="utf-8")
    (s,) = read_manifest(csv_path)
    assert s.subject == "s1" and s.mask is None and s.label == 1


def test_copy_of_file_loads_identically(tmp_path):
    # loading never depends on the file name beyond its suffix
    src = save(tmp_path / "a.nii.gz", reference())
    dst = tmp_path / "renamed.nii.gz"
    shutil.copy(src, dst)
    np.testing.assert_array_equal(load_volume(src).data, load_volume(dst).data)

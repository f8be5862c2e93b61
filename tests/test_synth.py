"""Tests for the synthetic T2 cohort generator (coarse 4 mm grid, tiny cohorts: fast)."""
import json

import nibabel as nib
import numpy as np
import pytest

from glio_kit.errors import RunFolderError
from glio_kit.data.synth import load_templates, make_cohort, synth_subject
from glio_kit.data.synth.cohort import _subject_plan

V = 4.0  # mm; every test works on the coarse grid to stay fast


def _tumor_index(affine, ctr_mm):
    return np.round(np.linalg.solve(affine, np.r_[ctr_mm, 1.0])[:3]).astype(int)


def test_same_seed_same_subject_and_different_seed_differs():
    a1, s1, aff1, i1 = synth_subject("tumor", (3, 1), V)
    a2, s2, aff2, i2 = synth_subject("tumor", (3, 1), V)
    b, _, _, _ = synth_subject("tumor", (3, 2), V)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(aff1, aff2)
    assert i1 == i2
    assert not np.array_equal(a1, b)


@pytest.mark.parametrize("kind", ["healthy", "healthy_wmh", "tumor"])
def test_shapes_dtypes_background_and_field_of_view(kind):
    t2, seg, affine, info = synth_subject(kind, 5, V)
    tpl = load_templates(V)
    assert t2.shape == tpl["shape"] and t2.dtype == np.float32
    assert affine.shape == (4, 4)
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), V)
    assert np.isfinite(t2).all() and t2.min() >= 0
    brain = t2 > 0
    # A brain of plausible size (ml), surrounded by exact zeros, never cut by the volume edge.
    assert 1000 < brain.sum() * V ** 3 / 1000 < 2000
    for face in (brain[0], brain[-1], brain[:, 0], brain[:, -1], brain[:, :, 0], brain[:, :, -1]):
        assert not face.any()
    if kind == "tumor":
        assert seg is not None and seg.shape == t2.shape and seg.dtype == np.uint8
    else:
        assert seg is None


def test_t2_contrast_csf_bright_wm_dark():
    # Sample the subject at the (undeformed) template's deep WM and central CSF: with
    # deformations of a few mm, most of those voxels keep their tissue.
    t2, _, _, info = synth_subject("healthy", 11, V)
    tpl = load_templates(V)
    wm = tpl["wm"] > 0.95
    gm = tpl["gm"] > 0.8
    csf = tpl["csf"] > 0.95
    assert np.median(t2[csf]) > 1.5 * np.median(t2[gm]) > 1.5 * 1.1 * np.median(t2[wm])


def test_tumor_labels_inside_brain_in_white_matter_and_bright():
    tpl = load_templates(V)
    tpl1 = load_templates(1.0)
    for s in range(3):
        t2, seg, affine, info = synth_subject("tumor", (9, s), V)
        labels = set(np.unique(seg).tolist())
        assert labels <= {0, 1, 2, 4}
        assert 2 in labels and 4 in labels  # edema and enhancing rim always present
        lesion = seg > 0
        assert lesion.sum() > 0 and info["lesion_ml"] > 0
        assert np.all(t2[lesion] > 0)  # inside the brain
        # Centre placed in template white matter (checked on the 1 mm template, as the
        # 4 mm one blurs thin WM); most of the lesion replaced WM.
        c = np.asarray(info["tumor_center_template_vox"])
        c_mm = tpl["affine"][:3, :3] @ c + tpl["affine"][:3, 3]
        c1 = np.round(np.linalg.solve(tpl1["affine"], np.r_[c_mm, 1.0])[:3]).astype(int)
        assert tpl1["wm"][tuple(c1)] > 0.5
        assert info["lesion_wm_fraction"] > 0.5
        # Centroid of the labels near where the tumour was placed (mass effect, lobes).
        i = _tumor_index(affine, info["tumor_center_mm"])
        assert seg[tuple(i)] > 0 or np.linalg.norm(i - c) * V < 15
        # Mostly mid-axial: centre between 20 % and 90 % of the brain's z extent.
        zs = np.nonzero((t2 > 0).any(axis=(0, 1)))[0]
        assert 0.2 < (i[2] - zs[0]) / (zs[-1] - zs[0]) < 0.9
        # T2: lesion hyperintense to white matter of the same subject.
        h, _, _, _ = synth_subject("healthy", (9, s), V)
        wm_far = (tpl["wm"] > 0.95) & ~lesion
        assert np.median(t2[lesion]) > 1.3 * np.median(h[wm_far])
        core = (seg == 1) | (seg == 4)
        if core.any():
            assert np.median(t2[seg == 2]) > 1.2 * np.median(h[wm_far])


def test_tumor_mass_effect_moves_anatomy():
    # Same seed: healthy and tumour subject share anatomy, contrast and noise. Just
    # outside the labels (past the one-voxel partial-volume border) the tumour subject
    # differs only if the anatomy was pushed aside, not merely painted over.
    from scipy import ndimage

    for s in (21, 22):
        h = synth_subject("healthy", s, V)[0]
        t, seg, _, _ = synth_subject("tumor", s, V, lesion_radius_mm=25)
        les = seg > 0
        both = (h > 0) & (t > 0)
        shell = (ndimage.binary_dilation(les, iterations=4)
                 & ~ndimage.binary_dilation(les, iterations=1) & both)
        far = ~ndimage.binary_dilation(les, iterations=12) & both
        ref = np.median(h[h > 0])
        d_shell = np.mean(np.abs(t[shell] - h[shell])) / ref
        d_far = np.mean(np.abs(t[far] - h[far])) / ref
        assert d_shell > 0.002  # without mass effect this is ~1e-4
        assert d_shell > 20 * d_far


def test_lesion_radius_controls_volume():
    small = synth_subject("tumor", 4, V, lesion_radius_mm=9)[3]["lesion_ml"]
    large = synth_subject("tumor", 4, V, lesion_radius_mm=30)[3]["lesion_ml"]
    assert 0 < small < 15 < 40 < large


def test_wmh_adds_only_bright_spots_in_white_matter():
    h, _, _, ih = synth_subject("healthy", 8, V)
    w, _, _, iw = synth_subject("healthy_wmh", 8, V, n_wmh=5)
    assert iw["has_wmh"] and not ih["has_wmh"] and iw["n_wmh"] == 5
    d = w - h
    assert d.max() > 0.15 * h.max()  # visibly brighter somewhere
    assert d.min() >= -1e-3 * h.max()  # only brightening
    changed = np.abs(d) > 1e-3 * h.max()
    assert 0 < changed.sum() < 0.01 * (h > 0).sum()  # small, focal
    assert np.all(h[changed] > 0)  # inside the brain


def test_subject_differences():
    a = synth_subject("healthy", 1, V)
    b = synth_subject("healthy", 2, V)
    assert a[3]["intensity_scale"] != b[3]["intensity_scale"]
    assert a[3]["contrast"] != b[3]["contrast"]
    assert not np.array_equal(a[0] > 0, b[0] > 0)  # different deformations


def test_bad_kind():
    with pytest.raises(ValueError):
        synth_subject("glioma", 0, V)


# ------------------------------------------------------------------------- subject plan
def test_plan_subjects_independent_of_group_sizes():
    small = _subject_plan(2, 3, 1, seed=6, wmh_fraction=0.4)
    large = _subject_plan(5, 9, 4, seed=6, wmh_fraction=0.4)
    for group in ("train_healthy", "test_healthy", "test_tumor"):
        a = [p for p in small if p["folder"] == group]
        b = [p for p in large if p["folder"] == group]
        assert a == b[: len(a)]
    seeds = [tuple(p["seed"]) for p in large]
    assert len(set(seeds)) == len(seeds)  # no two subjects share a random stream
    ids = [p["id"] for p in large]
    assert len(set(ids)) == len(ids)
    # The WMH share is exact up to rounding, for any count.
    for n in (1, 5, 9, 27):
        plan = _subject_plan(0, n, 0, seed=6, wmh_fraction=0.4)
        assert sum(p["kind"] == "healthy_wmh" for p in plan) in (int(n * 0.4), int(n * 0.4) + 1)


def test_plan_test_ids_follow_training_ids():
    first_test = next(p for p in _subject_plan(600, 1, 0, 0, 0.0) if p["folder"] == "test_healthy")
    assert first_test["id"].startswith("IXI701-")
    first_test = next(p for p in _subject_plan(3, 1, 0, 0, 0.0) if p["folder"] == "test_healthy")
    assert first_test["id"].startswith("IXI501-")


# ------------------------------------------------------------------------- cohort on disk
SMALL = dict(n_train_healthy=2, n_test_healthy=2, n_test_tumor=2, seed=3, voxel_size=V,
             wmh_fraction=0.5, progress=False, workers=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "cohort"
    return make_cohort(root, **SMALL)


def test_cohort_layout_and_metadata(cohort):
    root = cohort["root"]
    assert set(cohort) == {"train_healthy", "test_healthy", "test_tumor", "root"}
    train = sorted(cohort["train_healthy"].glob("IXI*-Synth-*-T2.nii.gz"))
    test_h = sorted(cohort["test_healthy"].glob("IXI*-Synth-*-T2.nii.gz"))
    tumors = sorted(p for p in cohort["test_tumor"].iterdir() if p.is_dir())
    assert len(train) == 2 and len(test_h) == 2 and len(tumors) == 2
    assert [p.name for p in tumors] == ["SynthBraTS_00001", "SynthBraTS_00002"]
    for d in tumors:
        assert (d / f"{d.name}_t2.nii.gz").exists() and (d / f"{d.name}_seg.nii.gz").exists()
    meta = json.loads((root / "cohort.json").read_text())
    subs = meta["subjects"]
    ids = [s["id"] for s in subs]
    assert len(set(ids)) == 6
    assert {p.name[: -len("-T2.nii.gz")] for p in train + test_h} <= set(ids)
    assert sum(s["has_wmh"] for s in subs) == 1  # half of the 2 healthy test subjects
    assert all(s["label"] == (s["folder"] == "test_tumor") for s in subs)
    assert all(s["lesion_ml"] > 0 and len(s["tumor_center_mm"]) == 3
               for s in subs if s["label"] == 1)
    assert "synthetic" in (root / "README.md").read_text().lower()
    assert not list(root.parent.glob(".cohort.partial-*"))  # no leftovers


def test_cohort_files_are_int16_scaled_with_zero_background(cohort):
    root = cohort["root"]
    meta = json.loads((root / "cohort.json").read_text())
    tum = next(s for s in meta["subjects"] if s["label"] == 1)
    img = nib.load(root / tum["t2"])
    seg = nib.load(root / tum["seg"])
    assert img.get_data_dtype() == np.int16 and seg.get_data_dtype() == np.uint8
    assert img.dataobj.slope != 1.0 and img.dataobj.inter == 0.0
    np.testing.assert_allclose(img.header.get_zooms(), (V, V, V))
    np.testing.assert_array_equal(img.affine, seg.affine)
    data = img.get_fdata()
    labels = np.asarray(seg.dataobj)
    assert data.shape == labels.shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4} and (labels > 0).any()
    assert np.all(data[labels > 0] > 0)
    # Written data equals the in-memory subject up to int16 quantisation.
    t2, s2, _, _ = synth_subject("tumor", tum["seed"], V)
    np.testing.assert_array_equal(labels, s2)
    assert np.max(np.abs(data - t2)) <= img.dataobj.slope
    assert np.all(data[t2 == 0] == 0)


def test_cohort_is_deterministic_and_independent_of_counts(cohort, tmp_path):
    other = make_cohort(tmp_path / "again", **{**SMALL, "n_train_healthy": 1})
    a = sorted(cohort["train_healthy"].glob("*.nii.gz"))[0]
    b = sorted(other["train_healthy"].glob("*.nii.gz"))[0]
    assert a.name == b.name
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj),
                                  np.asarray(nib.load(b).dataobj))


def test_reuse_identical_cohort_does_not_rewrite(cohort):
    root = cohort["root"]
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    again = make_cohort(root, **SMALL)
    assert again == cohort
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_different_parameters_raise_and_leave_files(cohort):
    root = cohort["root"]
    files = sorted(p for p in root.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    with pytest.raises(RunFolderError, match="seed") as err:
        make_cohort(root, **{**SMALL, "seed": 4})
    assert str(root) in str(err.value)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_overwrite_replaces_a_synthetic_cohort(tmp_path):
    root = tmp_path / "c"
    make_cohort(root, **{**SMALL, "n_test_tumor": 1, "n_test_healthy": 0,
                         "n_train_healthy": 1})
    make_cohort(root, **{**SMALL, "n_test_tumor": 1, "n_test_healthy": 0,
                         "n_train_healthy": 1, "seed": 5}, overwrite=True)
    assert json.loads((root / "cohort.json").read_text())["parameters"]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp folders left


def test_foreign_folder_is_never_touched(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my data")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="not empty"):
            make_cohort(root, **SMALL, overwrite=overwrite)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "my data"


def test_empty_existing_folder_is_used(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    out = make_cohort(root, **{**SMALL, "n_train_healthy": 1, "n_test_healthy": 0,
                               "n_test_tumor": 0})
    assert len(list(out["train_healthy"].glob("*.nii.gz"))) == 1


@pytest.mark.parametrize("bad", [{"wmh_fraction": 1.5}, {"voxel_size": 0.0}])
def test_bad_cohort_parameters_write_nothing(tmp_path, bad):
    with pytest.raises(ValueError):
        make_cohort(tmp_path / "c", **{**SMALL, **bad})
    assert not list(tmp_path.iterdir())

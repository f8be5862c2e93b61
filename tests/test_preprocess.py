import numpy as np
import pytest

from glio_kit.run.config import get_config
from glio_kit.errors import RunFolderError
from glio_kit.data.slice_cache import SliceCache
from glio_kit.data.volumes import axial_view, brain_mask, normalise, slab_indices, to_generator_range
from glio_kit.data.preprocess import prepare
from glio_kit.run.rundir import RunDir
from conftest import ellipsoid_brain


def test_paper_normalisation_has_unit_sd():
    t2, _ = ellipsoid_brain()
    x = normalise(t2 * 7.3, brain_mask(t2), "sd")
    assert np.isclose(x.std(), 1.0, atol=1e-5)
    # the same scan at another scanner gain normalises to the same values
    assert np.allclose(x, normalise(t2, brain_mask(t2), "sd"), atol=1e-5)
    z = normalise(t2, brain_mask(t2), "zscore")
    assert np.isclose(z[brain_mask(t2)].mean(), 0, atol=1e-4)


def test_generator_range_and_background():
    t2, _ = ellipsoid_brain()
    brain = brain_mask(t2)
    g = to_generator_range(normalise(t2, brain, "sd"), brain, "sd")
    assert g.min() >= -1 and g.max() <= 1
    assert np.all(g[~brain] == -1)
    assert g[brain].mean() > -0.9  # tissue is not squashed onto the background value


def test_slab_indices_inside_brain():
    t2, _ = ellipsoid_brain((20, 20, 40))
    brain = brain_mask(t2)
    zs = slab_indices(brain, (0.4, 0.7), 5)
    assert len(zs) == 5 and np.all(np.diff(zs) > 0)
    assert all(brain[:, :, z].any() for z in zs)
    consecutive = slab_indices(brain, (0.4, 0.7), 1 + zs[-1] - zs[0])
    assert np.all(np.diff(consecutive) == 1)
    with pytest.raises(ValueError):
        slab_indices(brain, (0.7, 0.4), 5)


def test_axial_view_is_radiological():
    vol = np.zeros((4, 6, 3))
    vol[3, 5, 1] = 1  # patient's right-most (x max in RAS), anterior-most (y max)
    view = axial_view(vol, 1)
    assert view.shape == (6, 4)
    assert view[0, 0] == 1  # anterior at the top, patient's right on the image's left


def _cfg(**kw):
    return get_config("smoke", **kw).prep


def test_prepare_builds_cache(tmp_path, tiny_cohort):
    run = RunDir(tmp_path / "run")
    cfg = _cfg(image_size=[24, 20], n_slices=3)
    cache = prepare(run, cfg, tiny_cohort, progress=False)
    assert cache.images.shape == (8 * 3, 24, 20) and cache.images.dtype == np.float32
    assert cache.brain.shape == cache.lesion.shape == cache.images.shape
    assert cache.images.min() >= -1 and cache.images.max() <= 1
    subj = cache.subjects()
    assert subj.split.value_counts().to_dict() == {"train": 3, "val": 1, "test": 4}
    assert set(subj[subj.split != "test"].label) == {0}
    # lesions only in tumour subjects, and inside the brain
    assert cache.index[cache.index.label == 0].lesion_pixels.sum() == 0
    assert cache.index[cache.index.label == 1].lesion_pixels.sum() > 0
    assert np.all(cache.lesion[:] <= cache.brain[:])
    # background stays -1 outside the brain mask
    assert np.all(cache.images[:][cache.brain[:] == 0] <= -0.9)
    assert run.is_done("prep")


def test_resize_keeps_aspect_ratio(tmp_path, tiny_cohort):
    """A tall, narrow target pads the brain instead of stretching it."""
    run_sq, run_tall = RunDir(tmp_path / "sq"), RunDir(tmp_path / "tall")
    sq = prepare(run_sq, _cfg(image_size=[32, 32], n_slices=1), tiny_cohort, progress=False)
    tall = prepare(run_tall, _cfg(image_size=[48, 24], n_slices=1), tiny_cohort, progress=False)

    def ratio(mask):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return (rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1)

    assert abs(ratio(sq.brain[0]) - ratio(tall.brain[0])) < 0.2


def test_prepare_reuses_and_refuses(tmp_path, tiny_cohort):
    run = RunDir(tmp_path / "run")
    cfg = _cfg(n_slices=2)
    prepare(run, cfg, tiny_cohort, progress=False)
    stamp = (run / "cache" / "images.npy").stat().st_mtime_ns
    prepare(run, cfg, tiny_cohort, progress=False)
    assert (run / "cache" / "images.npy").stat().st_mtime_ns == stamp
    with pytest.raises(RunFolderError, match="n_slices"):
        prepare(run, _cfg(n_slices=3), tiny_cohort, progress=False)
    assert SliceCache(run / "cache").images.shape[0] == 16  # the earlier cache is intact


def test_synthetic_cohort_folder_names_what_differs_from_the_profile(monkeypatch, tmp_path):
    from glio_kit.data.preprocess import synthetic_root

    monkeypatch.setenv("GLIO_KIT_DATA", str(tmp_path))
    assert synthetic_root(get_config("demo", seed=1).prep) == tmp_path / "synthetic-demo-seed1"
    bigger = get_config("demo", seed=1, synth_train_healthy=300, synth_wmh_fraction=0.5).prep
    assert synthetic_root(bigger) == tmp_path / "synthetic-demo-seed1-train300-wmh0.5"
    # the paper profile's own 300 is its default, not a difference
    assert synthetic_root(get_config("paper", synth_train_healthy=300).prep).name == "synthetic-paper-seed0"

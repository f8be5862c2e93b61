"""The fair baselines: the intensity baseline with its own percentile, and the voxel-wise healthy atlas."""
import dataclasses

import numpy as np
import pytest

from glio_kit.detect import detectors as D
from glio_kit.detect.atlas import SD_FLOOR_QUANTILE, fit_atlas, healthy_atlas
from glio_kit.evaluate import evaluation as E
from test_evaluation import S, write_scored_run, write_tiny_cache


def test_fit_atlas_mean_and_sd_per_slab_position_and_pixel():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 0.2, (30, 8, 8)).astype(np.float32)
    pos = np.tile([0, 1, 2], 10)
    images[pos == 1] += 0.5  # slab position 1 is brighter: its own mean
    brain = np.ones_like(images, np.uint8)
    atlas = fit_atlas(images, pos, brain)
    assert atlas.mean.shape == (3, 8, 8) and list(atlas.n) == [10, 10, 10]
    assert np.allclose(atlas.mean[1], images[pos == 1].mean(axis=0), atol=1e-6)
    sd1 = images[pos == 1].std(axis=0, ddof=1)
    floor = np.quantile(np.concatenate([images[pos == j].std(axis=0, ddof=1).ravel() for j in range(3)]),
                        SD_FLOOR_QUANTILE)
    assert atlas.sd_floor == pytest.approx(floor, rel=1e-5)
    assert np.allclose(atlas.sd[1], np.maximum(sd1, floor), atol=1e-6)
    # |z| of a training slice against its own position, 0 outside the (eroded) brain
    x, inside = images[1:2], np.zeros((1, 8, 8), np.uint8)
    inside[0, 2:6, 2:6] = 1
    z = atlas.z_map(x, [1], inside, erode=0)
    c = np.s_[2:6, 2:6]
    assert np.allclose(z[0][c], np.abs(x[0][c] - atlas.mean[1][c]) / atlas.sd[1][c], atol=1e-5)
    assert (z[0][inside[0] == 0] == 0).all()
    with pytest.raises(ValueError, match="slab positions"):
        atlas.z_map(x, [3], inside)


def test_rim_where_no_training_brain_is_floored_not_infinite():
    images = np.full((6, 8, 8), -1.0, np.float32)  # background everywhere: SD 0 across subjects
    images[:, 2:6, 2:6] = np.random.default_rng(1).normal(0, 0.1, (6, 4, 4))
    brain = (images > -1).astype(np.uint8)
    atlas = fit_atlas(images, np.zeros(6, int), brain)
    assert atlas.sd_floor > 0 and np.isfinite(atlas.z_map(images + 0.5, np.zeros(6, int), np.ones_like(brain),
                                                           erode=0)).all()


def test_atlas_is_made_from_healthy_training_slices_only(tmp_path):
    """Changing every validation and test image leaves the atlas as it is; changing a training
    image changes it (a leak guard: no test subject enters the atlas)."""
    cache, _ = write_tiny_cache(tmp_path / "c", n_train=4)
    a0 = healthy_atlas(cache)
    images = np.load(tmp_path / "c" / "images.npy")
    other = cache.rows(split="val").tolist() + cache.rows(split="test").tolist()
    images[other] += 0.7
    np.save(tmp_path / "c" / "images.npy", images)
    from glio_kit.data.slice_cache import SliceCache

    a1 = healthy_atlas(SliceCache(tmp_path / "c"))
    assert np.array_equal(a0.mean, a1.mean) and np.array_equal(a0.sd, a1.sd)
    images[cache.rows(split="train")[0]] += 0.7
    np.save(tmp_path / "c" / "images.npy", images)
    assert not np.array_equal(a0.mean, healthy_atlas(SliceCache(tmp_path / "c")).mean)


def test_both_atlas_detectors_find_the_blobs_and_appear_with_pixel_metrics(tmp_path):
    run, _ = write_scored_run(tmp_path / "run", n_train=4)
    res = E.evaluate_run(run, S)
    for name in ("atlas_area", "atlas_lesion_load"):
        assert D.DETECTORS[name].origin == "baseline"
        assert res[name]["subject_auc"] == 1.0, name  # the bright 4x4 blob is far from every healthy pixel
        assert res[name]["sd_floor"] > 0
    # pixel metrics once per map, in the first atlas detector's block
    assert res["atlas_area"]["pixel_auroc"] > 0.95 and "pixel_auroc" not in res["atlas_lesion_load"]
    assert "atlas_lesion_load" not in D.recommendable()


def test_intensity_percentile_reaches_the_baseline_and_its_pixel_metrics(tmp_path):
    """The knob is read by the baseline's area rule and by its pixel block, not by the residual's."""
    out = {}
    for q in (99.0, 80.0):
        run, _ = write_scored_run(tmp_path / f"q{q:g}", n_train=4)
        out[q] = E.evaluate_run(run, dataclasses.replace(S, intensity_percentile=q))
    assert out[80.0]["baseline"]["pixel_threshold"] < out[99.0]["baseline"]["pixel_threshold"]
    assert out[80.0]["baseline"]["pixel_percentile"] == 80.0
    assert out[80.0]["pixel_threshold"] == out[99.0]["pixel_threshold"]  # the residual's: pixel_percentile
    assert out[80.0]["lesion_load"]["pixel_threshold"] == out[99.0]["lesion_load"]["pixel_threshold"]


def test_intensity_baseline_with_a_lower_percentile_sees_a_lesion_below_csf(tmp_path):
    """A lesion dimmer than the 'ventricles' (edema lies below CSF on T2): at the 99th percentile
    of healthy pixels (CSF) the baseline is blind to it; at a percentile below CSF it is not."""
    auc = {}
    for q in (99.0, 90.0):
        run, _ = write_scored_run(tmp_path / f"q{q:g}", n_train=4, blob_value=0.2)  # CSF: 0.5
        res = E.evaluate_run(run, dataclasses.replace(S, intensity_percentile=q))
        auc[q] = res["baseline"]["subject_auc"]
    assert auc[99.0] <= 0.75 and auc[90.0] == 1.0

import numpy as np
import pytest

from glio_kit.detect.residuals import binarise, eroded_brain, median_slices, residual_map


def _square_brain(h=12, w=12, lo=2, hi=10):
    b = np.zeros((h, w), np.uint8)
    b[lo:hi, lo:hi] = 1
    return b


def test_positive_vs_absolute():
    x = np.full((8, 8), 0.0, np.float32)
    gz = np.full((8, 8), 0.0, np.float32)
    x[3, 3], x[4, 4] = 0.5, -0.5  # one brighter, one darker than the reconstruction
    brain = np.ones((8, 8), np.uint8)
    pos = residual_map(x, gz, brain, kind="positive", median=0, erode=0)
    ab = residual_map(x, gz, brain, kind="absolute", median=0, erode=0)
    assert pos[3, 3] == pytest.approx(0.5) and pos[4, 4] == 0.0
    assert ab[3, 3] == pytest.approx(0.5) and ab[4, 4] == pytest.approx(0.5)
    assert pos.dtype == np.float32 and pos.shape == x.shape
    # full range: background (-1) against bright (+1) is 2
    full = residual_map(np.ones((4, 4)), -np.ones((4, 4)), np.ones((4, 4)), median=0, erode=0)
    assert full.max() == pytest.approx(2.0)


def test_brain_masking_and_erosion():
    brain = _square_brain()
    x = np.ones((12, 12), np.float32)
    gz = np.zeros((12, 12), np.float32)
    r0 = residual_map(x, gz, brain, median=0, erode=0)
    assert r0.sum() == pytest.approx(brain.sum())  # exactly the brain, nothing outside
    r1 = residual_map(x, gz, brain, median=0, erode=1)
    assert r1[2, 2] == 0 and r1[2, 5] == 0  # the rim is gone
    assert r1[3, 3] == 1 and r1.sum() == 36  # 8x8 square eroded by one pixel = 6x6
    r2 = residual_map(x, gz, brain, median=0, erode=2)
    assert r2.sum() == 16
    assert eroded_brain(brain, 1).sum() == 36


def test_map_covers_exactly_the_eroded_brain():
    """eroded_brain(brain, erode) is the set of pixels a residual map can be non-zero on."""
    rng = np.random.default_rng(1)
    brain = np.stack([_square_brain(), _square_brain(12, 12, 1, 11)])
    x = rng.uniform(0.1, 1, brain.shape).astype(np.float32)
    for erode in (0, 1, 2):
        res = residual_map(x, -np.ones_like(x), brain, kind="positive", median=0, erode=erode)
        eb = eroded_brain(brain, erode)
        assert (res[~eb] == 0).all() and (res[eb] > 0).all()


def test_median_removes_isolated_pixel_keeps_blob():
    brain = np.ones((16, 16), np.uint8)
    x = np.zeros((16, 16), np.float32)
    x[3, 3] = 1.0  # isolated hot pixel
    x[8:13, 8:13] = 1.0  # a 5x5 lesion
    gz = np.zeros_like(x)
    raw = residual_map(x, gz, brain, median=0, erode=0)
    med = residual_map(x, gz, brain, median=3, erode=0)
    assert raw[3, 3] == 1.0 and med[3, 3] == 0.0
    assert med[10, 10] == 1.0


def test_median_does_not_leak_outside_the_brain():
    brain = np.ones((10, 10), np.uint8)
    brain[4, 4] = 0  # a one-pixel hole: all 8 neighbours are bright brain
    x = np.ones((10, 10), np.float32)
    res = residual_map(x, np.zeros_like(x), brain, median=3, erode=0)
    assert res[4, 4] == 0.0 and res[2, 7] == 1.0


def test_stack_matches_single_slices():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 10, 10)).astype(np.float32)
    gz = rng.uniform(-1, 1, (3, 10, 10)).astype(np.float32)
    brain = np.stack([_square_brain(10, 10, 1, 9)] * 3)
    stack = residual_map(x, gz, brain, median=3, erode=1)
    for i in range(3):
        np.testing.assert_array_equal(stack[i], residual_map(x[i], gz[i], brain[i], median=3, erode=1))
    # the filter is per slice: a slice full of ones does not leak into its neighbours
    maps = np.zeros((3, 6, 6), np.float32)
    maps[1] = 1.0
    out = median_slices(maps, 3)
    assert out[0].max() == 0 and out[2].max() == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        residual_map(np.zeros((4, 4)), np.zeros((4, 4)), np.ones((4, 4)), kind="squared")
    with pytest.raises(ValueError, match="same shape"):
        residual_map(np.zeros((4, 4)), np.zeros((5, 4)), np.ones((4, 4)))


def test_binarise_min_size():
    m = np.zeros((2, 10, 10), np.float32)
    m[0, 1, 1] = 1.0  # single pixel
    m[0, 5:8, 5:8] = 1.0  # 9 pixels
    m[1, 2:4, 2:4] = 1.0  # 4 pixels on another slice
    b0 = binarise(m, 0.5)
    assert b0.sum() == 14 and b0.dtype == bool
    b = binarise(m, 0.5, min_size=5)
    assert b[0, 1, 1] == False and b[0, 6, 6] and b[1].sum() == 0  # noqa: E712
    # 8-connectivity: a diagonal pair is one component of size 2
    d = np.zeros((5, 5))
    d[1, 1] = d[2, 2] = 1
    assert binarise(d, 0.5, min_size=2).sum() == 2
    assert binarise(m, 1.0).sum() == 0  # strictly greater than the threshold

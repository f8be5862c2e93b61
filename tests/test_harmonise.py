"""Site harmonisation: percentile landmarks matched to the healthy training subjects."""
import numpy as np
import pandas as pd
import pytest

from glio_kit.data.harmonise import LANDMARKS, harmonise_cache, landmarks, match_landmarks


def _site_slices(rng, n_subjects, contrast, offset, size=24, n_slices=3):
    """Disc brains with two tissues; a 'site' changes the contrast between them and the offset."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2 - 2) ** 2
    inner = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    imgs = np.full((n_subjects * n_slices, size, size), -1.0, np.float32)
    for i in range(len(imgs)):
        noise = 0.03 * rng.standard_normal((size, size))
        tissue = np.where(inner, 0.1 + contrast, 0.1 - contrast) + offset + noise
        imgs[i][disc] = tissue[disc]
    return imgs, np.broadcast_to(disc, imgs.shape).astype(np.uint8).copy()


def _cohort(seed=0):
    rng = np.random.default_rng(seed)
    a, ba = _site_slices(rng, 4, contrast=0.30, offset=0.0)  # site A: training + test
    b, bb = _site_slices(rng, 2, contrast=0.12, offset=0.15)  # site B: test only, lower contrast
    images, brain = np.concatenate([a, b]), np.concatenate([ba, bb])
    subjects = [f"A{i}" for i in range(4) for _ in range(3)] + [f"B{i}" for i in range(2) for _ in range(3)]
    split = ["train"] * 6 + ["test"] * 6 + ["test"] * 6
    index = pd.DataFrame(dict(row=np.arange(len(images)), subject=subjects, label=0, split=split))
    return images, brain, index


def test_match_landmarks_lands_on_the_reference_and_keeps_the_brightest_brightest():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.2, (4, 16, 16)).astype(np.float32)
    brain = np.ones_like(x, bool)
    ref = np.linspace(-0.6, 0.4, len(LANDMARKS))
    y = match_landmarks(x, brain, landmarks(x, brain), ref)
    assert np.allclose(landmarks(y, brain), ref, atol=0.02)
    lesion = x.copy()
    lesion[0, :2, :2] = x.max() + 0.3  # brighter than the 99th percentile: extended, not clamped
    z = match_landmarks(lesion, brain, landmarks(x, brain), ref)
    assert z[0, :2, :2].min() > np.percentile(z[1:], 99.9)
    outside = np.zeros_like(brain)
    assert np.array_equal(match_landmarks(x, outside, landmarks(x, brain), ref), x)  # background untouched


def test_harmonise_cache_removes_the_site_difference_from_training_subjects_only():
    images, brain, index = _cohort()
    rows = {s: g.row.to_numpy() for s, g in index.groupby("subject")}
    gap = lambda im: np.abs(landmarks(im[rows["B0"]], brain[rows["B0"]])  # noqa: E731
                            - landmarks(im[rows["A3"]], brain[rows["A3"]])).max()
    before = gap(images)
    out = images.copy()
    info = harmonise_cache(out, brain, index)
    assert before > 0.15 and gap(out) < 0.03
    ref = np.mean([landmarks(images[rows[s]], brain[rows[s]]) for s in ("A0", "A1")], axis=0)
    assert np.allclose(info["reference"], ref, atol=1e-5)  # the healthy training subjects' mean
    # test images do not move the reference
    other = images.copy()
    other[rows["B1"]] += 0.2
    assert harmonise_cache(other, brain, index)["reference"] == info["reference"]
    with pytest.raises(ValueError, match="healthy training"):
        harmonise_cache(images.copy(), brain, index.assign(split="test"))

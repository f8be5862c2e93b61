import numpy as np
import pandas as pd
import pytest

from glio_kit.detect.lesion_load import largest_component, lesion_load_scores


def ball(shape, centre, radius):
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return ((g - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius ** 2


def test_a_lesion_of_known_volume_gives_its_volume():
    lesion = ball((8, 32, 32), (4, 16, 16), 3)
    assert largest_component(lesion) == int(lesion.sum())
    # a second, smaller object does not add to the load: the largest component counts
    other = ball((8, 32, 32), (4, 4, 4), 1.5)
    assert largest_component(lesion | other) == int(lesion.sum())


def test_scattered_single_pixels_give_none():
    mask = np.zeros((8, 32, 32), bool)
    mask[::2, ::3, ::3] = True  # a lattice of single voxels, none touching another
    assert mask.sum() > 100 and largest_component(mask) == 1
    assert largest_component(mask, min_size=3) == 0
    assert largest_component(np.zeros((3, 4, 4), bool)) == 0


def test_a_lesion_across_consecutive_slices_is_one_component():
    mask = np.zeros((5, 10, 10), bool)
    for z in range(5):
        mask[z, 3 + (z % 2), 3:6] = True  # shifts by a pixel from slice to slice
    assert largest_component(mask) == 15


def test_shape_is_checked():
    with pytest.raises(ValueError, match="slices, height, width"):
        largest_component(np.zeros((4, 4), bool))


def test_subject_scores_follow_slice_order_and_threshold():
    maps = np.zeros((6, 8, 8), np.float32)
    maps[[0, 2], 2:5, 2:5] = 0.9   # subject a: two slices, adjacent in slice_index (rows 0 and 2)
    maps[4, 0, 0] = 0.9            # subject b: one pixel
    info = pd.DataFrame(dict(subject=["a", "b", "a", "b", "a", "b"], label=[1, 0, 1, 0, 1, 0],
                             split="test", slice_index=[10, 10, 11, 11, 12, 12]))
    out = lesion_load_scores(maps, info, threshold=0.5, min_size=2).set_index("subject")
    assert out.loc["a", "score"] == 18 and out.loc["b", "score"] == 0
    assert list(out.columns) == ["label", "split", "score"]

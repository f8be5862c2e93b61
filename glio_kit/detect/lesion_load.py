"""A subject score that looks where the lesion is: the largest 3-D connected component of the
thresholded residual across a subject's consecutive slices (beyond the paper).

The paper's subject score is the mean of its slices' anomaly scores, so a tumour in a few of a
subject's slices is diluted by the many slices the generator reproduces well, and a healthy
brain the generator reproduces loosely scores high everywhere. A tumour is one connected
object that extends over neighbouring slices; generator misfit is scattered. So: threshold
the residual map (at a pixel threshold fixed on healthy validation subjects), join the
above-threshold pixels into 3-D components through the subject's slice stack, and score the
subject by the size of its largest component, in voxels of the slice cache.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

#: 3-D neighbourhood: faces, edges and corners (26-connectivity), so a lesion whose outline
#: moves by a pixel between slices stays one component.
STRUCTURE = np.ones((3, 3, 3), bool)


def largest_component(mask, min_size: int = 1) -> int:
    """Voxels in the largest 3-D connected component of ``mask``.

    mask : (S, H, W) bool, one subject's slices in axial order.
    min_size : components smaller than this count as nothing (0 is returned when none is
        this large), so scattered single pixels never make a lesion.
    Returns an int >= 0 (voxels of the slice cache).
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slices, height, width), got shape {mask.shape}")
    if not mask.any():
        return 0
    labels, n = ndimage.label(mask, structure=STRUCTURE)
    sizes = np.bincount(labels.ravel())[1:]
    best = int(sizes.max()) if n else 0
    return best if best >= max(1, int(min_size)) else 0


def lesion_load_scores(maps, info: pd.DataFrame, threshold: float, min_size: int = 1) -> pd.DataFrame:
    """One lesion-load score per subject from its residual maps.

    maps : (M, H, W) float, residual maps (0 outside the eroded brain), row ``i`` belongs to
        ``info.iloc[i]``; a memory map is read one subject at a time.
    info : ``subject``, ``label``, ``split`` and ``slice_index`` per row of ``maps``.
    threshold : pixel threshold (from healthy validation data, never from test data).
    Returns ``subject, label, split, score`` with ``score`` the largest component in voxels.
    """
    info = info.reset_index(drop=True)
    rows = []
    for subject, g in info.groupby("subject", sort=False):
        order = g.sort_values("slice_index").index.to_numpy()
        stack = np.asarray(maps[order]) > threshold  # (slices, H, W) in axial order
        rows.append(dict(subject=subject, label=int(g["label"].iloc[0]), split=g["split"].iloc[0],
                         score=float(largest_component(stack, min_size))))
    return pd.DataFrame(rows, columns=["subject", "label", "split", "score"])

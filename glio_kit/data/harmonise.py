"""Site harmonisation beyond the paper's I / SD(I): percentile landmarks (Nyúl-style).

The paper divides each scan by its SD; two scanners with different contrast between tissues
still give different intensity distributions after that, and a detector trained on one site's
healthy brains sees the other site as "anomaly". Landmark matching (Nyúl & Udupa 1999; Nyúl,
Udupa & Zhang 2000, "New variants of a method of MRI scale standardization") maps each subject's
in-brain intensity percentiles :data:`LANDMARKS` piecewise-linearly onto a reference: the mean
landmarks of the healthy **training** subjects (never validation or test ones). Beyond the
outer landmarks the end segments are extended linearly, not clamped, so a lesion brighter than
the subject's 99th percentile stays brighter than everything else.

Off by default (the paper's profile); the knob ``harmonisation`` turns it on (a lever of the
lever table).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..run.config import HARMONISATIONS

__all__ = ["LANDMARKS", "HARMONISATIONS", "landmarks", "match_landmarks", "harmonise_cache"]

#: In-brain percentiles matched (the standard deciles plus the 1st and 99th).
LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def landmarks(images, brain) -> np.ndarray:
    """(L,) float64: the :data:`LANDMARKS` percentiles of ``images`` inside ``brain`` (any shape)."""
    values = np.asarray(images, dtype=np.float64)[np.asarray(brain, bool)]
    if values.size == 0:
        raise ValueError("no brain pixels to take intensity landmarks from")
    return np.percentile(values, LANDMARKS)


def match_landmarks(images, brain, own: np.ndarray, reference: np.ndarray, window=(-1.0, 1.0)) -> np.ndarray:
    """Map ``images`` so that their landmarks ``own`` land on ``reference``.

    images, brain : (..., H, W) one subject's slices and masks; own, reference : (L,) increasing.
    Piecewise linear between landmarks, linear beyond the outer ones (the end segments' slopes);
    background (outside ``brain``) is left as it is; the result is clipped to ``window``.
    Returns float32 of ``images``' shape.
    """
    x = np.asarray(images, dtype=np.float64)
    own = np.maximum.accumulate(np.asarray(own, dtype=np.float64))  # ties (flat histograms) stay monotone
    own = own + np.arange(own.size) * 1e-9
    ref = np.asarray(reference, dtype=np.float64)
    y = np.interp(x, own, ref)
    lo_slope = (ref[1] - ref[0]) / (own[1] - own[0])
    hi_slope = (ref[-1] - ref[-2]) / (own[-1] - own[-2])
    y = np.where(x < own[0], ref[0] + (x - own[0]) * lo_slope, y)
    y = np.where(x > own[-1], ref[-1] + (x - own[-1]) * hi_slope, y)
    out = np.where(np.asarray(brain, bool), np.clip(y, *window), x)
    return out.astype(np.float32)


def harmonise_cache(images, brain, index: pd.DataFrame) -> dict:
    """Landmark-match every subject of a slice cache in place.

    images : (N, H, W) float32 array or writable memory map in [-1, 1]; brain : (N, H, W) masks;
    index : one row per slice with ``row``, ``subject``, ``label``, ``split``. The reference is
    the mean landmarks of the healthy training subjects (split ``train``, label 0).
    Returns ``{"landmarks": LANDMARKS, "reference": [...]}`` (written to ``prep.json``).
    """
    groups = {s: g["row"].to_numpy() for s, g in index.groupby("subject", sort=False)}
    train = index[(index["split"] == "train") & (index["label"] == 0)]["subject"].unique()
    if len(train) == 0:
        raise ValueError("harmonisation needs healthy training subjects for its reference")
    own = {s: landmarks(images[rows], brain[rows]) for s, rows in groups.items()}
    reference = np.mean([own[s] for s in train], axis=0)
    for s, rows in groups.items():
        images[rows] = match_landmarks(images[rows], brain[rows], own[s], reference)
    return dict(landmarks=list(LANDMARKS), reference=[round(float(v), 6) for v in reference])

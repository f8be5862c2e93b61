"""The intensity baseline, and the residual-area detector: one rule, two uses.

The rule (:func:`area_detector`): a lesion map is thresholded at a high percentile of its
in-brain values on healthy validation slices, and a subject's score is the mean over its
slices of the share of in-brain pixels above that threshold; the subject threshold comes
from the healthy validation subjects (:func:`~glio_kit.evaluate.metrics.threshold_at_fpr`).

* :func:`intensity_baseline` applies it to the normalised T2 intensity itself ("bright on
  T2 = lesion", :func:`intensity_map`): a simple, honest baseline a model has to beat.
* The table of detectors (:mod:`glio_kit.detect.detectors`) applies it to the DCGAN's saved
  residual maps too: the *residual-area* detector, beyond the paper.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..errors import GlioKitError
from ..evaluate.metrics import pixel_threshold_from_healthy, threshold_at_fpr
from .residuals import eroded_brain, residual_map

#: ``maps(positions) -> (map (n, H, W) float32, in_brain (n, H, W) bool)``
MapSource = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def intensity_map(images, brain, erode: int = 1, median: int = 0) -> np.ndarray:
    """The baseline's pixel map: the normalised T2 intensity itself inside the eroded brain.

    images : (N, H, W) (or (H, W)) in the generator's range [-1, 1]; brain : masks of that shape.
    Returns float32 of that shape: ``x + 1`` (in [0, 2], the same units as residuals), 0
    outside the eroded brain, i.e. :func:`~glio_kit.detect.residuals.residual_map` against a
    reconstruction that is all background (``G(z) = -1``).
    """
    return residual_map(images, -1.0, brain, kind="positive", median=median, erode=erode)


def area_detector(maps: MapSource, info: pd.DataFrame, percentile: float = 99.0, fpr: float = 0.05,
                  chunk: int = 512) -> dict:
    """Subject scores from any lesion map by one rule: the share of in-brain pixels above a
    pixel threshold taken from healthy validation slices, averaged over a subject's slices.

    maps : callable ``maps(positions) -> (map (n, H, W), in_brain bool (n, H, W))`` for
        positions (0-based, into ``info``); called in chunks of ``chunk`` slices.
    info : DataFrame with ``subject, label, split`` per slice (M rows); ``split == "val"``
        and ``label == 0`` calibrate both thresholds.
    percentile : pixel threshold = this percentile of the healthy validation maps.
    fpr : subject threshold: at most this share of healthy validation subjects above it.
    Returns dict: ``pixel_threshold``, ``threshold`` (subject level), ``slice_scores``
    (DataFrame subject, label, split, score; M rows) and ``subject_scores`` (DataFrame
    subject, label, split, score).
    """
    n = len(info)
    val = np.flatnonzero(((info["split"] == "val") & (info["label"] == 0)).to_numpy())
    if val.size == 0:
        raise GlioKitError("no healthy validation slices among the rows to calibrate on; "
                           "prepare the cohort with val_fraction > 0")
    vmaps, vbrain = maps(val)
    pix_thr = pixel_threshold_from_healthy(vmaps, vbrain, percentile)
    frac = np.empty(n, dtype=float)
    for i in range(0, n, chunk):
        m, inb = maps(np.arange(i, min(i + chunk, n)))
        frac[i:i + chunk] = ((m > pix_thr) & inb).sum(axis=(1, 2)) / np.maximum(inb.sum(axis=(1, 2)), 1)
    slices = pd.DataFrame(dict(subject=info["subject"].astype(str).to_numpy(), label=info["label"].to_numpy(),
                               split=info["split"].to_numpy(), score=frac))
    subj = (slices.groupby("subject", sort=False)
            .agg(label=("label", "first"), split=("split", "first"), score=("score", "mean")).reset_index())
    healthy_val = subj[(subj.split == "val") & (subj.label == 0)]
    thr = threshold_at_fpr(healthy_val["score"], fpr)
    return dict(pixel_threshold=pix_thr, threshold=thr, slice_scores=slices, subject_scores=subj)


def intensity_baseline(cache, rows=None, erode: int = 1, median: int = 0, percentile: float = 99.0,
                       fpr: float = 0.05, chunk: int = 512) -> dict:
    """A simple, honest baseline in the same harness: "bright on T2 = lesion".

    Glioma and edema are hyperintense on T2, so the normalised intensity itself is a lesion
    map (:func:`intensity_map`), scored by :func:`area_detector`. CSF and the ventricles are
    bright on T2 too, which is exactly why this is a baseline and not a method: a model has
    to beat it to be useful.

    cache : a :class:`~glio_kit.data.preprocess.SliceCache`.
    rows : (M,) cache rows to score (default: every validation and test slice); those with
        split ``val`` and label 0 calibrate both thresholds.
    erode, median : the brain erosion and median filter of the map (pass the residual maps'
        erosion, so both detectors see the same pixels).
    Returns :func:`area_detector`'s dict, with ``row`` first in ``slice_scores``, plus
    ``erode``, ``median`` and ``percentile``.
    """
    idx = cache.index
    if rows is None:
        rows = np.flatnonzero(idx["split"].isin(["val", "test"]).to_numpy())
    rows = np.asarray(rows, dtype=int)

    def maps(sel):
        r = rows[sel]
        brain = cache.brain[r]
        return intensity_map(cache.images[r], brain, erode, median), eroded_brain(brain, erode)

    out = area_detector(maps, idx.iloc[rows], percentile, fpr, chunk)
    out["slice_scores"].insert(0, "row", rows)
    out.update(erode=int(erode), median=int(median), percentile=float(percentile))
    return out

"""The table of subject scores: every way the kit turns a subject's scored slices into one number.

:data:`DETECTORS` is the one list of subject scores. The evaluation step (``metrics.json``,
``metrics.md``), every metrics figure, the batch summary, the run report, the settings'
``recommended_score`` and ``experiments/score_ablation.py`` iterate over it; none names a
detector itself. A new subject score is one :class:`Detector` entry here plus its test.

Each entry's ``subject_scores`` is a pure function of what the score step saved
(:class:`ScoredSlices`: the slice table, the residual maps, the slice cache's images and brain
masks, the score step's settings) and the evaluation's settings; it returns one score per
subject (:class:`SubjectScores`). The harness around it is the same for all: the subject
threshold from the healthy validation subjects, metrics and bootstrap CIs on the test subjects
(:func:`glio_kit.evaluate.evaluation.detection_block`).

In ``metrics.json`` the first entry (the paper's score) is the top level, every other entry
the block named after it (``residual_area``, ``lesion_load``, ``baseline``); :func:`block`
finds it.

This module imports nothing from ``glio_kit.run``: the settings' ``recommended_score`` takes
its allowed values from here (:func:`recommendable`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from ..evaluate.metrics import pixel_threshold_from_healthy
from .atlas import HealthyAtlas, healthy_atlas
from .baseline import area_detector, intensity_map
from .lesion_load import lesion_load_scores
from .residuals import eroded_brain
# REDUCTIONS, reduce_subjects: re-exported, the table's users find them here
from .subject_scores import REDUCTIONS, SLICE_REDUCTIONS, reduce_subjects, subject_anomaly_scores  # noqa: F401

#: Where a detector comes from: the paper's method, the kit's own beyond it, or a baseline
#: (a baseline is never the recommended score).
ORIGINS = ("paper", "beyond the paper", "baseline")
#: How the score step made its residual maps, by ``residual_kind``.
RESIDUAL_FORMULAS = {"positive": "max(x - G(z), 0)", "absolute": "|x - G(z)|"}
#: Top-level keys of ``metrics.json`` that are not detectors: no other detector than the first
#: (whose block is the top level) may be named so.
RESERVED = ("paper", "params", "site_shift", "recommended", "residual", "roc", "ci", "confusion", "note")


# ------------------------------------------------------------------ what detectors read
@dataclass(frozen=True)
class ScoredSlices:
    """What the score step saved, as every detector reads it (nothing is recomputed).

    Attributes
    ----------
    slices : DataFrame, M rows
        The score step's slice table (``score/slice_scores.csv``): ``row`` (cache row), ``k``
        (row of ``maps``), ``subject``, ``label``, ``split``, ``slice_index``, ``A`` ...
    maps : array-like, shape (M', H, W), float32
        The saved residual maps (generator units [0, 2], 0 outside the eroded brain); row ``k``.
    cache : SliceCache
        The run's slice cache: ``images`` (N, H, W) in [-1, 1], ``brain`` and ``lesion`` masks.
    score : ScoreSettings
        The score step's settings (``erode``, ``residual_kind``, ``subject_reduction``, ``topk``).
    subjects : DataFrame or None
        The score step's subject table (``subject, label, split, score``, made with
        ``score.subject_reduction``); None: reduce the slice table here.
    """

    slices: pd.DataFrame
    maps: object
    cache: object
    score: object
    subjects: pd.DataFrame | None = None

    def healthy_val(self) -> np.ndarray:
        """Positions (into ``slices``) of the healthy validation slices: they calibrate."""
        return np.flatnonzero(((self.slices["split"] == "val") & (self.slices["label"] == 0)).to_numpy())

    def test_tumour(self) -> np.ndarray:
        """Positions (into ``slices``) of the test tumour slices."""
        return np.flatnonzero(((self.slices["split"] == "test") & (self.slices["label"] == 1)).to_numpy())

    def residual(self, positions) -> np.ndarray:
        """(n, H, W) float32: the saved residual maps of the slices at ``positions``."""
        return np.asarray(self.maps[self.slices["k"].to_numpy()[positions]])

    def raw_brain(self, positions) -> np.ndarray:
        """(n, H, W): the cache's brain masks of the slices at ``positions``."""
        return np.asarray(self.cache.brain[self.slices["row"].to_numpy()[positions]])

    def brain(self, positions) -> np.ndarray:
        """(n, H, W) bool: the brain eroded by ``score.erode`` pixels (the pixels the maps cover)."""
        return eroded_brain(self.raw_brain(positions), self.score.erode)

    def images(self, positions) -> np.ndarray:
        """(n, H, W) float32 in [-1, 1]: the normalised T2 slices at ``positions``."""
        return np.asarray(self.cache.images[self.slices["row"].to_numpy()[positions]])

    def slab_positions(self, positions) -> np.ndarray:
        """(n,) int: each slice's position in its subject's slab (the cache's ``slice_pos``)."""
        return self.cache.index["slice_pos"].to_numpy()[self.slices["row"].to_numpy()[positions]]

    @cached_property
    def atlas(self) -> HealthyAtlas:
        """The voxel-wise healthy atlas of the cache's healthy training slices (made once)."""
        return healthy_atlas(self.cache)


@dataclass
class SubjectScores:
    """What a detector returns.

    Attributes
    ----------
    subjects : DataFrame
        One row per subject: ``subject, label, split, score`` (validation and test).
    info : dict
        Entries of the detector's ``metrics.json`` block before its metrics (``method``,
        ``description`` and what else it was made with).
    slices : DataFrame or None
        Per-slice scores, where the rule has them (written beside the subject scores).
    """

    subjects: pd.DataFrame
    info: dict = field(default_factory=dict)
    slices: pd.DataFrame | None = None


# ------------------------------------------------------------------- the entries
@dataclass(frozen=True)
class Detector:
    """One subject score of the table.

    Attributes
    ----------
    name : str
        Its key in ``metrics.json``, the files and ``recommended_score``.
    what : str
        One line saying what it is (the report and ``metrics.md`` show it).
    origin : str
        One of :data:`ORIGINS`.
    colour : str
        Its matplotlib colour in every figure.
    label : str
        Its name in figure legends (and the batch summary's figure).
    column : str
        Its ``metrics.md`` column header.
    unit : str
        What its score counts (the x axis of its score distribution figure).
    subject_scores : callable
        ``(ScoredSlices, EvaluateSettings) -> SubjectScores``, pure.
    pixel_map : str
        Key of :data:`PIXEL_MAPS`: the pixel map the detector reads ("" none). Where the test
        tumours have lesion masks, the map is scored pixel by pixel once, in the block of the
        first detector that reads it.
    variants : tuple of (str, dict)
        What ``experiments/score_ablation.py`` tries: a row label and settings overrides
        (fields of the score or the evaluation settings); empty: one row, as configured.
    percentile : str
        The evaluation knob whose percentile of healthy validation pixels thresholds its pixel map
        (its pixel metrics use the same).
    """

    name: str
    what: str
    origin: str
    colour: str
    label: str
    column: str
    unit: str
    subject_scores: Callable[[ScoredSlices, object], SubjectScores]
    pixel_map: str = ""
    variants: tuple = ()
    percentile: str = "pixel_percentile"

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"detector {self.name!r}: origin must be one of {ORIGINS}, got {self.origin!r}")
        if not self.name.isidentifier():
            raise ValueError(f"detector name {self.name!r} is not an identifier")


def residual_settings(score) -> dict:
    """The ``residual`` entry of ``metrics.json``: how the score step made the maps."""
    return dict(kind=score.residual_kind, median=int(score.median_filter), erode=int(score.erode))


def paper_score(data: ScoredSlices, settings) -> SubjectScores:
    """The paper: the mean of the subject's slice anomaly scores A (:func:`subject_anomaly_scores`;
    max / top-k or the old mean of scaled A, as the score step's ``subject_reduction`` says); the
    score step's own subject table when it is given."""
    s = data.score
    subj = (data.subjects if data.subjects is not None
            else subject_anomaly_scores(data.slices, s.subject_reduction, s.topk))
    return SubjectScores(subj, dict(method="dcgan", reduction=s.subject_reduction,
                                    residual=residual_settings(s)))


def _area_rule(data: ScoredSlices, settings, pixel_map: str, percentile: float) -> dict:
    """:func:`~.baseline.area_detector` on one of :data:`PIXEL_MAPS`."""
    def maps(positions):
        return PIXEL_MAPS[pixel_map](data, positions), data.brain(positions)

    return area_detector(maps, data.slices, percentile, settings.fpr_target)


def _lesion_load_rule(data: ScoredSlices, settings, pixel_map: str, percentile: float) -> tuple[pd.DataFrame,
                                                                                                 float]:
    """:func:`~.lesion_load.lesion_load_scores` on one of :data:`PIXEL_MAPS`, its pixel threshold
    the ``percentile`` of the healthy validation slices' map."""
    read = PIXEL_MAPS[pixel_map]
    val = data.healthy_val()
    pix = pixel_threshold_from_healthy(read(data, val), data.brain(val), percentile)
    ordered = read(data, np.arange(len(data.slices)))  # (M, H, W) in the rows of the slice table
    return lesion_load_scores(ordered, data.slices, pix, settings.lesion_min_size), pix


def residual_area_score(data: ScoredSlices, settings) -> SubjectScores:
    """The saved residual maps scored by the baseline's rule (:func:`~.baseline.area_detector`)."""
    area = _area_rule(data, settings, "residual", settings.pixel_percentile)
    info = dict(method="dcgan-residual-area",
                description=f"DCGAN {data.score.residual_kind} residual in the eroded brain, "
                            "scored by the baseline's rule")
    return SubjectScores(area["subject_scores"], info, area["slice_scores"])


def _lesion_load_info(what: str, pix: float, settings) -> dict:
    return dict(pixel_threshold=pix, min_size=int(settings.lesion_min_size),
                description=f"largest 3-D connected component (voxels of the slice cache) of {what} above "
                            f"the healthy-validation pixel threshold, across the subject's slices; "
                            f"components under {settings.lesion_min_size} voxels count as none")


def lesion_load_score(data: ScoredSlices, settings) -> SubjectScores:
    """The largest 3-D connected component of the saved residual maps above the
    healthy-validation pixel threshold, per subject (:mod:`~.lesion_load`)."""
    subj, pix = _lesion_load_rule(data, settings, "residual", settings.pixel_percentile)
    info = _lesion_load_info(f"the DCGAN's {data.score.residual_kind} residual", pix, settings)
    return SubjectScores(subj, dict(method="dcgan-lesion-load", **info))


def intensity_score(data: ScoredSlices, settings) -> SubjectScores:
    """The intensity baseline done right: the normalised T2 itself, median-filtered and eroded like
    the residual maps, its pixel threshold the ``intensity_percentile`` of healthy validation pixels
    (a knob of its own, chosen on development seeds: edema lies below CSF on T2, so the residual's
    99th percentile -- CSF -- would blind it), scored by the area rule."""
    area = _area_rule(data, settings, "intensity", settings.intensity_percentile)
    info = dict(method="intensity", pixel_threshold=area["pixel_threshold"],
                description=f"normalised T2 intensity in the eroded brain; subject score = mean over slices "
                            f"of the fraction of in-brain pixels above the "
                            f"{settings.intensity_percentile:g}th "
                            f"percentile of healthy validation pixels")
    return SubjectScores(area["subject_scores"], info, area["slice_scores"])


def atlas_area_score(data: ScoredSlices, settings) -> SubjectScores:
    """The voxel-wise healthy atlas's ``|z|`` (:mod:`~.atlas`) scored by the area rule."""
    area = _area_rule(data, settings, "atlas", settings.pixel_percentile)
    info = dict(method="atlas-area", pixel_threshold=area["pixel_threshold"], sd_floor=data.atlas.sd_floor,
                description="|z| against the mean and SD of the healthy training slices at each slab "
                            "position and pixel; " + _AREA)
    return SubjectScores(area["subject_scores"], info, area["slice_scores"])


def atlas_lesion_load_score(data: ScoredSlices, settings) -> SubjectScores:
    """The voxel-wise healthy atlas's ``|z|`` (:mod:`~.atlas`) scored by the lesion-load rule."""
    subj, pix = _lesion_load_rule(data, settings, "atlas", settings.pixel_percentile)
    info = _lesion_load_info("the healthy atlas's |z|", pix, settings)
    return SubjectScores(subj, dict(method="atlas-lesion-load", sd_floor=data.atlas.sd_floor, **info))


def _intensity_pixels(data: ScoredSlices, positions) -> np.ndarray:
    return intensity_map(data.images(positions), data.raw_brain(positions), data.score.erode,
                         data.score.median_filter)


def _atlas_pixels(data: ScoredSlices, positions) -> np.ndarray:
    return data.atlas.z_map(data.images(positions), data.slab_positions(positions), data.raw_brain(positions),
                            data.score.erode, data.score.median_filter)


#: Pixel maps a detector can be scored on pixel by pixel: ``(ScoredSlices, positions) -> (n, H, W)``.
PIXEL_MAPS: dict[str, Callable] = {"residual": ScoredSlices.residual, "intensity": _intensity_pixels,
                                   "atlas": _atlas_pixels}

_AREA = "mean over slices of the share of in-brain pixels above the healthy-validation pixel threshold"

#: The table (in the order of the ``metrics.md`` columns and the figures' legends).
DETECTORS: dict[str, Detector] = {d.name: d for d in (
    Detector("paper", what="mean of the slice anomaly scores A = (1-lambda) R + lambda D over the subject's "
                           "slices, then scaled to (0, 1) on healthy validation subjects (max or top-k "
                           "with subject_reduction)",
             origin="paper", colour="C0", label="DCGAN, paper's score", column="kit: paper's score",
             unit="subject score (mean of slice scores A)", subject_scores=paper_score, pixel_map="residual",
             variants=(("paper: mean of slice A", dict(subject_reduction="mean")),
                       ("old: mean of slice-scaled A", dict(subject_reduction="mean_of_scaled")),
                       ("max of slice A", dict(subject_reduction="max")),
                       ("top-3 slices of A", dict(subject_reduction="topk", topk=3)))),
    Detector("residual_area", what="the saved residual maps scored by the baseline's rule: " + _AREA,
             origin="beyond the paper", colour="C2", label="DCGAN, residual area",
             column="kit: residual area",
             unit="subject score (mean share of in-brain pixels above threshold)",
             subject_scores=residual_area_score, pixel_map="residual", variants=(("residual area", {}),)),
    Detector("lesion_load", what="largest 3-D connected component of the above-threshold residual across the "
                                 "subject's slices, in voxels",
             origin="beyond the paper", colour="C4", label="DCGAN, lesion load", column="kit: lesion load",
             unit="largest 3-D component above the pixel threshold (voxels)",
             subject_scores=lesion_load_score, pixel_map="residual",
             variants=tuple((f"lesion load (min {n} voxels)", dict(lesion_min_size=n))
                            for n in (1, 5, 20))),
    Detector("baseline", what="normalised T2 intensity ('bright on T2 = lesion') above a percentile of "
                              "healthy validation pixels (intensity_percentile), scored by the same rule: "
                              + _AREA,
             origin="baseline", colour="C1", label="intensity baseline", column="baseline",
             unit="subject score (mean share of in-brain pixels above threshold)",
             subject_scores=intensity_score, pixel_map="intensity", percentile="intensity_percentile",
             variants=(("intensity baseline", {}),
                       *((f"intensity baseline ({q:g}th percentile)", dict(intensity_percentile=q))
                         for q in (80.0, 90.0, 95.0, 99.0)))),
    Detector("atlas_area", what="voxel-wise healthy atlas: |z| of each pixel against the mean and SD of the "
                                "healthy training slices at its slab position, scored by the same rule: "
                                + _AREA,
             origin="baseline", colour="C5", label="healthy atlas |z|, area", column="atlas: area",
             unit="subject score (mean share of in-brain pixels above threshold)",
             subject_scores=atlas_area_score, pixel_map="atlas",
             variants=(("atlas |z|, area", {}),)),
    Detector("atlas_lesion_load", what="voxel-wise healthy atlas |z|, scored by the lesion-load rule: "
                                       "largest 3-D component above the healthy-validation pixel threshold, "
                                       "in voxels",
             origin="baseline", colour="C6", label="healthy atlas |z|, lesion load",
             column="atlas: lesion load",
             unit="largest 3-D component above the pixel threshold (voxels)",
             subject_scores=atlas_lesion_load_score, pixel_map="atlas",
             variants=(("atlas |z|, lesion load", {}),)),
)}


def top_level() -> Detector:
    """The detector whose block is the top level of ``metrics.json`` (the paper's score)."""
    return next(iter(DETECTORS.values()))


def block(result: dict, detector: Detector | str) -> dict:
    """A detector's block of ``metrics.json`` (``{}`` when the file has none)."""
    name = detector if isinstance(detector, str) else detector.name
    return result if name == top_level().name else (result.get(name) or {})


def recommendable() -> tuple[str, ...]:
    """Names ``recommended_score`` may take: every detector but the baselines."""
    return tuple(d.name for d in DETECTORS.values() if d.origin != "baseline")


@contextmanager
def registered(detector: Detector):
    """Add ``detector`` to the table for the ``with`` block (tests; a try-out in a notebook)."""
    if detector.name in DETECTORS or detector.name in RESERVED:
        raise ValueError(f"a detector named {detector.name!r} is already in the table or a key of "
                         f"metrics.json ({', '.join(RESERVED)})")
    DETECTORS[detector.name] = detector
    try:
        yield detector
    finally:
        DETECTORS.pop(detector.name, None)

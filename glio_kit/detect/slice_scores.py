"""The anomaly score of a mapped slice and its scaling to [0, 1] (step 03).

**Scores** (per slice): ``R = mean |x - G(z)|`` over pixels, ``D = mean |f(x) - f(G(z))|``
over feature elements and ``A_raw = (1 - lam) * R + lam * D`` (:func:`anomaly_score`; means
rather than the sums of the loss, so the score does not depend on the image size). The paper reports ``A`` in
[0, 1]; the kit maps ``A_raw`` monotonically with a map fitted on the healthy *validation*
slices only (never on test slices): ``A = sigmoid((A_raw - mean_val) / sd_val)``
(:class:`ScoreScaling`). A min-max rescaling with clipping would send every test slice more
abnormal than the validation maximum to exactly 1 and lose the ranking of the most abnormal
slices; the logistic map stays inside (0, 1) and keeps the order of all slices (in float64
up to about 37 validation SDs above the mean, where it rounds to 1.0; ``A_raw`` is kept beside
``A`` for exact rankings).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["anomaly_score", "ScoreScaling", "fit_scaling"]


def anomaly_score(R, D, lam: float):
    """The unscaled anomaly score ``A_raw = (1 - lam) * R + lam * D`` (the paper's ``A``).

    R : (N,) residual scores, mean ``|x - G(z)|`` per pixel (generator units).
    D : (N,) discrimination scores, mean ``|f(x) - f(G(z))|`` per feature element.
    lam : weight of the discrimination score (paper: 0.1).
    Returns (N,) of R's type (NumPy array or torch tensor), the same weighting as the mapping
    loss but of means, so it does not depend on the image size.
    """
    return (1 - lam) * R + lam * D


@dataclass
class ScoreScaling:
    """``A = sigmoid((A_raw - mean_val) / sd_val)``, fitted on healthy validation slices only.

    Monotone (keeps the ranking of the values it maps, hence their AUC), inside (0, 1), 0.5 at
    the healthy validation mean. A mean of mapped values is *not* in the order of the mean of the
    raw ones: subject scores reduce ``A_raw`` first and are mapped after, with a scaling fitted
    on the healthy validation subjects (:func:`~glio_kit.detect.detectors.subject_anomaly_scores`).
    Min-max scaling with clipping would put every slice above the
    validation maximum at exactly 1.
    """

    mean_val: float
    sd_val: float
    n_val: int = 0

    def __call__(self, a_raw):
        a = np.asarray(a_raw, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-(a - self.mean_val) / self.sd_val))

    def to_dict(self) -> dict:
        return dict(mean_val=float(self.mean_val), sd_val=float(self.sd_val), n_val=int(self.n_val),
                    formula="A = 1 / (1 + exp(-(A_raw - mean_val) / sd_val)), "
                            "fitted on healthy validation slices")

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def fit_scaling(a_raw_val) -> ScoreScaling:
    """The logistic map from the healthy validation slices' ``A_raw`` (and only those)."""
    a = np.asarray(a_raw_val, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("no healthy validation slices to fit the score scaling on; "
                         "the cache needs a 'val' split (val_fraction > 0)")
    mean = float(a.mean())
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    if not np.isfinite(sd) or sd <= 1e-12 * max(abs(mean), 1.0):
        sd = max(abs(mean), 1.0) * 1e-3  # degenerate validation set: still monotone, still finite
    return ScoreScaling(mean, sd, int(a.size))


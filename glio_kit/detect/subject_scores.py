"""Subject scores from slice scores: one definition, used by the score step, the detectors'
table, the exercises and the benchmarks.

:func:`reduce_subjects` is the pure reduction of one slice column (mean, max, top-k);
:func:`subject_anomaly_scores` is the paper's subject anomaly score built on it (the mean of the
slices' raw A, then the [0, 1] scaling fitted on the healthy validation subjects).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .slice_scores import fit_scaling

__all__ = ["REDUCTIONS", "SLICE_REDUCTIONS", "reduce_subjects", "subject_anomaly_scores"]

#: Pure reductions of a slice column to one number per subject (:func:`reduce_subjects`).
SLICE_REDUCTIONS = ("mean", "max", "topk")
#: Subject scores from the slice anomaly scores (:func:`subject_anomaly_scores`): ``mean`` (the
#: paper: the mean of the slices' raw A, then the [0, 1] scaling fitted on the healthy validation
#: subjects), ``max``, ``topk`` (the same order: reduce raw A, then scale), and ``mean_of_scaled``
#: (what the kit did before: the mean of the slice-scaled A; not rank-preserving, kept as a
#: variant so the ablation shows the change).
REDUCTIONS = SLICE_REDUCTIONS + ("mean_of_scaled",)


def reduce_subjects(slices: pd.DataFrame, how: str = "mean", topk: int = 3,
                    column: str = "A") -> pd.DataFrame:
    """One score per subject from its slices' ``column``.

    Parameters
    ----------
    slices : DataFrame
        One row per slice: ``subject``, ``label``, ``split`` and ``column``.
    how : {"mean", "max", "topk"}
        ``mean`` (the paper: the average anomaly score of the subject's slices), ``max``, or
        ``topk`` (mean of the ``topk`` largest; all slices when a subject has fewer).
    topk : int
        Slices the ``topk`` reduction averages.
    column : str
        The slice score to reduce.

    Returns
    -------
    DataFrame
        ``subject, label, split, score`` in the order subjects first appear.
    """
    if how not in SLICE_REDUCTIONS:
        raise ValueError(f"subject_reduction must be one of {SLICE_REDUCTIONS}, got {how!r}")
    g = slices.groupby("subject", sort=False)
    if how == "mean":
        score = g[column].mean()
    elif how == "max":
        score = g[column].max()
    else:
        k = max(1, int(topk))
        score = g[column].apply(lambda s: float(np.sort(s.to_numpy())[::-1][:k].mean()))
    out = pd.DataFrame(dict(label=g["label"].first(), split=g["split"].first(), score=score)).reset_index()
    return out[["subject", "label", "split", "score"]]


def subject_anomaly_scores(slices: pd.DataFrame, how: str = "mean", topk: int = 3) -> pd.DataFrame:
    """The subject anomaly score of the paper's detector, from its slices' raw ``A_raw``.

    The paper: A = (1 - lambda) R + lambda D is in [0, 1] and a subject's score is the mean over
    its slices. The order that keeps the ranking of subjects is: the mean of the slices' *raw*
    A, then one monotone map to (0, 1) fitted on the healthy validation *subjects*
    (:class:`~.slice_scores.ScoreScaling`). Averaging slice scores that were squashed first (the
    kit's old ``mean_of_scaled``) is not rank-preserving: 4 slices at +6 SD and 12 at 0 SD
    average 0.624, 16 slices at +1.2 SD 0.769 -- the order of the raw means is the other way.

    slices : one row per slice: ``subject``, ``label``, ``split``, ``A_raw`` (and ``A``, the
        slice-scaled score, for ``mean_of_scaled``); ``split == "val"`` with ``label == 0``
        are the healthy validation slices.
    how : one of :data:`REDUCTIONS`; topk : slices the ``topk`` reduction averages.
    Returns ``subject, label, split, score, score_raw`` (subjects in order of appearance):
    ``score`` in (0, 1), ``score_raw`` the reduced raw A (``mean_of_scaled``: the same as score).
    """
    if how not in REDUCTIONS:
        raise ValueError(f"subject_reduction must be one of {REDUCTIONS}, got {how!r}")
    if how == "mean_of_scaled":
        out = reduce_subjects(slices, "mean", topk, column="A")
        out["score_raw"] = out["score"]
        return out
    out = reduce_subjects(slices, how, topk, column="A_raw")
    healthy_val = out[(out["split"] == "val") & (out["label"] == 0)]["score"]
    out["score_raw"] = out["score"]
    out["score"] = fit_scaling(healthy_val)(out["score_raw"])  # monotone: the raw order is kept
    return out

"""Checks of the subject score, the threshold and the rates from counts (notebook 05).

References: :func:`glio_kit.detect.scoring.reduce_subjects`,
:func:`glio_kit.evaluate.metrics.threshold_at_fpr` and :func:`glio_kit.evaluate.metrics.rates`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import library as lib
from .checks import ExerciseError, call, compare, passed

__all__ = ["check_subject_scores", "check_threshold_from_healthy", "check_rates_from_counts",
           "example_slices", "example_subjects"]


def example_slices(seed: int = 0) -> pd.DataFrame:
    """A slice table ``subject, label, split, A``: 6 subjects with 1 to 9 slices each."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate((4, 1, 9, 3, 6, 2)):
        label = i % 2
        for a in rng.random(n) * 0.5 + 0.4 * label:
            rows.append(dict(subject=f"sub-{5 - i:02d}", label=label, split="test", A=float(a)))
    return pd.DataFrame(rows)


def check_subject_scores(subject_scores) -> None:
    """Check ``subject_scores(slices)`` -> a Series, subject id -> the mean of its slices' ``A``.

    ``slices`` has columns ``subject, label, split, A`` (one row per slice); subjects have 1
    to 9 slices. Compared with :func:`glio_kit.detect.scoring.reduce_subjects` (the paper's
    ``mean``).
    """
    slices = example_slices()
    ref = lib.reduce_subjects(slices, "mean", column="A").set_index("subject")["score"]
    got = call(subject_scores, slices.copy(), name="subject_scores")
    if np.ndim(got) == 0:
        raise ExerciseError("subject_scores returned one number; the paper gives one score per subject: "
                            "group the slices by subject (slices.groupby('subject')['A']).")
    got = pd.Series(got) if not isinstance(got, pd.Series) else got
    if set(map(str, got.index)) != set(ref.index):
        raise ExerciseError(f"subject_scores must be indexed by subject id ({sorted(ref.index)[:3]} ...), "
                            f"got "
                            f"index {list(got.index)[:3]} ...")
    got.index = got.index.map(str)
    alternatives = [(lib.reduce_subjects(slices, how, column="A").set_index("subject")["score"][ref.index],
                     message) for how, message in (
        ("max", "you take each subject's maximum; the paper averages the A of the subject's slices."),
        ("topk", "you average only the largest slices; the paper averages all of the subject's slices."))]
    compare(got[ref.index], ref, "subject_scores", "6 subjects with 1 to 9 slices", alternatives=alternatives)
    passed("subject_scores", 1)


def example_subjects(seed: int = 0, n_val: int = 12) -> pd.DataFrame:
    """A subject table ``subject, label, split, score``: healthy validation, healthy and tumour test."""
    rng = np.random.default_rng(seed)
    parts = [("val", 0, n_val, 0.0), ("test", 0, 8, 0.1), ("test", 1, 8, 0.6)]
    rows = [dict(subject=f"{split}-{label}-{i}", label=label, split=split, score=float(s))
            for split, label, n, shift in parts for i, s in enumerate(rng.random(n) * 0.5 + shift)]
    return pd.DataFrame(rows)


def check_threshold_from_healthy(threshold_from_healthy) -> None:
    """Check ``threshold_from_healthy(subjects, fpr)`` -> the subject threshold (a float).

    ``subjects`` has columns ``subject, label, split, score``; the threshold must come from
    the healthy validation subjects only (never the test ones), so that at most a share
    ``fpr`` of them score above it. Compared with
    :func:`glio_kit.evaluate.metrics.threshold_at_fpr` for fpr 0.1, 0.25 and the edge case 0.
    """
    cases = 0
    for seed, fpr in ((0, 0.1), (1, 0.25), (2, 0.0)):
        subjects = example_subjects(seed)
        healthy_val = subjects[(subjects.split == "val") & (subjects.label == 0)].score
        ref = lib.threshold_at_fpr(healthy_val, fpr)
        got = float(call(threshold_from_healthy, subjects.copy(), fpr, name="threshold_from_healthy"))
        moved = subjects.copy()
        moved.loc[moved.split == "test", "score"] += 10.0
        got_moved = float(call(threshold_from_healthy, moved, fpr, name="threshold_from_healthy"))
        if not math.isclose(got, got_moved, rel_tol=1e-9, abs_tol=1e-12):
            raise ExerciseError("your threshold changes when the test subjects' scores change: choose it "
                                "from the healthy validation subjects only (split == 'val', label == 0).")
        if not math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-12):
            above, allowed = int((healthy_val > got).sum()), int(math.floor(fpr * len(healthy_val) + 1e-9))
            raise ExerciseError(f"fpr={fpr}: {above} of the {len(healthy_val)} healthy validation subjects "
                                f"score above your threshold {got:.4f}; the threshold is the smallest healthy"
                                f" validation score that leaves at most {allowed} above it ({ref:.4f}).")
        cases += 1
    passed("threshold_from_healthy", cases)


def check_rates_from_counts(rates_from_counts) -> None:
    """Check ``rates_from_counts(tn, fp, fn, tp)`` -> dict with ``accuracy, precision, recall``.

    Compared with :func:`glio_kit.evaluate.metrics.rates`, including the edge case where
    nothing is called abnormal (tp + fp = 0: precision is 0 by the library's convention).
    """
    cases = ((25, 2, 3, 24), (10, 0, 5, 5), (7, 3, 1, 9), (12, 0, 4, 0))
    for tn, fp, fn, tp in cases:
        got = call(rates_from_counts, tn, fp, fn, tp, name="rates_from_counts")
        ref = lib.rates(tn, fp, fn, tp)
        if not isinstance(got, dict) or not {"accuracy", "precision", "recall"} <= set(got):
            raise ExerciseError("rates_from_counts must return a dict with the keys 'accuracy', 'precision' "
                                "and 'recall'.")
        case = f"tn={tn}, fp={fp}, fn={fn}, tp={tp}"
        if (math.isclose(got["precision"], ref["recall"]) and math.isclose(got["recall"], ref["precision"])
                and not math.isclose(ref["precision"], ref["recall"])):
            raise ExerciseError(f"rates_from_counts ({case}): precision and recall are swapped: precision = "
                                f"TP / (TP + FP), recall = TP / (TP + FN).")
        for key, formula in (("accuracy", "(TP + TN) / all"), ("precision", "TP / (TP + FP)"),
                             ("recall", "TP / (TP + FN)")):
            compare(got[key], ref[key], f"rates_from_counts['{key}']", f"{case}; {key} = {formula}")
    passed("rates_from_counts", len(cases))

"""Tests that could catch a leak: nothing fitted may read the test subjects' labels.

Permuting the labels of the test subjects (the images, masks and scores stay where they are)
must leave every threshold, the score scaling and every subject's prediction unchanged; only the
metrics, which compare predictions with labels, may move.
"""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from glio_kit.detect import detectors as D
from glio_kit.detect.subject_scores import subject_anomaly_scores
from glio_kit.evaluate import evaluation as E
from test_evaluation import S, write_scored_run


def _permute_test_labels(run, seed: int) -> dict:
    """Shuffle the labels of the test subjects in every table of the run folder; returns the map."""
    subj = pd.read_csv(run / "score" / "subject_scores.csv", dtype={"subject": str})
    test = subj[subj.split == "test"]
    rng = np.random.default_rng(seed)
    new = dict(zip(test.subject, rng.permutation(test.label.to_numpy())))
    assert any(new[s] != lab for s, lab in zip(test.subject, test.label)), "no label changed"
    for path in (run / "score" / "subject_scores.csv", run / "score" / "slice_scores.csv",
                 run / "cache" / "index.csv", run / "subjects.csv"):
        t = pd.read_csv(path, dtype={"subject": str})
        t["label"] = [new.get(s, lab) for s, lab in zip(t.subject, t.label)]
        t.to_csv(path, index=False)
    return new


def _fitted(res: dict, name: str) -> dict:
    """What a detector's block holds that is fitted (thresholds), not measured against labels."""
    b = D.block(res, name)
    return {k: b[k] for k in ("threshold", "pixel_threshold", "val_specificity") if k in b}


@pytest.mark.parametrize("seed", [0, 1])
def test_permuting_test_labels_changes_no_threshold_and_no_prediction(tmp_path, seed):
    settings = dataclasses.replace(S, n_bootstrap=50)
    a, _ = write_scored_run(tmp_path / "a", n_train=4, n_test_healthy=5, n_test_tumor=5)
    b, _ = write_scored_run(tmp_path / "b", n_train=4, n_test_healthy=5, n_test_tumor=5)
    _permute_test_labels(b, seed)
    ra, rb = E.evaluate_run(a, settings), E.evaluate_run(b, settings)
    for name in D.DETECTORS:
        assert _fitted(ra, name) == _fitted(rb, name), name
        sa, sb = E.load_detector_scores(a, name), E.load_detector_scores(b, name)
        assert np.array_equal(sa.score.to_numpy(), sb.score.to_numpy()), name  # scores: no label read
        thr = D.block(ra, name)["threshold"]
        assert np.array_equal(sa.score > thr, sb.score > thr), name  # hence the same predictions
    assert ra["recommended"]["name"] == rb["recommended"]["name"]
    assert ra["recommended"]["threshold"] == rb["recommended"]["threshold"]
    moved = [D.block(ra, n).get("subject_auc") != D.block(rb, n).get("subject_auc") for n in D.DETECTORS]
    assert any(moved)  # the metrics do read the labels: the permutation was real


def test_the_subject_scaling_reads_no_test_label():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(20):
        split, label = ("val", 0) if i < 8 else ("test", int(i % 2))
        rows += [dict(subject=f"s{i}", label=label, split=split, A_raw=float(a))
                 for a in rng.random(4) + label]
    df = pd.DataFrame(rows)
    df["A"] = df["A_raw"]
    flipped = df.assign(label=np.where(df.split == "test", 1 - df.label, df.label))
    for how in ("mean", "max", "topk", "mean_of_scaled"):
        a, b = subject_anomaly_scores(df, how), subject_anomaly_scores(flipped, how)
        assert np.array_equal(a.score, b.score), how

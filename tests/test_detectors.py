"""The table of subject scores: a detector added to it is evaluated, tabled, drawn and summarised."""
import importlib.util
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from glio_kit.detect import detectors as D
from glio_kit.evaluate import evaluation as E
from glio_kit.figures.metrics import metric_figures, plot_roc
from glio_kit.run.batch_summary import summarise
from glio_kit.run.config import EvaluateSettings
from glio_kit.run.report import report_html
from test_evaluation import S, write_scored_run

ROOT = Path(__file__).resolve().parents[1]


def toy_score(data: D.ScoredSlices, settings) -> D.SubjectScores:
    """Toy: a subject's largest slice residual R (a tumour's blob raises it)."""
    subj = D.reduce_subjects(data.slices, "max", column="R")
    return D.SubjectScores(subj, dict(method="toy", description="largest slice R"))


TOY = D.Detector("toy", "largest slice residual R of the subject", "beyond the paper", "C9", "toy detector",
                 "toy column", "max R", toy_score)


@pytest.fixture
def toy():
    with D.registered(TOY) as det:
        yield det
    assert "toy" not in D.DETECTORS  # the table is as it was after the test


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_a_registered_detector_is_everywhere(tmp_path, toy):
    run, _ = write_scored_run(tmp_path / "runs" / "a")
    res = E.evaluate_run(run, S)
    # metrics.json: its own block, through the same harness as every other detector
    on_disk = json.loads((run / "metrics.json").read_text())
    toy_block = on_disk["toy"]
    assert toy_block["method"] == "toy" and toy_block["n_test_tumor"] == 4 and toy_block["n_val_healthy"] == 4
    slices = pd.read_csv(run / "score" / "slice_scores.csv", dtype={"subject": str})
    expected = D.reduce_subjects(slices, "max", column="R")
    harness = E.detection_block(expected, S)
    for key in ("subject_auc", "accuracy", "threshold", "val_fpr"):
        assert toy_block[key] == pytest.approx(harness[key])
    assert toy_block["confusion"] == harness["confusion"]
    saved = E.load_detector_scores(run, "toy")
    assert np.allclose(saved.score, expected.score) and res["toy"]["threshold"] == toy_block["threshold"]
    # metrics.md: a column with its header and its threshold
    md = (run / "metrics.md").read_text()
    header = md.splitlines()[0]
    assert "| toy column (95% CI) |" in header
    assert header.count("|") == 2 + len(D.DETECTORS) + 1
    assert f"{toy_block['threshold']:.4g}" in md.split("subject threshold")[1].splitlines()[0]
    assert "- toy column (beyond the paper): largest slice R." in md
    # the ROC figure: its curve in its colour, its name in the legend
    fig = plot_roc(res)
    assert any(t.startswith("toy detector, AUC") for t in _legend_texts(fig))
    assert "C9" in {line.get_color() for line in fig.axes[0].lines}
    plt.close(fig)
    figs = metric_figures(run, res)
    assert "toy_score_distributions" in figs
    for f in figs.values():
        plt.close(f)
    # the batch summary: a column of its AUC, in the table and the Markdown
    runs = [dict(name="a", point=dict(lam=0.1))]
    table = summarise(tmp_path / "runs", runs, {"a": dict(status="ok", seconds=1.0)})
    assert table["toy_auc"].tolist() == [toy_block["subject_auc"]]
    assert "toy AUC" in (tmp_path / "runs" / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "runs" / "summary.csv")["toy_auc"].tolist() == [toy_block["subject_auc"]]


def test_the_table_gives_recommended_score_its_values(toy):
    assert EvaluateSettings(recommended_score="toy").recommended_score == "toy"
    with pytest.raises(ValueError, match="recommended_score"):
        EvaluateSettings(recommended_score="baseline")  # a baseline is never the recommendation


def test_recommended_toy_and_report(tmp_path, toy):
    run, _ = write_scored_run(tmp_path / "run")
    (run / "run.json").write_text("{}")
    res = E.evaluate_run(run, S.replace(recommended_score="toy"))
    assert res["recommended"]["name"] == "toy" and res["recommended"]["threshold"] == res["toy"]["threshold"]
    assert "toy column = RECOMMENDED" in (run / "metrics.md").read_text()
    page = report_html(run.path)
    assert "<code>toy</code> (recommended)" in page and "largest slice residual R of the subject" in page


def test_the_table_is_well_formed():
    names = list(D.DETECTORS)
    assert names[0] == "paper" and D.top_level().origin == "paper"
    assert len({d.colour for d in D.DETECTORS.values()}) == len(names)  # one colour each in the figures
    assert all(d.pixel_map in ("", *D.PIXEL_MAPS) for d in D.DETECTORS.values())
    assert set(D.recommendable()) == {"paper", "residual_area", "lesion_load"}
    with pytest.raises(ValueError, match="already"):
        with D.registered(D.DETECTORS["lesion_load"]):
            pass
    with pytest.raises(ValueError, match="metrics.json"):
        with D.registered(D.Detector("params", "x", "baseline", "k", "x", "x", "x", toy_score)):
            pass


def test_paper_score_reduces_the_slice_table_without_the_score_steps_one():
    slices = pd.DataFrame(dict(subject=list("aabbvvww"), label=[0, 0, 1, 1, 0, 0, 0, 0],
                               split=["test"] * 4 + ["val"] * 4, A=[0.1, 0.3, 0.5, 0.9, 0.2, 0.4, 0.1, 0.2]))
    slices["A_raw"] = slices["A"] * 10
    score = type("Score", (), dict(subject_reduction="max", topk=3, residual_kind="positive", median_filter=0,
                                   erode=1))()
    out = D.paper_score(D.ScoredSlices(slices, None, None, score), S)
    subj = out.subjects.set_index("subject")
    assert subj.score_raw.to_dict() == {"a": 3.0, "b": 9.0, "v": 4.0, "w": 2.0}
    # scaled on the validation subjects' maxima (4 and 2: mean 3, SD sqrt(2))
    assert np.allclose(subj.score, 1 / (1 + np.exp(-(subj.score_raw - 3.0) / np.sqrt(2))))
    residual = dict(kind="positive", median=0, erode=1)
    assert out.info == dict(method="dcgan", reduction="max", residual=residual)
    assert np.isclose(D.reduce_subjects(slices, "mean").score, [0.2, 0.7, 0.3, 0.15]).all()


def _ablation():
    path = ROOT / "experiments" / "score_ablation.py"
    spec = importlib.util.spec_from_file_location("score_ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_ablation_iterates_over_the_table_with_the_recorded_maps(tmp_path, toy):
    """The ablation tries every detector's variants (the toy's too) on the maps and erosion the
    score step recorded, so its rows agree with the evaluation's."""
    run, _ = write_scored_run(tmp_path / "run", residual_kind="absolute", erode=2)
    res = E.evaluate_run(run, S)
    cands = _ablation().candidates(run.path, S.pixel_percentile, S.fpr_target)
    assert {"paper: mean of slice A", "max of slice A", "top-3 slices of A", "residual area",
            "lesion load (min 5 voxels)", "intensity baseline", "toy detector"} <= set(cands)
    same = (("residual area", "residual_area"), ("lesion load (min 5 voxels)", "lesion_load"),
            ("intensity baseline", "baseline"), ("toy detector", "toy"))
    for label, name in same:
        saved = E.load_detector_scores(run, name)
        assert np.allclose(cands[label].set_index("subject").score, saved.set_index("subject").score), label
    assert res["residual_area"]["description"].startswith("DCGAN absolute")

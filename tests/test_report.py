"""The run report: one HTML page with everything, that loads nothing from the network."""
import base64
import json
import re

import pytest

from glio_kit.run.cli import main
from glio_kit.errors import GlioKitError
from glio_kit.run.report import REPORT, write_report
from glio_kit.run.steps import STEPS

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
                       "awAAAABJRU5ErkJggg==")


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    (run / "steps").mkdir(parents=True)
    (run / "figures").mkdir()
    (run / "notebooks").mkdir()
    (run / "run.json").write_text('{"glio_kit": "0.1.0"}')
    for st in STEPS[:3]:  # prep, train, score done; the others not yet
        settings = dict(seed=0, profile="smoke", **({"lam": 0.1} if st.name == "score" else {}))
        (run / "steps" / f"{st.name}.json").write_text(json.dumps(dict(
            step=st.name, status="done", settings=settings, info=dict(seconds=12.5))))
        (run / "notebooks" / st.notebook).write_text(json.dumps(dict(
            cells=[], metadata=dict(papermill=dict(duration=30.0, end_time="2026-01-01T10:00:00")))))
    for name in ("01_slice_montage", "02_loss_curves", "04_browser_snapshot", "05_roc"):
        (run / "figures" / f"{name}.png").write_bytes(PNG)
    (run / "metrics.md").write_text("| metric | paper | kit (95% CI) |\n|---|---|---|\n"
                                    "| subject AUC | 0.907 | 0.578 (0.407–0.724) |\n\n"
                                    "Thresholds: **validation**.\n")
    (run / "environment.json").write_text(json.dumps(
        {"prep": dict(glio_kit="0.1.0", torch="2.13.0", device="cpu", profile="smoke")}))
    return run


def test_one_page_with_metrics_figures_settings_timings_environment(run):
    page = write_report(run).read_text()
    assert (run / REPORT).exists()
    assert "<td>subject AUC</td>" in page and "0.578 (0.407–0.724)" in page  # the table with CIs
    assert page.count("src='data:image/png;base64,") == 4  # every figure, embedded
    assert base64.b64encode(PNG).decode() in page
    assert "residual browser of notebook 04 (a snapshot" in page
    assert "<code>lam</code></td><td>0.1</td><td>weight of the discrimination loss" in page  # settings + help
    assert "<b>residuals</b>: not run" in page
    assert "30 s" in page and "1 min 30 s" in page  # three notebooks of 30 s
    assert "<td>cpu</td>" in page and "2.13.0" in page  # device and versions the notebooks ran with
    assert "too small to learn" in page  # a smoke run says its numbers mean nothing
    assert "10.5137/1019-5149.JTN.29217-20.2" in page


def test_loads_nothing_from_the_network(run):
    page = write_report(run).read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert sources and all(s.startswith("data:") for s in sources)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(GlioKitError, match="not a glio-kit run folder"):
        write_report(tmp_path)


def test_glio_kit_report_command(run, tmp_path, capsys):
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert str(tmp_path / "r.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2

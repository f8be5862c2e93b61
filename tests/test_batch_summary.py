"""summary.md as an instructor reads it: grid values as given, a note on smoke batches."""
import json

import pandas as pd

from glio_kit.run.batch_summary import SMOKE_NOTE, summarise, summary_markdown


def _runs():
    return [dict(name=f"lam={lam}", point=dict(lam=lam, mapping="encoder")) for lam in (0.0, 0.1, 0.5)]


def test_grid_values_as_given_metrics_to_three_decimals(tmp_path):
    for r in _runs():
        (tmp_path / r["name"]).mkdir()
        (tmp_path / r["name"] / "metrics.json").write_text(json.dumps(dict(subject_auc=0.5, accuracy=0.25)))
    table = summarise(tmp_path, _runs(), {r["name"]: dict(status="ok", seconds=1.0) for r in _runs()})
    assert table.attrs["out"] == str(tmp_path)  # the CLI prints where the summary went
    rows = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| lam=")]
    assert [row.split(" | ")[1] for row in rows] == ["0.0", "0.1", "0.5"]  # not 0.000, 0.100, 0.500
    assert all(" 0.500 " in row and " 0.250 " in row for row in rows)
    assert SMOKE_NOTE not in (tmp_path / "summary.md").read_text()


def test_smoke_batch_says_its_numbers_mean_nothing():
    table = pd.DataFrame([dict(run="a", lam=0.1, subject_auc=0.5, subject_auc_lo=None, subject_auc_hi=None,
                               accuracy=0.5, accuracy_lo=None, accuracy_hi=None, precision=None, recall=None,
                               pixel_dice=None, baseline_auc=None, seconds=1.0, status="ok", error="")])
    assert summary_markdown(table, ["lam"], "smoke").startswith(SMOKE_NOTE)
    assert SMOKE_NOTE not in summary_markdown(table, ["lam"], "demo")

"""The whole chain from the command line, in the smoke profile: `glio-kit run` and `glio-kit batch`.

These execute the real notebooks with papermill (each in its own kernel), so they are the
slowest tests here (about a minute together on 2 cores)."""
import json

import pandas as pd
import pytest
import yaml

from glio_kit.run.cli import main


@pytest.fixture
def smoke_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIO_KIT_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("GLIO_KIT_RUN_DIR", raising=False)
    monkeypatch.setenv("GLIO_KIT_QUIET", "1")
    return tmp_path


def test_glio_kit_run_smoke_end_to_end(smoke_env, capsys):
    run_dir = smoke_env / "run"
    assert main(["run", "--profile", "smoke", "--run-dir", str(run_dir)]) == 0
    for name in ("01_data_prep", "02_train_dcgan", "03_scoring", "04_residuals", "05_metrics"):
        assert (run_dir / "notebooks" / f"{name}.ipynb").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("subject_auc", "accuracy", "precision", "recall", "threshold", "confusion",
                "n_test_healthy", "n_test_tumor", "pixel_dice"):
        assert key in metrics
    assert set(metrics["confusion"]) == {"tn", "fp", "fn", "tp"}
    assert sum(metrics["confusion"].values()) == metrics["n_test_healthy"] + metrics["n_test_tumor"]
    subjects = pd.read_csv(run_dir / "subjects.csv")
    assert list(subjects.columns[:3]) == ["subject", "label", "score"]
    assert len(list((run_dir / "figures").glob("*.png"))) >= 10
    assert "| metric | paper |" in capsys.readouterr().out  # the table is printed at the end
    # a second run skips every finished step
    stamp = (run_dir / "notebooks" / "03_scoring.ipynb").stat().st_mtime_ns
    assert main(["run", "--profile", "smoke", "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "notebooks" / "03_scoring.ipynb").stat().st_mtime_ns == stamp


def test_unknown_parameter_is_refused(smoke_env, capsys):
    assert main(["run", "--profile", "smoke", "--run-dir", str(smoke_env / "r"), "-p", "epoch=3"]) == 2
    assert "epoch" in capsys.readouterr().err


def test_glio_kit_batch_2x2_smoke_grid(smoke_env):
    grid = smoke_env / "grid.yaml"
    out = smoke_env / "batch"
    grid.write_text(yaml.safe_dump(dict(profile="smoke", out=str(out), base=dict(seed=0),
                                        grid=dict(lam=[0.0, 0.5], mapping=["iterative", "encoder"]))))
    assert main(["batch", str(grid), "--workers", "2"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and set(summary.status) == {"ok"}
    assert {"lam", "mapping", "subject_auc", "accuracy"} <= set(summary.columns)
    assert (out / "summary.md").exists() and (out / "summary.png").exists()
    # the four runs share one data preparation and one trained DCGAN
    trained = [p for p in out.rglob("train/checkpoints/last.pt")]
    inodes = {p.stat().st_ino for p in trained}
    assert len(inodes) == 1, f"expected one shared DCGAN, found {len(inodes)}"
    # started again: every run is already finished
    assert main(["batch", str(grid)]) == 0
    assert set(pd.read_csv(out / "summary.csv").status) == {"done earlier"}

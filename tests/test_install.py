"""The kit as a user installs it: the built wheel in a fresh virtual environment, the smoke chain
and a batch run from an empty folder, the notebooks copied out (and one exercise notebook run).

Slow (a fresh environment takes pip about 3 minutes, the chain and a one-run batch about 3 on
2 cores), so it runs only with ``GLIO_KIT_INSTALL_TEST=1``: ``make test-install``, which ``.ci/run``
calls. torch comes from ``$TORCH`` (the Makefile's pinned CPU build), everything else from the
wheel's dependencies.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from glio_kit.run.steps import STEPS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not os.environ.get("GLIO_KIT_INSTALL_TEST"),
                                reason="slow: make test-install (GLIO_KIT_INSTALL_TEST=1)")


def _run(cmd, cwd=None, env=None, timeout=900) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{out[-4000:]}"
    return out


def test_wheel_in_a_fresh_venv_runs_the_smoke_chain_from_an_empty_folder(tmp_path):
    # the wheel, with the notebooks inside
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", ROOT])
    wheel = next((tmp_path / "dist").glob("glio_kit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"glio_kit/notebooks/{s.notebook}" for s in STEPS} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"glio_kit/exercises/notebooks.py", "glio_kit/exercises/library.py"} <= set(names)

    # a fresh virtual environment: torch as the Makefile pins it, the rest from the wheel's dependencies
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    py, kit = venv / "bin" / "python", venv / "bin" / "glio-kit"
    _run([py, "-m", "pip", "install", "-q", os.environ.get("TORCH", "torch==2.13.0")])
    _run([py, "-m", "pip", "install", "-q", wheel])
    # as a new user's shell has it: none of this checkout's or this test's settings
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GLIO_KIT_") and k not in ("PYTEST_CURRENT_TEST", "PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([py, "-c", "import glio_kit.run.runner as r; print(r.notebooks_dir())"], cwd=tmp_path,
                 env=env)
    assert where.strip().startswith(str(venv)), f"not the installed package: {where}"

    # the smoke chain from an empty folder, as a new user runs it
    empty = tmp_path / "empty"
    empty.mkdir()
    env["GLIO_KIT_PROFILE"] = "smoke"  # the profile from the environment, as the README says
    out = _run([kit, "run", "--run-dir", "r"], cwd=empty, env=env)
    run = empty / "r"
    assert "profile: smoke (from $GLIO_KIT_PROFILE)" in out and "too small to learn" in out
    assert "[train DCGAN] done" in out and "[map " in out  # progress lines reach the terminal
    assert "TCP without encryption" not in out
    assert {"subject_auc", "accuracy", "confusion"} <= set(json.loads((run / "metrics.json").read_text()))
    assert (run / "report.html").stat().st_size > 100_000 and "report.html" in out
    assert (empty / "data").is_dir()  # the synthetic cohort lands beside the run, not in site-packages
    nb04 = json.loads((run / "notebooks" / "04_residuals.ipynb").read_text())
    outputs = [o for c in nb04["cells"] for o in c.get("outputs", [])]
    browser = [o for o in outputs if "residual browser" in "".join(o.get("data", {}).get("text/plain", ""))]
    assert browser and "image/png" in browser[0]["data"]  # the widget as its snapshot
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert "widgets" not in nb04["metadata"]

    # the notebooks copied out for students
    out = _run([kit, "notebooks", "mine"], cwd=empty, env=env)
    assert sorted(p.name for p in (empty / "mine").glob("*.ipynb")) == sorted(
        [s.notebook for s in STEPS] + ["00_prepare_real_data.ipynb"])

    # the example grids come from the wheel (issue 20, point 9)
    _run([kit, "examples", "grids"], cwd=empty, env=env)
    assert (empty / "grids" / "grid_smoke.yaml").exists()

    # the student version, solutions filled in: one exercise notebook runs from the installed wheel
    _run([kit, "notebooks", "ex", "--exercises", "--fill-solutions"], cwd=empty, env=env)
    _run([py, "-m", "papermill", "--cwd", empty / "ex", "-k", "python3", empty / "ex" / "05_metrics.ipynb",
          empty / "ex" / "05_done.ipynb", "-p", "run_dir", run], cwd=empty, env=env)
    done = json.loads((empty / "ex" / "05_done.ipynb").read_text())
    checks = ["".join(o.get("text", "")) for c in done["cells"] for o in c.get("outputs", [])
              if "exercise-check" in c["metadata"].get("tags", [])]
    assert len(checks) == 3 and all("\u2713" in t for t in checks), checks

    # a batch from the same folder (one grid point: its prefix and its run)
    (empty / "grid.yaml").write_text("profile: smoke\nout: b\nbase: {seed: 0}\ngrid: {lam: [0.5]}\n")
    out = _run([kit, "batch", "grid.yaml"], cwd=empty, env=env)
    assert f"summary: {empty / 'b'}/summary.md" in out and "1 runs: 1 ok" in out
    assert (empty / "b" / "lam=0.5" / "metrics.json").exists()

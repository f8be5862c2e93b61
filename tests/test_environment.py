"""What a run records of its machine, and the lock file the make targets install."""
import json
import re
from pathlib import Path

import numpy
import torch

from glio_kit.run.environment import LOCK_FILE, MACHINE, machine_info
from glio_kit.run.notebook import ENVIRONMENT, record_environment
from glio_kit.run.report import _environment
from glio_kit.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_machine_info_records_every_scientific_package_cpu_and_torch_capability():
    info = machine_info()
    assert info["numpy"] == numpy.__version__ and info["torch"] == torch.__version__
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cpu"] and info["cpu_count"] >= 1 and "scipy" in info and "scikit-learn" in info
    assert info["lock_file"] == LOCK_FILE and re.fullmatch(r"[0-9a-f]{16}", info["lock_sha256"])


def test_environment_json_and_the_report_show_the_machine(tmp_path):
    run = RunDir(tmp_path / "run")
    record_environment(run, "prep", dict(step="01_data.ipynb", profile="smoke"))
    env = json.loads((run / ENVIRONMENT).read_text())
    assert env["prep"]["profile"] == "smoke" and env[MACHINE]["numpy"] == numpy.__version__
    page = _environment(env)
    assert f"<td>numpy</td><td>{numpy.__version__}</td>" in page
    assert "<td>machine</td>" not in page  # not a row of the per-notebook table


def test_lock_file_pins_exact_versions_and_every_make_install_reads_it():
    lines = [ln for ln in (ROOT / LOCK_FILE).read_text().splitlines() if ln and not ln.startswith("#")]
    pins = dict(ln.split("==") for ln in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", ln) for ln in lines), "only exact pins"
    assert {"numpy", "scipy", "pandas", "scikit-learn", "nibabel", "nilearn", "matplotlib"} <= set(pins)
    assert "torch" not in pins  # pinned by the Makefile's TORCH, so a CUDA build can stay
    make = (ROOT / "Makefile").read_text()
    installs = [ln for ln in make.splitlines() if "pip install" in ln and "-e \"." in ln]
    assert installs and all(f"-c {LOCK_FILE}" in ln for ln in installs)

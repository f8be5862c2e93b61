"""Batch grids through the Dask engine (glio_kit.run.engine): its local cluster runs the same
scheduler and client calls as a SLURM cluster; an interrupted batch resumes; a run whose
worker dies is reported and retried; the dashboard answers; the SLURM section makes a job script.

The runs use test_batch's fake chain (it writes step records and metrics, no notebooks), but in
Dask worker processes, exactly as `glio-kit batch` hands out real runs.
"""
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from test_batch import DECLARED, FakeRunner, write_grid

from glio_kit.run import batch as B
from glio_kit.run import grid as G
from glio_kit.run.engine import Engine, check_cluster, jobqueue_cluster
from glio_kit.errors import GlioKitError

GRID = {"lam": [0, 0.5], "mapping": ["iterative", "encoder"]}
RUNS = ["lam=0_mapping=iterative", "lam=0_mapping=encoder", "lam=0.5_mapping=iterative",
        "lam=0.5_mapping=encoder"]


def fake_chain(run_dir, profile, params, notebooks=None, force=False):
    """Runs in a Dask worker: logs the call in ``control/<run>.log`` beside the batch folder,
    then behaves as ``control/BLOCK`` (lam 0.5 runs hang) and ``control/DIE`` (the lam 0.5
    encoder run kills its worker process once) say, else acts like test_batch's FakeRunner."""
    run_dir = Path(run_dir)
    batch = run_dir.parent.parent if run_dir.parent.name == B.SHARED_DIR else run_dir.parent
    control = batch.parent / "control"
    with open(control / f"{run_dir.name}.log", "a") as f:
        f.write(",".join(notebooks or []) + "\n")
    if params.get("lam") == 0.5 and (control / "BLOCK").exists():
        time.sleep(300)
    if params.get("lam") == 0.5 and params.get("mapping") == "encoder" and (control / "DIE").exists():
        (control / "DIE").unlink()
        os._exit(3)  # the worker process dies mid-run, as on a preempted node
    return FakeRunner()(str(run_dir), profile, params, notebooks=notebooks, force=force)


DRIVER = """
import signal
import sys
# a shell without job control (CI, nohup, `cmd &`) starts background commands with Ctrl-C
# ignored, and children inherit that: give the driver a terminal's Ctrl-C back
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from test_batch import DECLARED
from test_engine import fake_chain
from glio_kit.run.batch import run_batch
run_batch({grid!r}, workers=2, executor=fake_chain, declared=DECLARED, pool="dask")
"""


def calls(out: Path, name: str) -> int:
    log = out.parent / "control" / f"{name}.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_grid_runs_on_local_cluster_and_resumes_after_interruption(tmp_path, capsys):
    import dask
    import distributed  # noqa: F401 - loads its configuration defaults

    grid = write_grid(tmp_path, GRID)
    out, control = tmp_path / "batch", tmp_path / "control"
    control.mkdir()
    (control / "BLOCK").touch()
    # 1) the batch in its own process, interrupted (Ctrl-C) while the lam 0.5 runs are running
    script = DRIVER.format(tests=str(Path(__file__).parent), grid=str(grid))
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600  # generous: a loaded 2-core machine starts workers slowly
        while time.time() < deadline and not all((out / n / "metrics.json").exists() for n in RUNS[:2]):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()
            time.sleep(0.5)
        while time.time() < deadline and not (calls(out, RUNS[2]) and calls(out, RUNS[3])):
            time.sleep(0.5)
        started = calls(out, RUNS[2]) and calls(out, RUNS[3])
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(180)  # Dask shuts its cluster down after Ctrl-C; slow on a loaded machine
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    driver_log = (tmp_path / "driver.log").read_text()
    assert started, f"the lam 0.5 runs never started within the deadline:\n{driver_log}"
    assert proc.returncode != 0 and "KeyboardInterrupt" in driver_log, driver_log
    assert "dashboard http" in driver_log
    assert [B.is_finished(out / n) for n in RUNS] == [True, True, False, False]
    assert [calls(out, n) for n in RUNS] == [1, 1, 1, 1]

    # 2) started again: the finished runs are skipped; the lam 0.5 encoder run's worker dies
    (control / "BLOCK").unlink()
    (control / "DIE").touch()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        table = B.run_batch(grid, workers=2, executor=fake_chain, declared=DECLARED, pool="dask")
    st = dict(zip(table.run, table.status))
    assert st == {RUNS[0]: "done earlier", RUNS[1]: "done earlier", RUNS[2]: "ok", RUNS[3]: "failed"}
    assert table.set_index("run").loc[RUNS[3], "error"].startswith("worker lost: ")
    assert [calls(out, n) for n in RUNS] == [1, 1, 2, 2]
    printed = capsys.readouterr().out
    assert "Dask local cluster: 2 worker(s); dashboard http" in printed

    # 3) and again: only the run that was lost executes; the summary is complete
    table = B.run_batch(grid, workers=2, executor=fake_chain, declared=DECLARED, pool="dask")
    assert table.status.tolist() == ["done earlier"] * 3 + ["ok"]
    assert [calls(out, n) for n in RUNS] == [1, 1, 2, 3]
    summary = pd.read_csv(out / "summary.csv")
    assert summary.subject_auc.tolist() == pytest.approx([0.8, 0.8, 0.85, 0.85])
    # the shared prefix ran where it always does, and every run is seeded from it
    shared = out / B.SHARED_DIR / table.shared_prefix[0]
    assert all(os.path.samefile(out / n / "cache" / "images.npy", shared / "cache" / "images.npy")
               for n in RUNS)


def test_dashboard_answers():
    with Engine("dask", 1, {"kind": "local", "dashboard": "127.0.0.1:0"}, say=lambda *a: None) as eng:
        assert eng.dashboard.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(eng.dashboard, timeout=30) as resp:
            assert resp.status == 200 and b"Dask" in resp.read()
        assert eng.executor.submit(sum, [1, 2, 3]).result(timeout=60) == 6


def test_cluster_section_is_checked(tmp_path):
    assert check_cluster(None) == {}
    assert check_cluster({"workers": "3"}) == {"kind": "local", "workers": 3, "options": {}}
    for bad, match in (({"kind": "kubernetes"}, "kubernetes"), ({"workers": 0}, "at least 1"),
                       ({"kind": "address"}, "tcp://"), ({"cores": 4}, "only apply"), ("slurm", "mapping")):
        with pytest.raises(GlioKitError, match=match):
            check_cluster(bad, "g.yaml")
    p = tmp_path / "g.yaml"
    p.write_text("profile: smoke\nout: x\ncluster:\n  kind: pbs\n  cores: 2\n  memory: 4GB\n")
    assert G.load_grid(p)["cluster"] == {"kind": "pbs", "options": {"cores": 2, "memory": "4GB"}}


def test_slurm_example_makes_a_gpu_job_script():
    from glio_kit.paths import project_root

    spec = G.load_grid(project_root() / "examples" / "grid_slurm.yaml")
    assert spec["profile"] == "paper" and len(G.plan_runs(spec)) == 6
    c = spec["cluster"]
    assert c["kind"] == "slurm" and c["workers"] == 3
    cluster = jobqueue_cluster("slurm", c["options"], "127.0.0.1:0")  # no job is submitted before scale()
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH -t 08:00:00", "module load cuda",
                 "--resources glio_run=1", sys.executable):
        assert line in script, line

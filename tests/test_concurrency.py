"""Two processes at once on one run folder or one cohort (issue 19), with real processes.

Every run here is ``glio-kit run --profile smoke --notebook 01_data_prep.ipynb`` (the prep step:
a synthetic cohort of 8 subjects at 4 mm and the slice cache), each a separate process with a
real papermill kernel, about 10 s. A run folder's lock (``run.lock``, :mod:`glio_kit.run.lock`)
must make a second run, or a notebook, stop at once naming the holder; the synthetic cohort must
be written once however many runs need it (:mod:`glio_kit.filelock`)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from glio_kit.filelock import read_holder
from glio_kit.run.lock import LOCK_FILE
from glio_kit.run.runner import notebooks_dir

GLIO_KIT = Path(sys.executable).with_name("glio-kit")
CLI = [str(GLIO_KIT)] if GLIO_KIT.exists() else [sys.executable, "-m", "glio_kit.run.cli"]
PREP = ["--profile", "smoke", "--notebook", "01_data_prep.ipynb"]
GENERATED = "[synthetic cohort] started"  # the generator's first progress line
#: Files of a run folder that differ between two identical runs (times, attempt ids, versions).
VOLATILE = {"environment.json", "report.html", "notebooks/01_data_prep.ipynb", "steps/prep.json"}

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock locks are POSIX")


def env_for(data) -> dict:
    """The environment of a child process: its own data folder, progress lines on (pytest's
    variable would silence them), one thread each (two cores are shared)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env.update(GLIO_KIT_DATA=str(data), OMP_NUM_THREADS="1", GLIO_KIT_PROFILE="smoke")
    env.pop("GLIO_KIT_QUIET", None)
    return env


def start_run(run_dir, data) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["run", "--run-dir", str(run_dir)] + PREP, env=env_for(data),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout=240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def start_holder(tmp_path, code: str, *args) -> subprocess.Popen:
    """A process that takes a lock as the kit does, says ``held`` and waits to be killed."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(code) + "\nprint('held', flush=True)\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stdout.read()
    return proc


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def comparable(run_dir: Path) -> dict:
    """What two runs of the same settings agree on: every file's path; the bytes of the files
    that hold no time or attempt id; the prep record's status, parameters and digest."""
    files = {str(p.relative_to(run_dir)): p for p in sorted(run_dir.rglob("*")) if p.is_file()}
    out = {rel: (None if rel in VOLATILE else p.read_bytes()) for rel, p in files.items()}
    rec = json.loads((run_dir / "steps" / "prep.json").read_text())
    out["steps/prep.json"] = {k: rec[k] for k in ("status", "params", "digest")}
    return out


def wait_for(predicate, timeout=120, what=""):
    t0 = time.time()
    while not predicate():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A data folder with the smoke cohort and a run made alone into its own folder."""
    root = tmp_path_factory.mktemp("concurrency")
    rc, out = finish(start_run(root / "lone", root / "data"))
    assert rc == 0, out
    return dict(data=root / "data", lone=root / "lone")


def test_second_run_into_a_folder_is_refused_naming_the_first(shared, tmp_path):
    run_dir = tmp_path / "run"
    procs = [start_run(run_dir, shared["data"]) for _ in range(2)]
    results = [finish(p) for p in procs]
    rcs = sorted(rc for rc, _ in results)
    assert rcs == [0, 2], "\n---\n".join(out for _, out in results)
    (winner, _), (refused, (_, said)) = sorted(zip(procs, results), key=lambda pr: pr[1][0])
    line = [x for x in said.splitlines() if x.startswith("glio-kit: error:")]
    assert len(line) == 1 and "in use by glio-kit run" in line[0] and f"pid {winner.pid} on " in line[0]
    assert "--run-dir" in line[0] and "since" in line[0], line
    assert comparable(run_dir) == comparable(shared["lone"])  # as if the second run never was


def test_two_runs_sharing_a_data_folder_generate_the_cohort_once(tmp_path):
    data = tmp_path / "data"
    procs = [start_run(tmp_path / f"run{i}", data) for i in range(2)]
    results = [finish(p) for p in procs]
    outs = "\n---\n".join(out for _, out in results)
    assert [rc for rc, _ in results] == [0, 0], outs
    assert outs.count(GENERATED) == 1, outs
    assert sorted(p.name for p in data.iterdir()) == ["synthetic-smoke-seed0"]
    cohort = json.loads((data / "synthetic-smoke-seed0" / "cohort.json").read_text())
    assert len(cohort["subjects"]) == 8
    caches = [sorted((p.name, p.read_bytes()) for p in (tmp_path / run / "cache").iterdir())
              for run in ("run0", "run1")]
    assert caches[0] == caches[1]


def test_a_run_killed_with_sigkill_leaves_no_lock_that_blocks(shared, tmp_path):
    run_dir, data = tmp_path / "run", tmp_path / "data"
    holder = start_run(run_dir, data)
    # its kernel writes the synthetic cohort: the run and its kernel hold the folder
    wait_for(lambda: read_holder(data / ".synthetic-smoke-seed0.lock"), what="the cohort to be written")
    with open(run_dir / LOCK_FILE) as fh:
        assert not _lock_is_free(fh)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert read_holder(run_dir / LOCK_FILE)["pid"] == holder.pid  # the dead run's record stays
        # its kernel follows it within about a second (ipykernel's parent poller)
        wait_for(lambda: _lock_is_free(fh), timeout=30, what="the killed run's kernel to end")
    rc, out = finish(start_run(run_dir, data))
    assert rc == 0, out
    assert json.loads((run_dir / "steps" / "prep.json").read_text())["status"] == "done"
    assert comparable(run_dir).keys() == comparable(shared["lone"]).keys()
    assert sorted(p.name for p in data.iterdir()) == ["synthetic-smoke-seed0"]


def _lock_is_free(fh) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def test_a_notebook_on_a_folder_a_run_holds_is_refused_and_writes_nothing(tmp_path, shared):
    run_dir = tmp_path / "run"
    holder = start_holder(tmp_path, """
        import sys, time
        from glio_kit.run.lock import run_lock
        held = run_lock(sys.argv[1], "glio-kit run --run-dir " + sys.argv[1])
        held.__enter__()
        """, run_dir)
    try:
        before = snapshot(run_dir)
        nb = notebooks_dir() / "01_data_prep.ipynb"
        proc = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"),
                               "-p", "run_dir", str(run_dir), "-p", "profile", "smoke", "-k", "python3",
                               "--cwd", str(nb.parent)], env=env_for(shared["data"]), capture_output=True,
                              text=True, timeout=240)
        said = proc.stdout + proc.stderr
        assert proc.returncode != 0, said
        assert "FolderInUse" in said, said
        assert f"in use by glio-kit run --run-dir {run_dir} (pid {holder.pid} " in said, said
        assert snapshot(run_dir) == before == {LOCK_FILE: before[LOCK_FILE]}  # no skeleton, no change
    finally:
        holder.kill()
        holder.wait()


def test_a_run_into_a_folder_a_notebook_has_open_is_refused(tmp_path, shared):
    run_dir = tmp_path / "run"
    shutil.copytree(shared["lone"], run_dir)
    holder = start_holder(tmp_path, """
        import sys, time
        from glio_kit.run.lock import hold_for_notebook
        hold_for_notebook(sys.argv[1], "01_data_prep.ipynb")
        """, run_dir)
    try:
        before = snapshot(run_dir)
        rc, said = finish(start_run(run_dir, shared["data"]))
        assert rc == 2 and f"in use by notebook 01_data_prep.ipynb (pid {holder.pid} " in said, said
        assert "Shut Down Kernel" in said
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()

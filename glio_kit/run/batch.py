"""``glio-kit batch GRID.yaml``: a parameter grid of runs, shared early steps, one summary.

The YAML file::

    profile: demo                 # smoke | demo | paper
    out: runs/grid-demo           # batch folder (relative paths: from where glio-kit batch runs)
    train_healthy_dir: ""         # optional cohort folders ("" = the synthetic cohort)
    test_healthy_dir: ""
    test_tumor_dir: ""
    base:                         # notebook parameters for every run
      seed: 0
    grid:                         # name -> list of values; every combination is one run
      lam: [0, 0.1, 0.5]
      mapping: [iterative, encoder]
    cluster:                      # optional: where the runs execute (glio_kit.run.engine);
      kind: local                 # default a local Dask cluster; slurm | pbs | sge | lsf

Each grid point becomes the run folder ``<out>/<name>`` with ``name`` built from its values
(``lam=0.1_mapping=encoder``). Runs whose parameters for the first notebooks (data prep and
training) are equal share them: those notebooks run once in ``<out>/_shared/<hash>``, and each
run folder is seeded from there with hard links (a copy where links are impossible) before
its own later notebooks run. So a grid over ``lam`` and ``mapping`` trains one DCGAN, a grid
over ``epochs`` trains one per value.

Resumable: a run whose metrics step is done and whose ``metrics.json`` exists is skipped
(``--force`` redoes everything). A failing run is reported as failed in the summary, with the
first line of its error (the traceback goes to ``<out>/errors/<run>.txt``; the executed
notebook in ``<run>/notebooks/`` shows the failing cell), and the other runs go on. At the
end the batch folder holds ``summary.csv``, ``summary.md`` and ``summary.png``. The batch
folder must be new, empty or an earlier batch's: a folder of the user's is refused, never
written into.

Hard links share file contents: later steps must write their own files (``score/`` …),
never rewrite files of the prep and train steps in place, or they would change them for
every run seeded from the same prefix. The kit's steps follow that rule.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import pandas as pd

from .. import __version__
from ..data import preprocess
from .batch_summary import error_line as _error_line
from .config import PrepSettings, get_config
from .engine import Engine
from .runner import run_chain
from .steps import refuse_unknown_parameters
from ..atomic import write_text
from .batch_summary import previous_timings, summarise
from ..errors import GlioKitError
from .lock import LOCK_FILE, run_lock
from .rundir import RUN_MARKER, RunDir
from .grid import (COHORT_KEYS, NOT_SHARED_KEYS, PREFIX_NOTEBOOKS, declared_by_notebook, load_grid, plan_runs,
                   share_prefixes)

SHARED_DIR = "_shared"
#: The file that marks a folder as a batch folder (written by every batch).
BATCH_MARKER = "batch.json"
#: The batch folder's lock: one ``glio-kit batch`` at a time per folder (:mod:`glio_kit.run.lock`).
BATCH_LOCK = "batch.lock"


# ---------------------------------------------------------------------- run folders
def is_finished(run_dir) -> bool:
    """A run is finished when its metrics step is done and ``metrics.json`` exists."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_MARKER).exists() or not (run_dir / "metrics.json").exists():
        return False
    return RunDir(run_dir, create=False).is_done("metrics")


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        try:
            if os.path.samefile(src, dst):
                return
        except OSError:
            pass
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def seed_from_prefix(shared_dir, run_dir, prefix=PREFIX_NOTEBOOKS) -> list[Path]:
    """Hard-link (or copy) everything the shared prefix steps wrote into ``run_dir``.

    Only the prefix notebooks ever run in the shared folder, so all of it belongs to them:
    ``run.json``, ``cache/``, ``train/``, ``steps/prep.json``, ``steps/train.json``, their
    figures, the executed prefix notebooks and any other file they wrote (e.g. a cohort
    summary). The run folder is then complete on its own. Returns the relative paths linked.
    """
    src, dst = Path(shared_dir), Path(run_dir)
    files = [p.relative_to(src) for p in sorted(src.rglob("*"))
             if p.is_file() and not p.is_symlink() and p != src / LOCK_FILE]  # each folder has its own lock
    dst.mkdir(parents=True, exist_ok=True)
    for rel in files:
        _link_or_copy(src / rel, dst / rel)
    return files


# ------------------------------------------------------------------------ executing
def prepare_synthetic_cohorts(runs: list[dict], profile: str, say=print) -> int:
    """Write the synthetic cohort(s) of the runs once, before workers start.

    Runs without cohort folders use the built-in synthetic cohort of their profile and seed
    (``data/synthetic-<profile>-seed<seed>``); parallel runs generating the same folder at
    the same time would collide, so the batch makes each distinct cohort here, serially, and
    the notebooks then find it ready. Returns the number of cohorts prepared.
    """

    done = set()
    for r in runs:
        p = r["params"]
        if any(p.get(k) for k in COHORT_KEYS):
            continue
        prep = get_config(profile, **{k: v for k, v in p.items() if k in PrepSettings.knobs()}).prep
        key = tuple(sorted((k, str(v)) for k, v in prep.identity().items()
                           if k == "seed" or k.startswith("synth_")))
        if key in done:
            continue
        say(f"[batch] synthetic cohort for {profile}, seed {prep.seed} (once, before the runs)")
        preprocess.resolve_cohort(prep, progress=False)
        done.add(key)
    return len(done)


def _default_executor(run_dir, profile, params, notebooks=None, force=False):
    return run_chain(run_dir, profile, params, notebooks=notebooks, force=force,
                     log_output=False, progress=False)


def _job(executor, run_dir, profile, params, notebooks, force):
    """One executor call, timed; never raises (the error travels back as text)."""
    t0 = time.time()
    try:
        executor(str(run_dir), profile, params, notebooks=notebooks, force=force)
        return dict(ok=True, seconds=round(time.time() - t0, 1), error="")
    except Exception as err:  # noqa: BLE001 - a failed run must not stop the batch
        return dict(ok=False, seconds=round(time.time() - t0, 1), error=_error_line(err),
                    traceback=traceback.format_exc())


def _filter(params: dict, declared: dict, notebooks) -> dict:
    names = set().union(*[set(declared.get(nb, ())) for nb in notebooks]) if notebooks else set()
    return {k: v for k, v in params.items() if k in names}


def run_batch(grid_path, workers: int = 1, force: bool = False, executor=None, declared: dict | None = None,
              pool: str = "auto", progress: bool = True, cohorts="auto") -> pd.DataFrame:
    """Run every grid point of ``grid_path``; write and return the summary table.

    workers : runs executed at the same time.
    executor : callable ``(run_dir, profile, params, notebooks=None, force=False)``; default
        :func:`glio_kit.run.runner.run_chain`. Tests inject a fake one.
    declared : ``{notebook: parameter names}``; default from the table of steps.
    pool : ``"dask"`` (default for the real executor: a Dask cluster, local unless the grid's
        ``cluster:`` section names SLURM, PBS, ... (:mod:`glio_kit.run.engine`); each run a task),
        ``"thread"`` (default for an injected executor) or ``"auto"``.
    cohorts : write the synthetic cohort(s) once before the runs start
        (:func:`prepare_synthetic_cohorts`); ``"auto"`` = with the real executor only.
    Returns the summary table (also written as ``<out>/summary.csv``, ``.md``, ``.png``).
    """
    plan = _plan_batch(grid_path, declared)
    say = print if progress else (lambda *a, **k: None)
    with run_lock(plan.out, f"glio-kit batch {grid_path}", lock_file=BATCH_LOCK, marker=BATCH_MARKER):
        earlier = previous_timings(plan.out)  # a finished run keeps the time it took when it ran
        status = {name: dict(status="done earlier", error="", **earlier.get(name, dict(seconds=0.0)))
                  for name, r in plan.by_name.items() if not force and is_finished(r["dir"])}
        pending = [r["name"] for r in plan.runs if r["name"] not in status]
        _write_batch_json(plan)

        executor = executor or _default_executor
        if pool == "auto":
            pool = "dask" if executor is _default_executor else "thread"
        if cohorts == "auto":
            cohorts = executor is _default_executor
        if cohorts and pending:
            try:
                prepare_synthetic_cohorts([plan.by_name[n] for n in pending], plan.profile, say)
            except Exception as err:  # noqa: BLE001 - each run then reports its own error
                say(f"[batch] could not prepare the synthetic cohort up front: {_error_line(err)}")
        if pending:
            with Engine(pool, workers, plan.spec.get("cluster"), plan.out, say) as engine:
                _execute(plan, pending, status, engine.executor, executor, force, say)
        return summarise(plan.out, plan.runs, status, plan.group_of)


class _Plan:
    """What a batch will run: the grid's runs, their folders, and which share a prefix."""

    def __init__(self, spec: dict, declared: dict, runs: list[dict], out: Path):
        self.profile, self.spec, self.declared, self.runs, self.out = (spec["profile"], spec, declared,
                                                                        runs, out)
        self.notebooks = list(declared)  # in chain order (dict order)
        self.prefix_nbs = [nb for nb in self.notebooks if nb in PREFIX_NOTEBOOKS]
        self.later_nbs = [nb for nb in self.notebooks if nb not in PREFIX_NOTEBOOKS]
        sharing = self.prefix_nbs and self.later_nbs
        self.groups = share_prefixes(runs, declared, self.profile, PREFIX_NOTEBOOKS) if sharing else {}
        self.group_of = {name: key for key, names in self.groups.items() for name in names}
        self.by_name = {r["name"]: r for r in runs}
        for r in runs:
            r["dir"] = out / r["name"]


def _plan_batch(grid_path, declared: dict | None) -> _Plan:
    """Read the grid, check its parameter names against the notebooks, plan the runs."""
    spec = load_grid(grid_path)
    out = adopt_batch_folder(spec["out"], grid_path)
    declared = {k: set(v) for k, v in (declared if declared is not None else declared_by_notebook()).items()}
    if not declared:
        raise GlioKitError("no notebooks found to run")
    runs = plan_runs(spec)
    known = set().union(*declared.values()) - set(NOT_SHARED_KEYS)
    refuse_unknown_parameters({k for r in runs for k in r["params"]} - set(NOT_SHARED_KEYS), known,
                              f"{grid_path}: ")
    return _Plan(spec, declared, runs, out)


def is_batch_folder(out) -> bool:
    """True when ``out`` holds a ``batch.json`` that ``glio-kit batch`` wrote."""
    try:
        meta = json.loads((Path(out) / BATCH_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and ("glio_kit" in meta or {"profile", "grid", "runs"} <= set(meta))


def adopt_batch_folder(out, grid_path="") -> Path:
    """The batch folder ``out`` (absolute), created if missing. An existing folder is used only
    when it is empty or an earlier batch's (:func:`is_batch_folder`): the batch never writes its
    ``summary.*``, ``batch.json`` or run folders among files of the user's."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise GlioKitError(f"{out}: 'out' of {grid_path} is a file; give a folder for the batch")
    if out.exists() and any(p.name != BATCH_LOCK for p in out.iterdir()) and not is_batch_folder(out):
        found = sorted(p.name for p in out.iterdir())
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise GlioKitError(f"{out}: 'out' of {grid_path} is a folder that is not empty and was not made by "
                           f"glio-kit batch (no {BATCH_MARKER}; it holds {shown}); nothing was written. "
                           f"Choose a new or empty folder for the batch")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_batch_json(plan: _Plan) -> None:
    write_text(plan.out / BATCH_MARKER, json.dumps(dict(
        glio_kit=__version__, profile=plan.profile, grid=plan.spec["grid"], base=plan.spec["base"],
        shared=dict(plan.groups),
        runs={r["name"]: dict(point=r["point"], prefix=plan.group_of.get(r["name"], "")) for r in plan.runs},
    ), indent=2, default=str) + "\n")


def _execute(plan: _Plan, pending: list[str], status: dict, ex, executor, force: bool, say) -> None:
    """Submit the shared prefixes, then each run (seeded from its prefix once that is done);
    fill ``status`` as runs finish."""
    futures, prefix_result = {}, {}
    needed: dict[str, list[str]] = {}
    for name in pending:
        if name in plan.group_of:
            needed.setdefault(plan.group_of[name], []).append(name)

    def submit(run_dir, params, nbs, what):
        f = ex.submit(_job, executor, run_dir, plan.profile, _filter(params, plan.declared, nbs), nbs, force)
        futures[f] = what

    for key, names in needed.items():
        say(f"[batch] shared prefix {SHARED_DIR}/{key} ({', '.join(plan.prefix_nbs)}) for {', '.join(names)}")
        submit(plan.out / SHARED_DIR / key, plan.by_name[names[0]]["params"], plan.prefix_nbs,
               ("prefix", key))
    for name in pending:
        if name not in plan.group_of:
            say(f"[batch] {name}: {', '.join(plan.notebooks)}")
            submit(plan.by_name[name]["dir"], plan.by_name[name]["params"], plan.notebooks, ("run", name))
    while futures:
        done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
        for f in done:
            kind, ident = futures.pop(f)
            res = _outcome(f)
            if kind == "prefix":
                prefix_result[ident] = res
                for name in needed[ident]:
                    if _seed_run(plan, ident, name, res, status, say):
                        say(f"[batch] {name}: {', '.join(plan.later_nbs)}")
                        submit(plan.by_name[name]["dir"], plan.by_name[name]["params"], plan.later_nbs,
                               ("run", name))
            else:
                _finish_run(plan, ident, res, prefix_result, status, say)


def _outcome(future) -> dict:
    """What :func:`_job` returned, or a failure when its worker died (a lost cluster node,
    a run that killed its process): the run is reported failed and a later batch retries it."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - e.g. distributed.KilledWorker
        return dict(ok=False, seconds=0.0, error=f"worker lost: {_error_line(err)}",
                    traceback=traceback.format_exc())


def _seed_run(plan: _Plan, key: str, name: str, res: dict, status: dict, say) -> bool:
    """Link a finished shared prefix into run ``name``; False (and a failed status) if impossible."""
    if not res["ok"]:
        status[name] = dict(status="failed", seconds=0.0, error=f"shared prefix failed: {res['error']}")
        say(f"[batch] {name}: FAILED (shared prefix: {res['error']})")
        return False
    try:
        with run_lock(plan.by_name[name]["dir"], "glio-kit batch (linking the shared prefix in)"):
            RunDir(plan.by_name[name]["dir"])  # refuse a folder that is not a run folder
            seed_from_prefix(plan.out / SHARED_DIR / key, plan.by_name[name]["dir"], plan.prefix_nbs)
    except Exception as err:  # noqa: BLE001
        status[name] = dict(status="failed", seconds=0.0, error=_error_line(err))
        say(f"[batch] {name}: FAILED ({_error_line(err)})")
        return False
    return True


def _finish_run(plan: _Plan, name: str, res: dict, prefix_result: dict, status: dict, say) -> None:
    st = dict(status="ok" if res["ok"] else "failed", seconds=res["seconds"], error=res["error"])
    if res["ok"] and not is_finished(plan.by_name[name]["dir"]):
        st.update(status="incomplete", error="ran, but left no metrics.json / done metrics step "
                  "(is the metrics notebook there?)")
    key = plan.group_of.get(name)
    if key in prefix_result:
        st["prefix_seconds"] = prefix_result[key]["seconds"]
    status[name] = st
    if not res["ok"]:
        (plan.out / "errors").mkdir(exist_ok=True)
        (plan.out / "errors" / f"{name}.txt").write_text(res.get("traceback", res["error"]))
    say(f"[batch] {name}: {st['status']} ({st['seconds']} s){' - ' + st['error'] if st['error'] else ''}")

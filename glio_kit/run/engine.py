"""Where the runs of a batch execute: a Dask distributed cluster (or threads, for tests).

``glio-kit batch`` hands every run (and every shared prefix) to a Dask scheduler as one task.
Here the default is Dask's ``LocalCluster``: one worker process per run at the same time. On a
cluster the same scheduler gets workers from SLURM, PBS, SGE or LSF jobs through
``dask-jobqueue``; the batch submits the same tasks through the same ``Client`` either way.

Why Dask and not submitit: with Dask the local path the tests run *is* the cluster path (the
same scheduler, the same client calls; only who starts the workers differs), while submitit's
local executor is a separate code path from its SLURM one, and it reaches SLURM only. Dask also
shows a live dashboard (the runs in progress, each worker's load), and reschedules a run whose
worker died.

The ``cluster:`` section of a grid file::

    cluster:
      kind: slurm                  # local (default) | slurm | pbs | sge | lsf | address
      workers: 6                   # runs at the same time (default: --workers)
      dashboard: ":8787"           # where the dashboard listens
      # kind address: an already running scheduler (start its workers with --nthreads 1)
      # address: tcp://10.0.0.5:8786
      # any other key goes to dask-jobqueue's cluster class (one worker per job by default):
      queue: gpu
      cores: 8
      memory: 32GB
      walltime: "04:00:00"
      job_extra_directives: ["--gres=gpu:1"]
      job_script_prologue: ["module load cuda", "source /path/to/glio-kit/.venv/bin/activate"]

The workers need the same checkout and data paths as the machine that starts the batch (a
shared file system): run folders and cohorts are named by absolute paths.
"""
from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import GlioKitError

__all__ = ["KINDS", "JOBQUEUE", "RUN_RESOURCE", "check_cluster", "Engine"]

#: dask-jobqueue's cluster class for each scheduler it reaches.
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
KINDS = ("local", "address", *JOBQUEUE)
#: Every worker offers one unit of this resource and every run asks for one, so a worker runs
#: one run at a time whatever its thread count (a GPU job never trains two runs at once).
RUN_RESOURCE = "glio_run"
ENGINE_KEYS = ("kind", "workers", "dashboard", "address")


def check_cluster(section, where="grid file") -> dict:
    """The ``cluster:`` section of a grid file, checked; ``{}`` when absent (a local cluster).

    Returns a dict with ``kind``, optional ``workers`` (int), ``dashboard``, ``address`` and
    ``options`` (what goes to the dask-jobqueue class). Errors name ``where``.
    """
    if section in (None, {}):
        return {}
    if not isinstance(section, dict):
        raise GlioKitError(f"{where}: 'cluster' must be a mapping (kind: local | slurm | ...), "
                           f"got {section!r}")
    out = {k: section[k] for k in ENGINE_KEYS if k in section}
    out["kind"] = str(section.get("kind", "local")).lower()
    if out["kind"] not in KINDS:
        raise GlioKitError(f"{where}: cluster kind {out['kind']!r} is not one of {list(KINDS)}")
    if "workers" in out:
        try:
            out["workers"] = int(out["workers"])
        except (TypeError, ValueError):
            raise GlioKitError(f"{where}: cluster workers must be a whole number, "
                               f"got {out['workers']!r}") from None
        if out["workers"] < 1:
            raise GlioKitError(f"{where}: cluster workers must be at least 1, got {out['workers']}")
    if out["kind"] == "address" and not out.get("address"):
        raise GlioKitError(f"{where}: cluster kind 'address' needs 'address: tcp://host:8786'")
    options = {k: v for k, v in section.items() if k not in ENGINE_KEYS}
    if options and out["kind"] not in JOBQUEUE:
        raise GlioKitError(f"{where}: cluster option(s) {sorted(options)} only apply to kinds "
                           f"{list(JOBQUEUE)}, not {out['kind']!r}")
    out["options"] = options
    return out


def jobqueue_cluster(kind: str, options: dict, dashboard: str | None = None):
    """dask-jobqueue's cluster for ``kind`` (``slurm`` ...), with one run per worker; no job
    is submitted until it is scaled."""
    module = importlib.import_module("dask_jobqueue")
    cls = getattr(module, JOBQUEUE[kind])
    opts = dict(options)
    opts.setdefault("processes", 1)
    extra = list(opts.get("worker_extra_args") or [])
    opts["worker_extra_args"] = extra + ["--resources", f"{RUN_RESOURCE}=1"]
    if dashboard:
        opts.setdefault("scheduler_options", {"dashboard_address": dashboard})
    try:
        return cls(**opts)
    except (TypeError, ValueError) as err:
        raise GlioKitError(f"cluster section for {kind}: {err}; see dask-jobqueue's {JOBQUEUE[kind]} "
                           f"for the options it takes") from None


class Engine:
    """Context manager: ``with Engine("dask", workers, cluster) as eng: eng.executor.submit(...)``.

    pool : ``"dask"`` (a Dask cluster as the ``cluster`` section says; local by default) or
        ``"thread"`` (a thread pool in this process: the tests' fake executors).
    workers : runs at the same time (``cluster.workers`` wins when given).
    cluster : the checked ``cluster:`` section (:func:`check_cluster`).
    out : the batch folder; a jobqueue cluster's job script is written there.

    ``eng.executor`` is a ``concurrent.futures.Executor`` (Dask's ``Client.get_executor``), so
    the batch waits on its futures with ``concurrent.futures.wait`` whatever runs them;
    ``eng.dashboard`` is the dashboard's address (empty for threads).
    """

    def __init__(self, pool: str = "dask", workers: int = 1, cluster: dict | None = None, out=None,
                 say=print):
        if pool not in ("dask", "thread"):
            raise ValueError(f"pool must be 'dask' or 'thread', got {pool!r}")
        self.pool, self.cluster_spec, self.out, self.say = pool, dict(cluster or {}), out, say
        self.workers = max(1, int(self.cluster_spec.get("workers") or workers))
        self.executor, self.dashboard, self.client, self._cluster = None, "", None, None

    def __enter__(self) -> Engine:
        if self.pool == "thread":
            self.executor = ThreadPoolExecutor(max_workers=self.workers)
            return self
        from distributed import Client  # slow import (dask, ~1 s): only when a batch executes

        kind = self.cluster_spec.get("kind", "local")
        dashboard = self.cluster_spec.get("dashboard", ":8787")
        try:
            if kind == "address":
                self.client = Client(self.cluster_spec["address"])
                resources = {}  # workers someone else started: one thread each, as the docs say
            else:
                self._cluster = self._start_cluster(kind, dashboard)
                self.client = Client(self._cluster)
                resources = {RUN_RESOURCE: 1}
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.executor = self.client.get_executor(pure=False, resources=resources)
        self.dashboard = self.client.dashboard_link or ""
        where = "local cluster" if kind == "local" else kind
        self.say(f"[batch] Dask {where}: {self.workers} worker(s); dashboard {self.dashboard}")
        return self

    def _start_cluster(self, kind: str, dashboard: str):
        if kind == "local":
            from distributed import LocalCluster  # slow import (dask): only for a local cluster

            return LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                resources={RUN_RESOURCE: 1}, dashboard_address=dashboard, memory_limit=0)
        cluster = jobqueue_cluster(kind, self.cluster_spec.get("options", {}), dashboard)
        if self.out is not None:
            script = Path(self.out) / f"dask-{kind}-job.sh"
            script.write_text(cluster.job_script())
            self.say(f"[batch] {kind} job script: {script}")
        cluster.scale(self.workers)
        return cluster

    def __exit__(self, *exc) -> None:
        if self.pool == "thread":
            if self.executor is not None:
                self.executor.shutdown(wait=True)
            return
        for thing in (self.client, self._cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing must not hide the batch's own error
                    pass

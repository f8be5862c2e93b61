"""``glio-kit batch GRID.yaml``: a parameter grid of runs, shared early steps, one summary.

The YAML file::

    profile: demo                 # smoke | demo | paper
    out: runs/grid-demo           # batch folder (relative to the current directory)
    train_healthy_dir: ""         # optional cohort folders ("" = the synthetic cohort)
    test_healthy_dir: ""
    test_tumor_dir: ""
    base:                         # notebook parameters for every run
      seed: 0
    grid:                         # name -> list of values; every combination is one run
      lam: [0, 0.1, 0.5]
      mapping: [iterative, encoder]

Each grid point becomes the run folder ``<out>/<name>`` with ``name`` built from its values
(``lam=0.1_mapping=encoder``). Runs whose parameters for the first notebooks (data prep and
training) are equal share them: those notebooks run once in ``<out>/_shared/<hash>``, and each
run folder is seeded from there with hard links (a copy where links are impossible) before
its own later notebooks run. So a grid over ``lam`` and ``mapping`` trains one DCGAN, a grid
over ``epochs`` trains one per value.

Resumable: a run whose metrics step is done and whose ``metrics.json`` exists is skipped
(``--force`` redoes everything). A failing run is reported as failed in the summary, with the
first line of its error (the traceback goes to ``<out>/errors/<run>.txt``; the executed
notebook in ``<run>/notebooks/`` shows the failing cell), and the other runs go on. At the end the batch folder holds
``summary.csv``, ``summary.md`` and ``summary.png``.

Hard links share file contents: later steps must write their own files (``score/`` …),
never rewrite files of the prep and train steps in place, or they would change them for
every run seeded from the same prefix. The kit's steps follow that rule.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path

import pandas as pd
import yaml

from .errors import GlioKitError
from .runtime import RUN_MARKER, RunDir, params_digest

#: The notebooks whose work is shared between runs with equal parameters for them.
PREFIX_NOTEBOOKS = ("01_data_prep.ipynb", "02_train_dcgan.ipynb")
#: Notebook parameters that never decide what a step computes.
NOT_SHARED_KEYS = ("run_dir", "overwrite")
COHORT_KEYS = ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir")
SHARED_DIR = "_shared"


# ----------------------------------------------------------------------- the grid
def load_grid(path) -> dict:
    """Read and check a grid YAML file; returns dict profile, out, base, grid (+ cohort folders)."""
    path = Path(path)
    if not path.exists():
        raise GlioKitError(f"{path}: grid file not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GlioKitError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise GlioKitError(f"{path}: expected a mapping with profile, out, base and grid")
    known = {"profile", "out", "base", "grid", "workers", *COHORT_KEYS}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise GlioKitError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    if not spec.get("out"):
        raise GlioKitError(f"{path}: 'out' (the batch folder) is required")
    base = spec.get("base") or {}
    grid = spec.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise GlioKitError(f"{path}: 'base' and 'grid' must be mappings (name: value / name: [values])")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise GlioKitError(f"{path}: grid entry {k!r} must be a non-empty list of values, got {v!r}")
    overlap = sorted(set(base) & set(grid))
    if overlap:
        raise GlioKitError(f"{path}: {overlap} appear in both base and grid")
    from .config import profile_name

    try:
        profile = profile_name(spec.get("profile"))
    except ValueError as err:
        raise GlioKitError(f"{path}: {err}") from None
    out = dict(profile=profile, out=str(spec["out"]), base=dict(base), grid=dict(grid))
    for k in COHORT_KEYS:
        if spec.get(k):
            out[k] = str(spec[k])
    if spec.get("workers"):
        out["workers"] = int(spec["workers"])
    return out


def expand_grid(grid: dict) -> list[dict]:
    """The Cartesian product of ``grid`` (name -> list of values), in the file's order.

    ``{"lam": [0, 0.5], "mapping": ["iterative", "encoder"]}`` -> 4 dicts, the last name
    varying fastest. An empty grid is one run with no grid values.
    """
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _value_str(v) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(_value_str(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def run_name(point: dict) -> str:
    """Folder name of a grid point: ``lam=0.1_mapping=encoder`` (filesystem-safe).

    Within each ``name=value`` part, characters other than letters, digits and ``_ . = + -``
    become ``-``; parts are joined with ``_``; lists are joined with ``x`` (``64x64``); an
    empty point is ``base``.
    """
    parts = [re.sub(r"[^A-Za-z0-9_.=+\-]+", "-", f"{k}={_value_str(v)}") for k, v in point.items()]
    return "_".join(parts) if parts else "base"


def plan_runs(spec: dict) -> list[dict]:
    """One dict per run: ``name``, ``point`` (grid values), ``params`` (base + grid + cohort)."""
    runs, seen = [], {}
    for point in expand_grid(spec["grid"]):
        name = run_name(point)
        if name in seen:
            raise GlioKitError(f"grid points {seen[name]} and {point} give the same run folder name {name!r}")
        seen[name] = point
        params = dict(spec.get("base") or {})
        params.update({k: spec[k] for k in COHORT_KEYS if spec.get(k)})
        params.update(point)
        runs.append(dict(name=name, point=point, params=params))
    return runs


# ------------------------------------------------------------------ prefix sharing
def prefix_params(params: dict, declared: dict, profile: str, prefix=PREFIX_NOTEBOOKS) -> dict:
    """The parameters that decide what the prefix notebooks compute.

    declared : notebook file name -> names its ``parameters`` cell declares. Only names the
    prefix notebooks declare count (minus ``run_dir``/``overwrite``); the profile always does.
    """
    names = set().union(*[set(declared.get(nb, ())) for nb in prefix]) - set(NOT_SHARED_KEYS) - {"profile"}
    out = {k: params[k] for k in sorted(names) if k in params}
    out["profile"] = profile
    return out


def prefix_key(params: dict, declared: dict, profile: str, prefix=PREFIX_NOTEBOOKS) -> str:
    """Short hash of :func:`prefix_params`: runs with equal keys can share the prefix."""
    return params_digest(prefix_params(params, declared, profile, prefix))


def share_prefixes(runs: list[dict], declared: dict, profile: str, prefix=PREFIX_NOTEBOOKS) -> dict:
    """Which runs share which prefix: ``{prefix key: [run names]}`` for groups of 2 or more.

    Pure function (no papermill, no files): ``runs`` are dicts with ``name`` and ``params``;
    ``declared`` maps notebook file names to the parameter names they declare. A run that
    is alone with its prefix parameters is not listed: it runs every notebook in its own
    folder.
    """
    groups: dict[str, list[str]] = {}
    for r in runs:
        groups.setdefault(prefix_key(r["params"], declared, profile, prefix), []).append(r["name"])
    return {k: v for k, v in groups.items() if len(v) >= 2}


def declared_by_notebook() -> dict:
    """``{notebook file: set of parameter names}`` for the chain's notebooks that exist."""
    from .runner import available_notebooks, declared_parameters

    return {nb.name: set(declared_parameters(nb)) for nb in available_notebooks()}


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
    files = [p.relative_to(src) for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()]
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
    from .config import BASE, get_config
    from .preprocess import resolve_cohort

    done = set()
    for r in runs:
        p = r["params"]
        if any(p.get(k) for k in COHORT_KEYS):
            continue
        cfg = get_config(profile, **{k: v for k, v in p.items() if k in BASE})
        key = tuple(sorted((k, str(v)) for k, v in cfg.items() if k == "seed" or k.startswith("synth_")))
        if key in done:
            continue
        say(f"[batch] synthetic cohort for {profile}, seed {cfg['seed']} (once, before the runs)")
        resolve_cohort(cfg, progress=False)
        done.add(key)
    return len(done)


def _default_executor(run_dir, profile, params, notebooks=None, force=False):
    from .runner import run_chain

    return run_chain(run_dir, profile, params, notebooks=notebooks, force=force, log_output=False, progress=False)


def _error_line(err: BaseException) -> str:
    """First informative line of an error (papermill's: ``ename: evalue``)."""
    if getattr(err, "ename", None):
        return f"{err.ename}: {str(getattr(err, 'evalue', '')).splitlines()[0] if getattr(err, 'evalue', '') else ''}"
    for line in str(err).splitlines():
        if line.strip() and set(line.strip()) != {"-"}:
            return f"{type(err).__name__}: {line.strip()}"
    return type(err).__name__


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
        :func:`glio_kit.runner.run_chain`. Tests inject a fake one.
    declared : ``{notebook: parameter names}``; default read from the notebooks with papermill.
    pool : ``"process"`` (default for the real executor with workers > 1: each run in its own
        process), ``"thread"`` (default for an injected executor) or ``"auto"``.
    cohorts : write the synthetic cohort(s) once before the runs start
        (:func:`prepare_synthetic_cohorts`); ``"auto"`` = with the real executor only.
    Returns the summary table (also written as ``<out>/summary.csv``, ``.md``, ``.png``).
    """
    spec = load_grid(grid_path)
    profile = spec["profile"]
    out = Path(spec["out"]).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    declared = {k: set(v) for k, v in (declared if declared is not None else declared_by_notebook()).items()}
    if not declared:
        raise GlioKitError("no notebooks found to run")
    notebooks = [nb for nb in declared]  # in chain order (dict order)
    runs = plan_runs(spec)
    all_names = set().union(*declared.values())
    bad = sorted({k for r in runs for k in r["params"]} - all_names)
    if bad:
        raise GlioKitError(f"{grid_path}: parameter(s) {bad} are not declared by any notebook; "
                           f"known: {sorted(all_names - set(NOT_SHARED_KEYS))}")
    prefix_nbs = [nb for nb in notebooks if nb in PREFIX_NOTEBOOKS]
    later_nbs = [nb for nb in notebooks if nb not in PREFIX_NOTEBOOKS]
    groups = share_prefixes(runs, declared, profile, PREFIX_NOTEBOOKS) if prefix_nbs and later_nbs else {}
    group_of = {name: key for key, names in groups.items() for name in names}
    by_name = {r["name"]: r for r in runs}

    status = {}
    pending = []
    for r in runs:
        r["dir"] = out / r["name"]
        if not force and is_finished(r["dir"]):
            status[r["name"]] = dict(status="done earlier", seconds=0.0, error="")
        else:
            pending.append(r["name"])
    (out / "batch.json").write_text(json.dumps(dict(
        profile=profile, grid=spec["grid"], base=spec["base"], shared={k: v for k, v in groups.items()},
        runs={r["name"]: dict(point=r["point"], prefix=group_of.get(r["name"], "")) for r in runs},
    ), indent=2, default=str) + "\n")

    executor = executor or _default_executor
    if pool == "auto":
        pool = "process" if executor is _default_executor and workers > 1 else "thread"
    Pool = ProcessPoolExecutor if pool == "process" else ThreadPoolExecutor
    say = print if progress else (lambda *a, **k: None)

    if cohorts == "auto":
        cohorts = executor is _default_executor
    if cohorts and pending:
        try:
            prepare_synthetic_cohorts([by_name[n] for n in pending], profile, say)
        except Exception as err:  # noqa: BLE001 - each run then reports its own error
            say(f"[batch] could not prepare the synthetic cohort up front: {_error_line(err)}")

    needed = {}
    for name in pending:
        if name in group_of:
            needed.setdefault(group_of[name], []).append(name)
    prefix_result = {}
    with Pool(max_workers=max(1, int(workers))) as ex:
        futures = {}

        def submit_run(name, seeded: bool):
            r = by_name[name]
            if seeded:
                nbs = later_nbs
            else:
                nbs = notebooks
            say(f"[batch] {name}: {', '.join(nbs)}")
            f = ex.submit(_job, executor, r["dir"], profile, _filter(r["params"], declared, nbs), nbs, force)
            futures[f] = ("run", name)

        for key, names in needed.items():
            shared_dir = out / SHARED_DIR / key
            params = _filter(by_name[names[0]]["params"], declared, prefix_nbs)
            say(f"[batch] shared prefix {SHARED_DIR}/{key} ({', '.join(prefix_nbs)}) for {', '.join(names)}")
            f = ex.submit(_job, executor, shared_dir, profile, params, prefix_nbs, force)
            futures[f] = ("prefix", key)
        for name in pending:
            if name not in group_of:
                submit_run(name, seeded=False)
        while futures:
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for f in done:
                kind, ident = futures.pop(f)
                res = f.result()
                if kind == "prefix":
                    prefix_result[ident] = res
                    for name in needed[ident]:
                        if not res["ok"]:
                            status[name] = dict(status="failed", seconds=0.0,
                                                error=f"shared prefix failed: {res['error']}")
                            say(f"[batch] {name}: FAILED (shared prefix: {res['error']})")
                            continue
                        try:
                            RunDir(by_name[name]["dir"])  # refuse a folder that is not a run folder
                            seed_from_prefix(out / SHARED_DIR / ident, by_name[name]["dir"], prefix_nbs)
                        except Exception as err:  # noqa: BLE001
                            status[name] = dict(status="failed", seconds=0.0, error=_error_line(err))
                            say(f"[batch] {name}: FAILED ({_error_line(err)})")
                            continue
                        submit_run(name, seeded=True)
                else:
                    st = dict(status="ok" if res["ok"] else "failed", seconds=res["seconds"], error=res["error"])
                    if res["ok"] and not is_finished(by_name[ident]["dir"]):
                        st.update(status="incomplete", error="ran, but left no metrics.json / done metrics step "
                                  "(is the metrics notebook there?)")
                    key = group_of.get(ident)
                    if key in prefix_result:
                        st["prefix_seconds"] = prefix_result[key]["seconds"]
                    status[ident] = st
                    if not res["ok"]:
                        (out / "errors").mkdir(exist_ok=True)
                        (out / "errors" / f"{ident}.txt").write_text(res.get("traceback", res["error"]))
                    say(f"[batch] {ident}: {st['status']} ({st['seconds']} s){' - ' + st['error'] if st['error'] else ''}")
    table = summarise(out, runs, status, group_of)
    return table


# ---------------------------------------------------------------------------- summary
SUMMARY_METRICS = ("subject_auc", "accuracy", "precision", "recall", "pixel_dice")


def summarise(out, runs: list[dict], status: dict, group_of: dict | None = None) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.md`` and ``summary.png`` in the batch folder ``out``."""
    out = Path(out)
    group_of = group_of or {}
    grid_names = list(dict.fromkeys(k for r in runs for k in r["point"]))
    rows = []
    for r in runs:
        st = status.get(r["name"], dict(status="not run", seconds=0.0, error=""))
        row = dict(run=r["name"], **{k: _value_str(r["point"].get(k, "")) if isinstance(r["point"].get(k), (list, tuple))
                                     else r["point"].get(k, "") for k in grid_names})
        m = {}
        mfile = out / r["name"] / "metrics.json"
        if st["status"] in ("ok", "done earlier") and mfile.exists():
            m = json.loads(mfile.read_text())
        for k in SUMMARY_METRICS:
            row[k] = m.get(k)
        row["baseline_auc"] = (m.get("baseline") or {}).get("subject_auc")
        ci = m.get("ci") or {}
        for k in ("subject_auc", "accuracy"):
            lo, hi = (ci.get(k) or [None, None])
            row[f"{k}_lo"], row[f"{k}_hi"] = lo, hi
        row["seconds"] = st.get("seconds", 0.0)
        row["prefix_seconds"] = st.get("prefix_seconds", 0.0)
        row["shared_prefix"] = group_of.get(r["name"], "")
        row["status"] = st["status"]
        row["error"] = st.get("error", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(table, grid_names))
    try:
        fig = summary_figure(table)
        fig.savefig(out / "summary.png", dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception as err:  # noqa: BLE001 - the tables matter more than the picture
        print(f"[batch] summary.png not written: {_error_line(err)}")
    return table


def summary_markdown(table: pd.DataFrame, grid_names: list[str]) -> str:
    def f(v):
        return "–" if v is None or (isinstance(v, float) and v != v) else (f"{v:.3f}" if isinstance(v, float) else str(v))

    cols = ["run", *grid_names, "subject AUC (95% CI)", "accuracy (95% CI)", "precision", "recall", "pixel Dice",
            "baseline AUC", "seconds", "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        auc = f(r["subject_auc"]) + (f" ({f(r['subject_auc_lo'])}–{f(r['subject_auc_hi'])})"
                                     if r["subject_auc_lo"] is not None and r["subject_auc_lo"] == r["subject_auc_lo"] else "")
        acc = f(r["accuracy"]) + (f" ({f(r['accuracy_lo'])}–{f(r['accuracy_hi'])})"
                                  if r["accuracy_lo"] is not None and r["accuracy_lo"] == r["accuracy_lo"] else "")
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        vals = [r["run"], *[f(r[g]) for g in grid_names], auc, acc, f(r["precision"]), f(r["recall"]),
                f(r["pixel_dice"]), f(r["baseline_auc"]), f(float(r["seconds"])), status.replace("|", "/")]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def summary_figure(table: pd.DataFrame):
    """Bars of subject AUC and accuracy per run with 95% CI whiskers; failed runs marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(table)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * n + 3), 3.8), sharey=True)
    x = np.arange(n)
    for ax, key, title in ((axes[0], "subject_auc", "subject AUC"), (axes[1], "accuracy", "accuracy")):
        vals = pd.to_numeric(table[key], errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(table[f"{key}_lo"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(table[f"{key}_hi"], errors="coerce").to_numpy(dtype=float)
        err = np.vstack([np.where(np.isfinite(lo), vals - lo, 0), np.where(np.isfinite(hi), hi - vals, 0)])
        err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
        ax.bar(x, np.nan_to_num(vals), yerr=err, capsize=3, color="C0")
        if key == "subject_auc" and "baseline_auc" in table:
            b = pd.to_numeric(table["baseline_auc"], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, b, "D", color="C1", label="intensity baseline")
            ax.legend(fontsize=7, loc="lower right")
        for i, s in enumerate(table["status"]):
            if s not in ("ok", "done earlier"):
                ax.text(i, 0.05, s, rotation=90, ha="center", va="bottom", color="C3", fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", lw=0.8)  # chance (AUC) / a coin on a balanced set
        ax.set_xticks(x, table["run"], rotation=40, ha="right", fontsize=7)
        ax.set(ylim=(0, 1.05), title=title)
    fig.suptitle("Batch summary (test set; whiskers = 95% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    return fig

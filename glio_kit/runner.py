"""Run the notebooks in order with papermill into a run folder (``glio-kit run``).

Each notebook is one step of the paper's chain. The executed copies land in
``<run>/notebooks/``; a step whose record in ``<run>/steps/`` says done, and whose executed
notebook exists, is not run again unless ``force``.
"""
from __future__ import annotations

import time
from pathlib import Path

from .errors import GlioKitError
from .runtime import RunDir, project_root

#: notebook file -> the step record it writes (see RunDir.claim in each step's function)
STEPS = {
    "01_data_prep.ipynb": "prep",
    "02_train_dcgan.ipynb": "train",
    "03_scoring.ipynb": "score",
    "04_residuals.ipynb": "residuals",
    "05_metrics.ipynb": "metrics",
}


def notebooks_dir() -> Path:
    d = project_root() / "notebooks"
    if not d.is_dir():
        raise GlioKitError(f"{d}: notebooks folder not found; run glio-kit from a checkout of the repository")
    return d


def available_notebooks() -> list[Path]:
    """The chain's notebooks that exist, in order."""
    d = notebooks_dir()
    return [d / name for name in STEPS if (d / name).exists()]


def declared_parameters(nb: Path) -> dict:
    """Names and defaults in the notebook's ``parameters`` cell."""
    import papermill as pm

    return {name: info["default"] for name, info in pm.inspect_notebook(str(nb)).items()}


def run_chain(run_dir, profile: str, params: dict | None = None, notebooks: list[str] | None = None,
              force: bool = False, log_output: bool = False, progress: bool = True) -> list[dict]:
    """Execute the notebooks in order into ``run_dir`` (created if needed).

    params : notebook parameters (``name -> value``); each notebook receives the ones its
        ``parameters`` cell declares. A name no notebook declares is an error (catches typos).
    notebooks : file names to run (default: all that exist, in order).
    Returns one dict per notebook: name, status ("ran" | "skipped"), seconds.
    """
    import papermill as pm

    params = dict(params or {})
    run = RunDir(run_dir)
    out_dir = run.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    nbs = available_notebooks() if not notebooks else [notebooks_dir() / n for n in notebooks]
    declared = {nb.name: declared_parameters(nb) for nb in nbs}
    unknown = sorted(set(params) - set().union(*[set(d) for d in declared.values()]))
    if unknown:
        known = sorted(set().union(*[set(d) for d in declared.values()]))
        raise GlioKitError(f"parameter(s) {unknown} are not declared by any notebook; known: {known}")
    report = []
    for nb in nbs:
        step = STEPS.get(nb.name)
        out = out_dir / nb.name
        if not force and step and run.is_done(step) and out.exists():
            report.append(dict(notebook=nb.name, status="skipped", seconds=0.0))
            print(f"[glio-kit] {nb.name}: done earlier, skipped (use --force to redo)")
            continue
        nb_params = {k: v for k, v in params.items() if k in declared[nb.name]}
        nb_params.update(profile=profile, run_dir=str(run.path))
        if force and "overwrite" in declared[nb.name]:
            nb_params["overwrite"] = True
        print(f"[glio-kit] {nb.name} -> {out}")
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=nb_params, kernel_name="python3",
                                cwd=str(nb.parent), log_output=log_output, progress_bar=progress)
        except pm.PapermillExecutionError as err:
            raise GlioKitError(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                               f"the executed notebook with the full traceback is {out}") from None
        report.append(dict(notebook=nb.name, status="ran", seconds=round(time.time() - t0, 1)))
    return report

"""Run the notebooks in order with papermill into a run folder (``glio-kit run``).

Each notebook is one step of the paper's chain (:mod:`glio_kit.steps`). The executed copies
land in ``<run>/notebooks/``; a step whose record in ``<run>/steps/`` says done, and whose
executed notebook exists, is not run again unless ``force``.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .errors import GlioKitError
from .runtime import RunDir
from .steps import STEPS, all_parameters, by_notebook


def notebooks_dir() -> Path:
    """The chain's notebooks: ``notebooks/`` of the checkout the kit is installed from (an
    editable install), else the copies shipped inside the package (``glio_kit/notebooks``)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "notebooks" if (here.parent / "pyproject.toml").exists() else None
    for d in (checkout, here / "notebooks"):
        if d is not None and d.is_dir():
            return d
    raise GlioKitError(f"no notebooks found in {checkout or here / 'notebooks'}; the installation is "
                       f"incomplete: reinstall glio-kit (pip install --force-reinstall glio-kit)")


def copy_notebooks(dest) -> tuple[list[Path], list[Path]]:
    """Copy the chain's notebooks into ``dest`` (created if needed) for students to open.

    A file that already exists in ``dest`` is never overwritten (it may hold a student's work).
    Returns ``(copied, kept)``: the paths written and the existing paths left as they were.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise GlioKitError(f"{dest}: is a file; give a folder to copy the notebooks into")
    dest.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for nb in available_notebooks():
        out = dest / nb.name
        if out.exists():
            kept.append(out)
            continue
        shutil.copyfile(nb, out)
        copied.append(out)
    return copied, kept


def available_notebooks() -> list[Path]:
    """The chain's notebooks that exist, in order."""
    d = notebooks_dir()
    return [d / s.notebook for s in STEPS if (d / s.notebook).exists()]


def check_parameters(params: dict, where: str = "") -> None:
    """Refuse names that no step declares (catches typos such as ``-p epoch=3``)."""
    unknown = sorted(set(params) - all_parameters())
    if unknown:
        raise GlioKitError(f"{where}parameter(s) {unknown} are not declared by any notebook; "
                           f"known: {sorted(all_parameters())}")


def notebook_parameters(notebook: str, params: dict) -> dict:
    """The subset of ``params`` that ``notebook``'s ``parameters`` cell declares."""
    names = set(by_notebook(notebook).parameter_names())
    return {k: v for k, v in params.items() if k in names}


def run_chain(run_dir, profile: str, params: dict | None = None, notebooks: list[str] | None = None,
              force: bool = False, log_output: bool = False, progress: bool = True) -> list[dict]:
    """Execute the notebooks in order into ``run_dir`` (created if needed).

    params : notebook parameters (``name -> value``); each notebook receives the ones its
        step declares (:mod:`glio_kit.steps`). A name no step declares is an error.
    notebooks : file names to run (default: all that exist, in order).
    Returns one dict per notebook: name, status ("ran" | "skipped"), seconds.
    """
    import papermill as pm

    params = dict(params or {})
    check_parameters(params)
    run = RunDir(run_dir)
    out_dir = run.path / "notebooks"
    out_dir.mkdir(exist_ok=True)
    nbs = available_notebooks() if not notebooks else [notebooks_dir() / n for n in notebooks]
    report = []
    for nb in nbs:
        st = by_notebook(nb.name)
        out = out_dir / nb.name
        if not force and run.is_done(st.name) and out.exists():
            report.append(dict(notebook=nb.name, status="skipped", seconds=0.0))
            print(f"[glio-kit] {nb.name}: done earlier, skipped (use --force to redo)")
            continue
        nb_params = notebook_parameters(nb.name, params)
        nb_params.update(profile=profile, run_dir=str(run.path))
        if force and "overwrite" in st.parameters:
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

"""The few lines every notebook starts with, kept here so no notebook repeats them.

A notebook's ``parameters`` cell holds plain literals (papermill overwrites them). It is
written from the step's settings class by :func:`parameters_source` (``python -m
glio_kit.run.notebook`` rewrites the cells; a test checks they are in sync), so a knob is written
once, in :mod:`glio_kit.run.config`. The next cell calls :func:`setup` with the notebook's globals
and gets the step's settings and the run folder back.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from .. import __version__
from .config import DEFAULT_PROFILE, PROFILE_ENV, SMOKE_NOTE, get_config
from ..device import choose_device, seed_everything
from ..paths import default_run_dir, notebooks_dir, project_root
from .rundir import RUN_MARKER, RunDir
from .lock import hold_for_notebook
from .steps import STEPS, step as get_step
from datetime import datetime
from ..atomic import write_text
from .environment import MACHINE, machine_info

PARAMETERS_HEADER = "# Parameters (papermill injects values here; None = the profile's value)"
#: Versions and device of each notebook of a run (:func:`record_environment`).
ENVIRONMENT = "environment.json"


def header(step: str, settings) -> dict:
    """Print the line every notebook starts with: step, kit version, device, profile.

    settings : the step's settings (:mod:`glio_kit.run.config`): ``device``, ``profile``, ``seed``.
    """
    device = choose_device(settings.device)
    info = dict(
        step=step,
        glio_kit=__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        device=str(device),
        profile=settings.profile,
        seed=settings.seed,
    )
    print(" | ".join(f"{k}: {v}" for k, v in info.items()))
    return info


def _literal(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def parameters_source(step_name: str) -> str:
    """The ``parameters`` cell of a step's notebook, written from its settings class."""
    st = get_step(step_name)
    lines = [PARAMETERS_HEADER]
    width = max(len(n) for n in st.parameter_names()) + 8
    for name, (default, help_) in st.parameters.items():
        if name == "overwrite":
            continue  # last, after the knobs
        lines.append(f"{f'{name} = {_literal(default)}':<{width}}  # {help_}")
    for name in st.settings.knobs():
        lines.append(f"{f'{name} = None':<{width}}  # {st.settings.help(name)}")
    if "overwrite" in st.parameters:
        default, help_ = st.parameters["overwrite"]
        lines.append(f"{f'overwrite = {_literal(default)}':<{width}}  # {help_}")
    return "\n".join(lines)


def parameters_cell(nb: dict) -> dict:
    """The cell tagged ``parameters`` of a notebook (as a dict read from JSON)."""
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def sync_notebooks(folder=None, check: bool = False) -> list[str]:
    """Rewrite (or with ``check`` only compare) every notebook's ``parameters`` cell.

    Returns the notebook files that were (or would be) changed.
    """
    folder = Path(folder) if folder else notebooks_dir()
    changed = []
    for st in STEPS:
        path = folder / st.notebook
        nb = json.loads(path.read_text())
        cell = parameters_cell(nb)
        want = parameters_source(st.name)
        if "".join(cell["source"]) != want:
            changed.append(st.notebook)
            if not check:
                cell["source"] = want.splitlines(keepends=True)
                path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def setup(step_name: str, namespace: dict):
    """Resolve a notebook's parameters into ``(settings, run)`` and print the header line.

    namespace : the notebook's globals (its parameter values); ``None`` means "the profile's
        value". ``run_dir`` empty means ``$GLIO_KIT_RUN_DIR`` or ``runs/<profile>``.
    Returns the step's settings (:mod:`glio_kit.run.config`) and the :class:`RunDir`.
    A run folder that another process (``glio-kit run``) holds stops the notebook here, before
    anything is written (:func:`glio_kit.run.lock.hold_for_notebook`).
    """
    st = get_step(step_name)
    knobs = {k: namespace[k] for k in st.settings.knobs() if k in namespace}
    profile = namespace.get("profile") or os.environ.get(PROFILE_ENV) or None
    run_dir = namespace.get("run_dir") or os.environ.get("GLIO_KIT_RUN_DIR")
    found = "" if run_dir else "found; "
    run_dir = run_dir or find_run_dir(profile)
    # no profile chosen: the run folder's own (run.json), so a copied notebook matches the run it reads
    theirs = RunDir(run_dir, create=False).profile()
    settings = get_config(profile or theirs, **knobs).step(step_name)
    hold_for_notebook(run_dir, st.notebook)
    run = RunDir(run_dir, profile=settings.profile)
    record_environment(run, step_name, header(st.notebook, settings))
    whose = f"made with the {theirs} profile" if theirs else "new"
    print(f"run folder: {run.path} ({found}{whose}; choose another with run_dir or $GLIO_KIT_RUN_DIR)")
    if settings.profile == "smoke":
        print(f"NOTE: {SMOKE_NOTE}")
    seed_everything(settings.seed)
    return settings, run


def find_run_dir(profile: str | None = None) -> Path:
    """The run folder of a notebook given none: ``runs/<profile>`` (any profile when ``profile``
    is None; the one written last when several) holding a ``run.json``, looked for beside the
    notebook, in the folder above it (notebooks copied out by ``glio-kit notebooks`` next to the
    user's ``runs/``) and in the checkout; none found: ``runs/<profile or demo>`` of the checkout
    (or of the working directory)."""
    roots = list(dict.fromkeys(p.resolve() for p in (Path.cwd(), Path.cwd().parent, project_root())))
    for root in roots:
        runs = sorted((root / "runs").glob(f"{profile or '*'}/{RUN_MARKER}"), key=lambda m: m.stat().st_mtime)
        if runs:
            return runs[-1].parent
    return default_run_dir(profile or DEFAULT_PROFILE)


def record_environment(run: RunDir, step_name: str, info: dict) -> None:
    """Add this notebook's header (versions, device, profile, seed) and the time to
    ``<run>/environment.json`` under ``step_name``; the run report (:mod:`glio_kit.run.report`) shows it."""
    path = run / ENVIRONMENT
    try:
        env = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        env = {}  # a damaged file is only a record: start it again
    env[step_name] = dict(info, started=datetime.now().isoformat(timespec="seconds"))
    env[MACHINE] = machine_info()  # the last notebook's machine: every package, CPU, GPU, lock file
    write_text(path, json.dumps(env, indent=2) + "\n")


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def freeze_widgets(path) -> int:
    """Replace the live widgets of an executed notebook by what they saved of themselves.

    A widget needs its kernel: stored with it, an exported HTML page asks a CDN for scripts
    (nothing shows offline), JupyterLab without the kernel shows ``VBox(...)`` or "model not
    found", and a tqdm bar stays frozen at "0%". So each widget output that carries a picture
    (the residual browser's PNG snapshot) keeps only the picture and its text, the others keep
    their text, and the notebook's saved widget state is dropped. Running the cell again in
    JupyterLab brings the live widget back. Returns the number of outputs changed.
    """
    path = Path(path)
    nb = json.loads(path.read_text())
    changed = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                del out["data"][WIDGET_VIEW]
                changed += 1
    if changed or "widgets" in nb.get("metadata", {}):
        nb.get("metadata", {}).pop("widgets", None)
        write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def show(fig, run: RunDir, name: str):
    """Save ``fig`` as ``<run>/figures/<name>.png``; the notebook's inline backend shows it."""
    path = run.save_figure(fig, name)
    print(f"saved figures/{path.name}")


if __name__ == "__main__":
    import sys

    changed = sync_notebooks(check="--check" in sys.argv)
    print("\n".join(changed) if changed else "every parameters cell is in sync")
    sys.exit(1 if changed and "--check" in sys.argv else 0)

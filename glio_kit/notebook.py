"""The few lines every notebook starts with, kept here so no notebook repeats them.

A notebook's ``parameters`` cell holds plain literals (papermill overwrites them); the next
cell calls :func:`setup` with those values and gets the resolved configuration and the run
folder back.
"""
from __future__ import annotations

import os

from .config import get_config
from .runtime import RunDir, default_run_dir, header, seed_everything

#: Notebook parameters that are not profile knobs.
NON_KNOBS = ("profile", "run_dir", "train_healthy_dir", "test_healthy_dir", "test_tumor_dir", "overwrite",
             # what notebook 04 shows; no effect on any result
             "subject_healthy", "subject_tumor", "n_figure_slices")


def parameters(namespace: dict) -> dict:
    """Pick the notebook parameters out of a namespace (``parameters(globals())``)."""
    from .config import BASE

    names = set(NON_KNOBS) | set(BASE)
    return {k: namespace[k] for k in names if k in namespace}


def setup(step: str, params: dict):
    """Resolve a notebook's parameters into ``(cfg, run)`` and print the header line.

    params : the notebook's parameter values; ``None`` means "the profile's value".
    ``run_dir`` empty means ``$GLIO_KIT_RUN_DIR`` or ``runs/<profile>``.
    """
    knobs = {k: v for k, v in params.items() if k not in NON_KNOBS}
    cfg = get_config(params.get("profile") or None, **knobs)
    run_dir = params.get("run_dir") or os.environ.get("GLIO_KIT_RUN_DIR") or default_run_dir(cfg["profile"])
    run = RunDir(run_dir)
    header(step, cfg)
    print(f"run folder: {run.path}")
    seed_everything(cfg["seed"])
    return cfg, run


def show(fig, run: RunDir, name: str):
    """Save ``fig`` as ``<run>/figures/<name>.png``; the notebook's inline backend shows it."""
    path = run.save_figure(fig, name)
    print(f"saved figures/{path.name}")

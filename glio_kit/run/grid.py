"""A batch's grid: the YAML file read and checked, its runs named, and which runs share a prefix.

Pure functions apart from reading the grid file (see :mod:`glio_kit.run.batch` for the format).
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import yaml

from .batch_summary import value_str
from ..errors import GlioKitError
from .config import profile_name
from .engine import check_cluster
from .rundir import params_digest
from .runner import available_notebooks
from .steps import PREFIX_STEPS, STEPS, step

#: The notebooks whose work is shared between runs with equal parameters for them.
PREFIX_NOTEBOOKS = tuple(step(name).notebook for name in PREFIX_STEPS)
#: Notebook parameters that never decide what a step computes.
NOT_SHARED_KEYS = ("run_dir", "overwrite")
COHORT_KEYS = ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir")


# ----------------------------------------------------------------------- the grid
def _from(folder: Path, value) -> str:
    """``value`` as an absolute path: ``~`` expanded, a relative path taken from ``folder``."""
    return os.path.normpath(os.path.join(folder, os.path.expanduser(str(value))))


def load_grid(path) -> dict:
    """Read and check a grid YAML file; returns dict profile, out, base, grid (+ cohort folders).

    ``out`` and the cohort folders (at the top, in ``base`` or in ``grid``) come back absolute,
    relative ones taken from the working directory (where ``glio-kit batch`` runs), as every other
    path the kit is given; not from the grid file's folder, so a grid written by ``glio-kit
    examples`` anywhere puts its batch beside the user."""
    path = Path(path)
    if not path.exists():
        raise GlioKitError(f"{path}: grid file not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GlioKitError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise GlioKitError(f"{path}: expected a mapping with profile, out, base and grid")
    known = {"profile", "out", "base", "grid", "workers", "cluster", *COHORT_KEYS}
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
    try:
        profile = profile_name(spec.get("profile"))
    except ValueError as err:
        raise GlioKitError(f"{path}: {err}") from None
    here = Path.cwd()  # relative paths in a grid file: from where the command runs
    out = dict(profile=profile, out=_from(here, spec["out"]), base=dict(base), grid=dict(grid))
    for k in COHORT_KEYS:
        if spec.get(k):
            out[k] = _from(here, spec[k])
        if base.get(k):
            out["base"][k] = _from(here, base[k])
        if k in grid:
            out["grid"][k] = [_from(here, v) if v else v for v in grid[k]]
    if spec.get("workers"):
        out["workers"] = int(spec["workers"])
    out["cluster"] = check_cluster(spec.get("cluster"), path)  # where the runs execute: glio_kit.run.engine
    return out


def expand_grid(grid: dict) -> list[dict]:
    """The Cartesian product of ``grid`` (name -> list of values), in the file's order.

    ``{"lam": [0, 0.5], "mapping": ["iterative", "encoder"]}`` -> 4 dicts, the last name
    varying fastest. An empty grid is one run with no grid values.
    """
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def run_name(point: dict) -> str:
    """Folder name of a grid point: ``lam=0.1_mapping=encoder`` (filesystem-safe).

    Within each ``name=value`` part, characters other than letters, digits and ``_ . = + -``
    become ``-``; parts are joined with ``_``; lists are joined with ``x`` (``64x64``); an
    empty point is ``base``.
    """
    parts = [re.sub(r"[^A-Za-z0-9_.=+\-]+", "-", f"{k}={value_str(v)}") for k, v in point.items()]
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
    """``{notebook file: set of parameter names}`` for the chain's notebooks that exist
    (from the table of steps, :mod:`glio_kit.run.steps`)."""
    present = {nb.name for nb in available_notebooks()}
    return {s.notebook: set(s.parameter_names()) for s in STEPS if s.notebook in present}

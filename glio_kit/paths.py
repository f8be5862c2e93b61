"""Where things land by default: the checkout, generated cohorts, run folders."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import GlioKitError


def project_root() -> Path:
    """The repository checkout when the kit is installed from one, else the working directory."""
    here = Path(__file__).resolve().parents[1]  # glio_kit/paths.py -> the checkout
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def default_data_dir() -> Path:
    """Where generated cohorts land: ``$GLIO_KIT_DATA`` or ``<repo>/data``."""
    env = os.environ.get("GLIO_KIT_DATA")
    return Path(env) if env else project_root() / "data"


def default_run_dir(profile: str) -> Path:
    """``<repo>/runs/<profile>`` unless the notebook parameter ``run_dir`` says otherwise."""
    return project_root() / "runs" / profile


def notebooks_dir() -> Path:
    """The chain's notebooks: ``notebooks/`` of the checkout the kit is installed from (an
    editable install), else the copies shipped inside the package (``glio_kit/notebooks``)."""
    here = Path(__file__).resolve().parent  # glio_kit/
    checkout = here.parent / "notebooks" if (here.parent / "pyproject.toml").exists() else None
    for d in (checkout, here / "notebooks"):
        if d is not None and d.is_dir():
            return d
    raise GlioKitError(f"no notebooks found in {checkout or here / 'notebooks'}; the installation is "
                       f"incomplete: reinstall glio-kit (pip install --force-reinstall glio-kit)")


def examples_dir() -> Path:
    """The example grid files: ``examples/`` of the checkout (an editable install), else the
    copies shipped inside the package (``glio_kit/examples``)."""
    here = Path(__file__).resolve().parent  # glio_kit/
    for d in (here.parent / "examples" if (here.parent / "pyproject.toml").exists() else None,
              here / "examples"):
        if d is not None and d.is_dir() and any(d.glob("*.yaml")):
            return d
    raise GlioKitError(f"no example grids found in {here / 'examples'}; the installation is incomplete: "
                       f"reinstall glio-kit (pip install --force-reinstall glio-kit)")

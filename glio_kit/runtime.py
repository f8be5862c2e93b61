"""Device, seeds, paths, the notebook header and the run folder.

The run folder is where every step writes and the next step reads, so any notebook can
be rerun alone and a papermill batch can start at any step. Each step records the
parameters it ran with in ``steps/<step>.json``; a second run with other parameters into the
same folder stops instead of silently mixing two runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import shutil
from pathlib import Path

import numpy as np

from . import __version__
from .errors import RunFolderError

RUN_MARKER = "run.json"


# ----------------------------------------------------------------------------- paths
def project_root() -> Path:
    """The repository checkout when the kit is installed from one, else the working dir."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def default_data_dir() -> Path:
    """Where generated cohorts land: ``$GLIO_KIT_DATA`` or ``<repo>/data``."""
    env = os.environ.get("GLIO_KIT_DATA")
    return Path(env) if env else project_root() / "data"


def default_run_dir(profile: str) -> Path:
    """``<repo>/runs/<profile>`` unless the notebook parameter ``run_dir`` says otherwise."""
    return project_root() / "runs" / profile


# ---------------------------------------------------------------------- device, seeds
def choose_device(preference: str = "auto"):
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    import torch

    if preference and preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={preference!r} asked for but CUDA is not available; "
                               f"use 'auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one number, so a run can be repeated."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def header(step: str, settings) -> dict:
    """Print the line every notebook starts with: step, kit version, device, profile.

    settings : the step's settings (:mod:`glio_kit.config`): ``device``, ``profile``, ``seed``.
    """
    import torch

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


def quiet() -> bool:
    """Progress bars stay silent under pytest and when ``GLIO_KIT_QUIET=1``."""
    return bool(os.environ.get("GLIO_KIT_QUIET") or os.environ.get("PYTEST_CURRENT_TEST"))


# -------------------------------------------------------------------------- run folder
def params_digest(params: dict) -> str:
    """A short, order-independent fingerprint of a parameter dictionary."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class RunDir:
    """A run folder: ``steps/`` records, ``figures/`` PNGs, and each step's outputs.

    >>> run = RunDir("runs/demo")
    >>> if not run.claim("prep", {"image_size": [64, 64]}):
    ...     ...  # do the work
    ...     run.mark_done("prep")
    """

    def __init__(self, path, create: bool = True):
        self.path = Path(path).expanduser().resolve()
        if create:
            self._adopt()

    def _adopt(self) -> None:
        marker = self.path / RUN_MARKER
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a file, not a run folder; choose another run_dir")
        if self.path.exists() and any(self.path.iterdir()) and not marker.exists():
            raise RunFolderError(
                f"{self.path}: the folder is not empty and is not a glio-kit run folder "
                f"(no {RUN_MARKER}); choose an empty or new run_dir so nothing of yours is overwritten"
            )
        (self.path / "steps").mkdir(parents=True, exist_ok=True)
        (self.path / "figures").mkdir(exist_ok=True)
        if not marker.exists():
            marker.write_text(json.dumps({"glio_kit": __version__}, indent=2) + "\n")

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- step records
    def _record_path(self, step: str) -> Path:
        return self.path / "steps" / f"{step}.json"

    def record(self, step: str) -> dict | None:
        p = self._record_path(step)
        return json.loads(p.read_text()) if p.exists() else None

    def is_done(self, step: str) -> bool:
        rec = self.record(step)
        return bool(rec and rec.get("status") == "done")

    def claim(self, step: str, params: dict, after: tuple[str, ...] = (), overwrite: bool = False,
              settings: dict | None = None) -> bool:
        """Register ``step`` with ``params``; return True when it is already done with them.

        ``params`` are what decide the step's result (its identity: a settings object's
        :meth:`~glio_kit.config.StepSettings.identity` plus e.g. input paths); ``settings``
        (optional) every knob it ran with, recorded beside them. ``after`` names the steps this
        one reads; their parameters are part of its identity, so redoing an earlier step with
        other values invalidates the later ones. A record with different parameters raises
        :class:`RunFolderError` unless ``overwrite``.
        """
        params = json.loads(json.dumps(params, default=str))  # plain JSON values only
        upstream = {}
        for name in after:
            rec = self.record(name)
            if not rec or rec.get("status") != "done":
                raise RunFolderError(
                    f"{self.path}: step {step!r} needs step {name!r} first; run its notebook "
                    f"(or `glio-kit run`) with this run_dir"
                )
            upstream[name] = rec["digest"]
        digest = params_digest({"params": params, "upstream": upstream})
        old = self.record(step)
        if old is not None and old.get("digest") != digest and not overwrite:
            diffs = [
                f"{k}: {old['params'].get(k)!r} -> {params.get(k)!r}"
                for k in sorted(set(old.get("params", {})) | set(params))
                if old.get("params", {}).get(k) != params.get(k)
            ]
            if old.get("upstream") != upstream:
                diffs.append("an earlier step was redone with other parameters")
            raise RunFolderError(
                f"{self.path}: already holds a different {step!r} run ({'; '.join(diffs[:6])}). "
                f"Nothing was overwritten. Use a new run_dir, or pass overwrite=True to redo this step."
            )
        if old is not None and old.get("digest") == digest and old.get("status") == "done":
            return True
        rec = dict(step=step, status="running", digest=digest, params=params, upstream=upstream)
        if settings is not None:
            rec["settings"] = json.loads(json.dumps(settings, default=str))
        self._record_path(step).write_text(json.dumps(rec, indent=2) + "\n")
        return False

    def claim_step(self, step: str, settings, extra: dict | None = None, overwrite: bool = False) -> bool:
        """:meth:`claim` for a step of the chain (:mod:`glio_kit.steps`): its identity is
        ``settings.identity()`` plus ``extra`` (e.g. input folders); the steps it reads come
        from the table of steps; every knob is recorded under ``settings``."""
        from .steps import step as get_step

        params = dict(settings.identity(), **(extra or {}))
        return self.claim(step, params, after=get_step(step).reads, overwrite=overwrite,
                          settings=settings.as_dict())

    def mark_done(self, step: str, **info) -> None:
        rec = self.record(step)
        if rec is None:
            raise RunFolderError(f"{self.path}: step {step!r} was never claimed")
        rec.update(status="done", info=json.loads(json.dumps(info, default=str)))
        self._record_path(step).write_text(json.dumps(rec, indent=2) + "\n")

    def reset_dir(self, name: str) -> Path:
        """An empty sub-folder for a step's outputs (only ever one the kit itself made)."""
        p = self.path / name
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p

    # -- figures
    def save_figure(self, fig, name: str, dpi: int = 120) -> Path:
        """Save ``fig`` as ``figures/<name>.png`` and return the path (the notebook still shows it)."""
        out = self.path / "figures" / (name if name.endswith(".png") else f"{name}.png")
        fig.savefig(out, dpi=dpi, bbox_inches="tight")
        return out

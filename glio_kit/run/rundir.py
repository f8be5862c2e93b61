"""The run folder: where every step writes and the next step reads.

Any notebook can be rerun alone and a papermill batch can start at any step. Each step records the
parameters it ran with in ``steps/<step>.json``; a second run with other parameters into the
same folder stops instead of silently mixing two runs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

from .. import __version__
from ..atomic import atomic_path, write_text
from ..errors import RunFolderError
from .steps import step as get_step
from .lock import LOCK_FILE

RUN_MARKER = "run.json"


# -------------------------------------------------------------------------- run folder
def params_digest(params: dict) -> str:
    """A short, order-independent fingerprint of a parameter dictionary."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def step_digest(params: dict, upstream: dict) -> str:
    """A step's identity: its parameters and the digests of the steps it reads (``name -> digest``).

    The runner computes it before a notebook starts (:func:`glio_kit.run.runner.plan_chain`); a
    step's :meth:`RunDir.claim` computes the same from the records when it runs.
    """
    return params_digest({"params": plain(params), "upstream": upstream})


def plain(value):
    """``value`` as plain JSON values (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def param_changes(old: dict, params: dict) -> list[str]:
    """``["lam: 0.1 -> 0.5", ...]``: every parameter whose value differs between a step record
    (``old``) and the parameters it would run with now."""
    before = old.get("params") or {}
    return [f"{k}: {before.get(k, '(not set)')!r} -> {params.get(k, '(not set)')!r}"
            for k in sorted(set(before) | set(params)) if before.get(k) != params.get(k)]


class RunDir:
    """A run folder: ``steps/`` records, ``figures/`` PNGs, and each step's outputs.

    A step record ``steps/<step>.json`` holds ``status`` (``running`` | ``done`` | ``failed`` |
    ``stale``), ``params`` (what decides the step's result), ``digest`` (of the params and of the
    records of the steps it reads), ``upstream`` and ``upstream_attempts`` (those records'
    digests and attempt ids), ``attempt`` (a new id each time the step starts) and
    ``settings`` (every knob). It is written atomically; only a finished step is ``done``.

    >>> run = RunDir("runs/demo")
    >>> if not run.claim("prep", {"image_size": [64, 64]}):
    ...     ...  # do the work
    ...     run.mark_done("prep")
    """

    def __init__(self, path, create: bool = True, profile: str | None = None):
        self.path = Path(path).expanduser().resolve()
        if create:
            self.adopt(profile)

    def check(self) -> None:
        """Refuse a path that cannot be a run folder (a file, a folder of the user's); writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a file, not a run folder; choose another run_dir")
        # the lock file (glio_kit.run.lock) is made before the folder is adopted
        others = self.path.exists() and any(f.name != LOCK_FILE for f in self.path.iterdir())
        if others and not (self.path / RUN_MARKER).exists():
            raise RunFolderError(
                f"{self.path}: the folder is not empty and is not a glio-kit run folder "
                f"(no {RUN_MARKER}); choose an empty or new run_dir so nothing of yours is overwritten"
            )

    def adopt(self, profile: str | None = None) -> None:
        """Make the folder a run folder (``steps/``, ``figures/``, ``run.json``); ``run.json``
        records ``profile``, the profile the folder is made with (kept once set)."""
        self.check()
        marker = self.path / RUN_MARKER
        (self.path / "steps").mkdir(parents=True, exist_ok=True)
        (self.path / "figures").mkdir(exist_ok=True)
        meta = self._meta()
        if not marker.exists() or (profile and not meta.get("profile")):
            meta = dict(meta, glio_kit=meta.get("glio_kit", __version__), **({"profile": profile} if profile
                                                                              else {}))
            write_text(marker, json.dumps(meta, indent=2) + "\n")

    def _meta(self) -> dict:
        try:
            meta = json.loads((self.path / RUN_MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def profile(self) -> str | None:
        """The profile the folder was made with: ``run.json``'s, else that of its step records
        (a folder made before ``run.json`` recorded it); None for a new folder."""
        if self._meta().get("profile"):
            return self._meta()["profile"]
        for rec in sorted((self.path / "steps").glob("*.json")):
            try:
                found = (json.loads(rec.read_text()).get("settings") or {}).get("profile")
            except (OSError, ValueError, AttributeError):
                continue
            if found:
                return found
        return None

    def __truediv__(self, other) -> Path:
        return self.path / other

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- step records
    def _record_path(self, step: str) -> Path:
        return self.path / "steps" / f"{step}.json"

    def record(self, step: str) -> dict | None:
        """The step's record, or None when it never started. A record that cannot be read
        raises :class:`RunFolderError` naming the file."""
        p = self._record_path(step)
        try:
            rec = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise RunFolderError(
                f"{p}: step record cannot be read ({type(err).__name__}: {err}); delete this file "
                f"and redo the step (`glio-kit run --force {step}`), or use a new run folder") from None
        if not isinstance(rec, dict) or "digest" not in rec:
            raise RunFolderError(f"{p}: is not a glio-kit step record; delete this file and redo the step "
                                 f"(`glio-kit run --force {step}`), or use a new run folder")
        return rec

    def _write_record(self, step: str, rec: dict) -> None:
        write_text(self._record_path(step), json.dumps(rec, indent=2) + "\n")

    def is_done(self, step: str) -> bool:
        rec = self.record(step)
        return bool(rec and rec.get("status") == "done")

    def has_products(self, step: str) -> bool:
        """True when any of the step's ``products`` (:mod:`glio_kit.run.steps`) exists in the run folder."""
        return any((self.path / p).exists() for p in get_step(step).products)

    def upstream_of(self, step: str, after: tuple[str, ...]) -> tuple[dict, dict]:
        """``(digests, attempts)`` of the done records of ``after``; a step not done raises."""
        digests, attempts = {}, {}
        for name in after:
            rec = self.record(name)
            if not rec or rec.get("status") != "done":
                raise RunFolderError(
                    f"{self.path}: step {step!r} needs step {name!r} first; run its notebook "
                    f"(or `glio-kit run`) with this run_dir")
            digests[name], attempts[name] = rec["digest"], rec.get("attempt", "")
        return digests, attempts

    def claim(self, step: str, params: dict, after: tuple[str, ...] = (), overwrite: bool = False,
              settings: dict | None = None) -> bool:
        """Register ``step`` with ``params``; return True when it is already done with them.

        ``params`` are what decide the step's result (its identity: a settings object's
        :meth:`~glio_kit.run.config.StepSettings.identity` plus e.g. input paths); ``settings``
        (optional) every knob it ran with, recorded beside them. ``after`` names the steps this
        one reads; their records are part of its identity, so redoing an earlier step (with
        other values, or at all) invalidates the later ones. A done record with different
        parameters, or one made before an earlier step was redone, raises
        :class:`RunFolderError` unless ``overwrite``; so does an unfinished record with other
        parameters whose step left products (the table of steps' ``products``). An unfinished record
        with the same parameters is a retry.
        """
        params = plain(params)
        upstream, attempts = self.upstream_of(step, after)
        digest = step_digest(params, upstream)
        old = self.record(step)
        if old is not None:
            same = old.get("digest") == digest and old.get("upstream_attempts", attempts) == attempts
            if same and old.get("status") == "done":
                return True
            if not same and not overwrite and (old.get("status") == "done" or self.has_products(step)):
                raise RunFolderError(self._conflict(step, old, params, upstream, attempts))
        rec = dict(step=step, status="running", digest=digest, params=params, upstream=upstream,
                   upstream_attempts=attempts, attempt=uuid.uuid4().hex[:12])
        if settings is not None:
            rec["settings"] = plain(settings)
        self._write_record(step, rec)
        return False

    def _conflict(self, step: str, old: dict, params: dict, upstream: dict, attempts: dict) -> str:
        diffs = param_changes(old, params)
        for name in upstream:
            if (old.get("upstream") or {}).get(name) != upstream[name]:
                diffs.append(f"step {name!r} now holds a run with other parameters")
            elif (old.get("upstream_attempts") or {}).get(name, attempts[name]) != attempts[name]:
                diffs.append(f"step {name!r} was redone after this step ran")
        state = "was done" if old.get("status") == "done" else f"was started ({old.get('status')})"
        return (f"{self.path}: step {step!r} {state} with other settings ({'; '.join(diffs[:8])}). "
                f"Nothing was overwritten. Use a new run folder, or redo this step and every step after "
                f"it: `glio-kit run --force {step}` (in a notebook: overwrite=True).")

    def claim_step(self, step: str, settings, extra: dict | None = None, overwrite: bool = False) -> bool:
        """:meth:`claim` for a step of the chain (:mod:`glio_kit.run.steps`): its identity is
        ``settings.identity()`` plus ``extra`` (e.g. input folders); the steps it reads come
        from the table of steps; every knob is recorded under ``settings``."""
        params = dict(settings.identity(), **(extra or {}))
        return self.claim(step, params, after=get_step(step).reads, overwrite=overwrite,
                          settings=settings.as_dict())

    def mark_done(self, step: str, **info) -> None:
        rec = self.record(step)
        if rec is None:
            raise RunFolderError(f"{self.path}: step {step!r} was never claimed")
        rec.update(status="done", info=plain(info))
        self._write_record(step, rec)

    def mark_failed(self, step: str, error: str, status: str = "failed") -> None:
        """Record that ``step`` did not finish (its notebook failed, was interrupted, or a
        redo was asked for: ``status="stale"``). A step that never started has nothing to mark."""
        rec = self.record(step)
        if rec is not None:
            rec.update(status=status, error=str(error)[:500])
            self._write_record(step, rec)

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
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        return out

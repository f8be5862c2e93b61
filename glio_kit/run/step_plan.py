"""Which steps ``glio-kit run`` runs and which it skips, decided before any notebook starts.

For each step to run, the identity it would have now (its settings' identity, the extras its
function records — the cohort folders of ``prep``, the image size of ``train`` — and the
digests of the steps it reads) is compared with its record in ``<run>/steps/``:

- no record, or an unfinished one with the same parameters (a retry): **run**;
- a done record with the same parameters, made after the steps it reads were last done, with
  its products and its executed notebook in the run folder: **skip**;
- an earlier step of this chain runs again: **run** (its old result would be stale);
- other parameters (or an earlier step redone since): **stop** naming each changed value,
  unless the record is an unfinished attempt that left nothing (the table of steps' ``products``),
  which is simply replaced;
- ``force`` from a step: that step and every step after it **run** (later steps that never
  ran in this folder are not added: they hold nothing stale), their records marked stale first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import all_knobs, get_config
from ..errors import GlioKitError, RunFolderError
from .rundir import RunDir, param_changes, plain, step_digest
from .steps import STEPS, step as get_step
from ..data.preprocess import cohort_folders

__all__ = ["StepPlan", "force_step", "plan_chain", "would_be_params"]

ORDER = tuple(s.name for s in STEPS)


@dataclass
class StepPlan:
    """What the runner does with one step.

    action : ``"run"`` or ``"skip"``; why : a few words for the progress line; overwrite : pass
    ``overwrite=True`` to the step (its record is replaced); redo : forced (the record is
    marked stale before the chain starts); changes : the changed values, for messages.
    """

    step: str
    notebook: str
    action: str
    why: str
    overwrite: bool = False
    redo: bool = False
    changes: list = field(default_factory=list)


def force_step(force, selected: list[str]) -> str | None:
    """The step ``force`` starts from: ``True`` = the first selected step, a step name or a
    notebook file name = that step, ``False``/``None``/``""`` = no forcing."""
    if not force:
        return None
    if force is True:
        return selected[0] if selected else None
    name = str(force)
    for s in STEPS:
        if name in (s.name, s.notebook, s.notebook.removesuffix(".ipynb"), s.notebook[:2]):
            return s.name
    raise GlioKitError(f"--force {name}: no such step; steps: {list(ORDER)} (or their notebook names)")


def would_be_params(name: str, settings, params: dict, image_size=None) -> dict:
    """The parameters step ``name`` would record now (what its function passes to
    :meth:`RunDir.claim_step`): the settings' identity plus the prep step's cohort folders
    (:func:`glio_kit.data.preprocess.cohort_folders`) or the train step's ``image_size``."""
    s = settings.step(name)
    extra = {}
    if name == "prep":
        extra = cohort_folders(s, *(params.get(k) or "" for k in
                                    ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir")))
    elif name == "train":
        extra = {"image_size": list(image_size)}
    return plain(dict(s.identity(), **extra))


def _settings(profile: str, params: dict):
    knobs = all_knobs()
    try:
        return get_config(profile, **{k: v for k, v in params.items() if k in knobs})
    except ValueError as err:
        raise GlioKitError(f"bad parameter value: {err}") from None


def _done_record(run: RunDir, name: str, needed_by: str) -> dict:
    rec = run.record(name)
    if not rec or rec.get("status") != "done":
        state = "never ran" if not rec else f"is {rec.get('status')}"
        raise RunFolderError(f"{run.path}: step {needed_by!r} needs step {name!r}, which {state} in this "
                             f"run folder; run its notebook {get_step(name).notebook} first (or leave out "
                             f"--notebook)")
    return rec


def plan_chain(run: RunDir, profile: str, params: dict, selected: list[str], force_from: str | None = None,
               notebooks_out=None) -> list[StepPlan]:
    """Decide, for each step of ``selected`` (and every step after ``force_from`` that this folder
    holds a record of), whether it runs.

    run : the run folder; params : notebook parameters (paths already absolute); selected :
    step names; notebooks_out : the folder of executed notebooks (default ``<run>/notebooks``).
    Raises :class:`RunFolderError` naming every changed value when the folder holds steps done
    with other settings; nothing is changed then.
    """
    out = run.path / "notebooks" if notebooks_out is None else notebooks_out
    force_at = ORDER.index(force_from) if force_from else len(ORDER)
    # forced: the later steps too, where this folder holds their (now stale) results
    names = [n for n in ORDER if n in selected or (ORDER.index(n) >= force_at and run.record(n) is not None)]
    settings = _settings(profile, params)
    would, reran, blocked, plans, conflicts = {}, set(), set(), [], []
    for name in names:
        st = get_step(name)
        if name == "train":
            prep = would.get("prep") or _done_record(run, "prep", name)
            size = prep["params"]["image_size"]
        p = would_be_params(name, settings, params, size if name == "train" else None)
        upstream = {n: (would[n] if n in would else _done_record(run, n, name))["digest"] for n in st.reads}
        would[name] = dict(params=p, digest=step_digest(p, upstream))
        rec = run.record(name)
        if ORDER.index(name) >= force_at:
            plan = StepPlan(name, st.notebook, "run", "forced", overwrite=True, redo=rec is not None)
        elif rec is not None and set(st.reads) & blocked and not param_changes(rec, p):
            plan = StepPlan(name, st.notebook, "conflict", "")  # only a step it reads changed
        else:
            plan = _decide(run, st, rec, would[name], reran, out)
        if plan.action == "conflict":
            blocked.add(name)
            if plan.changes:  # not listed when only a step it reads changed: that one is listed
                conflicts.append(plan)
            continue
        if plan.action == "run":
            reran.add(name)
        plans.append(plan)
    if conflicts:
        raise RunFolderError(conflict_message(run, conflicts))
    return plans


def _decide(run: RunDir, st, rec: dict | None, now: dict, reran: set, out) -> StepPlan:
    """One step that is not forced: run, skip or conflict (see the module's docstring)."""
    name, nb = st.name, st.notebook
    if rec is None:
        return StepPlan(name, nb, "run", "not done yet")
    keeps = rec.get("status") == "done" or run.has_products(name)
    changes = param_changes(rec, now["params"])
    if changes:
        if keeps:
            return StepPlan(name, nb, "conflict", "", changes=changes)
        return StepPlan(name, nb, "run", "replaces an unfinished attempt with other settings that left "
                        "nothing", overwrite=True, changes=changes)
    if any(n in reran for n in st.reads):
        return StepPlan(name, nb, "run", "a step it reads runs again", overwrite=True)
    stale = _upstream_changes(run, st, rec, now)
    if stale:
        if keeps:
            return StepPlan(name, nb, "conflict", "", changes=stale)
        return StepPlan(name, nb, "run", "replaces an unfinished attempt", overwrite=True)
    if rec.get("status") != "done":
        return StepPlan(name, nb, "run", f"retry (last attempt {rec.get('status')})")
    if not (out / nb).exists() or not all((run.path / p).exists() for p in get_step(name).products):
        return StepPlan(name, nb, "run", "done, but its outputs are missing")
    return StepPlan(name, nb, "skip", "done earlier with the same settings")


def _upstream_changes(run: RunDir, st, rec: dict, now: dict) -> list[str]:
    """How the records of the steps ``st`` reads differ from when ``rec`` was made."""
    out = []
    for n in st.reads:
        cur = run.record(n) or {}
        if (rec.get("upstream") or {}).get(n) != cur.get("digest"):
            out.append(f"step {n!r} now holds a run with other parameters")
        elif (rec.get("upstream_attempts") or {}).get(n, cur.get("attempt", "")) != cur.get("attempt", ""):
            out.append(f"step {n!r} was redone after this step ran")
    if not out and rec.get("digest") != now["digest"]:
        out.append("its identity changed (a step it reads holds other parameters)")
    return out


def conflict_message(run: RunDir, conflicts: list[StepPlan]) -> str:
    """Every changed value, step by step (on the first line, which a batch summary shows), and the
    two ways on."""
    every = "; ".join(f"{c.step} ({c.notebook}): {', '.join(c.changes)}" for c in conflicts)
    first = conflicts[0].step
    return (f"{run.path}: this run folder holds steps done with other settings: {every}. Nothing was run "
            f"or overwritten.\nEither run into a new folder (--run-dir), or redo '{first}' and every step "
            f"after it with the new settings: --force {first}")

"""Run the notebooks in order with papermill into a run folder (``glio-kit run``).

Each notebook is one step of the paper's chain (:mod:`glio_kit.run.steps`). The executed copies
land in ``<run>/notebooks/``. A step whose record in ``<run>/steps/`` says done with the settings
it would run with now, after the steps it reads, and whose outputs and executed notebook exist,
is skipped; a step done with other settings stops the run before any notebook starts
(:mod:`glio_kit.run.step_plan`), unless ``force`` redoes it and every step after it.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..errors import GlioKitError, RunFolderError
from .kernels import TrackedKernelManager, stop_kernels_on_signals
from .lock import LOCK_FILE, run_lock
from .notebook import freeze_widgets
from ..progress import terminal_progress
from .rundir import RunDir
from ..paths import default_data_dir, examples_dir, notebooks_dir
from .step_plan import force_step, plan_chain
from .steps import STEPS, all_parameters, by_notebook, refuse_unknown_parameters, step


def copy_notebooks(dest, exercises: bool = False,
                   fill_solutions: bool = False) -> tuple[list[Path], list[Path]]:
    """Copy the kit's notebooks (the chain's and ``00_prepare_real_data``) into ``dest``
    (created if needed) for students to open.

    A file that already exists in ``dest`` is never overwritten (it may hold a student's work).
    ``exercises``: write the student version instead (:mod:`glio_kit.exercises.notebooks`),
    with the solutions kept in when ``fill_solutions``.
    Returns ``(copied, kept)``: the paths written and the existing paths left as they were.
    """
    copied, kept = [], []
    for nb, out in _new_files(dest, every_notebook(), "the notebooks", kept):
        if exercises:
            from ..exercises.notebooks import write_exercise_notebook  # here: spares `run` the import

            write_exercise_notebook(nb, out, fill_solutions)
        else:
            shutil.copyfile(nb, out)
        copied.append(out)
    return copied, kept


def _new_files(dest, sources: list[Path], what: str, kept: list):
    """``(source, target)`` for each source not in ``dest`` yet (created if needed); the
    targets already there go to ``kept``, never overwritten."""
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise GlioKitError(f"{dest}: is a file; give a folder to copy {what} into")
    dest.mkdir(parents=True, exist_ok=True)
    for src in sources:
        if (dest / src.name).exists():
            kept.append(dest / src.name)
        else:
            yield src, dest / src.name


def copy_examples(dest) -> tuple[list[Path], list[Path]]:
    """Write the example grid files shipped with the kit (:func:`glio_kit.paths.examples_dir`)
    into ``dest``; a file already there is kept. Returns ``(copied, kept)``."""
    copied, kept = [], []
    for src, out in _new_files(dest, sorted(examples_dir().glob("*.yaml")), "the example grids", kept):
        shutil.copyfile(src, out)
        copied.append(out)
    return copied, kept


def every_notebook() -> list[Path]:
    """Every notebook the kit ships: the chain's in order, then the others (``00_prepare_real_data``)
    in name order."""
    chain = available_notebooks()
    return chain + sorted(set(notebooks_dir().glob("[0-9]*.ipynb")) - set(chain))


def available_notebooks() -> list[Path]:
    """The chain's notebooks that exist, in order."""
    d = notebooks_dir()
    return [d / s.notebook for s in STEPS if (d / s.notebook).exists()]


def check_parameters(params: dict, where: str = "") -> None:
    """Refuse names that no step declares (catches typos such as ``-p epoch=3``)."""
    refuse_unknown_parameters(params, all_parameters(), where)


def notebook_parameters(notebook: str, params: dict) -> dict:
    """The subset of ``params`` that ``notebook``'s ``parameters`` cell declares."""
    names = set(by_notebook(notebook).parameter_names())
    return {k: v for k, v in params.items() if k in names}


#: Notebook parameters that are paths: made absolute against the working directory before any
#: notebook starts (papermill runs the kernels in ``notebooks/``).
PATH_PARAMETERS = ("train_healthy_dir", "test_healthy_dir", "test_tumor_dir")
#: Environment variables holding paths that the kernels read.
PATH_ENV = ("GLIO_KIT_DATA",)


def check_cohort(params: dict, labels: dict | None = None) -> None:
    """Refuse, naming every problem at once, cohort folders that cannot work: some of the three
    given and others not, or a given one that does not exist. Nothing is touched; no kernel starts.

    labels : how each parameter is called in the message (``glio-kit run`` passes its flags)."""
    labels = labels or {k: k for k in PATH_PARAMETERS}
    given = {k: params.get(k) or "" for k in PATH_PARAMETERS}
    if not any(given.values()):
        return  # the synthetic cohort
    problems = []
    absent = [labels[k] for k, v in given.items() if not v]
    if absent:
        problems.append(f"{' and '.join(absent)} not given: give all three cohort folders for real data, "
                        f"or none for the synthetic cohort")
    for k, v in given.items():
        where = os.path.abspath(os.path.expanduser(str(v))) if v else ""
        if v and not os.path.exists(where):
            problems.append(f"{labels[k]} {v}: no such folder ({where})")
    if problems:
        raise GlioKitError("the cohort folders do not work; nothing was run:\n  " + "\n  ".join(problems))


def resolve_paths(params: dict, base=None) -> dict:
    """``params`` with every :data:`PATH_PARAMETERS` value absolute: ``~`` expanded, a relative
    path taken from ``base`` (default: the working directory). Empty values stay empty."""
    base = os.path.abspath(base or os.getcwd())
    out = dict(params)
    for k in PATH_PARAMETERS:
        if out.get(k):
            out[k] = os.path.normpath(os.path.join(base, os.path.expanduser(str(out[k]))))
    return out


@contextmanager
def _absolute_env(names=PATH_ENV):
    """Make path variables of the environment absolute while the kernels run, then restore them.

    An unset ``GLIO_KIT_DATA`` is set to the data folder as seen from here (``data/`` of the
    checkout, else ``./data``): the kernels run in the notebooks' folder, which for an installed
    kit is inside site-packages, where no cohort belongs."""
    before = {n: os.environ.get(n) for n in names}
    for n, v in before.items():
        if v:
            os.environ[n] = os.path.abspath(os.path.expanduser(v))
    if not os.environ.get("GLIO_KIT_DATA"):
        os.environ["GLIO_KIT_DATA"] = str(default_data_dir().resolve())
    try:
        yield
    finally:
        for n, v in before.items():
            if v is not None:
                os.environ[n] = v
        if before.get("GLIO_KIT_DATA") is None:
            os.environ.pop("GLIO_KIT_DATA", None)


def kernel_options() -> dict:
    """How papermill talks to the kernels: on POSIX over socket files in Jupyter's runtime
    folder (``ipc``) rather than TCP on localhost, so no port is opened and ipykernel's warning
    "Kernel is running over TCP without encryption" does not appear. A runtime folder whose path
    is too long for a socket name keeps TCP. Each kernel gets socket names of its own: by
    default every kernel binds ``kernel-ipc-<n>`` in the working directory, and two runs started
    from one folder at once then cross their messages ("Invalid Signature")."""
    opts: dict = {}
    if os.name == "posix":
        # slow imports (Jupyter's configuration machinery): only when kernels are started
        from jupyter_core.paths import jupyter_runtime_dir
        from traitlets.config import Config

        runtime = jupyter_runtime_dir()
        if len(runtime) < 60:  # socket paths are limited to about 107 characters
            os.makedirs(runtime, mode=0o700, exist_ok=True)
            ip = os.path.join(runtime, f"glio-kit-{uuid.uuid4().hex[:12]}-ipc")
            opts["config"] = Config({"KernelManager": {"transport": "ipc", "ip": ip}})
    return opts


def run_chain(run_dir, profile: str, params: dict | None = None, notebooks: list[str] | None = None,
              force=False, log_output: bool = False, progress: bool = True) -> list[dict]:
    """Execute the notebooks in order into ``run_dir`` (created if needed).

    params : notebook parameters (``name -> value``); each notebook receives the ones its
        step declares (:mod:`glio_kit.run.steps`). A name no step declares is an error. Cohort
        folders are taken relative to the working directory.
    notebooks : file names to run (default: all that exist, in order).
    force : ``True`` redoes the selected steps, a step or notebook name redoes that step;
        either way every step after it is redone too.
    Before any notebook starts, each step's record is compared with what would run now
    (:func:`glio_kit.run.step_plan.plan_chain`): a step is skipped only when its settings and
    the records of the steps it reads are unchanged; other settings stop the chain with a
    :class:`~glio_kit.errors.RunFolderError` naming each changed value. A notebook that fails
    or is interrupted (Ctrl-C, SIGTERM: its kernel is stopped too) leaves its step marked
    failed, never done.
    The run holds the folder's lock (:func:`glio_kit.run.lock.run_lock`) from before it touches
    the folder to its end, its kernels included: a folder in use by another run or by a
    notebook's kernel stops it at once with :class:`~glio_kit.run.lock.FolderInUse`.
    Returns one dict per notebook: name, status ("ran" | "skipped"), seconds.
    """
    check_cohort(params or {})
    params = resolve_paths(dict(params or {}))
    check_parameters(params)
    # the notebooks first: an incomplete installation leaves no half-made run folder behind
    nbs = available_notebooks() if not notebooks else [notebooks_dir() / n for n in notebooks]
    run = RunDir(run_dir, create=False)
    fresh, adopted = not run.path.exists(), []
    try:
        with run_lock(run_dir):
            return _run_locked(run, profile, params, nbs, force, log_output, progress, adopted)
    finally:
        if fresh and not adopted:  # refused before anything ran: no skeleton folder is left
            _remove_new_folder(run.path)


def _remove_new_folder(path: Path) -> None:
    """Remove a run folder this run made and then refused to use: its lock file, and the folder
    if that leaves it empty (anything else in it stays)."""
    (path / LOCK_FILE).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def refuse_other_profile(run: RunDir, profile: str, force) -> None:
    """A folder holding steps done with another profile is refused, naming its profile (one
    line instead of every knob that differs); ``force`` redoes them with the new one."""
    theirs = run.profile()
    if force or not theirs or theirs == profile or not any(run.is_done(s.name) for s in STEPS):
        return
    raise RunFolderError(f"{run.path}: this folder was made with the {theirs} profile (add --profile "
                         f"{theirs}); this run uses the {profile} profile. Nothing was run or "
                         f"overwritten. For the {profile} profile, use a new --run-dir.")


def _run_locked(run: RunDir, profile: str, params: dict, nbs: list[Path], force, log_output: bool,
                progress: bool, adopted: list) -> list[dict]:
    """:func:`run_chain` once the run folder's lock is held; ``adopted`` gets an entry once the
    folder is made a run folder (after every check that can refuse the run)."""
    out_dir = run.path / "notebooks"
    try:
        selected = [by_notebook(nb.name).name for nb in nbs]
    except KeyError as err:
        raise GlioKitError(str(err).strip('"')) from None
    run.check()
    refuse_other_profile(run, profile, force)
    plans = plan_chain(run, profile, params, selected, force_step(force, selected), out_dir)
    run.adopt(profile)
    adopted.append(run.path)
    out_dir.mkdir(exist_ok=True)
    for plan in plans:
        if plan.redo:
            run.mark_failed(plan.step, "a redo was asked for (--force)", status="stale")
    report = []
    with _absolute_env(), stop_kernels_on_signals():
        for plan in plans:
            report.append(_run_step(run, plan, profile, params, out_dir, log_output, progress))
    return report


def _run_step(run: RunDir, plan, profile: str, params: dict, out_dir: Path, log_output: bool,
              progress: bool) -> dict:
    """Execute one step's notebook (or skip it); its record is marked failed if it does not finish."""
    import papermill as pm  # slow import (~1 s): only when a notebook runs

    nb, out, st = notebooks_dir() / plan.notebook, out_dir / plan.notebook, step(plan.step)
    if plan.action == "skip":
        print(f"[glio-kit] {nb.name}: done earlier with the same settings, skipped")
        return dict(notebook=nb.name, status="skipped", seconds=0.0)
    nb_params = notebook_parameters(nb.name, params)
    nb_params.update(profile=profile, run_dir=str(run.path))
    if plan.overwrite and "overwrite" in st.parameters:
        nb_params["overwrite"] = True
    print(f"[glio-kit] {nb.name} -> {out} ({plan.why})")
    t0 = time.time()
    try:
        # the kernels' progress lines (training epochs, mapping batches) reach this terminal; they
        # replace papermill's bar of cells, which would break them up
        with terminal_progress(progress) as progress_lines:
            pm.execute_notebook(str(nb), str(out), parameters=nb_params, kernel_name="python3",
                                cwd=str(nb.parent), log_output=log_output, progress_bar=False,
                                kernel_manager_class=TrackedKernelManager, **progress_lines,
                                **kernel_options())
        freeze_widgets(out)
    except pm.PapermillExecutionError as err:
        run.mark_failed(st.name, f"{err.ename}: {err.evalue}")
        raise GlioKitError(f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                           f"the executed notebook with the full traceback is {out}") from None
    except BaseException as err:  # interrupted (Ctrl-C, SIGTERM) or papermill itself failed
        run.mark_failed(st.name, f"{type(err).__name__}: {err}" if str(err) else "interrupted")
        raise
    return dict(notebook=nb.name, status="ran", seconds=round(time.time() - t0, 1))

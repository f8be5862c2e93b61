"""The one table of the chain's steps: name, notebook, function, settings, what it reads and writes.

The runner (``glio-kit run``), the batch (which steps a grid shares) and the tests use this
table; nothing else lists the steps. Data flows one way::

    cohort -> prep (slice cache) -> train (DCGAN) -> score (latents, residual maps, scores)
           -> residuals (Figures 4/5, browser) -> metrics (metrics.json)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..errors import GlioKitError

from .config import (EvaluateSettings, PrepSettings, ScoreSettings, StepSettings, TrainSettings,
                     ViewSettings)

#: Notebook parameters of every step that are not knobs: ``name -> (default, help)``.
COMMON_PARAMETERS = {
    "profile": ("", "smoke | demo | paper; empty: $GLIO_KIT_PROFILE, else demo"),
    "run_dir": ("", "empty: $GLIO_KIT_RUN_DIR, else runs/<profile>"),
}
OVERWRITE = {"overwrite": (False, "True: redo this step in a run folder that holds another")}
COHORT_PARAMETERS = {
    "train_healthy_dir": ("", "healthy training subjects (IXI layout or manifest); empty: synthetic cohort"),
    "test_healthy_dir": ("", "healthy test subjects; empty: synthetic cohort"),
    "test_tumor_dir": ("", "tumour test subjects (BraTS layout or manifest); empty: synthetic cohort"),
}


@dataclass(frozen=True)
class Step:
    """One step of the chain.

    name : the step record ``<run>/steps/<name>.json``.
    notebook : the notebook that runs it (``notebooks/<notebook>``).
    function : the library call the notebook makes (``module:function``).
    settings : the step's settings class; its fields are the notebook's knobs.
    reads : the steps whose outputs it reads (their records are part of its identity).
    writes : what it writes into the run folder.
    products : what of that is worth keeping: a record whose step is not done (failed,
        interrupted) may be replaced by one with other parameters only when none of these exist
        (a failed attempt that produced nothing never blocks a retry).
    parameters : notebook parameters that are not knobs, ``name -> (default, help)``.
    """

    name: str
    notebook: str
    function: str
    settings: type[StepSettings]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    products: tuple[str, ...]
    parameters: dict = field(default_factory=dict)

    def parameter_names(self) -> tuple[str, ...]:
        """Every name the notebook's ``parameters`` cell declares."""
        return tuple(self.parameters) + self.settings.knobs()


STEPS: tuple[Step, ...] = (
    Step("prep", "01_data_prep.ipynb", "glio_kit.data.preprocess:prepare", PrepSettings, (),
         ("cache/", "cohort_summary.csv"), ("cache",),
         {**COMMON_PARAMETERS, **COHORT_PARAMETERS, **OVERWRITE}),
    Step("train", "02_train_dcgan.ipynb", "glio_kit.gan.train:train_dcgan", TrainSettings, ("prep",),
         ("train/",), ("train/checkpoints/last.pt",), {**COMMON_PARAMETERS, **OVERWRITE}),
    Step("score", "03_scoring.ipynb", "glio_kit.detect.scoring:score_run", ScoreSettings, ("prep", "train"),
         ("score/", "subjects.csv"), ("score/slice_scores.csv",),
         {**COMMON_PARAMETERS, **OVERWRITE}),
    Step("residuals", "04_residuals.ipynb", "glio_kit.figures.widgets:residual_figures", ViewSettings,
         ("score",),
         ("figures/04_*.png",), (), dict(COMMON_PARAMETERS)),
    Step("metrics", "05_metrics.ipynb", "glio_kit.evaluate.evaluation:evaluate_run", EvaluateSettings,
         ("score",),
         ("metrics.json", "metrics.md", "detectors/"), ("metrics.json",),
         {**COMMON_PARAMETERS, **OVERWRITE}),
)

#: The steps whose outputs runs of a batch share when their settings are equal.
PREFIX_STEPS = ("prep", "train")


def step(name: str) -> Step:
    """The step called ``name`` (``prep``, ``train``, ``score``, ``residuals``, ``metrics``)."""
    for s in STEPS:
        if s.name == name:
            return s
    raise KeyError(f"no step {name!r}; steps: {[s.name for s in STEPS]}")


def by_notebook(notebook: str) -> Step:
    """The step a notebook file (``03_scoring.ipynb``) runs."""
    for s in STEPS:
        if s.notebook == notebook:
            return s
    raise KeyError(f"{notebook!r} is not a notebook of the chain; notebooks: {[s.notebook for s in STEPS]}")


def all_parameters() -> set[str]:
    """Every name any notebook declares (what ``-p`` and grid files accept, plus cohort folders)."""
    return set().union(*[set(s.parameter_names()) for s in STEPS])


def refuse_unknown_parameters(names, known, where: str = "") -> None:
    """Stop on parameter names no notebook declares, naming the nearest known name for each.

    Parameters
    ----------
    names : iterable of str
        The names given (``-p name=value``, a grid file's ``base`` and ``grid``).
    known : iterable of str
        The names the notebooks declare (:func:`all_parameters`, or a batch's notebooks).
    where : str
        What gave them, put in front of the message (e.g. the grid file).

    Raises
    ------
    GlioKitError
        ``parameter 'lamda' is not declared by any notebook (did you mean 'lam'?)``; a name with
        no near match says where the list of knobs is (``glio-kit run --help``, notebook cells).
    """
    known = sorted(set(known))
    unknown = sorted(set(names) - set(known))
    if not unknown:
        return
    parts = []
    for name in unknown:
        near = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
        parts.append(f"{name!r}{hint}")
    raise GlioKitError(f"{where}parameter{'s' if len(unknown) > 1 else ''} {', '.join(parts)} "
                       f"{'are' if len(unknown) > 1 else 'is'} not declared by any notebook; the knobs are "
                       f"listed in each notebook's parameters cell and in glio_kit/run/config.py")

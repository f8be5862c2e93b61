"""How long each profile takes: one measurement per profile, said the same way everywhere.

The README, ``glio-kit --help`` and the notebooks' "Run time" paragraphs quote the phrases
below word for word (``tests/test_first_hour.py`` checks), so a new measurement is entered here
once and the texts are updated to match.

smoke : ``glio-kit run --profile smoke`` into a new folder, cohort generation included, on a
    2-core CPU shared with other jobs (2026-12-07, glio-kit 0.1.0, commit ed52437).
demo : ``make demo`` on a fresh clone (d79b971), cohort included, 2-core CPU, nothing else
    running (2026-11-25): 15 min 59 s; notebooks 04 and 05 took 24 s together.
paper : not measured (no GPU run so far).
"""
from __future__ import annotations

from ..progress import duration

MACHINE = "a 2-core CPU"
#: Wall time of the whole chain, in seconds (None: not measured).
TOTAL = {"smoke": 65, "demo": 959, "paper": None}
#: Seconds per step of the same measurements (None: measured only with the step after it).
STEPS = {
    "smoke": {"prep": 14, "train": 19, "score": 10, "residuals": 6, "metrics": 8},
    "demo": {"prep": 63, "train": 453, "score": 440, "residuals": None, "metrics": 24},
}


def run_time(profile: str) -> str:
    """``"about a minute"``, ``"about 16 minutes"`` or ``"not measured yet"``."""
    s = TOTAL.get(profile)
    if s is None:
        return "not measured yet"
    return "about a minute" if s < 90 else f"about {round(s / 60)} minutes"


def profiles_line() -> str:
    """The one sentence on run times: every profile, the same words in every text."""
    return (f"smoke {run_time('smoke')} ({duration(TOTAL['smoke'])}), demo {run_time('demo')} "
            f"({duration(TOTAL['demo'])}) on {MACHINE}; paper {run_time('paper')}")


def step_time(step: str) -> str:
    """One step's time in every profile, e.g. ``"*smoke* 19 s, *demo* 7 min 33 s, *paper* not
    measured yet"`` (Markdown: the notebooks' words)."""
    parts = []
    for profile, steps in STEPS.items():
        s = steps.get(step)
        parts.append(f"*{profile}* {duration(s)}" if s is not None else f"*{profile}* with the next notebook")
    if step == "metrics":
        parts[-1] += " (notebooks 04 and 05 together)"
    return ", ".join(parts + [f"*paper* {run_time('paper')}"])

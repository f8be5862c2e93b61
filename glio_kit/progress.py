"""Progress of long loops: a tqdm bar in JupyterLab, a plain line now and then under ``glio-kit run``.

In JupyterLab a tqdm widget bar is the right thing. Under ``glio-kit run`` nobody watches the
kernel's widgets: a widget bar would be stored frozen ("0% 0/4") in the executed notebook and the
terminal would see nothing for minutes. So the runner sets ``GLIO_KIT_PROGRESS=lines``
(:func:`terminal_progress`) and every bar becomes a :class:`LineBar`: one line on stderr when it
starts, then at most every ``interval`` seconds (how far, the latest epoch and losses, elapsed
time and the time left at the rate so far), and one when it ends. papermill forwards the
kernels' stderr to the terminal; the executed notebook keeps the same lines as text.

:func:`tqdm` takes tqdm's arguments, so a loop changes only its import.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

PROGRESS_ENV = "GLIO_KIT_PROGRESS"


def quiet() -> bool:
    """Progress bars stay silent under pytest and when ``GLIO_KIT_QUIET=1``."""
    return bool(os.environ.get("GLIO_KIT_QUIET") or os.environ.get("PYTEST_CURRENT_TEST"))


def tqdm(iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0,
         disable: bool = False, interval: float = 15.0, **kwargs):
    """``tqdm.auto.tqdm(...)``, or a :class:`LineBar` when ``$GLIO_KIT_PROGRESS`` is ``lines``.

    Extra tqdm keywords (``dynamic_ncols``, ...) are passed to tqdm and ignored by the line bar.
    """
    if os.environ.get(PROGRESS_ENV) == "lines":
        return LineBar(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                       interval=interval)
    from tqdm.auto import tqdm as auto  # slow import (ipywidgets in JupyterLab): not in line mode

    return auto(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **kwargs)


def duration(seconds: float) -> str:
    """``75.3`` -> ``"1 min 15 s"``; ``4000`` -> ``"1 h 06 min"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LineBar:
    """The subset of tqdm's interface the kit uses (``update``, ``set_postfix``,
    ``set_description``, ``close``, ``disable``, iteration, ``with``), printing lines.

    total : the number of ``unit`` expected (``len(iterable)`` when not given).
    initial : already done (a resumed training); the rate counts only what this run does.
    interval : seconds between two progress lines at least.
    stream : where the lines go (default ``sys.stderr``).
    """

    def __init__(self, iterable=None, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, interval: float = 15.0, stream=None, clock=time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = int(initial)
        self.disable, self.interval, self.stream, self.clock = disable, float(interval), stream, clock
        self.postfix = ""
        self.start = self.last = clock()
        self.closed = False
        self._say(f"started: {self._count()}")

    # -- tqdm's interface
    def update(self, n=1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval and (self.total is None or self.n < self.total):
            self.last = now
            self._say(self._status(now))

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            took = duration(self.clock() - self.start)
            self._say(f"done: {self._count()} in {took}" + (f" ({self.postfix})" if self.postfix else ""))

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- the lines
    def _count(self) -> str:
        """``"3/8 subject"``: the bar's own unit, or a bare count where the loop named none (tqdm's
        generic ``it`` would sit beside another bar's ``subject`` for the same subjects)."""
        unit = "" if self.unit in ("", "it") else f" {self.unit}"
        return f"{self.n}/{self.total}{unit}" if self.total is not None else f"{self.n}{unit}"

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        line = self._count()
        if self.total:
            line = f"{100 * self.n / self.total:.0f}% ({line})"
        if self.postfix:
            line += f", {self.postfix}"
        line += f"; {duration(elapsed)} elapsed"
        done = self.n - self.initial
        if self.total and done > 0:
            line += f", about {duration(elapsed / done * (self.total - self.n))} left"
        return line

    def _say(self, text: str) -> None:
        if not self.disable:
            print(f"[{self.desc or 'progress'}] {text}", file=self.stream or sys.stderr, flush=True)


@contextmanager
def terminal_progress(enabled: bool = True):
    """While notebooks run under ``glio-kit run``: their bars print lines (``$GLIO_KIT_PROGRESS``,
    which the kernels inherit), and papermill forwards the kernels' stderr to this terminal.

    Yields the keyword arguments for ``papermill.execute_notebook`` (none when not ``enabled``).
    """
    if not enabled:
        yield {}
        return
    before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "lines"
    try:
        yield dict(stderr_file=sys.stderr)
    finally:
        if before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = before

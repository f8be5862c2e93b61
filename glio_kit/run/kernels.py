"""Stopping a notebook's kernel together with ``glio-kit run``.

papermill starts each notebook's kernel in a session (process group) of its own, so Ctrl-C
in the terminal or a ``kill`` of ``glio-kit run`` does not reach it, and a kernel whose parent
died can go on training. :class:`TrackedKernelManager` remembers every kernel it starts;
:func:`stop_kernels_on_signals` turns SIGINT, SIGTERM and SIGHUP into: stop every such kernel
and its process group (SIGTERM, then SIGKILL after ``grace`` seconds), then raise
``KeyboardInterrupt`` (SIGINT) or ``SystemExit(128 + signal)`` in the runner.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import weakref
from contextlib import contextmanager

from jupyter_client.manager import AsyncKernelManager

from .lock import FDS_ENV, inherited_descriptors

__all__ = ["TrackedKernelManager", "stop_kernels", "stop_kernels_on_signals"]

_KERNELS: weakref.WeakSet = weakref.WeakSet()
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class TrackedKernelManager(AsyncKernelManager):
    """nbclient's default kernel manager, remembered so that :func:`stop_kernels` finds it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _KERNELS.add(self)

    async def _async_interrupt_kernel(self):
        """No interrupt on the way out: jupyter_client interrupts (SIGINT) every kernel before it
        asks it to shut down, and a kernel that gets it while handling a message logs
        ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel`` into a clean run's output.
        A notebook that finished is idle; one that is stopped early is stopped by signals
        (:func:`stop_kernels`)."""
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        """Start the kernel holding the run folder's lock too (:mod:`glio_kit.run.lock`)."""
        fds = inherited_descriptors()
        if fds:
            kw["pass_fds"] = tuple(kw.get("pass_fds", ())) + fds
            kw["env"] = dict(kw.get("env") or os.environ, **{FDS_ENV: ",".join(map(str, fds))})
        return await super()._async_launch_kernel(kernel_cmd, **kw)


def _process(km):
    """The kernel's :class:`subprocess.Popen`, or None when it is not running."""
    return getattr(getattr(km, "provisioner", None), "process", None)


def _signal_group(pid: int, sig) -> None:
    try:
        os.killpg(pid, sig)  # the kernel leads its own session: its group id is its pid
    except (ProcessLookupError, PermissionError, OSError):
        pass


def stop_kernels(grace: float = 3.0) -> list[int]:
    """Stop every kernel a :class:`TrackedKernelManager` started, with its process group
    (e.g. a training's worker processes). Returns the kernels' process ids."""
    stopped = []
    for km in list(_KERNELS):
        proc = _process(km)
        if proc is None or proc.poll() is not None:
            continue
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group is left
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        stopped.append(proc.pid)
    return stopped


@contextmanager
def stop_kernels_on_signals():
    """While inside: SIGINT, SIGTERM and SIGHUP stop the tracked kernels first, then interrupt
    this process (``KeyboardInterrupt`` for SIGINT, ``SystemExit(128 + signal)`` otherwise).
    Outside the main thread (signals cannot be caught there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if signum != signal.SIGINT:  # Ctrl-C: glio-kit's main says one line once the kernels are stopped
            print(f"[glio-kit] {signal.Signals(signum).name}: stopping the notebook's kernel",
                  file=sys.stderr, flush=True)
        stop_kernels()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    # a signal this process was told to ignore (nohup, a background job) stays ignored
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    for s in before:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)

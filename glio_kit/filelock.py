"""Advisory file locks (``fcntl.flock``) that name their holder.

A lock is an open file descriptor with ``flock`` on it. The operating system drops it when the
last descriptor of it closes, which happens when the holding process ends in any way (a normal
exit, an exception, SIGKILL, a crash), so a lock file left behind by a dead process never
blocks anyone: the file is only where the lock lives and where the holder writes who it is.
A run folder's lock file stays (it names the last holder); the lock beside a shared cohort is
removed by its holder, and a waiter that finds its file gone starts again (:func:`exclusive`).

The holder writes one JSON object into the file (:func:`describe_holder`): what it is doing, its
process id, host and start time, so that a process that finds the lock taken can say who holds
it. The data package waits on such a lock while a shared cohort is written
(:func:`exclusive`); the run folder's lock (:mod:`glio_kit.run.lock`) builds on the same calls.

Where ``fcntl`` is missing (Windows) every lock is granted: the kit then behaves as before it
had locks, one process per folder being the user's care.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, locks are granted (see the module docstring)
    fcntl = None

__all__ = ["describe_holder", "exclusive", "holder_line", "lock_fd", "open_lock", "read_holder",
           "unlock_fd", "write_holder"]


def open_lock(path) -> int:
    """Open (creating if needed, never truncating) the lock file ``path``; returns the descriptor.

    The descriptor is not inherited by programs this process starts (close-on-exec).
    """
    return os.open(str(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)


def lock_fd(fd: int, shared: bool = False, blocking: bool = False) -> bool:
    """Take the lock of descriptor ``fd`` (exclusive, or shared with other shared holders).

    Returns False when ``blocking`` is off and another descriptor holds it in a conflicting mode.
    Taking it again on the same descriptor changes its mode (shared <-> exclusive).
    """
    if fcntl is None:
        return True
    flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except (BlockingIOError, PermissionError):
        return False
    return True


def unlock_fd(fd: int) -> None:
    """Release the lock of ``fd`` (the descriptor stays open)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def describe_holder(command: str | None = None, **extra) -> dict:
    """Who this process is: ``command`` (default: the command line), ``pid``, ``host``, ``since``
    (ISO time, seconds) and any ``extra`` fields."""
    if command is None:
        command = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
                           + sys.argv[1:])
    return dict(command=command[:200], pid=os.getpid(), host=socket.gethostname(),
                since=datetime.now().isoformat(timespec="seconds"), **extra)


def write_holder(fd: int, info: dict | None) -> None:
    """Write ``info`` (JSON) into the lock file of ``fd`` in place; ``None`` empties it.

    In place, not by an atomic rename: the lock belongs to this very file.
    """
    data = (json.dumps(info) + "\n").encode() if info else b""
    os.pwrite(fd, data, 0)  # then cut what is left of a longer record: the file is never empty between
    os.ftruncate(fd, len(data))


def read_holder(path, wait: float = 0.0) -> dict | None:
    """The holder a lock file names, or None (empty, unreadable, being rewritten).

    wait : seconds to keep trying while it names none (a holder that has just taken the lock
        writes its record a moment later).
    """
    deadline = time.time() + wait
    while True:
        try:
            info = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) or time.time() >= deadline:
            return info if isinstance(info, dict) else None
        time.sleep(0.05)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OSError):
        return True  # another user's process, or nothing we can tell
    return True


def holder_line(info: dict | None) -> str:
    """``"glio-kit run ... (pid 123 on host, since 2026-01-01T10:00:00)"`` for a holder record.

    A holder whose process is gone from this host is said to be gone: the lock is then held by a
    process it started (e.g. a notebook's kernel) that inherited it.
    """
    if not info:
        return "another process (its lock file names none)"
    where = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')}"
    if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
        where += "; that process has ended, a process it started still holds the lock"
    return f"{info.get('command', '?')} ({where})"


def _same_file(fd: int, path) -> bool:
    """True while ``path`` still names the file open as ``fd`` (a holder removes it on release)."""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


@contextmanager
def exclusive(path, what: str, say=None):
    """Hold the exclusive lock of file ``path`` while inside, waiting for another holder first.

    Parameters
    ----------
    path : str or Path
        The lock file; its folder must exist. It is removed on release, so nothing is left
        beside what it guards.
    what : str
        What the lock guards, for the waiting message (e.g. ``"the synthetic cohort <root>"``).
    say : callable, optional
        Where the waiting message goes (default: standard error); said once, naming the
        holder, only when the lock is taken.

    A waiter that got the lock of a file the holder removed meanwhile opens the new one and
    waits again, so two processes never both hold it.
    """
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    waited = None
    while True:
        fd = open_lock(path)
        if not lock_fd(fd):
            if waited is None:
                waited = time.time()
                say(f"[glio-kit] waiting for {holder_line(read_holder(path))}, which is writing {what}")
            lock_fd(fd, blocking=True)
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        if waited is not None:
            say(f"[glio-kit] {what}: ready after {time.time() - waited:.0f} s of waiting")
        write_holder(fd, describe_holder(what=what))
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # before the release: a waiter then finds it gone and starts again
        os.close(fd)

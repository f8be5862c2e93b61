"""One process at a time in a run folder: the lock file ``<run>/run.lock``.

Two processes writing one run folder interleave their step records and outputs, so:

- ``glio-kit run`` (:func:`glio_kit.run.runner.run_chain`, also each run of ``glio-kit batch``)
  holds an **exclusive** ``flock`` on ``<run>/run.lock`` from before it touches the folder until
  it ends (:func:`run_lock`). A second run finds the lock taken and stops at once with one
  line naming the holder (command, process id, host, since when) and what to do
  (:class:`FolderInUse`), before it creates or changes anything in the folder.
- A notebook (:func:`glio_kit.run.notebook.setup`) takes the lock **shared** and keeps it for
  the life of its kernel (:func:`hold_for_notebook`): several notebooks of one folder may be
  open in JupyterLab together (the step records order them), but a ``glio-kit run`` into that
  folder is refused while one is open, and a notebook is refused while a run holds the folder.
- The run's own notebooks are allowed: papermill starts each kernel as a separate process, so
  the runner hands the kernel its locked descriptor (:func:`inherited_descriptors`, passed by
  :class:`glio_kit.run.kernels.TrackedKernelManager`) and names it in :data:`FDS_ENV`. The
  kernel proves it holds the run's lock by comparing that descriptor with ``run.lock`` (same
  device and inode), so no guessable token is involved, and the lock then lasts as long as the
  runner *or* its kernel lives: a kernel left running after its runner died still holds the
  folder until it ends (ipykernel ends a kernel about a second after its parent is gone).

The operating system releases a ``flock`` when its last holder exits, SIGKILL included, so a
``run.lock`` left behind by a dead process never blocks: the file only says who held it last.
A folder that is not empty and is neither a run folder nor locked before is left to the caller's
own checks (:class:`glio_kit.run.rundir.RunDir` refuses it): no lock file is ever put among a
user's files.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunFolderError
from ..filelock import describe_holder, holder_line, lock_fd, open_lock, read_holder, write_holder

__all__ = ["FDS_ENV", "LOCK_FILE", "FolderInUse", "hold_for_notebook", "inherited_descriptors",
           "run_lock"]

#: The lock file inside a run folder (a batch folder has ``batch.lock``).
LOCK_FILE = "run.lock"
#: The file that marks a run folder (``glio_kit.run.rundir.RUN_MARKER``; not imported: the run
#: folder's module imports this one).
RUN_MARKER = "run.json"
#: Descriptors of run locks a kernel inherited from its runner (comma-separated numbers).
FDS_ENV = "GLIO_KIT_RUN_LOCK_FDS"


class FolderInUse(RunFolderError):
    """Another process (a run, a batch, a notebook's kernel) holds the folder's lock."""


class _Held:
    """A lock this process holds: its descriptor, ``"exclusive"`` | ``"shared"``, nesting depth."""

    def __init__(self, fd: int, mode: str):
        self.fd, self.mode, self.depth = fd, mode, 0


#: Locks held by this process, by lock-file path (a nested :func:`run_lock` reuses its holder).
_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _lock_path(folder, lock_file: str, marker: str) -> Path | None:
    """``<folder>/<lock_file>``, or None where no lock belongs: a path that is a file, or a
    folder of someone else's (not empty, no ``marker``, no lock file)."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        return None
    if (folder.is_dir() and not (folder / marker).exists() and not (folder / lock_file).exists()
            and any(folder.iterdir())):
        return None
    return folder / lock_file


def refusal(folder, lock: Path) -> str:
    """The one line said when ``folder`` is in use: the holder and what to do."""
    info = read_holder(lock, wait=1.0)
    if (info or {}).get("kind") == "notebook":
        todo = ("shut that notebook's kernel down (JupyterLab: Kernel > Shut Down Kernel) or use "
                "another run folder")
    else:
        todo = "wait for it to finish, stop it, or use another run folder (--run-dir)"
    return (f"{Path(folder).expanduser().resolve()}: in use by {holder_line(info)}; nothing was "
            f"changed. {todo[0].upper()}{todo[1:]}.")


@contextmanager
def run_lock(folder, command: str | None = None, lock_file: str = LOCK_FILE, marker: str = RUN_MARKER):
    """Hold ``folder``'s exclusive lock while inside; refuse at once if another process has it.

    Parameters
    ----------
    folder : str or Path
        The run (or batch) folder; created when missing.
    command : str, optional
        What the holder is doing, shown to a refused process (default: this command line).
    lock_file, marker : str
        The lock file's name and the file that marks a folder of the kit (``run.json``).

    Raises
    ------
    FolderInUse
        Another process holds the lock; nothing in ``folder`` was created or changed.

    Nested calls in one process reuse the lock; a shared lock this process holds (a notebook's)
    is turned exclusive for the time inside, if no other process shares it.
    """
    lock = _lock_path(folder, lock_file, marker)
    if lock is None:  # the caller's checks refuse this folder
        yield
        return
    key = str(lock)
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = open_lock(lock)
            if not lock_fd(fd):
                os.close(fd)
                raise FolderInUse(refusal(folder, lock))
            held = _HELD[key] = _Held(fd, "exclusive")
            write_holder(fd, describe_holder(command, kind="run"))
        elif held.mode == "shared":
            if not lock_fd(held.fd):
                raise FolderInUse(refusal(folder, lock))
        before, held.depth = held.mode, held.depth + 1
        held.mode = "exclusive"
    try:
        yield
    finally:
        with _GUARD:
            held.depth -= 1
            held.mode = before
            if before == "shared":
                lock_fd(held.fd, shared=True)
            elif held.depth == 0:
                write_holder(held.fd, None)  # a finished run names no holder
                os.close(held.fd)  # closing releases the lock
                del _HELD[key]


def inherited_descriptors() -> tuple[int, ...]:
    """Descriptors of the exclusive run locks this process holds, for the kernels it starts."""
    with _GUARD:
        return tuple(h.fd for h in _HELD.values() if h.mode == "exclusive")


def _inherited(lock: Path) -> bool:
    """True when this process (a kernel) inherited ``lock`` from the run that started it."""
    try:
        want = os.stat(lock)
    except OSError:
        return False
    for part in os.environ.get(FDS_ENV, "").split(","):
        try:
            st = os.fstat(int(part))
        except (ValueError, OSError):
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            os.set_inheritable(int(part), False)  # programs this notebook starts do not keep it
            return True
    return False


def hold_for_notebook(folder, notebook: str) -> None:
    """Take ``folder``'s lock shared for the rest of this process (a notebook's kernel).

    Does nothing in a kernel that ``glio-kit run`` started on this folder (it holds the run's
    lock already) or when this process holds the lock. Raises :class:`FolderInUse` naming the
    holder when a run holds it; nothing in ``folder`` was created or changed then.
    """
    lock = _lock_path(folder, LOCK_FILE, RUN_MARKER)
    if lock is None or _inherited(lock):
        return
    with _GUARD:
        if str(lock) in _HELD:
            return
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = open_lock(lock)
        if not lock_fd(fd, shared=True):
            os.close(fd)
            raise FolderInUse(refusal(folder, lock))
        _HELD[str(lock)] = _Held(fd, "shared")
        write_holder(fd, describe_holder(f"notebook {notebook}", kind="notebook"))

"""Atomic file writes: a file the kit writes is either the old one or the whole new one.

Each writer writes a temporary file beside the target (same folder, so the same file system)
and renames it over the target with :func:`os.replace`, which is atomic on POSIX and Windows.
A crash, a kill or a full disk in the middle leaves the previous file whole and at most a
``.<name>.tmp-<id>`` file beside it, never a truncated target.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text"]


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``.

    >>> with atomic_path("runs/demo/train/losses.csv") as tmp:   # doctest: +SKIP
    ...     table.to_csv(tmp, index=False)

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))

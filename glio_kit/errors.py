"""Errors that tell the user which file is wrong and what to do about it."""
from __future__ import annotations


class GlioKitError(Exception):
    """Base class for every error the kit raises on purpose."""


class InputError(GlioKitError, ValueError):
    """A file or folder the user gave cannot be used.

    ``path`` names the offending file; the message says what is wrong with it.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RunFolderError(GlioKitError):
    """The run folder already holds a different run; nothing was overwritten."""

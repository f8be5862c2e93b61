"""The compute device and the seeds: chosen once, the same way by every step.

Top level (not ``glio_kit.run``) because the science packages need both and must not
depend on the machinery that runs notebooks.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def choose_device(preference: str = "auto") -> torch.device:
    """The device a step computes on.

    Parameters
    ----------
    preference : str
        ``"auto"`` picks cuda, then mps, then cpu; anything else (``"cpu"``, ``"cuda:1"``) is
        passed to :class:`torch.device`.

    Returns
    -------
    torch.device
    """
    if preference and preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={preference!r} asked for but CUDA is not available; "
                               f"use 'auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one number, so a run can be repeated.

    Parameters
    ----------
    seed : int
        Any non-negative integer (NumPy receives it modulo 2**32).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)

"""The training's loss log ``<run>/train/losses.csv``: one row per epoch (step 02)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..atomic import atomic_path
from ..errors import RunFolderError

__all__ = ["LOSSES", "LOSS_COLUMNS", "read_losses", "log_epoch"]

LOSSES = Path("train") / "losses.csv"  # inside the run folder
LOSS_COLUMNS = ["epoch", "loss_d", "loss_g", "d_x", "d_g_z", "seconds", "images_per_s"]


def read_losses(run) -> pd.DataFrame:
    """``<run>/train/losses.csv``: one row per epoch, columns :data:`LOSS_COLUMNS` (seconds,
    images per second), empty before the first epoch."""
    p = Path(run / LOSSES)
    if not p.exists():
        return pd.DataFrame(columns=LOSS_COLUMNS)
    try:
        losses = pd.read_csv(p)
    except Exception as err:  # noqa: BLE001 - EmptyDataError, ParserError, UnicodeDecodeError, ...
        losses, problem = None, f"{type(err).__name__}: {err}"
    if losses is not None:
        missing = [c for c in LOSS_COLUMNS if c not in losses.columns]
        problem = f"columns {missing} are missing" if missing else ""
    if problem:
        raise RunFolderError(f"{p}: the training's loss log cannot be read ({problem}); it is damaged or "
                             f"was cut short. Redo the training (`glio-kit run --force train`, or notebook "
                             f"02 with overwrite=True), or use a new run folder")
    return losses


def log_epoch(run, losses: pd.DataFrame, epoch: int, s, seconds: float) -> pd.DataFrame:
    """``losses`` with a row for ``epoch`` appended, written to ``<run>/train/losses.csv``.

    s : the epoch's :class:`~glio_kit.gan.train.EpochStats`; seconds : its wall time.
    """
    row = dict(epoch=epoch, loss_d=s.loss_d, loss_g=s.loss_g, d_x=s.d_x, d_g_z=s.d_g_z, seconds=seconds,
               images_per_s=s.images / seconds)
    new = pd.DataFrame([row])
    losses = pd.concat([losses, new], ignore_index=True) if len(losses) else new
    with atomic_path(run / LOSSES) as tmp:  # a kill while writing leaves the previous log whole
        losses[LOSS_COLUMNS].to_csv(tmp, index=False)
    return losses

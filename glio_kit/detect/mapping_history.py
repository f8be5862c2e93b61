"""What the scoring step keeps of the mapping's course, so that figures draw and never compute.

- ``score/mapping_history.csv`` (:class:`LossHistory`): the mean mapping loss per step of each
  slice group of :data:`GROUPS` (healthy validation, healthy test, tumour test);
- ``score/mapping_snapshots.npz`` (:class:`MappingSnapshots`): for a few test slices picked
  before the mapping (:func:`pick_slices`: healthy ones and the largest lesions), the input, its
  lesion mask, ``G(z)`` at a few steps (:func:`snapshot_steps`) and the per-step loss of each.

Both are recorded while the slices are mapped, from the very mapping that gives the scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["GROUPS", "LossHistory", "pick_slices", "snapshot_steps", "MappingSnapshots", "SNAPSHOTS"]

#: Slice groups of the mapping history and the figures: (name, split, label).
GROUPS = (("val_healthy", "val", 0), ("test_healthy", "test", 0), ("test_tumour", "test", 1))
#: The snapshots' file in the scoring step's folder.
SNAPSHOTS = "mapping_snapshots.npz"


class LossHistory:
    """The mean mapping loss per step of each slice group of :data:`GROUPS`, batch by batch.

    Parameters
    ----------
    steps : int
        The mapping's steps (the history has ``steps + 1`` rows: the start, then each update).
    """

    def __init__(self, steps: int):
        self.steps = steps
        self.sum = {name: np.zeros(steps + 1) for name, _, _ in GROUPS}
        self.n = {name: 0 for name, _, _ in GROUPS}

    def add(self, hist: np.ndarray, splits: np.ndarray, labels: np.ndarray) -> None:
        """hist : (steps + 1, b) per-slice losses of a batch; splits, labels : (b,)."""
        for name, split, label in GROUPS:
            mask = (splits == split) & (labels == label)
            if mask.any():
                self.sum[name] += hist[:, mask].sum(1)
                self.n[name] += int(mask.sum())

    def table(self) -> pd.DataFrame:
        """``step`` and one column per group that had slices (``mapping_history.csv``)."""
        out = pd.DataFrame({"step": np.arange(self.steps + 1)})
        for name, _, _ in GROUPS:
            if self.n[name]:
                out[name] = self.sum[name] / self.n[name]
        return out


def pick_slices(index: pd.DataFrame, n_healthy: int, n_tumour: int, seed: int) -> list[int]:
    """``k`` of a few test slices to show the mapping on, chosen before it runs.

    Parameters
    ----------
    index : DataFrame
        The scored slices in ``k`` order (columns ``split``, ``label``, ``subject`` and
        ``lesion_pixels`` when there are tumours).
    n_healthy, n_tumour : int
        How many healthy test slices (a seeded pick; validation slices when there are no
        healthy test slices) and tumour test slices (the largest lesions, one per subject where
        possible, ties by ``k``).
    seed : int
        Seeds the pick of healthy slices.

    Returns
    -------
    list of int
        The healthy slices' ``k`` (ascending), then the tumour slices'.
    """
    df = index.reset_index(drop=True).assign(k=np.arange(len(index)))
    if "lesion_pixels" not in df:
        df["lesion_pixels"] = 0
    rng = np.random.default_rng(seed)
    healthy = df[(df.split == "test") & (df.label == 0)]
    if not len(healthy):
        healthy = df[df.split == "val"]
    ks = []
    if len(healthy) and n_healthy:
        pick = rng.choice(healthy["k"].to_numpy(), min(n_healthy, len(healthy)), replace=False)
        ks += sorted(pick.tolist())
    tum = df[(df.split == "test") & (df.label == 1)]
    if len(tum) and n_tumour:
        tum = tum.sort_values("lesion_pixels", ascending=False, kind="stable").drop_duplicates("subject")
        ks += tum["k"].to_numpy()[:n_tumour].tolist()
    return [int(k) for k in ks]


def snapshot_steps(steps: int, n: int = 5) -> list[int]:
    """About ``n`` steps from 0 to ``steps``, spaced geometrically (the early steps change most)."""
    if not steps:
        return [0]
    return sorted({int(round(t)) for t in np.geomspace(1, steps + 1, n) - 1})


class MappingSnapshots:
    """The picked slices' course through the mapping, collected batch by batch.

    Parameters
    ----------
    ks : list of int
        The picked slices (``k`` of ``slice_scores.csv``), in the order the figure shows them.
    steps : list of int
        The steps at which ``G(z)`` is kept (``record_steps`` of the mapping).
    """

    def __init__(self, ks, steps):
        self.ks, self.steps = [int(k) for k in ks], [int(t) for t in steps]
        self.found: dict[int, dict] = {}

    def wanted(self, a: int, b: int) -> list[int]:
        """Positions in the batch of ``k`` in ``[a, a + b)`` that are picked."""
        return [k - a for k in self.ks if a <= k < a + b]

    def add(self, a: int, res, x: np.ndarray, lesion: np.ndarray) -> None:
        """Keep the picked slices of the batch starting at ``k = a``.

        res : the batch's :class:`~glio_kit.detect.mapping.MappingResult` (mapped with
        ``record_steps=self.steps``); x, lesion : (b, H, W) the batch's inputs and lesion masks.
        """
        for i in self.wanted(a, len(x)):
            gz = np.stack([res.snapshots[t][i, 0].float().numpy() for t in self.steps])
            self.found[a + i] = dict(x=x[i], lesion=np.asarray(lesion[i], dtype=np.uint8), gz=gz,
                                     loss=res.history[:, i].double().numpy())

    def save(self, path) -> None:
        """Write ``mapping_snapshots.npz``: ``k`` (n,), ``steps`` (s,), ``x`` and ``lesion``
        (n, H, W), ``gz`` (n, s, H, W) float32 in [-1, 1], ``loss`` (n, steps + 1) per-step
        mapping loss of each slice."""
        got = [self.found[k] for k in self.ks]
        names = ("x", "lesion", "gz", "loss") if got else ()
        arrays = {name: np.stack([g[name] for g in got]) for name in names}
        np.savez(Path(path), k=np.asarray(self.ks, dtype=np.int64),
                 steps=np.asarray(self.steps, dtype=np.int64), **arrays)

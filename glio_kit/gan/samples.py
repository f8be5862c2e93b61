"""The training's sample grids: what the generator draws every epoch, as PNG files (Figure 3).

``<run>/train/samples/`` holds ``epoch_XXX.png`` (G(z) of one fixed latent batch after each
epoch), ``real.png`` (real healthy training slices, a seeded pick) and ``grid.json`` (how to
cut the grids back into images). A grid is 8-bit grey: images in [-1, 1] side by side with
white separators.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import RunFolderError
import matplotlib.image as mpimg

__all__ = ["N_SAMPLES", "GRID_NROW", "GRID_PAD", "SAMPLES", "tile_images", "save_grid", "read_grid",
           "fixed_samples", "save_real_grid", "grid_meta", "sample_epochs", "read_samples"]

N_SAMPLES = 16  # fixed latent batch drawn every epoch
GRID_NROW = 4  # 4 x 4 grid
GRID_PAD = 2  # pixels of white between images
SAMPLES = Path("train") / "samples"  # inside the run folder


def tile_images(images, nrow: int | None = None, pad: int = GRID_PAD, pad_value: float = 1.0) -> np.ndarray:
    """Tile (N, H, W) images into one (rows * (H + pad) + pad, nrow * (W + pad) + pad) array."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    n_rows = int(math.ceil(n / nrow))
    out = np.full((n_rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, np.float32)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        out[top:top + h, left:left + w] = images[i]
    return out


def save_grid(images, path, nrow: int | None = None, pad: int = GRID_PAD) -> Path:
    """Write (N, H, W) images in [-1, 1] as one 8-bit grey PNG grid (white separators)."""
    from PIL import Image  # a dependency of matplotlib

    grid = tile_images(images, nrow, pad)
    u8 = np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)
    path = Path(path)
    Image.fromarray(u8, mode="L").save(path)
    return path


def read_grid(path, height: int, width: int, n: int | None = None, nrow: int | None = None,
              pad: int = GRID_PAD) -> np.ndarray:
    """The (n, H, W) images in [-1, 1] of a grid written by :func:`save_grid`."""
    g = mpimg.imread(str(path))
    if g.ndim == 3:
        g = g[..., 0]
    g = g.astype(np.float32)
    if g.max() > 1.0:  # 8-bit read as integers
        g = g / 255.0
    g = g * 2 - 1
    nrow = nrow or (g.shape[1] - pad) // (width + pad)
    rows = (g.shape[0] - pad) // (height + pad)
    n = n or nrow * rows
    out = [g[pad + r * (height + pad):pad + r * (height + pad) + height,
             pad + c * (width + pad):pad + c * (width + pad) + width]
           for r, c in (divmod(i, nrow) for i in range(n))]
    return np.stack(out)


@torch.no_grad()
def fixed_samples(G: nn.Module, z: torch.Tensor) -> np.ndarray:
    """G(z) as (N, H, W) float32, as PyTorch's DCGAN example draws its per-epoch samples.

    BatchNorm normalises with the statistics of this batch (train mode). Unlike the example,
    the running statistics are put back afterwards, so drawing samples changes nothing in
    the model. (Early in training the running statistics still lag far behind, and
    eval-mode samples are a flat grey; the real-vs-generated figure shows eval mode, what
    the later steps use.)
    """
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    mode = G.training
    G.train()
    try:
        out = G(z).float()[:, 0].cpu().numpy()
    finally:
        for m, (mean, var, nbt) in zip(bns, saved):
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(nbt)
        G.train(mode)
    return out


def save_real_grid(folder, images, rows, seed: int) -> None:
    """``real.png``: up to :data:`N_SAMPLES` real slices ``images[rows]`` (a pick seeded by
    ``seed``), and ``grid.json``, which says how every grid in ``folder`` is cut.

    images : (N, H, W) in [-1, 1] (the slice cache); rows : (R,) the training rows.
    """
    folder = Path(folder)
    rows = np.asarray(rows)
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(N_SAMPLES, len(rows)), replace=False))
    save_grid(np.asarray(images[rows[pick]]), folder / "real.png", nrow=GRID_NROW)
    h, w = images.shape[1:]
    meta = dict(height=int(h), width=int(w), n=N_SAMPLES, nrow=GRID_NROW, pad=GRID_PAD,
                real_rows=[int(r) for r in rows[pick]])
    (folder / "grid.json").write_text(json.dumps(meta) + "\n")


def grid_meta(run) -> dict:
    """``grid.json`` of a run's training: ``height, width, n, nrow, pad, real_rows``."""
    p = Path(run / SAMPLES) / "grid.json"
    if not p.exists():
        raise RunFolderError(f"{p}: no training samples in this run folder; run the training step first")
    return json.loads(p.read_text())


def sample_epochs(run) -> list[int]:
    """The epochs with a sample grid, ascending."""
    return sorted(int(p.stem.split("_")[1]) for p in Path(run / SAMPLES).glob("epoch_*.png"))


def read_samples(run, epoch: int | None = None) -> np.ndarray:
    """The (n, H, W) images of the grid after ``epoch``; ``None``: the real slices."""
    meta = grid_meta(run)
    folder = Path(run / SAMPLES)
    if epoch is None:
        path, n = folder / "real.png", len(meta.get("real_rows", [])) or meta["n"]
    else:
        path, n = folder / f"epoch_{epoch:03d}.png", meta["n"]
    return read_grid(path, meta["height"], meta["width"], n, meta["nrow"], meta["pad"])

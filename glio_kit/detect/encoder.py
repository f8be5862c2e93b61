"""The f-AnoGAN encoder (Schlegl et al. 2019, variant izi_f): z = E(x) in one forward pass.

:class:`Encoder` is the discriminator's strided convolution stack with a linear head to ``z``;
:func:`train_encoder` trains it on the healthy ``train`` slices with G and D frozen, as part
of the scoring step (the mapping methods that ``needs_encoder``,
:data:`glio_kit.detect.mapping.MAPPING_METHODS`); it writes ``encoder.pt`` and
``encoder_losses.csv`` into the scoring step's folder ``<run>/score/`` and returns what the
score step's record keeps about it. :func:`load_encoder` reads it back;
:func:`glio_kit.detect.mapping.encode` maps with it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_path
from ..errors import InputError, RunFolderError
from ..gan.checkpoints import load_checkpoint
from ..gan.model import fit_input, strided_conv_stack
from ..progress import tqdm
from ..run.config import ScoreSettings
from ..progress import quiet
from .mapping import frozen, param_of

__all__ = ["Encoder", "train_encoder", "load_encoder", "encoder_identity", "ENCODER_FILE", "ENCODER_LOSSES"]

# The encoder draws its initial weights and its batch order from streams of its own, offset
# from the run's seed so that they differ from the DCGAN's (gan/build.py: seed + 1, + 2, + 3) and
# the same seed still repeats the same encoder.
ENCODER_INIT_SEED_OFFSET = 11
ENCODER_SHUFFLE_SEED_OFFSET = 12
#: The trained encoder and its loss per epoch, inside the run folder (the scoring step's outputs).
ENCODER_FILE = Path("score") / "encoder.pt"
ENCODER_LOSSES = Path("score") / "encoder_losses.csv"
ENCODER_LOSS_COLUMNS = ["epoch", "loss", "mse_image", "mse_features", "seconds"]


class Encoder(nn.Module):
    """E(x): image (N, 1, H, W) -> latent (N, latent_dim) (f-AnoGAN).

    The discriminator's strided convolution stack (kernel 4, stride 2; BatchNorm after all
    but the first; LeakyReLU 0.2; the input padded with the background value to the stack's
    size), then a linear layer from the flattened last block to ``z`` (no activation: the
    DCGAN's latents are N(0, 1), not bounded).
    """

    def __init__(self, latent_dim: int = 100, nef: int = 64, image_size=(64, 64)):
        super().__init__()
        self.latent_dim, self.nef = int(latent_dim), int(nef)
        h, w = (image_size, image_size) if isinstance(image_size, int) else (int(s) for s in image_size)
        self.image_size = (h, w)
        self.blocks, chans, (bh, bw), self.pad = strided_conv_stack(self.nef, self.image_size)
        self.head = nn.Linear(chans[-1] * bh * bw, self.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_input(x, self.image_size, self.pad, "Encoder")
        return self.head(self.blocks(x).flatten(1))


def encoder_identity(settings: ScoreSettings) -> dict:
    """The knobs that decide an encoder training (part of the scoring step's identity; also
    saved in ``encoder.pt``)."""
    return dict(encoder_epochs=settings.encoder_epochs, encoder_lr=settings.encoder_lr,
                encoder_batch_size=settings.encoder_batch_size, kappa=settings.kappa, seed=settings.seed)


def train_encoder(cache, settings: ScoreSettings, G: nn.Module, D: nn.Module, out_dir,
                  progress: bool = True) -> tuple[Encoder, dict]:
    """Train the f-AnoGAN encoder (izi_f) on the healthy ``train`` slices; G and D frozen.

    Loss ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))`` with ``settings.kappa``, Adam
    (lr ``settings.encoder_lr``, betas 0.5/0.999), ``settings.encoder_epochs`` epochs of
    ``settings.encoder_batch_size`` slices, seeded by ``settings.seed``.

    Parameters
    ----------
    cache : SliceCache
        The run's slice cache (``images`` (N, H, W) in [-1, 1]).
    settings : ScoreSettings
        The scoring step's knobs (the encoder's are part of its record).
    G, D : nn.Module
        The trained DCGAN, on the device the encoder trains on.
    out_dir : path
        The scoring step's folder (``<run>/score``): ``encoder.pt`` and ``encoder_losses.csv``
        (epoch, loss, mse_image, mse_features, seconds) are written there.
    progress : bool
        Show a progress bar.

    Returns
    -------
    E : Encoder
        In eval mode, on G's device and dtype.
    info : dict
        What the scoring step's record keeps about the training: ``epochs``, ``loss`` (last
        epoch's mean), ``seconds``, ``n_train`` and the knobs of :func:`encoder_identity`.
    """
    rows = cache.rows(split="train", label=0)
    if len(rows) < 2:
        raise InputError(getattr(cache, "folder", "cache"), f"needs at least 2 healthy training slices to "
                         f"train the encoder, found {len(rows)}")
    p = param_of(G)
    device, dtype = p.device, p.dtype
    seed = settings.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + ENCODER_INIT_SEED_OFFSET)
        E = Encoder(G.latent_dim, getattr(D, "ndf", 64), tuple(cache.images.shape[1:]))
    E.to(device=device, dtype=dtype)
    opt = torch.optim.Adam(E.parameters(), lr=settings.encoder_lr, betas=(0.5, 0.999))
    shuffle = torch.Generator().manual_seed(seed + ENCODER_SHUFFLE_SEED_OFFSET)
    data = torch.from_numpy(np.ascontiguousarray(cache.images[rows], dtype=np.float32))[:, None]
    data = data.to(device=device, dtype=dtype)
    log = _fit_encoder(E, G, D, opt, data, shuffle, settings, progress)
    out = Path(out_dir)
    pd.DataFrame(log, columns=ENCODER_LOSS_COLUMNS).to_csv(out / ENCODER_LOSSES.name, index=False)
    params = encoder_identity(settings)
    with atomic_path(out / ENCODER_FILE.name) as tmp:
        torch.save(dict(state=E.state_dict(), latent_dim=E.latent_dim, nef=E.nef,
                        image_size=list(E.image_size), params=params), tmp)
    info = dict(params, epochs=settings.encoder_epochs, loss=float(log[-1]["loss"]) if log else float("nan"),
                seconds=round(float(sum(r["seconds"] for r in log)), 3), n_train=int(len(rows)))
    return E, info


def _fit_encoder(E: Encoder, G, D, opt, data: torch.Tensor, shuffle: torch.Generator, settings: ScoreSettings,
                 progress: bool) -> list[dict]:
    """The encoder's epochs on ``data`` (N, 1, H, W) with G and D frozen; E left in eval mode.

    Returns one dict per epoch: ``epoch, loss, mse_image, mse_features`` (means over the
    epoch's slices) and ``seconds``.
    """
    n, bs, epochs = len(data), settings.encoder_batch_size, settings.encoder_epochs
    kappa = float(settings.kappa)
    device, dtype = data.device, data.dtype
    log = []
    bar = tqdm(total=epochs * max(1, math.ceil(n / bs)), desc="train encoder", unit="batch",
               disable=not progress or quiet(), dynamic_ncols=True)
    with frozen(G, D):
        E.train()
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                acc = torch.zeros(3, device=device, dtype=dtype)  # loss, mse_image, mse_features (sums)
                seen = 0
                pieces = list(torch.split(torch.randperm(n, generator=shuffle), bs))
                if len(pieces) > 1 and len(pieces[-1]) == 1:
                    pieces.pop()  # BatchNorm cannot normalise a single sample
                for idx in pieces:
                    x = data[idx.to(device)]
                    gz = G(E(x))
                    with torch.no_grad():
                        fx = D.features(x)
                    mse_i = F.mse_loss(gz, x)
                    mse_f = F.mse_loss(D.features(gz), fx)
                    loss = mse_i + kappa * mse_f
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    acc += torch.stack([loss.detach(), mse_i.detach(), mse_f.detach()]) * len(idx)
                    seen += len(idx)
                    bar.update(1)
                a = (acc / max(seen, 1)).tolist()
                log.append(dict(epoch=epoch, loss=a[0], mse_image=a[1], mse_features=a[2],
                                seconds=time.perf_counter() - t0))
                bar.set_postfix(epoch=epoch, loss=f"{a[0]:.4f}")
        finally:
            bar.close()
    E.eval()
    return log


def load_encoder(run, device="cpu") -> Encoder:
    """The encoder the scoring step trained (``<run>/score/encoder.pt``), in eval mode on ``device``."""
    path = Path(run / ENCODER_FILE)
    if not path.exists():
        raise RunFolderError(f"{path}: no trained encoder in this run folder; run the scoring step "
                             f"(notebook 03) with mapping='encoder' or 'encoder+iterative' first")
    ck = load_checkpoint(path, torch.device(device), required=("state", "latent_dim", "nef", "image_size"),
                         step="score")
    E = Encoder(ck["latent_dim"], ck["nef"], tuple(ck["image_size"]))
    E.load_state_dict(ck["state"])
    return E.to(device).eval()

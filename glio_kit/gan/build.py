"""What a DCGAN training starts from: the models and their optimisers, the precision, the
random streams and the training slices (step 02, :mod:`glio_kit.gan.train`; also the
learning-rate side run, :mod:`glio_kit.gan.lr_comparison`).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn as nn

from ..errors import InputError
from ..run.config import TrainSettings
from .model import build_models
from .samples import N_SAMPLES

__all__ = ["update_ema", "GAN", "build_gan", "Precision", "precision", "random_streams", "fixed_latents",
           "training_rows",
           "SHUFFLE_SEED_OFFSET", "NOISE_SEED_OFFSET", "FIXED_Z_SEED_OFFSET", "RESEED_STRIDE"]

# The weights are initialised from the global RNG seeded with ``seed``. The shuffling, the noise
# z and the fixed latents of the sample grids each have a generator of their own, seeded
# ``seed + offset``, so that these three streams do not depend on each other: another batch size
# draws noise in other pieces but shuffles the same way, and the fixed latents of Figure 3 are the
# same whatever the training does.
SHUFFLE_SEED_OFFSET = 1
NOISE_SEED_OFFSET = 2
FIXED_Z_SEED_OFFSET = 3
#: A training resumed on another device type cannot take its noise generator's saved state (CPU
#: and CUDA generators differ), so the generator is reseeded with
#: ``seed + NOISE_SEED_OFFSET + RESEED_STRIDE * epoch``: a prime stride, so each epoch's new
#: stream differs from the streams above and from the other epochs'.
RESEED_STRIDE = 7919


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, decay: float) -> None:
    """Move the averaged generator towards G after an update: ``w_ema = decay * w_ema + (1 -
    decay) * w`` for every weight and BatchNorm running statistic (counters are copied).

    With decay d the average reaches back about 1 / (1 - d) updates (0.995: 200). ``G`` may be
    wrapped by DistributedDataParallel.
    """
    src = getattr(G, "module", G).state_dict()
    for name, w_ema in G_ema.state_dict().items():
        w = src[name]
        if w_ema.is_floating_point():
            w_ema.lerp_(w.to(w_ema.dtype), 1.0 - decay)
        else:
            w_ema.copy_(w)


# ------------------------------------------------------------ models and precision
class Precision(NamedTuple):
    """How the update computes: autocast mixed precision and channels-last memory on CUDA with
    ``amp`` (bf16 where supported, else fp16 with a GradScaler); plain float32 elsewhere."""

    device_type: str
    amp: bool
    dtype: torch.dtype

    def autocast(self):
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.amp)

    def scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)

    @property
    def memory_format(self):
        return torch.channels_last if self.amp else torch.contiguous_format

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.amp else "float32"


def precision(amp: bool, device: torch.device) -> Precision:
    """The :class:`Precision` of a training with ``amp`` on ``device`` (mixed only on CUDA)."""
    use_amp = bool(amp) and device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device.type, use_amp, dtype)


class GAN(NamedTuple):
    """The two networks, their Adam optimisers and the gradient scaler of fp16; with
    ``ema_decay > 0`` also the moving average of G (:func:`update_ema`), which sampling and
    mapping use."""

    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    G_ema: nn.Module | None = None
    ema_decay: float = 0.0

    @property
    def G_sampling(self) -> nn.Module:
        """The generator the samples and the later steps use: the average when there is one."""
        return self.G if self.G_ema is None else self.G_ema

    def update_average(self) -> None:
        """After an update of G: move its moving average, when there is one (:func:`update_ema`)."""
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, self.ema_decay)


def build_gan(settings: TrainSettings, image_size, device: torch.device, prec: Precision,
              lr: float | None = None) -> GAN:
    """DCGAN-initialised models for ``image_size`` (H, W) on ``device``, Adam for both networks.

    The initial weights come from the global torch RNG (seed it first), drawn on the CPU, so
    the same seed gives the same weights on every device. ``lr``: default ``settings.lr``.
    """
    G, D = build_models(settings.latent_dim, settings.ngf, settings.ndf, image_size)
    G.to(device, memory_format=prec.memory_format)
    D.to(device, memory_format=prec.memory_format)
    lr = settings.lr if lr is None else lr
    opt_G = torch.optim.Adam(G.parameters(), lr=lr, betas=(settings.beta1, settings.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=lr, betas=(settings.beta1, settings.beta2))
    G_ema = None
    if settings.ema_decay > 0:  # starts as G; never trained, only averaged
        G_ema = copy.deepcopy(G).requires_grad_(False)
    return GAN(G, D, opt_G, opt_D, prec.scaler(), G_ema, settings.ema_decay)


def random_streams(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """``(shuffle_gen, noise_gen)``: the generators of the batch order (CPU) and of z (``device``)."""
    shuffle_gen = torch.Generator().manual_seed(seed + SHUFFLE_SEED_OFFSET)
    noise_gen = torch.Generator(device=device).manual_seed(seed + NOISE_SEED_OFFSET)
    return shuffle_gen, noise_gen


def fixed_latents(seed: int, latent_dim: int) -> torch.Tensor:
    """The fixed latent batch of the sample grids, (16, latent_dim, 1, 1), on the CPU."""
    gen = torch.Generator().manual_seed(seed + FIXED_Z_SEED_OFFSET)
    return torch.randn(N_SAMPLES, latent_dim, 1, 1, generator=gen)


def training_rows(cache):
    """The rows of the healthy ``train`` slices of ``cache`` (at least two: BatchNorm)."""
    rows = cache.rows(split="train")
    if len(rows) < 2:
        raise InputError(getattr(cache, "folder", "cache"),
                         f"needs at least 2 healthy training slices to train the DCGAN (BatchNorm), found "
                         f"{len(rows)}; check the split column of the cache's index")
    return rows

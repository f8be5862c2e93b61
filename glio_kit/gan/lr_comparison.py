"""A side experiment of notebook 02: the same short training at several learning rates.

The paper trains at lr 0.002; DCGAN's usual value is 0.0002. :func:`compare_learning_rates`
trains a few epochs per learning rate from the same initial weights, batches and noise (the
training's own pieces: :func:`~glio_kit.gan.train.build_gan`, :func:`~glio_kit.gan.train.train_epoch`),
so only the learning rate differs; at the run's learning rate the side run is exactly the
first epochs of the real training. :func:`glio_kit.figures.training.plot_learning_rates`
draws the result.
"""
from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..run.config import TrainSettings
from ..device import choose_device, seed_everything
from ..progress import quiet
from .samples import fixed_samples
from .slice_batches import SliceBatches
from .build import build_gan, fixed_latents, precision, random_streams, training_rows
from .train import train_epoch
from ..progress import tqdm

__all__ = ["compare_learning_rates", "LearningRateComparison"]


class LearningRateComparison(NamedTuple):
    """What :func:`compare_learning_rates` returns."""

    histories: dict  # {lr: DataFrame with columns epoch, loss_d, loss_g, d_x, d_g_z (epoch means)}
    samples: dict  # {lr: (n, H, W) G(z) of the first n fixed latents of Figure 3 after the last epoch}
    epochs: int


def compare_learning_rates(cache, settings: TrainSettings, lrs=(0.0002, 0.002), epochs: int = 5, n: int = 6,
                           progress: bool = True, data_mode: str = "auto") -> LearningRateComparison:
    """Short side runs, one per learning rate in ``lrs``, from the same initial weights,
    batches and noise; every other knob from ``settings``.

    Trained in memory: nothing is written and the run's model is not touched (the global
    random states are put back afterwards). ``n``: samples kept per learning rate (at most 16).
    """
    rows = training_rows(cache)
    device = choose_device(settings.device)
    prec = precision(settings.amp, device)
    image_size = [int(s) for s in cache.images.shape[1:]]
    data = SliceBatches(cache.images, rows, device, settings.batch_size, data_mode, channels_last=prec.amp)
    fixed_z = fixed_latents(settings.seed, settings.latent_dim).to(device)
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    histories, samples = {}, {}
    bar = tqdm(total=len(lrs) * int(epochs) * len(data), desc="compare learning rates", unit="batch",
               disable=not progress or quiet(), dynamic_ncols=True)
    try:
        for lr in lrs:
            seed_everything(settings.seed)
            gan = build_gan(settings, image_size, device, prec, lr=lr)
            shuffle_gen, noise_gen = random_streams(settings.seed, device)
            history = []
            for epoch in range(1, int(epochs) + 1):
                bar.set_description(f"compare learning rates (lr {lr:g})")
                perm = torch.randperm(len(rows), generator=shuffle_gen)
                stats = train_epoch(gan, data, perm, noise_gen, autocast=prec.autocast, bar=bar,
                                    epoch=epoch)
                history.append(dict(epoch=epoch, loss_d=stats.loss_d, loss_g=stats.loss_g, d_x=stats.d_x,
                                    d_g_z=stats.d_g_z))
            with prec.autocast():
                samples[lr] = fixed_samples(gan.G, fixed_z)[:n]
            histories[lr] = pd.DataFrame(history)
            del gan
    finally:
        bar.close()
        torch.set_rng_state(saved[0]), np.random.set_state(saved[1]), random.setstate(saved[2])
    return LearningRateComparison(histories, samples, int(epochs))

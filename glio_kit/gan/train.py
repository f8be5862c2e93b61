"""Step 02: train the DCGAN on healthy training slices (paper: 150 epochs, Figure 3).

:func:`dcgan_step` is one update of PyTorch's DCGAN example (``examples/dcgan/main.py``):
the non-saturating GAN loss with ``BCEWithLogitsLoss``; Adam(lr, (beta1, beta2)) for both
networks (the paper says lr 0.002 and the profiles use it; DCGAN's usual value is 0.0002).
:func:`train_epoch` calls it on every batch of an epoch and :func:`train_dcgan` runs the
epochs, with what a reproduction needs around them:

- one loop for one process and for torchrun: inside a process group (``torchrun -m
  glio_kit.run.torchrun``) the same loop runs in its DDP mode (``if ddp:``), each process on
  its share of every global batch (:mod:`glio_kit.gan.ddp`), process 0 writing the files;

- the healthy ``train`` slices of the slice cache in random batches
  (:class:`~glio_kit.gan.slice_batches.SliceBatches`: on the GPU when they fit);
- seeded and repeatable: the shuffling, the noise and the fixed sample latents come from
  their own ``torch.Generator``, whose states are stored in every checkpoint, so an
  interrupted training resumed from ``last.pt`` ends with the very same weights as one
  uninterrupted (:mod:`glio_kit.gan.checkpoints`);
- on CUDA with ``amp``: autocast mixed precision (bf16 where supported, else fp16 with a
  GradScaler) and channels-last memory;
- outputs in ``<run>/train/``: ``losses.csv`` (one row per epoch), ``samples/`` (a grid from
  one fixed latent batch every epoch and real slices for comparison, :mod:`glio_kit.gan.samples`),
  ``checkpoints/`` (``last.pt`` every epoch, ``epoch_XXX.pt`` every ``checkpoint_every``).
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn as nn

from ..errors import GlioKitError
from ..progress import tqdm
from ..run.config import TrainSettings
from ..device import choose_device, seed_everything
from ..progress import quiet
from .build import (GAN, NOISE_SEED_OFFSET, RESEED_STRIDE, build_gan, fixed_latents, precision,
                    random_streams, training_rows)
from .checkpoints import (checkpoint_path, load_models, make_checkpoint, restore_rng, resumable_checkpoint,
                          rng_state, save_checkpoint)
from .ddp import (all_reduce, barrier, broadcast, distributed, epoch_shares, global_batchnorm, rank,
                  rank_device, world, wrap)
from .loss_log import LOSS_COLUMNS, LOSSES, log_epoch, read_losses
from .samples import GRID_NROW, SAMPLES, fixed_samples, save_grid, save_real_grid
from .slice_batches import SliceBatches

__all__ = ["dcgan_step", "StepStats", "train_epoch", "EpochStats", "train_dcgan",
           # re-exported: their homes are glio_kit.gan.checkpoints and glio_kit.gan.loss_log
           "load_models", "read_losses", "LOSS_COLUMNS", "LOSSES"]

#: The loss of PyTorch's example (``nn.BCELoss`` after a sigmoid), taking the logits directly
#: (the sigmoid inside the loss is numerically stable, and safe under autocast).
BCE = nn.BCEWithLogitsLoss()
#: A GradScaler that does nothing: ``scale(loss)`` is ``loss``, ``step(opt)`` is ``opt.step()``.
NO_SCALING = torch.amp.GradScaler("cuda", enabled=False)


# ---------------------------------------------------------------------- one update
class StepStats(NamedTuple):
    """What one :func:`dcgan_step` reports (detached tensors on the training device)."""

    loss_d: torch.Tensor  # () discriminator loss, the batch mean
    loss_g: torch.Tensor  # () generator loss, the batch mean
    d_x: torch.Tensor  # (B,) D(x): the discriminator's probability "real" for each real slice
    d_g_z: torch.Tensor  # (B,) D(G(z)) for each generated slice, before D's update


def dcgan_step(G: nn.Module, D: nn.Module, opt_G, opt_D, real: torch.Tensor, z: torch.Tensor, *,
               criterion=BCE, scaler=NO_SCALING, autocast=nullcontext) -> StepStats:
    """One DCGAN update on a batch, as in PyTorch's ``examples/dcgan/main.py``.

    real : (B, 1, H, W) healthy slices in [-1, 1], on the models' device.
    z : (B, latent_dim, 1, 1) noise.
    criterion : loss on logits and labels (default: binary cross-entropy on logits).
    scaler : a ``torch.amp.GradScaler`` for fp16 (default: none).
    autocast : a function returning the context the forward passes run in (mixed precision).

    Returns :class:`StepStats`.
    """
    b = real.shape[0]
    real_label = torch.ones(b, device=real.device)
    fake_label = torch.zeros(b, device=real.device)

    # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
    with autocast():
        fake = G(z)
        out_real = D(real)
        out_fake = D(fake.detach())
        loss_d = criterion(out_real, real_label) + criterion(out_fake, fake_label)
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_d).backward()
    scaler.step(opt_D)

    # (2) Update G network: maximize log(D(G(z))) (the non-saturating loss: fake labelled real)
    with autocast():
        loss_g = criterion(D(fake), real_label)
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_G)
    scaler.update()

    with torch.no_grad():
        return StepStats(loss_d.detach(), loss_g.detach(), torch.sigmoid(out_real.detach().float()),
                         torch.sigmoid(out_fake.detach().float()))


# ------------------------------------------------------------------------ one epoch
class EpochStats(NamedTuple):
    """Means over an epoch's images (of all processes) of what :func:`dcgan_step` reports."""

    loss_d: float
    loss_g: float
    d_x: float
    d_g_z: float
    images: int  # images trained on


def train_epoch(gan: GAN, data: SliceBatches, perm: torch.Tensor, noise_gen: torch.Generator, *,
                rank: int = 0, world: int = 1, autocast=nullcontext, bar=None, epoch: int = 0) -> EpochStats:
    """:func:`dcgan_step` on every batch of the epoch ``perm`` (or, in DDP mode, on this
    process's share of every global batch: :func:`glio_kit.gan.ddp.epoch_shares`).

    Parameters
    ----------
    gan : GAN
        The models (DDP-wrapped in DDP mode) and their optimisers.
    data : SliceBatches
        The training slices; ``data.split(perm)`` cuts the epoch into (global) batches.
    perm : torch.Tensor
        (n_train,) the epoch's order of the training slices, the same in every process.
    noise_gen : torch.Generator
        The noise stream, on the training device. Every process draws the global batch's noise
        (B, latent_dim, 1, 1) and takes its share of it, so the noise is that of one process.
    rank, world : int
        This process and the number of processes (0 and 1: one process).
    bar : tqdm bar over batches or None; its postfix shows the running means.

    Returns
    -------
    EpochStats
        The epoch's means over all processes' images.
    """
    device = noise_gen.device  # the training device
    latent_dim = getattr(gan.G, "module", gan.G).latent_dim
    acc = torch.zeros(5, device=device)  # sums over images: loss_d, loss_g, D(x), D(G(z)); then images
    shares = epoch_shares(data, perm, rank, world)  # one process: [(batch, len(batch), 0)]
    n_seen, last_post = 0, 0.0
    for real, (idx, size, start) in zip(data.batches([share for share, _, _ in shares]), shares):
        b = len(idx)
        z = torch.randn(size, latent_dim, 1, 1, device=device, generator=noise_gen)[start:start + b]
        weight = b * world / size  # unequal shares: the averaged gradient is still the global batch's mean
        crit = BCE if weight == 1.0 else (lambda out, lab, w=weight: BCE(out, lab) * w)
        st = dcgan_step(gan.G, gan.D, gan.opt_G, gan.opt_D, real, z, criterion=crit, scaler=gan.scaler,
                        autocast=autocast)
        gan.update_average()  # in every process: G is the same everywhere, so is its average
        with torch.no_grad():
            acc[:4] += torch.stack([st.loss_d.float() * b / weight, st.loss_g.float() * b / weight,
                                    st.d_x.sum(), st.d_g_z.sum()])
        n_seen += b
        if bar is not None and not bar.disable:
            bar.update(1)
            if time.monotonic() - last_post > 1.0:  # one device sync a second, not one a batch
                last_post = time.monotonic()
                _show_stats(bar, epoch, _means(acc[:4], n_seen), refresh=False)
    acc[4] = n_seen
    all_reduce(acc)  # DDP mode: the means over every process's images
    return _means(acc[:4], int(acc[4]))


def _means(acc: torch.Tensor, n_seen: int) -> EpochStats:
    return EpochStats(*(acc / max(n_seen, 1)).tolist(), images=n_seen)


def _show_stats(bar, epoch: int, s: EpochStats, refresh: bool = True) -> None:
    """An epoch's statistics as the postfix of a tqdm bar."""
    bar.set_postfix(epoch=epoch, loss_d=f"{s.loss_d:.3f}", loss_g=f"{s.loss_g:.3f}", d_x=f"{s.d_x:.2f}",
                    d_g_z=f"{s.d_g_z:.2f}", refresh=refresh)


# --------------------------------------------------------------------------- the step
def _start_or_resume(run, gan: GAN, config: dict, settings: TrainSettings, resume: bool, shuffle_gen,
                     noise_gen) -> tuple[int, torch.Tensor | None]:
    """Continue from ``last.pt`` when it holds a training of ``config`` (models, optimisers,
    random states); else start afresh in an empty ``<run>/train/``.

    Returns ``(epochs already trained, the checkpoint's fixed latents or None)``.
    """
    ckpt = resumable_checkpoint(run, config, settings.epochs) if resume else None
    if ckpt is None:
        run.reset_dir("train")
        checkpoint_path(run).parent.mkdir()
        Path(run / SAMPLES).mkdir()
        return 0, None
    gan.G.load_state_dict(ckpt["G"])
    gan.D.load_state_dict(ckpt["D"])
    gan.opt_G.load_state_dict(ckpt["optG"])
    gan.opt_D.load_state_dict(ckpt["optD"])
    if ckpt.get("scaler"):
        gan.scaler.load_state_dict(ckpt["scaler"])
    if gan.G_ema is not None:
        gan.G_ema.load_state_dict(ckpt["G_ema"])
    epoch = int(ckpt["epoch"])
    reseed = settings.seed + NOISE_SEED_OFFSET + RESEED_STRIDE * epoch
    restore_rng(ckpt["rng"], shuffle_gen, noise_gen, reseed=reseed)
    return epoch, ckpt["fixed_z"]


@contextmanager
def _cudnn_autotuner(device: torch.device):
    """On CUDA, cuDNN times its convolution algorithms once and keeps the fastest (the batch
    shape does not change); the setting is put back afterwards."""
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _result(run, skipped: bool) -> dict:
    losses = read_losses(run)
    info = dict((run.record("train") or {}).get("info") or {})
    last = losses.iloc[-1] if len(losses) else None
    out = dict(
        skipped=skipped,
        epochs=int(last["epoch"]) if last is not None else 0,
        **{k: float(last[k]) if last is not None else float("nan") for k in LOSS_COLUMNS[1:5]},
        seconds=float(losses["seconds"].sum()) if len(losses) else 0.0,
        images_per_s=float(losses["images_per_s"].mean()) if len(losses) else float("nan"),
        checkpoint=str(checkpoint_path(run)),
        losses=losses,
    )
    kept = ("device", "resumed_from", "data_mode", "n_train", "amp_dtype")
    out.update({k: v for k, v in info.items() if k in kept})
    return out


def _claim(run, cache, settings: TrainSettings, overwrite: bool, device: torch.device) -> bool:
    """Claim the ``train`` step (process 0 only, in DDP mode); True when this exact training is
    already done. Every process learns the answer, or that process 0 could not claim."""
    image_size = [int(s) for s in cache.images.shape[1:]]
    if not distributed():
        done = run.claim_step("train", settings, extra={"image_size": image_size}, overwrite=overwrite)
        return bool(done and checkpoint_path(run).exists())
    done, failure = False, None
    if rank() == 0:
        try:
            done = run.claim_step("train", settings, extra={"image_size": image_size}, overwrite=overwrite)
            done = bool(done and checkpoint_path(run).exists())
        except Exception as err:  # noqa: BLE001 - every process must learn that process 0 stopped
            failure = err
    flags = broadcast([float(done), float(failure is not None)], device)
    if failure is not None:
        raise failure
    if flags[1]:
        raise GlioKitError("process 0 could not start the training step; see its output")
    return bool(flags[0])


def _start(run, gan: GAN, config: dict, settings: TrainSettings, resume: bool, streams,
           device: torch.device) -> tuple[int, torch.Tensor | None]:
    """:func:`_start_or_resume` in process 0; in DDP mode the others then load the same
    ``last.pt`` when it resumed. Returns (epochs done, the checkpoint's fixed latents or None)."""
    start, saved_z = (0, None)
    if rank() == 0:
        start, saved_z = _start_or_resume(run, gan, config, settings, resume, *streams)
    if distributed():
        start = int(broadcast([start], device)[0])
        if rank() != 0 and start > 0:
            got, saved_z = _start_or_resume(run, gan, config, settings, True, *streams)
            if got != start:
                raise GlioKitError(f"{checkpoint_path(run)}: changed while the processes were starting; "
                                   f"start the training again")
    return start, saved_z


def _write_epoch(run, gan: GAN, config: dict, streams, fixed_z: torch.Tensor, settings: TrainSettings,
                 epoch: int, samples: torch.Tensor, losses: pd.DataFrame, stats: EpochStats, seconds: float,
                 device: torch.device) -> pd.DataFrame:
    """Process 0, after an epoch: the sample grid, the checkpoints and the losses row.

    ``gan`` holds the unwrapped models (the checkpoint does not depend on the processes).
    ``last.pt`` is written last: a crash before it resumes the epoch before.
    """
    save_grid(samples, run / SAMPLES / f"epoch_{epoch:03d}.png", nrow=GRID_NROW)
    ckpt = make_checkpoint(epoch, gan, config, rng_state(*streams), fixed_z, device)
    if epoch % max(1, settings.checkpoint_every) == 0 or epoch == settings.epochs:
        save_checkpoint(ckpt, checkpoint_path(run, epoch))
    losses = log_epoch(run, losses, epoch, stats, seconds)
    save_checkpoint(ckpt, checkpoint_path(run))
    return losses


def _mark_done(run, losses: pd.DataFrame, settings: TrainSettings, **info) -> None:
    """Process 0: the ``train`` step's record, with the last epoch's losses and ``info``."""
    last = losses.iloc[-1]
    run.mark_done("train", seconds=float(losses["seconds"].sum()), epochs=settings.epochs,
                  loss_d=float(last["loss_d"]), loss_g=float(last["loss_g"]), d_x=float(last["d_x"]),
                  d_g_z=float(last["d_g_z"]), images_per_s=float(losses["images_per_s"].mean()), **info)


def train_dcgan(run, cache, settings: TrainSettings, resume: bool = True, progress: bool = True,
                overwrite: bool = False, data_mode: str = "auto") -> dict:
    """Train the DCGAN on the healthy ``train`` slices of ``cache``; outputs in ``<run>/train/``.

    One process, or every process of a torchrun start (:mod:`glio_kit.run.torchrun`): inside an
    initialised process group the loop runs in its DDP mode (:mod:`glio_kit.gan.ddp`), each
    process on its share of every global batch of ``settings.batch_size``, and ends with the
    weights of one process trained on that batch (up to floating-point summation order).

    Parameters
    ----------
    run : RunDir
        The run folder (:class:`~glio_kit.run.rundir.RunDir`); its ``prep`` step is done.
    cache : SliceCache
        The run's slice cache (``images`` (N, H, W) in [-1, 1], ``rows(split=...)``).
    settings : :class:`~glio_kit.run.config.TrainSettings`
    resume : bool
        Continue from ``train/checkpoints/last.pt`` when it holds the same model and training
        settings (an interrupted run, or more ``epochs`` with ``overwrite=True``); the result is
        the same as training in one go.
    progress : bool, show a progress bar (process 0 only).
    overwrite : bool
        Redo the step when the run folder holds a training with other settings (otherwise that
        raises :class:`~glio_kit.errors.RunFolderError`).
    data_mode : ``auto`` | ``device`` | ``host`` | ``memmap`` (where the slices are held).

    Returns
    -------
    dict
        ``epochs, loss_d, loss_g, d_x, d_g_z`` (last epoch), ``seconds`` (all epochs),
        ``images_per_s`` (mean), ``losses`` (DataFrame), ``checkpoint``, ``skipped`` (True when
        this exact training was already done and nothing ran), ``device``, ``resumed_from``
        (epoch), ``data_mode``, ``n_train``, ``amp_dtype``; the same in every process.
    """
    ddp, rank_, world_ = distributed(), rank(), world()  # one process: False, 0, 1
    device = rank_device(choose_device(settings.device))
    if _claim(run, cache, settings, overwrite, device):
        return _result(run, skipped=True)
    rows, prec = training_rows(cache), precision(settings.amp, device)
    image_size = [int(s) for s in cache.images.shape[1:]]
    config = dict(settings.identity(), image_size=image_size)  # what last.pt must match to be continued

    # models, optimisers, random streams, fixed latents: all from the seed, the same on every device
    seed_everything(settings.seed)
    plain = build_gan(settings, image_size, device, prec)
    if ddp:  # BatchNorm over the global batch
        global_batchnorm(plain.G, device), global_batchnorm(plain.D, device)
    streams = random_streams(settings.seed, device)
    start_epoch, saved_z = _start(run, plain, config, settings, resume, streams, device)
    fixed_z = fixed_latents(settings.seed, settings.latent_dim) if saved_z is None else saved_z
    gan = plain._replace(G=wrap(plain.G, device), D=wrap(plain.D, device)) if ddp else plain

    losses = read_losses(run)
    losses = losses[losses["epoch"] <= start_epoch].reset_index(drop=True)
    data = SliceBatches(cache.images, rows, device, settings.batch_size, data_mode, channels_last=prec.amp)
    if rank_ == 0 and start_epoch == 0:  # real slices beside the samples (Figure 3)
        save_real_grid(run / SAMPLES, cache.images, rows, settings.seed)
    fixed_dev = fixed_z.to(device)
    n_batches = len(epoch_shares(data, torch.arange(len(rows)), rank_, world_))
    bar = tqdm(total=settings.epochs * n_batches, initial=start_epoch * n_batches, unit="batch",
               desc=f"train DCGAN ({world_} processes)" if ddp else "train DCGAN",
               disable=rank_ != 0 or not progress or quiet(), dynamic_ncols=True)
    with bar, _cudnn_autotuner(device):
        gan.G.train(), gan.D.train()
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(rows), generator=streams[0])
            stats = train_epoch(gan, data, perm, streams[1], rank=rank_, world=world_, autocast=prec.autocast,
                                bar=bar, epoch=epoch)
            with prec.autocast():  # in every process: in DDP mode BatchNorm's statistics are collective
                samples = fixed_samples(plain.G_sampling, fixed_dev)
            if rank_ == 0:  # one writer
                losses = _write_epoch(run, plain, config, streams, fixed_z, settings, epoch, samples, losses,
                                      stats, time.perf_counter() - t0, device)
                _show_stats(bar, epoch, stats)
    if rank_ == 0:
        _mark_done(run, losses, settings, device=str(device), resumed_from=start_epoch, data_mode=data.mode,
                   n_train=int(len(rows)), amp_dtype=prec.name, processes=world_)
    barrier()  # the others read process 0's files
    return _result(run, skipped=False)

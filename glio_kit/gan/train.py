"""Step 02: train the DCGAN on healthy training slices (paper: 150 epochs, Figure 3).

:func:`dcgan_step` is one update of PyTorch's DCGAN example (``examples/dcgan/main.py``):
the non-saturating GAN loss with ``BCEWithLogitsLoss``; Adam(lr, (beta1, beta2)) for both
networks (the paper says lr 0.002 and the profiles use it; DCGAN's usual value is 0.0002).
:func:`train_epoch` calls it on every batch of an epoch and :func:`train_dcgan` runs the
epochs, with what a reproduction needs around them:

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

import copy
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn as nn

from .checkpoints import (checkpoint_path, load_models, make_checkpoint, restore_rng, resumable_checkpoint,
                          rng_state, save_checkpoint)
from ..atomic import atomic_path
from ..run.config import TrainSettings
from ..errors import InputError, RunFolderError
from .model import build_models
from ..device import choose_device, seed_everything
from ..progress import quiet
from .samples import GRID_NROW, N_SAMPLES, SAMPLES, fixed_samples, save_grid, save_real_grid
from .slice_batches import SliceBatches

__all__ = ["dcgan_step", "StepStats", "update_ema", "train_epoch", "EpochStats", "train_dcgan", "build_gan",
           "GAN", "Precision", "precision", "random_streams", "fixed_latents", "training_rows", "read_losses",
           "LOSS_COLUMNS", "LOSSES", "SHUFFLE_SEED_OFFSET", "NOISE_SEED_OFFSET", "FIXED_Z_SEED_OFFSET",
           "RESEED_STRIDE",
           "load_models"]  # re-exported: its home is glio_kit.gan.checkpoints

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

LOSSES = Path("train") / "losses.csv"  # inside the run folder
LOSS_COLUMNS = ["epoch", "loss_d", "loss_g", "d_x", "d_g_z", "seconds", "images_per_s"]

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


# ------------------------------------------------------------------------ one epoch
class EpochStats(NamedTuple):
    """Means over an epoch's images of what :func:`dcgan_step` reports."""

    loss_d: float
    loss_g: float
    d_x: float
    d_g_z: float
    images: int  # images trained on


def train_epoch(gan: GAN, batches, noise_gen: torch.Generator, *, autocast=nullcontext, bar=None,
                epoch: int = 0) -> EpochStats:
    """:func:`dcgan_step` on every batch of ``batches`` ((B, 1, H, W) tensors), with noise z
    from ``noise_gen``. ``bar``: a tqdm bar over batches (its postfix shows the running means)."""
    device = noise_gen.device  # the training device
    acc = torch.zeros(4, device=device)  # sums over images: loss_d, loss_g, D(x), D(G(z))
    n_seen, last_post = 0, 0.0
    for real in batches:
        b = real.shape[0]
        z = torch.randn(b, gan.G.latent_dim, 1, 1, device=device, generator=noise_gen)
        st = dcgan_step(gan.G, gan.D, gan.opt_G, gan.opt_D, real, z, scaler=gan.scaler, autocast=autocast)
        gan.update_average()
        with torch.no_grad():
            acc += torch.stack([st.loss_d.float() * b, st.loss_g.float() * b, st.d_x.sum(), st.d_g_z.sum()])
        n_seen += b
        if bar is not None and not bar.disable:
            bar.update(1)
            if time.monotonic() - last_post > 1.0:  # one device sync a second, not one a batch
                last_post = time.monotonic()
                _show_stats(bar, epoch, _means(acc, n_seen), refresh=False)
    return _means(acc, n_seen)


def _means(acc: torch.Tensor, n_seen: int) -> EpochStats:
    return EpochStats(*(acc / max(n_seen, 1)).tolist(), images=n_seen)


def _show_stats(bar, epoch: int, s: EpochStats, refresh: bool = True) -> None:
    """An epoch's statistics as the postfix of a tqdm bar."""
    bar.set_postfix(epoch=epoch, loss_d=f"{s.loss_d:.3f}", loss_g=f"{s.loss_g:.3f}", d_x=f"{s.d_x:.2f}",
                    d_g_z=f"{s.d_g_z:.2f}", refresh=refresh)


# --------------------------------------------------------------------------- the step
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


def _log_epoch(run, losses: pd.DataFrame, epoch: int, s: EpochStats, seconds: float) -> pd.DataFrame:
    row = dict(epoch=epoch, loss_d=s.loss_d, loss_g=s.loss_g, d_x=s.d_x, d_g_z=s.d_g_z, seconds=seconds,
               images_per_s=s.images / seconds)
    new = pd.DataFrame([row])
    losses = pd.concat([losses, new], ignore_index=True) if len(losses) else new
    with atomic_path(run / LOSSES) as tmp:  # a kill while writing leaves the previous log whole
        losses[LOSS_COLUMNS].to_csv(tmp, index=False)
    return losses


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


def train_dcgan(run, cache, settings: TrainSettings, resume: bool = True, progress: bool = True,
                overwrite: bool = False, data_mode: str = "auto") -> dict:
    """Train the DCGAN on the healthy ``train`` slices of ``cache``; outputs in ``<run>/train/``.

    run : :class:`~glio_kit.run.rundir.RunDir` whose ``prep`` step is done.
    cache : the run's :class:`~glio_kit.data.preprocess.SliceCache` (``images`` (N, H, W) in [-1, 1],
        ``rows(split=...)``).
    settings : :class:`~glio_kit.run.config.TrainSettings`.
    resume : continue from ``train/checkpoints/last.pt`` when it holds the same model and
        training settings (an interrupted run, or more ``epochs`` with ``overwrite=True``);
        the result is the same as training in one go.
    overwrite : redo the step when the run folder holds a training with other settings
        (otherwise that raises :class:`~glio_kit.errors.RunFolderError`).
    data_mode : ``auto`` | ``device`` | ``host`` | ``memmap`` (where the slices are held).

    Returns dict: ``epochs, loss_d, loss_g, d_x, d_g_z`` (last epoch), ``seconds`` (all
    epochs), ``images_per_s`` (mean), ``losses`` (DataFrame), ``checkpoint``, ``skipped``
    (True when this exact training was already done and nothing ran), ``device``,
    ``resumed_from`` (epoch), ``data_mode``, ``n_train``, ``amp_dtype``.
    """
    from ..progress import tqdm

    image_size = [int(s) for s in cache.images.shape[1:]]
    done = run.claim_step("train", settings, extra={"image_size": image_size}, overwrite=overwrite)
    if done and checkpoint_path(run).exists():
        return _result(run, skipped=True)
    rows = training_rows(cache)
    device = choose_device(settings.device)
    prec = precision(settings.amp, device)
    config = dict(settings.identity(), image_size=image_size)  # what last.pt must match to be continued

    # models, optimisers, random streams, fixed latents: all from the seed, the same on every device
    seed_everything(settings.seed)
    gan = build_gan(settings, image_size, device, prec)
    fixed_z = fixed_latents(settings.seed, settings.latent_dim)
    shuffle_gen, noise_gen = random_streams(settings.seed, device)
    start_epoch, saved_z = _start_or_resume(run, gan, config, settings, resume, shuffle_gen, noise_gen)
    fixed_z = fixed_z if saved_z is None else saved_z

    losses = read_losses(run)
    losses = losses[losses["epoch"] <= start_epoch].reset_index(drop=True)
    data = SliceBatches(cache.images, rows, device, settings.batch_size, data_mode, channels_last=prec.amp)
    if start_epoch == 0:  # real slices beside the samples (Figure 3)
        save_real_grid(run / SAMPLES, cache.images, rows, settings.seed)
    fixed_dev = fixed_z.to(device)
    every = max(1, settings.checkpoint_every)

    bar = tqdm(total=settings.epochs * len(data), initial=start_epoch * len(data), desc="train DCGAN",
               unit="batch", disable=not progress or quiet(), dynamic_ncols=True)
    with bar, _cudnn_autotuner(device):
        gan.G.train(), gan.D.train()
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(rows), generator=shuffle_gen)
            stats = train_epoch(gan, data.epoch(perm), noise_gen, autocast=prec.autocast, bar=bar,
                                epoch=epoch)

            with prec.autocast():
                samples = fixed_samples(gan.G_sampling, fixed_dev)
            save_grid(samples, run / SAMPLES / f"epoch_{epoch:03d}.png", nrow=GRID_NROW)
            ckpt = make_checkpoint(epoch, gan, config, rng_state(shuffle_gen, noise_gen), fixed_z, device)
            if epoch % every == 0 or epoch == settings.epochs:
                save_checkpoint(ckpt, checkpoint_path(run, epoch))
            losses = _log_epoch(run, losses, epoch, stats, time.perf_counter() - t0)
            save_checkpoint(ckpt, checkpoint_path(run))  # last: a crash before here resumes the epoch before
            del ckpt
            _show_stats(bar, epoch, stats)

    last = losses.iloc[-1]
    run.mark_done("train", seconds=float(losses["seconds"].sum()), epochs=settings.epochs,
                  loss_d=float(last["loss_d"]), loss_g=float(last["loss_g"]), d_x=float(last["d_x"]),
                  d_g_z=float(last["d_g_z"]), images_per_s=float(losses["images_per_s"].mean()),
                  device=str(device), resumed_from=start_epoch, data_mode=data.mode, n_train=int(len(rows)),
                  amp_dtype=prec.name)
    return _result(run, skipped=False)

"""Step 02 on several GPUs (or CPU processes): DistributedDataParallel under torchrun.

    glio-kit run --profile paper --run-dir runs/paper --notebook 01_data_prep.ipynb
    torchrun --nproc_per_node 4 -m glio_kit.gan.ddp --profile paper --run-dir runs/paper
    glio-kit run --profile paper --run-dir runs/paper      # notebook 02 finds the training done

N processes with the global batch ``batch_size`` train the same DCGAN as one process with
that batch (:func:`glio_kit.gan.train.train_dcgan`), up to floating-point summation order:

- **the same update**: every process calls :func:`glio_kit.gan.train.dcgan_step` on its share of
  each batch, with G and D wrapped in ``DistributedDataParallel`` (gradients averaged);
- **a distributed sampler** (:func:`rank_share`): every process draws the same epoch order from
  the training's shuffle stream, cuts it into the global batches one process would train on,
  and takes its contiguous share of each (shares differ by at most one image). Each process
  draws the global noise batch from the same noise stream and takes the same share of it;
- **BatchNorm over the global batch**: ``torch.nn.SyncBatchNorm`` on CUDA; elsewhere (gloo on
  the CPU, where SyncBatchNorm does not run) :class:`GlobalBatchNorm2d`, the same statistics
  through a differentiable ``all_reduce``;
- **uneven shares** (a last batch that does not split evenly): each process's loss is weighted
  by ``share * N / batch``, so the averaged gradient is the global batch's mean; a last batch
  with fewer images than processes is skipped;
- **one writer**: process 0 claims the step, writes ``losses.csv``, the sample grids and the
  checkpoints (the same files, in the same format, as a single-process training);
- **resume**: from ``last.pt`` like a single-process training (also with another N: the
  checkpoint does not depend on it). Every process loads it.

Tested on the CPU with gloo and 2 processes (``tests/test_ddp.py``).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .checkpoints import checkpoint_path, make_checkpoint, rng_state, save_checkpoint
from ..run.config import TrainSettings
from ..errors import GlioKitError
from ..device import choose_device, seed_everything
from ..progress import quiet
from .samples import GRID_NROW, SAMPLES, fixed_samples, save_grid, save_real_grid
from .slice_batches import SliceBatches
from .train import (BCE, GAN, EpochStats, _cudnn_autotuner, _log_epoch, _result, _show_stats,
                    _start_or_resume, build_gan, dcgan_step, fixed_latents, precision, random_streams,
                    read_losses, training_rows)

__all__ = ["GlobalBatchNorm2d", "global_batchnorm", "rank_share", "epoch_shares", "train_ddp", "main"]


# ------------------------------------------------------------- BatchNorm, all processes
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum of a tensor over all processes; the gradient is the sum of the gradients (the
    objective is the sum of every process's loss)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable ``all_reduce`` (sum) over the processes of the default group."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch (every process).

    x : (b, C, H, W), b the process's share. Mean and (biased) variance over all processes'
    images come from two differentiable ``all_reduce`` sums (two passes, as BatchNorm computes
    them), so the gradient is that of BatchNorm over the global batch. The running statistics
    get the global batch's unbiased variance. Outside training, or in one process, it is
    ``BatchNorm2d``. It does what ``SyncBatchNorm`` does on CUDA, on any backend.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        all_reduce = all_reduce_sum
        xf, c, dims = x.float(), x.shape[1], (0, 2, 3)
        count = torch.full((1,), float(x.numel() // c), device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dims), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
        return y.to(x.dtype)


def global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm2d computing global-batch statistics: SyncBatchNorm on
    CUDA, :class:`GlobalBatchNorm2d` elsewhere. Parameters and buffers are the same objects
    (an optimiser built before keeps working; state dicts keep their keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batchnorm(child, device)
    return module


# ---------------------------------------------------------------------- the sampler
def rank_share(piece: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Process ``rank``'s contiguous share of one global batch ``piece`` (indices); the shares
    of ranks 0..world-1 are disjoint, cover ``piece`` in order, and differ by at most one."""
    return torch.tensor_split(piece, world)[rank]


def epoch_shares(data: SliceBatches, perm: torch.Tensor, rank: int, world: int):
    """``[(share, batch_size, start)]`` of one epoch: for each global batch of ``perm`` (cut as
    one process cuts it: :meth:`SliceBatches.split`), this process's share of the indices,
    the global batch's size and where the share starts in it. Batches with fewer images than
    processes are skipped (a process cannot train on nothing)."""
    out = []
    for piece in data.split(perm):
        if len(piece) < world:
            continue
        shares = torch.tensor_split(piece, world)
        start = sum(len(s) for s in shares[:rank])
        out.append((rank_share(piece, rank, world), len(piece), start))
    return out


# -------------------------------------------------------------------------- an epoch
def ddp_epoch(gan: GAN, data: SliceBatches, perm: torch.Tensor, noise_gen: torch.Generator, *, rank: int,
              world: int, autocast, bar=None, epoch: int = 0) -> EpochStats:
    """:func:`dcgan_step` on this process's share of every global batch of the epoch ``perm``.

    gan : the DDP-wrapped models and their optimisers. The noise of a global batch of size B is
    drawn (B, latent_dim, 1, 1) from ``noise_gen`` by every process, which takes its share.
    Returns the epoch's means over all processes' images.
    """
    device = noise_gen.device
    acc = torch.zeros(5, device=device)  # sums: loss_d, loss_g, D(x), D(G(z)), images
    latent_dim = gan.G.module.latent_dim
    for idx, size, start in epoch_shares(data, perm, rank, world):
        z = torch.randn(size, latent_dim, 1, 1, device=device, generator=noise_gen)[start:start + len(idx)]
        real = next(iter(data.epoch(idx)))
        b = len(idx)
        weight = b * world / size  # the global batch's mean gradient from unequal shares
        crit = BCE if weight == 1.0 else (lambda out, lab, w=weight: BCE(out, lab) * w)
        st = dcgan_step(gan.G, gan.D, gan.opt_G, gan.opt_D, real, z, criterion=crit, scaler=gan.scaler,
                        autocast=autocast)
        gan.update_average()  # every process: G is the same everywhere, so is its average
        with torch.no_grad():
            acc += torch.stack([st.loss_d.float() * b / weight, st.loss_g.float() * b / weight,
                                st.d_x.sum(), st.d_g_z.sum(), torch.tensor(float(b), device=device)])
        if bar is not None:
            bar.update(1)
    dist.all_reduce(acc)
    n = max(float(acc[4]), 1.0)
    return EpochStats(*(acc[:4] / n).tolist(), images=int(acc[4]))


# --------------------------------------------------------------------------- the step
def _broadcast(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return t.tolist()


def _claim(run, cache, settings: TrainSettings, overwrite: bool) -> tuple[bool, str]:
    """Process 0: claim the step. Returns (already done, error text)."""
    try:
        image_size = [int(s) for s in cache.images.shape[1:]]
        done = run.claim_step("train", settings, extra={"image_size": image_size}, overwrite=overwrite)
        return bool(done and checkpoint_path(run).exists()), ""
    except Exception as err:  # noqa: BLE001 - every process must learn that process 0 stopped
        return False, f"{type(err).__name__}: {err}"


def _start(run, gan: GAN, config: dict, settings: TrainSettings, resume: bool, streams, rank: int,
           device: torch.device) -> tuple[int, torch.Tensor | None]:
    """Process 0 starts afresh or resumes (:func:`glio_kit.gan.train._start_or_resume`); the others
    then load the same ``last.pt`` when it resumed. Returns (epochs done, saved fixed latents)."""
    start, saved_z = (0, None)
    if rank == 0:
        start, saved_z = _start_or_resume(run, gan, config, settings, resume, *streams)
    start = int(_broadcast([start], device)[0])
    if rank != 0 and start > 0:
        got, saved_z = _start_or_resume(run, gan, config, settings, True, *streams)
        if got != start:
            raise GlioKitError(f"{checkpoint_path(run)}: changed while the processes were starting; "
                               f"start the training again")
    return start, saved_z


def train_ddp(run, cache, settings: TrainSettings, resume: bool = True, progress: bool = True,
              overwrite: bool = False, data_mode: str = "auto") -> dict:
    """:func:`glio_kit.gan.train.train_dcgan` in every process of an initialised process group.

    ``settings.batch_size`` is the global batch (each process trains on about 1/N of it).
    Returns what ``train_dcgan`` returns (every process reads process 0's files).
    """
    from ..progress import tqdm

    rank, world = dist.get_rank(), dist.get_world_size()
    device = _rank_device(settings.device)
    done, error = _claim(run, cache, settings, overwrite) if rank == 0 else (False, "")
    flags = _broadcast([float(done), float(bool(error))], device)
    if flags[1]:
        raise GlioKitError(error or "process 0 could not start the training step; see its output")
    if flags[0]:
        return _result(run, skipped=True)

    image_size = [int(s) for s in cache.images.shape[1:]]
    rows = training_rows(cache)
    prec = precision(settings.amp, device)
    config = dict(settings.identity(), image_size=image_size)
    seed_everything(settings.seed)
    plain = build_gan(settings, image_size, device, prec)
    global_batchnorm(plain.G, device), global_batchnorm(plain.D, device)
    streams = random_streams(settings.seed, device)
    start_epoch, saved_z = _start(run, plain, config, settings, resume, streams, rank, device)
    fixed_z = fixed_latents(settings.seed, settings.latent_dim) if saved_z is None else saved_z
    gan = plain._replace(G=_wrap(plain.G, device), D=_wrap(plain.D, device))

    losses = read_losses(run)
    losses = losses[losses["epoch"] <= start_epoch].reset_index(drop=True)
    data = SliceBatches(cache.images, rows, device, settings.batch_size, data_mode, channels_last=prec.amp)
    if rank == 0 and start_epoch == 0:
        save_real_grid(run / SAMPLES, cache.images, rows, settings.seed)
    n_batches = len(epoch_shares(data, torch.arange(len(rows)), rank, world))
    bar = tqdm(total=settings.epochs * n_batches, initial=start_epoch * n_batches, unit="batch",
               desc=f"train DCGAN ({world} processes)", disable=rank != 0 or not progress or quiet())
    with bar, _cudnn_autotuner(device):
        gan.G.train(), gan.D.train()
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(rows), generator=streams[0])
            stats = ddp_epoch(gan, data, perm, streams[1], rank=rank, world=world, autocast=prec.autocast,
                              bar=bar, epoch=epoch)
            with prec.autocast():  # every process: BatchNorm statistics are collective
                samples = fixed_samples(plain.G_sampling, fixed_z.to(device))
            if rank == 0:
                losses = _write_epoch(run, plain, config, streams, fixed_z, device, settings, epoch, samples,
                                      losses, stats, time.perf_counter() - t0)
                _show_stats(bar, epoch, stats)
    if rank == 0:
        _mark_done(run, losses, settings, device, start_epoch, data.mode, len(rows), prec.name, world)
    dist.barrier()
    return _result(run, skipped=False)


def _write_epoch(run, plain: GAN, config, streams, fixed_z, device, settings, epoch, samples, losses, stats,
                 seconds):
    """Process 0, after an epoch: the sample grid, checkpoints and the losses row, as
    :func:`glio_kit.gan.train.train_dcgan` writes them."""
    save_grid(samples, run / SAMPLES / f"epoch_{epoch:03d}.png", nrow=GRID_NROW)
    ckpt = make_checkpoint(epoch, plain, config, rng_state(*streams), fixed_z, device)
    if epoch % max(1, settings.checkpoint_every) == 0 or epoch == settings.epochs:
        save_checkpoint(ckpt, checkpoint_path(run, epoch))
    losses = _log_epoch(run, losses, epoch, stats, seconds)
    save_checkpoint(ckpt, checkpoint_path(run))
    return losses


def _mark_done(run, losses, settings, device, start_epoch, data_mode, n_train, amp_dtype, world) -> None:
    last = losses.iloc[-1]
    run.mark_done("train", seconds=float(losses["seconds"].sum()), epochs=settings.epochs,
                  loss_d=float(last["loss_d"]), loss_g=float(last["loss_g"]), d_x=float(last["d_x"]),
                  d_g_z=float(last["d_g_z"]), images_per_s=float(losses["images_per_s"].mean()),
                  device=str(device), resumed_from=start_epoch, data_mode=data_mode, n_train=int(n_train),
                  amp_dtype=amp_dtype, processes=world)


def _rank_device(preference: str) -> torch.device:
    """This process's device: its own GPU (``LOCAL_RANK``) when the choice is CUDA."""
    device = choose_device(preference)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(device)
    return device


def _wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the processes)."""
    ids = [device.index] if device.type == "cuda" else None
    # buffers (BatchNorm's running statistics) are the same on every process: nothing to broadcast
    # before a forward pass (newer torch names the keyword forward_sync_buffers)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    no_sync = {key: False}
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


# ------------------------------------------------------------------------ the command
def main(argv=None) -> int:
    """``torchrun --nproc_per_node N -m glio_kit.gan.ddp --run-dir RUN [--profile P] [-p name=value]``."""
    from ..run.cli import parse_assignments
    from ..run.config import get_config
    from ..data.slice_cache import SliceCache
    from ..run.rundir import RunDir

    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m glio_kit.gan.ddp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run folder whose data preparation (01) is done")
    p.add_argument("--profile", default=None, help="smoke | demo | paper (default: $GLIO_KIT_PROFILE, demo)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a training knob, as for glio-kit run (repeatable); give notebook 02 the same")
    p.add_argument("--overwrite", action="store_true", help="redo a training of other settings in RUN")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        print("glio_kit.gan.ddp: start it with torchrun "
              "(torchrun --nproc_per_node N -m glio_kit.gan.ddp ...)",
              file=sys.stderr)
        return 2
    try:
        settings = get_config(args.profile, **parse_assignments(args.param)).train
        run = RunDir(args.run_dir, create=False)
        if not (run / "cache").exists():
            raise GlioKitError(f"{run.path}: no slice cache; run the data preparation first "
                               f"(glio-kit run --run-dir {args.run_dir} --notebook 01_data_prep.ipynb)")
        cache = SliceCache(run / "cache")
    except (GlioKitError, ValueError) as err:
        print(f"glio_kit.gan.ddp: error: {err}", file=sys.stderr)
        return 2
    backend = "nccl" if choose_device(settings.device).type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    try:
        result = train_ddp(run, cache, settings, overwrite=args.overwrite)
        if dist.get_rank() == 0:
            print({k: v for k, v in result.items() if k != "losses"})
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training on several GPUs (or CPU processes): the DistributedDataParallel mode of the training.

    glio-kit run --profile paper --run-dir runs/paper --notebook 01_data_prep.ipynb
    torchrun --nproc_per_node 4 -m glio_kit.run.torchrun --profile paper --run-dir runs/paper
    glio-kit run --profile paper --run-dir runs/paper      # notebook 02 finds the training done

:func:`glio_kit.gan.train.train_dcgan` is the one training loop; inside an initialised process
group (torchrun, :func:`process_group`) it runs in its DDP mode. N processes with the global
batch ``batch_size`` then train the same DCGAN as one process with that batch, up to
floating-point summation order:

- **the same update**: every process calls :func:`glio_kit.gan.train.dcgan_step` on its share of
  each batch, with G and D wrapped in ``DistributedDataParallel`` (:func:`wrap`: gradients averaged);
- **a distributed sampler** (:func:`epoch_shares`): every process draws the same epoch order from
  the training's shuffle stream, cuts it into the global batches one process would train on,
  and takes its contiguous share of each (shares differ by at most one image). Each process
  draws the global noise batch from the same noise stream and takes the same share of it;
- **BatchNorm over the global batch** (:func:`global_batchnorm`): ``torch.nn.SyncBatchNorm`` on
  CUDA; elsewhere (gloo on the CPU, where SyncBatchNorm does not run) :class:`GlobalBatchNorm2d`,
  the same statistics through a differentiable ``all_reduce``;
- **uneven shares** (a last batch that does not split evenly): each process's loss is weighted
  by ``share * N / batch``, so the averaged gradient is the global batch's mean; a last batch
  with fewer images than processes is skipped;
- **one writer**: process 0 claims the step, writes ``losses.csv``, the sample grids and the
  checkpoints (the same files, in the same format, as a single-process training);
- **resume**: from ``last.pt`` like a single-process training (also with another N: the
  checkpoint does not depend on it). Every process loads it.

This module holds only what the mode needs beside the loop: the process group, the global
BatchNorm and the sharding of batches. One process (no process group) is the case N = 1 of the
same functions. Tested on the CPU with gloo and 2 processes (``tests/test_ddp.py``).
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .slice_batches import SliceBatches

__all__ = ["GlobalBatchNorm2d", "global_batchnorm", "rank_share", "epoch_shares", "distributed", "rank",
           "world", "rank_device", "wrap", "broadcast", "all_reduce", "barrier", "process_group"]


# ------------------------------------------------------------------ the process group
def distributed() -> bool:
    """True inside an initialised process group (started by torchrun): the DDP mode."""
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group; process 0 writes the files)."""
    return dist.get_rank() if distributed() else 0


def rank_device(device: torch.device) -> torch.device:
    """This process's device: on CUDA its own GPU (``LOCAL_RANK``), else ``device``."""
    if device.type == "cuda" and distributed():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(device)
    return device


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the processes)."""
    ids = [device.index] if device.type == "cuda" else None
    # buffers (BatchNorm's running statistics) are the same on every process: nothing to broadcast
    # before a forward pass (newer torch names the keyword forward_sync_buffers)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(module, device_ids=ids, **{key: False})


def broadcast(values: list[float], device: torch.device) -> list[float]:
    """Process 0's ``values`` in every process (unchanged outside a process group)."""
    if not distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return t.tolist()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes, in place (unchanged outside a process group)."""
    if distributed():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every process (nothing outside a process group)."""
    if distributed():
        dist.barrier()


@contextmanager
def process_group(device: torch.device, minutes: int = 30):
    """The default process group of a torchrun start while inside: nccl on CUDA, else gloo.

    device : the device the training chose (its type picks the backend).
    minutes : how long a collective waits for the other processes before failing.
    """
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=minutes))
    try:
        yield
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------- BatchNorm, all processes
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
        if not self.training or world() == 1:
            return super().forward(x)
        xf, c, dims = x.float(), x.shape[1], (0, 2, 3)
        count = torch.full((1,), float(x.numel() // c), device=x.device)
        sums = all_reduce_sum(torch.cat([xf.sum(dims), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = xf - mean[None, :, None, None]
        var = all_reduce_sum((centred * centred).sum(dims)) / n
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

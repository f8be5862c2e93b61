"""The DDP mode of the one training loop (glio_kit.gan.train.train_dcgan inside a process group,
glio_kit.gan.ddp) on the CPU: gloo, 2 processes.

Two processes with the global batch B end with the weights of one process with batch B
(the same train_dcgan without a process group), up to float32 summation order: the gradients and BatchNorm
statistics are sums over the processes' shares instead of one sum over the batch. Adam divides
each update by the root of the squared gradients' running mean, so these ~1e-7 relative
differences do not shrink with the gradient (a tiny gradient still moves a weight by about lr).
Measured here: at most 4e-8 after 6 and after 9 updates at lr 0.002, while a sampler not told its
rank, or gradients not averaged, move the weights by 2e-2. TOL = 1e-5 leaves room for another
BLAS or CPU (other summation orders) and is still 2000 times below a breakage; the parametrised
test shows both breakages fail the comparison.

The multi-process tests take about a minute and a half on 2 busy cores: `make test` skips them,
`make test-ddp` (called by `.ci/run`) sets ``GLIO_KIT_DDP=1`` and runs them.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from test_train import make_run

from glio_kit.gan import ddp as DDP
from glio_kit.gan import train as T
from glio_kit.run import torchrun
from glio_kit.run.config import get_config
from glio_kit.data.slice_cache import SliceCache
from glio_kit.run.rundir import RunDir
from glio_kit.gan.slice_batches import SliceBatches
from glio_kit.gan.train import train_dcgan

TOL = 1e-5
WORLD = 2
#: 16 training slices of 16x16 in batches of 7: pieces 7, 7, 2 (shares 4 + 3, 4 + 3, 1 + 1), so
#: the weighting of unequal shares is exercised every epoch.
#: With the moving average of G, which every process keeps the same.
KNOBS = dict(ngf=8, ndf=8, latent_dim=16, batch_size=7, lr=0.002, checkpoint_every=1, ema_decay=0.9)


def settings(epochs: int):
    return get_config("smoke", epochs=epochs, **KNOBS).train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoAveraging(nn.Module):
    """A broken wrapper: each process keeps its own gradients (no DistributedDataParallel)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def _worker(rank: int, port: int, run_dir: str, epochs: int, breakage: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLIO_KIT_QUIET="1")
    torch.set_num_threads(1)
    if breakage == "sampler":  # a sampler not told its rank: every process takes rank 0's share
        shares = T.epoch_shares
        T.epoch_shares = lambda data, perm, rank, world: shares(data, perm, 0, world)
    if breakage == "averaging":
        T.wrap = lambda module, device: NoAveraging(module)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        run = RunDir(run_dir, create=False)
        train_dcgan(run, SliceCache(run / "cache"), settings(epochs), progress=False, overwrite=True)
    finally:
        dist.destroy_process_group()


def train_two_processes(run_dir, epochs: int, breakage: str = "") -> None:
    mp.spawn(_worker, args=(free_port(), str(run_dir), epochs, breakage), nprocs=WORLD, join=True)


def weights(run) -> dict:
    ckpt = torch.load(RunDir(run, create=False) / "train" / "checkpoints" / "last.pt", weights_only=True)
    return {f"{net}.{k}": v.float() for net in ("G", "D", "G_ema") for k, v in ckpt[net].items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


multiprocess = pytest.mark.skipif(not os.environ.get("GLIO_KIT_DDP"),
                                  reason="2-process training, a minute and more: run by `make test-ddp`")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, batch 7: weights after 2 and after 3 epochs (6 and 9 updates)."""
    tmp = tmp_path_factory.mktemp("ddp_ref")
    run, cache = make_run(tmp, "ref")
    train_dcgan(run, cache, settings(2), progress=False)
    after2 = weights(run.path)
    train_dcgan(run, cache, settings(3), progress=False, overwrite=True)  # resumed: the same as 3 in one go
    return dict(after2=after2, after3=weights(run.path), tmp=tmp)


def test_sampler_partitions_every_global_batch():
    data = SliceBatches(torch.zeros(16, 4, 4).numpy(), list(range(16)), torch.device("cpu"), batch_size=7)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    shares = [DDP.epoch_shares(data, perm, r, WORLD) for r in range(WORLD)]
    assert [[len(s[0]) for s in sh] for sh in shares] == [[4, 4, 1], [3, 3, 1]]
    for k, piece in enumerate(data.split(perm)):  # the ranks' shares, in rank order, are the batch
        assert torch.equal(torch.cat([sh[k][0] for sh in shares]), piece)
        assert [sh[k][2] for sh in shares] == [0, len(shares[0][k][0])]  # where each share starts
    # a last batch with fewer images than processes is skipped by every process
    assert len(DDP.epoch_shares(data, perm, 0, 2)) == 3 and len(DDP.epoch_shares(data, perm, 0, 3)) == 2


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    gbn = DDP.global_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    assert type(gbn) is DDP.GlobalBatchNorm2d
    x = torch.randn(5, 3, 4, 4)
    assert torch.allclose(bn(x), gbn(x))  # no process group: plain BatchNorm


@multiprocess
def test_two_processes_equal_one_with_the_same_global_batch(reference, tmp_path):
    run, _ = make_run(tmp_path, "ddp")
    train_two_processes(run.path, epochs=2)
    d2 = max_diff(weights(run.path), reference["after2"])
    print(f"max |w_ddp - w_single| after 6 updates: {d2:.2e}")
    assert d2 < TOL
    losses = pd.read_csv(run / "train" / "losses.csv")
    ref_losses = pd.read_csv(reference["tmp"] / "ref" / "train" / "losses.csv")
    assert losses.epoch.tolist() == [1, 2]
    cols = ["loss_d", "loss_g", "d_x", "d_g_z"]
    assert (losses[cols] - ref_losses[cols].iloc[:2]).abs().to_numpy().max() < 1e-3
    assert sorted(p.name for p in (run / "train" / "samples").glob("epoch_*.png")) == ["epoch_001.png",
                                                                                    "epoch_002.png"]
    rec = RunDir(run.path, create=False).record("train")
    assert rec["status"] == "done" and rec["info"]["processes"] == WORLD

    # resumed with torchrun (the command a user types) for a third epoch: still the single-process weights
    env = dict(os.environ, GLIO_KIT_QUIET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(free_port()), "-m", "glio_kit.run.torchrun", "--run-dir", str(run.path), "--profile", "smoke",
           "--overwrite"] + [a for k, v in dict(KNOBS, epochs=3).items() for a in ("-p", f"{k}={v}")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert RunDir(run.path, create=False).record("train")["info"]["resumed_from"] == 2
    d3 = max_diff(weights(run.path), reference["after3"])
    print(f"max |w_ddp - w_single| after 9 updates (resumed): {d3:.2e}")
    assert d3 < TOL


@multiprocess
@pytest.mark.parametrize("breakage", ["sampler", "averaging"])
def test_comparison_fails_when_ddp_is_broken(reference, tmp_path, breakage):
    run, _ = make_run(tmp_path, "broken")
    train_two_processes(run.path, epochs=2, breakage=breakage)
    d = max_diff(weights(run.path), reference["after2"])
    print(f"{breakage} broken: max |w_ddp - w_single| = {d:.2e}")
    assert d > 10 * TOL


def test_ddp_command_needs_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert torchrun.main(["--run-dir", str(tmp_path)]) == 2
    assert "torchrun" in capsys.readouterr().err


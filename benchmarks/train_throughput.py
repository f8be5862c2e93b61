"""Training throughput of the kit's ``train_dcgan`` against a bare loop, side by side in one run.

Same cached slices, same model, same batch size, same device and precision. The kit's side
is the whole ``train_dcgan`` call (step record, data placement, loss logging, progress
accounting, a sample grid and a checkpoint every epoch); the bare side is PyTorch's DCGAN
loop over plain tensors with nothing else. Both make the same update,
``glio_kit.gan.train.dcgan_step``; with the demo profile's ``ema_decay`` the kit also updates the
moving average of G after each step (``--ema-decay 0`` leaves it out). Each side is warmed up
with one epoch first, then timed for ``--epochs`` epochs, ``--repeats`` times alternating (the
best of each is kept, which damps noise from other processes). The last line is the ratio of
images per second, kit / bare (target: at least 0.9).

    python benchmarks/train_throughput.py [--run-dir RUN] [--image-size 64] [--ngf 32]
        [--ndf 32] [--epochs 3] [--batch-size 64] [--n-train 768] [--repeats 3]
        [--device auto] [--threads N] [--no-amp] [--ema-decay D]

On a CPU shared with other work, ``--threads 1`` gives steadier numbers: torch's worker
threads slow down badly when other processes take the cores they wait on.

Without ``--run-dir`` a synthetic cache (random ellipses of noisy tissue on a -1
background, in the slice-cache format) is written to a temporary folder; with it, the run's
``cache/`` is read (only read: the kit trains into a temporary run folder).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.run.config import TrainSettings, get_config, image_hw  # noqa: E402
from glio_kit.gan.model import build_models  # noqa: E402
from glio_kit.data.slice_cache import SliceCache  # noqa: E402
from glio_kit.run.rundir import RunDir  # noqa: E402
from glio_kit.device import choose_device, seed_everything  # noqa: E402
from glio_kit.gan.train import dcgan_step, precision, train_dcgan  # noqa: E402


def synthetic_cache(folder: Path, n: int, hw, seed: int = 0) -> SliceCache:
    """``n`` healthy 'train' slices of size ``hw`` in the format SliceCache reads."""
    folder.mkdir(parents=True)
    h, w = hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.float32, (n, h, w))
    brain = np.lib.format.open_memmap(folder / "brain.npy", "w+", np.uint8, (n, h, w))
    np.lib.format.open_memmap(folder / "lesion.npy", "w+", np.uint8, (n, h, w)).flush()
    for i in range(n):
        ry, rx = 0.75 + 0.15 * rng.random(2)
        m = (yy / ry) ** 2 + (xx / rx) ** 2 < 1
        tissue = 0.3 * np.cos(4 * np.hypot(yy, xx) + rng.random()) + 0.15 * rng.standard_normal((h, w))
        images[i] = np.where(m, np.clip(tissue, -1, 1), -1.0)
        brain[i] = m
    images.flush(), brain.flush()
    per = 16
    index = pd.DataFrame(dict(row=np.arange(n), subject=[f"B{i // per:03d}" for i in range(n)], label=0,
                              split="train", slice_index=np.arange(n) % per, slice_pos=np.arange(n) % per,
                              lesion_pixels=0, brain_pixels=brain.reshape(n, -1).sum(1), image="", mask=""))
    index.to_csv(folder / "index.csv", index=False)
    (folder / "prep.json").write_text(json.dumps(dict(image_size=[h, w], synthetic_benchmark=True)) + "\n")
    del images, brain
    return SliceCache(folder)


def prepared_run(path: Path) -> RunDir:
    run = RunDir(path)
    run.claim("prep", {"benchmark": str(path)})
    run.mark_done("prep")
    return run


def bare_loop(cache: SliceCache, s: TrainSettings, epochs: int, device: torch.device) -> tuple[int, float]:
    """PyTorch's DCGAN loop with the same model, update and precision; returns (images, seconds)."""
    rows = cache.rows(split="train")
    data = torch.from_numpy(np.ascontiguousarray(cache.images[rows]))[:, None].to(device)
    seed_everything(s.seed)
    prec = precision(s.amp, device)
    G, D = build_models(s.latent_dim, s.ngf, s.ndf, cache.image_size)
    G.to(device, memory_format=prec.memory_format), D.to(device, memory_format=prec.memory_format)
    optG = torch.optim.Adam(G.parameters(), lr=s.lr, betas=(s.beta1, s.beta2))
    optD = torch.optim.Adam(D.parameters(), lr=s.lr, betas=(s.beta1, s.beta2))
    scaler = prec.scaler()
    bs, n = s.batch_size, len(rows)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def run_epochs(k):
        seen = 0
        for _ in range(k):
            perm = torch.randperm(n, device=device)
            for i in range(0, n, bs):
                idx = perm[i:i + bs]
                b = len(idx)
                if b == 1:
                    continue
                real = data[idx]
                z = torch.randn(b, s.latent_dim, 1, 1, device=device)
                dcgan_step(G, D, optG, optD, real, z, scaler=scaler, autocast=prec.autocast)
                seen += b
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen

    run_epochs(1)  # warm-up
    t0 = time.perf_counter()
    seen = run_epochs(epochs)
    return seen, time.perf_counter() - t0


def kit_run(cache: SliceCache, s: TrainSettings, epochs: int, folder: Path) -> tuple[int, float]:
    """The whole ``train_dcgan`` call in a fresh run folder; returns (images, seconds)."""
    run = prepared_run(folder)
    t0 = time.perf_counter()
    res = train_dcgan(run, cache, s.replace(epochs=epochs), progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    n, bs = res["n_train"], s.batch_size
    return epochs * (n - (1 if n % bs == 1 and n > 1 else 0)), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="", help="a prepared run folder whose cache/ to read (read only)")
    p.add_argument("--image-size", default="64", help="64 or HxW, e.g. 448x364 (synthetic cache only)")
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--ndf", type=int, default=None, help="default: --ngf")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=768, help="slices in the synthetic cache (demo: about 768)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA too")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="the kit's moving average of G (default: the demo profile's; 0: off, like the bare "
                        "loop)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    device = choose_device(a.device)
    s = get_config("demo", ngf=a.ngf, ndf=a.ndf or a.ngf, batch_size=a.batch_size, device=str(device),
                   amp=not a.no_amp, ema_decay=a.ema_decay).train
    with tempfile.TemporaryDirectory(prefix="glio-bench-") as tmp:
        tmp = Path(tmp)
        if a.run_dir:
            cache = SliceCache(Path(a.run_dir) / "cache")
        else:
            cache = synthetic_cache(tmp / "cache", a.n_train, image_hw(a.image_size), s.seed)
        n = len(cache.rows(split="train"))
        print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
              f"{n} train slices {cache.image_size[0]}x{cache.image_size[1]} | ngf {s.ngf} ndf {s.ndf} | "
              f"batch {s.batch_size} | {a.epochs} epochs x {a.repeats} | ema {s.ema_decay} | "
              f"amp {s.amp and device.type == 'cuda'}")
        kit_run(cache, s, 1, tmp / "warm")  # warm-up: kernels, allocator, lazy imports
        kit, bare = [], []
        for r in range(a.repeats):
            imgs, sec = kit_run(cache, s, a.epochs, tmp / f"kit{r}")
            kit.append(imgs / sec)
            print(f"  repeat {r + 1}: kit  {imgs / sec:8.1f} images/s ({imgs} images, {sec:.2f} s, "
                  f"incl. setup, samples and checkpoints)")
            imgs, sec = bare_loop(cache, s, a.epochs, device)
            bare.append(imgs / sec)
            print(f"  repeat {r + 1}: bare {imgs / sec:8.1f} images/s ({imgs} images, {sec:.2f} s)")
    print(f"kit  {max(kit):.1f} images/s (best of {a.repeats})")
    print(f"bare {max(bare):.1f} images/s (best of {a.repeats})")
    print(f"ratio kit/bare = {max(kit) / max(bare):.2f}")


if __name__ == "__main__":
    main()

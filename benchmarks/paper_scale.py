"""The paper's scale on whatever device this machine has: speed, memory, FLOPs and the projected
wall time of the paper's protocol.

At 448x364 with ngf = ndf = 64 (the ``paper`` profile's models), on random slices (speed does
not depend on what the slices show):

1. training: the kit's update (:func:`glio_kit.gan.train.dcgan_step`) for a few steps after warm-up
   at a given batch: images/s, FLOP per image (``torch.utils.flop_counter``), achieved FLOP/s;
2. mapping: the kit's batched latent mapping (:func:`glio_kit.detect.mapping.map_iterative`), the time
   of ``k`` extra steps (so the set-up is not counted): slice-steps/s, FLOP per slice-step,
   achieved FLOP/s; and per-slice mapping (batch 1) on the same slices for the ratio;
3. a plain matmul's FLOP/s on the same device in the same run (float32; also bfloat16 on CUDA);
4. peak memory (GPU: ``max_memory_allocated``; CPU: the process's peak RSS) and the training
   batch that fits (GPU: found by doubling until out of memory; CPU: projected from the RSS
   at two batch sizes and the available RAM, labelled as a projection);
5. the projected wall time of the paper's protocol from the measured throughput: training
   300 subjects x 24 slices x 150 epochs; mapping the 27 + 27 test and 60 healthy validation
   subjects' 24 slices for 500 steps each (the kit's paper profile holds out 20% of the 300).

On CUDA ``--variants`` measures training under fp32, bf16 autocast, channels-last and
``torch.compile`` separately (each on/off against fp32).

    python benchmarks/paper_scale.py                     # CPU defaults: small batches, 2 steps
    python benchmarks/paper_scale.py --batch 64 --map-batch 64 --steps 5 --variants all   # a GPU
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.detect.mapping import map_iterative, mapping_loss  # noqa: E402
from glio_kit.gan.model import build_models  # noqa: E402
from glio_kit.device import choose_device  # noqa: E402
from glio_kit.gan.train import dcgan_step  # noqa: E402

H, W, WIDTH, LATENT = 448, 364, 64, 100
TRAIN_IMAGES = 300 * 24 * 150  # the paper's training: 300 subjects x 24 slices x 150 epochs
MAP_SLICES = (27 + 27 + 60) * 24  # test (27 + 27) and healthy validation (60) subjects, 24 slices
MAP_STEPS = 500
VARIANTS = {"fp32": dict(), "bf16": dict(bf16=True), "channels-last": dict(cl=True),
            "bf16+channels-last": dict(bf16=True, cl=True), "compile": dict(compile=True),
            "bf16+channels-last+compile": dict(bf16=True, cl=True, compile=True)}


# ------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def rss_mb() -> float:
    """The process's resident memory now (Linux), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def available_ram_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def matmul_flops(device: torch.device, dtype=torch.float32, n: int = 2048, repeat: int = 3) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 3 * 2 * n ** 3 / best


def models(device: torch.device, cl: bool = False):
    torch.manual_seed(0)
    G, D = build_models(LATENT, WIDTH, WIDTH, (H, W))
    fmt = torch.channels_last if cl else torch.contiguous_format
    return G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)


def fmt(seconds: float) -> str:
    if seconds != seconds:
        return "n/a"
    h, m = divmod(seconds / 60, 60)
    return f"{seconds:,.0f} s ({int(h)} h {m:.0f} min)" if h >= 1 else f"{seconds:,.0f} s ({m:.1f} min)"


# ----------------------------------------------------------------------------- training
class Trainer:
    """The kit's DCGAN update at the paper's size: ``step()`` runs one dcgan_step on batch B."""

    def __init__(self, device: torch.device, batch: int, bf16=False, cl=False, compile=False):
        self.device, self.batch = device, batch
        G, D = models(device, cl)
        self.opt_G = torch.optim.Adam(G.parameters(), 2e-3, betas=(0.5, 0.999))
        self.opt_D = torch.optim.Adam(D.parameters(), 2e-3, betas=(0.5, 0.999))
        self.G, self.D = (torch.compile(G), torch.compile(D)) if compile else (G, D)
        fmt_ = torch.channels_last if cl else torch.contiguous_format
        self.real = (torch.rand(batch, 1, H, W, device=device) * 2 - 1).contiguous(memory_format=fmt_)
        self.z = torch.randn(batch, LATENT, 1, 1, device=device)
        self.autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext)

    def step(self):
        return dcgan_step(self.G, self.D, self.opt_G, self.opt_D, self.real, self.z, autocast=self.autocast)

    def flops_per_image(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            self.step()
        return fc.get_total_flops() / self.batch

    def images_per_s(self, steps: int, warmup: int) -> float:
        for _ in range(warmup):
            self.step()
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * self.batch / (time.perf_counter() - t0)


def train_numbers(device, batch, steps, warmup, variant="fp32") -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tr = Trainer(device, batch, **VARIANTS[variant])
    ips = tr.images_per_s(steps, warmup)
    flop = tr.flops_per_image() if variant == "fp32" else float("nan")
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb())
    del tr
    return dict(variant=variant, batch=batch, images_per_s=ips, flop_per_image=flop, peak_mb=peak)


def gpu_batch_that_fits(device, start: int, limit: int = 4096) -> int:
    """The largest training batch (doubling, then halving the gap) that runs without running out
    of GPU memory."""
    def fits(b):
        try:
            Trainer(device, b).step()
            sync(device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, start
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------ mapping
def mapping_numbers(device, batch, steps, per_slice: int) -> dict:
    """Slice-steps/s of batched mapping (``batch`` slices together) and of per-slice mapping
    (the first ``per_slice`` slices, one at a time), from the time of ``steps`` extra steps."""
    from torch.utils.flop_counter import FlopCounterMode

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    G, D = models(device)
    G.eval(), D.eval()
    x = torch.rand(batch, 1, H, W, device=device) * 2 - 1

    def run(xs, n_steps, bs):
        sync(device)
        t0 = time.perf_counter()
        map_iterative(G, D, xs, steps=n_steps, lam=0.1, lr=0.05, batch_size=bs)
        sync(device)
        return time.perf_counter() - t0

    def per_s(xs, bs):
        """Slice-steps/s from the time of ``steps`` extra steps (the whole run's when the
        difference drowns in noise)."""
        t1, t2 = run(xs, 1, bs), run(xs, 1 + steps, bs)
        dt = t2 - t1 if t2 - t1 > 0.1 * t2 else t2 * steps / (1 + steps)
        return steps * len(xs) / dt

    run(x, 1, batch)  # warm-up
    batched = per_s(x, batch)
    looped = per_s(x[:per_slice], 1) if per_slice else float("nan")
    with torch.no_grad():
        fx = D.features(x[:1])
    z = torch.randn(1, LATENT, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        mapping_loss(G, D, x[:1], fx, z, 0.1)[0].sum().backward()
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb())
    return dict(batch=batch, slice_steps_per_s=batched, per_slice_steps_per_s=looped,
                flop_per_slice_step=float(fc.get_total_flops()), peak_mb=peak)


# ------------------------------------------------------------------------------- report
def report(device, args, train: list[dict], fit: str, mapping: dict, mm32: float, mm16: float) -> None:
    base = train[0]
    tr_flops = base["flop_per_image"] * base["images_per_s"]
    mp_flops = mapping["flop_per_slice_step"] * mapping["slice_steps_per_s"]
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else f"{torch.get_num_threads()} threads"
    print(f"\n== paper scale: {H}x{W}, ngf = ndf = {WIDTH}, device {device} ({name})")
    bf16 = f"; bfloat16: {mm16 / 1e9:,.1f} GFLOP/s" if mm16 else ""
    print(f"matmul float32: {mm32 / 1e9:,.1f} GFLOP/s{bf16}")
    print(f"training, batch {base['batch']} (fp32): {base['images_per_s']:.3f} images/s; "
          f"{base['flop_per_image'] / 1e9:.1f} GFLOP per image; {tr_flops / 1e9:,.1f} GFLOP/s achieved "
          f"({tr_flops / mm32:.2f} of matmul); peak memory {base['peak_mb']:,.0f} MB")
    for r in train[1:]:
        print(f"  variant {r['variant']:<28} batch {r['batch']}: {r['images_per_s']:.3f} images/s "
              f"({r['images_per_s'] / base['images_per_s']:.2f}x fp32); peak {r['peak_mb']:,.0f} MB")
    print(f"training batch that fits: {fit}")
    print(f"mapping, {mapping['batch']} slices at once: {mapping['slice_steps_per_s']:.3f} slice-steps/s; "
          f"{mapping['flop_per_slice_step'] / 1e9:.1f} GFLOP per slice-step; {mp_flops / 1e9:,.1f} GFLOP/s "
          f"achieved ({mp_flops / mm32:.2f} of matmul); peak memory {mapping['peak_mb']:,.0f} MB"
          + ("" if device.type == "cuda" else " (the process's peak so far)"))
    if mapping["per_slice_steps_per_s"] == mapping["per_slice_steps_per_s"]:
        print(f"mapping, one slice at a time: {mapping['per_slice_steps_per_s']:.3f} slice-steps/s; "
              f"batched / per-slice {mapping['slice_steps_per_s'] / mapping['per_slice_steps_per_s']:.1f}x")
    t_train = TRAIN_IMAGES / base["images_per_s"]
    t_map = MAP_SLICES * MAP_STEPS / mapping["slice_steps_per_s"]
    best = max(train, key=lambda r: r["images_per_s"])
    print(f"projected paper protocol on this device: training {TRAIN_IMAGES:,} images -> {fmt(t_train)}"
          + (f" (fastest variant {best['variant']}: {fmt(TRAIN_IMAGES / best['images_per_s'])})"
             if best is not base else ""))
    print(f"  mapping {MAP_SLICES:,} slices x {MAP_STEPS} steps -> {fmt(t_map)}; "
          f"together {fmt(t_train + t_map)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, help="training batch (default: 64 on a GPU, 4 on a CPU)")
    p.add_argument("--map-batch", type=int, help="slices mapped at once (default: 64 on a GPU, 4 on a CPU)")
    p.add_argument("--steps", type=int, help="timed steps after warm-up (default: 5 on a GPU, 2 on a CPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--per-slice", type=int, default=2,
                   help="slices mapped one at a time for the batched / per-slice ratio (0: skip)")
    p.add_argument("--variants", default="fp32", help="comma list of " + ", ".join(VARIANTS) + "; or all")
    args = p.parse_args(argv)
    device = choose_device(args.device)
    gpu = device.type == "cuda"
    batch, map_batch = args.batch or (64 if gpu else 4), args.map_batch or (64 if gpu else 4)
    steps = args.steps or (5 if gpu else 2)
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if variants[0] != "fp32":
        variants = ["fp32"] + [v for v in variants if v != "fp32"]
    print(f"device {device}; training batch {batch}, mapping batch {map_batch}, {steps} timed steps "
          f"after {args.warmup} warm-up", flush=True)
    mm32 = matmul_flops(device)
    mm16 = matmul_flops(device, torch.bfloat16) if gpu else 0.0
    train = [train_numbers(device, batch, steps, args.warmup, v) for v in variants]
    mapping = mapping_numbers(device, map_batch, steps, args.per_slice)
    if gpu:
        fit = f"{gpu_batch_that_fits(device, batch)} (fp32, found by trying)"
    else:  # the RSS peak grows with the batch: one more training at twice the batch gives the slope
        more = train_numbers(device, 2 * batch, 1, 0)
        per_image = (more["peak_mb"] - train[0]["peak_mb"]) / batch
        base_mb = train[0]["peak_mb"] - per_image * batch
        room = available_ram_mb() + rss_mb() - base_mb
        fit = (f"about {int(room / per_image)} (PROJECTED from peak RSS {train[0]['peak_mb']:,.0f} MB at "
               f"batch {batch} and {more['peak_mb']:,.0f} MB at {2 * batch}: {per_image:,.0f} MB per image; "
               f"{available_ram_mb():,.0f} MB available now)" if per_image > 0 else "n/a (RSS did not grow)")
    report(device, args, train, fit, mapping, mm32, mm16)
    return 0


if __name__ == "__main__":
    sys.exit(main())

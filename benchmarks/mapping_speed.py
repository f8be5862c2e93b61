"""Speed of the latent mapping, measured side by side in one run, same model and slices.

1. Per-slice loop (one image at a time, as public AnoGAN re-implementations map) vs the
   kit's batched mapping, same slices, same starts, same number of steps:
   slice-steps per second of each, their ratio (target >= 4x on a 2-core CPU at 64x64),
   and the largest difference of the final losses (they are the same computation).
2. f-AnoGAN encoder (one forward pass) vs 500-step iterative mapping: slices per second of
   each and the ratio (target >= 300x). With ``--run-dir`` of a trained run (e.g.
   ``runs/demo`` after ``make demo``) also the subject-level AUC of each on that run's test
   subjects (target: within 0.03); the encoder is trained into a temporary copy of the
   run's records, so the run folder itself is not touched. Without ``--run-dir`` a tiny
   DCGAN is trained for a few steps on random blobs, and the AUC part is skipped.
3. Achieved FLOP/s of the batched mapping (FLOPs of one step counted with
   ``torch.utils.flop_counter.FlopCounterMode``) next to a plain float32 matmul's FLOP/s on
   the same machine: how far the mapping is from what the hardware does at best.

The last line is a summary of the ratios.

    python benchmarks/mapping_speed.py [--size 64] [--ngf 32] [--ndf 32] [--slices 32] [--steps 20]
    python benchmarks/mapping_speed.py --run-dir runs/demo [--auc-steps 500]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.run.config import ScoreSettings  # noqa: E402
from glio_kit.detect.encoder import Encoder  # noqa: E402
from glio_kit.detect.mapping import (frozen, initial_latents, map_iterative, map_slices,  # noqa: E402
                                     mapping_loss)
from glio_kit.detect.slice_scores import anomaly_score, fit_scaling  # noqa: E402
from glio_kit.gan.model import Discriminator, Generator, weights_init  # noqa: E402


def blobs(n: int, hw, seed: int = 0) -> torch.Tensor:
    """Random brain-like images: an ellipse of smooth texture on a -1 background, (n, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    out = torch.full((n, 1, h, w), -1.0)
    for i in range(n):
        r = 0.6 + 0.3 * torch.rand(1, generator=g)
        m = (yy / r) ** 2 + (xx / (0.8 * r)) ** 2 < 1
        tex = 0.5 * torch.cos(3 * yy + torch.rand(1, generator=g) * 3) + 0.1 * torch.randn(h, w, generator=g)
        out[i, 0] = torch.where(m, tex.clamp(-1, 1), torch.tensor(-1.0))
    return out


def tiny_trained_models(hw, ngf, ndf, latent=100, iters=30, seed=0):
    """A DCGAN trained for a few iterations on random blobs (BatchNorm statistics that are not
    the defaults; the speed does not depend on how good the model is)."""
    torch.manual_seed(seed)
    G, D = Generator(latent, ngf, hw), Discriminator(ndf, hw)
    G.apply(weights_init), D.apply(weights_init)
    data = blobs(128, hw, seed)
    bce = nn.BCEWithLogitsLoss()
    oG = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    oD = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    for it in range(iters):
        real = data[torch.randint(0, len(data), (32,))]
        fake = G(torch.randn(32, latent))
        lossD = bce(D(real), torch.ones(32)) + bce(D(fake.detach()), torch.zeros(32))
        oD.zero_grad(), lossD.backward(), oD.step()
        lossG = bce(D(fake), torch.ones(32))
        oG.zero_grad(), lossG.backward(), oG.step()
    return G.eval(), D.eval()


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def matmul_flops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t, _ = timed(lambda: [a @ b for _ in range(3)], repeat)
    return 3 * 2 * n ** 3 / t


def step_flops(G, D, x, lam=0.1) -> float:
    """FLOPs of one mapping step (forward of G and D.features, backward to z) for the batch x."""
    from torch.utils.flop_counter import FlopCounterMode

    with frozen(G, D):
        with torch.no_grad():
            fx = D.features(x)
        z = torch.randn(len(x), G.latent_dim, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            mapping_loss(G, D, x, fx, z, lam)[0].sum().backward()
    return float(fc.get_total_flops())


def auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def subject_auc(run, cache, settings: ScoreSettings, G, D, E, mapping, steps, progress=True):
    """Subject-level AUC of one mapping on the run's test subjects (scaling fitted on val)."""
    from glio_kit.detect.scoring import _score_rows, reduce_subjects

    rows = _score_rows(cache)
    idx = cache.index.iloc[rows].reset_index(drop=True)
    c = settings.replace(mapping=mapping, mapping_steps=steps)
    starts = initial_latents(len(rows), G.latent_dim, c.restarts, c.seed)
    per = max(1, c.mapping_batch_size // c.restarts)
    araw = np.empty(len(rows))
    t0 = time.perf_counter()
    for a in range(0, len(rows), per):
        sel = slice(a, a + per)
        res = map_slices(G, D, np.asarray(cache.images[rows[sel]]), c, E=E, z0=starts[:, sel])
        araw[sel] = anomaly_score(res.R.double().numpy(), res.D.double().numpy(), c.lam)
        if progress:
            done = min(a + per, len(rows))
            el = time.perf_counter() - t0
            print(f"\r  {mapping:>9} {steps:>3} steps: {done}/{len(rows)} slices, {el:.0f} s "
                  f"(about {el / done * (len(rows) - done):.0f} s left)   ", end="", flush=True)
    if progress:
        print()
    seconds = time.perf_counter() - t0
    val = ((idx["split"] == "val") & (idx["label"] == 0)).to_numpy()
    idx["A"] = fit_scaling(araw[val])(araw)
    subj = reduce_subjects(idx, settings.subject_reduction, settings.topk)
    test = subj[subj["split"] == "test"]
    return auc(test["label"], test["score"]), seconds, len(rows)


def encoder_for(run, cache, settings: ScoreSettings, G, D):
    """The run's encoder if its scoring trained one, else one trained into a temporary folder."""
    from glio_kit.detect.encoder import ENCODER_FILE, load_encoder, train_encoder

    if (run / ENCODER_FILE).exists():
        return load_encoder(run), "the run's"
    tmp = Path(tempfile.mkdtemp(prefix="glio-bench-"))
    try:
        t0 = time.perf_counter()
        E, _ = train_encoder(cache, settings, G, D, tmp, progress=True)
        return E, f"trained here in {time.perf_counter() - t0:.0f} s"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Setup:
    """What the benchmark maps: the models, the slices (n, 1, H, W) and, with ``--run-dir``,
    the run, its cache and its scoring settings."""

    G: nn.Module
    D: nn.Module
    x: torch.Tensor
    where: str
    run: object = None
    cache: object = None
    settings: ScoreSettings | None = None


def load_setup(args) -> Setup:
    """The trained run of ``--run-dir`` (its test slices), or a tiny DCGAN on random blobs."""
    if not args.run_dir:
        hw = (args.size, args.size)
        t0 = time.perf_counter()
        G, D = tiny_trained_models(hw, args.ngf, args.ndf, seed=args.seed)
        x = blobs(args.slices, hw, seed=args.seed + 1)  # other blobs than the training ones
        return Setup(G, D, x, f"tiny DCGAN trained {time.perf_counter() - t0:.0f} s on random blobs, "
                              f"{len(x)} random slices")
    from glio_kit.gan.checkpoints import checkpoint_path, load_models
    from glio_kit.run.config import get_config
    from glio_kit.data.slice_cache import SliceCache
    from glio_kit.run.rundir import RunDir
    from glio_kit.detect.scoring import score_settings

    run = RunDir(args.run_dir, create=False)
    if not checkpoint_path(run).exists():
        sys.exit(f"{checkpoint_path(run)}: no trained model; run `make demo` first")
    G, D, meta = load_models(run, "cpu")
    cache = SliceCache(run / "cache")
    if run.is_done("score"):  # the knobs the run was scored with
        settings = score_settings(run)
    else:  # the profile the run was trained with
        settings = get_config((run.record("train") or {}).get("settings", {}).get("profile")).score
    rows = cache.rows(split="test")
    pick = np.sort(np.random.default_rng(args.seed).choice(rows, min(args.slices, len(rows)), replace=False))
    x = torch.from_numpy(np.asarray(cache.images[pick], dtype=np.float32))[:, None]
    return Setup(G, D, x, f"{run.path} (epoch {meta['epoch']}), {len(x)} test slices", run, cache,
                 settings.replace(device="cpu"))


def loop_vs_batched(G, D, x, z0, steps: int) -> float:
    """[1] The per-slice loop and the batched mapping, same starts, same steps; their ratio."""
    n = len(x)
    map_iterative(G, D, x[:2], 1)  # warm-up
    # batched before and after the loop, best of the two: a machine shared with other work
    # slows whatever runs at the time; interleaving keeps the comparison fair
    threads = torch.get_num_threads()
    t_b1, batch = timed(lambda: map_iterative(G, D, x, steps, z0=z0))
    t_loop, loop = timed(lambda: [map_iterative(G, D, x[i:i + 1], steps, z0=z0[i:i + 1]) for i in range(n)])
    t1 = m1 = None
    if threads > 1:
        # one image is too little work to share between threads (they mostly wait for each
        # other): time the loop with one thread as well, and compare best with best
        torch.set_num_threads(1)
        m1 = max(1, n // 4)
        t1, _ = timed(lambda: [map_iterative(G, D, x[i:i + 1], steps, z0=z0[i:i + 1]) for i in range(m1)])
        torch.set_num_threads(threads)
    t_b2, _ = timed(lambda: map_iterative(G, D, x, steps, z0=z0))
    t_batch = min(t_b1, t_b2)
    loop_loss = torch.cat([r.loss for r in loop])
    diff = float(((batch.loss - loop_loss).abs() / loop_loss.abs()).max())
    sps_loop, sps_batch = n * steps / t_loop, n * steps / t_batch
    print(f"[1] per-slice loop : {sps_loop:9.1f} slice-steps/s "
          f"({n} slices x {steps} steps in {t_loop:.1f} s, {threads} threads)")
    print(f"    batched        : {sps_batch:9.1f} slice-steps/s "
          f"({n} slices x {steps} steps in {t_batch:.1f} s, {threads} threads)")
    print(f"    batched / loop : {sps_batch / sps_loop:9.1f}x   "
          f"max relative difference of the final losses: {diff:.1e}")
    if t1 is not None:
        sps_loop = max(sps_loop, m1 * steps / t1)
        print(f"    per-slice loop, 1 thread: {m1 * steps / t1:9.1f} slice-steps/s ({m1} slices)")
    r_batch = sps_batch / sps_loop
    print(f"    batched / best loop : {r_batch:9.1f}x   (target >= 4x)")
    return r_batch


def encoder_vs_iterative(setup: Setup, z0, args) -> tuple[float, float | None]:
    """[2] The encoder's one forward pass vs the iterative mapping: speed ratio and, with a
    trained run, the difference of their subject AUCs."""
    G, D, x = setup.G, setup.D, setup.x
    n, m = len(x), min(args.iter_slices, len(x))
    E = Encoder(G.latent_dim, D.ndf, tuple(x.shape[2:])).eval()
    enc_note = "random weights (speed only)"
    if setup.run is not None:
        E, enc_note = encoder_for(setup.run, setup.cache, setup.settings, G, D)
    c = ScoreSettings(mapping="encoder", mapping_steps=args.iter_steps, mapping_lr=0.05, lam=0.1, restarts=1,
                      mapping_batch_size=256, seed=args.seed, device="cpu")
    map_slices(G, D, x[:m], c, E=E)  # warm-up
    t_enc, _ = timed(lambda: map_slices(G, D, x, c, E=E), repeat=3)  # E(x), G(E(x)), f: the scores
    t_it, _ = timed(lambda: map_iterative(G, D, x[:m], args.iter_steps, z0=z0[:m]))
    enc_sps, it_sps = n / t_enc, m / t_it
    r_enc = enc_sps / it_sps
    print(f"[2] encoder ({enc_note}): {enc_sps:9.1f} slices/s ({n} slices in {t_enc * 1e3:.0f} ms)")
    print(f"    iterative, {args.iter_steps} steps : {it_sps:9.3f} slices/s ({m} slices in {t_it:.1f} s)")
    print(f"    encoder / iterative : {r_enc:9.0f}x   (target >= 300x)")
    if setup.run is None:
        print("    subject AUC: skipped (no --run-dir of a trained run; e.g. `make demo`, then "
              "--run-dir runs/demo)")
        return r_enc, None
    run, cache, s = setup.run, setup.cache, setup.settings
    a_enc, s_enc, n_val_test = subject_auc(run, cache, s, G, D, E, "encoder", 0)
    print(f"    subject AUC, encoder            : {a_enc:.3f} "
          f"({n_val_test} val+test slices in {s_enc:.1f} s)")
    a_it, s_it, _ = subject_auc(run, cache, s, G, D, None, "iterative", args.auc_steps)
    print(f"    subject AUC, iterative {args.auc_steps:>3} steps: {a_it:.3f} "
          f"({n_val_test} val+test slices in {s_it:.0f} s)")
    d_auc = abs(a_enc - a_it)
    print(f"    |AUC difference|                : {d_auc:.3f} (target <= 0.03)")
    return r_enc, d_auc


def flops_vs_matmul(G, D, x, z0) -> float:
    """[3] Achieved FLOP/s of the batched mapping next to a plain float32 matmul's; their ratio."""
    f_step = step_flops(G, D, x)  # one step of the whole batch
    k = 5
    t_map, t_mm = [], []
    for _ in range(3):  # interleaved, best of each (the machine may be shared)
        t_map.append(timed(lambda: map_iterative(G, D, x, k, z0=z0))[0])
        t_mm.append(1.0 / matmul_flops(repeat=1))
    # k steps + one forward-only evaluation of the end point (counted as a third of a step)
    achieved = f_step * (k + 1 / 3) / min(t_map)
    peak = 1.0 / min(t_mm)
    print(f"[3] one mapping step: {f_step / len(x) / 1e6:.1f} MFLOP per slice "
          f"(forward G, D.features; backward to z)")
    print(f"    batched mapping : {achieved / 1e9:7.1f} GFLOP/s")
    print(f"    float32 matmul  : {peak / 1e9:7.1f} GFLOP/s (2048x2048) "
          f"-> mapping at {achieved / peak:.0%} of it")
    return achieved / peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="", help="a trained run folder (AUC part); empty: a tiny model")
    ap.add_argument("--size", type=int, default=64, help="image size without --run-dir")
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--ndf", type=int, default=32)
    ap.add_argument("--slices", type=int, default=32, help="slices for loop vs batched")
    ap.add_argument("--steps", type=int, default=20, help="mapping steps for loop vs batched")
    ap.add_argument("--iter-steps", type=int, default=500, help="steps of the iterative mapping vs encoder")
    ap.add_argument("--iter-slices", type=int, default=16, help="slices for encoder vs iterative speed")
    ap.add_argument("--auc-steps", type=int, default=500, help="steps of the iterative mapping for the AUC")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    setup = load_setup(args)
    G, D, x = setup.G, setup.D, setup.x
    hw = tuple(x.shape[2:])
    print(f"mapping speed | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{hw[0]}x{hw[1]}, ngf={G.ngf}, ndf={D.ndf}, latent={G.latent_dim} | {setup.where}")
    z0 = initial_latents(len(x), G.latent_dim, seed=args.seed)[0]
    r_batch = loop_vs_batched(G, D, x, z0, args.steps)
    r_enc, d_auc = encoder_vs_iterative(setup, z0, args)
    r_flops = flops_vs_matmul(G, D, x, z0)

    summary = (f"ratios: batched/loop = {r_batch:.1f}x (>= 4) | "
               f"encoder/iterative{args.iter_steps} = {r_enc:.0f}x (>= 300) | ")
    summary += (f"|dAUC| = {d_auc:.3f} (<= 0.03) | " if d_auc is not None else "dAUC skipped | ")
    summary += f"mapping/matmul FLOP/s = {r_flops:.2f}"
    print(summary)


if __name__ == "__main__":
    main()

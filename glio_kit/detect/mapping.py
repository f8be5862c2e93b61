"""Step 03a: from an image back to the latent space (AnoGAN mapping, f-AnoGAN encoder).

For a test slice ``x`` the trained generator has to be *asked* which healthy image it would
draw for it: search a latent ``z`` such that ``G(z)`` resembles ``x``. Two ways:

**Iterative mapping** (the paper; AnoGAN, Schlegl et al. 2017). ``G`` and ``D`` are frozen
(eval mode, so BatchNorm uses its running statistics and never updates them; parameters do
not require gradients) and ``z`` is optimised by Adam for ``steps`` steps to minimise, per
slice,

    loss(z) = (1 - lam) * L_R + lam * L_D,
    L_R = sum_pixels |x - G(z)|,       L_D = sum_features |f(x) - f(G(z))|,

``f`` the discriminator's last feature layer (:meth:`Discriminator.features`). A whole batch
of slices is mapped at once: the objective is the *sum* over the batch of the per-slice
losses, so the gradient with respect to each slice's ``z`` is exactly that slice's own
gradient (eval-mode BatchNorm does not mix the samples of a batch), and Adam is elementwise:
mapping a batch is mathematically the same as mapping each slice alone — and many times
faster (``tests/test_mapping.py`` checks the equivalence; ``benchmarks/mapping_speed.py``
measures the speed). Three classic bugs are avoided on purpose: ``z`` is created as a leaf
tensor *on the device* before the optimiser sees it; gradients are zeroed every step; ``f(x)``
is computed once, without gradients.

**Encoder mapping** (f-AnoGAN, Schlegl et al. 2019, variant izi_f). An encoder ``E`` is
trained on the healthy training slices with ``G`` and ``D`` frozen to minimise
``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))``; mapping is then one forward pass.
``mapping="encoder+iterative"`` starts the iterative search from ``E(x)``. The encoder and its
training are in :mod:`glio_kit.detect.encoder`.

**The mapping methods** (:data:`MAPPING_METHODS`): iterative, encoder, encoder+iterative, each
saying how many steps it takes and what it needs trained; :func:`map_slices` maps by it, and the
scoring step and the figures read it (nowhere else decides that "encoder" means 0 steps).

**Scores** of the mapped slices: :mod:`glio_kit.detect.slice_scores`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from ..progress import tqdm
from ..run.config import ScoreSettings
from ..progress import quiet

if TYPE_CHECKING:  # only for annotations: encoder.py imports this module
    from .encoder import Encoder

__all__ = ["MappingMethod", "MAPPING_METHODS", "mapping_method", "MappingResult", "map_iterative",
           "map_slices", "mapping_loss", "frozen", "initial_latents", "encode"]


# ------------------------------------------------------------------------- helpers
@contextmanager
def frozen(*models: nn.Module):
    """Eval mode and ``requires_grad=False`` on every parameter while inside; restored after.

    BatchNorm in eval mode normalises with its running statistics (each sample alone) and
    does not update them, so nothing of the trained models changes while latents are mapped.
    """
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in models]
    try:
        for m in models:
            m.eval()
            m.requires_grad_(False)
        yield models
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def param_of(m: nn.Module) -> torch.Tensor:
    return next(m.parameters())


def as_images(x, like: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W), NumPy or torch -> (N, 1, H, W) on ``like``'s device and dtype."""
    if isinstance(x, np.ndarray) or not torch.is_tensor(x):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    return x.to(device=like.device, dtype=like.dtype)


def mapping_loss(G: nn.Module, D: nn.Module, x: torch.Tensor, fx: torch.Tensor, z: torch.Tensor,
                 lam: float):
    """Per-slice ``(loss, L_R, L_D, G(z))``: sums over each slice's pixels / feature elements.

    ``loss = (1 - lam) * L_R + lam * L_D``, each of shape (N,); ``fx`` = ``D.features(x)``.
    """
    gz = G(z)
    fgz = D.features(gz)
    lr_ = (x - gz).abs().flatten(1).sum(1)
    ld_ = (fx - fgz).abs().flatten(1).sum(1)
    return (1 - lam) * lr_ + lam * ld_, lr_, ld_, gz


def initial_latents(n: int, latent_dim: int, restarts: int = 1, seed: int = 0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(restarts, n, latent_dim) N(0, 1) latents from a seeded CPU generator.

    Drawn on the CPU (then moved by the caller), so a CPU and a GPU run start from the same
    ``z``; drawn for the whole set at once, so how the set is later cut into batches does not
    change any slice's start.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    return torch.randn(int(restarts), int(n), int(latent_dim), generator=gen)


@dataclass
class MappingResult:
    """What a mapping gives back (CPU tensors; N slices).

    z (N, latent_dim), gz (N, 1, H, W) = G(z), loss (N,) the objective (sums), R (N,) mean
    absolute residual per pixel, D (N,) mean absolute feature difference per feature
    element, history (steps + 1, N) the per-slice objective after 0, 1, ..., steps updates
    (row 0 = the start, last row = ``loss``), snapshots {step: G(z) (N, 1, H, W)} for the
    requested ``record_steps``, restart (N,) which start won. ``anomaly_score(R, D, lam)``
    gives the unscaled anomaly score.
    """

    z: torch.Tensor
    gz: torch.Tensor
    loss: torch.Tensor
    R: torch.Tensor
    D: torch.Tensor
    history: torch.Tensor
    snapshots: dict = field(default_factory=dict)
    restart: torch.Tensor | None = None


def _optimise(G, D, x, fx, z0, steps, lam, lr, record_steps=(), callback=None):
    """Adam on a batch of latents; returns (z, gz, loss, Rsum, Dsum, history, snapshots) on the device.

    ``z0`` (B, latent) may be on any device; ``x`` (B, 1, H, W), ``fx`` its features.
    """
    p = param_of(G)
    # the leaf the optimiser updates is created on the device, *then* handed to Adam
    z = z0.detach().to(device=p.device, dtype=p.dtype).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    history = torch.empty(steps + 1, z.shape[0], device=p.device, dtype=p.dtype)
    record = set(int(s) for s in record_steps)
    snaps = {}
    for t in range(steps):
        opt.zero_grad(set_to_none=True)  # every step: gradients never accumulate across steps
        loss, _, _, gz = mapping_loss(G, D, x, fx, z, lam)
        loss.sum().backward()  # the sum: each z receives exactly its own slice's gradient
        history[t] = loss.detach()
        if t in record:
            snaps[t] = gz.detach().cpu()
        if callback is not None:
            callback(t, z, loss.detach())
        opt.step()
    with torch.no_grad():
        loss, rs, ds, gz = mapping_loss(G, D, x, fx, z, lam)
    history[steps] = loss
    if steps in record:
        snaps[steps] = gz.cpu()
    return z.detach(), gz, loss, rs, ds, history, snaps


def map_iterative(G: nn.Module, D: nn.Module, x, steps: int, lam: float = 0.1, lr: float = 0.05,
                  z0: torch.Tensor | None = None, restarts: int = 1, generator: torch.Generator | None = None,
                  record_steps=(), batch_size: int | None = None, seed: int = 0, progress: bool = False,
                  callback=None, desc: str = "map z") -> MappingResult:
    """Iterative AnoGAN mapping of the slices ``x`` (N, H, W) or (N, 1, H, W), batched.

    G, D : the trained networks (on one device, any dtype); frozen while mapping, their mode
        and ``requires_grad`` flags restored afterwards.
    steps : Adam steps on ``z`` (AnoGAN / paper: 500). ``steps=0`` only evaluates ``z0``.
    lam : weight of the discrimination loss (AnoGAN: 0.1). lr : Adam's learning rate.
    z0 : starting latents (N, latent_dim) or (restarts, N, latent_dim); by default (and for
        the starts ``z0`` leaves out) N(0, 1) draws from ``generator`` (a CPU
        ``torch.Generator``) or from ``seed``, for the whole set at once.
    restarts : starts per slice, all mapped in the same batch; the one with the lowest final
        loss is kept.
    record_steps : steps at which ``G(z)`` is kept in ``snapshots`` (0 = the start,
        ``steps`` = the end).
    batch_size : slices per batch (``mapping_batch_size``); ``batch_size // restarts`` slices
        go together so that a batch holds about ``batch_size`` images. ``None``: all at once.
    callback : ``callback(step, z, loss)`` after each backward pass, before the update (for
        tests and teaching: ``z`` is the optimised leaf with its ``.grad``).
    """
    p = param_of(G)
    x = as_images(x, p)
    n = x.shape[0]
    restarts = max(1, int(restarts))
    latent = int(getattr(G, "latent_dim", None) or p.shape[0])
    starts = initial_latents(n, latent, restarts, seed, generator)
    if z0 is not None:
        z0 = torch.as_tensor(z0).detach().cpu().to(starts.dtype)
        if z0.dim() == 2:
            z0 = z0[None]
        if z0.shape[1:] != (n, latent) or z0.shape[0] > restarts:
            raise ValueError(f"z0 must be (N={n}, {latent}) or (<= restarts, N, {latent}), "
                             f"got {tuple(z0.shape)}")
        starts[: z0.shape[0]] = z0
    per = n if not batch_size else max(1, int(batch_size) // restarts)
    out = dict(z=[], gz=[], loss=[], R=[], D=[], history=[], restart=[])
    snaps: dict = {}
    bar = tqdm(total=n * steps, desc=desc, unit="slice-step", disable=not progress or quiet() or steps == 0,
               dynamic_ncols=True)
    try:
        with frozen(G, D):
            for a in range(0, n, per):
                b = min(per, n - a)
                xb = x[a:a + b]
                with torch.no_grad():
                    fx = D.features(xb)  # f(x): once per slice, no gradients
                # restarts side by side in one batch: [start 0 of all b, start 1 of all b, ...]
                xr = xb.repeat(restarts, 1, 1, 1) if restarts > 1 else xb
                fr = fx.repeat(restarts, *([1] * (fx.dim() - 1))) if restarts > 1 else fx
                zs = starts[:, a:a + b].reshape(restarts * b, latent)
                z, gz, loss, rs, ds, hist, sn = _optimise(G, D, xr, fr, zs, steps, lam, lr, record_steps,
                                                          callback)
                best = loss.view(restarts, b).argmin(0)  # (b,)
                pick = best * b + torch.arange(b, device=best.device)
                npx = gz[0].numel()
                nft = fx[0].numel()
                out["z"].append(z[pick].cpu())
                out["gz"].append(gz[pick].cpu())
                out["loss"].append(loss[pick].cpu())
                out["R"].append((rs[pick] / npx).cpu())
                out["D"].append((ds[pick] / nft).cpu())
                out["history"].append(hist[:, pick].cpu())
                out["restart"].append(best.cpu())
                pick_cpu = pick.cpu()
                for s, g in sn.items():
                    snaps.setdefault(s, []).append(g[pick_cpu])
                bar.update(b * steps)
    finally:
        bar.close()
    cat = {k: torch.cat(v) if k != "history" else torch.cat(v, 1) for k, v in out.items()}
    return MappingResult(z=cat["z"], gz=cat["gz"], loss=cat["loss"], R=cat["R"], D=cat["D"],
                         history=cat["history"], snapshots={s: torch.cat(v) for s, v in snaps.items()},
                         restart=cat["restart"])


# ---------------------------------------------------------------- the mapping methods
@dataclass(frozen=True)
class MappingMethod:
    """One way from a slice back to the latent space (``settings.mapping`` names it).

    name : the value of the ``mapping`` knob.
    summary : one line saying what it does.
    searches : True when ``z`` is optimised by Adam for ``mapping_steps`` steps (and from
        ``restarts`` starts); False when the mapping is one forward pass (0 steps, 1 start).
    needs_encoder : True when an f-AnoGAN encoder must be trained first (on the healthy
        training slices, G and D frozen; part of the scoring step).
    paper : True for the paper's method.
    """

    name: str
    summary: str
    searches: bool
    needs_encoder: bool
    paper: bool = False

    def steps(self, settings: ScoreSettings) -> int:
        """The Adam steps on ``z`` this method takes with ``settings`` (``mapping_steps`` or 0)."""
        return int(settings.mapping_steps) if self.searches else 0

    def restarts(self, settings: ScoreSettings) -> int:
        """The starts per slice (``restarts``; 1 without a search: E(x) is the only start)."""
        return int(settings.restarts) if self.searches else 1

    @property
    def trained(self) -> tuple[str, ...]:
        """The networks the method needs trained: the DCGAN's G and D, and the encoder E."""
        return ("G", "D", "E") if self.needs_encoder else ("G", "D")


#: The mapping methods, by name: the one place that says how many steps each takes and what
#: it needs trained (the scoring step and the figures read it; ``config.MAPPINGS`` lists the names).
MAPPING_METHODS = {m.name: m for m in (
    MappingMethod("iterative", "AnoGAN: Adam on z from seeded N(0, 1) starts, mapping_steps steps",
                  searches=True, needs_encoder=False, paper=True),
    MappingMethod("encoder", "f-AnoGAN (izi_f): z = E(x), one forward pass, 0 steps",
                  searches=False, needs_encoder=True),
    MappingMethod("encoder+iterative", "the AnoGAN search started from E(x) (other restarts random)",
                  searches=True, needs_encoder=True),
)}


def mapping_method(name: str) -> MappingMethod:
    """The :class:`MappingMethod` called ``name`` (``settings.mapping``)."""
    try:
        return MAPPING_METHODS[name]
    except KeyError:
        raise ValueError(f"mapping must be one of {tuple(MAPPING_METHODS)}, got {name!r}") from None


@torch.no_grad()
def encode(E: Encoder, x, batch_size: int = 256) -> torch.Tensor:
    """E(x) for (N, H, W) or (N, 1, H, W) slices, in batches, eval mode; (N, latent) on the CPU."""
    p = param_of(E)
    was = E.training
    E.eval()
    try:
        return torch.cat([E(as_images(x[a:a + batch_size], p)).cpu() for a in range(0, len(x), batch_size)])
    finally:
        E.train(was)


def map_slices(G, D, x, settings: ScoreSettings, E: Encoder | None = None, z0=None, progress: bool = False,
               record_steps=(), desc: str = "map z", callback=None) -> MappingResult:
    """Map slices with the method ``settings.mapping`` names (:data:`MAPPING_METHODS`).

    Parameters
    ----------
    G, D : nn.Module
        The trained DCGAN (frozen while mapping).
    x : array or tensor
        (N, H, W) or (N, 1, H, W) slices in the generator's range [-1, 1].
    settings : ScoreSettings
        Reads ``mapping, mapping_steps, mapping_lr, lam, restarts, mapping_batch_size, seed``.
    E : Encoder or None
        The trained encoder (the methods that ``needs_encoder``).
    z0 : tensor or None
        (restarts, N, latent) starts that replace the seeded random ones (the scoring step draws
        them for the whole set so that any subset can be re-mapped identically); with an
        encoder, E(x) replaces the first.
    record_steps, callback, progress, desc
        As in :func:`map_iterative`.

    Returns
    -------
    MappingResult
        ``history`` has ``method.steps(settings) + 1`` rows.
    """
    method = mapping_method(settings.mapping)
    kw = dict(lam=float(settings.lam), lr=float(settings.mapping_lr), batch_size=settings.mapping_batch_size,
              seed=settings.seed, progress=progress, record_steps=record_steps, desc=desc, callback=callback)
    if method.needs_encoder:
        if E is None:
            raise ValueError(f"mapping={settings.mapping!r} needs a trained encoder E")
        ze = encode(E, x, settings.mapping_batch_size)
        if z0 is None:
            z0 = initial_latents(len(ze), ze.shape[1], settings.restarts, settings.seed)
        z0 = torch.as_tensor(z0).clone()
        if z0.dim() == 2:
            z0 = z0[None]
        z0[0] = ze  # the encoder's latent is the first start; other restarts stay random
        z0 = z0[:method.restarts(settings)]
    return map_iterative(G, D, x, method.steps(settings), z0=z0, restarts=method.restarts(settings), **kw)

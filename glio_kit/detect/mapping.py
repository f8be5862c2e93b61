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
``mapping="encoder+iterative"`` starts the iterative search from ``E(x)``.

**Scores** (per slice): ``R = mean |x - G(z)|`` over pixels, ``D = mean |f(x) - f(G(z))|``
over feature elements and ``A_raw = (1 - lam) * R + lam * D`` (:func:`anomaly_score`; means
rather than the sums of the loss, so the score does not depend on the image size). The paper reports ``A`` in
[0, 1]; the kit maps ``A_raw`` monotonically with a map fitted on the healthy *validation*
slices only (never on test slices): ``A = sigmoid((A_raw - mean_val) / sd_val)``
(:class:`ScoreScaling`). A min-max rescaling with clipping would send every test slice more
abnormal than the validation maximum to exactly 1 and lose the ranking of the most abnormal
slices; the logistic map stays inside (0, 1) and keeps the order of all slices (in float64
up to about 37 validation SDs above the mean, where it rounds to 1.0; ``A_raw`` is kept beside
``A`` for exact rankings).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_path
from ..gan.checkpoints import load_checkpoint
from ..run.config import ScoreSettings
from ..errors import InputError, RunFolderError
from ..gan.model import fit_input, strided_conv_stack
from ..progress import quiet

__all__ = ["MappingResult", "map_iterative", "map_slices", "mapping_loss", "anomaly_score", "frozen",
           "initial_latents", "Encoder", "train_encoder", "load_encoder", "encode", "encoder_identity",
           "ScoreScaling", "fit_scaling"]

# The encoder draws its initial weights and its batch order from streams of its own, offset
# from the run's seed so that they differ from the DCGAN's (train.py: seed + 1, + 2, + 3) and
# the same seed still repeats the same encoder.
ENCODER_INIT_SEED_OFFSET = 11
ENCODER_SHUFFLE_SEED_OFFSET = 12


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


def _param(m: nn.Module) -> torch.Tensor:
    return next(m.parameters())


def _as_images(x, like: torch.Tensor) -> torch.Tensor:
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


def anomaly_score(R, D, lam: float):
    """The unscaled anomaly score ``A_raw = (1 - lam) * R + lam * D`` (the paper's ``A``).

    R : (N,) residual scores, mean ``|x - G(z)|`` per pixel (generator units).
    D : (N,) discrimination scores, mean ``|f(x) - f(G(z))|`` per feature element.
    lam : weight of the discrimination score (paper: 0.1).
    Returns (N,) of R's type (NumPy array or torch tensor), the same weighting as the mapping
    loss but of means, so it does not depend on the image size.
    """
    return (1 - lam) * R + lam * D


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
    p = _param(G)
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
    from ..progress import tqdm

    p = _param(G)
    x = _as_images(x, p)
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


# --------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """E(x): image (N, 1, H, W) -> latent (N, latent_dim) (f-AnoGAN).

    The discriminator's strided convolution stack (kernel 4, stride 2; BatchNorm after all
    but the first; LeakyReLU 0.2; the input padded with the background value to the stack's
    size), then a linear layer from the flattened last block to ``z`` (no activation: the
    DCGAN's latents are N(0, 1), not bounded).
    """

    def __init__(self, latent_dim: int = 100, nef: int = 64, image_size=(64, 64)):
        super().__init__()
        self.latent_dim, self.nef = int(latent_dim), int(nef)
        h, w = (image_size, image_size) if isinstance(image_size, int) else (int(s) for s in image_size)
        self.image_size = (h, w)
        self.blocks, chans, (bh, bw), self.pad = strided_conv_stack(self.nef, self.image_size)
        self.head = nn.Linear(chans[-1] * bh * bw, self.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_input(x, self.image_size, self.pad, "Encoder")
        return self.head(self.blocks(x).flatten(1))


def _encoder_dir(run) -> Path:
    return Path(run / "encoder")


def encoder_identity(settings: ScoreSettings) -> dict:
    """The knobs that decide an encoder training (its step record ``encoder`` holds them)."""
    return dict(encoder_epochs=settings.encoder_epochs, encoder_lr=settings.encoder_lr,
                encoder_batch_size=settings.encoder_batch_size, kappa=settings.kappa, seed=settings.seed)


def train_encoder(run, cache, settings: ScoreSettings, G: nn.Module, D: nn.Module, progress: bool = True,
                  overwrite: bool = False) -> Encoder:
    """Train the f-AnoGAN encoder (izi_f) on the healthy ``train`` slices; G and D frozen.

    Loss ``MSE(x, G(E(x))) + kappa * MSE(f(x), f(G(E(x))))`` with ``settings.kappa``, Adam
    (lr ``settings.encoder_lr``, betas 0.5/0.999), ``settings.encoder_epochs`` epochs of
    ``settings.encoder_batch_size`` slices, seeded by ``settings.seed``. The step record
    ``encoder`` (after ``train``) holds :func:`encoder_identity`; a second call with the same
    knobs loads the saved encoder. Writes ``<run>/encoder/encoder.pt`` and
    ``<run>/encoder/losses.csv`` (epoch, loss, mse_image, mse_features, seconds). Returns the
    encoder in eval mode on G's device.
    """
    params = encoder_identity(settings)
    done = run.claim("encoder", params, after=("train",), overwrite=overwrite, settings=settings.as_dict())
    if done and (_encoder_dir(run) / "encoder.pt").exists():
        return load_encoder(run, _param(G).device)
    rows = cache.rows(split="train", label=0)
    if len(rows) < 2:
        raise InputError(getattr(cache, "folder", "cache"), f"needs at least 2 healthy training slices to "
                         f"train the encoder, found {len(rows)}")
    p = _param(G)
    device, dtype = p.device, p.dtype
    seed = settings.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + ENCODER_INIT_SEED_OFFSET)
        E = Encoder(G.latent_dim, getattr(D, "ndf", 64), tuple(cache.images.shape[1:]))
    E.to(device=device, dtype=dtype)
    opt = torch.optim.Adam(E.parameters(), lr=settings.encoder_lr, betas=(0.5, 0.999))
    shuffle = torch.Generator().manual_seed(seed + ENCODER_SHUFFLE_SEED_OFFSET)
    data = torch.from_numpy(np.ascontiguousarray(cache.images[rows], dtype=np.float32))[:, None]
    data = data.to(device=device, dtype=dtype)
    out = _encoder_dir(run)
    out.mkdir(exist_ok=True)
    log = _fit_encoder(E, G, D, opt, data, shuffle, settings, progress)
    pd.DataFrame(log, columns=["epoch", "loss", "mse_image", "mse_features", "seconds"]).to_csv(
        out / "losses.csv", index=False)
    with atomic_path(out / "encoder.pt") as tmp:
        torch.save(dict(state=E.state_dict(), latent_dim=E.latent_dim, nef=E.nef,
                        image_size=list(E.image_size), params=params), tmp)
    run.mark_done("encoder", seconds=float(sum(r["seconds"] for r in log)), epochs=settings.encoder_epochs,
                  loss=float(log[-1]["loss"]) if log else float("nan"), n_train=int(len(rows)))
    return E


def _fit_encoder(E: Encoder, G, D, opt, data: torch.Tensor, shuffle: torch.Generator, settings: ScoreSettings,
                 progress: bool) -> list[dict]:
    """The encoder's epochs on ``data`` (N, 1, H, W) with G and D frozen; E left in eval mode.

    Returns one dict per epoch: ``epoch, loss, mse_image, mse_features`` (means over the
    epoch's slices) and ``seconds``.
    """
    from ..progress import tqdm

    n, bs, epochs = len(data), settings.encoder_batch_size, settings.encoder_epochs
    kappa = float(settings.kappa)
    device, dtype = data.device, data.dtype
    log = []
    bar = tqdm(total=epochs * max(1, math.ceil(n / bs)), desc="train encoder", unit="batch",
               disable=not progress or quiet(), dynamic_ncols=True)
    with frozen(G, D):
        E.train()
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                acc = torch.zeros(3, device=device, dtype=dtype)  # loss, mse_image, mse_features (sums)
                seen = 0
                pieces = list(torch.split(torch.randperm(n, generator=shuffle), bs))
                if len(pieces) > 1 and len(pieces[-1]) == 1:
                    pieces.pop()  # BatchNorm cannot normalise a single sample
                for idx in pieces:
                    x = data[idx.to(device)]
                    gz = G(E(x))
                    with torch.no_grad():
                        fx = D.features(x)
                    mse_i = F.mse_loss(gz, x)
                    mse_f = F.mse_loss(D.features(gz), fx)
                    loss = mse_i + kappa * mse_f
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    acc += torch.stack([loss.detach(), mse_i.detach(), mse_f.detach()]) * len(idx)
                    seen += len(idx)
                    bar.update(1)
                a = (acc / max(seen, 1)).tolist()
                log.append(dict(epoch=epoch, loss=a[0], mse_image=a[1], mse_features=a[2],
                                seconds=time.perf_counter() - t0))
                bar.set_postfix(epoch=epoch, loss=f"{a[0]:.4f}")
        finally:
            bar.close()
    E.eval()
    return log


def load_encoder(run, device="cpu") -> Encoder:
    """The encoder saved by :func:`train_encoder`, in eval mode on ``device``."""
    path = _encoder_dir(run) / "encoder.pt"
    if not path.exists():
        raise RunFolderError(f"{path}: no trained encoder in this run folder; run the scoring step "
                             f"(notebook 03) with mapping='encoder' or 'encoder+iterative' first")
    ck = load_checkpoint(path, torch.device(device), required=("state", "latent_dim", "nef", "image_size"),
                         step="score")
    E = Encoder(ck["latent_dim"], ck["nef"], tuple(ck["image_size"]))
    E.load_state_dict(ck["state"])
    return E.to(device).eval()


@torch.no_grad()
def encode(E: Encoder, x, batch_size: int = 256) -> torch.Tensor:
    """E(x) for (N, H, W) or (N, 1, H, W) slices, in batches, eval mode; (N, latent) on the CPU."""
    p = _param(E)
    was = E.training
    E.eval()
    try:
        return torch.cat([E(_as_images(x[a:a + batch_size], p)).cpu() for a in range(0, len(x), batch_size)])
    finally:
        E.train(was)


def map_slices(G, D, x, settings: ScoreSettings, E: Encoder | None = None, z0=None, progress: bool = False,
               record_steps=(), desc: str = "map z", callback=None) -> MappingResult:
    """Map slices the way ``settings.mapping`` says (``iterative`` | ``encoder`` | ``encoder+iterative``).

    x : (N, H, W) or (N, 1, H, W) slices in the generator's range [-1, 1].
    settings : :class:`~glio_kit.run.config.ScoreSettings`; reads ``mapping, mapping_steps,
        mapping_lr, lam, restarts, mapping_batch_size, seed``.
    E : the trained encoder (the encoder modes need it).
    z0 : (restarts, N, latent) starts that replace the seeded random ones (the scoring step
        draws them for the whole set so that any subset can be re-mapped identically).
    callback : as in :func:`map_iterative`.
    """
    kw = dict(lam=float(settings.lam), lr=float(settings.mapping_lr), batch_size=settings.mapping_batch_size,
              seed=settings.seed, progress=progress, record_steps=record_steps, desc=desc, callback=callback)
    restarts = settings.restarts
    if settings.mapping == "iterative":
        return map_iterative(G, D, x, settings.mapping_steps, z0=z0, restarts=restarts, **kw)
    if E is None:
        raise ValueError(f"mapping={settings.mapping!r} needs a trained encoder E")
    ze = encode(E, x, settings.mapping_batch_size)
    if z0 is None:
        z0 = initial_latents(len(ze), ze.shape[1], restarts, settings.seed)
    z0 = torch.as_tensor(z0).clone()
    if z0.dim() == 2:
        z0 = z0[None]
    z0[0] = ze  # the encoder's latent is the first start; other restarts stay random
    if settings.mapping == "encoder":
        return map_iterative(G, D, x, 0, z0=z0[:1], restarts=1, **kw)
    return map_iterative(G, D, x, settings.mapping_steps, z0=z0, restarts=restarts, **kw)


# --------------------------------------------------------------------------- scores
@dataclass
class ScoreScaling:
    """``A = sigmoid((A_raw - mean_val) / sd_val)``, fitted on healthy validation slices only.

    Monotone (keeps every ranking, hence every AUC), inside (0, 1), 0.5 at the healthy
    validation mean. Min-max scaling with clipping would put every slice above the
    validation maximum at exactly 1.
    """

    mean_val: float
    sd_val: float
    n_val: int = 0

    def __call__(self, a_raw):
        a = np.asarray(a_raw, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-(a - self.mean_val) / self.sd_val))

    def to_dict(self) -> dict:
        return dict(mean_val=float(self.mean_val), sd_val=float(self.sd_val), n_val=int(self.n_val),
                    formula="A = 1 / (1 + exp(-(A_raw - mean_val) / sd_val)), "
                            "fitted on healthy validation slices")

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def fit_scaling(a_raw_val) -> ScoreScaling:
    """The logistic map from the healthy validation slices' ``A_raw`` (and only those)."""
    a = np.asarray(a_raw_val, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise ValueError("no healthy validation slices to fit the score scaling on; "
                         "the cache needs a 'val' split (val_fraction > 0)")
    mean = float(a.mean())
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    if not np.isfinite(sd) or sd <= 1e-12 * max(abs(mean), 1.0):
        sd = max(abs(mean), 1.0) * 1e-3  # degenerate validation set: still monotone, still finite
    return ScoreScaling(mean, sd, int(a.size))


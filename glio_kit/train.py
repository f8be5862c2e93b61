"""Step 02: train the DCGAN on healthy training slices (paper: 150 epochs, Figure 3).

:func:`train_dcgan` is PyTorch's DCGAN loop (``examples/dcgan/main.py``) with what a
reproduction needs around it:

- the non-saturating GAN loss with ``BCEWithLogitsLoss``; Adam(lr, (beta1, beta2)) for both
  networks (the paper says lr 0.002 and the profiles use it; DCGAN's usual value is 0.0002);
- the healthy ``train`` slices of the slice cache, held in one tensor (on the GPU when it
  fits) and indexed in random batches, so loading never limits speed; a cache too large
  for memory is read batch by batch from its memory map instead;
- seeded and repeatable: the shuffling and the noise come from their own
  ``torch.Generator``, whose states are stored in every checkpoint, so an interrupted
  training resumed from ``last.pt`` ends with the very same weights as one uninterrupted;
- on CUDA with ``amp``: autocast mixed precision (bf16 where supported, else fp16 with a
  GradScaler) and channels-last memory;
- outputs in ``<run>/train/``: ``losses.csv`` (one row per epoch), ``samples/epoch_XXX.png``
  (a grid from one fixed latent batch, every epoch), ``samples/real.png`` (real slices for
  comparison), ``checkpoints/last.pt`` (every epoch) and ``checkpoints/epoch_XXX.pt`` (every
  ``checkpoint_every`` epochs and the last).

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(..., weights_only=True)``, and on CPU whatever device wrote them.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .errors import InputError, RunFolderError
from .model import Discriminator, Generator, weights_init
from .runtime import choose_device, quiet, seed_everything

__all__ = ["train_dcgan", "load_models", "build_models", "compare_learning_rates", "plot_figure3", "plot_losses",
           "plot_real_vs_generated", "fixed_samples", "save_grid", "read_grid", "tile_images", "TRAIN_KEYS"]

#: The knobs that define a training (with the cache's image size); the step record holds them.
TRAIN_KEYS = ("latent_dim", "ngf", "ndf", "epochs", "batch_size", "lr", "beta1", "beta2", "seed", "amp")
#: What must match for ``last.pt`` to be continued (the number of epochs may grow).
RESUME_KEYS = tuple(k for k in TRAIN_KEYS if k != "epochs") + ("image_size",)
N_SAMPLES = 16  # fixed latent batch drawn every epoch (4 x 4 grid)
GRID_PAD = 2
LOSS_COLUMNS = ["epoch", "loss_d", "loss_g", "d_x", "d_g_z", "seconds", "images_per_s"]
GREY = dict(cmap="gray", vmin=-1, vmax=1, interpolation="nearest")


# ------------------------------------------------------------------------ sample grids
def tile_images(images, nrow: int | None = None, pad: int = GRID_PAD, pad_value: float = 1.0) -> np.ndarray:
    """Tile (N, H, W) images into one (rows*(H+pad)+pad, nrow*(W+pad)+pad) array."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol_rows = int(math.ceil(n / nrow))
    out = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    return out


def save_grid(images, path, nrow: int | None = None, pad: int = GRID_PAD) -> Path:
    """Write (N, H, W) images in [-1, 1] as one 8-bit grey PNG grid (white separators)."""
    from PIL import Image  # a dependency of matplotlib

    grid = tile_images(images, nrow, pad)
    u8 = np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)
    path = Path(path)
    Image.fromarray(u8, mode="L").save(path)
    return path


def read_grid(path, height: int, width: int, n: int | None = None, nrow: int | None = None,
              pad: int = GRID_PAD) -> np.ndarray:
    """The (n, H, W) images in [-1, 1] of a grid written by :func:`save_grid`."""
    import matplotlib.image as mpimg

    g = mpimg.imread(str(path))
    if g.ndim == 3:
        g = g[..., 0]
    g = g.astype(np.float32)
    if g.max() > 1.0:  # 8-bit read as integers
        g = g / 255.0
    g = g * 2 - 1
    nrow = nrow or (g.shape[1] - pad) // (width + pad)
    rows = (g.shape[0] - pad) // (height + pad)
    n = n or nrow * rows
    out = [g[pad + r * (height + pad):pad + r * (height + pad) + height,
             pad + c * (width + pad):pad + c * (width + pad) + width]
           for r, c in (divmod(i, nrow) for i in range(n))]
    return np.stack(out)


# ------------------------------------------------------------------------------ models
def build_models(params: dict, device="cpu"):
    """Generator and discriminator for ``params`` (latent_dim, ngf, ndf, image_size), DCGAN-initialised.

    Built and initialised on the CPU (from the global torch RNG), then moved, so the same
    seed gives the same initial weights on every device.
    """
    hw = tuple(params["image_size"])
    G = Generator(params["latent_dim"], params["ngf"], hw)
    D = Discriminator(params["ndf"], hw)
    G.apply(weights_init)
    D.apply(weights_init)
    return G.to(device), D.to(device)


@torch.no_grad()
def fixed_samples(G: nn.Module, z: torch.Tensor) -> np.ndarray:
    """G(z) as (N, H, W) float32, as PyTorch's DCGAN example draws its per-epoch samples:
    BatchNorm normalises with the statistics of this batch (train mode). Unlike the example,
    the running statistics are put back afterwards, so drawing samples changes nothing in
    the model. (Early in training the running statistics still lag far behind, and
    eval-mode samples are a flat grey; :func:`plot_real_vs_generated` shows eval mode, what
    the later steps use.)"""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    mode = G.training
    G.train()
    try:
        out = G(z).float()[:, 0].cpu().numpy()
    finally:
        for m, (mean, var, nbt) in zip(bns, saved):
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(nbt)
        G.train(mode)
    return out


def _train_dir(run) -> Path:
    return Path(run / "train")


def load_models(run, device="cpu"):
    """``(G, D, meta)`` from ``<run>/train/checkpoints/last.pt``, in eval mode on ``device``.

    ``meta`` holds ``epoch``, ``config`` (the training knobs and image size) and ``path``.
    """
    path = _train_dir(run) / "checkpoints" / "last.pt"
    if not path.exists():
        raise RunFolderError(f"{path}: no trained model in this run folder; run the training step "
                             f"(notebook 02 or train_dcgan) with this run_dir first")
    device = torch.device(device)
    ckpt = torch.load(path, map_location=device, weights_only=True)
    G, D = build_models(ckpt["config"], device)
    G.load_state_dict(ckpt["G"])
    D.load_state_dict(ckpt["D"])
    G.eval(), D.eval()
    return G, D, dict(epoch=int(ckpt["epoch"]), config=ckpt["config"], path=str(path))


# ------------------------------------------------------------------------ data source
def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _choose_data_mode(nbytes: int, device: torch.device) -> str:
    """``device``: one tensor on the training device; ``host``: in (pinned) RAM, batches copied
    to the GPU; ``memmap``: batches read from the cache's memory map."""
    ram = _ram_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= 0.3 * free:
            return "device"
        return "host" if nbytes <= 0.4 * ram else "memmap"
    return "device" if nbytes <= 0.4 * ram else "memmap"


class _Batches:
    """Random batches of the training slices as (B, 1, H, W) float32 tensors on ``device``."""

    def __init__(self, images, rows, device, batch_size: int, mode: str = "auto", channels_last=False):
        self.images, self.rows, self.device = images, np.asarray(rows), device
        self.batch_size, self.channels_last = int(batch_size), channels_last
        n, (h, w) = len(self.rows), images.shape[1:]
        nbytes = n * h * w * 4
        self.mode = _choose_data_mode(nbytes, device) if mode == "auto" else mode
        if self.mode not in ("device", "host", "memmap"):
            raise ValueError(f"data_mode must be auto, device, host or memmap, got {mode!r}")
        if self.mode == "host" and device.type != "cuda":
            self.mode = "device"  # on the CPU, RAM is the device
        self.data = None
        if self.mode in ("device", "host"):
            where = device if self.mode == "device" else torch.device("cpu")
            pin = self.mode == "host"
            self.data = torch.empty((n, 1, h, w), dtype=torch.float32, device=where, pin_memory=pin)
            chunk = max(1, (256 << 20) // (h * w * 4))  # copy 256 MB at a time: no second full copy in RAM
            for i in range(0, n, chunk):
                block = torch.from_numpy(np.ascontiguousarray(images[self.rows[i:i + chunk]], dtype=np.float32))
                self.data[i:i + chunk, 0].copy_(block)

    def batches(self, perm: torch.Tensor):
        """Index lists of one epoch: consecutive ``batch_size`` pieces of ``perm``; a last
        batch of a single image is dropped (BatchNorm cannot normalise one sample)."""
        out = list(torch.split(perm, self.batch_size))
        if len(out) > 1 and len(out[-1]) == 1:
            out.pop()
        return out

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        elif x.device != self.device:
            x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _load(self, idx: torch.Tensor) -> torch.Tensor:
        if self.mode == "host":
            return self.data.index_select(0, idx)
        block = np.asarray(self.images[self.rows[idx.numpy()]], dtype=np.float32)
        return torch.from_numpy(block)[:, None]

    def epoch(self, perm: torch.Tensor):
        """Yield the batches of one epoch in the order of ``perm`` (a CPU permutation)."""
        pieces = self.batches(perm)
        if self.mode == "device":
            perm_dev = perm.to(self.device)
            start = 0
            for p in pieces:
                x = self.data.index_select(0, perm_dev[start:start + len(p)])
                start += len(p)
                yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
            return
        with ThreadPoolExecutor(max_workers=1) as pool:  # read the next batch while this one trains
            nxt = pool.submit(self._load, pieces[0])
            for i in range(len(pieces)):
                x = nxt.result()
                if i + 1 < len(pieces):
                    nxt = pool.submit(self._load, pieces[i + 1])
                yield self._to_device(x)


# ----------------------------------------------------------------------- RNG states
def _rng_state(shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> dict:
    """Every random state as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=dict(version=py_state[0], state=list(py_state[1]), gauss_next=py_state[2]),
        shuffle=shuffle_gen.get_state(),
        noise=noise_gen.get_state(),
        noise_device=noise_gen.device.type,
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, shuffle_gen, noise_gen, reseed: int) -> None:
    torch.set_rng_state(state["torch"])
    npd = state["numpy"]
    np.random.set_state((npd["name"], npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"],
                         npd["cached_gaussian"]))
    pyd = state["python"]
    random.setstate((pyd["version"], tuple(pyd["state"]), pyd["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass
    shuffle_gen.set_state(state["shuffle"])
    if state.get("noise_device") == noise_gen.device.type:
        noise_gen.set_state(state["noise"])
    else:
        noise_gen.manual_seed(reseed)
        warnings.warn(f"resuming on {noise_gen.device.type} a training checkpointed on {state.get('noise_device')}: "
                      f"the noise stream restarts from a new seed, so the result is not bit-identical to an "
                      f"uninterrupted run", stacklevel=3)


# --------------------------------------------------------------------------- one epoch
def _precision(cfg: dict, device: torch.device):
    """(use_amp, dtype): autocast on CUDA with ``amp``, bf16 where supported, else fp16."""
    use_amp = bool(cfg.get("amp")) and device.type == "cuda"
    return use_amp, (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16)


class _Trainer:
    """One DCGAN update per batch, as in PyTorch's example; losses summed on the device."""

    def __init__(self, G, D, optG, optD, scaler, noise_gen, latent_dim, batch_size, device, use_amp, amp_dtype):
        self.G, self.D, self.optG, self.optD, self.scaler = G, D, optG, optD, scaler
        self.noise_gen, self.latent, self.device = noise_gen, int(latent_dim), device
        self.use_amp, self.amp_dtype = use_amp, amp_dtype
        self.criterion = nn.BCEWithLogitsLoss()
        self.ones = torch.ones(batch_size, device=device)
        self.zeros = torch.zeros(batch_size, device=device)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def epoch(self, batches, bar=None, epoch: int = 0):
        """Train on every batch of ``batches``; returns ([loss_d, loss_g, D(x), D(G(z))] means, images)."""
        G, D, optG, optD, scaler, criterion = self.G, self.D, self.optG, self.optD, self.scaler, self.criterion
        acc = torch.zeros(4, device=self.device)  # sums: loss_d * b, loss_g * b, D(x), D(G(z))
        n_seen, last_post = 0, 0.0
        show = bar is not None and not bar.disable
        for real in batches:
            b = real.shape[0]
            z = torch.randn(b, self.latent, 1, 1, device=self.device, generator=self.noise_gen)
            # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
            with self.autocast():
                fake = G(z)
                out_real = D(real)
                out_fake = D(fake.detach())
                loss_d = criterion(out_real, self.ones[:b]) + criterion(out_fake, self.zeros[:b])
            optD.zero_grad(set_to_none=True)
            scaler.scale(loss_d).backward()
            scaler.step(optD)
            # (2) Update G: maximize log(D(G(z))) (the non-saturating loss)
            with self.autocast():
                loss_g = criterion(D(fake), self.ones[:b])
            optG.zero_grad(set_to_none=True)
            scaler.scale(loss_g).backward()
            scaler.step(optG)
            scaler.update()
            with torch.no_grad():
                acc += torch.stack([loss_d.detach().float() * b, loss_g.detach().float() * b,
                                    torch.sigmoid(out_real.detach().float()).sum(),
                                    torch.sigmoid(out_fake.detach().float()).sum()])
            n_seen += b
            if show:
                bar.update(1)
                now = time.monotonic()
                if now - last_post > 1.0:  # one device sync a second, not one a batch
                    a = (acc / n_seen).tolist()
                    bar.set_postfix(epoch=epoch, loss_d=f"{a[0]:.3f}", loss_g=f"{a[1]:.3f}",
                                    d_x=f"{a[2]:.2f}", d_g_z=f"{a[3]:.2f}", refresh=False)
                    last_post = now
        return (acc / max(n_seen, 1)).tolist(), n_seen


# ----------------------------------------------------------------------------- the step
def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_losses(train_dir: Path) -> pd.DataFrame:
    p = train_dir / "losses.csv"
    return pd.read_csv(p) if p.exists() else pd.DataFrame(columns=LOSS_COLUMNS)


def _result(run, skipped: bool) -> dict:
    tdir = _train_dir(run)
    losses = _read_losses(tdir)
    rec = run.record("train") or {}
    info = dict(rec.get("info") or {})
    last = losses.iloc[-1] if len(losses) else None
    out = dict(
        skipped=skipped,
        epochs=int(last["epoch"]) if last is not None else 0,
        loss_d=float(last["loss_d"]) if last is not None else float("nan"),
        loss_g=float(last["loss_g"]) if last is not None else float("nan"),
        d_x=float(last["d_x"]) if last is not None else float("nan"),
        d_g_z=float(last["d_g_z"]) if last is not None else float("nan"),
        seconds=float(losses["seconds"].sum()) if len(losses) else 0.0,
        images_per_s=float(losses["images_per_s"].mean()) if len(losses) else float("nan"),
        checkpoint=str(tdir / "checkpoints" / "last.pt"),
        losses=losses,
    )
    for k in ("device", "resumed_from", "data_mode", "n_train", "amp_dtype"):
        if k in info:
            out[k] = info[k]
    return out


def train_dcgan(run, cache, cfg: dict, resume: bool = True, progress: bool = True, overwrite: bool = False,
                data_mode: str = "auto") -> dict:
    """Train the DCGAN on the healthy ``train`` slices of ``cache``; outputs in ``<run>/train/``.

    run : :class:`~glio_kit.runtime.RunDir` whose ``prep`` step is done.
    cache : the run's :class:`~glio_kit.preprocess.SliceCache` (``images`` (N, H, W) in [-1, 1],
        ``rows(split=...)``).
    cfg : knobs ``latent_dim, ngf, ndf, epochs, batch_size, lr, beta1, beta2, checkpoint_every,
        amp, seed, device``.
    resume : continue from ``train/checkpoints/last.pt`` when it holds the same model and
        training knobs (an interrupted run, or more ``epochs`` with ``overwrite=True``);
        the result is the same as training in one go.
    overwrite : redo the step when the run folder holds a training with other parameters
        (otherwise that raises :class:`~glio_kit.errors.RunFolderError`).
    data_mode : ``auto`` | ``device`` | ``host`` | ``memmap`` (where the slices are held).

    Returns dict: ``epochs, loss_d, loss_g, d_x, d_g_z`` (last epoch), ``seconds`` (all
    epochs), ``images_per_s`` (mean), ``losses`` (DataFrame), ``checkpoint``, ``skipped``
    (True when this exact training was already done and nothing ran), ``device``,
    ``resumed_from`` (epoch), ``data_mode``, ``n_train``.
    """
    from tqdm.auto import tqdm

    image_size = [int(s) for s in cache.images.shape[1:]]
    params = {k: cfg[k] for k in TRAIN_KEYS}
    params["image_size"] = image_size
    done = run.claim("train", params, after=("prep",), overwrite=overwrite)
    tdir = _train_dir(run)
    ckpt_dir, sample_dir = tdir / "checkpoints", tdir / "samples"
    last_path = ckpt_dir / "last.pt"
    if done and last_path.exists():
        return _result(run, skipped=True)

    rows = cache.rows(split="train")
    if len(rows) < 2:
        raise InputError(getattr(cache, "folder", "cache"), f"needs at least 2 healthy training slices to train "
                         f"the DCGAN (BatchNorm), found {len(rows)}")
    device = choose_device(cfg.get("device", "auto"))
    seed, epochs, bs = int(cfg["seed"]), int(cfg["epochs"]), int(cfg["batch_size"])
    every = max(1, int(cfg.get("checkpoint_every") or 1))
    latent = int(cfg["latent_dim"])

    # ---- models, optimisers, fixed latent (all from the seed; the same on every device)
    seed_everything(seed)
    G, D = build_models(params)
    fixed_z = torch.randn(N_SAMPLES, latent, 1, 1, generator=torch.Generator().manual_seed(seed + 3))
    shuffle_gen = torch.Generator().manual_seed(seed + 1)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 2)

    ckpt = None
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        same = {k: ckpt.get("config", {}).get(k) for k in RESUME_KEYS} == {k: params[k] for k in RESUME_KEYS}
        if not same or int(ckpt["epoch"]) > epochs:
            ckpt = None
    if ckpt is None:
        run.reset_dir("train")
        ckpt_dir.mkdir()
        sample_dir.mkdir()
    else:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        fixed_z = ckpt["fixed_z"]

    use_amp, amp_dtype = _precision(cfg, device)
    channels_last = use_amp
    mf = torch.channels_last if channels_last else torch.contiguous_format
    G.to(device, memory_format=mf)
    D.to(device, memory_format=mf)
    optG = torch.optim.Adam(G.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]))
    optD = torch.optim.Adam(D.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    start_epoch = 0
    if ckpt is not None:
        optG.load_state_dict(ckpt["optG"])
        optD.load_state_dict(ckpt["optD"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        _restore_rng(ckpt["rng"], shuffle_gen, noise_gen, reseed=seed + 2 + 7919 * start_epoch)
        del ckpt

    losses = _read_losses(tdir)
    losses = losses[losses["epoch"] <= start_epoch].reset_index(drop=True)
    data = _Batches(cache.images, rows, device, bs, data_mode, channels_last)
    n_batches = len(data.batches(torch.arange(len(rows))))
    if start_epoch == 0:  # real slices beside the samples (Figure 3), a seeded pick
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), min(N_SAMPLES, len(rows)), replace=False))
        save_grid(np.asarray(cache.images[rows[pick]]), sample_dir / "real.png", nrow=4)
        (sample_dir / "grid.json").write_text(json.dumps(dict(
            height=image_size[0], width=image_size[1], n=N_SAMPLES, nrow=4, pad=GRID_PAD,
            real_rows=[int(r) for r in rows[pick]])) + "\n")

    trainer = _Trainer(G, D, optG, optD, scaler, noise_gen, latent, bs, device, use_amp, amp_dtype)
    autocast = trainer.autocast
    fixed_dev = fixed_z.to(device)

    bar = tqdm(total=epochs * n_batches, initial=start_epoch * n_batches, desc="train DCGAN", unit="batch",
               disable=not progress or quiet(), dynamic_ncols=True)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    G.train(), D.train()
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(rows), generator=shuffle_gen)
            a, n_seen = trainer.epoch(data.epoch(perm), bar, epoch)

            with autocast():
                samples = fixed_samples(G, fixed_dev)
            save_grid(samples, sample_dir / f"epoch_{epoch:03d}.png", nrow=4)

            ckpt = dict(
                epoch=epoch, G=G.state_dict(), D=D.state_dict(), optG=optG.state_dict(), optD=optD.state_dict(),
                scaler=scaler.state_dict(), config=params, rng=_rng_state(shuffle_gen, noise_gen), fixed_z=fixed_z,
                torch_version=str(torch.__version__), device=str(device),
            )
            if epoch % every == 0 or epoch == epochs:
                _atomic_save(ckpt, ckpt_dir / f"epoch_{epoch:03d}.pt")
            seconds = time.perf_counter() - t0
            row = dict(epoch=epoch, loss_d=a[0], loss_g=a[1], d_x=a[2], d_g_z=a[3], seconds=seconds,
                       images_per_s=n_seen / seconds)
            losses = pd.concat([losses, pd.DataFrame([row])], ignore_index=True) if len(losses) else pd.DataFrame([row])
            losses[LOSS_COLUMNS].to_csv(tdir / "losses.csv", index=False)
            _atomic_save(ckpt, last_path)  # last: a crash before here resumes from the epoch before
            del ckpt
            bar.set_postfix(epoch=epoch, loss_d=f"{a[0]:.3f}", loss_g=f"{a[1]:.3f}", d_x=f"{a[2]:.2f}",
                            d_g_z=f"{a[3]:.2f}")
    finally:
        bar.close()
        torch.backends.cudnn.benchmark = cudnn_benchmark

    last = losses.iloc[-1]
    run.mark_done("train", seconds=float(losses["seconds"].sum()), epochs=epochs,
                  loss_d=float(last["loss_d"]), loss_g=float(last["loss_g"]), d_x=float(last["d_x"]),
                  d_g_z=float(last["d_g_z"]), images_per_s=float(losses["images_per_s"].mean()),
                  device=str(device), resumed_from=start_epoch, data_mode=data.mode, n_train=int(len(rows)),
                  amp_dtype=str(amp_dtype).replace("torch.", "") if use_amp else "float32")
    return _result(run, skipped=False)


# ------------------------------------------------------------------- learning rates
def compare_learning_rates(cache, cfg: dict, lrs=(0.0002, 0.002), epochs: int = 5, n: int = 6,
                           progress: bool = True, data_mode: str = "auto"):
    """Short side runs, one per learning rate, from the same initial weights, batches and noise.

    Trained in memory: nothing is written and the run's model is not touched (the global
    random states are put back afterwards). Returns a Figure: loss and D(x) / D(G(z)) curves
    per learning rate above a row of samples (the first ``n`` fixed latents of Figure 3) per
    learning rate after ``epochs`` epochs. ``fig.histories`` holds the per-epoch numbers
    ({lr: DataFrame}).
    """
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    rows = cache.rows(split="train")
    if len(rows) < 2:
        raise InputError(getattr(cache, "folder", "cache"), f"needs at least 2 healthy training slices, found {len(rows)}")
    device = choose_device(cfg.get("device", "auto"))
    seed, bs, latent = int(cfg["seed"]), int(cfg["batch_size"]), int(cfg["latent_dim"])
    params = dict(latent_dim=latent, ngf=cfg["ngf"], ndf=cfg["ndf"], image_size=[int(s) for s in cache.images.shape[1:]])
    use_amp, amp_dtype = _precision(cfg, device)
    mf = torch.channels_last if use_amp else torch.contiguous_format
    data = _Batches(cache.images, rows, device, bs, data_mode, use_amp)
    n_batches = len(data.batches(torch.arange(len(rows))))
    fixed_z = torch.randn(N_SAMPLES, latent, 1, 1, generator=torch.Generator().manual_seed(seed + 3)).to(device)
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    histories, samples = {}, {}
    bar = tqdm(total=len(lrs) * int(epochs) * n_batches, desc="compare learning rates", unit="batch",
               disable=not progress or quiet(), dynamic_ncols=True)
    try:
        for lr in lrs:
            seed_everything(seed)
            G, D = build_models(params)
            G.to(device, memory_format=mf), D.to(device, memory_format=mf)
            optG = torch.optim.Adam(G.parameters(), lr=lr, betas=(cfg["beta1"], cfg["beta2"]))
            optD = torch.optim.Adam(D.parameters(), lr=lr, betas=(cfg["beta1"], cfg["beta2"]))
            scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
            shuffle_gen = torch.Generator().manual_seed(seed + 1)
            noise_gen = torch.Generator(device=device).manual_seed(seed + 2)
            trainer = _Trainer(G, D, optG, optD, scaler, noise_gen, latent, bs, device, use_amp, amp_dtype)
            hist = []
            for e in range(1, int(epochs) + 1):
                bar.set_description(f"compare learning rates (lr {lr:g})")
                a, _ = trainer.epoch(data.epoch(torch.randperm(len(rows), generator=shuffle_gen)), bar, e)
                hist.append(dict(epoch=e, loss_d=a[0], loss_g=a[1], d_x=a[2], d_g_z=a[3]))
            with trainer.autocast():
                samples[lr] = fixed_samples(G, fixed_z)[:n]
            histories[lr] = pd.DataFrame(hist)
            del G, D, optG, optD, trainer
    finally:
        bar.close()
        torch.set_rng_state(saved[0]), np.random.set_state(saved[1]), random.setstate(saved[2])

    from matplotlib.ticker import MaxNLocator

    h, w = params["image_size"]
    n = min(n, N_SAMPLES)
    width = max(8.0, 1.3 * n)
    fig = plt.figure(figsize=(width, 3.0 + width / n * len(lrs) * h / w + 0.3 * len(lrs)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.0, width / n * len(lrs) * h / w + 0.3 * len(lrs)])
    a1, a2 = top.subplots(1, 2)
    for k, (lr, df) in enumerate(histories.items()):
        c = f"C{k}"
        a1.plot(df["epoch"], df["loss_d"], "o-", ms=3, color=c, label=f"D, lr {lr:g}")
        a1.plot(df["epoch"], df["loss_g"], "s--", ms=3, color=c, label=f"G, lr {lr:g}")
        a2.plot(df["epoch"], df["d_x"], "o-", ms=3, color=c, label=f"D(x), lr {lr:g}")
        a2.plot(df["epoch"], df["d_g_z"], "s--", ms=3, color=c, label=f"D(G(z)), lr {lr:g}")
    for ax, title, ylabel in ((a1, "losses", "BCE loss"), (a2, "discriminator outputs", "mean probability")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    a2.set_ylim(0, 1)
    top.suptitle("Same initial weights, batches and noise; only the learning rate differs", fontsize=10)
    axes = bottom.subplots(len(lrs), n, squeeze=False)
    for i, lr in enumerate(histories):
        for j in range(n):
            axes[i, j].imshow(samples[lr][j], **GREY)
            _clean(axes[i, j])
        axes[i, 0].set_ylabel(f"lr {lr:g}", fontsize=9)
    bottom.suptitle(f"samples after epoch {int(epochs)} (the first {n} fixed latents of Figure 3)", fontsize=9)
    fig.histories = histories
    return fig


# ------------------------------------------------------------------------------ figures
def _sample_epochs(run) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (_train_dir(run) / "samples").glob("epoch_*.png"))


def _grid_meta(run) -> dict:
    p = _train_dir(run) / "samples" / "grid.json"
    if not p.exists():
        raise RunFolderError(f"{p}: no training samples in this run folder; run the training step first")
    return json.loads(p.read_text())


def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def plot_figure3(run, epochs=None, n: int = 6):
    """Paper Figure 3: generator samples from one fixed latent batch at several epochs
    (columns, default about five from the first to the last) beside real healthy slices."""
    import matplotlib.pyplot as plt

    meta = _grid_meta(run)
    have = _sample_epochs(run)
    if not have:
        raise RunFolderError(f"{_train_dir(run) / 'samples'}: no epoch samples yet; train first")
    if epochs is None:
        epochs = sorted({int(round(e)) for e in np.linspace(have[0], have[-1], min(5, len(have)))})
    missing = [e for e in epochs if e not in have]
    if missing:
        raise ValueError(f"no samples for epoch(s) {missing}; available: {have[0]}..{have[-1]}")
    n = min(n, meta["n"])
    h, w, sd = meta["height"], meta["width"], _train_dir(run) / "samples"
    cols = [(f"epoch {e}", read_grid(sd / f"epoch_{e:03d}.png", h, w, meta["n"], meta["nrow"], meta["pad"]))
            for e in epochs]
    real = read_grid(sd / "real.png", h, w, len(meta.get("real_rows", [])) or meta["n"], meta["nrow"], meta["pad"])
    cols.append(("real (healthy)", real))
    n = min(n, len(real))
    cw = 1.4
    fig, axes = plt.subplots(n, len(cols), figsize=(cw * len(cols), cw * n * h / w + 0.4), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        for i in range(n):
            axes[i, j].imshow(imgs[i], **GREY)
            _clean(axes[i, j])
        axes[0, j].set_title(title, fontsize=9)
    fig.suptitle("Generator samples during training (fixed latents) and real slices", fontsize=10)
    fig.tight_layout()
    return fig


def plot_losses(run):
    """Loss curves of D and G, and the mean D(x) and D(G(z)) probabilities, per epoch."""
    import matplotlib.pyplot as plt

    df = _read_losses(_train_dir(run))
    if not len(df):
        raise RunFolderError(f"{_train_dir(run) / 'losses.csv'}: no training log yet; train first")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(df["epoch"], df["loss_d"], "o-", ms=3, label="discriminator")
    a1.plot(df["epoch"], df["loss_g"], "o-", ms=3, label="generator")
    a1.set_xlabel("epoch")
    a1.set_ylabel("BCE loss")
    a1.set_title("losses")
    a1.legend()
    a2.plot(df["epoch"], df["d_x"], "o-", ms=3, label="D(x), real")
    a2.plot(df["epoch"], df["d_g_z"], "o-", ms=3, label="D(G(z)), generated")
    a2.axhline(0.5, color="grey", lw=0.8, ls="--")
    a2.set_ylim(0, 1)
    a2.set_xlabel("epoch")
    a2.set_ylabel("mean probability")
    a2.set_title("discriminator outputs")
    a2.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_real_vs_generated(run, cache, n: int = 8, seed: int = 0):
    """A row of real healthy slices (validation subjects when there are some, never seen in
    training) above a row of samples of the trained generator from random latents."""
    import matplotlib.pyplot as plt

    G, _, meta = load_models(run, "cpu")
    split = "val" if len(cache.rows(split="val", label=0)) else "train"
    rows = cache.rows(split=split, label=0)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, min(n, len(rows)), replace=False))
    real = np.asarray(cache.images[pick])
    z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        fake = G(z)[:, 0].numpy()
    h, w = real.shape[1:]
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 2 * 1.4 * h / w + 0.5), squeeze=False)
    for j in range(n):
        if j < len(real):
            axes[0, j].imshow(real[j], **GREY)
        axes[1, j].imshow(fake[j], **GREY)
        _clean(axes[0, j]), _clean(axes[1, j])
    axes[0, 0].set_ylabel(f"real ({split})", fontsize=9)
    axes[1, 0].set_ylabel(f"G(z), epoch {meta['epoch']}", fontsize=9)
    fig.suptitle(f"Real healthy slices vs generated (epoch {meta['epoch']})", fontsize=10)
    fig.tight_layout()
    return fig

"""Training checkpoints: what a training writes so it can be resumed exactly, and loaded later.

``<run>/train/checkpoints/last.pt`` is written every epoch, ``epoch_XXX.pt`` every
``checkpoint_every`` epochs and at the last. A checkpoint holds only tensors and plain Python
values, so it loads with ``torch.load(..., weights_only=True)``, and on the CPU whatever device
wrote it:

    epoch          epochs trained
    G, D           state dicts of the generator and the discriminator
    G_ema          with ``ema_decay > 0``: the moving average of G, which the later steps load
    optG, optD     state dicts of their Adam optimisers
    scaler         state of the fp16 GradScaler (empty when unused)
    config         the training's identity (:meth:`TrainSettings.identity`) plus ``image_size``
    rng            every random state (:func:`rng_state`)
    fixed_z        the fixed latent batch of the sample grids, (16, latent_dim, 1, 1)
    torch_version, device

Resuming from ``last.pt`` with the same identity restores all of it, so an interrupted
training ends with the very same weights as one that ran in one go.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import RunFolderError
from .model import build_models

__all__ = ["CHECKPOINTS", "checkpoint_path", "make_checkpoint", "save_checkpoint", "load_checkpoint",
           "resumable_checkpoint", "rng_state", "restore_rng", "load_models"]

CHECKPOINTS = Path("train") / "checkpoints"  # inside the run folder


def checkpoint_path(run, epoch: int | None = None) -> Path:
    """``last.pt`` of a run's training, or ``epoch_XXX.pt`` for ``epoch``."""
    name = "last.pt" if epoch is None else f"epoch_{epoch:03d}.pt"
    return Path(run / CHECKPOINTS) / name


def make_checkpoint(epoch: int, gan, config: dict, rng: dict, fixed_z: torch.Tensor, device) -> dict:
    """The checkpoint after ``epoch`` (the table above); ``gan``: a
    :class:`~glio_kit.gan.train.GAN` (G, D, opt_G, opt_D, scaler, G_ema); ``rng``: :func:`rng_state`."""
    ckpt = dict(
        epoch=epoch, G=gan.G.state_dict(), D=gan.D.state_dict(), optG=gan.opt_G.state_dict(),
        optD=gan.opt_D.state_dict(), scaler=gan.scaler.state_dict(), config=config, rng=rng, fixed_z=fixed_z,
        torch_version=str(torch.__version__), device=str(device),
    )
    if gan.G_ema is not None:
        ckpt["G_ema"] = gan.G_ema.state_dict()
    return ckpt


def save_checkpoint(checkpoint: dict, path) -> None:
    """Write atomically: a crash while saving leaves the previous file whole."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


#: What every checkpoint holds (the table above).
REQUIRED_KEYS = ("epoch", "G", "D", "config")


def load_checkpoint(path, map_location="cpu", required=REQUIRED_KEYS, step: str = "train") -> dict:
    """``torch.load(path, weights_only=True)`` of a checkpoint; a file that cannot be read (cut
    short, empty, not a checkpoint: a key of ``required`` missing) raises :class:`RunFolderError`
    naming it and what to do (redo ``step``: ``train`` for the DCGAN, ``score`` for the encoder)."""
    path = Path(path)
    notebook = {"train": "02", "score": "03"}.get(step, "of the step")
    todo = (f"Delete it and redo the step (`glio-kit run --force {step}`, or notebook {notebook} with "
            f"overwrite=True)")
    if path.name == "last.pt":
        todo += "; or copy the newest epoch_XXX.pt beside it to last.pt to resume from that epoch"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip reader, EOFError, unpickling: all mean a damaged file
        first = (str(err).splitlines() or [""])[0][:200]
        raise RunFolderError(f"{path}: the checkpoint cannot be read ({type(err).__name__}: {first}); "
                             f"it is damaged or was cut short (a full disk, a copy that stopped). "
                             f"{todo}") from None
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise RunFolderError(f"{path}: not a glio-kit checkpoint (missing {missing}). {todo}")
    return ckpt


def resumable_checkpoint(run, config: dict, epochs: int) -> dict | None:
    """``last.pt`` (on the CPU) when it continues a training of this ``config``, else None.

    Everything in ``config`` but ``epochs`` must match (so a training can be extended to more
    epochs), and the checkpoint must not be past ``epochs``.
    """
    path = checkpoint_path(run)
    if not path.exists():
        return None
    ckpt = load_checkpoint(path, "cpu")
    keys = [k for k in config if k != "epochs"]
    same = {k: ckpt.get("config", {}).get(k) for k in keys} == {k: config[k] for k in keys}
    return ckpt if same and int(ckpt["epoch"]) <= epochs else None


def rng_state(shuffle_gen: torch.Generator, noise_gen: torch.Generator) -> dict:
    """Every random state as tensors and plain values (loadable with ``weights_only=True``):
    torch, NumPy and Python's global states, CUDA's when in use, and the training's shuffle
    and noise generators."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=dict(version=py_state[0], state=list(py_state[1]), gauss_next=py_state[2]),
        shuffle=shuffle_gen.get_state(),
        noise=noise_gen.get_state(),
        noise_device=noise_gen.device.type,
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, shuffle_gen: torch.Generator, noise_gen: torch.Generator, reseed: int) -> None:
    """Put back what :func:`rng_state` saved.

    A noise generator of another device type (a training checkpointed on a GPU, resumed on
    the CPU) cannot take the saved state: it is seeded with ``reseed`` instead, with a warning
    that the result is no longer bit-identical to an uninterrupted run.
    """
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
        warnings.warn(f"resuming on {noise_gen.device.type} a training checkpointed on "
                      f"{state.get('noise_device')}: the noise stream restarts from a new seed, so the "
                      f"result is not bit-identical to an uninterrupted run", stacklevel=3)


def load_models(run, device="cpu"):
    """``(G, D, meta)`` from ``<run>/train/checkpoints/last.pt``, in eval mode on ``device``.

    G is the moving average of the generator when the training kept one (``ema_decay > 0``).
    ``meta`` holds ``epoch``, ``config`` (the training's identity and image size), ``path`` and
    ``ema`` (whether G is the average).
    (Building the models draws their initial weights from the global torch RNG before the
    trained ones replace them, as it always has: later steps' random draws depend on it.)
    """
    path = checkpoint_path(run)
    if not path.exists():
        raise RunFolderError(f"{path}: no trained model in this run folder; run the training step "
                             f"(notebook 02 or train_dcgan) with this run_dir first")
    device = torch.device(device)
    ckpt = load_checkpoint(path, device)
    c = ckpt["config"]
    G, D = build_models(c["latent_dim"], c["ngf"], c["ndf"], c["image_size"])
    G, D = G.to(device), D.to(device)
    ema = "G_ema" in ckpt
    G.load_state_dict(ckpt["G_ema"] if ema else ckpt["G"])
    D.load_state_dict(ckpt["D"])
    G.eval(), D.eval()
    return G, D, dict(epoch=int(ckpt["epoch"]), config=c, path=str(path), ema=ema)

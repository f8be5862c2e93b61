"""The whole chain at the paper's shape: 448x364 slices, ngf = ndf = 64, on a tiny cohort.

`glio-kit run --profile paper` (cohort at 1 mm, prep, train, map, score, metrics, every
figure) with the paper's image size and network widths but 2 + 1 + 1 subjects, 2 slices
each, 1 epoch and 2 mapping steps. It checks the shapes each step writes, that the figures
are sane at that size, and the slice cache's size on disk.

It takes about 3-4 minutes on 2 CPU cores, so `make test` skips it; `make test-paper-shape`
(which `.ci/run` calls) sets ``GLIO_KIT_PAPER_SHAPE=1`` and runs it.
"""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from glio_kit.run.cli import main
from glio_kit.gan.samples import GRID_NROW, GRID_PAD, N_SAMPLES

pytestmark = pytest.mark.skipif(not os.environ.get("GLIO_KIT_PAPER_SHAPE"),
                                reason="minutes on a CPU: run by `make test-paper-shape`")

H, W = 448, 364  # the paper's slices (height x width)
SUBJECTS = dict(synth_train_healthy=2, synth_test_healthy=1, synth_test_tumor=1)
N_SLICES = 2
#: The figures of the paper (and the kit's core ones) that must come out of the chain.
KEY_FIGURES = ("01_slice_montage", "02_figure3_samples_by_epoch", "02_loss_curves", "02_real_vs_generated",
               "03_mapping_steps", "04_figure4_healthy", "04_figure5_tumour", "05_roc", "05_confusion")


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper_shape")
    env = dict(GLIO_KIT_DATA=str(tmp / "data"), GLIO_KIT_QUIET="1")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    params = dict(SUBJECTS, n_slices=N_SLICES, epochs=1, mapping_steps=2, batch_size=4,
                  compare_paper_lr_epochs=1, n_bootstrap=20)
    argv = ["run", "--profile", "paper", "--run-dir", str(tmp / "run")]
    for k, v in params.items():
        argv += ["-p", f"{k}={v}"]
    try:
        assert main(argv) == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp / "run"


def test_every_step_done_at_paper_settings(paper_run):
    for step in ("prep", "train", "score", "metrics"):
        rec = json.loads((paper_run / "steps" / f"{step}.json").read_text())
        assert rec["status"] == "done", step
    params = json.loads((paper_run / "steps" / "train.json").read_text())["params"]
    assert params["ngf"] == 64 and params["ndf"] == 64 and params["image_size"] == [H, W]
    metrics = json.loads((paper_run / "metrics.json").read_text())
    assert metrics["n_test_healthy"] == 1 and metrics["n_test_tumor"] == 1


def test_slice_cache_shapes_and_size_on_disk(paper_run):
    cache = paper_run / "cache"
    n = sum(SUBJECTS.values()) * N_SLICES
    images = np.load(cache / "images.npy", mmap_mode="r")
    assert images.shape == (n, H, W) and images.dtype == np.float32
    assert images.min() >= -1 and images.max() <= 1 and float(images.std()) > 0.1
    for name in ("brain", "lesion"):
        arr = np.load(cache / f"{name}.npy", mmap_mode="r")
        assert arr.shape == (n, H, W) and arr.dtype == np.uint8
    # on disk: 4 + 1 + 1 bytes per pixel and a small .npy header per array, nothing more
    per_slice = H * W * (4 + 1 + 1)
    on_disk = sum((cache / f).stat().st_size for f in ("images.npy", "brain.npy", "lesion.npy"))
    assert per_slice * n <= on_disk <= per_slice * n + 3 * 4096
    lesion = np.load(cache / "lesion.npy", mmap_mode="r")
    index = pd.read_csv(cache / "index.csv")
    assert lesion[index.label.to_numpy() == 1].sum() > 0 and lesion[index.label.to_numpy() == 0].sum() == 0
    # the paper's cohort (300 healthy training + 27 + 27 test subjects, 24 slices): about 8.3 GB
    paper_bytes = (300 + 27 + 27) * 24 * per_slice
    assert 8.0e9 < paper_bytes < 8.6e9


def test_models_and_maps_have_the_paper_shape(paper_run):
    from glio_kit.gan.checkpoints import load_models

    G, D = load_models(paper_run)[:2]
    with torch.no_grad():
        x = G(torch.zeros(2, G.latent_dim, 1, 1))
        assert x.shape == (2, 1, H, W)
        logit, feat = D(x, return_features=True)
    assert logit.shape == (2,) and feat.ndim == 4
    assert 13.0e6 < sum(p.numel() for p in G.parameters()) < 13.6e6  # 13.3 M at ngf 64
    assert 11.0e6 < sum(p.numel() for p in D.parameters()) < 11.4e6  # 11.2 M at ndf 64
    n_scored = len(pd.read_csv(paper_run / "score" / "slice_scores.csv"))
    assert n_scored >= 3 * N_SLICES  # validation + test slices
    for name in ("recon", "residual_abs", "residual_pos"):
        arr = np.load(paper_run / "score" / f"{name}.npy", mmap_mode="r")
        assert arr.shape == (n_scored, H, W), name
    # a checkpoint holds G, D and both Adam states: about 12 bytes per parameter (294 MB)
    size = (paper_run / "train" / "checkpoints" / "last.pt").stat().st_size
    assert 2.8e8 < size < 3.2e8


def test_figures_are_sane_at_paper_size(paper_run):
    from PIL import Image

    pngs = sorted((paper_run / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert set(KEY_FIGURES) <= names, f"missing: {set(KEY_FIGURES) - names}"
    assert len(pngs) >= 15
    for p in pngs:
        with Image.open(p) as im:
            w, h = im.size
            pixels = np.asarray(im.convert("L"), dtype=np.float32)
        # figures keep a page size whatever the slices' size: not a 448-pixel-per-panel poster
        assert 300 <= w <= 2000 and 300 <= h <= 2000, f"{p.name}: {w}x{h} pixels"
        assert p.stat().st_size < 3_000_000, f"{p.name}: {p.stat().st_size} bytes"
        assert pixels.std() > 5, f"{p.name} is blank"
    # the per-epoch sample grid is at full resolution: 4 x 4 slices of 448 x 364 (portrait, not stretched)
    rows = N_SAMPLES // GRID_NROW
    with Image.open(paper_run / "train" / "samples" / "epoch_001.png") as im:
        assert im.size == (GRID_NROW * (W + GRID_PAD) + GRID_PAD, rows * (H + GRID_PAD) + GRID_PAD)

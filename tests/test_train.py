"""DCGAN training step: outputs, repeatability, exact resume, the run-folder step record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from glio_kit.config import get_config
from glio_kit.errors import RunFolderError
from glio_kit.preprocess import SliceCache
from glio_kit.runtime import RunDir
from glio_kit import train as T




def write_tiny_cache(folder, n_subjects=6, n_slices=4, size=(16, 16), seed=0, splits=None):
    """A slice cache in SliceCache's format, without any NIfTI: discs of noisy 'tissue'
    on a -1 background. Subjects are train / val / test by ``splits`` (default 4 / 1 / 1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    n = n_subjects * n_slices
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.float32, (n, h, w))
    brain = np.lib.format.open_memmap(folder / "brain.npy", "w+", np.uint8, (n, h, w))
    lesion = np.lib.format.open_memmap(folder / "lesion.npy", "w+", np.uint8, (n, h, w))
    splits = splits or (["train"] * (n_subjects - 2) + ["val", "test"])
    rows = []
    for i in range(n):
        r = 0.6 + 0.25 * rng.random()
        m = (yy / r) ** 2 + (xx / (r * 0.85)) ** 2 < 1
        img = np.where(m, np.clip(0.2 * rng.standard_normal((h, w)) + 0.6 * np.cos(3 * yy), -1, 1), -1.0)
        images[i], brain[i] = img, m
        s = i // n_slices
        rows.append(dict(row=i, subject=f"S{s:02d}", label=0, split=splits[s], slice_index=i % n_slices,
                         slice_pos=i % n_slices, lesion_pixels=0, brain_pixels=int(m.sum()), image="", mask=""))
    images.flush(), brain.flush(), lesion.flush()
    del images, brain, lesion
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    (folder / "prep.json").write_text(json.dumps(dict(image_size=list(size), n_slices=n_slices)))
    return SliceCache(folder)


def make_run(tmp_path, name="run", **cache_kw):
    run = RunDir(tmp_path / name)
    cache = write_tiny_cache(run / "cache", **cache_kw)
    run.claim("prep", {"tiny": True})
    run.mark_done("prep")
    return run, cache


def tiny_cfg(**kw):
    cfg = get_config("smoke", image_size=16, ngf=8, ndf=8, epochs=2, batch_size=5, checkpoint_every=1,
                     device="cpu", latent_dim=16)
    cfg.update(kw)
    return cfg


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(run):
    ck = torch.load(run / "train/checkpoints/last.pt", map_location="cpu", weights_only=True)
    return ck


def assert_same_training(r1, r2):
    c1, c2 = weights(r1), weights(r2)
    assert c1["epoch"] == c2["epoch"]
    assert state_equal(c1["G"], c2["G"])
    assert state_equal(c1["D"], c2["D"])
    for opt in ("optG", "optD"):
        s1, s2 = c1[opt]["state"], c2[opt]["state"]
        assert s1.keys() == s2.keys()
        for k in s1:
            assert all(torch.equal(torch.as_tensor(s1[k][n]), torch.as_tensor(s2[k][n])) for n in s1[k])
    l1 = pd.read_csv(r1 / "train/losses.csv")
    l2 = pd.read_csv(r2 / "train/losses.csv")
    assert np.array_equal(l1[["loss_d", "loss_g", "d_x", "d_g_z"]].to_numpy(), l2[["loss_d", "loss_g", "d_x", "d_g_z"]].to_numpy())


def test_outputs_per_epoch(tmp_path):
    run, cache = make_run(tmp_path)
    res = T.train_dcgan(run, cache, tiny_cfg(), progress=False)
    tdir = run / "train"
    df = pd.read_csv(tdir / "losses.csv")
    assert list(df.columns) == T.LOSS_COLUMNS
    assert df["epoch"].tolist() == [1, 2]
    assert np.isfinite(df.drop(columns="epoch").to_numpy()).all()
    assert ((df[["d_x", "d_g_z"]] > 0) & (df[["d_x", "d_g_z"]] < 1)).all().all()
    for e in (1, 2):
        png = tdir / f"samples/epoch_{e:03d}.png"
        assert png.exists() and (tdir / f"checkpoints/epoch_{e:03d}.pt").exists()
        tiles = T.read_grid(png, 16, 16, 16, 4)
        assert tiles.shape == (16, 16, 16) and tiles.std() > 0.01  # not blank
        assert np.abs(tiles - tiles[0]).max() > 0.01  # different latents, different images
    assert (tdir / "samples/real.png").exists()
    assert res["epochs"] == 2 and not res["skipped"] and res["n_train"] == 16
    assert res["images_per_s"] > 0 and res["device"] == "cpu"
    rec = run.record("train")
    assert rec["status"] == "done" and rec["info"]["epochs"] == 2 and rec["info"]["seconds"] > 0
    # checkpoints are tensors and plain values only: weights_only loading works, on CPU
    ck = torch.load(tdir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and ck["config"]["ngf"] == 8 and ck["fixed_z"].shape == (16, 16, 1, 1)
    assert {"torch", "numpy", "python", "shuffle", "noise"} <= set(ck["rng"])


def test_repeatable_same_seed_and_seed_matters(tmp_path):
    r1, c1 = make_run(tmp_path, "a")
    r2, c2 = make_run(tmp_path, "b")
    r3, c3 = make_run(tmp_path, "c")
    T.train_dcgan(r1, c1, tiny_cfg(), progress=False)
    T.train_dcgan(r2, c2, tiny_cfg(), progress=False)
    T.train_dcgan(r3, c3, tiny_cfg(seed=1), progress=False)
    assert_same_training(r1, r2)
    assert not state_equal(weights(r1)["G"], weights(r3)["G"])


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    ref, c_ref = make_run(tmp_path, "ref")
    T.train_dcgan(ref, c_ref, tiny_cfg(epochs=3), progress=False)

    run, cache = make_run(tmp_path, "crash")
    real_save = T.save_grid

    def crash_in_epoch_3(images, path, *a, **k):
        if Path(path).name == "epoch_003.png":
            raise KeyboardInterrupt("simulated interruption")
        return real_save(images, path, *a, **k)

    monkeypatch.setattr(T, "save_grid", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        T.train_dcgan(run, cache, tiny_cfg(epochs=3), progress=False)
    monkeypatch.setattr(T, "save_grid", real_save)
    assert run.record("train")["status"] == "running"
    assert weights(run)["epoch"] == 2
    torch.manual_seed(1234), np.random.seed(99)  # what the process did in between must not matter
    res = T.train_dcgan(run, cache, tiny_cfg(epochs=3), progress=False)
    assert res["resumed_from"] == 2 and res["epochs"] == 3
    assert_same_training(ref, run)


def test_more_epochs_continue_exactly(tmp_path):
    ref, c_ref = make_run(tmp_path, "ref")
    T.train_dcgan(ref, c_ref, tiny_cfg(epochs=2), progress=False)
    run, cache = make_run(tmp_path, "ext")
    T.train_dcgan(run, cache, tiny_cfg(epochs=1), progress=False)
    res = T.train_dcgan(run, cache, tiny_cfg(epochs=2), progress=False, overwrite=True)
    assert res["resumed_from"] == 1
    assert_same_training(ref, run)
    assert pd.read_csv(run / "train/losses.csv")["epoch"].tolist() == [1, 2]


def test_memmap_data_path_gives_the_same_training(tmp_path):
    r1, c1 = make_run(tmp_path, "a")
    r2, c2 = make_run(tmp_path, "b")
    T.train_dcgan(r1, c1, tiny_cfg(epochs=1), progress=False, data_mode="device")
    res = T.train_dcgan(r2, c2, tiny_cfg(epochs=1), progress=False, data_mode="memmap")
    assert res["data_mode"] == "memmap"
    assert_same_training(r1, r2)


def test_done_step_is_not_redone_and_other_params_raise(tmp_path):
    run, cache = make_run(tmp_path)
    T.train_dcgan(run, cache, tiny_cfg(epochs=1), progress=False)
    last = run / "train/checkpoints/last.pt"
    stamp = last.stat().st_mtime_ns
    res = T.train_dcgan(run, cache, tiny_cfg(epochs=1), progress=False)
    assert res["skipped"] and res["epochs"] == 1 and last.stat().st_mtime_ns == stamp
    with pytest.raises(RunFolderError, match="lr"):
        T.train_dcgan(run, cache, tiny_cfg(epochs=1, lr=0.0005), progress=False)
    assert last.stat().st_mtime_ns == stamp  # nothing was touched
    res = T.train_dcgan(run, cache, tiny_cfg(epochs=1, lr=0.0005), progress=False, overwrite=True)
    assert not res["skipped"] and res["resumed_from"] == 0  # other lr: trained afresh


def test_needs_prep_step(tmp_path):
    run = RunDir(tmp_path / "run")
    cache = write_tiny_cache(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match="prep"):
        T.train_dcgan(run, cache, tiny_cfg(), progress=False)


def test_last_batch_of_one_is_dropped_others_kept():
    sizes = lambda n, bs: [len(b) for b in T._Batches(np.zeros((n, 8, 8), np.float32), np.arange(n),  # noqa: E731
                                                       torch.device("cpu"), bs).batches(torch.arange(n))]
    assert sizes(13, 4) == [4, 4, 4]
    assert sizes(14, 4) == [4, 4, 4, 2]
    assert sizes(12, 4) == [4, 4, 4]
    assert sizes(3, 8) == [3]


def test_load_models_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, cache = make_run(tmp_path, size=(16, 12))  # non-square
    T.train_dcgan(run, cache, tiny_cfg(epochs=3), progress=False)
    G, D, meta = T.load_models(run)
    assert not G.training and not D.training and meta["epoch"] == 3
    with torch.no_grad():
        x = G(torch.randn(2, 16))
    assert x.shape == (2, 1, 16, 12) and D(x).shape == (2,)
    fig = T.plot_figure3(run, n=4)
    assert [a.get_title() for a in fig.axes[:4] if a.get_title()] == ["epoch 1", "epoch 2", "epoch 3", "real (healthy)"]
    assert len(fig.axes) == 4 * 4
    plt.close(fig)
    fig = T.plot_figure3(run, epochs=[1, 3], n=2)
    assert len(fig.axes) == 2 * 3
    plt.close(fig)
    plt.close(T.plot_losses(run))
    plt.close(T.plot_real_vs_generated(run, cache, n=4))
    assert not list((run / "figures").glob("*.png"))  # plot functions return figures; notebooks save them
    with pytest.raises(ValueError, match="epoch"):
        T.plot_figure3(run, epochs=[7])


def test_load_models_without_training_says_so(tmp_path):
    with pytest.raises(RunFolderError, match="train"):
        T.load_models(RunDir(tmp_path / "empty"))


def test_resume_from_a_checkpoint_of_another_device(tmp_path, monkeypatch):
    """A checkpoint written on a GPU resumes on the CPU: the noise generator's state cannot
    carry over (another generator type), so it is reseeded, with a warning."""
    run, cache = make_run(tmp_path)
    T.train_dcgan(run, cache, tiny_cfg(epochs=1), progress=False)
    last = run / "train/checkpoints/last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    ck["rng"]["noise_device"], ck["rng"]["noise"] = "cuda", torch.zeros(16, dtype=torch.uint8)  # a Philox state
    ck["device"] = "cuda"
    torch.save(ck, last)
    with pytest.warns(UserWarning, match="noise stream"):
        res = T.train_dcgan(run, cache, tiny_cfg(epochs=2), progress=False, overwrite=True)
    assert res["resumed_from"] == 1 and res["epochs"] == 2


def test_fixed_samples_change_nothing_in_the_model():
    G, _ = T.build_models(dict(latent_dim=16, ngf=8, ndf=8, image_size=[16, 16]))
    G.eval()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    s = T.fixed_samples(G, torch.randn(6, 16, 1, 1))
    assert s.shape == (6, 16, 16) and s.std() > 0.01  # batch statistics: not a flat grey
    assert not G.training and state_equal(before, G.state_dict())


def test_compare_learning_rates_trains_in_memory(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, cache = make_run(tmp_path)
    files_before = sorted(p.name for p in (run.path).rglob("*"))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    fig = T.compare_learning_rates(cache, tiny_cfg(), lrs=(0.0002, 0.002), epochs=2, n=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # global random state put back
    assert sorted(p.name for p in (run.path).rglob("*")) == files_before  # nothing written
    h = fig.histories
    assert list(h) == [0.0002, 0.002] and all(len(df) == 2 for df in h.values())
    assert not np.allclose(h[0.0002]["loss_g"], h[0.002]["loss_g"])
    # at the kit's lr, the side run is the real training's first epochs (same weights, batches, noise)
    T.train_dcgan(run, cache, tiny_cfg(), progress=False)
    logged = pd.read_csv(run / "train/losses.csv")
    cols = ["loss_d", "loss_g", "d_x", "d_g_z"]
    assert np.allclose(logged[cols].to_numpy(), h[tiny_cfg()["lr"]][cols].to_numpy(), rtol=1e-9, atol=0)
    plt.close(fig)

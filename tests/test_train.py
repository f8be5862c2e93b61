"""DCGAN training step: the update, outputs, repeatability, exact resume, the step record."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from glio_kit.gan import checkpoints as C
from glio_kit.gan.build import update_ema
from glio_kit.gan import train as T
from glio_kit.run.config import get_config
from glio_kit.errors import RunFolderError
from glio_kit.gan.model import build_models
from glio_kit.data.slice_cache import SliceCache
from glio_kit.run.rundir import RunDir
from glio_kit.gan.samples import fixed_samples, read_grid
from glio_kit.gan.slice_batches import SliceBatches


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
                         slice_pos=i % n_slices, lesion_pixels=0, brain_pixels=int(m.sum()), image="",
                         mask=""))
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


def tiny(**kw):
    """Training settings of a tiny DCGAN on the CPU (16 x 16 slices come from the cache)."""
    knobs = dict(ngf=8, ndf=8, epochs=2, batch_size=5, checkpoint_every=1, device="cpu", latent_dim=16)
    knobs.update(kw)
    return get_config("smoke", **knobs).train


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def weights(run):
    return torch.load(C.checkpoint_path(run), map_location="cpu", weights_only=True)


def assert_same_training(r1, r2):
    c1, c2 = weights(r1), weights(r2)
    assert c1["epoch"] == c2["epoch"]
    assert state_equal(c1["G"], c2["G"])
    assert state_equal(c1["D"], c2["D"])
    assert ("G_ema" in c1) == ("G_ema" in c2)
    if "G_ema" in c1:
        assert state_equal(c1["G_ema"], c2["G_ema"])
    for opt in ("optG", "optD"):
        s1, s2 = c1[opt]["state"], c2[opt]["state"]
        assert s1.keys() == s2.keys()
        for k in s1:
            assert all(torch.equal(torch.as_tensor(s1[k][n]), torch.as_tensor(s2[k][n])) for n in s1[k])
    cols = ["loss_d", "loss_g", "d_x", "d_g_z"]
    assert np.array_equal(T.read_losses(r1)[cols].to_numpy(), T.read_losses(r2)[cols].to_numpy())


# ------------------------------------------------------------------------ the update
def example_update(netG, netD, optimizerG, optimizerD, real, noise):
    """One iteration of PyTorch's examples/dcgan/main.py, written out as there (with logits
    and BCEWithLogitsLoss, as the kit's discriminator returns logits)."""
    criterion = nn.BCEWithLogitsLoss()
    b_size = real.size(0)
    # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    label = torch.full((b_size,), 1.0)
    output = netD(real)
    errD_real = criterion(output, label)
    errD_real.backward()
    D_x = torch.sigmoid(output.detach())
    fake = netG(noise)
    label.fill_(0.0)
    output = netD(fake.detach())
    errD_fake = criterion(output, label)
    errD_fake.backward()
    D_G_z1 = torch.sigmoid(output.detach())
    errD = errD_real + errD_fake
    optimizerD.step()
    # (2) Update G network: maximize log(D(G(z)))
    netG.zero_grad()
    label.fill_(1.0)
    output = netD(fake)
    errG = criterion(output, label)
    errG.backward()
    optimizerG.step()
    return errD.detach(), errG.detach(), D_x, D_G_z1


def test_dcgan_step_is_the_example_update():
    """Three updates of dcgan_step and of the example's loop, from the same weights, batches
    and noise: the same weights, optimiser states, BatchNorm statistics and statistics, bit for bit."""
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, (16, 16))
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    opts = [torch.optim.Adam(m.parameters(), lr=0.002, betas=(0.5, 0.999)) for m in (G, D, G2, D2)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        real = torch.rand(6, 1, 16, 16, generator=gen) * 2 - 1
        z = torch.randn(6, 16, 1, 1, generator=gen)
        st = T.dcgan_step(G, D, opts[0], opts[1], real, z)
        ref = example_update(G2, D2, opts[2], opts[3], real, z)
        assert isinstance(st, T.StepStats)
        for got, want in zip(st, ref):
            assert torch.equal(got, want)
    assert state_equal(G.state_dict(), G2.state_dict()) and state_equal(D.state_dict(), D2.state_dict())
    for mine, theirs in ((opts[0], opts[2]), (opts[1], opts[3])):
        for p, q in zip(mine.param_groups[0]["params"], theirs.param_groups[0]["params"]):
            assert all(torch.equal(mine.state[p][k], theirs.state[q][k]) for k in ("exp_avg", "exp_avg_sq"))


def test_dcgan_step_changes_both_networks():
    torch.manual_seed(0)
    G, D = build_models(16, 8, 8, (16, 16))
    before = [copy.deepcopy(m.state_dict()) for m in (G, D)]
    optG, optD = (torch.optim.Adam(m.parameters(), lr=0.002, betas=(0.5, 0.999)) for m in (G, D))
    st = T.dcgan_step(G, D, optG, optD, torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 16, 1, 1))
    assert st.loss_d.shape == st.loss_g.shape == () and st.d_x.shape == st.d_g_z.shape == (4,)
    assert ((st.d_x > 0) & (st.d_x < 1)).all()
    assert not state_equal(before[0], G.state_dict()) and not state_equal(before[1], D.state_dict())


# -------------------------------------------------------------------------- the step
def test_outputs_per_epoch(tmp_path):
    run, cache = make_run(tmp_path)
    res = T.train_dcgan(run, cache, tiny(), progress=False)
    tdir = run / "train"
    df = pd.read_csv(tdir / "losses.csv")
    assert list(df.columns) == T.LOSS_COLUMNS
    assert df["epoch"].tolist() == [1, 2]
    assert np.isfinite(df.drop(columns="epoch").to_numpy()).all()
    assert ((df[["d_x", "d_g_z"]] > 0) & (df[["d_x", "d_g_z"]] < 1)).all().all()
    for e in (1, 2):
        png = tdir / f"samples/epoch_{e:03d}.png"
        assert png.exists() and (tdir / f"checkpoints/epoch_{e:03d}.pt").exists()
        tiles = read_grid(png, 16, 16, 16, 4)
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
    T.train_dcgan(r1, c1, tiny(), progress=False)
    T.train_dcgan(r2, c2, tiny(), progress=False)
    T.train_dcgan(r3, c3, tiny(seed=1), progress=False)
    assert_same_training(r1, r2)
    assert not state_equal(weights(r1)["G"], weights(r3)["G"])


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    ref, c_ref = make_run(tmp_path, "ref")
    T.train_dcgan(ref, c_ref, tiny(epochs=3), progress=False)

    run, cache = make_run(tmp_path, "crash")
    real_save = T.save_grid

    def crash_in_epoch_3(images, path, *a, **k):
        if Path(path).name == "epoch_003.png":
            raise KeyboardInterrupt("simulated interruption")
        return real_save(images, path, *a, **k)

    monkeypatch.setattr(T, "save_grid", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        T.train_dcgan(run, cache, tiny(epochs=3), progress=False)
    monkeypatch.setattr(T, "save_grid", real_save)
    assert run.record("train")["status"] == "running"
    assert weights(run)["epoch"] == 2
    torch.manual_seed(1234), np.random.seed(99)  # what the process did in between must not matter
    res = T.train_dcgan(run, cache, tiny(epochs=3), progress=False)
    assert res["resumed_from"] == 2 and res["epochs"] == 3
    assert_same_training(ref, run)

    # the check can fail: a resume that does not restore the random states is not exact
    broken, c_broken = make_run(tmp_path, "broken")
    T.train_dcgan(broken, c_broken, tiny(epochs=2), progress=False)
    monkeypatch.setattr(T, "restore_rng", lambda *a, **k: None)
    T.train_dcgan(broken, c_broken, tiny(epochs=3), progress=False, overwrite=True)
    with pytest.raises(AssertionError):
        assert_same_training(ref, broken)


def test_update_ema_is_the_moving_average():
    G, _ = build_models(8, 4, 4, (16, 16))
    G_ema = copy.deepcopy(G)
    before = {k: v.clone() for k, v in G_ema.state_dict().items()}
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G(torch.randn(3, 8, 1, 1))  # train mode: the BatchNorm running statistics move
    update_ema(G_ema, G, 0.9)
    now, new = G_ema.state_dict(), G.state_dict()
    for k, v in now.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * new[k], atol=1e-6), k
        else:
            assert torch.equal(v, new[k]), k
    assert not torch.equal(now["main.0.weight"], new["main.0.weight"])


def test_ema_generator_is_saved_resumed_and_loaded(tmp_path):
    """With ema_decay, the checkpoint holds the average of G, which load_models returns (what the
    mapping uses); an interrupted training resumes it exactly; ema_decay=0 keeps the plain G."""
    ref, c_ref = make_run(tmp_path, "ref")
    T.train_dcgan(ref, c_ref, tiny(epochs=2, ema_decay=0.9), progress=False)
    ckpt = weights(ref)
    assert ckpt["config"]["ema_decay"] == 0.9
    assert not state_equal(ckpt["G_ema"], ckpt["G"])
    G, _, meta = C.load_models(ref)
    assert meta["ema"] and state_equal(G.state_dict(), ckpt["G_ema"])

    run, cache = make_run(tmp_path, "resumed")
    T.train_dcgan(run, cache, tiny(epochs=1, ema_decay=0.9), progress=False)
    T.train_dcgan(run, cache, tiny(epochs=2, ema_decay=0.9), progress=False, overwrite=True)
    assert_same_training(ref, run)

    plain, c_plain = make_run(tmp_path, "plain")
    T.train_dcgan(plain, c_plain, tiny(epochs=2), progress=False)
    assert "G_ema" not in weights(plain) and not C.load_models(plain)[2]["ema"]
    # the same updates of G with or without its average
    assert state_equal(weights(plain)["G"], ckpt["G"])


def test_more_epochs_continue_exactly(tmp_path):
    ref, c_ref = make_run(tmp_path, "ref")
    T.train_dcgan(ref, c_ref, tiny(epochs=2), progress=False)
    run, cache = make_run(tmp_path, "ext")
    T.train_dcgan(run, cache, tiny(epochs=1), progress=False)
    res = T.train_dcgan(run, cache, tiny(epochs=2), progress=False, overwrite=True)
    assert res["resumed_from"] == 1
    assert_same_training(ref, run)
    assert pd.read_csv(run / "train/losses.csv")["epoch"].tolist() == [1, 2]


def test_memmap_data_path_gives_the_same_training(tmp_path):
    r1, c1 = make_run(tmp_path, "a")
    r2, c2 = make_run(tmp_path, "b")
    T.train_dcgan(r1, c1, tiny(epochs=1), progress=False, data_mode="device")
    res = T.train_dcgan(r2, c2, tiny(epochs=1), progress=False, data_mode="memmap")
    assert res["data_mode"] == "memmap"
    assert_same_training(r1, r2)


def test_done_step_is_not_redone_and_other_params_raise(tmp_path):
    run, cache = make_run(tmp_path)
    T.train_dcgan(run, cache, tiny(epochs=1), progress=False)
    last = run / "train/checkpoints/last.pt"
    stamp = last.stat().st_mtime_ns
    res = T.train_dcgan(run, cache, tiny(epochs=1), progress=False)
    assert res["skipped"] and res["epochs"] == 1 and last.stat().st_mtime_ns == stamp
    with pytest.raises(RunFolderError, match="lr"):
        T.train_dcgan(run, cache, tiny(epochs=1, lr=0.0005), progress=False)
    assert last.stat().st_mtime_ns == stamp  # nothing was touched
    res = T.train_dcgan(run, cache, tiny(epochs=1, lr=0.0005), progress=False, overwrite=True)
    assert not res["skipped"] and res["resumed_from"] == 0  # other lr: trained afresh


def test_needs_prep_step(tmp_path):
    run = RunDir(tmp_path / "run")
    cache = write_tiny_cache(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match="prep"):
        T.train_dcgan(run, cache, tiny(), progress=False)


def test_last_batch_of_one_is_dropped_others_kept():
    def sizes(n, bs):
        data = SliceBatches(np.zeros((n, 8, 8), np.float32), np.arange(n), torch.device("cpu"), bs)
        assert len(data) == len(data.split(torch.arange(n)))
        return [len(b) for b in data.split(torch.arange(n))]

    assert sizes(13, 4) == [4, 4, 4]
    assert sizes(14, 4) == [4, 4, 4, 2]
    assert sizes(12, 4) == [4, 4, 4]
    assert sizes(3, 8) == [3]


def test_batches_are_the_same_in_every_data_mode():
    images = np.random.default_rng(0).standard_normal((11, 8, 8)).astype(np.float32)
    rows, perm = np.arange(1, 11), torch.randperm(10, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    dev, mm = (SliceBatches(images, rows, cpu, 4, mode) for mode in ("device", "memmap"))
    assert dev.mode == "device" and mm.mode == "memmap"
    for a, b, idx in zip(dev.epoch(perm), mm.epoch(perm), dev.split(perm)):
        assert a.shape == (len(idx), 1, 8, 8) and torch.equal(a, b)
        assert torch.equal(a[:, 0], torch.from_numpy(images[rows[idx.numpy()]]))


def test_load_models_and_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glio_kit.figures import training as F

    run, cache = make_run(tmp_path, size=(16, 12))  # non-square
    T.train_dcgan(run, cache, tiny(epochs=3), progress=False)
    assert T.load_models is C.load_models  # re-exported where scoring and the benchmarks import it
    G, D, meta = C.load_models(run)
    assert not G.training and not D.training and meta["epoch"] == 3
    with torch.no_grad():
        x = G(torch.randn(2, 16))
    assert x.shape == (2, 1, 16, 12) and D(x).shape == (2,)
    fig = F.plot_figure3(run, n=4)
    titles = [a.get_title() for a in fig.axes[:4] if a.get_title()]
    assert titles == ["epoch 1", "epoch 2", "epoch 3", "real (healthy)"]
    assert len(fig.axes) == 4 * 4
    plt.close(fig)
    fig = F.plot_figure3(run, epochs=[1, 3], n=2)
    assert len(fig.axes) == 2 * 3
    plt.close(fig)
    plt.close(F.plot_losses(run))
    plt.close(F.plot_real_vs_generated(run, cache, n=4))
    assert not list((run / "figures").glob("*.png"))  # plot functions return figures; notebooks save them
    with pytest.raises(ValueError, match="epoch"):
        F.plot_figure3(run, epochs=[7])


def test_load_models_without_training_says_so(tmp_path):
    with pytest.raises(RunFolderError, match="train"):
        C.load_models(RunDir(tmp_path / "empty"))


def test_resume_from_a_checkpoint_of_another_device(tmp_path, monkeypatch):
    """A checkpoint written on a GPU resumes on the CPU: the noise generator's state cannot
    carry over (another generator type), so it is reseeded, with a warning."""
    run, cache = make_run(tmp_path)
    T.train_dcgan(run, cache, tiny(epochs=1), progress=False)
    last = run / "train/checkpoints/last.pt"
    ck = torch.load(last, map_location="cpu", weights_only=True)
    ck["rng"]["noise_device"] = "cuda"
    ck["rng"]["noise"] = torch.zeros(16, dtype=torch.uint8)  # a Philox state
    ck["device"] = "cuda"
    torch.save(ck, last)
    with pytest.warns(UserWarning, match="noise stream"):
        res = T.train_dcgan(run, cache, tiny(epochs=2), progress=False, overwrite=True)
    assert res["resumed_from"] == 1 and res["epochs"] == 2


def test_fixed_samples_change_nothing_in_the_model():
    G, _ = build_models(16, 8, 8, (16, 16))
    G.eval()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    s = fixed_samples(G, torch.randn(6, 16, 1, 1))
    assert s.shape == (6, 16, 16) and s.std() > 0.01  # batch statistics: not a flat grey
    assert not G.training and state_equal(before, G.state_dict())


def test_compare_learning_rates_trains_in_memory(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glio_kit.figures.training import plot_learning_rates
    from glio_kit.gan.lr_comparison import compare_learning_rates

    run, cache = make_run(tmp_path)
    files_before = sorted(p.name for p in (run.path).rglob("*"))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    cmp = compare_learning_rates(cache, tiny(), lrs=(0.0002, 0.002), epochs=2, n=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # global random state put back
    assert sorted(p.name for p in (run.path).rglob("*")) == files_before  # nothing written
    h = cmp.histories
    assert list(h) == [0.0002, 0.002] and all(len(df) == 2 for df in h.values())
    assert all(x.shape == (4, 16, 16) for x in cmp.samples.values()) and cmp.epochs == 2
    assert not np.allclose(h[0.0002]["loss_g"], h[0.002]["loss_g"])
    # at the kit's lr, the side run is the real training's first epochs (same weights, batches, noise)
    T.train_dcgan(run, cache, tiny(), progress=False)
    cols = ["loss_d", "loss_g", "d_x", "d_g_z"]
    assert np.allclose(T.read_losses(run)[cols].to_numpy(), h[tiny().lr][cols].to_numpy(), rtol=1e-9, atol=0)
    fig = plot_learning_rates(cmp)
    assert len(fig.axes) == 2 + 2 * 4
    plt.close(fig)

"""Latent mapping: batched == one at a time, the optimised z, frozen BatchNorm, restarts, encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glio_kit.run.config import ScoreSettings
from glio_kit.detect.encoder import Encoder
from glio_kit.detect.mapping import (MappingResult, encode, frozen, initial_latents, map_iterative,
                                     map_slices, mapping_loss)
from glio_kit.detect.slice_scores import ScoreScaling, anomaly_score, fit_scaling
from glio_kit.gan.model import Discriminator, Generator, weights_init

LATENT = 16
SIZE = (16, 16)


def tiny_models(size=SIZE, dtype=torch.float64, seed=0):
    """A tiny G and D with BatchNorm whose running statistics are not the defaults."""
    torch.manual_seed(seed)
    G, D = Generator(LATENT, 8, size), Discriminator(8, size)
    G.apply(weights_init), D.apply(weights_init)
    G.train(), D.train()
    with torch.no_grad():  # a few train-mode passes: running mean/var move away from 0/1
        for _ in range(3):
            D(G(torch.randn(8, LATENT)))
    G.eval(), D.eval()
    return G.to(dtype), D.to(dtype)


def targets(G, n=6, seed=1):
    """Images G can almost make (from other latents) plus noise: a real search problem."""
    g = torch.Generator().manual_seed(seed)
    p = next(G.parameters())
    with torch.no_grad():
        x = G(2 * torch.randn(n, LATENT, generator=g).to(p.dtype))
    return (x + 0.05 * torch.randn(x.shape, generator=g).to(p.dtype)).clamp(-1, 1)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_mapping_equals_one_at_a_time(dtype):
    G, D = tiny_models(dtype=dtype)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x = targets(G)
    z0 = initial_latents(len(x), LATENT, seed=3)[0]
    batched = map_iterative(G, D, x, steps=20, lam=0.1, lr=0.05, z0=z0)
    alone = [map_iterative(G, D, x[i:i + 1], steps=20, lam=0.1, lr=0.05, z0=z0[i:i + 1])
             for i in range(len(x))]
    loss = torch.cat([r.loss for r in alone])
    z = torch.cat([r.z for r in alone])
    assert rel(batched.loss, loss) < 1e-4
    assert rel(batched.z, z) < 1e-4
    assert rel(batched.history, torch.cat([r.history for r in alone], 1)) < 1e-4
    # and the search really moved: z is not z0
    assert (batched.z - z0.to(batched.z.dtype)).abs().max() > 0.1


def test_batching_in_chunks_changes_nothing():
    G, D = tiny_models()
    x = targets(G, n=7)
    whole = map_iterative(G, D, x, steps=10, seed=5)
    chunks = map_iterative(G, D, x, steps=10, seed=5, batch_size=3)
    assert rel(chunks.loss, whole.loss) < 1e-10 and rel(chunks.z, whole.z) < 1e-10


def test_equivalence_test_is_sensitive_to_train_mode_batchnorm():
    """The check above can fail: with BatchNorm in *train* mode (batch statistics) the batch
    mixes its slices, and the per-slice losses differ from the slices alone."""
    G, D = tiny_models()
    x = targets(G)
    z = initial_latents(len(x), LATENT, seed=3)[0].double()
    G.train(), D.train()
    with torch.no_grad():
        fx = D.features(x)
        lb = mapping_loss(G, D, x, fx, z, 0.1)[0]
        la = torch.cat([mapping_loss(G, D, x[i:i + 2], fx[i:i + 2], z[i:i + 2], 0.1)[0][:1]
                        for i in range(len(x) - 1)])
    assert rel(lb[:-1], la) > 1e-4


# ---------------------------------------------------------------- the optimised z
def test_z_is_a_leaf_on_the_device_with_fresh_gradients_each_step():
    G, D = tiny_models()
    x = targets(G, n=3)
    seen = []
    with torch.no_grad():
        fx = D.features(x)

    def check(step, z, loss):
        assert z.is_leaf and z.requires_grad
        assert z.device == next(G.parameters()).device and z.dtype == torch.float64
        assert z.grad is not None and z.grad.abs().sum() > 0
        # the gradient is this step's alone: recompute it from scratch at the same z
        z2 = z.detach().clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(mapping_loss(G, D, x, fx, z2, 0.1)[0].sum(), z2)
        seen.append(rel(z.grad, g2))

    map_iterative(G, D, x, steps=6, callback=check)
    assert len(seen) == 6 and max(seen) < 1e-8

    # what the check catches: without zero_grad the .grad of step 2 is the sum of two steps
    z = initial_latents(3, LATENT, seed=0)[0].double().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    with frozen(G, D):
        for _ in range(2):
            mapping_loss(G, D, x, fx, z, 0.1)[0].sum().backward()
            opt.step()
        z2 = z.detach().clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(mapping_loss(G, D, x, fx, z2, 0.1)[0].sum(), z2)
        mapping_loss(G, D, x, fx, z, 0.1)[0].sum().backward()
    assert rel(z.grad, g2) > 1e-3


def test_loss_decreases():
    G, D = tiny_models()
    x = targets(G)
    res = map_iterative(G, D, x, steps=20, lr=0.05, seed=0)
    h = res.history
    assert h.shape == (21, len(x))
    assert torch.equal(h[-1], res.loss)
    assert (h[-1] < h[0]).all()
    # an image G can make exactly (no noise): the search gets most of the way there
    with torch.no_grad():
        x = G(torch.randn(6, LATENT, generator=torch.Generator().manual_seed(1)).double())
    h = map_iterative(G, D, x, steps=60, lr=0.05, seed=0).history.mean(1)
    assert h[-1] < 0.3 * h[0]
    assert (h[10:].diff() <= 1e-9 * h[0]).float().mean() > 0.8  # decreasing, monotonically-ish


def test_models_frozen_and_restored():
    G, D = tiny_models()
    x = targets(G)
    G.train(), D.train()  # a caller may hand over models in train mode
    before = {k: v.clone() for k, v in {**{"G" + k: v for k, v in G.state_dict().items()},
                                          **{"D" + k: v for k, v in D.state_dict().items()}}.items()}
    res = map_iterative(G, D, x, steps=5)
    after = {**{"G" + k: v for k, v in G.state_dict().items()},
             **{"D" + k: v for k, v in D.state_dict().items()}}
    assert before.keys() == after.keys()
    for k in before:  # weights and BatchNorm running_mean / running_var / num_batches_tracked
        assert torch.equal(before[k], after[k]), k
    assert G.training and D.training  # modes restored
    assert all(p.requires_grad for p in G.parameters()) and all(p.requires_grad for p in D.parameters())
    assert all(p.grad is None for p in G.parameters()) and all(p.grad is None for p in D.parameters())
    assert res.gz.shape == (6, 1, *SIZE)


def test_result_fields_and_snapshots():
    G, D = tiny_models()
    x = targets(G, n=4)
    z0 = initial_latents(4, LATENT, seed=2)[0]
    res = map_iterative(G, D, x[:, 0].numpy(), steps=8, z0=z0, record_steps=(0, 3, 8))
    assert isinstance(res, MappingResult)
    assert res.z.shape == (4, LATENT) and res.gz.shape == (4, 1, *SIZE)
    assert res.loss.shape == res.R.shape == res.D.shape == (4,)
    assert sorted(res.snapshots) == [0, 3, 8]
    with torch.no_grad():
        assert torch.allclose(res.snapshots[0], G.eval()(z0.double()))
    assert torch.equal(res.snapshots[8], res.gz)
    # R and D are means; loss the sums
    npx, nft = x[0].numel(), D.features(x[:1]).numel()
    assert torch.allclose(res.loss, 0.9 * res.R * npx + 0.1 * res.D * nft)
    assert torch.allclose(res.R, (x - res.gz).abs().flatten(1).mean(1))


def test_anomaly_score_is_the_papers_weighting():
    R, D = np.array([0.2, 0.4]), np.array([1.0, 3.0])
    assert np.allclose(anomaly_score(R, D, 0.1), 0.9 * R + 0.1 * D)
    assert np.array_equal(anomaly_score(R, D, 0.0), R) and np.array_equal(anomaly_score(R, D, 1.0), D)
    assert torch.is_tensor(anomaly_score(torch.tensor(R), torch.tensor(D), 0.1))  # NumPy or torch


def test_seeded_starts_repeat():
    G, D = tiny_models()
    x = targets(G, n=3)
    a = map_iterative(G, D, x, steps=4, seed=7)
    b = map_iterative(G, D, x, steps=4, generator=torch.Generator().manual_seed(7))
    c = map_iterative(G, D, x, steps=4, seed=8)
    assert torch.equal(a.z, b.z)
    assert not torch.equal(a.z, c.z)


def test_restarts_keep_the_best():
    G, D = tiny_models()
    x = targets(G, n=5)
    z0 = initial_latents(5, LATENT, restarts=3, seed=4)
    best = map_iterative(G, D, x, steps=10, z0=z0, restarts=3)
    each = [map_iterative(G, D, x, steps=10, z0=z0[r]) for r in range(3)]
    losses = torch.stack([r.loss for r in each])  # (3, N)
    assert rel(best.loss, losses.min(0).values) < 1e-8
    assert torch.equal(best.restart, losses.argmin(0))
    zs = torch.stack([r.z for r in each])
    assert rel(best.z, zs[losses.argmin(0), torch.arange(5)]) < 1e-8
    assert (best.loss <= each[0].loss + 1e-9).all()
    assert len(set(best.restart.tolist())) > 1  # the test would notice "always the first start"


def test_zero_steps_evaluates_the_start():
    G, D = tiny_models()
    x = targets(G, n=2)
    z0 = initial_latents(2, LATENT, seed=1)[0]
    res = map_iterative(G, D, x, steps=0, z0=z0)
    assert torch.equal(res.z, z0.double()) and res.history.shape == (1, 2)


# ---------------------------------------------------------------------- encoder
def test_encoder_shapes_square_and_not():
    for size in [(16, 16), (24, 20), (32, 32)]:
        E = Encoder(LATENT, 8, size)
        x = torch.rand(3, 1, *size) * 2 - 1
        assert E(x).shape == (3, LATENT)
        assert E(x[:, 0]).shape == (3, LATENT)
        with pytest.raises(ValueError):
            E(torch.zeros(2, 1, size[0] + 1, size[1]))


def test_map_slices_modes():
    G, D = tiny_models()
    E = Encoder(LATENT, 8, SIZE).double().eval()
    x = targets(G, n=4)
    s = ScoreSettings(mapping="encoder", mapping_steps=5, mapping_lr=0.05, lam=0.1, restarts=2,
                      mapping_batch_size=64, seed=0)
    enc = map_slices(G, D, x, s, E=E)
    ze = encode(E, x)
    assert torch.allclose(enc.z, ze.double()) and enc.history.shape == (1, 4)
    both = map_slices(G, D, x, s.replace(mapping="encoder+iterative", restarts=1), E=E)
    assert both.history.shape == (6, 4)
    assert torch.allclose(both.history[0], enc.loss)  # the search starts at E(x)
    assert (both.loss <= enc.loss + 1e-9).all()
    # iterative: the same as map_iterative with the settings' knobs
    it = map_slices(G, D, x, s.replace(mapping="iterative", restarts=1))
    assert torch.equal(it.z, map_iterative(G, D, x, 5, lam=0.1, lr=0.05, seed=0).z)
    with pytest.raises(ValueError):
        map_slices(G, D, x, s, E=None)
    with pytest.raises(ValueError, match="mapping"):
        s.replace(mapping="nonsense")


# ---------------------------------------------------------------------- scaling
def test_scaling_is_monotone_inside_unit_interval():
    rng = np.random.default_rng(0)
    val = rng.normal(1.0, 0.1, 50)
    s = fit_scaling(val)
    assert isinstance(s, ScoreScaling)
    assert s.mean_val == pytest.approx(val.mean()) and s.sd_val == pytest.approx(val.std(ddof=1))
    a = np.array([-5.0, 0.5, 1.0, 1.2, 2.0, 3.0, 50.0])
    out = s(a)
    assert np.all(np.diff(out) > 0) or np.all(np.diff(out[:-1]) > 0)  # order kept (until float saturation)
    assert np.all(np.diff(out) >= 0)
    assert s(s.mean_val) == pytest.approx(0.5)
    assert np.all((out >= 0) & (out <= 1))
    assert s(np.array([2.0, 3.0]))[0] < s(np.array([2.0, 3.0]))[1]  # far above the val range: still ranked
    with pytest.raises(ValueError):
        fit_scaling([])
    flat = fit_scaling([2.0, 2.0, 2.0])  # degenerate: still finite and monotone
    assert np.isfinite(flat.sd_val) and flat.sd_val > 0


# ------------------------------------------------------------- the mapping methods
def test_mapping_methods_table_decides_steps_starts_and_encoder():
    """One table says how many steps each method takes and what it needs trained; the config's
    choices are its names, and map_slices maps by it (history rows = steps + 1)."""
    from glio_kit.detect.mapping import MAPPING_METHODS, mapping_method
    from glio_kit.run.config import MAPPINGS

    assert tuple(MAPPING_METHODS) == MAPPINGS
    s = ScoreSettings(mapping_steps=5, restarts=3, mapping_lr=0.05, lam=0.1, mapping_batch_size=64, seed=0)
    got = {name: (m.steps(s), m.restarts(s), m.trained) for name, m in MAPPING_METHODS.items()}
    assert got == {"iterative": (5, 3, ("G", "D")), "encoder": (0, 1, ("G", "D", "E")),
                   "encoder+iterative": (5, 3, ("G", "D", "E"))}
    assert [m.name for m in MAPPING_METHODS.values() if m.paper] == ["iterative"]
    G, D = tiny_models()
    E = Encoder(LATENT, 8, SIZE).double().eval()
    x = targets(G, n=3)
    for name, method in MAPPING_METHODS.items():
        res = map_slices(G, D, x, s.replace(mapping=name), E=E if method.needs_encoder else None)
        assert res.history.shape == (method.steps(s) + 1, 3), name
        assert int(res.restart.max()) < method.restarts(s)
    with pytest.raises(ValueError, match="mapping must be one of"):
        mapping_method("nonsense")

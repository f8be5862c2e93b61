"""Checks of the DCGAN update (notebook 02) and of the latent-mapping loop (notebook 03).

The reference is the library itself: :func:`glio_kit.gan.train.dcgan_step` on copies of the
same networks, and :func:`glio_kit.detect.mapping.map_iterative` from the same start.
"""
from __future__ import annotations

import copy

import torch

from . import library as lib
from .checks import ExerciseError, as_array, call, compare, passed, tiny_models

__all__ = ["check_d_step", "check_g_step", "check_map_latent"]


def _setup(seed: int = 0, b: int = 4):
    """Small G, D, their Adam optimisers (the DCGAN's betas), a real batch and noise."""
    G, D = tiny_models(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    real = torch.rand(b, 1, *D.image_size, generator=gen) * 2 - 1
    z = torch.randn(b, G.latent_dim, 1, 1, generator=gen)
    return G, D, real, z


def _adam(m: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(m.parameters(), lr=2e-3, betas=(0.5, 0.999))


def _stale_grads(m: torch.nn.Module, seed: int) -> None:
    """Gradients left over from an earlier backward pass (in training, G's step leaves some in D)."""
    gen = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.allclose(p, q, rtol=1e-4, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def _reference(seed: int):
    """The library's whole DCGAN update on copies: (G, D, real, z, G_after, D_after, stats)."""
    G, D, real, z = _setup(seed)
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    stats = lib.dcgan_step(G2, D2, _adam(G2), _adam(D2), real, z)
    return G, D, real, z, G2, D2, stats


def check_d_step(d_step) -> None:
    """Check ``d_step(D, opt_D, real, fake)`` -> the discriminator loss (a scalar tensor).

    It must update D once on real slices labelled 1 and ``fake = G(z)`` labelled 0 (binary
    cross-entropy on D's logits, :data:`glio_kit.gan.train.BCE`), without sending gradients
    into G. Compared with the D half of :func:`glio_kit.gan.train.dcgan_step`.
    """
    G, D, real, z, _, D_ref, stats = _reference(seed=0)
    opt_D = _adam(D)
    fake = G(z)
    _stale_grads(D, seed=9)
    before = copy.deepcopy(D)
    loss_d = call(d_step, D, opt_D, real, fake, name="d_step")
    if any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters()):
        raise ExerciseError("d_step sent gradients into G: the D step must not train the generator; "
                            "feed D with fake.detach().")
    bce = lib.BCE
    with torch.no_grad():
        out_real, out_fake = before(real), before(fake)
        ones, zeros = torch.ones_like(out_real), torch.zeros_like(out_real)
        compare(loss_d, stats.loss_d, "d_step", "the loss it returns", alternatives=(
                    (bce(out_real, zeros) + bce(out_fake, ones),
                     "the labels are swapped: real slices are labelled 1, generated ones 0."),
                    (bce(torch.sigmoid(out_real), ones) + bce(torch.sigmoid(out_fake), zeros),
                     "D returns logits and BCE applies the sigmoid itself: do not apply it twice."),
                    (bce(out_real, ones), "the loss misses the generated slices: add BCE(D(fake), 0)."),
                    (bce(out_fake, zeros), "the loss misses the real slices: add BCE(D(real), 1)."),
                ), rtol=1e-4)
    if _same_weights(D, before):
        raise ExerciseError("d_step returned the right loss but D's weights did not change: call "
                            "loss.backward() and opt_D.step().")
    if not _same_weights(D, D_ref):
        raise ExerciseError("d_step's loss is right but D's update differs from the library's: zero the old "
                            "gradients (opt_D.zero_grad()) before loss.backward(), then opt_D.step() once.")
    passed("d_step", 2)


def check_g_step(g_step) -> None:
    """Check ``g_step(D, opt_G, fake)`` -> the generator loss (a scalar tensor).

    After D's update, G is updated with the non-saturating loss: ``fake = G(z)`` labelled
    real (1). Compared with the G half of :func:`glio_kit.gan.train.dcgan_step`, with D
    given the weights the library's D step produced.
    """
    G, D, real, z, G_ref, D_ref, stats = _reference(seed=1)
    D.load_state_dict(D_ref.state_dict())
    opt_G = _adam(G)
    fake = G(z)
    _stale_grads(G, seed=8)
    before = copy.deepcopy(G)
    with torch.no_grad():
        out = copy.deepcopy(D)(fake)
    loss_g = call(g_step, D, opt_G, fake, name="g_step")
    bce = lib.BCE
    compare(loss_g, stats.loss_g, "g_step", "the loss it returns",
            alternatives=(
                (bce(out, torch.zeros_like(out)), "the G step labels the generated slices as real (1): "
                                                  "the non-saturating loss maximises log D(G(z))."),
                (-bce(out, torch.zeros_like(out)), "minimising -BCE(D(G(z)), 0) is the saturating loss; "
                                                   "use BCE(D(G(z)), 1)."),
            ), rtol=1e-4)
    if _same_weights(G, before):
        raise ExerciseError("g_step did not change G's weights: backpropagate through fake (do not detach "
                            "it here) and call opt_G.step().")
    if not _same_weights(G, G_ref):
        raise ExerciseError("g_step's loss is right but G's update differs from the library's: zero the old "
                            "gradients (opt_G.zero_grad()) before loss.backward().")
    passed("g_step", 2)


def _states(G: torch.nn.Module, D: torch.nn.Module) -> dict:
    """Copies of every weight and BatchNorm statistic of G and D."""
    return {f"{n}.{k}": v.clone() for n, m in (("G", G), ("D", D)) for k, v in m.state_dict().items()}


def check_map_latent(map_latent) -> None:
    """Check ``map_latent(G, D, x, z0, steps, lam, lr)`` -> the mapped latents z (N, latent_dim).

    The AnoGAN search: G and D frozen (eval mode, no weight gradients), ``z`` a copy of
    ``z0`` optimised by Adam(lr) on the summed per-slice loss ``(1 - lam) * L_R + lam * L_D``.
    Compared with :func:`glio_kit.detect.mapping.map_iterative` after 0, 1 and 6 steps.
    """
    G, D = tiny_models(seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, 1, *D.image_size, generator=gen) * 2 - 1
    z0 = torch.randn(3, G.latent_dim, generator=gen)
    state = _states(G, D)
    for steps in (0, 1, 6):
        ref = lib.map_iterative(G, D, x, steps, lam=0.1, lr=0.05, z0=z0.clone()).z
        z_in = z0.clone()
        got = call(map_latent, G, D, x.clone(), z_in, steps, 0.1, 0.05, name="map_latent")
        if not torch.equal(z_in, z0):
            raise ExerciseError("map_latent changed z0 in place: optimise a copy, "
                                "z = z0.clone().requires_grad_(True).")
        after = _states(G, D)
        if any(not torch.equal(after[k], v) for k, v in state.items()):
            raise ExerciseError("map_latent changed G's or D's BatchNorm statistics: map with both networks "
                                "in eval mode (`with frozen(G, D):` does it).")
        if any(p.grad is not None for m in (G, D) for p in m.parameters()):
            raise ExerciseError("gradients reached G's or D's weights: freeze them (`with frozen(G, D):`) so "
                                "that only z is optimised.")
        hint = {0: "with steps=0 z must be z0 itself.",
                1: "already the first step differs: the loss is (1 - lam) * L_R + lam * L_D summed over "
                   "the batch, with f(x) = D.features(x), and Adam(lr) on z alone.",
                6: "the first step matches but later ones do not: zero the gradients every step "
                   "(opt.zero_grad()) and recompute G(z) inside the loop."}[steps]
        g = as_array(got, "map_latent")
        if g.shape != tuple(ref.shape) or not torch.allclose(torch.as_tensor(g, dtype=ref.dtype), ref,
                                                              rtol=1e-3, atol=1e-4):
            raise ExerciseError(f"map_latent after {steps} step(s): expected z of shape {tuple(ref.shape)} "
                                f"equal to the library's, got shape {g.shape}; {hint}")
    passed("map_latent", 3)

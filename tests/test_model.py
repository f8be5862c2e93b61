"""DCGAN generator and discriminator: shapes for every size, padding, features, initialisation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from glio_kit.gan.model import (Discriminator, Generator, build_models, model_summary, stack_geometry,
                                weights_init)

CONVS = (nn.Conv2d, nn.ConvTranspose2d)
SIZES = [((32, 32), 16), ((64, 64), 16), ((128, 128), 8), ((448, 364), 4)]  # (H, W), width


@pytest.mark.parametrize("hw,width", SIZES)
def test_shapes(hw, width):
    torch.manual_seed(0)
    G, D = Generator(100, width, hw), Discriminator(width, hw)
    G.apply(weights_init), D.apply(weights_init)
    z = torch.randn(3, 100)
    x = G(z)
    assert x.shape == (3, 1, *hw)
    assert torch.equal(G(z[:, :, None, None]), x)  # (N, latent, 1, 1) is the same latent
    assert x.min() >= -1 and x.max() <= 1  # tanh
    logits, f = D(x, return_features=True)
    assert logits.shape == (3,)
    k, bh, bw = stack_geometry(hw)
    assert f.shape == (3, D.feature_shape[0], bh, bw) and f.shape[1:] == D.feature_shape
    assert torch.equal(D.features(x), f) and torch.equal(D(x), logits)  # one pass, same answers
    assert D(torch.rand(3, *hw) * 2 - 1).shape == (3,)  # (N, H, W) accepted too


def test_geometry_examples():
    assert stack_geometry(32) == (3, 4, 4)
    assert stack_geometry(64) == (4, 4, 4)
    assert stack_geometry(128) == (5, 4, 4)
    assert stack_geometry((448, 364)) == (6, 7, 6)  # builds 448x384, keeps the centre 364 columns
    for h, w in [(16, 16), (48, 40), (100, 75), (448, 364), (364, 448)]:
        k, bh, bw = stack_geometry((h, w))
        assert bh * 2**k >= h and bw * 2**k >= w and (bh - 1) * 2**k < h and (bw - 1) * 2**k < w
        assert Generator(16, 4, (h, w))(torch.randn(2, 16)).shape == (2, 1, h, w)


def test_channel_cap_keeps_paper_size_reasonable():
    G, D = Generator(100, 64, (448, 364)), Discriminator(64, (448, 364))
    convs = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, CONVS)]
    assert max(max(m.in_channels, m.out_channels) for m in convs) <= 8 * 64
    s = model_summary(G, D)
    assert s["g_output"] == [1, 1, 448, 364] and s["stack_size"] == [448, 384]
    assert s["d_features"] == [1, 512, 7, 6] and s["d_output"] == [1]
    assert 1e6 < s["g_params"] < 3e7 and 1e6 < s["d_params"] < 3e7


def test_dcgan_layout_at_64():
    """The 64x64 model is exactly PyTorch's DCGAN example (ngf*8 .. ngf, ndf .. ndf*8)."""
    G, D = Generator(100, 64, 64), Discriminator(64, 64)
    g = [(m.in_channels, m.out_channels) for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    d = [(m.in_channels, m.out_channels) for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert g == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 1)]
    assert d == [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert not isinstance(D.blocks[1], nn.BatchNorm2d)  # no BatchNorm after the first conv
    assert isinstance(D.blocks[3], nn.BatchNorm2d)
    # the example's netG / netD with nc=1: conv weights (k=4) + BatchNorm weight and bias
    n_g = 16 * (100 * 512 + 512 * 256 + 256 * 128 + 128 * 64 + 64) + 2 * 960
    n_d = 16 * (64 + 64 * 128 + 128 * 256 + 256 * 512 + 512) + 2 * 896
    assert sum(p.numel() for p in G.parameters()) == n_g
    assert sum(p.numel() for p in D.parameters()) == n_d


def test_discriminator_pads_with_background():
    """Padding to the stack's size uses -1: an image equals its explicitly padded version."""
    D = Discriminator(4, (448, 364))
    assert D.pad == (10, 10, 0, 0)
    D.apply(weights_init)
    D.eval()
    x = torch.rand(2, 1, 448, 364) * 2 - 1
    padded = nn.functional.pad(x, (10, 10, 0, 0), value=-1.0)
    assert torch.allclose(D.blocks(padded), D.features(x), atol=0)
    assert not torch.allclose(D.blocks(nn.functional.pad(x, (10, 10, 0, 0), value=0.0)), D.features(x))


def test_discriminator_rejects_other_sizes():
    D = Discriminator(4, (64, 64))
    with pytest.raises(ValueError, match="64"):
        D(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError):
        D(torch.zeros(2, 3, 64, 64))


def test_weights_init_statistics():
    torch.manual_seed(0)
    G, D = Generator(100, 64, 64), Discriminator(64, 64)
    G.apply(weights_init), D.apply(weights_init)
    for net in (G, D):
        conv = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, CONVS)])
        bn_w = torch.cat([m.weight for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
        bn_b = torch.cat([m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
        assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 1e-3
        assert abs(bn_w.mean().item() - 1) < 5e-3 and abs(bn_w.std().item() - 0.02) < 5e-3
        assert torch.count_nonzero(bn_b) == 0


def test_summary_leaves_models_as_they_were():
    G, D = Generator(16, 8, 32), Discriminator(8, 32)
    bn = G.main[1]
    before = bn.running_mean.clone()
    s = model_summary(G, D, (32, 32))
    assert G.training and D.training and torch.equal(bn.running_mean, before)
    assert s["g_output"] == [1, 1, 32, 32] and s["d_features"] == [1, 32, 4, 4] and s["latent_dim"] == 16


def test_build_models_is_seeded_and_dcgan_initialised():
    """build_models = Generator, Discriminator, then weights_init on each, from the global RNG."""
    torch.manual_seed(3)
    G, D = build_models(16, 8, 4, (16, 12))
    torch.manual_seed(3)
    G2, D2 = Generator(16, 8, (16, 12)), Discriminator(4, (16, 12))
    G2.apply(weights_init), D2.apply(weights_init)
    for a, b in ((G, G2), (D, D2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert G.latent_dim == 16 and G.ngf == 8 and D.ndf == 4 and G.image_size == D.image_size == (16, 12)
    assert all(p.device.type == "cpu" for p in list(G.parameters()) + list(D.parameters()))

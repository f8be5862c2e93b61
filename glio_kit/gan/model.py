"""The DCGAN of the paper: a generator of healthy T2 slices and its discriminator.

Written to be read beside PyTorch's ``examples/dcgan/main.py`` (Radford et al. 2016):

- Generator: a latent ``z`` (N, latent_dim) seen as a 1x1 image, one transposed convolution
  to a small ``base`` image, then stride-2 transposed convolutions (kernel 4, padding 1) that
  double height and width, each followed by BatchNorm + ReLU; the last one has one output
  channel and ``tanh``, so images are in [-1, 1] like the slice cache.
- Discriminator: the mirror image: stride-2 convolutions that halve height and width, each
  followed by BatchNorm (not after the first) + LeakyReLU(0.2); a last convolution over the
  whole ``base`` image gives one logit per image. The output of the last block is ``f(x)``,
  the intermediate feature layer of the paper's discrimination loss
  ``L_D = sum |f(x) - f(G(z))|`` (AnoGAN).

Any image size works, square or not (the paper's 448x364, height x width): the stack is
built for ``base * 2**k >= size`` in each dimension (:func:`stack_geometry`), the generator
crops its output to the centre ``size``, and the discriminator pads its input back with the
background value -1. Channel counts double towards the deep end as in DCGAN, capped at
``8 * ngf`` (``8 * ndf``) so large images do not make the model huge.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Generator", "Discriminator", "weights_init", "build_models", "model_summary", "stack_geometry",
           "strided_conv_stack", "fit_input", "MAX_MULT", "BACKGROUND"]

#: Cap on the channel multiplier (DCGAN's 64x64 model uses 8 at its deep end).
MAX_MULT = 8
#: Value of the background in the slice cache; what the discriminator pads with.
BACKGROUND = -1.0


def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(s) for s in image_size)
    return h, w


def stack_geometry(image_size) -> tuple[int, int, int]:
    """``(k, base_h, base_w)``: number of stride-2 layers and the size of the smallest image.

    ``k`` is chosen so that the smaller side starts from about 4 pixels (DCGAN: 4x4 -> 64x64
    in k = 4 doublings); ``base = ceil(size / 2**k)`` per dimension, so ``base * 2**k`` covers
    the image. 32 -> (3, 4, 4); 64 -> (4, 4, 4); 128 -> (5, 4, 4); 448x364 -> (6, 7, 6),
    i.e. the stack makes 448x384 and the centre 448x364 is kept.
    """
    h, w = _hw(image_size)
    if min(h, w) < 8:
        raise ValueError(f"image_size must be at least 8x8, got {h}x{w}")
    k = max(1, int(math.floor(math.log2(min(h, w) / 4))))
    return k, math.ceil(h / 2**k), math.ceil(w / 2**k)


def _mult(i: int) -> int:
    return min(2**i, MAX_MULT)


def _crop_box(image_size) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) margins between the stack's size and ``image_size``."""
    h, w = _hw(image_size)
    k, bh, bw = stack_geometry((h, w))
    dh, dw = bh * 2**k - h, bw * 2**k - w
    return dh // 2, dh - dh // 2, dw // 2, dw - dw // 2


class Generator(nn.Module):
    """G(z): latent (N, latent_dim) or (N, latent_dim, 1, 1) -> image (N, 1, H, W) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, ngf: int = 64, image_size=(64, 64)):
        super().__init__()
        self.latent_dim, self.ngf = int(latent_dim), int(ngf)
        self.image_size = _hw(image_size)
        k, bh, bw = stack_geometry(self.image_size)
        self.crop = _crop_box(self.image_size)
        chans = [ngf * _mult(i) for i in reversed(range(k))]  # e.g. k=4: 8,4,2,1 x ngf
        layers = [
            # input is Z, going into a convolution: 1x1 -> base_h x base_w
            nn.ConvTranspose2d(latent_dim, chans[0], (bh, bw), 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            # state size c_in x h x w -> c_out x 2h x 2w
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(True)]
        # last doubling to one channel, tanh: 1 x (base_h * 2**k) x (base_w * 2**k)
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:
            z = z[:, :, None, None]
        x = self.main(z)
        t, b, left, r = self.crop
        if t or b or left or r:
            x = x[:, :, t:x.shape[2] - b, left:x.shape[3] - r]
        return x


def strided_conv_stack(width: int, image_size):
    """The discriminator's strided convolution stack, shared with the f-AnoGAN encoder.

    Kernel 4, stride 2; LeakyReLU 0.2; BatchNorm after all but the first layer; channels
    ``width * 1, 2, 4, 8 (capped)``. Its input is (N, 1, base_h * 2**k, base_w * 2**k), so
    images are padded by ``pad`` first (see :func:`fit_input`).
    Returns ``(blocks, chans, (base_h, base_w), pad)``; ``blocks`` outputs chans[-1] x base_h x base_w.
    """
    k, bh, bw = stack_geometry(image_size)
    top, bottom, left, right = _crop_box(image_size)
    pad = (left, right, top, bottom)  # F.pad order: last dim first
    chans = [width * _mult(i) for i in range(k)]  # e.g. k=4: 1,2,4,8 x width
    layers = [nn.Conv2d(1, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        # state size c_in x h x w -> c_out x h/2 x w/2
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers), chans, (bh, bw), pad


def fit_input(x: torch.Tensor, image_size, pad, who: str) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) of exactly ``image_size`` -> padded with the background value."""
    if x.dim() == 3:
        x = x[:, None]
    if tuple(x.shape[-2:]) != tuple(image_size) or x.shape[1] != 1:
        raise ValueError(f"{who} built for (N, 1, {image_size[0]}, {image_size[1]}) images, "
                         f"got {tuple(x.shape)}")
    if any(pad):
        x = F.pad(x, pad, value=BACKGROUND)
    return x


class Discriminator(nn.Module):
    """D(x): image (N, 1, H, W) -> logit (N,); ``features(x)`` is f(x) of the paper's loss."""

    def __init__(self, ndf: int = 64, image_size=(64, 64)):
        super().__init__()
        self.ndf = int(ndf)
        self.image_size = _hw(image_size)
        self.blocks, chans, (bh, bw), self.pad = strided_conv_stack(self.ndf, self.image_size)  # f(x)
        self.classifier = nn.Conv2d(chans[-1], 1, (bh, bw), 1, 0, bias=False)  # -> 1 x 1 x 1
        self.feature_shape = (chans[-1], bh, bw)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        return fit_input(x, self.image_size, self.pad, "Discriminator")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the output of the last block before the logit, (N, C, base_h, base_w)."""
        return self.blocks(self._check(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (N,) and, with ``return_features``, also f(x) from the same pass."""
        f = self.features(x)
        logits = self.classifier(f).reshape(-1)
        return (logits, f) if return_features else logits


def weights_init(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0.

    Use as ``G.apply(weights_init)``.
    """
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias.data, 0)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def build_models(latent_dim: int, ngf: int, ndf: int, image_size) -> tuple[Generator, Discriminator]:
    """Generator and discriminator for ``image_size`` (int or (H, W)), DCGAN-initialised, on the CPU.

    The weights come from the global torch RNG (seed it first; :func:`~glio_kit.device.seed_everything`),
    always drawn on the CPU, so the same seed gives the same initial weights on every device;
    move the models afterwards.
    """
    G = Generator(latent_dim, ngf, image_size)
    D = Discriminator(ndf, image_size)
    G.apply(weights_init)
    D.apply(weights_init)
    return G, D


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def model_summary(G: Generator, D: Discriminator, image_size=None) -> dict:
    """Parameter counts and shapes, from one forward pass of a single latent in eval mode.

    Returns dict with ``image_size``, ``stack_size`` (what the strided stack makes before the
    crop / after the pad), ``latent_dim``, ``g_params``, ``d_params``, ``g_output``,
    ``d_output``, ``d_features`` (shapes for a batch of one).
    """
    image_size = _hw(image_size or G.image_size)
    k, bh, bw = stack_geometry(image_size)
    dev = next(G.parameters()).device
    modes = G.training, D.training
    G.eval(), D.eval()
    try:
        x = G(torch.zeros(1, G.latent_dim, device=dev))
        logits, f = D(x.to(next(D.parameters()).device), return_features=True)
    finally:
        G.train(modes[0]), D.train(modes[1])
    return dict(
        image_size=list(image_size),
        stack_size=[bh * 2**k, bw * 2**k],
        n_doublings=k,
        latent_dim=G.latent_dim,
        g_params=_n_params(G),
        d_params=_n_params(D),
        g_output=list(x.shape),
        d_output=list(logits.shape),
        d_features=list(f.shape),
    )

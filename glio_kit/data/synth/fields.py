"""Random smooth fields and soft shapes shared by the anatomy and the lesions.

All functions work in voxels of whatever grid they are given; nothing here knows mm.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["smooth_noise", "upsample", "direction_radius", "ramp"]


def smooth_noise(rng, shape, sigma_vox, n=1):
    """``n`` Gaussian-smoothed white-noise fields of unit RMS.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws ``n * prod(shape)`` standard normals.
    shape : tuple of int
        Grid shape (X, Y, Z).
    sigma_vox : float
        Smoothing width in voxels of that grid.
    n : int, default=1
        Number of fields.

    Returns
    -------
    fields : ndarray of shape (n, X, Y, Z), float32
    """
    f = rng.standard_normal((n, *shape)).astype(np.float32)
    for i in range(n):
        f[i] = ndimage.gaussian_filter(f[i], sigma_vox, mode="reflect")
        f[i] /= np.sqrt(np.mean(f[i] ** 2)) + 1e-8
    return f


def upsample(coarse, factor, shape):
    """Trilinear upsampling of coarse fields onto a fine grid.

    Parameters
    ----------
    coarse : ndarray of shape (n, x, y, z), float32
        Fields on a grid whose point ``k`` sits at fine voxel ``k * factor``.
    factor : int
        Fine voxels per coarse step.
    shape : tuple of int
        Fine grid shape (X, Y, Z); the coarse grid must cover it.

    Returns
    -------
    fine : ndarray of shape (n, X, Y, Z), float32
    """
    if factor == 1:
        return coarse[(slice(None),) + tuple(slice(0, s) for s in shape)]
    axes = [np.arange(s, dtype=np.float32) / factor for s in shape]
    out = np.empty((coarse.shape[0], *shape), dtype=np.float32)
    # Separable linear interpolation: three cheap 1-D passes instead of one 3-D gather.
    for c in range(coarse.shape[0]):
        a = coarse[c]
        for ax, pos in enumerate(axes):
            i0 = np.clip(np.floor(pos).astype(np.intp), 0, a.shape[ax] - 2)
            w = (pos - i0).reshape([-1 if k == ax else 1 for k in range(3)])
            a = np.take(a, i0, axis=ax) * (1 - w) + np.take(a, i0 + 1, axis=ax) * w
        out[c] = a
    return out


def direction_radius(rng, n_vec, n_lobes, amp):
    """Direction-dependent radius factor for irregular, lobulated shapes.

    Parameters
    ----------
    rng : numpy.random.Generator
        Draws 3 normals and 2 uniforms per lobe.
    n_vec : ndarray of shape (3, N)
        Unit vectors (directions from the shape's centre).
    n_lobes : int
        Number of bumps or dents added to a sphere.
    amp : float
        Largest relative height of one lobe.

    Returns
    -------
    factor : ndarray of shape (N,), float32
        Radius factors around 1, clipped to [0.45, 1.6].
    """
    f = np.ones(n_vec.shape[1], dtype=np.float32)
    for _ in range(n_lobes):
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        kappa = rng.uniform(2.0, 7.0)
        a = rng.uniform(-amp, amp)
        f += a * np.exp(kappa * (u @ n_vec - 1.0)).astype(np.float32)
    return np.clip(f, 0.45, 1.6)


def ramp(r, radius, width):
    """Soft inside-indicator: 1 well inside ``radius``, 0 outside, linear over ``width``.

    ``r``, ``radius`` and ``width`` are distances in the same unit (arrays broadcast);
    returns values in [0, 1] of the broadcast shape.
    """
    return np.clip((radius - r) / width + 0.5, 0.0, 1.0)

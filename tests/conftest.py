"""Shared fixtures: tiny NIfTI cohorts written on the fly (no synthetic generator needed)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def ellipsoid_brain(shape=(24, 28, 22), seed=0, lesion=False):
    """A toy skull-stripped T2 volume: an ellipsoid 'brain' with a bright centre ('ventricles').

    Returns (t2 float32 (X, Y, Z), seg uint8 or None)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((g ** 2).sum(0))
    brain = r < 0.85
    t2 = np.where(brain, 100 + 20 * rng.standard_normal(shape), 0).astype(np.float32)
    t2[r < 0.25] = 250
    t2[~brain] = 0
    seg = None
    if lesion:
        c = np.array([0.35, 0.2, 0.0])
        d = np.sqrt(((g - c[:, None, None, None]) ** 2).sum(0))
        seg = np.zeros(shape, np.uint8)
        seg[(d < 0.3) & brain] = 2
        seg[(d < 0.15) & brain] = 1
        t2[seg > 0] = 300
    return t2, seg


def save_nifti(path, data, affine=None, dtype=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data if dtype is None else data.astype(dtype)),
                          np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path


def write_tiny_cohort(root, n_train=4, n_test_healthy=2, n_test_tumor=2, shape=(24, 28, 22)):
    """IXI-style healthy folders and a BraTS-style tumour folder under ``root``."""
    root = Path(root)
    k = 0
    for folder, n in (("train_healthy", n_train), ("test_healthy", n_test_healthy)):
        for i in range(n):
            k += 1
            t2, _ = ellipsoid_brain(shape, seed=k)
            save_nifti(root / folder / f"IXI{k:03d}-Test-0000-T2.nii.gz", t2)
    for i in range(n_test_tumor):
        k += 1
        case = f"BraTS_{k:05d}"
        t2, seg = ellipsoid_brain(shape, seed=k, lesion=True)
        save_nifti(root / "test_tumor" / case / f"{case}_t2.nii.gz", t2)
        save_nifti(root / "test_tumor" / case / f"{case}_seg.nii.gz", seg)
    return {"train_healthy": str(root / "train_healthy"), "test_healthy": str(root / "test_healthy"),
            "test_tumor": str(root / "test_tumor"), "synthetic": False}


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models: one thread is faster than two fighting over shared cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cohort(tmp_path):
    return write_tiny_cohort(tmp_path / "cohort")

"""Figures for the data-preparation step (notebook 01).

Every function returns a matplotlib Figure; the notebook shows it and saves it as PNG in
the run folder with :func:`glio_kit.run.notebook.show`.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..data.io import load_volume
from ..data.volumes import brain_mask, normalise
from .style import show_slice


def pick_subjects(cache, n: int = 4, seed: int = 0) -> dict:
    """A few subjects per group (healthy train, healthy test, tumour test) for montages."""
    subj = cache.subjects()
    rng = np.random.default_rng(seed)
    groups = {
        "healthy (train)": subj[(subj.split == "train")],
        "healthy (test)": subj[(subj.split == "test") & (subj.label == 0)],
        "tumour (test)": subj[(subj.split == "test") & (subj.label == 1)].sort_values("lesion_pixels"),
    }
    out = {}
    for name, df in groups.items():
        if len(df) == 0:
            continue
        if name.startswith("tumour"):  # small to large lesions, so the range is visible
            idx = np.unique(np.linspace(0, len(df) - 1, min(n, len(df))).round().astype(int))
        else:
            idx = np.sort(rng.choice(len(df), size=min(n, len(df)), replace=False))
        out[name] = df.iloc[idx]["subject"].tolist()
    return out


def slice_montage(cache, n_subjects: int = 4, n_slices: int = 4, seed: int = 0):
    """Rows = subjects (healthy train, healthy test, tumour test), columns = slices through
    the slab; red contours = ground-truth lesion."""
    groups = pick_subjects(cache, n_subjects, seed)
    rows = [(g, s) for g, subs in groups.items() for s in subs]
    fig, axes = plt.subplots(len(rows), n_slices, figsize=(1.7 * n_slices, 1.8 * len(rows)), squeeze=False)
    for r, (group, subject) in enumerate(rows):
        idx = cache.index.index[cache.index.subject == subject].to_numpy()
        # for tumour subjects, centre the columns on the slice with the most lesion
        centre = (idx[np.argmax(cache.index.lesion_pixels.to_numpy()[idx])] if group.startswith("tumour")
                  else idx[len(idx) // 2])
        start = int(np.clip(centre - n_slices // 2, idx[0], max(idx[0], idx[-1] - n_slices + 1)))
        picks = np.minimum(start + np.arange(n_slices), idx[-1])
        for c, i in enumerate(picks):
            show_slice(axes[r, c], cache.images[i], cache.lesion[i], f"z={cache.index.slice_index[i]}")
        axes[r, 0].set_ylabel(f"{group}\n{subject}", fontsize=7)  # the name beside, not above, the row
    fig.suptitle("Prepared axial T2 slices (generator range -1..1); red = tumour label", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # leave the title its own line
    return fig


def intensity_histograms(cache, n_subjects: int = 3, seed: int = 0, method: str | None = None):
    """Brain-voxel intensity histograms of a few volumes: raw (left) and after the
    normalisation (right). The raw scales differ per subject; after I / SD they line up."""
    method = method or cache.meta["normalisation"]
    groups = pick_subjects(cache, n_subjects, seed)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.4))
    first = cache.index.drop_duplicates("subject").set_index("subject")
    for group, subs in groups.items():
        ls = "--" if group.startswith("tumour") else "-"
        for s in subs:
            vol = load_volume(first.loc[s, "image"]).data
            brain = brain_mask(vol)
            raw, norm = vol[brain], normalise(vol, brain, method)[brain]
            a0.hist(raw, bins=100, histtype="step", density=True, ls=ls, label=f"{s} ({group})")
            a1.hist(norm, bins=100, histtype="step", density=True, ls=ls)
    a0.set(title="raw intensities (brain voxels)", xlabel="scanner units", ylabel="density")
    a1.set(title=f"after normalisation '{method}'", xlabel="normalised intensity")
    lo, hi = cache.meta["generator_window"]
    a1.axvspan(lo, hi, color="grey", alpha=0.08, label="window mapped to [-1, 1]")
    a1.legend(fontsize=7)
    a0.legend(fontsize=6)
    fig.tight_layout()
    return fig

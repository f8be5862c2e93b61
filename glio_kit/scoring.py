"""Step 03: map every validation and test slice to the latent space and score it.

:func:`score_run` reads the trained DCGAN (``train`` step) and the slice cache, maps the
healthy validation slices and all test slices (:mod:`glio_kit.mapping`: batched iterative
AnoGAN search, the f-AnoGAN encoder, or both), and writes into ``<run>/score/``:

- ``slice_scores.csv``: ``row`` (cache row), ``k`` (row of the arrays below), ``subject``,
  ``label``, ``split``, ``slice_index``, ``R``, ``D``, ``A_raw``, ``A`` (and
  ``lesion_pixels``, ``loss``, ``restart``);
- ``recon.npy`` (M, H, W) float32: G(z) per slice, in ``k`` order; ``latents.npy`` (M, latent);
- ``residual_abs.npy`` / ``residual_pos.npy`` (M, H, W) float32: ``|x - G(z)|`` and
  ``max(x - G(z), 0)`` inside the eroded brain, median-filtered (``median_filter``), from
  :func:`glio_kit.residuals.residual_map`;
- ``subject_scores.csv``: ``subject, label, split, score``; the subject score is the mean of
  its slices' ``A`` (the paper), or their maximum, or the mean of the ``topk`` largest
  (``subject_reduction``);
- ``mapping_history.csv``: the mean mapping loss per step for the healthy validation, healthy
  test and tumour test slices;
- ``scaling.json``: the map ``A = sigmoid((A_raw - mean_val) / sd_val)`` fitted on the
  healthy validation slices only;

and ``subjects.csv`` (``subject,label,score``, test subjects) in the run folder itself.
The arrays are written batch by batch into memory-mapped files, so memory does not grow
with the number of slices.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import RunFolderError
from .mapping import (MAPPINGS, fit_scaling, initial_latents, load_encoder, map_slices,
                      train_encoder)
from .runtime import choose_device, quiet

__all__ = ["score_run", "SCORE_KEYS", "reduce_subjects", "load_slice_scores", "load_subject_scores",
           "plot_mapping_steps", "plot_loss_over_steps", "plot_score_distributions", "GROUPS"]

#: The knobs that define a scoring (the step record ``score`` holds them).
SCORE_KEYS = ("mapping", "mapping_steps", "mapping_lr", "lam", "restarts", "encoder_epochs", "kappa",
              "subject_reduction", "topk", "median_filter", "seed")
REDUCTIONS = ("mean", "max", "topk")
#: Slice groups of the mapping history and the figures: (name, split, label).
GROUPS = (("val_healthy", "val", 0), ("test_healthy", "test", 0), ("test_tumour", "test", 1))
ERODE = 1  # brain mask erosion (pixels) of the residual maps
SLICE_COLUMNS = ["row", "k", "subject", "label", "split", "slice_index", "R", "D", "A_raw", "A",
                 "lesion_pixels", "loss", "restart"]
GREY = dict(cmap="gray", vmin=-1, vmax=1, interpolation="nearest")


def _score_dir(run) -> Path:
    return Path(run / "score")


# ------------------------------------------------------------------------ subjects
def reduce_subjects(slices: pd.DataFrame, how: str = "mean", topk: int = 3, column: str = "A") -> pd.DataFrame:
    """One score per subject from its slices' ``column``.

    how : ``mean`` (the paper: the average anomaly score of the subject's slices), ``max``,
        or ``topk`` (mean of the ``topk`` largest; all slices when a subject has fewer).
    Returns ``subject, label, split, score`` in the order subjects first appear.
    """
    if how not in REDUCTIONS:
        raise ValueError(f"subject_reduction must be one of {REDUCTIONS}, got {how!r}")
    g = slices.groupby("subject", sort=False)
    if how == "mean":
        score = g[column].mean()
    elif how == "max":
        score = g[column].max()
    else:
        k = max(1, int(topk))
        score = g[column].apply(lambda s: float(np.sort(s.to_numpy())[::-1][:k].mean()))
    out = pd.DataFrame(dict(label=g["label"].first(), split=g["split"].first(), score=score)).reset_index()
    return out[["subject", "label", "split", "score"]]


def load_slice_scores(run) -> pd.DataFrame:
    p = _score_dir(run) / "slice_scores.csv"
    if not p.exists():
        raise RunFolderError(f"{p}: no scores in this run folder; run the scoring step (notebook 03) first")
    return pd.read_csv(p, dtype={"subject": str})


def load_subject_scores(run) -> pd.DataFrame:
    p = _score_dir(run) / "subject_scores.csv"
    if not p.exists():
        raise RunFolderError(f"{p}: no scores in this run folder; run the scoring step (notebook 03) first")
    return pd.read_csv(p, dtype={"subject": str})


def _score_rows(cache) -> np.ndarray:
    """Cache rows that are scored, in ``k`` order: validation slices, then test slices."""
    return np.concatenate([cache.rows(split="val"), cache.rows(split="test")]).astype(np.int64)


# ------------------------------------------------------------------------- the step
def score_run(run, cache, cfg: dict, overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Map and score the ``val`` and ``test`` slices of ``cache`` with the run's DCGAN.

    run : :class:`~glio_kit.runtime.RunDir` whose ``train`` step is done.
    cfg : ``mapping`` (iterative | encoder | encoder+iterative), ``mapping_steps``,
        ``mapping_lr``, ``mapping_batch_size``, ``lam``, ``restarts``, ``encoder_epochs``,
        ``kappa``, ``batch_size`` (encoder), ``subject_reduction``, ``topk``,
        ``median_filter``, ``seed``, ``device``.
    overwrite : redo the step when the run folder holds a scoring with other knobs.

    Returns the slice table (``slice_scores.csv``). When this exact scoring is already done,
    nothing is recomputed and the saved table is returned.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    from .residuals import residual_map
    from .train import load_models

    if cfg["mapping"] not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {cfg['mapping']!r}")
    if cfg["subject_reduction"] not in REDUCTIONS:
        raise ValueError(f"subject_reduction must be one of {REDUCTIONS}, got {cfg['subject_reduction']!r}")
    params = {k: cfg[k] for k in SCORE_KEYS}
    sdir = _score_dir(run)
    if run.claim("score", params, after=("train",), overwrite=overwrite) and (sdir / "slice_scores.csv").exists():
        return load_slice_scores(run)

    t_start = time.perf_counter()
    device = choose_device(cfg.get("device", "auto"))
    G, D, meta = load_models(run, device)
    E = None
    if cfg["mapping"] != "iterative":
        E = train_encoder(run, cache, cfg, G, D, progress=progress, overwrite=overwrite)

    rows = _score_rows(cache)
    if len(cache.rows(split="val", label=0)) == 0:
        raise RunFolderError(f"{getattr(cache, 'folder', 'cache')}: no healthy validation slices; the score "
                             f"scaling and the thresholds are fitted on them (val_fraction > 0)")
    m = len(rows)
    h, w = cache.images.shape[1:]
    latent = G.latent_dim
    restarts = max(1, int(cfg["restarts"]))
    lam = float(cfg["lam"])
    steps = int(cfg["mapping_steps"]) if cfg["mapping"] != "encoder" else 0
    # starts for the whole set at once: any subset can later be re-mapped from the same z0
    starts = initial_latents(m, latent, restarts, int(cfg["seed"]))
    idx = cache.index.iloc[rows].reset_index(drop=True)
    labels = idx["label"].to_numpy()
    splits = idx["split"].to_numpy()

    sdir = run.reset_dir("score")
    recon = open_memmap(sdir / "recon.npy", mode="w+", dtype=np.float32, shape=(m, h, w))
    res_abs = open_memmap(sdir / "residual_abs.npy", mode="w+", dtype=np.float32, shape=(m, h, w))
    res_pos = open_memmap(sdir / "residual_pos.npy", mode="w+", dtype=np.float32, shape=(m, h, w))
    lat = open_memmap(sdir / "latents.npy", mode="w+", dtype=np.float32, shape=(m, latent))
    R = np.empty(m)
    Dv = np.empty(m)
    loss = np.empty(m)
    restart = np.zeros(m, np.int64)
    hist_sum = {name: np.zeros(steps + 1) for name, _, _ in GROUPS}
    hist_n = {name: 0 for name, _, _ in GROUPS}
    per = max(1, int(cfg["mapping_batch_size"]) // restarts)
    t_map = time.perf_counter()
    # progress in slice-steps, updated every step (a batch of 256 slices x 500 steps is minutes)
    bar = tqdm(total=m * max(steps, 1), desc=f"map {m} slices ({cfg['mapping']}, {steps} steps)",
               unit="slice-step", unit_scale=True, disable=not progress or quiet(), dynamic_ncols=True)
    try:
        for a in range(0, m, per):
            b = min(per, m - a)
            sel = rows[a:a + b]
            x = np.asarray(cache.images[sel], dtype=np.float32)
            tick = None if bar.disable else (lambda t, z, loss, b=b: bar.update(b))
            res = map_slices(G, D, x, cfg, E=E, z0=starts[:, a:a + b], callback=tick)
            gz = res.gz[:, 0].float().numpy()
            recon[a:a + b] = gz
            lat[a:a + b] = res.z.float().numpy()
            brain = np.asarray(cache.brain[sel])
            med = int(cfg["median_filter"])
            res_abs[a:a + b] = residual_map(x, gz, brain, kind="absolute", median=med, erode=ERODE)
            res_pos[a:a + b] = residual_map(x, gz, brain, kind="positive", median=med, erode=ERODE)
            R[a:a + b] = res.R.double().numpy()
            Dv[a:a + b] = res.D.double().numpy()
            loss[a:a + b] = res.loss.double().numpy()
            restart[a:a + b] = res.restart.numpy()
            hist = res.history.double().numpy()  # (steps + 1, b)
            for name, split, label in GROUPS:
                mask = (splits[a:a + b] == split) & (labels[a:a + b] == label)
                if mask.any():
                    hist_sum[name] += hist[:, mask].sum(1)
                    hist_n[name] += int(mask.sum())
            if steps == 0:
                bar.update(b)
    finally:
        bar.close()
    map_seconds = time.perf_counter() - t_map
    for arr in (recon, res_abs, res_pos, lat):
        arr.flush()
    del recon, res_abs, res_pos, lat

    a_raw = (1 - lam) * R + lam * Dv
    healthy_val = (splits == "val") & (labels == 0)
    scaling = fit_scaling(a_raw[healthy_val])  # healthy validation slices only, never test slices
    scaling.save(sdir / "scaling.json")
    df = pd.DataFrame(dict(
        row=rows, k=np.arange(m), subject=idx["subject"].astype(str).to_numpy(), label=labels, split=splits,
        slice_index=idx["slice_index"].to_numpy() if "slice_index" in idx else np.zeros(m, int),
        R=R, D=Dv, A_raw=a_raw, A=scaling(a_raw),
        lesion_pixels=idx["lesion_pixels"].to_numpy() if "lesion_pixels" in idx else np.zeros(m, int),
        loss=loss, restart=restart,
    ))[SLICE_COLUMNS]
    df.to_csv(sdir / "slice_scores.csv", index=False)

    subj = reduce_subjects(df, cfg["subject_reduction"], int(cfg["topk"]))
    subj.to_csv(sdir / "subject_scores.csv", index=False)
    subj[subj["split"] == "test"][["subject", "label", "score"]].to_csv(run / "subjects.csv", index=False)
    hist = pd.DataFrame({"step": np.arange(steps + 1)})
    for name, _, _ in GROUPS:
        if hist_n[name]:
            hist[name] = hist_sum[name] / hist_n[name]
    hist.to_csv(sdir / "mapping_history.csv", index=False)

    seconds = time.perf_counter() - t_start
    run.mark_done("score", seconds=round(seconds, 3), map_seconds=round(map_seconds, 3), slices=int(m),
                  slice_steps_per_s=round(m * max(steps, 1) / max(map_seconds, 1e-9), 2),
                  device=str(device), model_epoch=meta["epoch"], mapping=cfg["mapping"], steps=steps,
                  scaling=scaling.to_dict())
    return df


# --------------------------------------------------------------------------- figures
def _clean(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _pick_slices(df: pd.DataFrame, n_healthy: int, n_tumour: int, seed: int) -> list[int]:
    """``k`` of a few test slices: healthy ones (seeded pick) and the tumour slices with the
    largest lesions (different subjects where possible)."""
    rng = np.random.default_rng(seed)
    healthy = df[(df.split == "test") & (df.label == 0)]
    if not len(healthy):
        healthy = df[df.split == "val"]
    ks = []
    if len(healthy) and n_healthy:
        ks += sorted(rng.choice(healthy["k"].to_numpy(), min(n_healthy, len(healthy)), replace=False).tolist())
    tum = df[(df.split == "test") & (df.label == 1)]
    if len(tum) and n_tumour:
        tum = tum.sort_values(["lesion_pixels", "A"], ascending=False).drop_duplicates("subject")
        ks += tum["k"].to_numpy()[:n_tumour].tolist()
    return [int(k) for k in ks]


def plot_mapping_steps(run, cache, cfg: dict, n_healthy: int = 2, n_tumour: int = 2, steps=None,
                       device=None, ks=None):
    """A few test slices (healthy, then tumour) and G(z) at several steps of the mapping.

    The slices are mapped again from the very starts the scoring step used (so the last
    column matches ``recon.npy``), recording G(z) at ``steps`` (default: about five from 0
    to ``mapping_steps``). Columns: the input (red: ground-truth lesion), G(z) per step, and
    the final residual ``|x - G(z)|`` as in ``residual_abs.npy`` (inside the eroded brain,
    median-filtered). ``ks`` picks the slices (``k`` of slice_scores.csv).
    """
    import matplotlib.pyplot as plt

    from .residuals import residual_map
    from .train import load_models

    df = load_slice_scores(run)
    ks = list(ks) if ks is not None else _pick_slices(df, n_healthy, n_tumour, int(cfg["seed"]))
    n_steps = int(cfg["mapping_steps"]) if cfg["mapping"] != "encoder" else 0
    if steps is None:
        steps = sorted({int(round(s)) for s in np.geomspace(1, n_steps + 1, 5) - 1}) if n_steps else [0]
    steps = sorted({int(s) for s in steps if 0 <= int(s) <= n_steps})
    dev = choose_device(device or cfg.get("device", "auto"))
    G, D, _ = load_models(run, dev)
    E = load_encoder(run, dev) if cfg["mapping"] != "iterative" else None
    starts = initial_latents(len(df), G.latent_dim, max(1, int(cfg["restarts"])), int(cfg["seed"]))
    rows = df.set_index("k").loc[ks, "row"].to_numpy()
    x = np.asarray(cache.images[rows], dtype=np.float32)
    res = map_slices(G, D, x, cfg, E=E, z0=starts[:, ks], record_steps=steps)
    ncol = len(steps) + 2
    fig, axes = plt.subplots(len(ks), ncol, figsize=(1.45 * ncol, 1.5 * len(ks) + 0.5), squeeze=False)
    for i, k in enumerate(ks):
        r = df.set_index("k").loc[k]
        les = np.asarray(cache.lesion[rows[i]])
        axes[i, 0].imshow(x[i], **GREY)
        if les.any():
            axes[i, 0].contour(les.astype(float), levels=[0.5], colors="red", linewidths=0.7)
        axes[i, 0].set_ylabel(f"{'tumour' if r['label'] == 1 else 'healthy'}\n{r['subject']}"[:28], fontsize=7)
        for j, s in enumerate(steps):
            axes[i, j + 1].imshow(res.snapshots[s][i, 0].float().numpy(), **GREY)
        resid = residual_map(x[i], res.gz[i, 0].float().numpy(), np.asarray(cache.brain[rows[i]]),
                             kind="absolute", median=int(cfg["median_filter"]), erode=ERODE)
        axes[i, -1].imshow(resid, cmap="hot", vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[i]:
            _clean(ax)
    axes[0, 0].set_title("input x", fontsize=8)
    for j, s in enumerate(steps):
        axes[0, j + 1].set_title(f"G(z), step {s}", fontsize=8)
    axes[0, -1].set_title("|x - G(z)| in brain", fontsize=8)
    fig.suptitle(f"Latent mapping ({cfg['mapping']}, lr {cfg['mapping_lr']}, lambda {cfg['lam']})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_loss_over_steps(run):
    """Mean mapping loss per step for healthy validation, healthy test and tumour test slices."""
    import matplotlib.pyplot as plt

    p = _score_dir(run) / "mapping_history.csv"
    if not p.exists():
        raise RunFolderError(f"{p}: no mapping history in this run folder; run the scoring step first")
    hist = pd.read_csv(p)
    styles = {"val_healthy": ("grey", "healthy (val)"), "test_healthy": ("tab:blue", "healthy (test)"),
              "test_tumour": ("tab:red", "tumour (test)")}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, (color, label) in styles.items():
        if name in hist:
            ax.plot(hist["step"], hist[name], color=color, label=label, marker="o" if len(hist) < 3 else None)
    ax.set_xlabel("mapping step")
    ax.set_ylabel("mean loss (1-lambda) L_R + lambda L_D")
    ax.set_title("Latent mapping: loss over steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_score_distributions(run, bins: int = 30):
    """Anomaly scores A of healthy and tumour test slices and subjects (validation in grey)."""
    import matplotlib.pyplot as plt

    sl = load_slice_scores(run)
    su = load_subject_scores(run)
    groups = [("healthy (val)", "val", 0, "grey"), ("healthy (test)", "test", 0, "tab:blue"),
              ("tumour (test)", "test", 1, "tab:red")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    edges = np.linspace(0, 1, bins + 1)
    for label, split, lab, color in groups:
        v = sl[(sl.split == split) & (sl.label == lab)]["A"]
        if len(v):
            a1.hist(v, bins=edges, density=True, alpha=0.45 if split == "test" else 0.35, color=color,
                    label=f"{label}, n={len(v)}")
    a1.set_xlabel("slice anomaly score A")
    a1.set_ylabel("density")
    a1.set_title("slices", fontsize=10)
    a1.legend(fontsize=7)
    rng = np.random.default_rng(0)
    for i, (label, split, lab, color) in enumerate(groups):
        v = su[(su.split == split) & (su.label == lab)]["score"].to_numpy()
        if len(v):
            a2.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=14, color=color, alpha=0.8)
            a2.hlines(np.median(v), i - 0.3, i + 0.3, color="k", lw=1)
    a2.set_xticks(range(len(groups)))
    a2.set_xticklabels([g[0] for g in groups], fontsize=8)
    a2.set_ylabel("subject score")
    rec = (run.record("score") or {}).get("params", {})
    a2.set_title(f"subjects ({rec.get('subject_reduction', 'mean')} of slice A)", fontsize=10)
    fig.tight_layout()
    return fig

"""Step 03: map every validation and test slice to the latent space and score it.

:func:`score_run` reads the trained DCGAN (``train`` step) and the slice cache, maps the
healthy validation slices and all test slices (:mod:`glio_kit.detect.mapping`: batched iterative
AnoGAN search, the f-AnoGAN encoder, or both), and writes into ``<run>/score/``:

- ``slice_scores.csv``: ``row`` (cache row), ``k`` (row of the arrays below), ``subject``,
  ``label``, ``split``, ``slice_index``, ``R``, ``D``, ``A_raw``, ``A`` (and
  ``lesion_pixels``, ``loss``, ``restart``);
- ``recon.npy`` (M, H, W) float32: G(z) per slice, in ``k`` order; ``latents.npy`` (M, latent);
- ``residual_abs.npy`` / ``residual_pos.npy`` (M, H, W) float32: ``|x - G(z)|`` and
  ``max(x - G(z), 0)`` inside the brain eroded by ``erode`` pixels, median-filtered
  (``median_filter``): the residual maps, computed here once by
  :func:`glio_kit.detect.residuals.residual_map`; everything later reads them;
- ``subject_scores.csv``: ``subject, label, split, score, score_raw``; ``score_raw`` is the mean
  of its slices' raw ``A_raw`` (the paper), or their maximum, or the mean of the ``topk`` largest
  (``subject_reduction``), and ``score`` that mapped to (0, 1) by a logistic fitted on the healthy
  validation subjects (:func:`~glio_kit.detect.detectors.subject_anomaly_scores`);
- ``mapping_history.csv``: the mean mapping loss per step for the healthy validation, healthy
  test and tumour test slices; ``mapping_snapshots.npz``: a few test slices' ``G(z)`` at a few
  steps and their per-step loss (:mod:`glio_kit.detect.mapping_history`: the figures draw these);
- ``encoder.pt``, ``encoder_losses.csv``: the f-AnoGAN encoder, trained first when the mapping
  method needs one (:data:`glio_kit.detect.mapping.MAPPING_METHODS`); part of this step;
- ``scaling.json``: the map ``A = sigmoid((A_raw - mean_val) / sd_val)`` fitted on the
  healthy validation slices only;

and ``subjects.csv`` (``subject,label,score``, test subjects) in the run folder itself. The
step record ``steps/score.json`` holds every knob of :class:`~glio_kit.run.config.ScoreSettings`
(``residual_kind``, ``median_filter`` and ``erode`` among them) and, under ``info.encoder``, the
encoder's training when there was one. The arrays are written batch
by batch into memory-mapped files, so memory does not grow with the number of slices.

Later steps read these files through the loaders here, never by path: :func:`load_slice_scores`,
:func:`load_subject_scores`, :func:`load_reconstructions`, :func:`load_residual_maps`,
:func:`load_mapping_history`, :func:`load_mapping_snapshots` and :func:`score_settings` (the settings
the maps were made with).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..gan.checkpoints import load_models
from ..run.config import RESIDUAL_KINDS, ScoreSettings
from ..errors import RunFolderError
from .subject_scores import reduce_subjects, subject_anomaly_scores
from .encoder import train_encoder
from .mapping import initial_latents, map_slices, mapping_method
from .mapping_history import GROUPS, SNAPSHOTS, LossHistory, MappingSnapshots, pick_slices, snapshot_steps
from .slice_scores import ScoreScaling, anomaly_score, fit_scaling
from .residuals import residual_map
from ..device import choose_device
from ..progress import quiet
from numpy.lib.format import open_memmap
from ..progress import tqdm

__all__ = ["score_run", "reduce_subjects", "load_slice_scores", "load_subject_scores", "load_reconstructions",
           "load_residual_maps", "load_mapping_history", "load_mapping_snapshots", "score_settings", "GROUPS",
           "RESIDUAL_FILES", "SHOWN_HEALTHY", "SHOWN_TUMOUR"]

SLICE_COLUMNS = ["row", "k", "subject", "label", "split", "slice_index", "R", "D", "A_raw", "A",
                 "lesion_pixels", "loss", "restart"]
#: The residual map files in ``score/``, by kind.
RESIDUAL_FILES = {"absolute": "residual_abs.npy", "positive": "residual_pos.npy"}
#: How many healthy and tumour test slices the mapping snapshots keep (notebook 03's figure).
SHOWN_HEALTHY, SHOWN_TUMOUR = 2, 2
NOT_SCORED = "run the scoring step (notebook 03, or `glio-kit run`) with this run_dir first"


def _score_dir(run) -> Path:
    return Path(run / "score")


# ------------------------------------------------------------------------ loaders
def _score_file(run, name: str) -> Path:
    p = _score_dir(run) / name
    if not p.exists():
        raise RunFolderError(f"{p}: not in this run folder; {NOT_SCORED}")
    return p


def load_slice_scores(run) -> pd.DataFrame:
    """``score/slice_scores.csv``: one row per scored slice; ``k`` is its row in the arrays."""
    return pd.read_csv(_score_file(run, "slice_scores.csv"), dtype={"subject": str})


def load_subject_scores(run) -> pd.DataFrame:
    """``score/subject_scores.csv``: ``subject, label, split, score`` (validation and test)."""
    return pd.read_csv(_score_file(run, "subject_scores.csv"), dtype={"subject": str})


def load_reconstructions(run) -> np.memmap:
    """G(z) of every scored slice: (M, H, W) float32 in [-1, 1], read-only memory map, row
    ``k`` = the slice of ``slice_scores.csv`` with that ``k``."""
    return np.load(_score_file(run, "recon.npy"), mmap_mode="r")


def load_residual_maps(run, kind: str | None = None) -> np.memmap:
    """The residual maps the scoring step saved (read-only memory map).

    kind : ``"positive"`` = ``max(x - G(z), 0)`` or ``"absolute"`` = ``|x - G(z)|``;
        ``None``: the ``residual_kind`` recorded in ``steps/score.json`` (the maps the
        metrics use).
    Returns (M, H, W) float32 in generator units [0, 2], 0 outside the brain eroded by the
    recorded ``erode``, median-filtered with the recorded ``median_filter``; row ``k`` = the
    slice of ``slice_scores.csv`` with that ``k``. :func:`score_settings` gives the settings;
    ``residuals.eroded_brain(brain, settings.erode)`` the pixels the maps cover.
    """
    if kind is None:
        kind = score_settings(run).residual_kind
    if kind not in RESIDUAL_FILES:
        raise ValueError(f"kind must be one of {RESIDUAL_KINDS} (or None: the recorded one), got {kind!r}")
    return np.load(_score_file(run, RESIDUAL_FILES[kind]), mmap_mode="r")


def load_mapping_history(run) -> pd.DataFrame:
    """``score/mapping_history.csv``: ``step`` (0..steps) and the mean mapping loss of each
    slice group of :data:`GROUPS` that has slices (``val_healthy``, ``test_healthy``,
    ``test_tumour``)."""
    return pd.read_csv(_score_file(run, "mapping_history.csv"))


def load_mapping_snapshots(run) -> dict:
    """``score/mapping_snapshots.npz`` as a dict of arrays: ``k`` (n,) the slices (rows of
    ``slice_scores.csv``), ``steps`` (s,), ``x`` and ``lesion`` (n, H, W), ``gz`` (n, s, H, W)
    G(z) after each of ``steps`` updates, ``loss`` (n, steps + 1) each slice's mapping loss."""
    with np.load(_score_file(run, SNAPSHOTS)) as f:
        return {name: f[name] for name in f.files}


def score_settings(run) -> ScoreSettings:
    """The :class:`~glio_kit.run.config.ScoreSettings` the run was scored with (``steps/score.json``).

    Figures, the residual browser and the evaluation read the mapping and the residual maps'
    settings (``residual_kind``, ``median_filter``, ``erode``) from here, never from defaults.
    """
    rec = run.record("score")
    if not rec or rec.get("status") != "done":
        raise RunFolderError(f"{run.path}: the scoring step is not done; {NOT_SCORED}")
    if "settings" not in rec:
        raise RunFolderError(f"{run.path}: steps/score.json was written by an older glio-kit and does not "
                             f"record its settings; redo the scoring step (notebook 03, overwrite=True)")
    try:
        return ScoreSettings(**rec["settings"])
    except TypeError as e:
        raise RunFolderError(f"{run.path}: steps/score.json holds settings this glio-kit does not know "
                             f"({e}); redo the scoring step (notebook 03, overwrite=True)") from None


# ------------------------------------------------------------------------ subjects
def _score_rows(cache) -> np.ndarray:
    """Cache rows that are scored, in ``k`` order: validation slices, then test slices."""
    if len(cache.rows(split="val", label=0)) == 0:
        raise RunFolderError(f"{getattr(cache, 'folder', 'cache')}: no healthy validation slices; the score "
                             f"scaling and the thresholds are fitted on them (val_fraction > 0)")
    return np.concatenate([cache.rows(split="val"), cache.rows(split="test")]).astype(np.int64)


# ------------------------------------------------------------------------- the step
def score_run(run, cache, settings: ScoreSettings, overwrite: bool = False,
              progress: bool = True) -> pd.DataFrame:
    """Map and score the ``val`` and ``test`` slices of ``cache`` with the run's DCGAN.

    run : :class:`~glio_kit.run.rundir.RunDir` whose ``prep`` and ``train`` steps are done.
    cache : the run's :class:`~glio_kit.data.preprocess.SliceCache`.
    settings : :class:`~glio_kit.run.config.ScoreSettings` (``get_config(...).score``): the mapping
        (``mapping``, ``mapping_steps``, ``mapping_lr``, ``mapping_batch_size``, ``lam``,
        ``restarts``, the encoder's knobs), the subject score (``subject_reduction``, ``topk``)
        and the residual maps (``median_filter``, ``erode``; ``residual_kind`` is recorded for
        the metrics), ``seed``, ``device``.
    overwrite : redo the step when the run folder holds a scoring with other knobs.

    Returns the slice table (``slice_scores.csv``). When this exact scoring is already done,
    nothing is recomputed and the saved table is returned.
    """
    if not isinstance(settings, ScoreSettings):
        raise TypeError(f"settings must be ScoreSettings (get_config(...).score), "
                        f"got {type(settings).__name__}")
    done = run.claim_step("score", settings, overwrite=overwrite)
    if done and (_score_dir(run) / "slice_scores.csv").exists():
        return load_slice_scores(run)

    t_start = time.perf_counter()
    device = choose_device(settings.device)
    G, D, meta = load_models(run, device)
    rows = _score_rows(cache)
    method = mapping_method(settings.mapping)
    sdir = run.reset_dir("score")
    E, encoder = None, {}
    if method.needs_encoder:  # the encoder's training is part of this step (its record: info.encoder)
        E, encoder = train_encoder(cache, settings, G, D, sdir, progress=progress)
    idx = cache.index.iloc[rows].reset_index(drop=True)
    mapped = _map_all(sdir, cache, rows, idx, G, D, E, settings, progress)

    df, scaling = _slice_table(rows, idx, mapped, settings.lam)
    scaling.save(sdir / "scaling.json")
    df.to_csv(sdir / "slice_scores.csv", index=False)
    _write_subject_scores(run, df, settings)
    mapped.history.table().to_csv(sdir / "mapping_history.csv", index=False)
    mapped.snapshots.save(sdir / SNAPSHOTS)

    m, steps = len(rows), mapped.history.steps
    run.mark_done("score", seconds=round(time.perf_counter() - t_start, 3),
                  map_seconds=round(mapped.seconds, 3), slices=int(m),
                  slice_steps_per_s=round(m * max(steps, 1) / max(mapped.seconds, 1e-9), 2),
                  device=str(device), model_epoch=meta["epoch"], mapping=settings.mapping, steps=steps,
                  scaling=scaling.to_dict(), residual_files=RESIDUAL_FILES,
                  **({"encoder": encoder} if encoder else {}))
    return df


@dataclass
class _Mapped:
    """What mapping the M scored slices gave: per-slice (M,) ``R``, ``D`` (mean residual and
    feature difference), ``loss`` (the objective) and ``restart`` (the start kept); the loss
    history; the picked slices' snapshots; the mapping's wall time in seconds."""

    R: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    restart: np.ndarray
    history: LossHistory
    snapshots: MappingSnapshots
    seconds: float


def _map_all(sdir: Path, cache, rows: np.ndarray, idx: pd.DataFrame, G, D, E, settings: ScoreSettings,
             progress: bool) -> _Mapped:
    """Map the cache ``rows`` in batches; write ``recon.npy``, ``latents.npy`` and the residual
    maps (:data:`RESIDUAL_FILES`) into ``sdir`` as memory maps, in ``k`` order."""
    m, (h, w) = len(rows), cache.images.shape[1:]
    steps = mapping_method(settings.mapping).steps(settings)
    # starts for the whole set at once: any subset can later be re-mapped from the same z0
    starts = initial_latents(m, G.latent_dim, settings.restarts, settings.seed)
    labels, splits = idx["label"].to_numpy(), idx["split"].to_numpy()
    recon = open_memmap(sdir / "recon.npy", mode="w+", dtype=np.float32, shape=(m, h, w))
    maps = {kind: open_memmap(sdir / name, mode="w+", dtype=np.float32, shape=(m, h, w))
            for kind, name in RESIDUAL_FILES.items()}
    lat = open_memmap(sdir / "latents.npy", mode="w+", dtype=np.float32, shape=(m, G.latent_dim))
    out = _Mapped(R=np.empty(m), D=np.empty(m), loss=np.empty(m), restart=np.zeros(m, np.int64),
                  history=LossHistory(steps), seconds=0.0,
                  snapshots=MappingSnapshots(pick_slices(idx, SHOWN_HEALTHY, SHOWN_TUMOUR, settings.seed),
                                             snapshot_steps(steps)))
    per = max(1, settings.mapping_batch_size // settings.restarts)
    t_map = time.perf_counter()
    # progress in slice-steps, updated every step (a batch of 256 slices x 500 steps is minutes)
    bar = tqdm(total=m * max(steps, 1), desc=f"map {m} slices ({settings.mapping}, {steps} steps)",
               unit="slice-step", unit_scale=True, disable=not progress or quiet(), dynamic_ncols=True)
    try:
        for a in range(0, m, per):
            b = min(per, m - a)
            sel = rows[a:a + b]
            x = np.asarray(cache.images[sel], dtype=np.float32)
            tick = None if bar.disable else (lambda t, z, loss, b=b: bar.update(b))
            shown = out.snapshots.wanted(a, b)  # G(z) along the way only for the figure's slices
            res = map_slices(G, D, x, settings, E=E, z0=starts[:, a:a + b], callback=tick,
                             record_steps=out.snapshots.steps if shown else ())
            if shown:
                out.snapshots.add(a, res, x, np.asarray(cache.lesion[sel]))
            gz = res.gz[:, 0].float().numpy()
            recon[a:a + b] = gz
            lat[a:a + b] = res.z.float().numpy()
            brain = np.asarray(cache.brain[sel])
            for kind, arr in maps.items():
                arr[a:a + b] = residual_map(x, gz, brain, kind=kind, median=settings.median_filter,
                                            erode=settings.erode)
            out.R[a:a + b] = res.R.double().numpy()
            out.D[a:a + b] = res.D.double().numpy()
            out.loss[a:a + b] = res.loss.double().numpy()
            out.restart[a:a + b] = res.restart.numpy()
            out.history.add(res.history.double().numpy(), splits[a:a + b], labels[a:a + b])
            if steps == 0:
                bar.update(b)
    finally:
        bar.close()
    out.seconds = time.perf_counter() - t_map
    for arr in (recon, lat, *maps.values()):
        arr.flush()
    return out


def _slice_table(rows: np.ndarray, idx: pd.DataFrame, mapped: _Mapped, lam: float) -> tuple[pd.DataFrame,
                                                                                            ScoreScaling]:
    """The slice table (``slice_scores.csv``) and the scaling fitted on its healthy
    validation slices (only those, never test slices)."""
    m = len(rows)
    labels, splits = idx["label"].to_numpy(), idx["split"].to_numpy()
    a_raw = anomaly_score(mapped.R, mapped.D, lam)
    scaling = fit_scaling(a_raw[(splits == "val") & (labels == 0)])
    df = pd.DataFrame(dict(
        row=rows, k=np.arange(m), subject=idx["subject"].astype(str).to_numpy(), label=labels, split=splits,
        slice_index=idx["slice_index"].to_numpy() if "slice_index" in idx else np.zeros(m, int),
        R=mapped.R, D=mapped.D, A_raw=a_raw, A=scaling(a_raw),
        lesion_pixels=idx["lesion_pixels"].to_numpy() if "lesion_pixels" in idx else np.zeros(m, int),
        loss=mapped.loss, restart=mapped.restart,
    ))[SLICE_COLUMNS]
    return df, scaling


def _write_subject_scores(run, df: pd.DataFrame, settings: ScoreSettings) -> None:
    """``score/subject_scores.csv`` (validation and test) and ``subjects.csv`` (test only)."""
    subj = subject_anomaly_scores(df, settings.subject_reduction, settings.topk)
    subj.to_csv(_score_dir(run) / "subject_scores.csv", index=False)
    subj[subj["split"] == "test"][["subject", "label", "score"]].to_csv(run / "subjects.csv", index=False)

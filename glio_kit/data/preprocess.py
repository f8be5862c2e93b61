"""Step 01: the cohort (the user's folders or the synthetic one), its splits and the slice cache.

The volumes are preprocessed as the paper does it (:mod:`glio_kit.data.volumes`) into the slice
cache (:mod:`glio_kit.data.slice_cache`); :func:`prepare` is the step notebook 01 calls.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .cohort import Subject, discover
from ..errors import InputError
from ..paths import default_data_dir
from ..run.config import PrepSettings, get_config
from .slice_cache import SliceCache, build_cache, cohort_summary
from ..atomic import write_text
from .synth import make_cohort

# ---------------------------------------------------------------------------- splits
def assign_splits(train_healthy: list[Subject], test_healthy: list[Subject], test_tumor: list[Subject],
                  val_fraction: float, seed: int, source: str = "train_healthy_dir") -> list[Subject]:
    """Healthy training subjects -> ``train`` / ``val`` (seeded shuffle); test subjects -> ``test``.

    Validation subjects are healthy and never seen in training: later steps calibrate scores
    and choose thresholds on them, so no threshold ever touches the test set.
    """
    if len(train_healthy) < 2:
        raise InputError(source, f"need at least 2 healthy training subjects, found {len(train_healthy)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_healthy))
    n_val = min(max(1, int(round(val_fraction * len(train_healthy)))), len(train_healthy) - 1)
    val = set(order[:n_val].tolist())
    out = [Subject(s.subject, s.image, s.mask, 0, "val" if i in val else "train")
           for i, s in enumerate(train_healthy)]
    out += [Subject(s.subject, s.image, s.mask, 0, "test") for s in test_healthy]
    out += [Subject(s.subject, s.image, s.mask, 1, "test") for s in test_tumor]
    ids = [s.subject for s in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(source, f"subject ids appear in more than one cohort folder: {dup[:5]}; "
                         "each subject must be in one folder only")
    return out


# -------------------------------------------------------------------------- the step
COHORT_GROUPS = ("train_healthy", "test_healthy", "test_tumor")
#: Subjects and slices per split and label (:func:`~glio_kit.data.slice_cache.cohort_summary`).
SUMMARY = "cohort_summary.csv"


#: How a ``synth_*`` knob set away from its profile's value shows in the cohort's folder name.
SYNTH_NAME_PARTS = dict(synth_train_healthy="train", synth_test_healthy="healthy", synth_test_tumor="tumor",
                        synth_voxel_size="voxel", synth_wmh_fraction="wmh")


def synthetic_root(settings: PrepSettings) -> Path:
    """The synthetic demo cohort's folder (absolute): ``<data>/synthetic-<profile>-seed<seed>``,
    followed by each ``synth_*`` value that differs from the profile's (``-train300``), so that
    another cohort never meets the folder of this one."""
    profile = get_config(settings.profile).prep
    name = f"synthetic-{settings.profile}-seed{settings.seed}"
    for knob, part in SYNTH_NAME_PARTS.items():
        value = getattr(settings, knob)
        if value != getattr(profile, knob):
            name += f"-{part}{value:g}"
    return (default_data_dir() / name).expanduser().resolve()


def cohort_folders(settings: PrepSettings, train_healthy_dir: str = "", test_healthy_dir: str = "",
                   test_tumor_dir: str = "") -> dict:
    """The three cohort folders step 01 reads, as absolute paths, without touching any file.

    The user's folders (relative ones taken from the working directory), or the synthetic
    cohort's when all three are empty. Returns ``{"train_healthy", "test_healthy",
    "test_tumor"}`` -> str: part of the prep step's identity (:func:`prepare`), and what the
    runner compares with the step record before any notebook starts.
    """
    given = {"train_healthy_dir": train_healthy_dir, "test_healthy_dir": test_healthy_dir,
             "test_tumor_dir": test_tumor_dir}
    if any(given.values()):
        missing = [k for k, v in given.items() if not v]
        if missing:
            raise InputError(", ".join(missing), "is empty: give all three cohort folders for real data, "
                             "or none to use the synthetic demo cohort")
        return {g: os.path.abspath(os.path.expanduser(str(v))) for g, v in zip(COHORT_GROUPS, given.values())}
    root = synthetic_root(settings)
    return {g: str(root / g) for g in COHORT_GROUPS}


def resolve_cohort(settings: PrepSettings, train_healthy_dir: str = "", test_healthy_dir: str = "",
                   test_tumor_dir: str = "", progress: bool = True) -> dict:
    """The three cohort folders: the user's, or the synthetic demo cohort when all are empty.

    The synthetic cohort is ``<data>/synthetic-<profile>-seed<seed>`` (:func:`synthetic_root`),
    written once with the ``synth_*`` settings and reused afterwards. Returns dict with ``train_healthy``,
    ``test_healthy``, ``test_tumor`` (absolute str paths, :func:`cohort_folders`) and
    ``synthetic`` (bool).
    """
    folders = cohort_folders(settings, train_healthy_dir, test_healthy_dir, test_tumor_dir)
    if any((train_healthy_dir, test_healthy_dir, test_tumor_dir)):
        return dict(folders, synthetic=False)
    s = settings
    make_cohort(synthetic_root(s), n_train_healthy=s.synth_train_healthy, n_test_healthy=s.synth_test_healthy,
                n_test_tumor=s.synth_test_tumor, seed=s.seed, voxel_size=s.synth_voxel_size,
                wmh_fraction=s.synth_wmh_fraction, progress=progress)
    return dict(folders, synthetic=True)


def prepare(run, settings: PrepSettings, cohort: dict, overwrite: bool = False,
            progress: bool = True) -> SliceCache:
    """Step 01: discover the cohort, split it and build the slice cache in ``run/cache``.

    cohort : from :func:`resolve_cohort`. Reuses the cache when this run folder already
    prepared the same cohort with the same settings; stops with
    :class:`~glio_kit.errors.RunFolderError` when it holds another. Volumes the kit cannot use
    stop it with one :class:`InputError` naming each; warnings are printed and kept in
    ``cache/warnings.csv``. Writes every output the table of steps declares: ``cache/`` and
    ``cohort_summary.csv`` (which counts the warnings).
    """
    folders = {k: cohort[k] for k in ("train_healthy", "test_healthy", "test_tumor")}
    if run.claim_step("prep", settings, extra=folders, overwrite=overwrite) and (run / "cache").exists():
        cache = SliceCache(run / "cache")
        if not (run / SUMMARY).exists():  # a run folder made before step 01 wrote it
            write_text(run / SUMMARY, cohort_summary(cache).to_csv())
        return cache
    subjects = assign_splits(discover(cohort["train_healthy"]), discover(cohort["test_healthy"]),
                             discover(cohort["test_tumor"]), settings.val_fraction, settings.seed,
                             source=cohort["train_healthy"])
    cache = build_cache(subjects, run / "cache", settings, progress=progress)
    for w in cache.warnings.itertuples():
        print(f"warning: {w.subject} ({w.file}): {w.warning}")
    write_text(run / SUMMARY, cohort_summary(cache).to_csv())
    counts = cache.subjects().groupby("split").size().to_dict()
    run.mark_done("prep", n_slices=len(cache), subjects=counts, warnings=len(cache.warnings))
    return cache

"""Preprocessing as the paper does it, and the slice cache every later step reads.

Per volume, streamed one at a time (peak memory does not grow with the cohort):

1. load in canonical RAS orientation, float32 (``glio_kit.data.io``);
2. brain mask = the non-zero voxels (the kit expects skull-stripped volumes, as BraTS ships);
3. normalise: the paper's ``I / SD(I)`` (SD of the whole volume) by default, or a z-score
   inside the brain, or scaling by the brain's 99th percentile;
4. map to the generator's range [-1, 1] with a fixed, documented window per method
   (:data:`GENERATOR_WINDOW`); background is -1;
5. take ``n_slices`` axial slices evenly spaced through a slab of the brain's
   inferior-superior extent (consecutive when the slab is exactly that thick);
6. crop every slice of a volume to the volume's in-plane brain bounding box (plus a margin),
   pad to the target aspect ratio (pad, never stretch) and resize: area-weighted
   (anti-aliased) for images, nearest neighbour for masks.

The cache (``<run>/cache/``) holds ``images.npy`` (float32, N x H x W, in [-1, 1]),
``brain.npy`` and ``lesion.npy`` (uint8, N x H x W), ``index.csv`` (one row per slice:
``row, subject, label, split, slice_index, slice_pos, lesion_pixels, brain_pixels``) and
``prep.json`` (the parameters). Arrays are opened memory-mapped.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from .cohort import Subject, discover
from ..run.config import PrepSettings
from ..errors import InputError
from .io import load_segmentation, load_volume

#: Window of normalised intensities mapped linearly onto [-1, 1] (values outside are clipped).
#: ``sd``: I / SD(I) of a skull-stripped volume puts brain tissue at roughly 1-4 and CSF
#: and lesions up to about 5-6; ``zscore``: standard deviations around the brain mean;
#: ``percentile``: fraction of the brain's 99th percentile.
GENERATOR_WINDOW = {"sd": (0.0, 6.0), "zscore": (-3.0, 5.0), "percentile": (0.0, 1.2)}
CROP_MARGIN = 0.04  # fraction of the bounding box added on each side


# ---------------------------------------------------------------------------- pieces
def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Boolean brain mask of a skull-stripped volume: non-zero voxels, holes filled.

    volume : (X, Y, Z) float array. Returns (X, Y, Z) bool.
    """
    mask = volume > 0
    # Dark CSF pockets or noise can punch holes; a slice-wise fill keeps the brain whole.
    for z in range(mask.shape[2]):
        if mask[:, :, z].any():
            mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def normalise(volume: np.ndarray, brain: np.ndarray, method: str = "sd") -> np.ndarray:
    """Intensity normalisation of one volume.

    ``sd`` is the paper's ``I_new = I / SD(I)`` with SD over the whole volume; ``zscore``
    uses mean and SD inside the brain; ``percentile`` divides by the brain's 99th
    percentile. Returns float32 of the same shape.
    """
    v = volume.astype(np.float32, copy=False)
    if method == "sd":
        sd = float(v.std())
        return v / sd
    vals = v[brain]
    if method == "zscore":
        return (v - vals.mean()) / vals.std()
    if method == "percentile":
        return v / float(np.percentile(vals, 99))
    raise ValueError(f"normalisation must be one of {sorted(GENERATOR_WINDOW)}, got {method!r}")


def to_generator_range(x: np.ndarray, brain: np.ndarray, method: str = "sd") -> np.ndarray:
    """Map normalised intensities to [-1, 1] through :data:`GENERATOR_WINDOW`; background -1."""
    lo, hi = GENERATOR_WINDOW[method]
    out = 2.0 * (np.clip(x, lo, hi) - lo) / (hi - lo) - 1.0
    out[~brain] = -1.0
    return out.astype(np.float32)


def slab_indices(brain: np.ndarray, slab=(0.4, 0.7), n_slices: int = 16) -> np.ndarray:
    """Axial slice indices: ``n_slices`` evenly spaced through ``slab`` of the brain's z extent.

    slab : (low, high) fractions of the inferior-superior extent of the brain (0 = lowest
    brain slice). Returns int array of shape (n_slices,), ascending.
    """
    lo, hi = float(slab[0]), float(slab[1])
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"slab must be two fractions 0 <= low < high <= 1, got {slab}")
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    z0, z1 = zs[0], zs[-1]
    return np.round(np.linspace(z0 + lo * (z1 - z0), z0 + hi * (z1 - z0), int(n_slices))).astype(int)


def axial_view(volume: np.ndarray, z: int) -> np.ndarray:
    """The axial slice ``z`` of a RAS volume as shown in radiology: anterior up, patient's right
    on the image's left. Returns (Y, X)."""
    return volume[:, :, z].T[::-1, ::-1]


def inplane_box(brain: np.ndarray, aspect: float, margin: float = CROP_MARGIN):
    """Crop box (r0, r1, c0, c1) in axial-view coordinates around the brain of the whole
    volume, grown to ``aspect`` = height / width so that resizing never stretches."""
    view = brain.any(axis=2).T[::-1, ::-1]
    rows, cols = np.flatnonzero(view.any(1)), np.flatnonzero(view.any(0))
    h = (rows[-1] - rows[0] + 1) * (1 + 2 * margin)
    w = (cols[-1] - cols[0] + 1) * (1 + 2 * margin)
    if h / w < aspect:
        h = w * aspect
    else:
        w = h / aspect
    rc, cc = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
    return (int(round(rc - h / 2)), int(round(rc - h / 2)) + int(round(h)),
            int(round(cc - w / 2)), int(round(cc - w / 2)) + int(round(w)))


def crop_pad(img: np.ndarray, box, fill: float) -> np.ndarray:
    """Crop ``img`` (H, W) to ``box``; parts of the box outside the image are ``fill``."""
    r0, r1, c0, c1 = box
    out = np.full((r1 - r0, c1 - c0), fill, dtype=img.dtype)
    sr0, sr1, sc0, sc1 = max(r0, 0), min(r1, img.shape[0]), max(c0, 0), min(c1, img.shape[1])
    out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = img[sr0:sr1, sc0:sc1]
    return out


def resize_slices(stack: np.ndarray, hw, kind: str = "image") -> np.ndarray:
    """Resize a (N, h, w) stack to (N, H, W): anti-aliased bilinear for images, nearest for masks."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if kind == "image":
        t = F.interpolate(t, size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
    else:
        t = F.interpolate(t, size=tuple(hw), mode="nearest")
    return t[:, 0].numpy()


# ------------------------------------------------------------------- volume checks
#: A volume must be at least this many voxels along each axis, and its brain mask this many voxels.
MIN_SIDE, MIN_BRAIN_VOXELS = 8, 500
#: The brain mask (voxels above 0) of a skull-stripped volume covers well under half of the
#: field of view (a brain cropped tight to its bounding box: about half); more means skull,
#: scalp or a non-zero background are in it.
MAX_BRAIN_FOV = 0.6
#: Share of the non-zero voxels that may be negative: a raw T2 has none (a few from
#: resampling); a z-scored volume has about half, which the "above 0 = brain" rule would drop.
MAX_NEGATIVE = 0.05


def check_volume(subject: Subject, data: np.ndarray, brain: np.ndarray, seg, settings: PrepSettings) -> list:
    """Checks of one volume before it reaches the cache.

    data : (X, Y, Z) float32; brain : (X, Y, Z) bool (:func:`brain_mask`); seg : labels or None.
    Raises :class:`InputError` naming the file for what the kit cannot use (too small, constant,
    negative intensities of a normalised volume, a brain mask covering most of the field of view,
    fewer axial slices than ``n_slices``, a tumour case with an empty segmentation). Returns
    warnings (str) for what the user may mean: a tumour case without a segmentation, a healthy
    subject with a lesion mask (and, found later, a tumour outside the sampled slices).
    """
    img = subject.image
    if min(data.shape) < MIN_SIDE:
        raise InputError(img, f"volume of shape {data.shape} is too small to be a brain MRI (at least "
                              f"{MIN_SIDE} voxels along each axis)")
    nonzero = data[data != 0]
    if nonzero.size and float(nonzero.min()) == float(nonzero.max()) and nonzero.size > 0.99 * data.size:
        raise InputError(img, f"constant volume: every voxel is {float(nonzero[0]):g}; there is no image "
                              "to learn from")
    neg = int((nonzero < 0).sum())
    if neg > MAX_NEGATIVE * nonzero.size:
        raise InputError(img, f"{100 * neg / nonzero.size:.0f}% of the non-zero voxels are negative: the "
                              "volume looks already normalised (e.g. z-scored). The kit's brain mask is "
                              "the voxels above 0, so it would lose them; give the raw skull-stripped T2 "
                              "(the kit normalises it itself: normalisation = sd | zscore | percentile)")
    fov = float(brain.mean())
    if fov > MAX_BRAIN_FOV:
        raise InputError(img, f"the brain mask (voxels above 0) covers {100 * fov:.0f}% of the field of "
                              "view: the volume does not look skull-stripped (or its background is not 0). "
                              "Skull-strip it and write the background as 0 (data/README.md: HD-BET or "
                              "FSL BET)")
    if int(brain.sum()) < MIN_BRAIN_VOXELS:
        raise InputError(img, f"the brain mask (voxels above 0) holds only {int(brain.sum())} voxels; "
                              "too few for a brain volume")
    vals = data[brain]
    if float(vals.min()) == float(vals.max()):
        raise InputError(img, f"the brain holds one intensity value ({float(vals[0]):g}): no contrast "
                              "to learn from")
    zs = slab_indices(brain, settings.slab, settings.n_slices)
    n_unique, n = len(np.unique(zs)), settings.n_slices
    if n_unique < n:
        raise InputError(img, f"the brain spans only {n_unique} axial slices in the slab "
                              f"{list(settings.slab)} of its extent, fewer than n_slices={n}: slices would "
                              "repeat. Lower n_slices or widen slab (or check the volume's orientation and "
                              "slice thickness)")
    warnings = []
    if seg is not None and not seg.any() and subject.label == 1:
        raise InputError(subject.mask, "segmentation of a tumour case is empty (no labelled voxel); "
                                       "check the file, or leave the mask out to use the case without "
                                       "pixel metrics")
    if seg is None and subject.label == 1:
        warnings.append("tumour case without a segmentation: it counts for detection, not for the pixel "
                        "metrics")
    if seg is not None and seg.any() and subject.label == 0:
        warnings.append(f"healthy subject whose mask {Path(subject.mask).name} marks {int((seg > 0).sum())} "
                        "voxels; the mask is used for pixel metrics only, the subject counts as healthy")
    return warnings


def preprocess_volume(subject: Subject, settings: PrepSettings) -> dict:
    """Everything the cache stores for one subject (checked first: :func:`check_volume`).

    Returns dict with ``images`` (n_slices, H, W) float32 in [-1, 1], ``brain`` and
    ``lesion`` (n_slices, H, W) uint8, ``slice_index`` (n_slices,) int and ``warnings``
    (list of str, for the cohort summary).
    """
    vol = load_volume(subject.image)
    brain = brain_mask(vol.data)
    seg = load_segmentation(subject.mask, vol) if subject.mask else None
    warnings = check_volume(subject, vol.data, brain, seg, settings)
    method = settings.normalisation
    x = to_generator_range(normalise(vol.data, brain, method), brain, method)
    zs = slab_indices(brain, settings.slab, settings.n_slices)
    hw = settings.image_size
    box = inplane_box(brain, hw[0] / hw[1])
    img = np.stack([crop_pad(axial_view(x, z), box, -1.0) for z in zs])
    brn = np.stack([crop_pad(axial_view(brain, z), box, False) for z in zs]).astype(np.float32)
    brain_small = resize_slices(brn, hw, "mask") > 0.5
    images = np.clip(resize_slices(img, hw, "image"), -1.0, 1.0)
    images[~brain_small] = -1.0  # the blur of resizing must not leak outside the brain mask
    out = dict(images=images.astype(np.float32), brain=brain_small.astype(np.uint8), slice_index=zs)
    if seg is not None:
        les = np.stack([crop_pad(axial_view(seg > 0, z), box, False) for z in zs]).astype(np.float32)
        out["lesion"] = (resize_slices(les, hw, "mask") > 0.5).astype(np.uint8) * out["brain"]
        if subject.label == 1 and not out["lesion"].any():
            warnings.append(f"the tumour lies outside the {settings.n_slices} sampled slices (slab "
                            f"{list(settings.slab)}): the subject counts as tumour but its slices show "
                            "none; widen slab if this is not meant")
    else:
        out["lesion"] = np.zeros_like(out["brain"])
    out["warnings"] = warnings
    return out


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


# ----------------------------------------------------------------------------- cache
#: Columns of ``<cache>/warnings.csv``: one row per warning of :func:`check_volume`.
WARNING_COLUMNS = ["subject", "split", "label", "file", "warning"]


class SliceCache:
    """The preprocessed slices of a run, memory-mapped.

    Attributes
    ----------
    images : (N, H, W) float32 memmap in [-1, 1] (background -1)
    brain, lesion : (N, H, W) uint8 memmaps (1 = inside)
    index : DataFrame, one row per slice (``row, subject, label, split, slice_index,
        slice_pos, lesion_pixels, brain_pixels``)
    meta : dict, the preprocessing parameters
    warnings : DataFrame (:data:`WARNING_COLUMNS`), what the volume checks warned about

    A file of the cache that cannot be read (cut short, edited, of another shape than the
    index says) raises :class:`~glio_kit.errors.RunFolderError` naming it and saying how to
    rebuild the cache.
    """

    FILES = ("images.npy", "brain.npy", "lesion.npy", "index.csv", "prep.json")

    def __init__(self, folder):
        self.folder = Path(folder)
        missing = [f for f in self.FILES if not (self.folder / f).exists()]
        if missing:
            raise InputError(self.folder,
                             f"not a complete slice cache (missing {missing}); run notebook 01 first")
        self.index = self._read("index.csv", lambda p: pd.read_csv(p, dtype={"subject": str}))
        self.images, self.brain, self.lesion = (self._read(f, lambda p: np.load(p, mmap_mode="r"))
                                                for f in ("images.npy", "brain.npy", "lesion.npy"))
        self.meta = self._read("prep.json", lambda p: json.loads(p.read_text()))
        warn = self.folder / "warnings.csv"
        self.warnings = (self._read("warnings.csv", pd.read_csv) if warn.exists()
                         else pd.DataFrame(columns=WARNING_COLUMNS))
        shapes = {a.shape for a in (self.images, self.brain, self.lesion)}
        if len(shapes) != 1 or next(iter(shapes))[0] != len(self.index) or "subject" not in self.index:
            self._corrupt("the arrays and index.csv do not agree "
                          f"(shapes {sorted(shapes)}, {len(self.index)} index rows)")

    def _read(self, name: str, reader):
        try:
            return reader(self.folder / name)
        except Exception as err:  # noqa: BLE001 - any reader's error means the same to the user
            self._corrupt(f"{name} cannot be read ({type(err).__name__}: {err})")

    def _corrupt(self, problem: str):
        from ..errors import RunFolderError

        raise RunFolderError(f"{self.folder}: the slice cache is damaged: {problem}. Rebuild it: "
                             f"`glio-kit run --force prep` (or notebook 01 with overwrite=True), or use a "
                             f"new run folder")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])

    def rows(self, split: str | None = None, label: int | None = None) -> np.ndarray:
        """Row numbers of the slices in ``split`` (train/val/test) and/or with ``label``."""
        sel = np.ones(len(self.index), bool)
        if split is not None:
            sel &= (self.index["split"] == split).to_numpy()
        if label is not None:
            sel &= (self.index["label"] == label).to_numpy()
        return np.flatnonzero(sel)

    def subjects(self) -> pd.DataFrame:
        """One row per subject: ``subject, label, split, n_slices, lesion_pixels``."""
        g = self.index.groupby("subject", sort=False)
        return pd.DataFrame(dict(
            label=g["label"].first(), split=g["split"].first(),
            n_slices=g.size(), lesion_pixels=g["lesion_pixels"].sum(),
        )).reset_index()


def _all_errors(errors: list) -> InputError:
    """One InputError for every volume that cannot be used (the first one's file leads)."""
    if len(errors) == 1:
        return errors[0]
    rest = "".join(f"\n  {e}" for e in errors[1:21]) + ("\n  ..." if len(errors) > 21 else "")
    return InputError(errors[0].path, f"{errors[0].problem}\n{len(errors) - 1} more volume(s) cannot be "
                                      f"used:{rest}")


def build_cache(subjects: list[Subject], folder, settings: PrepSettings, progress: bool = True) -> SliceCache:
    """Preprocess ``subjects`` one volume at a time into a slice cache at ``folder``.

    The arrays are written slice-block by slice-block straight into pre-allocated ``.npy``
    files, so peak memory is that of one volume whatever the cohort size. The cache is built
    in ``<folder>.partial`` and renamed when complete: an interrupted run never leaves a
    cache that looks finished. Every volume is checked (:func:`check_volume`); the volumes
    that cannot be used are named together in one :class:`InputError` and no cache is left;
    warnings go to ``warnings.csv`` (:data:`WARNING_COLUMNS`).
    """
    from ..progress import tqdm

    from ..run.runtime import quiet

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n, (h, w) = len(subjects) * settings.n_slices, settings.image_size
    specs = {"images.npy": np.float32, "brain.npy": np.uint8, "lesion.npy": np.uint8}
    offsets = {}
    for name, dtype in specs.items():
        arr = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=dtype, shape=(n, h, w))
        offsets[name] = arr.offset
        del arr  # header written; data goes in by plain file writes (page cache, not our RSS)
    rows, warnings, errors = [], [], []
    files = {name: open(tmp / name, "r+b") for name in specs}
    try:
        for k, subj in enumerate(tqdm(subjects, desc="preprocess", disable=not progress or quiet())):
            try:
                out = preprocess_volume(subj, settings)
            except InputError as err:  # every bad volume is reported, not only the first
                errors.append(err)
                continue
            for name, key in (("images.npy", "images"), ("brain.npy", "brain"), ("lesion.npy", "lesion")):
                block = np.ascontiguousarray(out[key], dtype=specs[name])
                files[name].seek(offsets[name] + k * block.nbytes)
                files[name].write(block.tobytes())
            for j, z in enumerate(out["slice_index"]):
                rows.append(dict(row=len(rows), subject=subj.subject, label=subj.label, split=subj.split,
                                 slice_index=int(z), slice_pos=j,
                                 lesion_pixels=int(out["lesion"][j].sum()),
                                 brain_pixels=int(out["brain"][j].sum()),
                                 image=str(subj.image), mask=str(subj.mask or "")))
            warnings += [dict(subject=subj.subject, split=subj.split, label=subj.label, file=str(subj.image),
                              warning=w) for w in out["warnings"]]
    finally:
        for f in files.values():
            f.close()
    if errors:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _all_errors(errors)
    pd.DataFrame(warnings, columns=WARNING_COLUMNS).to_csv(tmp / "warnings.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp / "index.csv", index=False)
    meta = {k: v for k, v in settings.identity().items() if not k.startswith("synth_")}
    meta["generator_window"] = GENERATOR_WINDOW[settings.normalisation]
    (tmp / "prep.json").write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return SliceCache(folder)


# -------------------------------------------------------------------------- the step
COHORT_GROUPS = ("train_healthy", "test_healthy", "test_tumor")


#: How a ``synth_*`` knob set away from its profile's value shows in the cohort's folder name.
SYNTH_NAME_PARTS = dict(synth_train_healthy="train", synth_test_healthy="healthy", synth_test_tumor="tumor",
                        synth_voxel_size="voxel", synth_wmh_fraction="wmh")


def synthetic_root(settings: PrepSettings) -> Path:
    """The synthetic demo cohort's folder (absolute): ``<data>/synthetic-<profile>-seed<seed>``,
    followed by each ``synth_*`` value that differs from the profile's (``-train300``), so that
    another cohort never meets the folder of this one."""
    from ..run.config import get_config
    from ..run.runtime import default_data_dir

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
    from .synth import make_cohort

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
    ``cache/warnings.csv`` (the cohort summary counts them).
    """
    folders = {k: cohort[k] for k in ("train_healthy", "test_healthy", "test_tumor")}
    if run.claim_step("prep", settings, extra=folders, overwrite=overwrite) and (run / "cache").exists():
        return SliceCache(run / "cache")
    subjects = assign_splits(discover(cohort["train_healthy"]), discover(cohort["test_healthy"]),
                             discover(cohort["test_tumor"]), settings.val_fraction, settings.seed,
                             source=cohort["train_healthy"])
    cache = build_cache(subjects, run / "cache", settings, progress=progress)
    for w in cache.warnings.itertuples():
        print(f"warning: {w.subject} ({w.file}): {w.warning}")
    counts = cache.subjects().groupby("split").size().to_dict()
    run.mark_done("prep", n_slices=len(cache), subjects=counts, warnings=len(cache.warnings))
    return cache

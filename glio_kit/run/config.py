"""Settings: one typed class per step, built from a profile plus overrides.

Every knob of the kit is written once, here, as a field of the settings class of the step
that reads it (with its default, its help text and whether it changes a result). From these
fields derive:

- the notebooks' ``parameters`` cells (:mod:`glio_kit.run.notebook` writes them; a test checks
  they are in sync),
- the names ``glio-kit run -p NAME=VALUE`` and a batch grid accept (unknown names are
  refused, which catches typos such as ``-p epoch=3``),
- each step's record in ``<run>/steps/<step>.json`` (:meth:`StepSettings.identity`).

A profile is a starting point, never a cage: any value can be overridden. The profile can
come from the environment variable ``GLIO_KIT_PROFILE`` so that nbval runs in ``smoke``.

    smoke  tests and CI: tiny images, a handful of subjects, every notebook in seconds
    demo   ``make demo`` on a laptop CPU: 64x64, the paper's 27 + 27 test subjects
    paper  a GPU: 448x364 (height x width; the paper's "364x448"), 150 epochs, 500 mapping
           steps, lambda = 0.1
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

import yaml

from ..errors import GlioKitError

PROFILE_ENV = "GLIO_KIT_PROFILE"
DEFAULT_PROFILE = "demo"
#: Said wherever smoke results show (notebooks, the CLI, batch summaries, the run report).
SMOKE_NOTE = ("smoke profile: the models are far too small to learn. Flat grey G(z) and chance-level or "
              "identical metrics are expected; this profile checks that the chain runs, not the method.")

NORMALISATIONS = ("sd", "zscore", "percentile")
#: Site harmonisation after the normalisation (glio_kit.data.harmonise).
HARMONISATIONS = ("none", "landmarks")
MAPPINGS = ("iterative", "encoder", "encoder+iterative")
RESIDUAL_KINDS = ("positive", "absolute")


def knob(default, help: str, result: bool = True):
    """A settings field. ``result=False`` marks a knob that changes how fast or where a step
    runs, or what it shows, but not what it computes (not part of the step's identity)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=dict(help=help, result=result))
    return field(default=default, metadata=dict(help=help, result=result))


@dataclass(frozen=True)
class StepSettings:
    """Knobs every step reads."""

    seed: int = knob(0, "one seed for Python, NumPy and torch; a run can be repeated")
    device: str = knob("auto", "auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)", result=False)
    # set by get_config from the profile's name (not a knob: the profile is chosen, not overridden)
    profile: str = field(default=DEFAULT_PROFILE, metadata=dict(help="smoke | demo | paper", result=False))

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            kind = {int: int, float: float, bool: bool, str: str}.get(_annotation(f))
            if kind is not None and v is not None and not isinstance(v, kind):
                try:
                    v = _coerce(kind, v)
                except (TypeError, ValueError):
                    raise ValueError(f"{f.name} must be {kind.__name__}, got {v!r}") from None
                object.__setattr__(self, f.name, v)
        self.check()

    def check(self) -> None:
        """Raise ValueError for a value the step cannot use (overridden per step)."""

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """The names a user can set (``-p NAME=VALUE``, notebook parameters, grid files)."""
        return tuple(f.name for f in fields(cls) if f.name != "profile")

    @classmethod
    def help(cls, name: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]

    def identity(self) -> dict:
        """The knobs that decide what the step computes (its step record's parameters)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata.get("result", True)}

    def as_dict(self) -> dict:
        """Every knob, as plain JSON values (recorded beside the identity)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _annotation(f) -> type | None:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return {"int": int, "float": float, "bool": bool, "str": str}.get(t)


def _coerce(kind, v):
    if kind is bool:
        if isinstance(v, str):
            if v.lower() in ("true", "1", "yes"):
                return True
            if v.lower() in ("false", "0", "no"):
                return False
            raise ValueError(v)
        return bool(v)
    if kind is int and isinstance(v, float) and not v.is_integer():
        raise ValueError(v)
    return kind(v)


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


@dataclass(frozen=True)
class PrepSettings(StepSettings):
    """Step 01: the cohort (synthetic when no folders are given) and the slice cache."""

    # 68 x 0.28 = 19 validation subjects: the threshold of the "at most 5 % flagged" rule (their maximum)
    # is then exceeded by 1/20 = 5 % of new healthy subjects (metrics.expected_fpr; 12 gave 7.7 %)
    synth_train_healthy: int = knob(68, "synthetic cohort: healthy training subjects (train + validation)")
    synth_test_healthy: int = knob(27, "synthetic cohort: healthy test subjects (paper: 27)")
    synth_test_tumor: int = knob(27, "synthetic cohort: tumour test subjects (paper: 27)")
    synth_voxel_size: float = knob(2.0, "synthetic cohort: voxel size in mm (the templates are 1 mm)")
    synth_wmh_fraction: float = knob(0.3, "synthetic cohort: share of healthy test subjects with "
                                          "WM hyperintensities")
    normalisation: str = knob("sd", "sd (paper: I / SD(I)) | zscore | percentile")
    harmonisation: str = knob("none", "none (paper) | landmarks (percentiles matched to "
                                      "healthy training ones)")
    image_size: tuple = knob((64, 64), "int (square) or [height, width]; paper: [448, 364]")
    slab: tuple = knob((0.40, 0.70), "axial slab as fractions of the brain's inferior-superior extent")
    n_slices: int = knob(16, "axial slices per subject taken from the slab")
    val_fraction: float = knob(0.28, "share of healthy training subjects held out for calibration "
                                    "and thresholds")

    def check(self) -> None:
        object.__setattr__(self, "image_size", tuple(image_hw(self.image_size)))
        slab = tuple(float(s) for s in self.slab)
        if len(slab) != 2 or not 0 <= slab[0] < slab[1] <= 1:
            raise ValueError(f"slab must be [low, high] with 0 <= low < high <= 1, got {self.slab!r}")
        object.__setattr__(self, "slab", slab)
        _choice("normalisation", self.normalisation, NORMALISATIONS)
        _choice("harmonisation", self.harmonisation, HARMONISATIONS)
        if self.n_slices < 1:
            raise ValueError(f"n_slices must be at least 1, got {self.n_slices}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainSettings(StepSettings):
    """Step 02: the DCGAN on healthy training slices (paper: 150 epochs, lr 0.002)."""

    latent_dim: int = knob(100, "size of the latent vector z (DCGAN: 100)")
    ngf: int = knob(32, "generator width (feature maps); small on a CPU")
    ndf: int = knob(32, "discriminator width")
    epochs: int = knob(70, "paper: 150; demo: chosen on a separate synthetic cohort (seed 1)")
    batch_size: int = knob(32, "training batch size")
    # The paper's 0.002. DCGAN's usual 0.0002 left the discriminator winning and the generator
    # blurry within the demo's CPU budget; notebook 02 trains both side by side.
    lr: float = knob(0.002, "Adam learning rate (the paper: 0.002; DCGAN's usual: 0.0002)")
    beta1: float = knob(0.5, "Adam beta1 (DCGAN: 0.5)")
    beta2: float = knob(0.999, "Adam beta2")
    # Not in the paper. Averaging G's weights over the last few hundred updates smooths the
    # oscillation of a GAN trained at lr 0.002; sampling and the latent mapping use the average.
    ema_decay: float = knob(0.0, "moving average of G used after training (0: off, "
                                 "the paper; demo: 0.995)")
    amp: bool = knob(True, "mixed precision + channels-last on CUDA (ignored on CPU)")
    checkpoint_every: int = knob(10, "keep a checkpoint every k epochs (last.pt is written every epoch)",
                                 result=False)
    compare_paper_lr_epochs: int = knob(3, "notebook 02: a short side run at 0.0002 beside lr (0: skip)",
                                        result=False)

    def check(self) -> None:
        for name in ("latent_dim", "ngf", "ndf", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 0 or self.lr <= 0:
            raise ValueError(f"epochs must be >= 0 and lr > 0, got {self.epochs}, {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")


@dataclass(frozen=True)
class ScoreSettings(StepSettings):
    """Step 03: latent mapping, scores and residual maps (AnoGAN: lambda 0.1, 500 steps)."""

    mapping: str = knob("iterative", "iterative (paper) | encoder | encoder+iterative")
    mapping_steps: int = knob(150, "latent mapping steps (paper/AnoGAN: 500; the demo profile: 150)")
    mapping_lr: float = knob(0.05, "Adam learning rate of the latent search")
    mapping_batch_size: int = knob(128, "slices mapped at once (the same result at any size)", result=False)
    restarts: int = knob(1, "initial z per slice, the best kept")
    lam: float = knob(0.1, "weight of the discrimination loss (paper: 0.1)")
    encoder_epochs: int = knob(20, "f-AnoGAN encoder: training epochs")
    encoder_lr: float = knob(1e-3, "f-AnoGAN encoder: Adam learning rate")
    encoder_batch_size: int = knob(32, "f-AnoGAN encoder: training batch size")
    kappa: float = knob(1.0, "f-AnoGAN izi_f weight of the feature term")
    subject_reduction: str = knob("mean", "mean (paper) | max | topk of raw slice A, then "
                                          "scaled | mean_of_scaled")
    topk: int = knob(3, "how many of the highest slice scores the topk reduction averages")
    residual_kind: str = knob("positive", "residual maps for metrics: positive max(x - G(z), 0) | absolute")
    median_filter: int = knob(3, "residual maps: median filter size in pixels (0: off)")
    erode: int = knob(1, "residual maps: brain mask erosion in pixels")

    def check(self) -> None:
        _choice("mapping", self.mapping, MAPPINGS)
        from ..detect.subject_scores import REDUCTIONS  # here: it imports pandas (slow)

        _choice("subject_reduction", self.subject_reduction, REDUCTIONS)
        _choice("residual_kind", self.residual_kind, RESIDUAL_KINDS)
        for name in ("mapping_steps", "median_filter", "erode", "encoder_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("restarts", "mapping_batch_size", "encoder_batch_size", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")


@dataclass(frozen=True)
class ViewSettings(StepSettings):
    """Step 04: what the residual figures and the browser show (no effect on any result)."""

    subject_healthy: str = knob("", "Figure 4 subject (empty: the healthy test subject with the "
                                    "median score)", result=False)
    subject_tumor: str = knob("", "Figure 5 subject (empty: the tumour test subject with the median score)",
                              result=False)
    n_figure_slices: int = knob(4, "slices shown in Figures 4 and 5", result=False)


@dataclass(frozen=True)
class EvaluateSettings(StepSettings):
    """Step 05: thresholds from healthy validation data, metrics, baseline."""

    fpr_target: float = knob(0.05, "subject threshold: at most this share of healthy validation "
                                   "subjects flagged")
    pixel_percentile: float = knob(99.0, "pixel threshold: this percentile of healthy validation residuals")
    # not the residual's 99: edema lies below CSF on T2; to be chosen on development seeds
    intensity_percentile: float = knob(99.0, "intensity baseline: this percentile of healthy validation "
                                             "pixels")
    n_bootstrap: int = knob(1000, "bootstrap resamples of the 95% confidence intervals")
    lesion_min_size: int = knob(5, "lesion load: components smaller than this many voxels count as none")
    # chosen on development cohorts (other synthetic seeds), never on the demo's test subjects
    # allowed: the table of detectors' (glio_kit.detect.detectors.recommendable), see check()
    recommended_score: str = knob("lesion_load",
                                  "recommended subject score: paper | residual_area | lesion_load")

    def check(self) -> None:
        # imported here, not at the top: the table of detectors imports pandas and scipy, which
        # the CLI's start (and every settings class) does not need
        from ..detect.detectors import recommendable

        _choice("recommended_score", self.recommended_score, recommendable())
        if self.lesion_min_size < 1:
            raise ValueError(f"lesion_min_size must be at least 1, got {self.lesion_min_size}")
        if not 0 <= self.fpr_target <= 1:
            raise ValueError(f"fpr_target must be in [0, 1], got {self.fpr_target}")
        for name in ("pixel_percentile", "intensity_percentile"):
            if not 0 < getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {getattr(self, name)}")


#: The settings class of each step, in chain order.
SETTINGS = dict(prep=PrepSettings, train=TrainSettings, score=ScoreSettings, residuals=ViewSettings,
                metrics=EvaluateSettings)

PROFILES: dict[str, dict] = {
    "smoke": dict(
        synth_train_healthy=4, synth_test_healthy=2, synth_test_tumor=2, synth_voxel_size=4.0,
        synth_wmh_fraction=0.5, image_size=32, n_slices=4, val_fraction=0.25,
        ngf=8, ndf=8, epochs=2, batch_size=8, checkpoint_every=1, compare_paper_lr_epochs=1,
        mapping_steps=5, mapping_batch_size=64, encoder_epochs=1, encoder_batch_size=8, n_bootstrap=50,
    ),
    # the moving average of G: chosen on development cohorts 1 and 2 (experiments/levers.md)
    "demo": dict(ema_decay=0.995),
    "paper": dict(
        synth_train_healthy=300, synth_voxel_size=1.0, image_size=[448, 364], n_slices=24,
        ngf=64, ndf=64, epochs=150, batch_size=64, checkpoint_every=10,
        mapping_steps=500, mapping_batch_size=64, encoder_epochs=50, encoder_batch_size=64,
    ),
}


def all_knobs() -> dict[str, tuple[str, ...]]:
    """``{knob: steps that read it}`` over every settings class, in chain order."""
    out: dict[str, list[str]] = {}
    for step, cls in SETTINGS.items():
        for name in cls.knobs():
            out.setdefault(name, []).append(step)
    return {k: tuple(v) for k, v in out.items()}


def profile_name(profile: str | None = None) -> str:
    """The profile to use: the argument, else ``$GLIO_KIT_PROFILE``, else ``demo``."""
    name = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return name


@dataclass(frozen=True)
class Settings:
    """Every step's settings for one run: ``s.prep``, ``s.train``, ``s.score``, ``s.residuals``,
    ``s.metrics``; ``s.profile`` is the profile they started from."""

    profile: str
    prep: PrepSettings
    train: TrainSettings
    score: ScoreSettings
    residuals: ViewSettings
    metrics: EvaluateSettings

    def step(self, name: str) -> StepSettings:
        return getattr(self, name)

    def as_dict(self) -> dict:
        """Every knob of every step in one flat dictionary (plus ``profile``)."""
        out = {}
        for step in SETTINGS:
            out.update(self.step(step).as_dict())
        return out


def get_config(profile: str | None = None, **overrides) -> Settings:
    """Every step's settings for ``profile`` with ``overrides`` applied.

    Overrides whose value is ``None`` are ignored, so a notebook can pass its whole
    ``parameters`` cell (``None`` = "the profile's value"). Unknown names are an error, which
    catches typos such as ``-p epoch=3``; a value a step cannot use is an error too.
    """
    name = profile_name(profile)
    known = all_knobs()
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
    values = dict(PROFILES[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    built = {step: cls(profile=name, **{k: v for k, v in values.items() if k in cls.knobs()})
             for step, cls in SETTINGS.items()}
    return Settings(profile=name, **built)


def image_hw(size) -> list[int]:
    """``64`` -> ``[64, 64]``; ``[448, 364]`` stays ``[height, width]``."""
    if isinstance(size, (int, float)):
        return [int(size), int(size)]
    if isinstance(size, str):
        parts = size.lower().replace("x", ",").split(",")
        size = [int(p) for p in parts if p.strip()]
    size = [int(s) for s in size]
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"image_size must be an int or [height, width] of at least 8, got {size}")
    return size


def parse_assignments(items: list[str]) -> dict:
    """Knob assignments as the command line gives them (``-p name=value``).

    Parameters
    ----------
    items : list of str
        ``["lam=0.1", "image_size=[64,64]"]``; each value is read as YAML.

    Returns
    -------
    dict
        ``{"lam": 0.1, "image_size": [64, 64]}``.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise GlioKitError(f"-p expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(value)
    return out

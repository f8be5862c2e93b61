"""Checks of the mapping loss's two terms and of the anomaly score (notebook 03).

Every check calls the student's function and the library's (:mod:`.library`) on the same
random and edge-case inputs. A mismatch raises :class:`ExerciseError` whose message says in
one or two sentences what is wrong; a match prints one line.
"""
from __future__ import annotations

import numpy as np
import torch

from . import library as lib

__all__ = ["ExerciseError", "check_residual_loss", "check_discrimination_loss", "check_anomaly_score",
           "check_scale_scores",
           "call", "passed", "as_array", "tiny_models"]


class ExerciseError(AssertionError):
    """The student's function does not do what the paper's step does; the message says why."""


def call(fn, *args, name: str | None = None, **kwargs):
    """``fn(*args, **kwargs)``, with an unwritten or crashing exercise turned into :class:`ExerciseError`."""
    name = name or getattr(fn, "__name__", "your function")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise ExerciseError(f"{name} is not written yet: replace `raise NotImplementedError` with your "
                            f"code, then run this check again.") from None
    except ExerciseError:
        raise
    except Exception as e:
        raise ExerciseError(f"{name} raised {type(e).__name__}: {e}") from e


def passed(name: str, n_cases: int) -> None:
    """The one line a check prints when everything matched."""
    print(f"\u2713 {name}: matches the library ({n_cases} test{'s' if n_cases != 1 else ''}).")


def as_array(value, name: str) -> np.ndarray:
    """The student's result as a float64 NumPy array (tensors detached)."""
    if torch.is_tensor(value):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExerciseError(f"{name} must return numbers (an array or tensor), got "
                            f"{type(value).__name__}.") from None


def tiny_models(seed: int = 0, image_size=(16, 16), latent_dim: int = 8):
    """A small DCGAN (the library's :func:`build_models`) with seeded weights, for the checks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G, D = lib.build_models(latent_dim, 4, 4, image_size)
    return G, D


def compare(got, expected, name: str, case: str, alternatives=(), rtol: float = 1e-5, atol: float = 1e-6):
    """Raise :class:`ExerciseError` unless ``got`` equals ``expected`` (arrays of one shape).

    alternatives : ``(value, message)`` pairs: the results of common wrong answers; when
        ``got`` equals one of them, its message is the one given.
    """
    g, e = as_array(got, name), np.asarray(expected, dtype=np.float64)
    if g.shape != e.shape:
        why = ("you reduce over the batch too" if g.ndim < e.ndim
               else "reduce over all of each slice's elements")
        raise ExerciseError(f"{name} ({case}): expected shape {e.shape}, got {g.shape}; {why} "
                            f"(one value per slice).")
    if np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
        return
    for value, message in alternatives:
        v = np.asarray(value, dtype=np.float64)
        if v.shape == g.shape and np.allclose(g, v, rtol=rtol, atol=atol):
            raise ExerciseError(f"{name} ({case}): {message}")
    raise ExerciseError(f"{name} ({case}): expected {np.round(e.ravel()[:4], 5)}, got "
                        f"{np.round(g.ravel()[:4], 5)} (first values).")


def _images(n: int, seed: int, size=(16, 16)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, *size, generator=gen) * 2 - 1


def check_residual_loss(residual_loss) -> None:
    """Check ``residual_loss(x, gz)`` -> (N,) ``L_R = sum over pixels |x - G(z)|`` per slice.

    Compared with the residual term of :func:`glio_kit.detect.mapping.mapping_loss` for
    batches of 5 and of 1 slice (an edge case: the result must keep its batch axis).
    """
    G, D = tiny_models()
    cases = 0
    for n, seed in ((5, 1), (1, 2)):
        x = _images(n, seed)
        z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
        with lib.frozen(G, D), torch.no_grad():
            _, l_r, _, gz = lib.mapping_loss(G, D, x, D.features(x), z, 0.1)
        got = call(residual_loss, x.clone(), gz.clone(), name="residual_loss")
        diff = x - gz
        compare(got, l_r, "residual_loss", f"a batch of {n}", alternatives=(
            (l_r / diff[0].numel(), "you average over the pixels; the mapping loss L_R sums |x - G(z)| "
                                    "over each slice's pixels (the score R is the mean, the loss the sum)."),
            (diff.pow(2).flatten(1).sum(1), "you square the difference; L_R is the L1 norm, |x - G(z)|."),
            (diff.flatten(1).sum(1), "take the absolute value: L_R sums |x - G(z)|, not x - G(z)."),
            (-diff.flatten(1).sum(1), "take the absolute value: L_R sums |x - G(z)|, not G(z) - x."),
        ))
        cases += 1
    passed("residual_loss", cases)


def check_discrimination_loss(discrimination_loss) -> None:
    """Check ``discrimination_loss(fx, fgz)`` -> (N,) ``L_D = sum |f(x) - f(G(z))|`` per slice.

    ``fx``, ``fgz`` are discriminator features (N, C, h, w); compared with the feature term of
    :func:`glio_kit.detect.mapping.mapping_loss`.
    """
    G, D = tiny_models()
    cases = 0
    for n, seed in ((5, 3), (1, 4)):
        x = _images(n, seed)
        z = torch.randn(n, G.latent_dim, generator=torch.Generator().manual_seed(seed))
        with lib.frozen(G, D), torch.no_grad():
            fx = D.features(x)
            _, _, l_d, gz = lib.mapping_loss(G, D, x, fx, z, 0.1)
            fgz = D.features(gz)
        got = call(discrimination_loss, fx.clone(), fgz.clone(), name="discrimination_loss")
        diff = fx - fgz
        compare(got, l_d, "discrimination_loss", f"features of {n} slice(s), shape {tuple(fx.shape)}",
                alternatives=(
                    (l_d / diff[0].numel(), "you average over the feature elements; L_D sums "
                                            "|f(x) - f(G(z))| over every feature element of a slice."),
                    (diff.pow(2).flatten(1).sum(1), "you square the difference; L_D is the L1 norm."),
                    (diff.flatten(1).sum(1), "take the absolute value of f(x) - f(G(z))."),
                ))
        cases += 1
    passed("discrimination_loss", cases)


def check_anomaly_score(anomaly_score) -> None:
    """Check ``anomaly_score(R, D, lam)`` -> (N,) ``A = (1 - lam) * R + lam * D``.

    Compared with :func:`glio_kit.detect.mapping.anomaly_score` for NumPy inputs at the
    paper's lam = 0.1 and the edge cases lam = 0 (residual only) and lam = 1.
    """
    rng = np.random.default_rng(5)
    R, Dv = rng.random(7), rng.random(7) * 3
    cases = 0
    for lam in (0.1, 0.0, 1.0, 0.35):
        got = call(anomaly_score, R.copy(), Dv.copy(), lam, name="anomaly_score")
        compare(got, lib.anomaly_score(R, Dv, lam), "anomaly_score", f"lam={lam}", alternatives=(
            (lam * R + (1 - lam) * Dv, "the weights are swapped: (1 - lam) multiplies R, lam multiplies D."),
            (R + Dv, "the lambda weighting is missing: A = (1 - lam) * R + lam * D."),
            (R + lam * Dv, "R needs its weight (1 - lam): A = (1 - lam) * R + lam * D."),
            ((1 - lam) * R - lam * Dv, "both terms count towards the anomaly: + lam * D, not - lam * D."),
        ))
        cases += 1
    passed("anomaly_score", cases)


def check_scale_scores(scale_scores) -> None:
    """Check ``scale_scores(a_raw, a_raw_val)`` -> (N,) ``A = sigmoid((A_raw - mean_val) / sd_val)``.

    ``mean_val`` and ``sd_val`` (sample SD) come from the healthy validation slices'
    ``a_raw_val`` only. Compared with :func:`glio_kit.detect.mapping.fit_scaling`, for 9 test
    slices and the edge case of a single one.
    """
    rng = np.random.default_rng(6)
    val = rng.random(11) * 0.2 + 0.3
    cases = 0
    for a_raw in (rng.random(9) * 0.8, np.array([0.45])):
        got = call(scale_scores, a_raw.copy(), val.copy(), name="scale_scores")
        moved = a_raw.copy()
        moved[1:] += 5.0
        if a_raw.size > 1:
            again = as_array(call(scale_scores, moved, val.copy(), name="scale_scores"), "scale_scores")
            if again.shape == a_raw.shape and not np.isclose(again[0], as_array(got, "scale_scores")[0]):
                raise ExerciseError("scale_scores: a slice's A changes when the other test slices change: "
                                    "fit the mean and SD on the healthy validation slices (a_raw_val) only.")
        ref = lib.fit_scaling(val)(a_raw)
        pop = 1 / (1 + np.exp(-(a_raw - val.mean()) / val.std()))
        lo, hi = val.min(), val.max()
        compare(got, ref, "scale_scores", f"{a_raw.size} slice(s)", alternatives=(
            (pop, "use the sample SD of the validation scores (ddof=1), as the library does."),
            (np.clip((a_raw - lo) / (hi - lo), 0, 1),
             "min-max scaling sends every slice above the validation maximum to 1; use the logistic map."),
            (1 / (1 + np.exp((a_raw - val.mean()) / val.std(ddof=1))),
             "the sign is flipped: a larger A_raw must give a larger A."),
        ))
        cases += 1
    passed("scale_scores", cases)

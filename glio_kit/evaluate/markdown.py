"""``metrics.md``: the metrics table of the evaluation step (metric | paper | one column per detector).

The columns are the detectors of :data:`glio_kit.detect.detectors.DETECTORS`, in the table's
order, each with its 95% CI; the one ``recommended_score`` names is marked. Under the table:
what each detector is, where the thresholds come from, the site-shift control and the paper.
"""
from __future__ import annotations

import math

from ..detect import detectors as D
from .paper import PAPER, paper_consistency

SUBJECT_ROWS = (("subject AUC", "subject_auc"), ("accuracy", "accuracy"), ("precision", "precision"),
                ("recall (sensitivity)", "recall"), ("specificity", "specificity"), ("F1", "f1"))
PIXEL_ROWS = (("pixel Dice (pooled)", "pixel_dice"),
              ("pixel Dice (mean per subject)", "pixel_dice_per_subject"), ("pixel AUPRC", "pixel_auprc"),
              ("pixel AUROC", "pixel_auroc"),
              ("pixel threshold (healthy validation)", "pixel_threshold"),
              ("Dice upper bound (TEST-TUNED, not a result)", "dice_upper_bound_test_tuned"))


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and all(c is not None for c in ci):
        s += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return s


def _g(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _columns(result: dict) -> list[tuple[D.Detector, str, dict]]:
    """(detector, header, block) per detector column, the recommended one marked."""
    rec = (result.get("recommended") or {}).get("name")
    return [(det, det.column + (" = RECOMMENDED" if det.name == rec else "") + " (95% CI)",
             D.block(result, det)) for det in D.DETECTORS.values()]


def _subject_rows(blocks: list[dict], paper: dict) -> list[str]:
    """Metric rows: the paper's printed value (with what its counts imply where they differ)."""
    implied = paper_consistency()["implied"]
    lines = []
    for label, key in SUBJECT_ROWS:
        p = paper.get(key) if key not in ("specificity", "f1") else None
        pv = _fmt(p)
        if key in implied and p is not None and round(implied[key], 3) != p:
            pv += f" (counts imply {implied[key]:.3f})"
        elif key in ("specificity", "f1"):
            pv = f"{implied[key]:.3f} (from counts)"
        lines.append(f"| {label} | {pv} | " + " | ".join(_fmt(b.get(key), b.get("ci", {}).get(key))
                                                       for b in blocks) + " |")
    return lines


def _count_rows(blocks: list[dict], paper: dict) -> list[str]:
    """Confusion counts, numbers of test subjects and subject thresholds."""
    pc = paper.get("confusion", PAPER["confusion"])
    lines = [f"| {name.upper()} | {pc[name]} | "
             + " | ".join(str(b.get("confusion", {}).get(name, "–")) for b in blocks) + " |"
             for name in ("tp", "fn", "tn", "fp")]
    lines.append("| test subjects (healthy + tumour) | 27 + 27 | "
                 + " | ".join(f"{b.get('n_test_healthy', '–')} + {b.get('n_test_tumor', '–')}"
                              for b in blocks) + " |")
    lines.append("| subject threshold (from healthy validation) | – | "
                 + " | ".join(_g(b.get("threshold")) for b in blocks) + " |")
    # the specificity the threshold was chosen for, beside the test one above, and the rule's guarantee
    lines.append("| specificity on healthy validation (where the threshold was chosen) | – | "
                 + " | ".join(_fmt(b.get("val_specificity")) for b in blocks) + " |")
    lines.append("| expected share of new healthy subjects flagged ((k+1)/(n+1)) | 0.05 (target) | "
                 + " | ".join(_fmt(b.get("expected_fpr")) for b in blocks) + " |")
    return lines


def _pixel_rows(cols: list) -> list[str]:
    """Pixel rows: each pixel map's metrics in the column of its first detector; later detectors
    of the same map say so; a detector without a pixel map has none."""
    owners = {}
    for det, _, _ in cols:
        if det.pixel_map:
            owners.setdefault(det.pixel_map, det.name)
    shared = ["(same maps)" if det.pixel_map and owners[det.pixel_map] != det.name else None
              for det, _, _ in cols]
    blocks = [b for _, _, b in cols]
    return [f"| {label} | – | " + " | ".join(text or _fmt(b.get(key)) for b, text in zip(blocks, shared))
            + " |" for label, key in PIXEL_ROWS]


def _notes(result: dict) -> list[str]:
    """The text under the table: what each column is, where thresholds come from, the paper."""
    res = result.get("residual") or {}
    kind = res.get("kind", "positive")
    shift = result.get("site_shift") or {}
    n_val = result.get("n_val_healthy", "?")
    lines = ["", f"Residual maps (the score step's, as it saved them): the DCGAN's {kind} residual "
             f"{D.RESIDUAL_FORMULAS.get(kind, '')} in the eroded brain (erosion {res.get('erode', '?')} px, "
             f"median filter {res.get('median', '?')}). Subject scores, one column each "
             "(glio_kit.detect.detectors):", ""]
    for det in D.DETECTORS.values():
        desc = D.block(result, det).get("description")
        lines.append(f"- {det.column} ({det.origin}): {desc or det.what}.")
    return lines + [
        "",
        "The recommended score was chosen on development cohorts (other synthetic seeds), never on this "
        "run's test subjects.",
        "",
        "Thresholds: subject score > threshold = abnormal; threshold chosen on "
        f"{n_val} healthy validation subject{'' if n_val == 1 else 's'} at a target false-positive rate of "
        f"{result.get('fpr_target', '?')}. "
        "The test set chooses nothing, except the Dice upper bound, which is labelled test-tuned.",
        "",
        "Site-shift control (slice A of tumour subjects' lesion-free slices vs healthy test slices; 0.5 = "
        f"the detector does not tell the groups apart where there is no lesion): AUC "
        f"{_fmt(shift.get('auc_slice_A'))} ({shift.get('n_lesion_free_tumour_slices', '?')} vs "
        f"{shift.get('n_healthy_test_slices', '?')} slices); by mean residual: "
        f"{_fmt(shift.get('auc_residual_mean'))}.",
        "",
        f"Paper (see glio_kit.evaluate.paper): {paper_consistency()['note']}",
        "",
    ]


def metrics_markdown(result: dict) -> str:
    """The ``metrics.md`` text.

    Parameters
    ----------
    result : dict
        ``metrics.json`` as :func:`~glio_kit.evaluate.evaluation.evaluate_run` returns it.

    Returns
    -------
    str
        A Markdown table (metric | paper | one column per detector with its 95% CI, the
        recommended one marked; pixel rows when the test tumours have masks), then the notes.
    """
    paper = result.get("paper", PAPER)
    cols = _columns(result)
    blocks = [b for _, _, b in cols]
    lines = ["| metric | paper | " + " | ".join(h for _, h, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    lines += _subject_rows(blocks, paper)
    lines += _count_rows(blocks, paper)
    if result.get("has_masks"):
        lines += _pixel_rows(cols)
    if result.get("note"):  # a smoke run says, right under its numbers, that they mean nothing
        lines += ["", f"**Note:** {result['note']}"]
    return "\n".join(lines + _notes(result))

"""Which subject score finds the lesion? An evaluation-only ablation on scored run folders.

Every candidate is computed from what the score step saved (slice scores, positive residual
maps) and the slice cache; nothing is retrained or re-mapped, so the candidates differ only in
how a subject's maps become one number. Every threshold comes from the healthy validation
subjects (at most ``--fpr`` of them flagged); the test subjects choose nothing.

Run it on DEVELOPMENT cohorts (synthetic seeds other than the demo's 0) to choose the kit's
recommended score, and only then look at the demo:

    glio-kit run --profile demo -p seed=1 --run-dir runs/dev1
    glio-kit run --profile demo -p seed=2 --run-dir runs/dev2
    python experiments/score_ablation.py runs/dev1 runs/dev2 --out experiments/score_ablation.md

Prints (and writes) one row per candidate and run: subject AUC and accuracy at the
validation threshold.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.detect.baseline import area_detector  # noqa: E402
from glio_kit.detect.lesion_load import lesion_load_scores  # noqa: E402
from glio_kit.evaluate.metrics import pixel_threshold_from_healthy, subject_metrics, threshold_at_fpr  # noqa: E402
from glio_kit.data.preprocess import SliceCache  # noqa: E402
from glio_kit.detect.residuals import eroded_brain  # noqa: E402
from glio_kit.detect.scoring import reduce_subjects  # noqa: E402

ERODE = 1  # the erosion the demo's maps were made with (the score step's default)


def detection(subj: pd.DataFrame, fpr: float) -> dict:
    """Subject AUC on the test subjects and accuracy at the healthy-validation threshold."""
    val = subj[(subj.split == "val") & (subj.label == 0)]
    test = subj[subj.split == "test"]
    thr = threshold_at_fpr(val.score.to_numpy(), fpr)
    m = subject_metrics(test.label.to_numpy(), test.score.to_numpy(), thr)
    return dict(auc=m["subject_auc"], accuracy=m["accuracy"], recall=m["recall"],
                specificity=m["specificity"])


def candidates(run: Path, percentile: float, fpr: float) -> dict[str, pd.DataFrame]:
    """Subject scores (``subject, label, split, score``) of every candidate for one run."""
    slices = pd.read_csv(run / "score" / "slice_scores.csv", dtype={"subject": str})
    cache = SliceCache(run / "cache")
    maps = np.load(run / "score" / "residual_pos.npy", mmap_mode="r")
    rows, ks = slices.row.to_numpy(), slices.k.to_numpy()
    out = {"paper: mean of slice A": reduce_subjects(slices, "mean"),
           "max of slice A": reduce_subjects(slices, "max"),
           "top-3 slices of A": reduce_subjects(slices, "topk", 3)}

    def pos_maps(sel):
        return np.asarray(maps[ks[sel]]), eroded_brain(np.asarray(cache.brain[rows[sel]]), ERODE)

    out["residual area"] = area_detector(pos_maps, slices, percentile, fpr)["subject_scores"]
    val = ((slices.split == "val") & (slices.label == 0)).to_numpy()
    v_maps, v_brain = pos_maps(np.flatnonzero(val))
    pix = pixel_threshold_from_healthy(v_maps, v_brain, percentile)
    ordered = np.asarray(maps[ks])  # rows of `slices`
    for min_size in (1, 5, 20):
        out[f"lesion load (min {min_size} voxels)"] = lesion_load_scores(ordered, slices, pix, min_size)
    # the hyperintensity prior: keep the residual only where the input itself is bright
    images = np.asarray(cache.images[rows])
    bright = np.percentile(images[val][v_brain > 0], 95)
    prior = ordered * (images > bright)
    v_prior = prior[val]
    pix_prior = pixel_threshold_from_healthy(v_prior, v_brain, percentile)
    for min_size in (1, 5, 20):
        name = f"lesion load, bright input only (min {min_size})"
        out[name] = lesion_load_scores(prior, slices, pix_prior, min_size)
    return out


def markdown(table: pd.DataFrame) -> str:
    """One row per candidate: AUC and accuracy per run, and their means over runs."""
    runs = list(dict.fromkeys(table.run))
    head = ["subject score", *[f"AUC {r}" for r in runs], "AUC mean",
            *[f"acc. {r}" for r in runs], "acc. mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, g in table.groupby("score", sort=False):
        g = g.set_index("run")
        auc = [g.loc[r, "auc"] for r in runs]
        acc = [g.loc[r, "accuracy"] for r in runs]
        vals = [*auc, np.mean(auc), *acc, np.mean(acc)]
        lines.append("| " + " | ".join([name, *[f"{v:.3f}" for v in vals]]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="scored run folders (development cohorts)")
    p.add_argument("--percentile", type=float, default=99.0, help="pixel threshold percentile (healthy val)")
    p.add_argument("--fpr", type=float, default=0.05,
                   help="subject threshold: healthy val false-positive rate")
    p.add_argument("--out", type=Path, help="write the table as Markdown here")
    a = p.parse_args(argv)
    rows = []
    for run in a.runs:
        for name, subj in candidates(run, a.percentile, a.fpr).items():
            rows.append(dict(run=run.name, score=name, **detection(subj, a.fpr)))
    table = pd.DataFrame(rows)
    text = markdown(table)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python experiments/score_ablation.py " + " ".join(str(r) for r in a.runs)
        a.out.write_text(f"Command: {command}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which subject score finds the lesion? An evaluation-only ablation on scored run folders.

Every candidate is a variant of a detector of the table (glio_kit.detect.detectors) or one of
the few tried here only, computed from what the score step saved (slice scores, the residual
maps and the erosion its record names) and the slice cache; nothing is retrained or re-mapped,
so the candidates differ only in how a subject's maps become one number. Every threshold comes
from the healthy validation subjects (at most ``--fpr`` of them flagged); the test subjects choose nothing.

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
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.detect import detectors as D  # noqa: E402
from glio_kit.detect.detectors import Detector, ScoredSlices, SubjectScores  # noqa: E402
from glio_kit.detect.lesion_load import lesion_load_scores  # noqa: E402
from glio_kit.evaluate.evaluation import scored_slices  # noqa: E402
from glio_kit.evaluate.metrics import pixel_threshold_from_healthy, subject_metrics, threshold_at_fpr  # noqa: E402
from glio_kit.run.config import EvaluateSettings  # noqa: E402
from glio_kit.run.rundir import RunDir  # noqa: E402


def bright_lesion_load(data: ScoredSlices, settings) -> SubjectScores:
    """The hyperintensity prior: lesion load of the residual kept only where the input itself
    is bright (above the 95th percentile of healthy validation brains)."""
    val = data.healthy_val()
    everything = np.arange(len(data.slices))
    images, v_brain = data.images(everything), data.brain(val)
    bright = np.percentile(images[val][v_brain > 0], 95)
    prior = data.residual(everything) * (images > bright)
    pix = pixel_threshold_from_healthy(prior[val], v_brain, settings.pixel_percentile)
    return SubjectScores(lesion_load_scores(prior, data.slices, pix, settings.lesion_min_size))


#: Candidates tried here only (not in the kit's table): promote one by moving it to DETECTORS.
ABLATION_ONLY = (
    Detector("bright_lesion_load", "lesion load of the residual where the input is bright",
             "beyond the paper",
             "C5", "DCGAN, lesion load (bright input)", "kit: lesion load (bright input)",
             "largest 3-D component (voxels)", bright_lesion_load,
             variants=tuple((f"lesion load, bright input only (min {n})", dict(lesion_min_size=n))
                            for n in (1, 5, 20))),
)


def detection(subj: pd.DataFrame, fpr: float) -> dict:
    """Subject AUC on the test subjects and accuracy at the healthy-validation threshold."""
    val = subj[(subj.split == "val") & (subj.label == 0)]
    test = subj[subj.split == "test"]
    thr = threshold_at_fpr(val.score.to_numpy(), fpr)
    m = subject_metrics(test.label.to_numpy(), test.score.to_numpy(), thr)
    return dict(auc=m["subject_auc"], accuracy=m["accuracy"], recall=m["recall"],
                specificity=m["specificity"])


def candidates(run: Path, percentile: float, fpr: float) -> dict[str, pd.DataFrame]:
    """Subject scores (``subject, label, split, score``) of every variant of every detector of
    the table (and :data:`ABLATION_ONLY`) for one run, from what its score step saved (the
    recorded residual maps and erosion)."""
    # every reduction from the slice table here (the score step saved only its own)
    data = dataclasses.replace(scored_slices(RunDir(run)), subjects=None)
    settings = EvaluateSettings(pixel_percentile=percentile, fpr_target=fpr)
    score_knobs = {f.name for f in dataclasses.fields(data.score)}
    out = {}
    for det in (*D.DETECTORS.values(), *ABLATION_ONLY):
        for label, overrides in det.variants or ((det.label, {}),):
            on_score = {k: v for k, v in overrides.items() if k in score_knobs}
            variant = dataclasses.replace(data, score=data.score.replace(**on_score)) if on_score else data
            knobs = settings.replace(**{k: v for k, v in overrides.items() if k not in score_knobs})
            out[label] = det.subject_scores(variant, knobs).subjects
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

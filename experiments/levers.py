"""What matters for detection? One row per training or mapping lever, on development cohorts.

A lever is a few knobs set away from the demo profile. Each lever runs the whole chain
(``glio-kit run --profile demo``) on every development seed, never the demo's seed 0, in a run
folder of its own, ``<runs>/<lever>-seed<seed>``. A lever that only changes the mapping starts
from a copy of its parent's trained run folder (the runner skips the identical prep and
training, and redoes scoring onwards). Finished run folders are reused, so the command can be
stopped and started again and the table rebuilt from what is there:

    python experiments/levers.py --seeds 1 2 3 --out experiments/levers.md      # choose on these
    python experiments/levers.py --held-out --levers demo --out experiments/seeds.md  # then report 4-6

Columns (test subjects of each cohort; thresholds from its healthy validation subjects): the
paper's score (mean of raw slice anomaly scores, then scaled) AUC and accuracy, the recommended
score's AUC, accuracy and specificity on test healthy at the validation threshold, the residual-area
AUC, both baselines (intensity; voxel-wise healthy atlas |z| by the lesion-load and the area rule),
pooled pixel Dice at the healthy-validation pixel threshold, the site-shift control and the wall
time of the run's notebooks (minutes, for the machine and load it ran on).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glio_kit.run.runner import run_chain  # noqa: E402

#: name -> (knobs set away from the demo profile, the lever whose trained run it may start from)
LEVERS: dict[str, tuple[dict, str | None]] = {
    "demo": (dict(), None),  # the demo profile as it is
    "harmonisation": (dict(harmonisation="landmarks"), None),
    "ema+encoder-init": (dict(mapping="encoder+iterative"), "demo"),
    "plain-G": (dict(ema_decay=0.0), None),  # the demo before the moving average of G
}
DESCRIPTIONS = {
    "demo": "the demo profile (49 train + 19 validation healthy, 70 epochs, moving average of G, iterative "
            "mapping)",
    "harmonisation": "+ site harmonisation: in-brain percentile landmarks matched to the healthy training "
                     "subjects' (glio_kit.data.harmonise)",
    "ema+encoder-init": "+ mapping started from the f-AnoGAN encoder's z (then the same AnoGAN steps)",
    "plain-G": "- the moving average of G (ema_decay 0)",
}
#: Development seeds choose settings; held-out seeds are reported and choose nothing; 0 is the demo.
DEVELOPMENT_SEEDS, HELD_OUT_SEEDS = (1, 2, 3), (4, 5, 6)


def run_lever(runs: Path, lever: str, seed: int, progress: bool = False) -> Path:
    """The run folder of ``lever`` on cohort ``seed``, run (or completed) by the chain."""
    knobs, parent = LEVERS[lever]
    folder = runs / f"{lever}-seed{seed}"
    force = False
    if parent is not None and not (folder / "steps" / "score.json").exists():
        source = run_lever(runs, parent, seed, progress)
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("score", "encoder", "report.html"))
        force = "score"  # the parent's records say how it scored; this lever scores otherwise
    run_chain(folder, "demo", dict(knobs, seed=seed), force=force, progress=progress)
    return folder


def notebook_minutes(run: Path) -> float:
    """The executed notebooks' run times (papermill's record), summed, in minutes."""
    total = 0.0
    for nb in sorted((run / "notebooks").glob("*.ipynb")):
        total += json.loads(nb.read_text())["metadata"].get("papermill", {}).get("duration") or 0.0
    return total / 60


def row(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    rec = m["recommended"]
    return dict(paper_auc=m["subject_auc"], paper_acc=m["accuracy"], recommended=rec["name"],
                recommended_auc=rec["subject_auc"], recommended_acc=rec["accuracy"],
                recommended_spec=rec["specificity"], area_auc=m["residual_area"]["subject_auc"],
                intensity_auc=m["baseline"]["subject_auc"], atlas_auc=m["atlas_lesion_load"]["subject_auc"],
                atlas_area_auc=m["atlas_area"]["subject_auc"], dice=m["pixel_dice"],
                pixel_auroc=m["pixel_auroc"], site_shift=m["site_shift"]["auc_slice_A"],
                minutes=notebook_minutes(run))


NUMBERS = ["paper_auc", "paper_acc", "recommended_auc", "recommended_acc", "recommended_spec", "area_auc",
           "intensity_auc", "atlas_auc", "atlas_area_auc", "dice", "pixel_auroc", "site_shift", "minutes"]
HEADER = ["paper's score AUC", "paper's score acc.", "recommended AUC", "recommended acc.",
          "recommended test spec.", "residual area AUC", "intensity baseline AUC", "atlas lesion load AUC",
          "atlas area AUC", "pooled Dice", "pixel AUROC", "site shift AUC", "minutes"]


def markdown(table: pd.DataFrame) -> str:
    """Per lever: one line per seed and the mean ± SD over seeds."""
    lines = ["| lever | seed | " + " | ".join(HEADER) + " |", "|---|---|" + "---|" * len(HEADER)]
    for lever, g in table.groupby("lever", sort=False):
        for r in g.itertuples():
            lines.append(f"| {lever} | {r.seed} | " + " | ".join(f"{getattr(r, c):.3f}" for c in NUMBERS[:-1])
                         + f" | {r.minutes:.1f} |")
        if len(g) > 1:
            cells = [f"{g[c].mean():.3f} ± {g[c].std(ddof=1):.3f}" for c in NUMBERS[:-1]]
            lines.append(f"| **{lever}** | mean ± SD | " + " | ".join(cells) + f" | {g.minutes.mean():.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEVELOPMENT_SEEDS),
                   help=f"development cohort seeds {DEVELOPMENT_SEEDS} (not 0, the demo)")
    p.add_argument("--held-out", action="store_true",
                   help=f"report the held-out seeds {HELD_OUT_SEEDS}: only after every setting is chosen")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    p.add_argument("--runs", type=Path, default=Path("runs/levers"), help="where the run folders go")
    p.add_argument("--table-only", action="store_true", help="only collect the run folders already done")
    p.add_argument("--out", type=Path, help="write the table as Markdown here")
    a = p.parse_args(argv)
    if 0 in a.seeds:
        p.error("seed 0 is the demo cohort: choose settings on other seeds, then run the demo once")
    if a.held_out:
        a.seeds = list(HELD_OUT_SEEDS)
    elif set(a.seeds) & set(HELD_OUT_SEEDS):
        p.error(f"seeds {HELD_OUT_SEEDS} are held out: they choose nothing; report them with --held-out")
    rows = []
    for lever in a.levers:
        for seed in a.seeds:
            folder = a.runs / f"{lever}-seed{seed}"
            if not a.table_only:
                run_lever(a.runs, lever, seed, progress=True)
            if (folder / "metrics.json").exists():
                rows.append(dict(lever=lever, seed=seed, **row(folder)))
    if not rows:
        print("no finished run folders", file=sys.stderr)
        return 1
    table = pd.DataFrame(rows)
    text = markdown(table)
    print(text)
    if a.out:
        seeds = " ".join(map(str, a.seeds))
        levers = "\n".join(f"- **{k}**: {DESCRIPTIONS[k]} (`{json.dumps(LEVERS[k][0])}`)" for k in a.levers)
        which = "--held-out" if a.held_out else f"--seeds {seeds}"
        command = f"python experiments/levers.py {which} --levers {' '.join(a.levers)}"
        a.out.write_text(f"Command: `{command}`\n\n{levers}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The glio-kit command (its --help shows HELP below).

The profile of synth and run comes from --profile, else the environment variable
GLIO_KIT_PROFILE, else demo; the command prints which it uses.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from .config import (DEFAULT_PROFILE, PROFILE_ENV, PROFILES, SMOKE_NOTE, get_config, parse_assignments,
                     profile_name)
from .prepare_cli import add_parser as add_prepare_parser
from ..errors import GlioKitError
from .lock import run_lock
from .rundir import RunDir
from .timings import profiles_line, run_time

HELP = f"""Teach and reproduce unsupervised glioma detection with a DCGAN (glio-kit).

examples:
  glio-kit run --profile smoke --run-dir runs/smoke   notebooks 01-05 in order ({run_time("smoke")})
  glio-kit run --profile demo --run-dir runs/demo     the demo ({run_time("demo")})
  glio-kit report runs/demo                           one HTML page of a run (metrics, figures, settings)
  glio-kit examples my-grids                          write the example grid files
  glio-kit batch my-grids/grid_smoke.yaml             a grid of runs and a summary table
  glio-kit notebooks my-notebooks                     copy the notebooks out, to open in JupyterLab
  glio-kit notebooks my-notebooks --exercises         the student version: exercises, checks, hints
  glio-kit synth data/my-cohort --seed 1              write a synthetic cohort
  glio-kit prepare downloads/IXI-T2 data/ixi          raw scans in: skull strip, N4, MNI152, QC

The profile (smoke | demo | paper) comes from --profile, else $GLIO_KIT_PROFILE, else demo.
Run times: {profiles_line()}.
GLIO_KIT_DATA sets where generated cohorts go (default: ./data, or data/ of a checkout).
"""


#: The one line Ctrl-C prints (exit status 130).
INTERRUPTED = "glio-kit: interrupted; nothing is lost: rerun the same command to resume"
#: The cohort flags of glio-kit run and the notebook parameters they set.
COHORT_FLAGS = {"--train-healthy": "train_healthy_dir", "--test-healthy": "test_healthy_dir",
                "--test-tumor": "test_tumor_dir"}

PROFILE_HELP = f"smoke | demo | paper (default: ${PROFILE_ENV}, else {DEFAULT_PROFILE})"


def chosen_profile(given: str | None) -> str:
    """``--profile``, else ``$GLIO_KIT_PROFILE``, else demo; prints which and where it came from."""
    env = os.environ.get(PROFILE_ENV)
    try:
        name = profile_name(given)
    except ValueError as err:
        raise GlioKitError(f"{err} (from ${PROFILE_ENV}={env!r}; unset it or set it to one of "
                           f"{sorted(PROFILES)})") from None
    source = "--profile" if given else (f"${PROFILE_ENV}" if env else "the default; choose with --profile "
                                        f"or ${PROFILE_ENV}")
    took = "" if given or env else f"; {run_time(name)}, --profile smoke: {run_time('smoke')}"
    print(f"[glio-kit] profile: {name} (from {source}{took})", flush=True)
    if name == "smoke":
        print(f"[glio-kit] {SMOKE_NOTE}", flush=True)
    return name


def cmd_synth(args) -> int:
    from ..data.synth import make_cohort  # slow import (torch, papermill, dask): only when the command runs

    # the profile's synth_* settings, with what the command line gives on top
    given = dict(synth_train_healthy=args.n_train_healthy, synth_test_healthy=args.n_test_healthy,
                 synth_test_tumor=args.n_test_tumor, synth_voxel_size=args.voxel_size,
                 synth_wmh_fraction=args.wmh_fraction)
    s = get_config(chosen_profile(args.profile), seed=args.seed, **given).prep
    paths = make_cohort(args.out, n_train_healthy=s.synth_train_healthy, n_test_healthy=s.synth_test_healthy,
                        n_test_tumor=s.synth_test_tumor, seed=s.seed, voxel_size=s.synth_voxel_size,
                        wmh_fraction=s.synth_wmh_fraction, overwrite=args.overwrite)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_run(args) -> int:
    from .runner import check_cohort, run_chain  # slow import (torch, papermill, dask): only when run

    params = parse_assignments(args.param)
    flags = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key in COHORT_FLAGS.items()}
    # every missing folder named, by its flag (or -p name), before a run folder or a kernel is touched
    check_cohort({key: val or params.get(key) for key, val in flags.items()},
                 labels={key: flag if flags[key] or not params.get(key) else f"-p {key}"
                         for flag, key in COHORT_FLAGS.items()})
    params.update({key: val for key, val in flags.items() if val})
    report = run_chain(args.run_dir, chosen_profile(args.profile), params, notebooks=args.notebook,
                       force=args.force)
    for r in report:
        print(f"{r['notebook']}: {r['status']} ({r['seconds']} s)")
    from .report import write_report  # slow import (torch, papermill, dask): only when the command runs

    with run_lock(args.run_dir):  # the report reads the folder: no other run may write it meanwhile
        summary = RunDir(args.run_dir).path / "metrics.md"
        if summary.exists():
            print(summary.read_text())
        print(f"[glio-kit] report (one page, opens offline): {write_report(args.run_dir)}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report  # slow import (torch, papermill, dask): only when the command runs

    print(f"{write_report(args.run_dir, args.out)}")
    return 0


def cmd_batch(args) -> int:
    from .batch import run_batch  # slow import (torch, papermill, dask): only when the command runs

    table = run_batch(args.grid, workers=args.workers, force=args.force)
    counts = table["status"].value_counts().to_dict() if "status" in table else {}
    where = table.attrs.get("out")
    if where:
        print(f"[batch] summary: {where}/summary.md (also summary.csv, summary.png)")
    print(f"[batch] {len(table)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if len(table) and counts.get("done earlier", 0) == len(table):
        print("[batch] every run was finished earlier; nothing ran (--force redoes them)")
    failed = table[~table["status"].isin(["ok", "done earlier"])] if "status" in table else table.iloc[:0]
    if len(failed):
        print(f"glio-kit: {len(failed)} of {len(table)} runs did not finish; see the summary",
              file=sys.stderr)
        return 1
    return 0


def cmd_examples(args) -> int:
    from .runner import copy_examples  # slow import (torch, papermill, dask): only when the command runs

    copied, kept = copy_examples(args.dest)
    for path in copied:
        print(f"copied {path}")
    for path in kept:
        print(f"kept {path} (already there; not overwritten)")
    print(f"try one with: glio-kit batch {Path(args.dest) / 'grid_smoke.yaml'}  ('out:' in a grid file is "
          f"taken from the folder you run glio-kit batch in)")
    return 0


def cmd_notebooks(args) -> int:
    from .runner import copy_notebooks  # slow import (torch, papermill, dask): only when the command runs

    copied, kept = copy_notebooks(args.dest, exercises=args.exercises, fill_solutions=args.fill_solutions)
    for path in copied:
        print(f"copied {path}")
    for path in kept:
        print(f"kept {path} (already there; not overwritten)")
    print(f"open them with: jupyter lab {args.dest}\n"
          f"notebooks 02-05 read the run folder the ones before wrote: with run_dir empty they find "
          f"runs/<profile> beside {args.dest} or in it (e.g. made by glio-kit run --run-dir runs/smoke "
          f"here) and take its profile; else run 01 first, or set run_dir (or GLIO_KIT_RUN_DIR)")
    return 0


def add_examples_parser(sub) -> None:
    e = sub.add_parser("examples", help="write the example grid files for glio-kit batch into a folder",
                       description="Write the example grids shipped with the kit (grid_smoke.yaml: a 2x2 "
                                   "smoke grid; grid.yaml: the demo's lambda x mapping grid; "
                                   "grid_slurm.yaml: the paper profile on SLURM) into DEST. A file "
                                   "already in DEST is kept as it is, never overwritten.")
    e.add_argument("dest", help="folder to write into (created if needed)")
    e.set_defaults(func=cmd_examples)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glio-kit", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"glio-kit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic T2 cohort (IXI and BraTS layouts)",
                       description="Write a synthetic T2 cohort built from the MNI ICBM152 2009a templates: "
                                   "healthy subjects in the IXI layout, tumour subjects in the BraTS layout.")
    s.add_argument("out", help="output folder (must be new, empty, or an identical earlier cohort)")
    s.add_argument("--profile", default=None, choices=sorted(PROFILES), help=PROFILE_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n-train-healthy", type=int)
    s.add_argument("--n-test-healthy", type=int)
    s.add_argument("--n-test-tumor", type=int)
    s.add_argument("--voxel-size", type=float, help="mm (templates are 1 mm)")
    s.add_argument("--wmh-fraction", type=float,
                   help="share of healthy test subjects with white-matter hyperintensities")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic cohort in OUT")
    s.set_defaults(func=cmd_synth)

    r = sub.add_parser("run", help="execute the notebooks in order with papermill into a run folder",
                       description="Execute notebooks 01.. in order with papermill into RUN_DIR/notebooks. "
                                   "Without cohort folders the synthetic cohort of the profile is used. "
                                   "Steps already done with the same parameters are skipped; if the run "
                                   "folder holds steps done with other parameters, nothing runs and the "
                                   "changed values are listed (use a new --run-dir, or --force STEP).")
    r.add_argument("--profile", default=None, choices=sorted(PROFILES), help=PROFILE_HELP)
    r.add_argument("--run-dir", required=True)
    r.add_argument("--train-healthy", help="folder of healthy training T2 volumes (IXI layout or manifest)")
    r.add_argument("--test-healthy", help="folder of healthy test volumes")
    r.add_argument("--test-tumor", help="folder of tumour test cases (BraTS layout or manifest)")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="notebook parameter, e.g. -p epochs=5 -p lam=0.1 (repeatable)")
    r.add_argument("--notebook", action="append", help="run only this notebook file (repeatable)")
    r.add_argument("--force", nargs="?", const=True, default=False, metavar="STEP",
                   help="redo a step (prep, train, score, residuals, metrics; default: the first one run) "
                        "and every step after it, replacing what this run folder holds")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("batch", help="a grid of runs from a YAML file, with a summary table",
                       description="Run every point of a parameter grid (a YAML file: profile, out, base, "
                                   "grid; `glio-kit examples DIR` writes examples). Relative paths in the "
                                   "file (out, cohort folders) are taken from the folder you run the "
                                   "command in, not from the grid file's. Runs that "
                                   "differ only in later steps share the data preparation and the trained "
                                   "DCGAN; runs finished earlier are skipped. Writes OUT/summary.csv, "
                                   "summary.md and summary.png and prints where.")
    b.add_argument("grid", help="YAML file: profile, out, base parameters and a grid")
    b.add_argument("--workers", type=int, default=1, help="runs at the same time (default: 1)")
    b.add_argument("--force", action="store_true", help="redo runs that are finished")
    b.set_defaults(func=cmd_batch)

    rp = sub.add_parser("report", help="write one self-contained HTML page of a run (RUN_DIR/report.html)",
                        description="Write RUN_DIR/report.html: the metrics table with confidence intervals, "
                                    "every figure, each step's settings, timings, versions and device, in "
                                    "one file that opens offline (glio-kit run writes it as its last step).")
    rp.add_argument("run_dir", help="a run folder written by glio-kit run")
    rp.add_argument("--out", help="write the page here instead of RUN_DIR/report.html")
    rp.set_defaults(func=cmd_report)

    add_prepare_parser(sub)
    add_examples_parser(sub)

    n = sub.add_parser("notebooks", help="copy the notebooks (00-05) into a folder, to open in JupyterLab",
                       description="Copy the notebooks (the chain's 01-05 and 00_prepare_real_data; "
                                   "stored without outputs) into DEST. "
                                   "A notebook already in DEST is kept as it is, never overwritten.")
    n.add_argument("dest", help="folder to copy into (created if needed)")
    n.add_argument("--exercises", action="store_true",
                   help="the student version: the paper's key steps become exercises to complete, each "
                        "with a check (glio_kit.exercises) and a hint")
    n.add_argument("--fill-solutions", action="store_true",
                   help="with --exercises: keep the solutions in the exercise cells (to try the checks)")
    n.set_defaults(func=cmd_notebooks)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GlioKitError as err:
        print(f"glio-kit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the runner stopped the kernels and marked the step unfinished
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``glio-kit`` command: ``synth``, ``run`` and ``batch``.

    glio-kit synth data/my-cohort --seed 1            write a synthetic cohort
    glio-kit run --profile demo --run-dir runs/demo   notebooks 01.. in order
    glio-kit batch grid.yaml                          a grid of runs and a summary
"""
from __future__ import annotations

import argparse
import sys

import yaml

from . import __version__
from .config import PROFILES, get_config
from .errors import GlioKitError


def parse_assignments(items: list[str]) -> dict:
    """``["lam=0.1", "image_size=[64,64]"]`` -> ``{"lam": 0.1, "image_size": [64, 64]}`` (YAML values)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise GlioKitError(f"-p expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(value)
    return out


def cmd_synth(args) -> int:
    from .synth import make_cohort

    # the profile's synth_* settings, with what the command line gives on top
    given = dict(synth_train_healthy=args.n_train_healthy, synth_test_healthy=args.n_test_healthy,
                 synth_test_tumor=args.n_test_tumor, synth_voxel_size=args.voxel_size,
                 synth_wmh_fraction=args.wmh_fraction)
    s = get_config(args.profile, seed=args.seed, **given).prep
    paths = make_cohort(args.out, n_train_healthy=s.synth_train_healthy, n_test_healthy=s.synth_test_healthy,
                        n_test_tumor=s.synth_test_tumor, seed=s.seed, voxel_size=s.synth_voxel_size,
                        wmh_fraction=s.synth_wmh_fraction, overwrite=args.overwrite)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_run(args) -> int:
    from .runner import run_chain

    params = parse_assignments(args.param)
    for key, val in (("train_healthy_dir", args.train_healthy), ("test_healthy_dir", args.test_healthy),
                     ("test_tumor_dir", args.test_tumor)):
        if val:
            params[key] = val
    report = run_chain(args.run_dir, args.profile, params, notebooks=args.notebook, force=args.force)
    for r in report:
        print(f"{r['notebook']}: {r['status']} ({r['seconds']} s)")
    from .runtime import RunDir

    summary = RunDir(args.run_dir).path / "metrics.md"
    if summary.exists():
        print(summary.read_text())
    return 0


def cmd_batch(args) -> int:
    from .batch import run_batch

    table = run_batch(args.grid, workers=args.workers, force=args.force)
    failed = table[~table["status"].isin(["ok", "done earlier"])] if "status" in table else table.iloc[:0]
    if len(failed):
        print(f"glio-kit: {len(failed)} of {len(table)} runs did not finish; see the summary",
              file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glio-kit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"glio-kit {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic T2 cohort (IXI and BraTS layouts)",
                       description="Write a synthetic T2 cohort built from the MNI ICBM152 2009a templates: "
                                   "healthy subjects in the IXI layout, tumour subjects in the BraTS layout.")
    s.add_argument("out", help="output folder (must be new, empty, or an identical earlier cohort)")
    s.add_argument("--profile", default="demo", choices=sorted(PROFILES),
                   help="default sizes (default: demo)")
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
                                   "Steps already done with the same parameters are skipped.")
    r.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    r.add_argument("--run-dir", required=True)
    r.add_argument("--train-healthy", help="folder of healthy training T2 volumes (IXI layout or manifest)")
    r.add_argument("--test-healthy", help="folder of healthy test volumes")
    r.add_argument("--test-tumor", help="folder of tumour test cases (BraTS layout or manifest)")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="notebook parameter, e.g. -p epochs=5 -p lam=0.1 (repeatable)")
    r.add_argument("--notebook", action="append", help="run only this notebook file (repeatable)")
    r.add_argument("--force", action="store_true", help="redo steps that are already done")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("batch", help="a grid of runs from a YAML file, with a summary table")
    b.add_argument("grid", help="YAML file: profile, base parameters and a grid (see examples/grid.yaml)")
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--force", action="store_true")
    b.set_defaults(func=cmd_batch)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GlioKitError as err:
        print(f"glio-kit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

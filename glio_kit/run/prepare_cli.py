"""``glio-kit prepare RAW_DIR OUT_DIR``: raw IXI / BraTS downloads into the kit's cohort.

The stages live in :mod:`glio_kit.data.prepare`; this module adds the command line and, with
``--workers N``, the Dask engine of ``glio-kit batch`` (:class:`glio_kit.run.engine.Engine`:
a local cluster here, the same client calls on SLURM/PBS/SGE/LSF).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import GlioKitError

__all__ = ["LAYOUTS", "MASK_METHODS", "add_parser", "cmd_prepare"]

# The same tuples as glio_kit.data.prepare's (tests/test_prepare.py checks): repeated here because
# importing that package needs SimpleITK, and `glio-kit --help` must work without the [real] extra.
LAYOUTS = ("auto", "ixi", "brats", "manifest")
MASK_METHODS = ("auto", "hd-bet", "given")

DESCRIPTION = """Prepare raw scans for the kit: reorient to RAS and resample to 1 mm, extract the brain
(HD-BET; or the non-zero voxels of already stripped volumes such as BraTS), correct the bias field
(N4), register affinely onto the MNI152 2009 template grid, and write the cohort into OUT_DIR in the
layout it came in (same file names), zero outside the brain. Writes OUT_DIR/prepare.csv (one row
per subject: status, brain volume, registration Dice, warnings), a QC picture per subject under
OUT_DIR/prepare/ and the overview page OUT_DIR/prepare_qc.html. Inputs are only read. A rerun skips
subjects prepared earlier with the same settings; a subject that fails is reported and the rest go
on. Then: glio-kit run --train-healthy OUT_DIR ...

examples:
  glio-kit prepare downloads/IXI-T2 data/ixi-prepared --workers 2
  glio-kit prepare downloads/BraTS2021 data/brats-prepared            (stripped: --brain-mask given)
"""


def add_parser(sub) -> None:
    """Register ``prepare`` on the ``glio-kit`` subparsers."""
    p = sub.add_parser("prepare", help="raw IXI / BraTS scans into the kit's cohort (brain extraction, "
                                       "N4, registration to MNI152, QC)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw_dir", help="the downloaded scans: IXI folder, BraTS case folders or a manifest CSV")
    p.add_argument("out_dir", help="where the prepared cohort goes (outside RAW_DIR)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help="RAW_DIR's layout (default: auto)")
    p.add_argument("--brain-mask", default="auto", choices=MASK_METHODS,
                   help="hd-bet: extract the brain with HD-BET; given: the volume is already stripped (its "
                        "non-zero voxels are the brain, e.g. your own mask applied); auto (default): given "
                        "for stripped volumes, else hd-bet")
    p.add_argument("--workers", type=int, default=1, help="subjects at the same time, on a local Dask "
                                                          "cluster (default: 1, in this process)")
    p.add_argument("--n4-shrink", type=int, default=4, help="N4's shrink factor (default: 4)")
    p.add_argument("--device", default="cpu", help="where HD-BET runs: cpu (default) or a CUDA index")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> int:
    """Run ``glio-kit prepare``; returns 1 when a subject failed (the others are prepared)."""
    try:
        from ..data.prepare import prepare_cohort  # SimpleITK, nilearn.datasets: slow, and optional
    except ImportError as err:  # SimpleITK missing: the message names the extra
        raise GlioKitError(str(err)) from None
    if args.workers < 1:
        raise GlioKitError(f"--workers must be at least 1, got {args.workers}")
    device = args.device if args.device == "cpu" else int(args.device)
    common = dict(layout=args.layout, brain_mask=args.brain_mask, n4_shrink=args.n4_shrink, device=device,
                  workers=args.workers)
    if args.workers == 1:
        rows = prepare_cohort(args.raw_dir, args.out_dir, **common)
    else:
        from .engine import Engine  # starts Dask: only for --workers > 1

        with Engine("dask", args.workers, out=None, say=print) as engine:
            rows = prepare_cohort(args.raw_dir, args.out_dir, executor=engine.executor, **common)
    failed = [r for r in rows if r["status"] == "failed"]
    flagged = [r for r in rows if r["status"] != "failed" and r.get("warnings")]
    print(f"[prepare] {len(rows)} subjects: {len(rows) - len(failed)} prepared, {len(failed)} failed, "
          f"{len(flagged)} flagged for a look; table {args.out_dir}/prepare.csv, QC page "
          f"{args.out_dir}/prepare_qc.html")
    for r in failed:
        print(f"glio-kit: {r['subject']} failed: {r.get('warnings')}", file=sys.stderr)
    return 1 if failed else 0

"""Step 02 on several GPUs (or CPU processes): the command torchrun starts in every process.

    glio-kit run --profile paper --run-dir runs/paper --notebook 01_data_prep.ipynb
    torchrun --nproc_per_node 4 -m glio_kit.run.torchrun --profile paper --run-dir runs/paper
    glio-kit run --profile paper --run-dir runs/paper      # notebook 02 finds the training done

Every process opens the run folder and its slice cache, joins the process group and calls
the one training loop, :func:`glio_kit.gan.train.train_dcgan`, which then runs in its DDP mode
(:mod:`glio_kit.gan.ddp`: the same weights as one process trained on the global batch).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..data.slice_cache import SliceCache
from ..errors import GlioKitError
from ..gan.ddp import process_group, rank
from ..gan.train import train_dcgan
from .config import parse_assignments
from .config import get_config
from .rundir import RunDir
from ..device import choose_device

__all__ = ["main"]

PROG = "torchrun --nproc_per_node N -m glio_kit.run.torchrun"


def main(argv=None) -> int:
    """``torchrun --nproc_per_node N -m glio_kit.run.torchrun --run-dir RUN [--profile P] [-p name=value]``.

    Parameters
    ----------
    argv : list of str or None
        The command's arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 when the training finished (or was already done), 2 when the command
        was not started by torchrun or its arguments or run folder are wrong.
    """
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run folder whose data preparation (01) is done")
    p.add_argument("--profile", default=None, help="smoke | demo | paper (default: $GLIO_KIT_PROFILE, demo)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a training knob, as for glio-kit run (repeatable); give notebook 02 the same")
    p.add_argument("--overwrite", action="store_true", help="redo a training of other settings in RUN")
    args = p.parse_args(argv)
    if "RANK" not in os.environ:
        print(f"glio_kit.run.torchrun: start it with torchrun ({PROG} ...)", file=sys.stderr)
        return 2
    try:
        settings = get_config(args.profile, **parse_assignments(args.param)).train
        run = RunDir(args.run_dir, create=False)
        if not (run / "cache").exists():
            raise GlioKitError(f"{run.path}: no slice cache; run the data preparation first "
                               f"(glio-kit run --run-dir {args.run_dir} --notebook 01_data_prep.ipynb)")
        cache = SliceCache(run / "cache")
    except (GlioKitError, ValueError) as err:
        print(f"glio_kit.run.torchrun: error: {err}", file=sys.stderr)
        return 2
    with process_group(choose_device(settings.device)):
        result = train_dcgan(run, cache, settings, overwrite=args.overwrite)
        if rank() == 0:
            print({k: v for k, v in result.items() if k != "losses"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Seconds per stage and peak memory of `glio-kit prepare` on raw-like heads, and what --workers gives.

Writes ``--n`` raw-like synthetic heads (skull, scalp, random pose, IXI voxels; glio_kit.data.synth.
raw_head) in the IXI layout, then

1. prepares one of them in a fresh subprocess (HD-BET on the CPU, N4, registration, resampling):
   seconds per stage and the process's peak resident memory;
2. prepares all of them with ``glio-kit prepare --workers 1`` and with ``--workers W``: wall time
   per subject each way.

Targets (issue 17, 2 cores): at most 90 s and 4 GB per subject end to end. The machine's load
average is printed before and after, since a shared machine slows every figure.

    python benchmarks/prepare_speed.py [--n 2] [--workers 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import SimpleITK as sitk, torch
threads = int(sys.argv[2])
torch.set_num_threads(threads)
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
from glio_kit.data.prepare import run_stages
t = time.perf_counter()
res = run_stages(sys.argv[1], method="hd-bet")
print(json.dumps({"stages": res["seconds"], "total_s": round(time.perf_counter() - t, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                  "brain_ml": round(res["brain_ml"]),
                  "registration_dice": round(res["registration_dice"], 3)}))
"""


def write_heads(folder: Path, n: int) -> list:
    """``n`` raw-like heads as ``IXI9xx-Synth-T2.nii.gz`` in ``folder``; their paths."""
    import nibabel as nib

    from glio_kit.data.synth.raw_head import raw_head

    paths = []
    for i in range(n):
        head = raw_head("healthy", rng_seed=100 + i)
        p = folder / f"IXI{900 + i}-Synth-T2.nii.gz"
        nib.save(nib.Nifti1Image(head["image"], head["affine"]), p)
        paths.append(p)
    return paths


def timed_prepare(raw: Path, out: Path, workers: int) -> float:
    """Wall seconds of ``glio-kit prepare RAW OUT --workers W --brain-mask hd-bet``."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "glio_kit.run.cli", "prepare", str(raw), str(out), "--workers",
                    str(workers), "--brain-mask", "hd-bet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2, help="raw-like heads (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel run (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the one-subject run (default 2)")
    ap.add_argument("--skip-workers", action="store_true", help="only the one-subject stage timing")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        paths = write_heads(raw, args.n)
        one = subprocess.run([sys.executable, "-c", CHILD, str(paths[0]), str(args.threads)], check=True,
                             capture_output=True, text=True)
        result = {"one_subject": json.loads(one.stdout.strip().splitlines()[-1])}
        print(json.dumps(result["one_subject"]))
        if not args.skip_workers:
            for w in (1, args.workers):
                s = timed_prepare(raw, Path(tmp) / f"out{w}", w)
                result[f"workers_{w}_s_per_subject"] = round(s / args.n, 1)
                print(f"--workers {w}: {s:.0f} s for {args.n} subjects ({s / args.n:.0f} s each)")
    result["load_after"] = os.getloadavg()
    print(f"load average after: {result['load_after']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

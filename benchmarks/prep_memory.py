"""Peak memory of preprocessing for two cohort sizes, side by side in one run.

The slice cache is written one volume at a time, so peak resident memory should not grow
with the number of subjects. This script writes a small synthetic cohort at 1 mm, then
preprocesses it twice in fresh subprocesses: once as it is (N subjects) and once listed
``--factor`` times in manifest CSVs (factor x N subjects, the same files under new ids).
It prints the peak RSS of each and their ratio as the last line (target: close to 1).

    python benchmarks/prep_memory.py [--n 6] [--factor 4] [--voxel-size 1.0] [--image-size 64]
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys
from glio_kit.run.config import get_config
from glio_kit.data.preprocess import prepare
from glio_kit.run.rundir import RunDir
args = json.loads(sys.argv[1])
cfg = get_config("demo", image_size=args["image_size"], n_slices=16)
cache = prepare(RunDir(args["run"]), cfg, args["cohort"], progress=False)
print(json.dumps({"slices": len(cache),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def manifest(folder: Path, out: Path, label: int, factor: int) -> str:
    from glio_kit.data.cohort import discover

    subjects = discover(folder)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "image", "mask", "label"])
        for k in range(factor):
            for s in subjects:
                w.writerow([f"{s.subject}-copy{k}", s.image, s.mask or "", label])
    return str(out)


def measure(cohort: dict, run: Path, image_size: int) -> dict:
    arg = json.dumps({"cohort": cohort, "run": str(run), "image_size": image_size})
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, arg], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["seconds"] = round(time.time() - t0, 1)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=6, help="subjects in the small cohort")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--voxel-size", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    from glio_kit.data.synth import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_tr = max(2, args.n - 2)
        paths = make_cohort(tmp / "cohort", n_train_healthy=n_tr, n_test_healthy=1, n_test_tumor=1,
                            voxel_size=args.voxel_size, progress=False)
        small = {k: str(paths[k]) for k in ("train_healthy", "test_healthy", "test_tumor")}
        big = {
            "train_healthy": manifest(paths["train_healthy"], tmp / "train.csv", 0, args.factor),
            "test_healthy": manifest(paths["test_healthy"], tmp / "test_h.csv", 0, args.factor),
            "test_tumor": manifest(paths["test_tumor"], tmp / "test_t.csv", 1, args.factor),
        }
        a = measure(small, tmp / "run_small", args.image_size)
        b = measure(big, tmp / "run_big", args.image_size)
    n_small, n_big = n_tr + 2, args.factor * (n_tr + 2)
    print(f"voxel size {args.voxel_size} mm, image size {args.image_size}")
    print(f"{n_small:4d} subjects: {a['slices']:5d} slices, "
          f"peak RSS {a['peak_rss_mb']:.0f} MB, {a['seconds']} s")
    print(f"{n_big:4d} subjects: {b['slices']:5d} slices, "
          f"peak RSS {b['peak_rss_mb']:.0f} MB, {b['seconds']} s")
    print(f"ratio peak RSS {n_big}/{n_small} subjects = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()

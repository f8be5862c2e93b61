"""Does this machine reproduce the README's results table to the digit?

Runs the demo (``glio-kit run --profile demo``, what ``make demo`` runs) into a new folder, or
reads a finished run with ``--run-dir``, and compares its ``metrics.md`` table with the table
under "Results of `make demo`" in README.md, cell by cell. It prints every cell that differs
and the machine the run recorded (``environment.json``), and exits 1 when any cell differs.

    python benchmarks/reproduce_demo.py                 # ~16 min on 2 cores: a fresh demo run
    python benchmarks/reproduce_demo.py --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Results of `make demo`"


def markdown_table(text: str, after: str | None = None) -> list[list[str]]:
    """The first pipe table of ``text`` (after the line starting with ``after``), as rows of cells,
    without the ``|---|`` rule."""
    lines = text.splitlines()
    if after is not None:
        start = next((i for i, ln in enumerate(lines) if ln.startswith(after)), None)
        if start is None:
            raise SystemExit(f"README.md has no section {after!r}")
        lines = lines[start:]
    rows, inside = [], False
    for ln in lines:
        if ln.startswith("|"):
            inside = True
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif inside:
            break
    return rows


def differences(readme: list[list[str]], run: list[list[str]]) -> list[str]:
    """One line per cell of the README's table that the run's table does not hold the same."""
    if not readme or not run:
        return ["one of the tables is empty"]
    out = []
    if readme[0] != run[0]:
        out.append(f"columns: README {readme[0]} vs run {run[0]}")
    got = {r[0]: r for r in run[1:]}
    for row in readme[1:]:
        other = got.get(row[0])
        if other is None:
            out.append(f"row {row[0]!r}: not in the run's table")
            continue
        for col, (a, b) in enumerate(zip(row, other)):
            if a != b:
                name = readme[0][col] if col < len(readme[0]) else col
                out.append(f"{row[0]} / {name}: README {a} vs run {b}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, help="a finished demo run (default: run one in a new folder)")
    args = ap.parse_args(argv)
    run = args.run_dir
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="glio-demo-")) / "demo"
        cmd = [sys.executable, "-m", "glio_kit.run.cli", "run", "--profile", "demo", "--run-dir", str(run)]
        subprocess.run(cmd, check=True)
    readme = markdown_table((ROOT / "README.md").read_text(), after=SECTION)
    table = markdown_table((run / "metrics.md").read_text())
    env = json.loads((run / "environment.json").read_text()) if (run / "environment.json").exists() else {}
    machine = env.get("machine", {})
    print(f"run: {run}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    diff = differences(readme, table)
    cells = sum(len(r) - 1 for r in readme[1:])
    print(f"README table: {cells} cells; differing: {len(diff)}")
    for line in diff:
        print("  " + line)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())

"""Copy a grid's finished cells into a committed folder and rebuild its tables there.

    python docs/reproduction/sync_cells.py results/paper-cpu-v2 docs/reproduction/paper-cpu-v2

results/ does not survive a change of machine, so a grid that runs over several sessions keeps its
finished cells in docs/ (commit them before each stop) and resumes from there:

    mkdir -p results && cp -r docs/reproduction/paper-cpu-v2 results/ && offbench grid preset=paper-cpu-v2

Only cells that finished and ran from a committed tree (run.json: status finished, git_commit without
"-dirty") are copied; cells already in the destination are left as they are. The tables
(runs/summary/metrics.parquet) are rebuilt from the destination's cells by the grid's own `collect`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from offpolicy_bench.grid import collect


def sync(src: str, dst: str) -> tuple[list[str], list[str]]:
    """(cells copied, cells skipped with why)."""
    os.makedirs(os.path.join(dst, "cells"), exist_ok=True)
    shutil.copyfile(os.path.join(src, "grid.json"), os.path.join(dst, "grid.json"))
    copied, skipped = [], []
    for rid in sorted(os.listdir(os.path.join(src, "cells"))):
        cell, target = os.path.join(src, "cells", rid), os.path.join(dst, "cells", rid)
        try:
            run = json.load(open(os.path.join(cell, "run.json")))
        except (OSError, ValueError):
            skipped.append(f"{rid} (no run.json)")
            continue
        if run.get("status") != "finished":
            skipped.append(f"{rid} ({run.get('status')})")
        elif str(run.get("git_commit", "")).endswith("-dirty") or not run.get("git_commit"):
            skipped.append(f"{rid} (ran from a dirty or unknown tree: {run.get('git_commit')})")
        elif not os.path.exists(target):
            shutil.copytree(cell, target)
            copied.append(rid)
    collect(dst)
    return copied, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="the grid's results folder")
    ap.add_argument("dst", help="the committed folder")
    a = ap.parse_args(argv)
    copied, skipped = sync(a.src, a.dst)
    n = len(os.listdir(os.path.join(a.dst, "cells")))
    print(f"{len(copied)} cells copied, {n} in {a.dst}; skipped: {', '.join(skipped) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

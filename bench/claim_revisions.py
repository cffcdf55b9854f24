#!/usr/bin/env python3
"""The claim with no flow control, this tree against an earlier revision, in one run (PostgreSQL).

    python scripts/with_postgres.py --durable -- python bench/claim_revisions.py
    python bench/claim_revisions.py --base 83c9ad1 --sizes 10000,1000000 --rounds 3   # DATABASE_URL=postgres://...

Issue 15 asked that a claim of 1 and of 100 with no control stay within 10 %
of the figures from before it. Two runs of bench/claim_scaling.py minutes
apart differ by more than that on a shared machine, so this script measures
both revisions side by side: it checks --base out into a temporary git
worktree, then runs each revision's own bench/claim_scaling.py (same seeding,
same series: claim N from a backlog, complete them, repeat) against the same
server, --rounds times, alternating which goes first, and compares the
medians of the two. Each run creates the benchmark database anew and migrates
it with its own revision's migrations, so each revision claims from its own
schema and indexes, as it would in production.

Prints each run's claim medians (the series "as a worker runs": the engine's
own plan cache mode), then per size and batch the median over the rounds of
each revision and the ratio this tree / base, and the median of the rounds'
own ratios (each round's two runs are neighbours in time, so a slow spell of
the machine falls on both), with the smallest and largest beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Before issue 15's first commit (11032b3): the claim as it was when the issue was filed.
DEFAULT_BASE = "83c9ad1"

SIZE_LINE = re.compile(r"^growing to ([\d,]+) tasks")
CLAIM_LINE = re.compile(r"^\s+batch\s+(\d+), plan_cache_mode (\S+): claim median/p95/p99 ([\d.]+) /")


def claim_medians(output: str) -> dict[tuple[int, int], float]:
    """(size, batch) -> the claim median of the first series of that batch at that size (as a worker runs)."""
    found: dict[tuple[int, int], float] = {}
    size = 0
    for line in output.splitlines():
        if match := SIZE_LINE.match(line):
            size = int(match.group(1).replace(",", ""))
        elif (match := CLAIM_LINE.match(line)) and size:
            found.setdefault((size, int(match.group(1))), float(match.group(3)))
    return found


def run(tree: Path, args: argparse.Namespace) -> dict[tuple[int, int], float]:
    command = [
        sys.executable,
        "bench/claim_scaling.py",
        "--sizes",
        args.sizes,
        "--samples",
        str(args.samples),
        "--samples-batch",
        str(args.samples_batch),
        "--no-events",
    ]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        sys.exit(f"claim_revisions: {tree} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    found = claim_medians(done.stdout)
    wanted = {(int(s), b) for s in args.sizes.split(",") for b in (1, 100)}
    if set(found) != wanted:
        sys.exit(f"claim_revisions: {tree}'s output had {sorted(found)}, expected {sorted(wanted)}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"the earlier revision (default {DEFAULT_BASE})")
    parser.add_argument("--sizes", default="10000,1000000", help="task table sizes, increasing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500, help="claims of 1 task per size and run")
    parser.add_argument("--samples-batch", type=int, default=100, help="claims of 100 tasks per size and run")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        print("claim_revisions: DATABASE_URL must point at PostgreSQL (use scripts/with_postgres.py)", file=sys.stderr)
        return 2
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    base_tree = Path(tempfile.mkdtemp(prefix="claim-base-"))
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
    trees = {"base": base_tree, "this": ROOT}
    results: dict[str, list[dict[tuple[int, int], float]]] = {"base": [], "this": []}
    try:
        at = head.stdout.strip()
        print(f"# base {args.base}, this tree at {at} (uncommitted changes included); {os.cpu_count()} CPUs")
        for round_no in range(args.rounds):
            order = ["base", "this"] if round_no % 2 == 0 else ["this", "base"]
            for name in order:
                found = run(trees[name], args)
                results[name].append(found)
                shown = ", ".join(f"{size:,}/{batch}: {ms:.2f} ms" for (size, batch), ms in sorted(found.items()))
                print(f"round {round_no + 1} {name:>4}: {shown}; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
        shutil.rmtree(base_tree, ignore_errors=True)

    print(f"\nClaim with no flow control, ms (median of {args.rounds} rounds' medians), this tree / base:\n")
    print("| tasks | batch | base | this tree | this / base | median of per-round ratios (min-max) |")
    print("|---:|---:|---:|---:|---:|---|")
    for key in sorted(results["base"][0]):
        base = [r[key] for r in results["base"]]
        this = [r[key] for r in results["this"]]
        ratios = [t / b for t, b in zip(this, base, strict=True)]
        print(
            f"| {key[0]:,} | {key[1]} | {statistics.median(base):.2f} | {statistics.median(this):.2f}"
            f" | ×{statistics.median(this) / statistics.median(base):.2f}"
            f" | ×{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
A full sync's cost in the worker's process, counted in instructions: for comparing two
versions of the code on a machine whose speed moves by more than the difference.

valgrind's callgrind counts every instruction the process executes, the same count for
the same work whatever else the machine does. This runs bench/profile_sync.py (the WSGI
application in-process, middleware and all, on real PostgreSQL) under callgrind twice,
with no measured requests and with --requests N, so that start-up and warm-up cancel out,
and prints the instructions per full sync. With --root, the code measured is another
checkout's (its bench/profile_sync.py, its application), run with this interpreter:

    .venv/bin/python bench/instructions.py                        # this checkout, 300 full syncs
    git worktree add /tmp/before <commit> && ln -s "$PWD/.venv" /tmp/before/.venv
    .venv/bin/python bench/instructions.py --root /tmp/before     # the same, for <commit>
    .venv/bin/python bench/instructions.py --limit-dir <limit_app folder>   # this checkout and the limit

With --limit-dir the bare limit app is counted too, through the same script and bodies, and
the ratio printed: the worker's share of the comparison `compare` makes, in a unit this
machine's moods do not move.

PostgreSQL's own work is not counted here (bench/cpu_split.py --statements shows its
statements). Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(
    root: Path,
    requests: int,
    database: str,
    env: dict[str, str] | None = None,
    limit_dir: Path | None = None,
    load_only: bool = False,
) -> int:
    """
    Instructions the worker's process executes for `requests` full syncs, start-up included:
    of `root`'s application, or of the limit app in `limit_dir` (through `root`'s script).
    """
    out = Path(tempfile.mkdtemp(prefix="callgrind-")) / "out"
    completed = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         str(root / "bench" / "profile_sync.py"), "--database", database, "--stations", "50",
         "--requests", str(requests), *(["--limit-dir", str(limit_dir)] if limit_dir else []),
         *(["--load-only"] if load_only else [])],
        env=dict(os.environ, **(env or {})), cwd=root, capture_output=True, text=True,
    )
    found = re.search(r"Collected : (\d+)", completed.stderr)
    if not found:
        raise SystemExit(f"callgrind gave no count:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    shutil.rmtree(out.parent, ignore_errors=True)
    return int(found.group(1))


def per_full_sync(
    root: Path, requests: int, database: str, env: dict[str, str] | None = None, total: int | None = None
) -> float:
    """Per full sync, start-up and warm-up subtracted; `total` as in `application_only`."""
    base = instructions(root, 0, database, env)
    if total is None:
        total = instructions(root, requests, database, env)
    return (total - base) / requests


def application_only(
    root: Path, requests: int, database: str, limit_dir: Path | None = None, total: int | None = None
) -> float:
    """
    Per full sync, the application's own: the load (building and signing bodies) subtracted.
    `total`, the count of the same run with the application, when it was taken already.
    """
    load = instructions(root, requests, database, limit_dir=limit_dir, load_only=True)
    if total is None:
        total = instructions(root, requests, database, limit_dir=limit_dir)
    return (total - load) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database", default="chargeghar_instructions")
    parser.add_argument("--limit-dir", type=Path, default=None, help="also count the bare limit app in this folder")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    root = args.root.resolve()
    total = instructions(root, args.requests, args.database)
    count = per_full_sync(root, args.requests, args.database, total=total)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    print(f"{count / 1e6:.3f} M instructions per full sync (worker process; {args.requests} full syncs; "
          f"{root}, commit {commit.stdout.strip() or 'unknown'})")
    if args.limit_dir:
        ours = application_only(root, args.requests, args.database, total=total)
        limit = application_only(ROOT, args.requests, args.database, limit_dir=args.limit_dir.resolve())
        print(f"{ours / 1e6:.3f} M of them the application's own (building and signing the bodies subtracted)")
        print(f"{limit / 1e6:.3f} M instructions per full sync, the limit's application ({args.limit_dir})")
        print(f"ours against the limit, the application's instructions in the worker: {ours / limit:.2f}x")


if __name__ == "__main__":
    main()

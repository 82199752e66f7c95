#!/usr/bin/env python3
"""
What recording metrics costs a full sync, counted in instructions rather than seconds.

Timing metrics on against off needs a quiet machine and still moves by more than the
difference (a shared 2-core machine varies by 10% from one 15-s round to the next).
Instructions do not: valgrind's callgrind counts every instruction the worker's process
executes, the same count for the same work whatever else the machine does. This runs
bench/profile_sync.py (the WSGI application in-process, real PostgreSQL) under callgrind
four times: metrics on and off, each with no measured requests and with --requests N, so
that start-up and warm-up cancel out, and prints the instructions per full sync.

    .venv/bin/python bench/metrics_cost.py               # 300 full syncs per side, ~5 minutes
    .venv/bin/python bench/metrics_cost.py --requests 500

The database server's work is the same with metrics on or off (recording runs no query;
EndpointQueryCountTests pins the count either way), so the worker's instructions are the
whole difference. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from instructions import per_full_sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    per_request = {}
    for metrics in ("true", "false"):
        database = f"chargeghar_metrics_cost_{metrics}"
        per_request[metrics] = per_full_sync(ROOT, args.requests, database, {"METRICS_ENABLED": metrics})
        print(f"METRICS_ENABLED={metrics:<5}  {per_request[metrics] / 1e6:8.3f} M instructions per full sync "
              f"(worker process; {args.requests} full syncs)", flush=True)
    on, off = per_request["true"], per_request["false"]
    print(f"metrics cost {(on - off) / 1e3:.1f} k instructions per full sync: {100 * (on - off) / off:+.2f}% of the worker's")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""
Where a gunicorn worker's time goes under load: this project under the benchmark's gunicorn
settings, driven with signed full syncs (closed loop) while py-spy samples every worker.

    .venv/bin/pip install py-spy==0.4.1                        # not a project requirement
    .venv/bin/python bench/profile_load.py                     # 20 s, 8 clients: top entries
    .venv/bin/python bench/profile_load.py --flame /tmp/f.svg  # and a flame graph

Prints the functions with the most samples: by their own time (what to make cheaper) and
including what they call (which layer costs what). py-spy runs with --nonblocking, so the
workers are not paused while sampled; its own CPU is not counted as theirs. With --gil only
the thread holding the interpreter lock is sampled: time waiting for PostgreSQL or the
network is left out, so the figures are where the workers spend their CPU in Python.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    OUR_PYTHON,
    PG_DEFAULT,
    ROOT,
    Target,
    analyze,
    drive,
    full_sync_bodies,
    gunicorn_command,
    our_env,
    prepare_ours,
    start,
    stop,
    warm_up,
)


def frame_name(frame: str) -> str:
    """`function (path/to/file.py:line)` from py-spy's collapsed format, shortened to module.function."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path.removesuffix('.py').replace('/', '.')}.{function}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--port", type=int, default=8160)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="a fixed offered rate instead of a closed loop")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--flame", type=Path, default=None, help="also write a flame graph (SVG) here")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="server environment")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(OUR_PYTHON.parent)) or shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")

    database = "bench_profile"
    target = Target("ours", args.port, prepare_ours(args.pg, database))
    env = our_env(args.pg, database)
    env.update(item.split("=", 1) for item in args.set)
    start(target, gunicorn_command(OUR_PYTHON, target.port, 4, 2), env=env, cwd=ROOT)
    out = Path(tempfile.mkdtemp(prefix="profile-")) / "stacks.txt"
    try:
        warm_up(target, 200, 24, 0.7)
        analyze(args.pg, database)
        sampler = subprocess.Popen(
            [py_spy, "record", "--pid", str(target.process.pid), "--subprocesses", "--nonblocking",
             "--gil", "--rate", "250", "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        result = {}
        load = threading.Thread(target=lambda: result.update(r=drive(
            target, full_sync_bodies(200, 24, 0.7, random.Random(3)), clients=args.clients,
            seconds=args.seconds, rate=args.rate)))
        load.start()
        load.join()
        sampler.wait(timeout=60)
    finally:
        stop(target)
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(frame) for frame in stack.split(";")[1:]]  # [0] is the process
        if not frames or frames[-1].endswith((".wait", "._wait", ".select", ".poll", ".accept")):
            continue  # idle threads
        n = int(count)
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    print(f"{result['r'].rate:.1f} full syncs/s during the sampling, {total} busy samples in the workers")
    for title, counter in (("own time", own), ("including callees", inclusive)):
        print(f"\ntop {args.top} by {title} (% of busy samples)")
        for name, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {name}")
    if args.flame:
        subprocess.run([py_spy, "--help"], capture_output=True)
        print(f"\nraw stacks: {out} (feed to a flame graph tool; --flame writes none itself)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""
Where the machine's CPU goes per full sync under load: this project under gunicorn (the
benchmark's settings), its PostgreSQL backends and the load generator, read from /proc
before and after a closed-loop run.

    .venv/bin/python bench/cpu_split.py                 # 15 s, 16 clients
    .venv/bin/python bench/cpu_split.py --seconds 30
    .venv/bin/python bench/cpu_split.py --pg postgres://postgres@127.0.0.1:5433 --statements

With --statements, the PostgreSQL server must load pg_stat_statements
(shared_preload_libraries); the run then prints each statement's share of the database's
time per full sync: execution time, WAL bytes and rows, from the extension's counters.

On a 2-core machine, 2000 ms of CPU per second divided by the total per request is the
throughput the machine can reach when nothing else runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    OUR_PYTHON,
    PG_DEFAULT,
    ROOT,
    TICKS,
    Target,
    analyze,
    drive,
    full_sync_bodies,
    gunicorn_command,
    our_env,
    prepare_ours,
    process_ticks,
    start,
    stop,
    warm_up,
)


def category(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "load generator"
    if "gunicorn" in command:
        return "gunicorn workers"
    if command.startswith("postgres") or "/bin/postgres " in command:
        return "PostgreSQL"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--port", type=int, default=8150)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slots", type=int, default=24, help="slots per station (production cabinets have 4)")
    parser.add_argument("--statements", action="store_true", help="per-statement figures from pg_stat_statements")
    args = parser.parse_args()

    database = "bench_cpu_split"
    target = Target("ours", args.port, prepare_ours(args.pg, database))
    start(target, gunicorn_command(OUR_PYTHON, target.port, 4, 1), env=our_env(args.pg, database), cwd=ROOT)
    try:
        warm_up(target, 200, args.slots, 0.7)
        analyze(args.pg, database)
        if args.statements:
            reset_statements(args.pg, database)
        before = process_ticks()
        result = drive(
            target, full_sync_bodies(200, args.slots, 0.7, random.Random(3)), clients=args.clients, seconds=args.seconds
        )
        after = process_ticks()
    finally:
        stop(target)
    requests = len(result.latencies)
    totals: dict[str, int] = {}
    for pid, (command, _group, ticks) in after.items():
        used = ticks - before.get(pid, (command, _group, 0))[2]
        if used > 0:
            key = category(pid, command)
            totals[key] = totals.get(key, 0) + used
    print(f"{requests / args.seconds:.1f} full syncs/s, {args.clients} clients, {result.errors} errors")
    for key, ticks in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {key:<18} {ticks / TICKS / requests * 1000:6.2f} ms CPU per full sync")
    total = sum(totals.values()) / TICKS / requests * 1000
    print(f"  {'total':<18} {total:6.2f} ms CPU per full sync: {os.cpu_count() * 1000 / total:.0f}/s on {os.cpu_count()} cores")
    if args.statements:
        print_statements(args.pg, database, requests)


def reset_statements(pg: str, database: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        connection.execute("SELECT pg_stat_statements_reset()")


def print_statements(pg: str, database: str, requests: int) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        rows = connection.execute(
            "SELECT calls, total_exec_time, wal_bytes, rows, query FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY total_exec_time DESC LIMIT 12",
            [database],
        ).fetchall()
    print(f"\nstatements by execution time (pg_stat_statements), per full sync ({requests} full syncs):")
    print("   calls  exec ms   WAL bytes    rows  statement")
    for calls, exec_ms, wal, count, query in rows:
        text = " ".join(query.split())[:110]
        print(f"  {calls / requests:6.2f}  {exec_ms / requests:7.3f}  {int(wal) / requests:10.0f}  {count / requests:6.1f}  {text}")


if __name__ == "__main__":
    main()

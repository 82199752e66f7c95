#!/usr/bin/env python3
"""
What one round trip to PostgreSQL costs on this machine, whatever the statement does: a
prepared `SELECT 1`, one at a time, with the client's thread CPU and the server backend's
CPU (from /proc) per statement. A full sync makes seven (docs/performance.md lists them),
the bare limit one; this is the part of the difference no Python code can take back.

    .venv/bin/python bench/round_trips.py                  # TCP to 127.0.0.1 and the Unix socket
    .venv/bin/python bench/round_trips.py --statements 20000

Each way is measured three times, alternated, because this machine's speed moves by more
than the difference between them within a minute. "through Django" is the same statement
through this project's database connection and cursor (`main_app.sql.fetch`), DEBUG off.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_sync import backend_cpu_seconds  # noqa: E402

from bench import PG_DEFAULT, ROOT, our_env  # noqa: E402

SOCKET_DIR = "/var/run/postgresql"


def measure(execute, backend_pid: int, statements: int) -> tuple[float, float]:
    """Client thread CPU and backend CPU per statement, in microseconds."""
    for _ in range(200):  # prepared, cached, warm
        execute()
    client, server = time.thread_time(), backend_cpu_seconds(backend_pid)
    for _ in range(statements):
        execute()
    return (
        (time.thread_time() - client) / statements * 1e6,
        (backend_cpu_seconds(backend_pid) - server) / statements * 1e6,
    )


def raw(dsn: str):
    import psycopg

    connection = psycopg.connect(dsn, autocommit=True, prepare_threshold=1)
    pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    cursor = connection.cursor()

    def execute():
        cursor.execute("SELECT 1")
        cursor.fetchall()

    return execute, pid


def through_django(pg: str):
    os.environ.update(our_env(pg, "postgres"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from main_app import sql

    pid = sql.fetch("SELECT pg_backend_pid()", [])[0][0]
    return (lambda: sql.fetch("SELECT 1", [])), pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--statements", type=int, default=10000)
    args = parser.parse_args()

    parsed = urlparse(args.pg)
    user = parsed.username or "postgres"
    ways = {
        "psycopg, TCP 127.0.0.1": raw(f"host={parsed.hostname or '127.0.0.1'} port={parsed.port or 5432} user={user} dbname=postgres"),
        "psycopg, Unix socket": raw(f"host={SOCKET_DIR} port={parsed.port or 5432} user={user} dbname=postgres"),
        "through Django, TCP": through_django(args.pg),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(3):
        for name, (execute, pid) in ways.items():
            figures[name].append(measure(execute, pid, args.statements))
    print(f"one prepared SELECT 1, one at a time, {args.statements} per measurement, three measurements each:")
    for name, runs in figures.items():
        clients = " / ".join(f"{client:5.1f}" for client, _ in runs)
        servers = " / ".join(f"{server:5.1f}" for _, server in runs)
        print(f"  {name:24s} client {clients} us   PostgreSQL {servers} us")


if __name__ == "__main__":
    main()

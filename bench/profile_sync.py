#!/usr/bin/env python3
"""
Where one full sync spends its CPU: this project's WSGI application called in-process
(no HTTP server, no load generator) with the benchmark's signed full syncs, on PostgreSQL.

    .venv/bin/python bench/profile_sync.py                     # CPU per request: worker and PostgreSQL
    .venv/bin/python bench/profile_sync.py --pyinstrument      # plus a call tree of the worker's time
    .venv/bin/python bench/profile_sync.py --queries           # plus the SQL of one request
    .venv/bin/python bench/profile_sync.py --gc-stats          # plus the garbage collector's pauses
    .venv/bin/python bench/profile_sync.py --cpu-profile       # plus the worker's CPU time by function (cProfile)
    .venv/bin/python bench/profile_sync.py --limit-dir <limit_app folder>   # the same for the bare limit

The PostgreSQL backend's CPU is read from /proc (the server runs on this machine).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    OUR_PYTHON,
    OUR_TOKEN_SCRIPT,
    PG_DEFAULT,
    ROOT,
    SECRET,
    full_sync_bodies,
    our_env,
    prepare_limit,
    recreate_database,
    run,
    wire,
)


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--database", default="chargeghar_profile")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--slots", type=int, default=24)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--queries", action="store_true")
    parser.add_argument("--gc-stats", action="store_true", help="count and time garbage collections")
    parser.add_argument("--limit-dir", type=Path, default=None,
                        help="measure the bare limit app in this folder (its limit_app.py) instead of this project")
    parser.add_argument("--load-only", action="store_true",
                        help="build and sign the measured requests but hand them to an application that does nothing")
    parser.add_argument("--cpu-profile", action="store_true",
                        help="cProfile timed by process CPU time: where the worker's CPU goes, waits excluded")
    parser.add_argument("--stats-file", type=Path, default=None,
                        help="with --cpu-profile: also save the profile here (pstats), to see who calls what")
    args = parser.parse_args()
    if args.stats_file and not args.cpu_profile:
        parser.error("--stats-file saves the --cpu-profile profile: give both")

    if args.limit_dir:
        application, token, database_backend = _limit_application(args)
    else:
        application, token, database_backend = _our_application(args)

    make_body = full_sync_bodies(args.stations, args.slots, 0.7, random.Random(1))
    statuses: dict[str, int] = {}

    def call(n: int, app=application) -> None:
        body = make_body(n)
        timestamp = int(time.time())
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": wire.DATA_PATH,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "HTTP_X_TIMESTAMP": str(timestamp),
            "HTTP_X_SIGNATURE": wire.sign(SECRET, body, timestamp),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }

        def start_response(status, headers, exc_info=None):
            statuses[status] = statuses.get(status, 0) + 1

        result = app(environ, start_response)
        b"".join(result)
        if hasattr(result, "close"):
            result.close()

    # Warm up: every station exists and has its banks; connection, caches and prepared
    # statements are warm, as in a long-running worker.
    for n in range(3 * args.stations):
        call(n)
    # A production database has planner statistics; this one was filled seconds ago.
    backend = database_backend()

    if args.queries and not args.limit_dir:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            call(0)
        for number, query in enumerate(captured.captured_queries, 1):
            print(f"{number:2}. {query['sql'][:300]}")
        print()

    if not args.requests:  # start-up and warm-up only (bench/metrics_cost.py subtracts them)
        print("warmed up; no measured requests")
        return
    # --load-only: every body built, signed and handed over as a request would be, to an
    # application that does nothing (bench/instructions.py subtracts what the load costs).
    measured = _nothing if args.load_only else application

    # The body generator (the load generator's work) is timed on its own and subtracted.
    started = time.process_time()
    for n in range(args.requests):
        make_body(n)
    generator = (time.process_time() - started) / args.requests

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    if args.gc_stats:
        started_at = [0.0]

        def on_collection(phase, info):
            if phase == "start":
                started_at[0] = time.perf_counter()
            else:
                pauses[info["generation"]].append(time.perf_counter() - started_at[0])

        gc.callbacks.append(on_collection)

    profiler = None
    if args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    elif args.cpu_profile:
        import cProfile

        # Timed by this process's CPU time, so the waits for PostgreSQL count nothing.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    statuses.clear()
    cpu, pg, wall = time.process_time(), backend_cpu_seconds(backend), time.perf_counter()
    for n in range(args.requests):
        call(n, measured)
    cpu, pg, wall = time.process_time() - cpu, backend_cpu_seconds(backend) - pg, time.perf_counter() - wall
    if profiler:
        profiler.disable() if args.cpu_profile else profiler.stop()
    per = 1000 / args.requests
    print(f"{args.requests} full syncs ({args.stations} stations x {args.slots} slots): statuses {statuses}")
    print(f"  worker CPU     {cpu * per - generator * 1000:6.2f} ms per request (body generation excluded)")
    print(f"  PostgreSQL CPU {pg * per:6.2f} ms per request")
    print(f"  wall           {wall * per:6.2f} ms per request, one at a time")
    if args.gc_stats:
        gc.callbacks.clear()
        for generation, times in pauses.items():
            if times:
                print(
                    f"  gen{generation} collections: {len(times)}, longest {max(times) * 1000:.1f} ms, "
                    f"total {sum(times) * 1000:.0f} ms"
                )
    if profiler and args.cpu_profile:
        import pstats

        if args.stats_file:
            profiler.dump_stats(args.stats_file)
        stats = pstats.Stats(profiler).strip_dirs()
        print("\nworker CPU by function, including callees (cProfile adds its own overhead to every call):")
        stats.sort_stats("cumulative").print_stats(45)
        print("worker CPU by function, own time:")
        stats.sort_stats("tottime").print_stats(30)
    elif profiler:
        print(profiler.output_text(unicode=True, color=False, show_all=bool(os.environ.get("PROFILE_ALL"))))


def _nothing(environ, start_response):
    start_response("204 No Content", [])
    return [b""]


def _our_application(args):
    """This project's WSGI application on a fresh, migrated database, and a sender's token."""
    recreate_database(args.pg, args.database)
    env = our_env(args.pg, args.database)
    run([OUR_PYTHON, "manage.py", "migrate", "--noinput"], env=env, cwd=ROOT)
    token = run([OUR_PYTHON, "manage.py", "shell", "-c", OUR_TOKEN_SCRIPT], env=env, cwd=ROOT).strip().splitlines()[-1]
    os.environ.update(env)
    # One connection for the whole run, so its backend's CPU can be read.
    os.environ["DATABASE_CONN_MAX_AGE"] = "86400"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    from django.db import connection

    from main_app.wsgi import application

    def backend() -> int:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    return application, token, backend


def _limit_application(args):
    """
    The bare limit (`limit_app.py` in --limit-dir, imported from there, never copied) on a
    fresh database, and a token for it: the same bodies, signatures and calls as ours.
    """
    limit_dir = Path(args.limit_dir).resolve()
    limit_env, token = prepare_limit(args.pg, args.database + "_limit", limit_dir)
    os.environ.update(limit_env)
    sys.path.insert(0, str(limit_dir))
    import limit_app

    def backend() -> int:
        # The limit's connection of this thread, the one its requests use.
        connection = limit_app._conn()
        connection.execute("ANALYZE")
        return connection.execute("SELECT pg_backend_pid()").fetchone()[0]

    return limit_app.app, token, backend


if __name__ == "__main__":
    main()

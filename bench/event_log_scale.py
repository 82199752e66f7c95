"""
The event log at scale (docs/performance.md, "Event log: partitions, retention, size"):

1. two databases of ours: an empty log, and one filled in SQL (generate_series, not HTTP)
   with `--rows` rows (10 million) over `--days` day partitions (30), then VACUUM ANALYZE
   (the bench server runs with autovacuum off);
2. the p50 of one full sync at a time through the real endpoint (gunicorn on 127.0.0.1),
   both databases, rounds alternating which goes first;
3. on the big one, the daily upkeep (`maintain_iot_events`: create a day ahead, trim one day's
   payloads, drop the oldest day) against the same work on a plain table holding a copy of
   `--plain-days` days: a DELETE of one day's rows (and the VACUUM it needs) and an UPDATE
   of one day's payloads.

The filled rows are settled full syncs; those older than 8 days have no payload (as the
retention leaves them), the last 8 days a short JSON one: what is measured is the indexes and
the partitions, not the bodies' bytes (bench/event_log_size.py measures those).

    .venv/bin/python bench/event_log_scale.py [--rows 10000000] [--days 30] [--rounds 3]

Uses the databases bench_ev_scale_empty and bench_ev_scale_big (dropped and created again).
"""

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402
from bench import (  # noqa: E402
    OUR_PYTHON,
    Target,
    our_env,
    prepare_ours,
)

DATABASES = {"empty": "bench_ev_scale_empty", "big": "bench_ev_scale_big"}

COLUMNS = (
    "received_at, message_type, station_serial, source_ip, body_sha256, body_bytes, payload, raw_body, "
    "outcome, duplicate_of_id, http_status, response, error, duration_ms, attempts, processed_at"
)
# One day's rows: settled full syncs of 100,000 stations, spread over the day.
DAY_SQL = f"""
INSERT INTO stations_iotevent ({COLUMNS})
SELECT t, 'full', (864601070000000 + g %% 100000)::text, '10.0.0.7',
       encode(sha256(('%(day)s-' || g)::bytea), 'hex'), 1400,
       CASE WHEN %(payload)s THEN jsonb_build_object('type', 'full', 'timestamp', g, 'n', g %% 100000) END, '',
       'PROCESSED', NULL, 200, '{{"success":true,"message":"Station data synced","data":{{"applied":true}}}}',
       '', 4.2, 1, t
FROM generate_series(1, %(rows)s) g, LATERAL (SELECT '%(day)s'::timestamptz + g * interval '1 second' * (86400.0 / %(rows)s)) s(t)
"""


def create_days(pg: str, database: str, first: datetime, days: int) -> None:
    script = (
        "from datetime import date, timedelta; from django.db import connection; "
        "from api.stations.ingest import event_partitions as e; c = connection.cursor(); "
        f"first = date.fromisoformat('{first.date()}'); "
        f"[e.create_partition(c, first + timedelta(days=n)) for n in range({days})]"
    )
    bench.run([OUR_PYTHON, "manage.py", "shell", "-c", script], env=our_env(pg, database), cwd=ROOT)


def fill(pg: str, database: str, *, rows: int, days: int, today: datetime) -> float:
    """`rows` rows over the `days` days before today, two days at a time (two cores)."""
    import psycopg

    started = time.perf_counter()
    first = today - timedelta(days=days)
    create_days(pg, database, first, days)
    per_day = rows // days

    def one_day(n: int) -> None:
        day = first + timedelta(days=n)
        # The last 8 days keep their payloads; the upkeep below then trims the 8th (day -8).
        recent = (today - day).days <= 8
        with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
            connection.execute("SET synchronous_commit = off")
            connection.execute(
                DAY_SQL % {"day": day.isoformat(), "rows": per_day, "payload": str(recent).lower()}
            )
            if not recent:  # as the upkeep leaves them: already trimmed
                name = f"stations_iotevent_p{day:%Y%m%d}"
                connection.execute(f"COMMENT ON TABLE {name} IS 'payloads trimmed (bench fill)'")

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(one_day, range(days)))
    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE stations_iotevent")
        (count,) = connection.execute(
            "SELECT SUM(reltuples)::bigint FROM pg_partition_tree('stations_iotevent') t "
            "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf"
        ).fetchone()
        (partitions,) = connection.execute("SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'stations_iotevent'::regclass").fetchone()
        (size,) = connection.execute(
            "SELECT SUM(pg_total_relation_size(relid)) FROM pg_partition_tree('stations_iotevent') WHERE isleaf"
        ).fetchone()
    elapsed = time.perf_counter() - started
    print(f"  big log: ~{count:,} rows in {partitions} partitions, {size / 2**30:.2f} GiB, filled and analyzed in {elapsed:.0f} s")
    return elapsed


def statement_cost(pg: str, database: str, repeat: int = 2000) -> dict:
    """Server time of the hot path's digest lookup for a new body (every day's index probed)."""
    import psycopg

    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        (partitions,) = connection.execute("SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'stations_iotevent'::regclass").fetchone()
        for _ in range(20):
            connection.execute("SELECT stations_iotevent_primary(%s, now() - interval '7 days')", ["0" * 64])
        started = time.perf_counter()
        for n in range(repeat):
            connection.execute("SELECT stations_iotevent_primary(%s, now() - interval '7 days')", [f"{n:064x}"])
        lookup = (time.perf_counter() - started) / repeat * 1000
        started = time.perf_counter()
        for _ in range(repeat):
            connection.execute("SELECT 1")
        trip = (time.perf_counter() - started) / repeat * 1000
    print(f"  digest lookup of a new body over {partitions} partitions: {lookup:.3f} ms a call "
          f"({lookup - trip:.3f} ms above an empty round trip)")
    return {"partitions": partitions, "lookup_ms": lookup, "above_trip_ms": lookup - trip}


def upkeep(pg: str, database: str, *, days: int) -> dict:
    """The daily upkeep on the big log: a day ahead, one day trimmed, the oldest day dropped."""
    output = bench.run(
        [OUR_PYTHON, "manage.py", "maintain_iot_events", "--ahead", "8", "--payload-days", "7",
         "--keep-days", str(days - 1)],
        env=our_env(pg, database), cwd=ROOT,
    )
    for line in output.strip().splitlines():
        print(f"    {line}")
    figures = {}
    for key, pattern in (
        ("create_ms", r"created .*\((\d+) ms\)"),
        ("trim_ms", r"trimmed .*\((\d+) ms\)"),
        ("drop_ms", r"dropped expired partition .*\((\d+) ms\)"),
        ("total_ms", r"upkeep done in (\d+) ms"),
    ):
        match = re.search(pattern, output)
        figures[key] = float(match.group(1)) if match else float("nan")
    return figures


def plain_copy(pg: str, database: str, *, plain_days: int, today: datetime) -> dict:
    """The same day's work on a plain table: DELETE one day (then VACUUM), UPDATE one day's payloads."""
    import psycopg

    with psycopg.connect(f"{pg}/{database}", autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS bench_plain")
        connection.execute("CREATE TABLE bench_plain (LIKE stations_iotevent INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        first = today - timedelta(days=plain_days)
        started = time.perf_counter()
        connection.execute(
            "INSERT INTO bench_plain SELECT * FROM stations_iotevent WHERE received_at >= %s AND received_at < %s",
            [first, today],
        )
        # The old table's indexes (before partitioning), on the copy.
        for statement in (
            "ALTER TABLE bench_plain ADD PRIMARY KEY (id)",
            "CREATE INDEX ON bench_plain (received_at)",
            "CREATE INDEX ON bench_plain (outcome, received_at)",
            "CREATE INDEX ON bench_plain (station_serial)",
            "CREATE UNIQUE INDEX ON bench_plain (body_sha256) WHERE duplicate_of_id IS NULL",
            "CREATE INDEX ON bench_plain (duplicate_of_id) WHERE duplicate_of_id IS NOT NULL",
        ):
            connection.execute(statement)
        connection.execute("VACUUM ANALYZE bench_plain")
        (rows,) = connection.execute("SELECT COUNT(*) FROM bench_plain").fetchone()
        print(f"  plain copy: {rows:,} rows of {plain_days} days, built in {time.perf_counter() - started:.0f} s")
        day_end = first + timedelta(days=1)
        figures = {}
        started = time.perf_counter()
        result = connection.execute("DELETE FROM bench_plain WHERE received_at < %s", [day_end])
        figures["delete_ms"] = (time.perf_counter() - started) * 1000
        figures["deleted_rows"] = result.rowcount
        started = time.perf_counter()
        connection.execute("VACUUM bench_plain")
        figures["vacuum_ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        result = connection.execute(
            "UPDATE bench_plain SET payload = NULL WHERE received_at >= %s AND received_at < %s AND payload IS NOT NULL",
            [day_end, day_end + timedelta(days=1)],
        )
        figures["update_ms"] = (time.perf_counter() - started) * 1000
        figures["updated_rows"] = result.rowcount
        connection.execute("DROP TABLE bench_plain")
    print(f"  plain table: DELETE of one day ({figures['deleted_rows']:,} rows) {figures['delete_ms']:.0f} ms, "
          f"then VACUUM {figures['vacuum_ms']:.0f} ms; UPDATE of one day's payloads "
          f"({figures['updated_rows']:,} rows) {figures['update_ms']:.0f} ms")
    return figures


def run(args) -> dict:
    print(f"machine: {bench.machine()}")
    print(f"event log scale: {args.rows:,} rows over {args.days} days; p50 over {args.rounds} rounds "
          f"of {args.round_seconds:.0f} s, one client, {args.slots}-slot full syncs")
    today = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    targets = []
    figures: dict = {}
    for offset, (label, database) in enumerate(DATABASES.items()):
        authorization = prepare_ours(args.pg, database)
        if label == "big":
            figures["fill_s"] = fill(args.pg, database, rows=args.rows, days=args.days, today=today)
        targets.append((Target(label, args.port + offset, authorization), database))
    for label, database in DATABASES.items():
        figures[f"lookup_{label}"] = statement_cost(args.pg, database)
    empty, big = bench.empty_against_big(targets, args)
    figures["p50_empty_ms"], figures["p50_big_ms"] = empty.pct(0.5), big.pct(0.5)
    print(f"\n  full sync p50: empty log {empty.pct(0.5):.2f} ms, {args.rows:,}-row log {big.pct(0.5):.2f} ms "
          f"({(big.pct(0.5) / empty.pct(0.5) - 1) * 100:+.0f}%)")
    print("  daily upkeep on the big log (maintain_iot_events):")
    figures["upkeep"] = upkeep(args.pg, DATABASES["big"], days=args.days)
    figures["plain"] = plain_copy(args.pg, DATABASES["big"], plain_days=args.plain_days, today=today)
    up, plain = figures["upkeep"], figures["plain"]
    print(f"\n  drop one day {up['drop_ms']:.0f} ms vs DELETE one day {plain['delete_ms']:.0f} ms "
          f"(+ VACUUM {plain['vacuum_ms']:.0f} ms); create a day {up['create_ms']:.0f} ms; "
          f"trim one day by rewrite {up['trim_ms']:.0f} ms vs UPDATE {plain['update_ms']:.0f} ms (+ its VACUUM)")
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--port", type=int, default=8150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--plain-days", type=int, default=3, help="days copied into the plain table (default 3)")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--slots", type=int, default=24)
    parser.add_argument("--occupancy", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=10)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

"""
Bytes per event-log row on PostgreSQL, before and after the log was partitioned and its large
columns compressed with lz4 (docs/performance.md, "Event log: partitions, retention, size").

For two bodies, the production 4-slot full sync (contrib/messages/full.json, as the sender
sends it: compact) and a 24-slot one (bench.py's `full_sync`), it builds a database at
migration 0006 (the plain table, PostgreSQL's default pglz compression) and one at the latest
migration (partitioned by day, lz4), writes the same settled rows into each (a distinct
body per row, as a fleet sends: new readings each time; the endpoint's own answer text),
VACUUMs, and prints heap+TOAST and index bytes per row; then the same after the payload
trim of `maintain_iot_events` (a day older than IOT_EVENT_PAYLOAD_DAYS).

    .venv/bin/python bench/event_log_size.py [--pg postgres://postgres@127.0.0.1:5432] [--rows 20000]

Uses the databases bench_ev_size_before and bench_ev_size_after (dropped and created again).
"""

import argparse
import hashlib
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench  # noqa: E402

COLUMNS = (
    "received_at, message_type, station_serial, source_ip, body_sha256, body_bytes, payload, raw_body, "
    "outcome, duplicate_of_id, http_status, response, error, duration_ms, attempts, processed_at"
)


def four_slot_bodies(count: int, rng: random.Random) -> list[bytes]:
    """The production body, compact, with fresh readings and time per row."""
    message = json.loads((ROOT / "contrib" / "messages" / "full.json").read_text())
    bodies = []
    for n in range(count):
        message["timestamp"] = 1762905971 + n
        message["device"]["signal_strength"] = str(rng.randint(10, 31))
        for slot in message.get("slots", []):
            if "battery_level" in slot:
                slot["battery_level"] = rng.randint(20, 100)
        for bank in message.get("power_banks", []):
            if "battery_level" in bank:
                bank["battery_level"] = rng.randint(20, 100)
        bodies.append(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
    return bodies


def slot_bodies(count: int, slots: int, rng: random.Random) -> list[bytes]:
    return [
        json.dumps(bench.full_sync(n % 500, slots, 0.7, rng, 1762905971 + n), separators=(",", ":")).encode()
        for n in range(count)
    ]


def response_text(serial: str, slots: int) -> str:
    """The endpoint's answer to a full sync, as stored (its shape from the full-sync service)."""
    return json.dumps(
        {
            "success": True,
            "message": "Station data synced",
            "data": {
                "station_id": "0c6f6f0e-8d5e-4d0a-9a55-3f7e3d2b1c4a",
                "station_serial": serial,
                "slots_updated": slots,
                "powerbanks_updated": slots,
                "offline_returns_processed": 0,
                "offline_returns": [],
                "detached_power_banks": [],
                "applied": True,
                "timestamp": "2025-11-12T00:06:11.126000+00:00",
            },
        },
        separators=(",", ":"),
    )


def fill(connection, bodies: list[bytes], slots: int, received_at: datetime) -> None:
    with connection.cursor() as cursor, cursor.copy(f"COPY stations_iotevent ({COLUMNS}) FROM STDIN") as copy:
        for n, body in enumerate(bodies):
            message = json.loads(body)
            serial = message["device"]["serial_number"]
            at = received_at + timedelta(seconds=n * 0.1)
            copy.write_row(
                (at, "full", serial, "10.0.0.7", hashlib.sha256(body).hexdigest(), len(body), body.decode(), "",
                 "PROCESSED", None, 200, response_text(serial, slots), "", 4.2, 1, at)
            )
    connection.commit()


# The partitions, or the table itself when it is a plain one.
SIZE_SQL = """
SELECT COALESCE(SUM(pg_table_size(relid)), 0), COALESCE(SUM(pg_indexes_size(relid)), 0)
FROM (SELECT relid FROM pg_partition_tree('stations_iotevent') WHERE isleaf
      UNION SELECT oid FROM pg_class WHERE oid = 'stations_iotevent'::regclass AND relkind = 'r') leaves
"""


def measure(connection, rows: int) -> tuple[float, float]:
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE stations_iotevent")
        cursor.execute(SIZE_SQL)
        table, indexes = cursor.fetchone()
    connection.autocommit = False
    return table / rows, indexes / rows


def compression_of(connection) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(pg_column_compression(payload), 'none (stored as it is)'), COUNT(*) "
            "FROM stations_iotevent GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        )
        method = cursor.fetchone()[0]
    connection.commit()  # no lock left held for the upkeep that follows
    return method


def prepare(pg: str, database: str, migration: str | None) -> None:
    bench.recreate_database(pg, database)
    env = bench.our_env(pg, database)
    command = [bench.OUR_PYTHON, "manage.py", "migrate", "--noinput"]
    if migration:
        command += ["stations", migration]
    bench.run(command, env=env, cwd=ROOT)


def trim(pg: str, database: str, day: datetime) -> str:
    env = bench.our_env(pg, database)
    now = (day + timedelta(days=8)).isoformat()
    script = (
        "from datetime import datetime; from api.stations.ingest import event_partitions as e; "
        f"print('; '.join(e.maintain(now=datetime.fromisoformat('{now}'), payload_days=7, keep_days=90)))"
    )
    return bench.run([bench.OUR_PYTHON, "manage.py", "shell", "-c", script], env=env, cwd=ROOT).strip()


def run(args) -> dict:
    import psycopg

    rng = random.Random(16)
    cases = {
        "4-slot (contrib/messages/full.json)": (four_slot_bodies(args.rows, rng), 4),
        "24-slot (bench full_sync, 70% occupied)": (slot_bodies(args.rows, 24, rng), 24),
    }
    # Rows dated yesterday-ish, at a fixed day so the trim below finds them old enough.
    day = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    results = {}
    for name, (bodies, slots) in cases.items():
        mean_body = sum(map(len, bodies)) / len(bodies)
        figures = {}
        for label, database, migration in (
            ("before (plain table, pglz)", "bench_ev_size_before", "0006"),
            ("after (partitioned, lz4)", "bench_ev_size_after", None),
        ):
            prepare(args.pg, database, migration)
            with psycopg.connect(f"{args.pg}/{database}") as connection:
                started = time.perf_counter()
                if migration is None:  # the rows' day, as the upkeep creates it
                    bench.run(
                        [bench.OUR_PYTHON, "manage.py", "shell", "-c",
                         "from datetime import date; from django.db import connection; "
                         "from api.stations.ingest import event_partitions as e; "
                         f"e.create_partition(connection.cursor(), date.fromisoformat('{day.date()}'))"],
                        env=bench.our_env(args.pg, database), cwd=ROOT,
                    )
                fill(connection, bodies, slots, day)
                table, indexes = measure(connection, len(bodies))
                figures[label] = (table, indexes, compression_of(connection), time.perf_counter() - started)
                if migration is None:
                    report = trim(args.pg, database, day)
                    table, indexes = measure(connection, len(bodies))
                    figures["after, payload trimmed (day older than IOT_EVENT_PAYLOAD_DAYS)"] = (
                        table, indexes, report.split(";")[-1].strip(), 0.0
                    )
        results[name] = (mean_body, figures)
        print(f"\n{name}: {len(bodies)} rows, body {mean_body:.0f} bytes on average")
        print(f"  {'':62} {'table+TOAST':>12} {'indexes':>9} {'total':>7}  payload compression")
        for label, (table, indexes, compression, _seconds) in figures.items():
            print(f"  {label:62} {table:12.0f} {indexes:9.0f} {table + indexes:7.0f}  {compression}")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="server URL, no database")
    parser.add_argument("--rows", type=int, default=20000, help="rows per case (default 20000)")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()

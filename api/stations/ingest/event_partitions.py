"""
The event log's upkeep: partitions by day of receipt on PostgreSQL, and retention by what a
row is worth on every database (docs/decisions.md, "The event log is partitioned by day").

On PostgreSQL the log (`stations_iotevent`) is partitioned by range of `received_at`, one
partition per UTC day (`stations_iotevent_pYYYYMMDD`), plus a DEFAULT partition that takes
a delivery whose day has no partition yet (the upkeep never ran): it is logged and
processed all the same, and the next upkeep moves it into its day's partition.

`maintain` does the daily work and returns one line per thing it did:

- moves rows found in the DEFAULT partition into day partitions (detach the default,
  create the days, move, attach it again: one transaction);
- creates the partitions of the next `ahead` days;
- trims the payloads of days older than `payload_days`: full syncs and status messages
  that were processed (or stale, or repeats) lose their body; returns, failed, rejected
  and unfinished deliveries keep theirs. On PostgreSQL the day is rewritten once into a
  trimmed copy that replaces it, never updated row by row (an UPDATE leaves every old row
  version behind for a vacuum, and autovacuum may be off);
- drops the days older than `keep_days` whole (detach, DROP), never a DELETE.

On SQLite the table is a plain one and the same rules run as an UPDATE and a DELETE.
"""

import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from api.stations.models import IoTEvent, IoTEventOutcome

TABLE = IoTEvent._meta.db_table
DEFAULT_PARTITION = f"{TABLE}_default"
# The function the hot path's INSERT calls for a digest's first delivery (migrations 0007, 0009).
PRIMARY_FUNCTION = f"{TABLE}_primary"
_DAY_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")
# A day's payloads have been trimmed: the partition's comment says so.
TRIMMED_COMMENT = "payloads trimmed"
# Waits this long for the table's lock behind the endpoint's statements, then gives up
# (the next run does it): a maintenance must never hold up deliveries for long.
LOCK_TIMEOUT = "5s"

# Full syncs and status messages lose their body once settled (they are superseded by the
# next one); returns are money and keep theirs, as do failed, rejected and unfinished ones.
TRIMMED_TYPES = ("full", "status")
TRIMMED_OUTCOMES = (IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE, IoTEventOutcome.DUPLICATE)
_COLUMNS = [field.column for field in IoTEvent._meta.concrete_fields]


def partitioned() -> bool:
    return connection.vendor == "postgresql"


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime.combine(day, dtime.min, tzinfo=UTC)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _at(moment: datetime) -> str:
    """A UTC moment as an SQL literal (DDL takes no parameters)."""
    return f"'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00'"


def _bounds(day: date) -> str:
    return f"FROM ({_at(day_start(day))}) TO ({_at(day_start(day + timedelta(days=1)))})"


def lz4_supported(cursor) -> bool:
    """Whether the server can compress with lz4 (PostgreSQL 14 or later, built with it)."""
    if connection.pg_version < 140000:
        return False
    cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    row = cursor.fetchone()
    return bool(row) and "lz4" in (row[0] or [])


# Columns whose values can be large enough to be compressed.
COMPRESSED_COLUMNS = ("payload", "raw_body", "response", "error")


def set_compression(cursor, table: str) -> bool:
    """lz4 for the large columns of `table` where the server has it; partitions inherit it."""
    if not lz4_supported(cursor):
        return False
    for column in COMPRESSED_COLUMNS:
        cursor.execute(f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} SET COMPRESSION lz4")
    return True


# A day's rows keep the body out of the row (in the partition's TOAST table) as soon as a row
# passes this many bytes. Every delivery's row is updated once, with its outcome, and an
# UPDATE writes the whole row again: with the compressed body in the row (about 1.5 KB for a
# 24-slot full sync) it was copied into every new version, so a day's table held each body
# twice, and VACUUM, which must visit every page an update left a dead version on, read and
# rewrote all of it. Out of the row, the new version is a few hundred bytes with a pointer to
# the body, which is written once and never changes (docs/performance.md, "Eighth pass").
TOAST_TUPLE_TARGET = 128
# That update is a HOT one (no index holds a column it changes: models.IoTEvent) only if the
# new version fits on the row's own page. Rows are inserted in order, so a page is filled by
# rows still to be settled; this much of each page is left for their new versions. At 100
# (the default) one update in fifteen found its page full; at 85 none did, over 3,600 full
# syncs (docs/performance.md, "Ninth pass").
FILLFACTOR = 85
_STORAGE = f" WITH (toast_tuple_target = {TOAST_TUPLE_TARGET}, fillfactor = {FILLFACTOR})"
# Every other text column stays in the row (storage MAIN: compressed if need be, moved out
# only if the row would not fit its page). The answer and the error are written by that
# same UPDATE, and moved out each would add an insert into the TOAST table to it; the
# digest, which every delivery looks up, and the other short columns would otherwise be
# moved out too, one by one, until the row is under the target.
IN_ROW_COLUMNS = ("message_type", "station_serial", "body_sha256", "response", "error")


def set_storage(cursor, table: str, storage: str = "MAIN") -> None:
    """Only the body may leave the row (EXTENDED: as PostgreSQL's default); partitions inherit it."""
    for column in IN_ROW_COLUMNS:
        cursor.execute(f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} SET STORAGE {storage}")


# Nothing looks rows up by their body, answer or error, so the planner has no use for
# statistics on them. ANALYZE, which autovacuum runs on the day's partition as it fills,
# would otherwise read and sort a sample of those values too: about a quarter of its time on a
# day of full syncs, and that visit is the endpoint's longest stall under load
# (docs/performance.md, "Eleventh pass"). A partition created by PARTITION OF does not
# inherit a column's statistics target, so every partition is given it on creation.
UNANALYZED_COLUMNS = ("payload", "raw_body", "response", "error")


def set_statistics(cursor, table: str, target: int = 0) -> None:
    """No statistics on `UNANALYZED_COLUMNS` of `table` (-1: the server's default again)."""
    for column in UNANALYZED_COLUMNS:
        cursor.execute(f"ALTER TABLE {_q(table)} ALTER COLUMN {_q(column)} SET STATISTICS {int(target)}")


def _digest_index_sql(table: str, index: str | None = None) -> str:
    # Each day has its own unique index over its first deliveries' digests: the parent
    # cannot have one (its unique indexes must include `received_at`). The INSERT looks a
    # digest up in the indexes of the last IOT_EVENT_REPEAT_DAYS days; this one is the
    # database's own guard within a day.
    index = index or f"{table}_body_unique"
    return (
        f"CREATE UNIQUE INDEX IF NOT EXISTS {_q(index)} ON {_q(table)} (body_sha256) "
        "WHERE duplicate_of_id IS NULL"
    )


def create_default_partition(cursor) -> None:
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {_q(DEFAULT_PARTITION)} PARTITION OF {_q(TABLE)} DEFAULT{_STORAGE}"
    )
    set_statistics(cursor, DEFAULT_PARTITION)
    cursor.execute(_digest_index_sql(DEFAULT_PARTITION))


def create_partition(cursor, day: date) -> str:
    name = partition_name(day)
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {_q(name)} PARTITION OF {_q(TABLE)} FOR VALUES {_bounds(day)}{_STORAGE}"
    )
    set_statistics(cursor, name)
    cursor.execute(_digest_index_sql(name))
    return name


@dataclass(frozen=True)
class Partition:
    name: str
    day: date | None  # None: the DEFAULT partition
    trimmed: bool


def partitions(cursor) -> list[Partition]:
    """The log's partitions, by day (the DEFAULT one first)."""
    cursor.execute(
        "SELECT c.relname, COALESCE(obj_description(c.oid, 'pg_class'), '') "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    found = []
    for name, comment in cursor.fetchall():
        match = _DAY_NAME.match(name)
        day = datetime.strptime(match.group(1), "%Y%m%d").date() if match else None
        found.append(Partition(name, day, comment.startswith(TRIMMED_COMMENT)))
    return sorted(found, key=lambda p: (p.day is not None, p.day or date.min))


def _trim_condition() -> tuple[str, list]:
    types = ", ".join(["%s"] * len(TRIMMED_TYPES))
    outcomes = ", ".join(["%s"] * len(TRIMMED_OUTCOMES))
    return (
        f"(message_type IN ({types}) AND outcome IN ({outcomes}))",
        [*TRIMMED_TYPES, *(o.value for o in TRIMMED_OUTCOMES)],
    )


def _local(cursor) -> None:
    cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


def maintain(
    *,
    now: datetime | None = None,
    ahead: int = 7,
    payload_days: int | None = None,
    keep_days: int | None = None,
    trim: bool = True,
    dry_run: bool = False,
) -> list[str]:
    """The daily upkeep; one line per thing done (or that would be done, with `dry_run`)."""
    now = now or timezone.now()
    payload_days = settings.IOT_EVENT_PAYLOAD_DAYS if payload_days is None else payload_days
    keep_days = settings.IOT_EVENT_KEEP_DAYS if keep_days is None else keep_days
    if partitioned():
        return _maintain_partitions(now, ahead, payload_days, keep_days, trim, dry_run)
    return _maintain_plain(now, payload_days, keep_days, trim, dry_run)


def _timed(line: str, started: float) -> str:
    return f"{line} ({(time.perf_counter() - started) * 1000:.0f} ms)"


def _maintain_plain(now, payload_days, keep_days, trim, dry_run) -> list[str]:
    lines = []
    today = utc_day(now)
    keep_from = day_start(today - timedelta(days=keep_days))
    trim_before = day_start(today - timedelta(days=payload_days))
    events = IoTEvent.objects
    started = time.perf_counter()
    if trim:
        condition, params = _trim_condition()
        table = _q(TABLE)
        where = f"received_at < %s AND received_at >= %s AND payload IS NOT NULL AND {condition}"
        args = [trim_before, keep_from, *params]
        with connection.cursor() as cursor:
            if dry_run:
                cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", args)
                (count,) = cursor.fetchone()
                lines.append(f"would trim the payloads of {count} row(s) received before {trim_before:%Y-%m-%d}")
            else:
                cursor.execute(f"UPDATE {table} SET payload = NULL WHERE {where}", args)
                lines.append(
                    _timed(f"trimmed the payloads of {cursor.rowcount} row(s) received before {trim_before:%Y-%m-%d}", started)
                )
    started = time.perf_counter()
    expired = events.filter(received_at__lt=keep_from)
    if dry_run:
        lines.append(f"would delete {expired.count()} row(s) received before {keep_from:%Y-%m-%d}")
    else:
        deleted, _ = expired.delete()
        lines.append(_timed(f"deleted {deleted} row(s) received before {keep_from:%Y-%m-%d}", started))
    return lines


def _maintain_partitions(now, ahead, payload_days, keep_days, trim, dry_run) -> list[str]:
    lines: list[str] = []
    today = utc_day(now)
    wanted = [today + timedelta(days=n) for n in range(ahead + 1)]
    with connection.cursor() as cursor:
        existing = partitions(cursor)
        days = {p.day for p in existing if p.day}
        has_default = any(p.day is None for p in existing)
        started = time.perf_counter()
        default_rows = False
        if has_default:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {_q(DEFAULT_PARTITION)})")
            (default_rows,) = cursor.fetchone()
        if default_rows or today not in days:
            # Rows may be arriving in the DEFAULT partition: create the days with it detached.
            lines.append(_move_default(cursor, wanted, days, has_default, started, dry_run))
        else:
            missing = [day for day in wanted if day not in days]
            if dry_run:
                lines.append(f"would create {len(missing)} partition(s) ahead")
            else:
                with transaction.atomic():
                    _local(cursor)
                    for day in missing:
                        create_partition(cursor, day)
                lines.append(_timed(_created_line(missing, wanted), started))
        existing = partitions(cursor)
        keep_from = today - timedelta(days=keep_days)
        trim_before = today - timedelta(days=payload_days)
        for part in existing:
            if part.day is None:
                continue
            if part.day < keep_from:
                lines.append(_drop(cursor, part, dry_run))
            elif trim and part.day < trim_before and not part.trimmed:
                lines.append(_trim_partition(cursor, part, dry_run))
    return lines


def _created_line(created: list[date], wanted: list[date]) -> str:
    if not created:
        return f"partitions up to {wanted[-1]:%Y-%m-%d} already there, none created"
    names = ", ".join(partition_name(day) for day in created)
    return f"created {len(created)} partition(s): {names}"


def _move_default(cursor, wanted, days, has_default, started, dry_run) -> str:
    """Detach the DEFAULT partition, create the missing days (its rows' too), move its rows
    into them, attach it again; one transaction, so no delivery sees the table without it."""
    table, default = _q(TABLE), _q(DEFAULT_PARTITION)
    if dry_run:
        return "would move the rows of the default partition and create the missing days"
    with transaction.atomic():
        _local(cursor)
        moved, found = 0, []
        if has_default:
            cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {default}")
            cursor.execute(f"SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date FROM {default}")
            found = sorted(row[0] for row in cursor.fetchall())
        missing = sorted({*wanted, *found} - set(days))
        for day in missing:
            create_partition(cursor, day)
        if found:
            columns = ", ".join(_q(c) for c in _COLUMNS)
            cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {default}")
            moved = cursor.rowcount
            cursor.execute(f"TRUNCATE {default}")
        if has_default:
            cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {default} DEFAULT")
        else:
            create_default_partition(cursor)
    line = _created_line(missing, wanted)
    if found:
        line = f"moved {moved} row(s) of the default partition into their days ({', '.join(map(str, found))}); {line}"
    else:
        line = f"default partition empty; {line}"
    return _timed(line, started)


def _drop(cursor, part: Partition, dry_run: bool) -> str:
    started = time.perf_counter()
    name = _q(part.name)
    # What goes with it: the rows from the statistics, the failed and unfinished ones
    # counted. No index has `outcome` (models.IoTEvent), so this reads the day, once, on
    # the day it is dropped.
    cursor.execute(
        f"SELECT c.reltuples, pg_total_relation_size(c.oid), "
        f"(SELECT COUNT(*) FROM {name} WHERE outcome IN (%s, %s)) "
        "FROM pg_class c WHERE c.oid = to_regclass(%s)",
        [IoTEventOutcome.FAILED.value, IoTEventOutcome.RECEIVED.value, part.name],
    )
    reltuples, size, unfinished = cursor.fetchone()
    rows = f"~{int(reltuples)} row(s)" if reltuples >= 0 else "rows not counted (never analyzed)"
    what = f"{part.name} ({rows}, {size / 2**20:.1f} MiB, {unfinished} failed or unfinished)"
    if dry_run:
        return f"would drop expired partition {what}"
    with transaction.atomic():
        _local(cursor)
        cursor.execute(f"ALTER TABLE {_q(TABLE)} DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")
    return _timed(f"dropped expired partition {what}", started)


def _trim_partition(cursor, part: Partition, dry_run: bool) -> str:
    """
    Rewrite a day without the payloads it no longer needs: a trimmed copy (its rows, its
    indexes, a CHECK of its bounds so that attaching it reads nothing) is built while the
    day is only locked against writes, then swapped in: detach, attach, drop, rename.
    """
    started = time.perf_counter()
    if dry_run:
        return f"would trim the payloads of {part.name}"
    condition, params = _trim_condition()
    table, old = _q(TABLE), _q(part.name)
    new_name = f"{part.name}_trim"
    new = _q(new_name)
    lo, hi = day_start(part.day), day_start(part.day + timedelta(days=1))
    compression = " INCLUDING COMPRESSION" if connection.pg_version >= 140000 else ""
    columns = ", ".join(_q(c) for c in _COLUMNS)
    selected = ", ".join(
        f"CASE WHEN {condition} THEN NULL ELSE payload END" if c == "payload" else _q(c) for c in _COLUMNS
    )
    with transaction.atomic():
        _local(cursor)
        # Readers (the endpoint's digest lookup) go on; writers to this day wait.
        cursor.execute(f"LOCK TABLE {old} IN SHARE MODE")
        cursor.execute(
            f"CREATE TABLE {new} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            f"INCLUDING STORAGE{compression}){_STORAGE}"
        )
        set_statistics(cursor, new_name)
        cursor.execute(
            f"ALTER TABLE {new} ADD CONSTRAINT {_q(new_name + '_bounds')} "
            f"CHECK (received_at >= {_at(lo)} AND received_at < {_at(hi)})"
        )
        cursor.execute(f"INSERT INTO {new} ({columns}) SELECT {selected} FROM {old}", params)
        rows = cursor.rowcount
        cursor.execute(f"SELECT COUNT(*) FROM {new} WHERE payload IS NOT NULL")
        (kept,) = cursor.fetchone()
        _copy_indexes(cursor, new_name)
        cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {old}")
        cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {new} FOR VALUES {_bounds(part.day)}")
        cursor.execute(f"DROP TABLE {old}")
        cursor.execute(f"ALTER TABLE {new} RENAME TO {old}")
        cursor.execute(f"ALTER INDEX {_q(new_name + '_body_unique')} RENAME TO {_q(part.name + '_body_unique')}")
        cursor.execute(f"ALTER TABLE {old} DROP CONSTRAINT {_q(new_name + '_bounds')}")
        cursor.execute(f"COMMENT ON TABLE {old} IS '{TRIMMED_COMMENT} {timezone.now():%Y-%m-%dT%H:%M:%SZ}'")
    return _timed(f"trimmed {part.name}: {rows} row(s), {kept} keep their payload", started)


def _copy_indexes(cursor, new_name: str) -> None:
    """The parent's indexes on a table about to be attached, so attaching builds none."""
    new = _q(new_name)
    cursor.execute(
        "SELECT i.indisprimary, pg_get_indexdef(i.indexrelid), c.relname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s)",
        [TABLE],
    )
    for n, (primary, definition, _index) in enumerate(cursor.fetchall()):
        if primary:
            cursor.execute(f"ALTER TABLE {new} ADD PRIMARY KEY (id, received_at)")
            continue
        # "CREATE [UNIQUE] INDEX name ON ONLY public.table USING ..." for the new table.
        head, using = definition.split(" USING ", 1)
        unique = "UNIQUE " if head.startswith("CREATE UNIQUE") else ""
        cursor.execute(f"CREATE {unique}INDEX {_q(f'{new_name}_{n}_idx')} ON {new} USING {using}")
    cursor.execute(_digest_index_sql(new_name))

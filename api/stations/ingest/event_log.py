"""
The event log: one row per delivery that passed the signature check, and its outcome.

A delivery's row is written first, in autocommit, so that it survives whatever happens to
the processing after it. The first delivery of a body owns the body's digest (the body's
"primary" row), carries the body's outcome and keeps the body; later deliveries of the
same bytes (the sender retries the identical body with a new signature; anyone can replay
it) are rows of their own, `duplicate_of` the primary, with the body's size but no copy of
it: a 1 MiB body replayed a thousand times is stored once.

Every outcome is written by `settle`, and `settle` never overwrites a settled row
(PROCESSED or STALE): a body applied once is never reported as failed later, so it is
never applied again.
"""

import hashlib
import json
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.utils import timezone

from api.stations.ingest import event_partitions
from api.stations.ingest.body import Body
from api.stations.models import IoTEvent, IoTEventOutcome
from main_app import sql
from main_app.exceptions import ApiError

# Outcomes after which a body is never applied again.
SETTLED = (IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE)
# An undecodable body is kept as text, up to this many bytes, for operators to look at.
RAW_BODY_KEPT = 64 * 1024


@dataclass(frozen=True, slots=True)
class LoggedDelivery:
    """A delivery's row, and the row of the body's first delivery (itself, the first time)."""

    event_id: int
    primary_id: int

    @property
    def is_repeat(self) -> bool:
        return self.event_id != self.primary_id


_EVENT_TABLE = sql.quote(IoTEvent._meta.db_table)
_PAYLOAD = IoTEvent._meta.get_field("payload")
_RAW_BODY = IoTEvent._meta.get_field("raw_body")
_DUPLICATE_OF = IoTEvent._meta.get_field("duplicate_of")
_RECEIVED_AT = IoTEvent._meta.get_field("received_at")
_SOURCE_IP = IoTEvent._meta.get_field("source_ip")
# What a delivery's row is given of its own, in this order (`record`)...
_OWN_FIELDS = [
    IoTEvent._meta.get_field(name)
    for name in ("received_at", "message_type", "station_serial", "source_ip", "body_sha256", "body_bytes")
]
# ...and every other column but the key, the link to the first delivery and the body (which
# depend on whether the digest has a first delivery already): their defaults, RECEIVED and
# no answer yet, written into the statement rather than sent with every message.
_DEFAULT_FIELDS = [
    field
    for field in IoTEvent._meta.concrete_fields
    if not field.primary_key and field not in (*_OWN_FIELDS, _DUPLICATE_OF, _PAYLOAD, _RAW_BODY)
]


class EventId(int):
    """An event's id that knows its row's `received_at`, the log's partition key on
    PostgreSQL, and the partition the row went into: a statement on the row by id alone
    would look in every day's partition, and even by id and day, a prepared statement on the
    partitioned table locks every day's partition before it prunes them (PostgreSQL 15)."""

    received_at: Any = None
    partition: str | None = None

    def __new__(cls, value: int, received_at: Any = None, partition: str | None = None):
        event_id = super().__new__(cls, value)
        event_id.received_at = received_at
        event_id.partition = partition
        return event_id


def _insert_sql(*, asynchronous: bool) -> str:
    """
    One statement for every delivery, first or repeat: it looks the digest's first delivery
    up and inserts this delivery's row as the first (with the body) or as a repeat of it
    (without). On PostgreSQL the lookup is `stations_iotevent_primary` (migrations 0007 and
    0009): across the partitions of the last `IOT_EVENT_REPEAT_DAYS` days, under an advisory
    lock on the digest, with a snapshot of its own, so two deliveries of one body at the
    same moment (on either side of midnight too) make one first delivery and one repeat.
    On SQLite a write statement holds the database's write lock, so the lookup and the
    insert cannot interleave with another.
    Each day's (PostgreSQL) or the table's (SQLite) unique index on first deliveries'
    digests stays as the database's guard.

    `asynchronous` (PostgreSQL, in autocommit) makes the statement's own commit asynchronous:
    see `record`.
    """
    postgres = connection.vendor == "postgresql"

    def param(field) -> str:
        # An INSERT ... SELECT gives no column type to a bare parameter on PostgreSQL.
        return f"%s::{field.db_type(connection)}" if postgres else "%s"

    columns = [*_OWN_FIELDS, *_DEFAULT_FIELDS, _DUPLICATE_OF, _PAYLOAD, _RAW_BODY]
    lookup = (
        f"{event_partitions.PRIMARY_FUNCTION}(%s, %s::timestamptz)"
        if postgres
        else f"(SELECT id FROM {_EVENT_TABLE} WHERE body_sha256 = %s AND duplicate_of_id IS NULL)"
    )
    values = [param(field) for field in _OWN_FIELDS]
    values += [_literal(field.get_default()) for field in _DEFAULT_FIELDS]
    values += [
        "f.prior",
        f"CASE WHEN f.prior IS NULL THEN {param(_PAYLOAD)} END",
        f"CASE WHEN f.prior IS NULL THEN {param(_RAW_BODY)} ELSE '' END",
    ]
    return (
        f"INSERT INTO {_EVENT_TABLE} ({', '.join(sql.quote(field.column) for field in columns)}) "
        f"SELECT {', '.join(values)} FROM (SELECT {lookup} AS prior{_ASYNCHRONOUS_COMMIT if asynchronous else ''}) f "
        # Where the row went (PostgreSQL: the day's partition, or the DEFAULT one).
        f"RETURNING id, duplicate_of_id, {'tableoid::regclass::text' if postgres else 'NULL'}"
    )


# For this statement's transaction only (`is_local`): in autocommit, the INSERT's own.
_ASYNCHRONOUS_COMMIT = ", set_config('synchronous_commit', 'off', true)"
_INSERT_SQL: dict[tuple[str, bool], str] = {}


def _literal(value: Any) -> str:
    """One of our own constants (text, a number, NULL) as an SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, str):  # IoTEventOutcome members too
        return "'" + str(value).replace("'", "''") + "'"
    if type(value) in (int, float):
        return repr(value)
    raise TypeError(f"No SQL literal for {value!r}")


def record(body: Body, *, source_ip: str | None) -> LoggedDelivery:
    """
    Log a delivery. Runs in autocommit: never inside the processing transaction.

    On PostgreSQL the row's commit is asynchronous (`synchronous_commit` off for that one
    transaction): the row is committed and seen at once, and made durable by the next
    synchronous commit, which every delivery makes before it is answered (the processing
    transaction's, or the UPDATE that settles a refusal, a repeat or a failure), as WAL is
    flushed in order. A synchronous commit waits for the WAL to reach the disk, once per
    message is enough, and the row can be lost only if PostgreSQL itself stops in the
    moment between, when the sender has had no answer and delivers the body again
    (docs/decisions.md; docs/performance.md has what it saves).
    """
    received_at = timezone.now()
    body_sha256 = hashlib.sha256(body.raw).hexdigest()
    # `_OWN_FIELDS`' values. The text and integers go to the driver as they are; the time
    # and the address are converted as their fields convert them (SQLite takes text).
    params = [
        sql.db_value(_RECEIVED_AT, received_at),
        body.message_type,
        body.station_serial,
        sql.db_value(_SOURCE_IP, source_ip),
        body_sha256,
        len(body.raw),
    ]
    # A decoded body is stored as the text it came in: it is valid JSON that the database
    # can store as it is (`decode` refused what it cannot), and encoding the decoded object
    # again would cost more than anything else here. Undecodable bytes and NUL (PostgreSQL
    # text cannot hold it) are kept as text, with U+FFFD.
    payload = body.raw.decode("utf-8") if body.error is None else None
    raw_body = (
        body.raw[:RAW_BODY_KEPT].decode("utf-8", "replace").replace("\x00", "\ufffd")
        if body.error
        else ""
    )
    db = sql.db()
    postgres = db.vendor == "postgresql"
    # Inside a transaction (a test's) the setting would last until that transaction's end.
    asynchronous = postgres and not db.in_atomic_block
    key = (db.vendor, asynchronous)
    statement = _INSERT_SQL.get(key) or _INSERT_SQL.setdefault(key, _insert_sql(asynchronous=asynchronous))
    lookup = [body_sha256]
    if postgres:
        # A repeat of a first delivery received in the last IOT_EVENT_REPEAT_DAYS days. (SQLite's
        # one unique index holds every first delivery kept, so its lookup is not bounded.)
        lookup.append(sql.db_value(_RECEIVED_AT, received_at - timedelta(days=settings.IOT_EVENT_REPEAT_DAYS)))
    ((event_id, primary_id, partition),) = sql.fetch(statement, [*params, payload, raw_body, *lookup])
    event_id = EventId(event_id, received_at, partition)
    if primary_id is None:
        return LoggedDelivery(event_id=event_id, primary_id=event_id)
    return LoggedDelivery(event_id=event_id, primary_id=primary_id)


_ANSWER_SQL = "SELECT outcome, http_status, response FROM {table} WHERE id = %s"
# Where the row's day is known, the statement reads that day's partition only.
_ON_ITS_DAY = " AND received_at = %s"


def _rows(event_id: int) -> list[tuple[str, str, list]]:
    """
    Where to find one row, best first, as (table, WHERE clause's tail, parameters): the
    partition it went into, if known; then the log by id and day, if the day is known (the
    upkeep may have moved the row out of the DEFAULT partition meanwhile); else by id alone.
    """
    found = []
    partition = getattr(event_id, "partition", None)
    if partition:
        found.append((partition, "", [int(event_id)]))
    received_at = getattr(event_id, "received_at", None)
    if received_at is None:
        found.append((_EVENT_TABLE, "", [int(event_id)]))
    else:
        found.append((_EVENT_TABLE, _ON_ITS_DAY, [int(event_id), sql.db_value(_RECEIVED_AT, received_at)]))
    return found


def settled_answer(event_id: int) -> tuple[int, dict] | None:
    """The answer a settled row gave, as (HTTP status, body); None if it is not settled."""
    for table, tail, row in _rows(event_id):
        rows = sql.fetch(_ANSWER_SQL.format(table=table) + tail, row)
        if rows:
            break
    ((outcome, http_status, response),) = rows
    if outcome not in SETTLED:
        return None
    return http_status or 200, json.loads(response) if response else None


# The guard is the WHERE clause: a settled row is never written again. Inside the
# processing transaction this takes the event row's lock, after every other lock of the
# message (docs/design.md, lock order). Without an error of its own, a row keeps the
# traceback of an earlier failed attempt (why `attempts` is more than 1) but not the text
# of an earlier refusal, which was about one delivery (an expired token), not the body.
# `failed_at` is set by the first failure and otherwise left as it is (COALESCE with NULL):
# it is indexed, and unchanged it keeps this a HOT update (no new index entries).
_SETTLE_SQL = (
    "UPDATE {table} SET outcome = %s, http_status = %s, response = %s, "
    f"error = COALESCE(%s, CASE WHEN outcome = {_literal(IoTEventOutcome.REJECTED)} THEN '' ELSE error END), "
    "duration_ms = %s, processed_at = %s, attempts = attempts + %s, failed_at = COALESCE(failed_at, %s) "
    f"WHERE outcome NOT IN ({', '.join(map(_literal, SETTLED))}) AND id = %s"
)
_PROCESSED_AT = IoTEvent._meta.get_field("processed_at")
_FAILED_AT = IoTEvent._meta.get_field("failed_at")


def settle(
    event_id: int,
    *,
    outcome: IoTEventOutcome,
    http_status: int,
    response: Any,
    duration_ms: float,
    error: str | None = None,
    attempted: bool = False,
) -> bool:
    """
    Write a row's outcome and answer, unless the row is already settled; returns whether
    it wrote. `error` is what an operator reads about a refusal or failure; `attempted`
    counts one more processing attempt of the body.
    """
    now = timezone.now()
    failed = outcome == IoTEventOutcome.FAILED or http_status >= 500
    values = [
        outcome.value,
        http_status,
        as_text(response),
        error,
        duration_ms,
        sql.db_value(_PROCESSED_AT, now if outcome in SETTLED else None),
        1 if attempted else 0,
        sql.db_value(_FAILED_AT, now if failed else None),
    ]
    # Nothing written where the row went: settled already, or (rarely) moved since by the
    # upkeep; the next place tells which.
    for table, tail, row in _rows(event_id):
        if sql.fetch(f"{_SETTLE_SQL.format(table=table)}{tail} RETURNING id", [*values, *row]):
            return True
    return False


def as_text(body: Any) -> str:
    """An answer as the JSON text stored and replayed byte for byte."""
    if body is None:
        return ""
    try:
        return orjson.dumps(body, default=str).decode("utf-8")
    except orjson.JSONEncodeError:  # integers beyond 64 bits, quoted back from a body
        return json.dumps(body, ensure_ascii=False, default=str)


def operator_error(exc: BaseException) -> str:
    """What an operator reads in the row's `error`: the code and fields, or the traceback."""
    if isinstance(exc, ApiError):
        detail = f"{exc.code}: {exc.message}"
        if exc.errors:
            detail += "\n" + json.dumps(exc.errors, ensure_ascii=False, indent=1)
        return detail
    return "".join(traceback.format_exception(exc))[-8000:]

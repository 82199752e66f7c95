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
from typing import Any

import orjson
from django.utils import timezone

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
_INSERT_FIELDS = [field for field in IoTEvent._meta.concrete_fields if not field.primary_key]
_PAYLOAD = IoTEvent._meta.get_field("payload")
_RAW_BODY = IoTEvent._meta.get_field("raw_body")
_DUPLICATE_OF = IoTEvent._meta.get_field("duplicate_of")
# The first delivery of a body is inserted unless the body's digest already has one; the
# conflict target is the partial unique index `iot_event_body_unique`.
_INSERT_SQL = (
    f"INSERT INTO {_EVENT_TABLE} ({', '.join(sql.quote(field.column) for field in _INSERT_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(_INSERT_FIELDS))})"
)
_INSERT_FIRST_SQL = (
    f"{_INSERT_SQL} ON CONFLICT (body_sha256) WHERE duplicate_of_id IS NULL DO NOTHING RETURNING id"
)
_INSERT_REPEAT_SQL = f"{_INSERT_SQL} RETURNING id"
_PRIMARY_SQL = f"SELECT id FROM {_EVENT_TABLE} WHERE body_sha256 = %s AND duplicate_of_id IS NULL"


def record(body: Body, *, source_ip: str | None) -> LoggedDelivery:
    """Log a delivery. Runs in autocommit: never inside the processing transaction."""
    event = IoTEvent(
        received_at=timezone.now(),
        message_type=body.message_type,
        station_serial=body.station_serial,
        source_ip=source_ip,
        body_sha256=hashlib.sha256(body.raw).hexdigest(),
        body_bytes=len(body.raw),
        payload=None,
        # Undecodable bytes and NUL (PostgreSQL text cannot hold it) become U+FFFD.
        raw_body=(
            body.raw[:RAW_BODY_KEPT].decode("utf-8", "replace").replace("\x00", "\ufffd")
            if body.error
            else ""
        ),
    )
    params = [_column_value(field, event, body) for field in _INSERT_FIELDS]
    rows = sql.fetch(_INSERT_FIRST_SQL, params)
    if rows:
        return LoggedDelivery(event_id=rows[0][0], primary_id=rows[0][0])
    # Seen before: this delivery is a row of its own pointing at the first one, which
    # has the body.
    ((primary_id,),) = sql.fetch(_PRIMARY_SQL, [event.body_sha256])
    params[_INSERT_FIELDS.index(_DUPLICATE_OF)] = primary_id
    params[_INSERT_FIELDS.index(_PAYLOAD)] = None
    params[_INSERT_FIELDS.index(_RAW_BODY)] = ""
    ((event_id,),) = sql.fetch(_INSERT_REPEAT_SQL, params)
    return LoggedDelivery(event_id=event_id, primary_id=primary_id)


def _column_value(field, event: IoTEvent, body: Body) -> Any:
    if field is _PAYLOAD:
        # A decoded body is stored as the text it came in: it is valid JSON that the
        # database can store as it is (`decode` refused what it cannot), and encoding the
        # decoded object again would cost more than anything else here.
        return body.raw.decode("utf-8") if body.error is None else None
    return sql.db_value(field, getattr(event, field.attname))


_ANSWER_SQL = f"SELECT outcome, http_status, response FROM {_EVENT_TABLE} WHERE id = %s"


def settled_answer(event_id: int) -> tuple[int, dict] | None:
    """The answer a settled row gave, as (HTTP status, body); None if it is not settled."""
    ((outcome, http_status, response),) = sql.fetch(_ANSWER_SQL, [event_id])
    if outcome not in SETTLED:
        return None
    return http_status or 200, json.loads(response) if response else None


# The guard is the WHERE clause: a settled row is never written again. Inside the
# processing transaction this takes the event row's lock, after every other lock of the
# message (docs/design.md, lock order). Without an error of its own, a row keeps the
# traceback of an earlier failed attempt (why `attempts` is more than 1) but not the text
# of an earlier refusal, which was about one delivery (an expired token), not the body.
_SETTLE_SQL = (
    f"UPDATE {_EVENT_TABLE} SET outcome = %s, http_status = %s, response = %s, "
    "error = COALESCE(%s, CASE WHEN outcome = %s THEN '' ELSE error END), "
    "duration_ms = %s, processed_at = %s, attempts = attempts + %s "
    "WHERE id = %s AND outcome NOT IN (%s, %s) RETURNING id"
)
_PROCESSED_AT = IoTEvent._meta.get_field("processed_at")


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
    rows = sql.fetch(
        _SETTLE_SQL,
        [
            outcome.value,
            http_status,
            as_text(response),
            error,
            IoTEventOutcome.REJECTED.value,
            duration_ms,
            sql.db_value(_PROCESSED_AT, timezone.now() if outcome in SETTLED else None),
            1 if attempted else 0,
            event_id,
            *(settled.value for settled in SETTLED),
        ],
    )
    return bool(rows)


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

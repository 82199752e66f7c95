"""
The event log and idempotency of the station data endpoint (DESIGN rules 1 and 2).

Every delivery that passed the signature check gets a row, written first and outside the
processing transaction so that it survives a rollback. The first delivery of a body owns
the body's digest (the "primary" row) and carries the body's outcome; later deliveries of
the same bytes (the sender retries the identical body with a new signature) are rows of
their own, `duplicate_of` the primary.

Concurrent identical bodies are applied once: both lock their station, so they run one
after the other, and only the first may write the body's outcome; the second rolls back
and answers the original response. A body whose processing failed (5xx), or never
finished, is processed again.
"""

import hashlib
import json
import logging
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from api.stations.models import IoTEvent, IoTEventOutcome
from api.stations.services.schemas import parse_message
from api.stations.services.station_sync_service import Outcome, StationSyncService
from main_app import sql
from main_app.exceptions import ApiError, InvalidJson

logger = logging.getLogger(__name__)

# Outcomes after which a body is never applied again.
SETTLED = (IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE)
MAX_ATTEMPTS = 3
RAW_BODY_KEPT = 64 * 1024


@dataclass
class Delivery:
    """One request to the endpoint, from receipt to answer."""

    event: IoTEvent
    data: Any = None
    decode_error: str | None = None
    started: float = field(default_factory=time.perf_counter)
    # Set once the answer is in the database, so finishing needs no further write.
    recorded: bool = False

    @property
    def primary_id(self) -> int:
        return self.event.duplicate_of_id or self.event.pk


# Escapes that JSON allows but text columns do not store: NUL, and surrogate halves.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


# Real messages nest 4 deep. Far deeper bodies can still be decoded, then exhaust Python's
# recursion limit when the log row's JSON is encoded: refuse them up front instead.
MAX_NESTING = 32


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (iterative, no recursion)."""
    level = [data] if isinstance(data, (dict, list)) else []
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # Python reads 1e999 as infinity, which neither jsonb nor SQLite's JSON check stores.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _decode(body: bytes) -> tuple[Any, str | None]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None, "The body is not valid UTF-8."
    if "\x00" in text:
        return None, "The body contains a NUL character."
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None, "The body is not valid JSON."
    if _nested_deeper_than(data, MAX_NESTING):
        return None, "The body is nested too deeply."
    if _UNSTORABLE_ESCAPE.search(body):
        # Rare: only pay for the full check when such an escape is present at all.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "The body contains an unpaired surrogate escape."
        if "\\u0000" in text.replace("\\\\", ""):
            return None, "The body contains a NUL character."
    return data, None


def _describe(data: Any) -> tuple[str, str]:
    """Message type and station serial for the log, best effort and length-capped."""
    if not isinstance(data, dict):
        return "", ""
    message_type = data.get("type")
    device = data.get("device")
    serial = device.get("serial_number") if isinstance(device, dict) else None
    return (
        message_type[:16] if isinstance(message_type, str) else "",
        serial[:64] if isinstance(serial, str) else "",
    )


# The first delivery of a body is inserted unless the body's digest already has one; the
# conflict target is the partial unique index `iot_event_body_unique`.
_INSERT_FIELDS = [field for field in IoTEvent._meta.concrete_fields if not field.primary_key]
_INSERT_FIRST_SQL = (
    f"INSERT INTO {sql.quote(IoTEvent._meta.db_table)} "
    f"({', '.join(sql.quote(field.column) for field in _INSERT_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(_INSERT_FIELDS))}) "
    "ON CONFLICT (body_sha256) WHERE duplicate_of_id IS NULL DO NOTHING RETURNING id"
)


_PAYLOAD = IoTEvent._meta.get_field("payload")


def _insert_first_delivery(event: IoTEvent, body: bytes) -> bool:
    """Insert `event` if it is the first delivery of its body; returns whether it was."""
    params = [
        # A decoded body is stored as the text it came in: it is valid JSON that the database
        # can store as it is (`_decode` refused what it cannot), and encoding the decoded
        # object again would cost more than anything else here.
        body.decode("utf-8")
        if field is _PAYLOAD and event.payload is not None
        else sql.db_value(field, getattr(event, field.attname))
        for field in _INSERT_FIELDS
    ]
    rows = sql.fetch(_INSERT_FIRST_SQL, params)
    if not rows:
        return False
    event.pk = rows[0][0]
    event._state.adding = False
    event._state.db = connection.alias
    return True


def receive(*, body: bytes, source_ip: str | None) -> Delivery:
    """Record a delivery. Must not run inside the processing transaction."""
    data, decode_error = _decode(body)
    message_type, serial = _describe(data)
    event = IoTEvent(
        received_at=timezone.now(),
        message_type=message_type,
        station_serial=serial,
        source_ip=source_ip,
        body_sha256=hashlib.sha256(body).hexdigest(),
        payload=data if decode_error is None else None,
        # Undecodable bytes and NUL (PostgreSQL text cannot hold it) become U+FFFD.
        raw_body=(
            body[:RAW_BODY_KEPT].decode("utf-8", "replace").replace("\x00", "\ufffd") if decode_error else ""
        ),
    )
    if not _insert_first_delivery(event, body):
        # Seen before: this delivery is a row of its own pointing at the first one.
        event.duplicate_of_id = (
            IoTEvent.objects.filter(body_sha256=event.body_sha256, duplicate_of__isnull=True)
            .values_list("pk", flat=True)
            .get()
        )
        event.save(force_insert=True)
    return Delivery(event=event, data=data, decode_error=decode_error)


def _is_retryable(exc: Exception) -> bool:
    """Deadlocks and serialization failures: PostgreSQL rolled back one side, try again."""
    if isinstance(exc, IntegrityError):
        return True
    code = getattr(getattr(exc, "__cause__", None), "sqlstate", None)
    return isinstance(exc, OperationalError) and code in ("40P01", "40001")


def _envelope(message: str, data: dict) -> dict:
    return {"success": True, "message": message, "data": data}


def process(delivery: Delivery, *, service: StationSyncService | None = None) -> tuple[int, dict]:
    """
    Validate and apply a delivery; return (HTTP status, response body).

    Raises `ApiError` for a body that is not a valid message; any other exception means
    processing failed and the body may be processed again.
    """
    if delivery.decode_error:
        raise InvalidJson(delivery.decode_error)
    if not isinstance(delivery.data, dict):
        raise InvalidJson("The body must be a JSON object.")
    message = parse_message(delivery.data)
    service = service or StationSyncService()

    for attempt in range(1, MAX_ATTEMPTS + 1):
        if delivery.event.duplicate_of_id is not None:
            # A repeat of a known body: answer a settled one as the first time, change nothing.
            settled = _settled_answer(delivery.primary_id)
            if settled is not None:
                return settled
        try:
            with transaction.atomic():
                return _apply_once(delivery, message, service)
        except _SettledMeanwhile:
            # Another delivery of the same body was applied while this one was being
            # processed; this one's changes were rolled back. Answer as that one did.
            delivery.recorded = delivery.primary_id == delivery.event.pk
            settled = _settled_answer(delivery.primary_id)
            if settled is not None:
                return settled
        except (IntegrityError, OperationalError) as exc:
            if attempt == MAX_ATTEMPTS or not _is_retryable(exc):
                raise
            logger.warning(
                "Event %s: %s on attempt %d, retrying",
                delivery.event.pk,
                type(exc).__name__,
                attempt,
            )
    raise AssertionError("unreachable")  # pragma: no cover


class _SettledMeanwhile(Exception):
    """Rolls back a delivery whose body another delivery applied first."""


_EVENT_TABLE = sql.quote(IoTEvent._meta.db_table)
_ANSWER_SQL = f"SELECT outcome, http_status, response FROM {_EVENT_TABLE} WHERE id = %s"
# Guarded: written only if no other delivery of the body settled it first. The row lock
# this takes comes after the station's, in the message's last write (an applied full
# sync's slots-and-banks statement, or a statement of its own after the other messages),
# and no other writer holds event rows while it waits for a station.
# `error` keeps the text of an earlier failed attempt, for operators.
_PROCESSED_SQL = (
    f"UPDATE {_EVENT_TABLE} SET outcome = %s, http_status = %s, response = %s, processed_at = %s, "
    "attempts = attempts + 1, duration_ms = %s WHERE id = %s AND outcome NOT IN (%s, %s) RETURNING id"
)
_PROCESSED_AT = IoTEvent._meta.get_field("processed_at")


def _settled_answer(primary_id: int) -> tuple[int, dict] | None:
    ((outcome, http_status, response),) = sql.fetch(_ANSWER_SQL, [primary_id])
    if outcome not in SETTLED:
        return None
    return http_status or 200, json.loads(response) if response else None


def _apply_once(delivery: Delivery, message, service: StationSyncService) -> tuple[int, dict]:
    """
    Apply the message and record the answer on the body's primary row, in one transaction.

    No lock is taken on the event row up front (that would be a round trip per message):
    identical bodies in flight at once both lock their station, so they run one after the
    other, and the guarded outcome write lets only the first one commit. The second rolls
    back and answers what the first did (`_SettledMeanwhile`). An applied full sync sends
    the outcome write with its own last statement; other messages are followed by it.
    """

    def record(outcome: Outcome) -> tuple[str, list]:
        body = _envelope(outcome.message, outcome.data)
        return _PROCESSED_SQL, [
            (IoTEventOutcome.PROCESSED if outcome.applied else IoTEventOutcome.STALE).value,
            200,
            _as_text(body),
            sql.db_value(_PROCESSED_AT, timezone.now()),
            _elapsed_ms(delivery),
            delivery.primary_id,
            *(settled.value for settled in SETTLED),
        ]

    outcome = service.process(message, record=record)
    written = outcome.recorded if outcome.recorded is not None else bool(sql.fetch(*record(outcome)))
    if not written:
        raise _SettledMeanwhile
    body = _envelope(outcome.message, outcome.data)
    # The primary row of this delivery now holds the answer: nothing left to write.
    delivery.recorded = delivery.primary_id == delivery.event.pk
    return 200, body


def _as_text(body: Any) -> str:
    if body is None:
        return ""
    try:
        return orjson.dumps(body, default=str).decode("utf-8")
    except orjson.JSONEncodeError:  # integers beyond 64 bits, quoted back from a body
        return json.dumps(body, ensure_ascii=False, default=str)


def _elapsed_ms(delivery: Delivery) -> float:
    return round((time.perf_counter() - delivery.started) * 1000, 3)


def finish(
    delivery: Delivery,
    *,
    http_status: int,
    response: Any,
    exc: BaseException | None = None,
) -> None:
    """Write the answer to the delivery's row (and a failure to the body's primary row)."""
    if delivery.recorded:
        return
    event = delivery.event
    fields: dict[str, Any] = {
        "http_status": http_status,
        "response": _as_text(response),
        "duration_ms": _elapsed_ms(delivery),
    }
    if exc is not None:
        fields["error"] = _operator_error(exc)
    if event.duplicate_of_id:
        fields["outcome"] = IoTEventOutcome.DUPLICATE
    elif http_status >= 500:
        fields["outcome"] = IoTEventOutcome.FAILED
        fields["attempts"] = F("attempts") + 1
    elif http_status >= 400:
        fields["outcome"] = IoTEventOutcome.REJECTED
    try:
        IoTEvent.objects.filter(pk=event.pk).update(**fields)
        if event.duplicate_of_id and http_status >= 500 and exc is not None:
            mark_failed(event.duplicate_of_id, exc)
    except Exception:  # the database may be the reason we are failing
        logger.exception("Could not record the answer of event %s", event.pk)


def _operator_error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        detail = f"{exc.code}: {exc.message}"
        if exc.errors:
            detail += "\n" + json.dumps(exc.errors, ensure_ascii=False, indent=1)
        return detail
    return "".join(traceback.format_exception(exc))[-8000:]


def mark_failed(event_id: int, exc: BaseException) -> None:
    """Record on the body's primary row that processing failed (outside any transaction)."""
    try:
        IoTEvent.objects.filter(pk=event_id).exclude(outcome__in=SETTLED).update(
            outcome=IoTEventOutcome.FAILED,
            error=_operator_error(exc),
            attempts=F("attempts") + 1,
        )
    except Exception:
        logger.exception("Could not mark event %s as failed", event_id)


@dataclass
class ReprocessReport:
    event_id: int
    outcome: str
    http_status: int
    message: str


def reprocess(event: IoTEvent, *, service: StationSyncService | None = None) -> ReprocessReport:
    """
    Run a logged body through the same processing as the endpoint (for operators).

    A body already processed is reported and left alone, as a duplicate delivery would be.
    """
    primary = event.duplicate_of or event
    if primary.outcome in SETTLED:
        return ReprocessReport(
            primary.pk, primary.outcome, primary.http_status or 200, "already processed; not applied again"
        )
    delivery = Delivery(event=primary, data=primary.payload)
    if primary.payload is None:
        delivery.decode_error = "The logged body was not JSON."
    try:
        status, response = process(delivery, service=service)
    except ApiError as exc:
        finish(delivery, http_status=exc.status_code, response=exc.payload(), exc=exc)
        return ReprocessReport(primary.pk, IoTEventOutcome.REJECTED, exc.status_code, exc.message)
    except Exception as exc:
        mark_failed(primary.pk, exc)
        return ReprocessReport(primary.pk, IoTEventOutcome.FAILED, 500, type(exc).__name__)
    primary.refresh_from_db(fields=["outcome"])
    return ReprocessReport(primary.pk, primary.outcome, status, response.get("message", ""))

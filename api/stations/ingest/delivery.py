"""
One delivery to the station data endpoint, from the signed bytes to the answer.

    1. decode the body (`body.decode`) and log the delivery (`event_log.record`), in
       autocommit, so the row survives whatever follows
    2. validate the message (`schemas.parse_message`); a bad body is answered 400, changes
       nothing and is recorded REJECTED
    3. a repeat of a body already settled is answered as the first time; nothing is applied
    4. apply it and settle the body's row in one transaction (`_apply`); a deadlock or a
       unique-key race rolls back and runs again
    5. after the transaction, settle what is left: the delivery's own row when it is a
       repeat, and the body's row when processing failed (FAILED, to be processed again)

Each message type is applied by the one module that writes it: `full_sync`, `returns`
and `status` under `api/stations/services/`.
"""

import itertools
import logging
import time
from dataclasses import dataclass, field

from django.db import IntegrityError, OperationalError, transaction

from api.stations.ingest import event_log
from api.stations.ingest.body import Body, decode
from api.stations.ingest.event_log import SETTLED, LoggedDelivery
from api.stations.models import IoTEvent, IoTEventOutcome
from api.stations.services.full_sync import FullSyncResult, apply_full_sync
from api.stations.services.returns import ReturnResult, apply_return
from api.stations.services.schemas import FullSyncMessage, ReturnMessage, StatusMessage, parse_message
from api.stations.services.status import StatusResult, apply_status
from main_app import metrics, request_context
from main_app.exceptions import (
    ApiError,
    InvalidJson,
    ServiceUnavailable,
    is_database_unavailable,
    to_api_error,
)

logger = logging.getLogger(__name__)

Message = FullSyncMessage | ReturnMessage | StatusMessage
Result = FullSyncResult | ReturnResult | StatusResult


@dataclass(frozen=True)
class Answer:
    """What the endpoint answers: HTTP status, the envelope, and headers (Retry-After)."""

    status: int
    body: dict
    headers: dict = field(default_factory=dict)
    # The delivery's own row's outcome (DUPLICATE for a repeat, whatever the body's is).
    outcome: IoTEventOutcome | None = None


def deliver(*, body: bytes, source_ip: str | None) -> Answer:
    """Log, validate, apply and settle one delivery. Must not run inside a transaction."""
    started = time.perf_counter()
    decoded = decode(body)
    logged = _record(decoded, source_ip=source_ip, started=started)
    answer = _run(logged, decoded, started=started)
    _account(decoded, logged.event_id, answer.outcome, answer.status, (answer.body or {}).get("error"), started)
    return answer


def refuse(*, body: bytes, source_ip: str | None, error: ApiError) -> None:
    """
    Log a delivery refused before its message was looked at (no token, not staff): the
    sender got an answer, so the log has it too. Not a failure: the body is applied when
    it is delivered again with a valid token.
    """
    started = time.perf_counter()
    decoded = decode(body)
    logged = _record(decoded, source_ip=source_ip, started=started)
    _settle_refused(logged, error, started=started)
    _account(decoded, logged.event_id, _refused_outcome(logged), error.status_code, error.code, started)


def apply_message(message: Message) -> Result:
    """Apply a validated message. The caller provides the transaction."""
    if isinstance(message, FullSyncMessage):
        return apply_full_sync(message)
    if isinstance(message, ReturnMessage):
        return apply_return(message)
    if isinstance(message, StatusMessage):
        return apply_status(message)
    raise TypeError(f"Not a message: {type(message).__name__}")


def envelope(result: Result) -> dict:
    return {"success": True, "message": result.summary, "data": result.as_response()}


def _run(logged: LoggedDelivery, body: Body, *, started: float) -> Answer:
    try:
        message = _validate(body)
        status, answer = _apply(logged, message, started=started)
    except ApiError as error:
        _settle_refused(logged, error, started=started)
        return Answer(error.status_code, error.payload(), error.headers, _refused_outcome(logged))
    except Exception as exc:
        error = to_api_error(exc)  # logs the traceback of an unexpected error
        if error.code == ApiError.code:  # unexpected: nothing the sender can act on
            # The sender learns only where to look; operators find the traceback there.
            error = ApiError(
                f"Unexpected error; the event log has the details under event {logged.event_id}."
            )
        _settle_failed(logged, error, exc, started=started)
        outcome = IoTEventOutcome.DUPLICATE if logged.is_repeat else IoTEventOutcome.FAILED
        return Answer(error.status_code, error.payload(), error.headers, outcome)
    if logged.is_repeat:
        event_log.settle(
            logged.event_id,
            outcome=IoTEventOutcome.DUPLICATE,
            http_status=status,
            response=answer,
            duration_ms=_elapsed_ms(started),
        )
        return Answer(status, answer, outcome=IoTEventOutcome.DUPLICATE)
    # A first delivery's answer is its own, or (re-processed meanwhile) the one stored.
    applied = (answer.get("data") or {}).get("applied", True)
    return Answer(status, answer, outcome=IoTEventOutcome.PROCESSED if applied else IoTEventOutcome.STALE)


def _validate(body: Body) -> Message:
    if body.error:
        raise InvalidJson(body.error)
    if not isinstance(body.data, dict):
        raise InvalidJson("The body must be a JSON object.")
    return parse_message(body.data)


class _SettledMeanwhile(Exception):
    """Rolls back a delivery whose body another delivery applied first."""


def _apply(logged: LoggedDelivery, message: Message, *, started: float) -> tuple[int, dict]:
    """
    Apply the message and settle the body's row with the answer, in one transaction.

    The body's row is not locked up front (a round trip per message): identical bodies in
    flight at once both lock their station, so they run one after the other, and the
    guarded settle lets only the first commit. The second rolls back and answers what the
    first did.
    """
    for attempt in itertools.count(1):
        if logged.is_repeat:
            settled = event_log.settled_answer(logged.primary_id)
            if settled is not None:
                return settled
        try:
            with transaction.atomic():
                result = apply_message(message)
                answer = envelope(result)
                if not event_log.settle(
                    logged.primary_id,
                    outcome=IoTEventOutcome.PROCESSED if result.applied else IoTEventOutcome.STALE,
                    http_status=200,
                    response=answer,
                    duration_ms=_elapsed_ms(started),
                    attempted=True,
                ):
                    raise _SettledMeanwhile
            return 200, answer
        except _SettledMeanwhile:
            # This delivery's changes were rolled back; answer as the one that won did.
            settled = event_log.settled_answer(logged.primary_id)
            if settled is not None:
                return settled
        except (IntegrityError, OperationalError) as exc:
            if attempt == MAX_ATTEMPTS or not _is_retryable(exc):
                raise
            logger.warning(
                "Event %s: %s on attempt %d, retrying", logged.event_id, type(exc).__name__, attempt
            )


MAX_ATTEMPTS = 3
# Deadlock and serialization failure: PostgreSQL rolled one side back, so run it again.
_RETRYABLE_SQLSTATES = ("40P01", "40001")


def _is_retryable(exc: Exception) -> bool:
    # An IntegrityError here is two first messages racing to register the same hardware;
    # the second run finds what the first registered.
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.__cause__, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _settle_refused(logged: LoggedDelivery, error: ApiError, *, started: float) -> None:
    """A refusal is the delivery's own answer: REJECTED, or DUPLICATE for a repeat."""
    event_log.settle(
        logged.event_id,
        outcome=IoTEventOutcome.DUPLICATE if logged.is_repeat else IoTEventOutcome.REJECTED,
        http_status=error.status_code,
        response=error.payload(),
        duration_ms=_elapsed_ms(started),
        error=event_log.operator_error(error),
    )


def _settle_failed(logged: LoggedDelivery, error: ApiError, exc: Exception, *, started: float) -> None:
    """The body's row becomes FAILED (processed again when redelivered), unless settled."""
    detail = event_log.operator_error(exc)
    # The body's row counts the attempt; a repeat's own row records the same answer.
    rows = [(logged.primary_id, IoTEventOutcome.FAILED, True)]
    if logged.is_repeat:
        rows.append((logged.event_id, IoTEventOutcome.DUPLICATE, False))
    try:
        for event_id, outcome, attempted in rows:
            event_log.settle(
                event_id,
                outcome=outcome,
                http_status=error.status_code,
                response=error.payload(),
                duration_ms=_elapsed_ms(started),
                error=detail,
                attempted=attempted,
            )
    except Exception:  # the database may be why processing failed
        logger.exception("Could not record the failure of event %s", logged.event_id)


def _refused_outcome(logged: LoggedDelivery) -> IoTEventOutcome:
    return IoTEventOutcome.DUPLICATE if logged.is_repeat else IoTEventOutcome.REJECTED


def _record(body: Body, *, source_ip: str | None, started: float) -> LoggedDelivery:
    try:
        return event_log.record(body, source_ip=source_ip)
    except Exception as exc:
        # Not logged, so no outcome of its own: counted FAILED, as the sender gets a 5xx
        # and sends the body again. The exception handler answers it.
        status = ServiceUnavailable.status_code if is_database_unavailable(exc) else ApiError.status_code
        _account(body, None, IoTEventOutcome.FAILED, status, None, started)
        raise


# A body timestamp outside this range is not a time (refused by validation anyway).
_PLAUSIBLE_TIMESTAMPS = range(1, 10**11)


def _account(
    body: Body, event_id: int | None, outcome: IoTEventOutcome, http_status: int, code: str | None, started: float
) -> None:
    """The delivery's metrics and its one log line, after it is settled (no query)."""
    context = request_context.current()
    seconds = time.perf_counter() - (context.started if context else started)
    label = outcome.value.lower()
    metrics.delivery(body.message_type, label, seconds)
    if code and http_status < 500:
        metrics.rejection(code)
    timestamp = body.data.get("timestamp") if isinstance(body.data, dict) else None
    if type(timestamp) is int and timestamp in _PLAUSIBLE_TIMESTAMPS:
        metrics.message_lag((context.received_at if context else time.time()) - timestamp)
    logger.info(
        "Station data event %s: %s from %s, %s, HTTP %d in %.1f ms",
        event_id if event_id is not None else "(not logged)",
        body.message_type or "(no type)",
        body.station_serial or "(no serial)",
        label,
        http_status,
        seconds * 1000,
        extra={
            "event_id": event_id,
            "message_type": body.message_type,
            "station_serial": body.station_serial,
            "outcome": label,
            "http_status": http_status,
            "duration_ms": round(seconds * 1000, 3),
        },
    )


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


@dataclass(frozen=True)
class ReprocessReport:
    event_id: int
    outcome: str
    http_status: int
    message: str


def reprocess(event: IoTEvent) -> ReprocessReport:
    """
    Run a logged body through the same steps as a delivery (for operators). A body already
    processed is reported and left alone, as a repeated delivery would be.
    """
    primary = event.duplicate_of or event
    if primary.outcome in SETTLED:
        return ReprocessReport(
            primary.pk, primary.outcome, primary.http_status or 200, "already processed; not applied again"
        )
    # The bytes were logged with the first delivery; what is processed is their decoded value.
    body = Body(
        b"",
        data=primary.payload,
        error=None if primary.payload is not None else "The logged body was not JSON.",
    )
    answer = _run(LoggedDelivery(primary.pk, primary.pk), body, started=time.perf_counter())
    primary.refresh_from_db(fields=["outcome"])
    return ReprocessReport(primary.pk, primary.outcome, answer.status, answer.body.get("message", ""))

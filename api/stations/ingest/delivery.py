"""
One delivery to the station data endpoint, from the signed bytes to the answer.

    1. decode the body (`body.decode`) and validate the message (`schemas.parse_message`);
       a bad body is answered 400, changes nothing and is logged REJECTED
    2. apply it and log the delivery with its answer in one transaction (`_apply`), the
       log row its last write, so that both commit together, once; a deadlock or a
       unique-key race rolls back and runs again
    3. a repeat (the log row's digest has a first delivery) settles the body's first row in
       the same transaction; a repeat of a body already settled rolls back everything it
       did and is answered as the first time
    4. a delivery refused or failed is logged after the rollback, in autocommit, with its
       answer: REJECTED, or FAILED (the body is processed again when it comes back)

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
from api.stations.ingest.event_log import SETTLED, Arrival, LoggedDelivery
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
    # The delivery's own row (None when it could not be logged: the database failed).
    event_id: int | None = None


def deliver(*, body: bytes, source_ip: str | None) -> Answer:
    """Validate, apply and log one delivery. Must not run inside a transaction."""
    started = time.perf_counter()
    arrival = Arrival.now(decode(body), source_ip)
    answer = _run(arrival, arrival.body, started=started)
    _account(
        arrival.body,
        answer.event_id,
        answer.outcome,
        answer.status,
        (answer.body or {}).get("error"),
        started,
    )
    return answer


def refuse(*, body: bytes, source_ip: str | None, error: ApiError) -> None:
    """
    Log a delivery refused before its message was looked at (no token, not staff): the
    sender got an answer, so the log has it too. Not a failure: the body is applied when
    it is delivered again with a valid token.
    """
    started = time.perf_counter()
    arrival = Arrival.now(decode(body), source_ip)
    try:
        logged = _log_refusal(arrival, error, started=started)
    except Exception as exc:
        # Not logged, so no outcome of its own: counted FAILED, as the sender gets a 5xx
        # and sends the body again. The exception handler answers it.
        status = ServiceUnavailable.status_code if is_database_unavailable(exc) else ApiError.status_code
        _account(arrival.body, None, IoTEventOutcome.FAILED, status, None, started)
        raise
    _account(arrival.body, logged.event_id, _refused_outcome(logged), error.status_code, error.code, started)


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


def _run(delivery: Arrival | LoggedDelivery, body: Body, *, started: float) -> Answer:
    """
    Process a delivery: one arriving now (an `Arrival`, logged here), or a body already
    logged that an operator re-processes (its row, which is settled here).
    """
    try:
        message = _validate(body)
        return _apply(delivery, message, started=started)
    except ApiError as error:
        refusal = error
    except Exception as exc:
        return _fail(delivery, exc, started=started)
    try:
        logged = _log_refusal(delivery, refusal, started=started)
    except Exception as exc:  # the database failed meanwhile: that is the answer now
        return _unlogged(exc)
    return Answer(
        refusal.status_code, refusal.payload(), refusal.headers, _refused_outcome(logged), logged.event_id
    )


def _fail(delivery: Arrival | LoggedDelivery, exc: Exception, *, started: float) -> Answer:
    """Processing failed and rolled back: the delivery is logged now, and the body FAILED."""
    try:
        logged = _logged(delivery)
    except Exception:
        return _unlogged(exc)
    error = to_api_error(exc)  # logs the traceback of an unexpected error
    if error.code == ApiError.code:  # unexpected: nothing the sender can act on
        # The sender learns only where to look; operators find the traceback there.
        error = ApiError(f"Unexpected error; the event log has the details under event {logged.event_id}.")
    _settle_failed(logged, error, exc, started=started)
    outcome = IoTEventOutcome.DUPLICATE if logged.is_repeat else IoTEventOutcome.FAILED
    return Answer(error.status_code, error.payload(), error.headers, outcome, logged.event_id)


def _unlogged(exc: Exception) -> Answer:
    """
    The delivery could not be logged (the database is why processing failed, most likely):
    the sender gets the 5xx and sends the body again. Counted FAILED, with no row.
    """
    error = to_api_error(exc)
    return Answer(error.status_code, error.payload(), error.headers, IoTEventOutcome.FAILED)


def _validate(body: Body) -> Message:
    if body.error:
        raise InvalidJson(body.error)
    if not isinstance(body.data, dict):
        raise InvalidJson("The body must be a JSON object.")
    return parse_message(body.data)


class _SettledAlready(Exception):
    """Rolls back a delivery whose body another delivery applied first."""

    def __init__(self, primary_id: int):
        super().__init__(primary_id)
        self.primary_id = primary_id


def _apply(delivery: Arrival | LoggedDelivery, message: Message, *, started: float) -> Answer:
    """
    Apply the message and log its answer, in one transaction: a new delivery's row is
    inserted with the answer (and a repeat settles the body's first row as well), a logged
    body's row is settled.

    Nothing is looked up before applying (a round trip per message, for the few repeats):
    a repeat of a settled body finds out when its row is inserted, last, and rolls back.
    Identical bodies in flight at once both lock their station, so they run one after the
    other, and the guarded settle lets only the first commit. The second answers what the
    first did.
    """
    for attempt in itertools.count(1):
        try:
            with transaction.atomic():
                result = apply_message(message)
                answer = envelope(result)
                outcome = IoTEventOutcome.PROCESSED if result.applied else IoTEventOutcome.STALE
                logged = _log_applied(delivery, outcome, answer, started=started)
            own = IoTEventOutcome.DUPLICATE if logged.is_repeat else outcome
            return Answer(200, answer, outcome=own, event_id=logged.event_id)
        except _SettledAlready as settled:
            # Everything this delivery did was rolled back; answer as the one that won did.
            stored = event_log.settled_answer(settled.primary_id)
            if stored is not None:
                return _answer_repeat(delivery, stored, started=started)
            if attempt == MAX_ATTEMPTS:  # settled, yet not readable: let the sender retry
                raise
        except (IntegrityError, OperationalError) as exc:
            if attempt == MAX_ATTEMPTS or not _is_retryable(exc):
                raise
            logger.warning("Station data: %s on attempt %d, retrying", type(exc).__name__, attempt)


def _log_applied(
    delivery: Arrival | LoggedDelivery, outcome: IoTEventOutcome, answer: dict, *, started: float
) -> LoggedDelivery:
    """The applied message's answer, inside its transaction; raises `_SettledAlready`."""
    if isinstance(delivery, Arrival):
        logged = event_log.record(
            delivery,
            outcome=outcome,
            http_status=200,
            response=answer,
            duration_ms=_elapsed_ms(started),
            attempted=True,
        )
        if not logged.is_repeat:
            return logged
    else:
        logged = delivery
    if not event_log.settle(
        logged.primary_id,
        outcome=outcome,
        http_status=200,
        response=answer,
        duration_ms=_elapsed_ms(started),
        attempted=True,
    ):
        raise _SettledAlready(logged.primary_id)
    return logged


def _answer_repeat(delivery: Arrival | LoggedDelivery, stored: tuple[int, dict], *, started: float) -> Answer:
    """A repeat of a settled body: its own row records the stored answer, which it gets."""
    status, answer = stored
    if isinstance(delivery, Arrival):
        delivery = event_log.record(
            delivery,
            outcome=IoTEventOutcome.DUPLICATE,
            http_status=status,
            response=answer,
            duration_ms=_elapsed_ms(started),
        )
    return Answer(status, answer, outcome=IoTEventOutcome.DUPLICATE, event_id=delivery.event_id)


MAX_ATTEMPTS = 3
# Deadlock and serialization failure: PostgreSQL rolled one side back, so run it again.
_RETRYABLE_SQLSTATES = ("40P01", "40001")


def _is_retryable(exc: Exception) -> bool:
    # An IntegrityError here is two first messages racing to register the same hardware;
    # the second run finds what the first registered.
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.__cause__, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _log_refusal(delivery: Arrival | LoggedDelivery, error: ApiError, *, started: float) -> LoggedDelivery:
    """A refusal is the delivery's own answer: REJECTED, or DUPLICATE for a repeat."""
    answer = {
        "http_status": error.status_code,
        "response": error.payload(),
        "duration_ms": _elapsed_ms(started),
        "error": event_log.operator_error(error),
    }
    if isinstance(delivery, Arrival):
        # A repeat's row is logged DUPLICATE, whatever the outcome given.
        return event_log.record(delivery, outcome=IoTEventOutcome.REJECTED, **answer)
    event_log.settle(delivery.event_id, outcome=_refused_outcome(delivery), **answer)
    return delivery


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


def _logged(delivery: Arrival | LoggedDelivery) -> LoggedDelivery:
    """The delivery's row: logged now (RECEIVED) if it is an arrival."""
    return event_log.record(delivery) if isinstance(delivery, Arrival) else delivery


# A body timestamp outside this range is not a time (refused by validation anyway).
_PLAUSIBLE_TIMESTAMPS = range(1, 10**11)


def _account(
    body: Body,
    event_id: int | None,
    outcome: IoTEventOutcome,
    http_status: int,
    code: str | None,
    started: float,
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

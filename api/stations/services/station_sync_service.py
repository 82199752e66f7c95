"""
The entry point for the three message types of the IoT system.

`StationSyncService` keeps the original design's public names (`sync_station_data`,
`process_return_event`) and adds `process_status_event`. Each method takes the decoded
body (or an already validated message), applies it and returns the `data` of the answer.
Each public method runs in a transaction of its own, or joins the caller's (without a
savepoint: the endpoint's transaction already covers the whole message).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from api.stations.services.full_sync import FullSyncResult, apply_full_sync
from api.stations.services.returns import apply_return
from api.stations.services.schemas import (
    FullSyncMessage,
    ReturnMessage,
    StatusMessage,
    parse_message,
)
from api.stations.services.status import apply_status
from main_app.exceptions import InvalidType


@dataclass(frozen=True)
class Outcome:
    """
    What processing a message did: `applied` is False for a stale message. `recorded` says
    whether the caller's `record` write (see `StationSyncService.process`) returned a row;
    None when it was not made.
    """

    applied: bool
    message: str
    data: dict
    recorded: bool | None = None


# The caller's write of an outcome: SQL with a RETURNING clause, and its parameters.
Record = Callable[[Outcome], tuple[str, list]]


def _full_outcome(result: FullSyncResult, *, now: datetime) -> Outcome:
    text = (
        "Station data updated successfully"
        if result.applied
        else "Out-of-date full sync recorded but not applied"
    )
    return Outcome(result.applied, text, result.as_response(now=now))


def _as(message_class, type_name: str, data):
    if isinstance(data, message_class):
        return data
    message = parse_message(data)
    if not isinstance(message, message_class):
        raise InvalidType(f"Expected a '{type_name}' message.")
    return message


class StationSyncService:
    """Applies full syncs, returns and status messages (DESIGN section 4)."""

    def sync_station_data(self, data: dict[str, Any] | FullSyncMessage) -> dict[str, Any]:
        return self.process(_as(FullSyncMessage, "full", data)).data

    def process_return_event(self, data: dict[str, Any] | ReturnMessage) -> dict[str, Any]:
        return self.process(_as(ReturnMessage, "returned", data)).data

    def process_status_event(self, data: dict[str, Any] | StatusMessage) -> dict[str, Any]:
        return self.process(_as(StatusMessage, "status", data)).data

    def process(
        self, message: FullSyncMessage | ReturnMessage | StatusMessage, *, record: Record | None = None
    ) -> Outcome:
        """
        Apply `message`. `record`, if given, turns the outcome into one more write of the
        caller's (the event log's answer), which an applied full sync sends with its last
        statement, a round trip saved; `Outcome.recorded` then says whether it wrote a row.
        Other messages leave `recorded` None and the caller writes the answer itself.
        """
        with transaction.atomic(savepoint=False):
            if isinstance(message, FullSyncMessage):
                return self._full(message, record=record)
            if isinstance(message, ReturnMessage):
                return self._returned(message)
            if isinstance(message, StatusMessage):
                return self._status(message)
            raise TypeError(f"Not a message: {type(message).__name__}")

    @staticmethod
    def _full(message: FullSyncMessage, *, record: Record | None = None) -> Outcome:
        now = timezone.now()

        def last_write(result: FullSyncResult) -> tuple[str, list]:
            return record(_full_outcome(result, now=now))

        result = apply_full_sync(message, now=now, last_write=last_write if record else None)
        outcome = _full_outcome(result, now=now)
        if result.last_rows is None:
            return outcome
        return replace(outcome, recorded=bool(result.last_rows))

    @staticmethod
    def _returned(message: ReturnMessage) -> Outcome:
        result = apply_return(message)
        text = (
            "Return processed successfully"
            if result.rental is not None
            else "Power bank placed; no open rental was found"
        )
        return Outcome(True, text, result.as_response())

    @staticmethod
    def _status(message: StatusMessage) -> Outcome:
        result = apply_status(message)
        text = (
            "Station status updated"
            if result.applied
            else "Out-of-date status recorded but not applied"
        )
        return Outcome(result.applied, text, result.as_response())

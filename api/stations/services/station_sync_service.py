"""
The original design's entry point for station messages, kept for its callers: each method
takes a decoded body (or an already validated message), applies it and returns the
`data` of the answer. The endpoint does not come through here: it runs the ingest
pipeline (`api.stations.ingest.delivery`), which also keeps the event log.

Each method runs in a transaction of its own, or joins the caller's.
"""

from typing import Any

from django.db import transaction

from api.stations.ingest.delivery import apply_message
from api.stations.services.schemas import FullSyncMessage, ReturnMessage, StatusMessage, parse_message
from main_app.exceptions import InvalidType


def _as(message_class, type_name: str, data):
    if isinstance(data, message_class):
        return data
    message = parse_message(data)
    if not isinstance(message, message_class):
        raise InvalidType(f"Expected a '{type_name}' message.")
    return message


class StationSyncService:
    """Applies full syncs, returns and status messages (docs/design.md)."""

    def sync_station_data(self, data: dict[str, Any] | FullSyncMessage) -> dict[str, Any]:
        return self._apply(_as(FullSyncMessage, "full", data))

    def process_return_event(self, data: dict[str, Any] | ReturnMessage) -> dict[str, Any]:
        return self._apply(_as(ReturnMessage, "returned", data))

    def process_status_event(self, data: dict[str, Any] | StatusMessage) -> dict[str, Any]:
        return self._apply(_as(StatusMessage, "status", data))

    @staticmethod
    def _apply(message) -> dict[str, Any]:
        # Without a savepoint inside a caller's transaction: one message, one unit of work.
        with transaction.atomic(savepoint=False):
            return apply_message(message).as_response()

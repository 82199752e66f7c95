"""
What every layer of one request may know about it: its id and when it was received.

Kept in a context variable, set by the first middleware and reset when the answer leaves:
each gunicorn thread runs one request at a time in a context of its own, so nothing here
is shared between requests, and no layer hands another a mutable flag. The id comes from
the client's `X-Request-ID` when it is a plausible one, else it is generated, and it goes
back in the answer's `X-Request-ID` header and into every JSON log line of the request.
"""

import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

# Accepted from clients as sent: UUIDs, hex digests and the like. Anything else (too long,
# spaces, line breaks) is replaced, so a header cannot forge log lines or other headers.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    # Wall clock (Unix seconds) and monotonic clock at receipt.
    received_at: float
    started: float


_current: ContextVar[RequestContext | None] = ContextVar("chargeghar_request", default=None)


def current() -> RequestContext | None:
    return _current.get()


def request_id_from(header: str | None) -> str:
    if header and _CLIENT_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        context = RequestContext(
            request_id=request_id_from(request.META.get("HTTP_X_REQUEST_ID")),
            received_at=time.time(),
            started=time.perf_counter(),
        )
        token = _current.set(context)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response["X-Request-ID"] = context.request_id
        if response.status_code >= 500:
            from main_app import metrics

            metrics.server_error(response.status_code)
        return response


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fmt", ["levelname", "name", "message"])
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", "time")
        super().__init__(*args, **kwargs)

    def add_fields(self, log_data, record, message_dict):
        super().add_fields(log_data, record, message_dict)
        # Time first, for people reading the lines as they are.
        fields = {"time": log_data.pop("time", None), **log_data}
        context = _current.get()
        if context is not None and "request_id" not in fields:
            fields["request_id"] = context.request_id
        log_data.clear()
        log_data.update(fields)

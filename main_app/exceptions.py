"""
One error vocabulary for the whole API (docs/contract.md, section 3).

Every code the API answers is an `ApiError` subclass defined here (`ERROR_CODES` lists them),
and docs/contract.md lists the same codes: main_app/tests/test_error_vocabulary.py holds the
two together. Services, middleware and views raise these classes; DRF's own exceptions and
database outages are mapped onto them by `api_exception_handler`. Every failure reaches the
client as `{"success": false, "message": ..., "error": CODE}` (plus `errors` for validation),
and never with exception text or a stack trace.
"""

import json
import logging
import sqlite3

import psycopg
from django.conf import settings
from django.db import Error as DjangoDatabaseError
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with a stable code and HTTP status, safe to show to the client."""

    code = "INTERNAL_ERROR"
    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_message = "The server could not process the request."

    def __init__(self, message=None, *, errors=None, headers=None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.errors = errors
        self.headers = headers or {}

    def payload(self) -> dict:
        body = {"success": False, "message": self.message, "error": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


# --- 400 ---------------------------------------------------------------------------------------


class InvalidRequest(ApiError):
    code = "INVALID_REQUEST"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "The request is malformed."


class ValidationFailed(ApiError):
    code = "VALIDATION_ERROR"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "The request has missing or invalid fields."


class InvalidJson(ApiError):
    code = "INVALID_JSON"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "The body must be a UTF-8 JSON object."


class InvalidType(ApiError):
    code = "INVALID_TYPE"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "Unknown message type."


class InvalidContentType(ApiError):
    code = "INVALID_CONTENT_TYPE"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "Content-Type must be application/json."


class InvalidTimestamp(ApiError):
    code = "INVALID_TIMESTAMP"
    status_code = status.HTTP_400_BAD_REQUEST
    default_message = "X-Timestamp must be a plain integer of Unix seconds."


# --- 401 and 403 -------------------------------------------------------------------------------


class InvalidCredentials(ApiError):
    code = "INVALID_CREDENTIALS"
    status_code = status.HTTP_401_UNAUTHORIZED
    default_message = "Invalid email or password."


class NotAuthenticated(ApiError):
    code = "NOT_AUTHENTICATED"
    status_code = status.HTTP_401_UNAUTHORIZED
    default_message = "Authentication credentials were missing, malformed or expired."

    def __init__(self, message=None, **kwargs):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="api"'})
        super().__init__(message, **kwargs)


class IpNotAllowed(ApiError):
    code = "IP_NOT_ALLOWED"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Source address is not allowed."


class MissingHeaders(ApiError):
    code = "MISSING_HEADERS"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Missing X-Signature or X-Timestamp header."


class InvalidSignature(ApiError):
    code = "INVALID_SIGNATURE"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "Signature validation failed."


class PermissionDenied(ApiError):
    code = "PERMISSION_DENIED"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "You do not have permission to perform this action."


# --- Other 4xx ---------------------------------------------------------------------------------


class NotFound(ApiError):
    code = "NOT_FOUND"
    status_code = status.HTTP_404_NOT_FOUND
    default_message = "Not found."


class MethodNotAllowed(ApiError):
    code = "METHOD_NOT_ALLOWED"
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    default_message = "Method not allowed."


class NotAcceptable(ApiError):
    code = "NOT_ACCEPTABLE"
    status_code = status.HTTP_406_NOT_ACCEPTABLE
    default_message = "Not acceptable."


class Conflict(ApiError):
    code = "CONFLICT"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_message = "The request body is too large."


class Throttled(ApiError):
    code = "THROTTLED"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_message = "Too many requests."

    def __init__(self, message=None, *, wait: float | None = None, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": str(int(wait or 1))})
        super().__init__(message, **kwargs)


class TooManyAttempts(ApiError):
    """Login refused for this account from this address until the cool-off ends (django-axes)."""

    code = "TOO_MANY_ATTEMPTS"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_message = "Too many failed login attempts; try again later."

    def __init__(self, message=None, *, retry_after: int, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": str(max(1, int(retry_after)))})
        super().__init__(message, **kwargs)


# --- 503 ---------------------------------------------------------------------------------------


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "The service is temporarily unavailable; retry shortly."

    def __init__(self, message=None, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": str(settings.IOT_RETRY_AFTER_SECONDS)})
        super().__init__(message, **kwargs)


def _defined_here(base: type[ApiError]) -> list[type[ApiError]]:
    found = []
    for subclass in base.__subclasses__():
        if subclass.__module__ == __name__:
            found += [subclass, *_defined_here(subclass)]
    return found


# Every code the API can answer, with its class.
ERROR_CODES: dict[str, type[ApiError]] = {error.code: error for error in (ApiError, *_defined_here(ApiError))}


# --- Database unavailability -------------------------------------------------------------------

# SQLSTATEs (PostgreSQL, appendix A) that mean the server cannot serve us now, whatever the
# statement: the same request succeeds once it can, so the client is told to retry (503).
# Any other SQLSTATE is about the statement or the data, and is a 500.
UNAVAILABLE_SQLSTATE_CLASSES = frozenset(
    {
        "08",  # connection exception: the connection could not be made, or broke
        # insufficient resources: too many connections, out of memory, disk full. The server
        # is short of capacity, not the request wrong; an idempotent retry costs nothing.
        "53",
    }
)
UNAVAILABLE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: the server is stopping
        "57P02",  # crash_shutdown: another server process crashed; every session is reset
        "57P03",  # cannot_connect_now: starting up, shutting down or in recovery
        "57P05",  # idle_session_timeout: the server closed a persistent connection we kept
    }
)
# SQLite (the zero set-up database) has no SQLSTATE: its primary result codes stand in.
# SQLITE_BUSY, "database is locked", means another connection held the write lock for the
# whole busy timeout (20 s, settings): contention, not a wrong request, and the same body
# succeeds once that writer commits, so it is answered as unavailable. SQLITE_CANTOPEN is
# SQLite's "cannot connect". Every other code (SQLITE_ERROR for bad SQL, ...) is a 500.
UNAVAILABLE_SQLITE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_CANTOPEN})


def driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind Django's wrapper of it (Django raises `from` it)."""
    if isinstance(exc, DjangoDatabaseError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot serve us now", not "bad SQL"."""
    error = driver_error(exc)
    if isinstance(error, psycopg.Error):
        if error.sqlstate is None:
            # No answer from the server at all: libpq failed to connect (refused, timed out,
            # name not resolved) or lost the connection under a statement; InterfaceError is
            # a connection psycopg already knows to be closed. (A DataError or
            # ProgrammingError without SQLSTATE is psycopg refusing a value or a query.)
            return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))
        return error.sqlstate[:2] in UNAVAILABLE_SQLSTATE_CLASSES or error.sqlstate in UNAVAILABLE_SQLSTATES
    if isinstance(error, sqlite3.Error):
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in UNAVAILABLE_SQLITE_CODES
    # Django raises its OperationalError and InterfaceError only from a driver's error (the
    # cases above). Without one, they are taken for what PEP 249 names them: a failure of
    # the database or of the connection to it, not of the statement.
    return isinstance(error, (OperationalError, InterfaceError))


def error_response(exc: ApiError) -> Response:
    return Response(exc.payload(), status=exc.status_code, headers=exc.headers)


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception to the error the client will see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, drf_exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return ValidationFailed(errors=detail)
    if isinstance(exc, drf_exceptions.ParseError):
        return InvalidJson()
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        return InvalidContentType()
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        return NotAuthenticated()
    if isinstance(exc, drf_exceptions.PermissionDenied):
        return PermissionDenied()
    if isinstance(exc, (drf_exceptions.NotFound, Http404)):
        return NotFound()
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return MethodNotAllowed()
    if isinstance(exc, drf_exceptions.NotAcceptable):
        return NotAcceptable()
    if isinstance(exc, drf_exceptions.Throttled):
        return Throttled(wait=exc.wait)
    if is_database_unavailable(exc):
        # The driver's class and code only: its text may carry host names.
        error = driver_error(exc)
        logger.error(
            "Database unavailable: %s %s",
            type(error).__name__,
            getattr(error, "sqlstate", None) or getattr(error, "sqlite_errorname", None) or "",
        )
        from main_app import metrics  # imports this module

        metrics.database_unavailable()
        return ServiceUnavailable()
    logger.exception("Unexpected error", exc_info=exc)
    return ApiError()


def api_exception_handler(exc, context):
    """DRF exception handler: every error becomes the envelope."""
    return error_response(to_api_error(exc))


def json_error(exc: ApiError) -> JsonResponse:
    """The envelope as a plain Django response, for middleware and URL-level handlers."""
    response = JsonResponse(exc.payload(), status=exc.status_code, json_dumps_params={"ensure_ascii": False})
    for name, value in exc.headers.items():
        response[name] = value
    return response


def handler404(request, exception=None):
    if request.path.startswith("/api/"):
        return json_error(NotFound())
    return defaults.page_not_found(request, exception)


def handler500(request):
    if request.path.startswith("/api/"):
        return json_error(ApiError())
    return defaults.server_error(request)


def wsgi_error(exc: ApiError, start_response):
    """The envelope as a bare WSGI response, for failures before Django has a request."""
    body = json.dumps(exc.payload(), ensure_ascii=False).encode("utf-8")
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers += list(exc.headers.items())
    reason = {400: "Bad Request"}.get(exc.status_code, "Error")
    start_response(f"{exc.status_code} {reason}", headers)
    return [body]

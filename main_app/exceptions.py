"""
One error vocabulary for the whole API (DESIGN section 3).

Services and views raise `ApiError` subclasses; DRF's own exceptions and database outages
are mapped onto the same codes by `api_exception_handler`. Every failure reaches the client
as `{"success": false, "message": ..., "error": CODE}` (plus `errors` for validation), and
never with exception text or a stack trace.
"""

import json
import logging

from django.conf import settings
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

    def __init__(self, message=None, *, errors=None, headers=None, code=None, status_code=None):
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.errors = errors
        self.headers = headers or {}
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code

    def payload(self) -> dict:
        body = {"success": False, "message": self.message, "error": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


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


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_message = "The request body is too large."


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


class PermissionDenied(ApiError):
    code = "PERMISSION_DENIED"
    status_code = status.HTTP_403_FORBIDDEN
    default_message = "You do not have permission to perform this action."


class ServiceUnavailable(ApiError):
    code = "SERVICE_UNAVAILABLE"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_message = "The service is temporarily unavailable; retry shortly."

    def __init__(self, message=None, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": str(settings.IOT_RETRY_AFTER_SECONDS)})
        super().__init__(message, **kwargs)


class Conflict(ApiError):
    code = "CONFLICT"
    status_code = status.HTTP_409_CONFLICT
    default_message = "The request conflicts with the current state."


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached", not "bad SQL"."""
    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError):
        text = str(exc).lower()
        return any(
            hint in text
            for hint in (
                "connection",
                "could not connect",
                "server closed",
                "terminating",
                "timeout",
                "shutting down",
                "the database system is",
                "unable to open database",
            )
        )
    return False


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
        return ApiError("Not found.", code="NOT_FOUND", status_code=404)
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        return ApiError(
            "Method not allowed.", code="METHOD_NOT_ALLOWED", status_code=405
        )
    if isinstance(exc, drf_exceptions.NotAcceptable):
        return ApiError("Not acceptable.", code="NOT_ACCEPTABLE", status_code=406)
    if isinstance(exc, drf_exceptions.Throttled):
        return ApiError(
            "Too many requests.",
            code="THROTTLED",
            status_code=429,
            headers={"Retry-After": str(int(exc.wait or 1))},
        )
    # No `isinstance(exc, DatabaseError)` guard: Django's InterfaceError is not a
    # DatabaseError, yet a connection closed under a request surfaces as one.
    if is_database_unavailable(exc):
        logger.error("Database unavailable: %s", type(exc).__name__)
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
        return json_error(ApiError("Not found.", code="NOT_FOUND", status_code=404))
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

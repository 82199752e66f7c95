"""
Probes for the load balancer, and the error envelope at the edges (docs/contract.md, section 3):
every failure is JSON, and no exception text ever reaches the client.
"""

import json
import sqlite3
from unittest import mock

from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import Http404
from django.test import Client, SimpleTestCase, TestCase, override_settings
from django.urls import path
from rest_framework import exceptions as drf_exceptions
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from main_app.exceptions import api_exception_handler

SECRET_DETAIL = "secret detail"


# --- A URLconf with views that fail, used through override_settings(ROOT_URLCONF=__name__) ---


def sqlite_refuses(sql: str) -> OperationalError:
    """Django's OperationalError as its SQLite backend raises it: from the driver's own error."""
    try:
        sqlite3.connect(":memory:").execute(sql)
    except sqlite3.OperationalError as driver_error:
        error = OperationalError(*driver_error.args)
        error.__cause__ = driver_error
        return error
    raise AssertionError(f"SQLite ran {sql!r}")


class FailingApiView(APIView):
    """Raises whatever `?error=` names, as a buggy or database-starved view would."""

    authentication_classes = []
    permission_classes = [AllowAny]
    errors = {
        "runtime": lambda: RuntimeError(SECRET_DETAIL),
        "database-down": lambda: OperationalError(f"could not connect to server: {SECRET_DETAIL}"),
        "bad-sql": lambda: sqlite_refuses(f'SELECT * FROM "{SECRET_DETAIL}"'),
    }

    def get(self, request):
        raise self.errors[request.query_params["error"]]()


def failing_django_view(request):
    raise RuntimeError(SECRET_DETAIL)


urlpatterns = [
    path("api/failing", FailingApiView.as_view()),
    path("api/failing-plain", failing_django_view),
    path("failing-plain", failing_django_view),
]
handler404 = "main_app.exceptions.handler404"
handler500 = "main_app.exceptions.handler500"


class EnvelopeAssertions:
    def assertErrorEnvelope(self, status_code, body, expected_status, code):
        self.assertEqual(status_code, expected_status, body)
        self.assertLessEqual(set(body), {"success", "message", "error", "errors"}, body)
        self.assertIs(body["success"], False)
        self.assertEqual(body["error"], code)
        self.assertTrue(body["message"])
        self.assertNotIn(SECRET_DETAIL, json.dumps(body))


class HealthProbeTests(TestCase):
    def test_healthz_answers_ok(self):
        response = self.client.get("/healthz")

        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok"})
        self.assertIn("no-cache", response["Cache-Control"])

    def test_readyz_answers_ok_with_the_database_up(self):
        response = self.client.get("/readyz")

        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok", "database": "up"})
        self.assertIn("no-cache", response["Cache-Control"])

    def test_readyz_is_unavailable_when_the_database_cannot_be_reached(self):
        with mock.patch("main_app.health.connection") as connection:
            connection.cursor.side_effect = OperationalError(f"could not connect: {SECRET_DETAIL}")

            response = self.client.get("/readyz")

        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json(), {"status": "unavailable", "database": "down"})
        self.assertEqual(response["Retry-After"], "5")
        connection.cursor.assert_called_once_with()

    def test_readyz_is_unavailable_when_the_query_fails(self):
        with mock.patch("main_app.health.connection") as connection:
            cursor = connection.cursor.return_value.__enter__.return_value
            cursor.execute.side_effect = OperationalError("server closed the connection unexpectedly")

            response = self.client.get("/readyz")

        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json(), {"status": "unavailable", "database": "down"})
        cursor.execute.assert_called_once_with("SELECT 1")


class NotFoundTests(EnvelopeAssertions, TestCase):
    def test_unknown_api_path_answers_a_json_404_envelope(self):
        response = self.client.get("/api/no-such-endpoint")

        self.assertEqual(response["Content-Type"], "application/json")
        self.assertErrorEnvelope(response.status_code, response.json(), 404, "NOT_FOUND")

    def test_unknown_api_path_is_a_json_404_for_a_post_too(self):
        response = self.client.post("/api/internal/stations/nope", "{}", content_type="application/json")

        self.assertErrorEnvelope(response.status_code, response.json(), 404, "NOT_FOUND")

    def test_unknown_path_outside_the_api_keeps_the_html_404(self):
        response = self.client.get("/no-such-page")

        self.assertEqual(response.status_code, 404)
        self.assertTrue(response["Content-Type"].startswith("text/html"))


@override_settings(ROOT_URLCONF=__name__)
class ViewFailureTests(EnvelopeAssertions, TestCase):
    def get(self, query):
        response = self.client.get(f"/api/failing?error={query}")
        self.assertEqual(response["Content-Type"], "application/json")
        return response

    def test_unexpected_error_in_an_api_view_is_a_500_without_its_text(self):
        for debug in (False, True):
            with self.subTest(debug=debug), override_settings(DEBUG=debug):
                with self.assertLogs("main_app.exceptions", "ERROR") as logs:
                    response = self.get("runtime")

                self.assertErrorEnvelope(response.status_code, response.json(), 500, "INTERNAL_ERROR")
                # The operator still finds the detail, with its traceback, in the log.
                self.assertIn(SECRET_DETAIL, "\n".join(logs.output))

    def test_unreachable_database_in_an_api_view_is_a_503_with_retry_after(self):
        for debug in (False, True):
            with self.subTest(debug=debug), override_settings(DEBUG=debug):
                with self.assertLogs("main_app.exceptions", "ERROR") as logs:
                    response = self.get("database-down")

                self.assertErrorEnvelope(response.status_code, response.json(), 503, "SERVICE_UNAVAILABLE")
                self.assertEqual(response["Retry-After"], "5")
                # Only the class name is logged; the driver's text may carry host names.
                self.assertNotIn(SECRET_DETAIL, "\n".join(logs.output))

    @override_settings(IOT_RETRY_AFTER_SECONDS=17)
    def test_retry_after_follows_the_setting(self):
        with self.assertLogs("main_app.exceptions", "ERROR"):
            response = self.get("database-down")

        self.assertEqual(response["Retry-After"], "17")

    def test_a_database_error_that_is_not_an_outage_is_a_plain_500(self):
        with self.assertLogs("main_app.exceptions", "ERROR"):
            response = self.get("bad-sql")

        self.assertErrorEnvelope(response.status_code, response.json(), 500, "INTERNAL_ERROR")
        self.assertFalse(response.has_header("Retry-After"))

    def test_unexpected_error_in_a_plain_django_view_under_api_is_a_json_500(self):
        client = Client(raise_request_exception=False)

        with self.assertLogs("django.request", "ERROR"):
            response = client.get("/api/failing-plain")

        self.assertEqual(response["Content-Type"], "application/json")
        self.assertErrorEnvelope(response.status_code, response.json(), 500, "INTERNAL_ERROR")

    def test_unexpected_error_outside_the_api_keeps_the_html_500(self):
        client = Client(raise_request_exception=False)

        with self.assertLogs("django.request", "ERROR"):
            response = client.get("/failing-plain")

        self.assertEqual(response.status_code, 500)
        self.assertTrue(response["Content-Type"].startswith("text/html"))
        self.assertNotIn(SECRET_DETAIL, response.content.decode())


class ApiExceptionHandlerTests(EnvelopeAssertions, SimpleTestCase):
    """`api_exception_handler` called directly, with DEBUG off and on."""

    def handle(self, exc):
        response = api_exception_handler(exc, {})
        self.assertIsNotNone(response)
        return response

    def test_runtime_error_is_internal_error_without_its_text(self):
        for debug in (False, True):
            with self.subTest(debug=debug), override_settings(DEBUG=debug):
                with self.assertLogs("main_app.exceptions", "ERROR"):
                    response = self.handle(RuntimeError(SECRET_DETAIL))

                self.assertErrorEnvelope(response.status_code, response.data, 500, "INTERNAL_ERROR")
                self.assertFalse(response.has_header("Retry-After"))

    def test_lost_database_connection_is_service_unavailable_with_retry_after(self):
        for debug in (False, True):
            with self.subTest(debug=debug), override_settings(DEBUG=debug):
                with self.assertLogs("main_app.exceptions", "ERROR"):
                    response = self.handle(OperationalError("could not connect to server"))

                self.assertErrorEnvelope(response.status_code, response.data, 503, "SERVICE_UNAVAILABLE")
                self.assertEqual(response["Retry-After"], "5")
                self.assertNotIn("could not connect", json.dumps(response.data))

    def test_interface_error_is_service_unavailable(self):
        with self.assertLogs("main_app.exceptions", "ERROR"):
            response = self.handle(InterfaceError("connection already closed"))

        self.assertErrorEnvelope(response.status_code, response.data, 503, "SERVICE_UNAVAILABLE")

    def test_integrity_error_is_internal_error_without_its_text(self):
        exc = IntegrityError(f'duplicate key value violates unique constraint "{SECRET_DETAIL}"')

        with self.assertLogs("main_app.exceptions", "ERROR"):
            response = self.handle(exc)

        self.assertErrorEnvelope(response.status_code, response.data, 500, "INTERNAL_ERROR")

    def test_drf_exceptions_map_onto_the_error_vocabulary(self):
        cases = {
            "validation": (drf_exceptions.ValidationError({"email": ["bad"]}), 400, "VALIDATION_ERROR"),
            "parse": (drf_exceptions.ParseError(SECRET_DETAIL), 400, "INVALID_JSON"),
            "media type": (drf_exceptions.UnsupportedMediaType("text/plain"), 400, "INVALID_CONTENT_TYPE"),
            "not authenticated": (drf_exceptions.NotAuthenticated(), 401, "NOT_AUTHENTICATED"),
            "authentication failed": (
                drf_exceptions.AuthenticationFailed(SECRET_DETAIL),
                401,
                "NOT_AUTHENTICATED",
            ),
            "permission": (drf_exceptions.PermissionDenied(SECRET_DETAIL), 403, "PERMISSION_DENIED"),
            "not found": (drf_exceptions.NotFound(SECRET_DETAIL), 404, "NOT_FOUND"),
            "django 404": (Http404(SECRET_DETAIL), 404, "NOT_FOUND"),
            "method": (drf_exceptions.MethodNotAllowed("PUT"), 405, "METHOD_NOT_ALLOWED"),
            "throttled": (drf_exceptions.Throttled(wait=30), 429, "THROTTLED"),
        }
        for name, (exc, status, code) in cases.items():
            with self.subTest(name):
                response = self.handle(exc)

                self.assertErrorEnvelope(response.status_code, response.data, status, code)

    def test_validation_errors_keep_their_field_messages(self):
        response = self.handle(drf_exceptions.ValidationError({"email": ["Enter a valid email address."]}))

        self.assertEqual(response.data["errors"], {"email": ["Enter a valid email address."]})

    def test_401_tells_the_client_to_use_a_bearer_token(self):
        response = self.handle(drf_exceptions.AuthenticationFailed())

        self.assertTrue(response["WWW-Authenticate"].startswith("Bearer"))

    def test_throttled_says_when_to_retry(self):
        response = self.handle(drf_exceptions.Throttled(wait=30))

        self.assertEqual(response["Retry-After"], "30")


class UnparseableContentTypeTests(SimpleTestCase):
    """Django cannot build a request for some Content-Type headers; the WSGI guard answers."""

    def test_a_content_type_django_cannot_parse_gets_the_envelope_not_a_bare_500(self):
        from io import BytesIO

        from main_app.wsgi import application

        captured = {}

        def start_response(status, headers):
            captured["status"], captured["headers"] = status, dict(headers)

        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/internal/stations/data",
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "HTTP_HOST": "testserver",
            "CONTENT_TYPE": "application/json; charset*=bogus''x",
            "CONTENT_LENGTH": "2",
            "wsgi.input": BytesIO(b"{}"),
            "wsgi.url_scheme": "http",
            "wsgi.errors": BytesIO(),
        }
        body = b"".join(application(environ, start_response))

        self.assertEqual(captured["status"], "400 Bad Request")
        self.assertEqual(captured["headers"]["Content-Type"], "application/json")
        self.assertEqual(
            json.loads(body),
            {
                "success": False,
                "message": "The Content-Type header cannot be parsed.",
                "error": "INVALID_CONTENT_TYPE",
            },
        )

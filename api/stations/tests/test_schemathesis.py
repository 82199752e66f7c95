"""
Schemathesis against the OpenAPI schema the app serves at /api/schema/ (OpenAPI 3.1).

Cases generated from the schema, valid and invalid, are sent through the real WSGI
application to the two operations the IoT system uses: the admin login and the station
data endpoint. Every answer must be a non-5xx, with a status code, content type, headers
and body that the schema documents. Schemathesis cannot sign a body, so signature
verification is off here (the signed path is covered by `test_hostile_input`); the data
endpoint gets a valid staff bearer token.

Not checked: that every schema-valid body is accepted (`positive_data_acceptance`) and
every schema-invalid one refused (`negative_data_rejection`). The schema is wider than
the validation on purpose or by JSON Schema's nature: `integer` admits 1762906000.0, which
the strict integer fields refuse; strings may carry NUL or unpaired surrogates, which no
database column stores; slots and banks must agree with each other; and a random login
is rightly a 401.
"""

import logging
import os
import unittest

from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from api.stations.tests.factories import TEST_SECRET, bearer_for, make_staff

try:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError:  # pragma: no cover - requirements-dev.txt installs it
    schemathesis = None

SCALE = float(os.environ.get("HOSTILE_INPUT_SCALE", "1"))
CHECKS = (
    [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    if schemathesis
    else []
)


def budget(examples: int) -> settings:
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        database=None,
        derandomize=not os.environ.get("HOSTILE_INPUT_RANDOM"),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@unittest.skipIf(schemathesis is None, "schemathesis is not installed (pip install -r requirements-dev.txt)")
@override_settings(
    IOT_SIGNATURE_VERIFICATION=False,
    IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET,
    IOT_SYSTEM_ALLOWED_IPS=[],
    IOT_TRUSTED_PROXIES=[],
)
class SchemaConformanceTests(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Django's WSGI handler closes the connection after each request; inside the test
        # transaction that would throw the fixture away. The test client disconnects the
        # same receiver for the same reason.
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        cls.addClassCleanup(request_started.connect, close_old_connections)
        cls.addClassCleanup(request_finished.connect, close_old_connections)
        # Every rejection logs a warning: hundreds of them would bury the test output.
        middleware_log = logging.getLogger("main_app.middleware")
        cls.addClassCleanup(middleware_log.setLevel, middleware_log.level)
        middleware_log.setLevel(logging.ERROR)

        # main_app.wsgi's application without a second django.setup() (which would
        # reconfigure logging in the middle of the test run).
        cls.schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())

    @classmethod
    def setUpTestData(cls):
        cls.password = "s3cret-pass-123"
        cls.staff = make_staff(password=cls.password)
        cls.bearer = bearer_for(cls.staff)

    def check(self, case, **headers):
        response = case.call(headers=headers or None)
        event(f"{response.status_code} {response.json().get('error', 'OK')}")  # --hypothesis-show-statistics
        case.validate_response(response, checks=CHECKS, headers=headers or None)

    @budget(100)
    @given(data=st.data())
    def test_login_answers_within_its_schema(self, data):
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(self.schema["/api/admin/login"]["POST"].as_strategy(generation_mode=mode))
        self.check(case)

    @budget(100)
    @given(data=st.data())
    def test_station_data_answers_within_its_schema(self, data):
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(self.schema["/api/internal/stations/data"]["POST"].as_strategy(generation_mode=mode))
        self.check(case, Authorization=self.bearer)

"""
GET /metrics and what it counts (main_app/metrics.py), through the real URL, middleware and
views, in one process (prometheus_client without PROMETHEUS_MULTIPROC_DIR). Counters are
process-wide, so every test compares a scrape after with a scrape before.

Across gunicorn workers, against a real Prometheus: test_metrics_prometheus.py.
"""

import io
import json
import logging
from datetime import timedelta
from unittest import mock

from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_login_failed
from django.db import OperationalError, connection
from django.test import RequestFactory, TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from api.rentals.models import PaymentModel, Rental, RentalPackage, RentalStatus
from api.stations.ingest import delivery, event_log
from api.stations.models import IoTEvent, PowerBank, Station, StationSlot, StationStatus
from api.stations.tests.factories import SIGNED as SIGNED_BASE
from api.stations.tests.factories import (
    STATION_SERIAL,
    TEST_SECRET,
    SenderClient,
    bank_serial,
    compact,
    full_payload,
    make_staff,
    now_ts,
    status_payload,
)
from main_app import metrics, request_context
from main_app.apps import connect_login_metrics

SIGNED = override_settings(
    **SIGNED_BASE.options,
    IOT_SIGNATURE_TOLERANCE_SECONDS=300,
    METRICS_ENABLED=True,
    METRICS_ALLOWED_IPS=["127.0.0.0/8", "::1"],
    METRICS_BEARER_TOKEN="",
)


class Scrape(dict):
    """Samples of one /metrics answer: {(sample name, ((label, value), ...)): value}."""

    def value(self, name: str, **labels) -> float:
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, found), v in self.items() if n == name and wanted <= set(found))


def parse(text: str) -> Scrape:
    scrape = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scrape[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return scrape


class MetricsTestCase(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.staff = make_staff()

    def setUp(self):
        self.sender = SenderClient(self.staff)
        self.before = self.scrape()

    def scrape(self, **headers) -> Scrape:
        response = self.client.get("/metrics", **headers)
        self.assertEqual(response.status_code, 200, response.content)
        self.assertTrue(response["Content-Type"].startswith("text/plain"), response["Content-Type"])
        return parse(response.content.decode())

    def delta(self, name: str, **labels) -> float:
        return self.scrape().total(name, **labels) - self.before.total(name, **labels)


@SIGNED
class DeliveryCountTests(MetricsTestCase):
    def test_a_processed_full_sync_counts_once_by_type_and_outcome_with_its_time_and_lag(self):
        response = self.sender.post(full_payload(STATION_SERIAL, timestamp=now_ts() - 7))

        self.assertEqual(response.status_code, 200, response.content)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="full", outcome="processed"), 1)
        self.assertEqual(self.delta("chargeghar_iot_messages_total"), 1)
        self.assertEqual(self.delta("chargeghar_iot_processing_seconds_count", type="full"), 1)
        self.assertGreater(self.delta("chargeghar_iot_processing_seconds_sum", type="full"), 0)
        self.assertEqual(self.delta("chargeghar_iot_message_lag_seconds_count"), 1)
        lag = self.delta("chargeghar_iot_message_lag_seconds_sum")
        self.assertTrue(6 <= lag < 60, lag)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total"), 0)

    def test_a_repeat_counts_as_duplicate_and_an_older_status_as_stale(self):
        body = compact(status_payload("ONLINE", timestamp=now_ts()))
        older = compact(status_payload("OFFLINE", timestamp=now_ts() - 100))
        for payload in (body, body, older):
            self.assertEqual(self.sender.post(payload).status_code, 200)

        for outcome, count in (("processed", 1), ("duplicate", 1), ("stale", 1)):
            self.assertEqual(self.delta("chargeghar_iot_messages_total", type="status", outcome=outcome), count)
        self.assertEqual(self.delta("chargeghar_iot_processing_seconds_count", type="status"), 3)

    def test_a_body_refused_by_validation_counts_as_rejected_with_its_code(self):
        response = self.sender.post(b'{"type": "full", "timestamp": "yesterday"}')
        self.assertEqual(response.status_code, 400)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="full", outcome="rejected"), 1)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total", code="VALIDATION_ERROR"), 1)

    def test_an_unknown_type_is_counted_under_one_label_whatever_it_is(self):
        for spelling in ("fulll", "x" * 16):
            self.assertEqual(self.sender.post({"type": spelling, "timestamp": now_ts()}).status_code, 400)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="unknown", outcome="rejected"), 2)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total", code="INVALID_TYPE"), 2)
        self.assertFalse([key for key in self.scrape() if ("type", "fulll") in key[1]])

    def test_a_delivery_without_a_token_is_a_rejected_delivery_and_a_not_authenticated_refusal(self):
        response = self.sender.post(full_payload(STATION_SERIAL), HTTP_AUTHORIZATION="")
        self.assertEqual(response.status_code, 401)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="full", outcome="rejected"), 1)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total", code="NOT_AUTHENTICATED"), 1)

    def test_a_failed_delivery_counts_as_failed_and_as_a_5xx(self):
        with (
            mock.patch.object(delivery, "apply_message", side_effect=RuntimeError("boom")),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = self.sender.post(full_payload(STATION_SERIAL))
        self.assertEqual(response.status_code, 500)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="full", outcome="failed"), 1)
        self.assertEqual(self.delta("chargeghar_http_server_errors_total", status="500"), 1)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total"), 0)
        self.assertEqual(self.delta("chargeghar_database_unavailable_total"), 0)

    def test_a_database_outage_before_the_event_log_counts_failed_unavailable_and_503(self):
        outage = OperationalError("could not connect to server: Connection refused")
        with (
            mock.patch.object(event_log, "record", side_effect=outage),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = self.sender.post(full_payload(STATION_SERIAL))
        self.assertEqual(response.status_code, 503)
        self.assertEqual(self.delta("chargeghar_iot_messages_total", type="full", outcome="failed"), 1)
        self.assertEqual(self.delta("chargeghar_database_unavailable_total"), 1)
        self.assertEqual(self.delta("chargeghar_http_server_errors_total", status="503"), 1)

    def test_readyz_counts_an_unreachable_database(self):
        with mock.patch("django.db.backends.base.base.BaseDatabaseWrapper.cursor", side_effect=OperationalError("x")):
            self.assertEqual(self.client.get("/readyz").status_code, 503)
        self.assertEqual(self.delta("chargeghar_database_unavailable_total"), 1)

    def test_counting_adds_no_query_to_a_delivery(self):
        now = now_ts()
        self.assertEqual(self.sender.post(full_payload(STATION_SERIAL, timestamp=now - 2)).status_code, 200)
        body = compact(full_payload(STATION_SERIAL, timestamp=now - 1))
        with override_settings(METRICS_ENABLED=False), CaptureQueriesContext(connection) as without:
            self.assertEqual(self.sender.post(body).status_code, 200)
        body = compact(full_payload(STATION_SERIAL, timestamp=now))
        with CaptureQueriesContext(connection) as with_metrics:
            self.assertEqual(self.sender.post(body).status_code, 200)
        self.assertEqual(len(with_metrics), len(without))

    def test_operators_reprocessing_is_not_a_delivery(self):
        with (
            mock.patch.object(delivery, "apply_message", side_effect=RuntimeError("boom")),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            self.sender.post(full_payload(STATION_SERIAL))
        before = self.scrape()
        delivery.reprocess(IoTEvent.objects.latest("pk"))
        after = self.scrape()
        self.assertEqual(
            after.total("chargeghar_iot_messages_total"), before.total("chargeghar_iot_messages_total")
        )


@SIGNED
class TransportRefusalTests(MetricsTestCase):
    """Refusals by the middleware: not deliveries (no event-log row), but counted by code."""

    def assertRefused(self, response, status: int, code: str):
        self.assertEqual(response.status_code, status, response.content)
        self.assertEqual(response.json()["error"], code)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total", code=code), 1)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total"), 1)
        self.assertEqual(self.delta("chargeghar_iot_messages_total"), 0)

    def test_missing_headers(self):
        self.assertRefused(self.sender.post(full_payload(STATION_SERIAL), sign=False), 403, "MISSING_HEADERS")

    def test_bad_signature(self):
        response = self.sender.post(full_payload(STATION_SERIAL), HTTP_X_SIGNATURE="A" * 44)
        self.assertRefused(response, 403, "INVALID_SIGNATURE")

    def test_timestamp_not_an_integer(self):
        response = self.sender.post(full_payload(STATION_SERIAL), HTTP_X_TIMESTAMP="12.5")
        self.assertRefused(response, 400, "INVALID_TIMESTAMP")

    def test_content_type(self):
        response = self.sender.post(full_payload(STATION_SERIAL), content_type="text/plain")
        self.assertRefused(response, 400, "INVALID_CONTENT_TYPE")

    @override_settings(IOT_MAX_BODY_BYTES=100)
    def test_size(self):
        self.assertRefused(self.sender.post(full_payload(STATION_SERIAL)), 413, "PAYLOAD_TOO_LARGE")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["10.0.0.0/8"])
    def test_address(self):
        self.assertRefused(self.sender.post(full_payload(STATION_SERIAL)), 403, "IP_NOT_ALLOWED")


@SIGNED
class ClockSkewTests(MetricsTestCase):
    def test_skew_is_measured_on_both_sides_of_zero_refused_or_not(self):
        now = now_ts()
        for offset in (-200, 90, 400):  # behind, ahead, ahead beyond the tolerance
            self.sender.post(full_payload(STATION_SERIAL, timestamp=now), timestamp=now + offset)

        self.assertEqual(self.delta("chargeghar_iot_clock_skew_seconds_count"), 3)
        self.assertEqual(self.delta("chargeghar_iot_clock_skew_seconds_bucket", le="-120.0"), 1)
        self.assertEqual(self.delta("chargeghar_iot_clock_skew_seconds_bucket", le="0.0"), 1)
        self.assertEqual(self.delta("chargeghar_iot_clock_skew_seconds_bucket", le="120.0"), 2)
        self.assertEqual(self.delta("chargeghar_iot_clock_skew_seconds_bucket", le="300.0"), 2)
        self.assertEqual(self.delta("chargeghar_iot_rejections_total", code="INVALID_SIGNATURE"), 1)


@override_settings(AXES_FAILURE_LIMIT=2)
class LoginCountTests(MetricsTestCase):
    def test_a_failed_login_through_authenticate_is_counted(self):
        make_staff("admin@chargeghar.test", "right-password-123")
        self.assertIsNone(authenticate(RequestFactory().post("/"), username="admin", password="wrong"))
        self.client.post("/admin/login/", {"username": "admin", "password": "wrong-again"})
        self.assertEqual(self.delta("chargeghar_admin_login_failures_total"), 2)

    def test_failures_and_a_lockout_of_the_login_api_are_counted(self):
        from django.apps import apps

        make_staff("admin@chargeghar.test", "right-password-123")
        statuses = [
            self.client.post(
                "/api/admin/login", {"email": "admin@chargeghar.test", "password": "wrong"}, "application/json"
            ).status_code
            for _ in range(3)
        ]
        self.assertEqual(statuses[0], 401)
        self.assertGreaterEqual(self.delta("chargeghar_admin_login_failures_total"), 2)
        if apps.is_installed("axes"):
            # axes signals the attempt that locks (the 2nd) and the one refused while locked.
            self.assertEqual(statuses[-1], 429, statuses)
            self.assertEqual(self.delta("chargeghar_admin_login_lockouts_total"), 2)

    def test_lockouts_are_counted_through_axes_signal_when_axes_is_installed(self):
        from django.apps import apps

        if apps.is_installed("axes"):
            from axes.signals import user_locked_out

            user_locked_out.send("axes", request=None, username="x", ip_address="127.0.0.1")
            self.assertEqual(self.delta("chargeghar_admin_login_lockouts_total"), 1)
        else:
            # Without axes the receiver is not connected, and connecting again is harmless.
            connect_login_metrics()
            metrics.login_locked_out()
            self.assertEqual(self.delta("chargeghar_admin_login_lockouts_total"), 1)
        self.assertEqual(self.delta("chargeghar_admin_login_failures_total"), 0)

    def test_the_failure_receiver_is_connected_once(self):
        connect_login_metrics()
        user_login_failed.send("test", credentials={"username": "x", "password": "p"}, request=RequestFactory().post("/"))
        self.assertEqual(self.delta("chargeghar_admin_login_failures_total"), 1)


@SIGNED
class AccessTests(MetricsTestCase):
    def test_loopback_may_scrape_by_default(self):
        self.assertIn(("chargeghar_database_up", ()), self.scrape())

    @override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8"])
    def test_anyone_else_gets_403_in_the_envelope(self):
        response = self.client.get("/metrics")
        self.assertEqual(response.status_code, 403)
        self.assertEqual(response.json()["error"], "PERMISSION_DENIED")
        self.assertIs(response.json()["success"], False)

    @override_settings(METRICS_ALLOWED_IPS=["10.0.0.0/8"])
    def test_an_address_in_an_allowed_range_may_scrape(self):
        self.assertEqual(self.client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code, 200)

    @override_settings(METRICS_ALLOWED_IPS=[], METRICS_BEARER_TOKEN="scrape-token-0123456789")
    def test_the_bearer_token_lets_anyone_scrape_and_nothing_else_does(self):
        self.assertEqual(self.client.get("/metrics").status_code, 403)
        for wrong in ("Bearer scrape-token-012345678", "Bearer ", "Basic scrape-token-0123456789", "scrape"):
            with self.subTest(wrong=wrong):
                self.assertEqual(self.client.get("/metrics", HTTP_AUTHORIZATION=wrong).status_code, 403)
        ok = self.client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789")
        self.assertEqual(ok.status_code, 200)

    @override_settings(METRICS_ALLOWED_IPS=["127.0.0.1"], IOT_TRUSTED_PROXIES=["127.0.0.1"])
    def test_behind_a_trusted_proxy_the_forwarded_address_counts(self):
        response = self.client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9")
        self.assertEqual(response.status_code, 403)

    @override_settings(METRICS_ENABLED=False)
    def test_disabled_metrics_are_not_served_and_not_counted(self):
        self.assertEqual(self.client.get("/metrics").status_code, 404)
        self.sender.post(full_payload(STATION_SERIAL))
        with override_settings(METRICS_ENABLED=True):
            self.assertEqual(self.delta("chargeghar_iot_messages_total"), 0)

    def test_only_get(self):
        self.assertEqual(self.client.post("/metrics").status_code, 405)


class FleetGaugeTests(MetricsTestCase):
    def setUp(self):
        super().setUp()
        now = timezone.now()
        silent = now - timedelta(minutes=31)
        fresh = now - timedelta(minutes=1)
        for n, (status, heartbeat) in enumerate(
            [
                (StationStatus.ONLINE, fresh),
                (StationStatus.ONLINE, silent),
                (StationStatus.OFFLINE, silent),
                (StationStatus.MAINTENANCE, silent),
                (StationStatus.OFFLINE, None),
            ]
        ):
            Station.objects.create(
                serial_number=f"86460106995{n:04d}", station_name=f"S{n}", status=status, last_heartbeat=heartbeat
            )
        station = Station.objects.first()
        slots = [StationSlot.objects.create(station=station, slot_number=n) for n in (1, 2, 3)]
        PowerBank.objects.create(serial_number=bank_serial(), current_station=station, current_slot=slots[0])
        PowerBank.objects.create(serial_number=bank_serial(), current_station=station, current_slot=slots[1])
        PowerBank.objects.create(
            serial_number=bank_serial(), current_station=station, current_slot=slots[2], status="DAMAGED"
        )
        package = RentalPackage.objects.create(
            name="1 hour", duration_minutes=60, price="100.00", payment_model=PaymentModel.PREPAID
        )
        # Every PENDING status the model has (PENDING, and PENDING_POPUP where it exists).
        self.pending = [status for status in RentalStatus.values if status.startswith("PENDING")]
        for status, due in (
            (RentalStatus.ACTIVE, now + timedelta(minutes=30)),
            (RentalStatus.ACTIVE, now - timedelta(minutes=5)),  # past due, not marked yet
            (RentalStatus.OVERDUE, now - timedelta(minutes=50)),
            *[(status, now + timedelta(hours=1)) for status in self.pending],
            (RentalStatus.COMPLETED, now - timedelta(hours=1)),
        ):
            Rental.objects.create(
                rental_code=f"R{Rental.objects.count():07d}",
                user=self.staff,
                power_bank=PowerBank.objects.create(serial_number=bank_serial()),
                package=package,
                status=status,
                due_at=due,
            )

    def test_the_fleet_is_read_at_scrape_time(self):
        scrape = self.scrape()
        self.assertEqual(scrape.value("chargeghar_database_up"), 1)
        self.assertEqual(scrape.value("chargeghar_fleet_stations", status="online"), 2)
        self.assertEqual(scrape.value("chargeghar_fleet_stations", status="offline"), 2)
        self.assertEqual(scrape.value("chargeghar_fleet_stations", status="maintenance"), 1)
        self.assertEqual(scrape.value("chargeghar_fleet_stations_silent"), 2)
        self.assertEqual(scrape.value("chargeghar_fleet_power_banks_ready"), 2)
        self.assertEqual(scrape.value("chargeghar_fleet_rentals", status="open"), 3)
        self.assertEqual(scrape.value("chargeghar_fleet_rentals", status="overdue"), 2)
        self.assertEqual(scrape.value("chargeghar_fleet_rentals", status="pending"), len(self.pending))
        if connection.vendor == "postgresql":
            # The statistics' estimate, which does not see this test's uncommitted rows.
            self.assertIn(("chargeghar_iot_event_log_rows", ()), scrape)
        else:
            self.assertEqual(scrape.value("chargeghar_iot_event_log_rows"), IoTEvent.objects.count())

    def test_one_query_per_figure(self):
        # On PostgreSQL the test table has never been analyzed: the estimate falls back to
        # the statistics' live rows within the same query, never to a count.
        with CaptureQueriesContext(connection) as queries:
            self.scrape()
        self.assertEqual(len(queries), 4, [q["sql"] for q in queries])

    def test_a_database_that_cannot_answer_leaves_the_fleet_out_and_the_counters_in(self):
        with (
            mock.patch("api.stations.selectors.station_counts_by_status", side_effect=OperationalError("down")),
            self.assertLogs("main_app.metrics", "WARNING"),
        ):
            scrape = self.scrape()
        self.assertEqual(scrape.value("chargeghar_database_up"), 0)
        self.assertNotIn(("chargeghar_fleet_power_banks_ready", ()), scrape)
        self.assertIn(("chargeghar_iot_messages_total", (("outcome", "processed"), ("type", "full"))), scrape)


@SIGNED
class RequestIdTests(MetricsTestCase):
    def test_a_plausible_request_id_is_sent_back_and_others_are_replaced(self):
        response = self.sender.post(full_payload(STATION_SERIAL), HTTP_X_REQUEST_ID="abc-123.DEF:9")
        self.assertEqual(response["X-Request-ID"], "abc-123.DEF:9")
        for bad in ("", "two words", "x" * 129, "evil\r\nSet-Cookie: a=b"):
            with self.subTest(bad=bad):
                response = self.sender.post(full_payload(STATION_SERIAL), HTTP_X_REQUEST_ID=bad)
                self.assertRegex(response["X-Request-ID"], r"^[0-9a-f]{32}$")

    def test_a_refusal_by_the_middleware_carries_one_too(self):
        response = self.sender.post(full_payload(STATION_SERIAL), sign=False)
        self.assertEqual(response.status_code, 403)
        self.assertRegex(response["X-Request-ID"], r"^[0-9a-f]{32}$")

    def test_the_context_is_gone_after_the_request(self):
        self.sender.post(full_payload(STATION_SERIAL))
        self.assertIsNone(request_context.current())


@SIGNED
class DeliveryLogTests(MetricsTestCase):
    """One line per delivery; in JSON, its fields as fields, and never a credential."""

    def capture(self):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(request_context.JsonFormatter())
        loggers = [logging.getLogger(name) for name in ("api.stations.ingest.delivery", "main_app.middleware")]
        for logger in loggers:
            logger.addHandler(handler)
        self.addCleanup(lambda: [logger.removeHandler(handler) for logger in loggers])
        return stream

    def lines(self, stream) -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    def test_a_delivery_writes_one_json_line_with_its_fields(self):
        stream = self.capture()
        response = self.sender.post(full_payload(STATION_SERIAL), HTTP_X_REQUEST_ID="req-42")
        self.assertEqual(response.status_code, 200)

        (line,) = self.lines(stream)
        event = IoTEvent.objects.latest("pk")
        self.assertEqual(line["level"], "INFO")
        self.assertEqual(line["logger"], "api.stations.ingest.delivery")
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
        self.assertIn(f"event {event.pk}", line["message"])
        self.assertEqual(line["request_id"], "req-42")
        self.assertEqual(line["event_id"], event.pk)
        self.assertEqual(line["message_type"], "full")
        self.assertEqual(line["station_serial"], STATION_SERIAL)
        self.assertEqual(line["outcome"], "processed")
        self.assertEqual(line["http_status"], 200)
        self.assertGreater(line["duration_ms"], 0)

    def test_no_secret_token_or_signature_reaches_a_log_line(self):
        stream = self.capture()
        body = compact(full_payload(STATION_SERIAL))
        self.sender.post(body)
        self.sender.post(body, HTTP_X_SIGNATURE="B" * 44)  # refused by the middleware
        self.sender.post(body, HTTP_AUTHORIZATION="Bearer not-a-real-token-value")

        text = stream.getvalue()
        self.assertEqual(len(self.lines(stream)), 3)
        token = self.sender.authorization.split()[1]
        for secret in (TEST_SECRET, token, "not-a-real-token-value", "B" * 44, "s3cret-pass-123"):
            self.assertNotIn(secret, text)

    def test_the_plain_line_names_the_same_facts(self):
        with self.assertLogs("api.stations.ingest.delivery", "INFO") as logs:
            self.sender.post(status_payload("ONLINE"))
        (message,) = logs.output
        self.assertIn("status from 864601069946994, processed, HTTP 200 in", message)

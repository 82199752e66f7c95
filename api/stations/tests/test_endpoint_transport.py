"""
The station data endpoint's answers to every kind of bad request (docs/contract.md, section 3).

Requests go through the real URL, middleware and view with signature verification on.
Each rejection test pins the status and error code, the exact envelope, and that nothing
changed but the event log: rejections by the middleware (before the signature passed)
leave no event row; rejections after it leave exactly one REJECTED row with the answer.
"""

from datetime import timedelta
from unittest import mock

from django.contrib.auth import get_user_model
from django.db import OperationalError
from django.http.request import HttpRequest
from django.test import TestCase, override_settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from api.rentals.models import PaymentModel, Rental, RentalPackage
from api.rentals.services.rental_service import RentalService
from api.stations.ingest import delivery
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    Station,
    StationSlot,
    StationStatusHistory,
)
from api.stations.services.utils import sign_chargeghar_main as sign_module
from api.stations.tests.factories import (
    ENDPOINT,
    TEST_SECRET,
    SenderClient,
    bank_serial,
    bearer_for,
    compact,
    full_payload,
    make_staff,
    now_ts,
    status_payload,
)
from iot_tools.wire import sign

OLD_SECRET = "previous-signing-secret-still-accepted-0123456789"
UNKNOWN_SECRET = "a-secret-this-server-has-never-been-told-about-000"
EXISTING_SERIAL = "864601069946000"
NEW_SERIAL = "864601069946994"
TOLERANCE = 300
DOMAIN_MODELS = (Station, StationSlot, PowerBank, Rental, StationStatusHistory)


def frozen_clock(timestamp: int):
    """The signature check sees `time.time()` as a fraction past `timestamp`."""
    return mock.patch.object(sign_module, "time", mock.Mock(time=mock.Mock(return_value=timestamp + 0.75)))


# Stand-in for "use the default" where None means "leave the header out".
DEFAULT = object()


@override_settings(
    IOT_SIGNATURE_VERIFICATION=True,
    IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET,
    IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[],
    IOT_SYSTEM_ALLOWED_IPS=[],
    IOT_TRUSTED_PROXIES=[],
    IOT_SIGNATURE_TOLERANCE_SECONDS=TOLERANCE,
    IOT_MAX_BODY_BYTES=1024 * 1024,
)
class EndpointTestCase(TestCase):
    """A station with banks, a rental and history already exist, so counts are not zero."""

    @classmethod
    def setUpTestData(cls):
        cls.staff = make_staff()
        cls.customer = get_user_model().objects.create_user(
            username="customer", email="customer@chargeghar.test", password="x-pass-12345"
        )
        station = Station.objects.create(
            serial_number=EXISTING_SERIAL, imei=EXISTING_SERIAL, station_name="Thamel"
        )
        slot_1 = StationSlot.objects.create(station=station, slot_number=1, status="OCCUPIED")
        slot_2 = StationSlot.objects.create(station=station, slot_number=2, status="OCCUPIED")
        PowerBank.objects.create(serial_number=bank_serial(), current_station=station, current_slot=slot_1)
        # Rented from slot 2: a rental ejects its bank from a cabinet (the test settings' cabinet ejects at once).
        rented = PowerBank.objects.create(serial_number=bank_serial(), current_station=station, current_slot=slot_2)
        package = RentalPackage.objects.create(
            name="1 hour", duration_minutes=60, price="100.00", payment_model=PaymentModel.PREPAID
        )
        RentalService.start_rental(user=cls.customer, power_bank=rented, package=package)
        StationStatusHistory.objects.create(
            station=station, status="ONLINE", changed_at=timezone.now(), trigger="FULL_SYNC"
        )

    def setUp(self):
        self.client = APIClient()
        self.authorization = bearer_for(self.staff)
        self.before = self.domain_counts()
        self.last_event_id = IoTEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def domain_counts() -> dict[str, int]:
        return {model.__name__: model.objects.count() for model in DOMAIN_MODELS}

    @staticmethod
    def new_station_body(**overrides) -> bytes:
        """A full sync that would create a station, a slot, a bank and a history row."""
        payload = full_payload(NEW_SERIAL, banks={1: (bank_serial(), 80)}, total_slots=2)
        payload.update(overrides)
        return compact(payload)

    def post(
        self,
        body: bytes | dict | None = None,
        *,
        timestamp: int | None = None,
        secret: str = TEST_SECRET,
        signature=DEFAULT,
        x_timestamp=DEFAULT,
        authorization=DEFAULT,
        path: str = ENDPOINT,
        content_type: str = "application/json",
        **meta,
    ):
        """Post as the sender does; any header can be replaced, or left out with None."""
        if body is None:
            body = self.new_station_body()
        elif isinstance(body, dict):
            body = compact(body)
        timestamp = now_ts() if timestamp is None else timestamp
        headers = {}
        for name, value, default in (
            ("HTTP_AUTHORIZATION", authorization, self.authorization),
            ("HTTP_X_TIMESTAMP", x_timestamp, str(timestamp)),
            ("HTTP_X_SIGNATURE", signature, DEFAULT),
        ):
            value = default if value is DEFAULT else value
            if value is DEFAULT:
                value = sign(secret, body, timestamp)
            if value is not None:
                headers[name] = value
        headers.update(meta)
        return self.client.generic("POST", path, data=body, content_type=content_type, **headers)

    def assertEnvelope(self, response, status: int, code: str) -> dict:
        self.assertEqual(response.status_code, status, response.content)
        self.assertEqual(response["Content-Type"], "application/json")
        body = response.json()
        expected_keys = {"success", "message", "error"}
        if code == "VALIDATION_ERROR":
            expected_keys.add("errors")
        self.assertEqual(set(body), expected_keys, body)
        self.assertIs(body["success"], False)
        self.assertEqual(body["error"], code)
        self.assertIsInstance(body["message"], str)
        self.assertTrue(body["message"].strip())
        text = response.content.decode("utf-8")
        for leak in ("Traceback", 'File "', TEST_SECRET):
            self.assertNotIn(leak, text)
        return body

    def new_events(self) -> list[IoTEvent]:
        events = list(IoTEvent.objects.filter(pk__gt=self.last_event_id).order_by("pk"))
        if events:
            self.last_event_id = events[-1].pk
        return events

    def assertRejectedBeforeSignature(self, response, status: int, code: str) -> dict:
        body = self.assertEnvelope(response, status, code)
        self.assertEqual(self.domain_counts(), self.before)
        self.assertEqual(self.new_events(), [], "rejected before the signature: not logged")
        return body

    def assertRejectedAfterSignature(self, response, status: int, code: str) -> dict:
        body = self.assertEnvelope(response, status, code)
        self.assertEqual(self.domain_counts(), self.before)
        events = self.new_events()
        self.assertEqual(len(events), 1, "rejected after the signature: exactly one row")
        event = events[0]
        self.assertEqual(event.outcome, IoTEventOutcome.REJECTED)
        self.assertEqual(event.http_status, status)
        self.assertEqual(event.response_data, body)
        self.assertIsNone(event.duplicate_of_id)
        return body

    def assertAccepted(self, response) -> IoTEvent:
        self.assertEqual(response.status_code, 200, response.content)
        self.assertIs(response.json()["success"], True)
        events = self.new_events()
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].outcome, IoTEventOutcome.PROCESSED)
        self.assertTrue(Station.objects.filter(serial_number=NEW_SERIAL).exists())
        return events[0]


class AcceptedRequestTests(EndpointTestCase):
    """The harness itself: a correctly signed request from the sender is applied."""

    def test_signed_full_sync_from_staff_token_is_applied(self):
        response = self.post()

        event = self.assertAccepted(response)
        data = response.json()["data"]
        self.assertEqual(data["station_serial"], NEW_SERIAL)
        self.assertEqual(data["slots_updated"], 2)
        self.assertEqual(data["powerbanks_updated"], 1)
        self.assertIs(data["applied"], True)
        self.assertEqual(event.http_status, 200)
        self.assertEqual(self.domain_counts()["Station"], self.before["Station"] + 1)

    def test_sender_client_from_the_factories_is_accepted(self):
        response = SenderClient(self.staff).post(full_payload(NEW_SERIAL))

        self.assertAccepted(response)

    def test_path_with_trailing_slash_is_served_too(self):
        self.assertAccepted(self.post(path=ENDPOINT + "/"))

    def test_content_type_with_charset_is_json(self):
        response = self.post(content_type="application/json; charset=utf-8")

        self.assertAccepted(response)

    def test_any_accept_header_is_answered_in_json_and_the_message_applied(self):
        for accept in ("text/html", "application/xml;q=0.9", "*/*", "application/json; indent=4"):
            with self.subTest(accept=accept):
                Station.objects.filter(serial_number=NEW_SERIAL).delete()
                IoTEvent.objects.all().delete()
                response = self.post(HTTP_ACCEPT=accept)

                self.assertEqual(response["Content-Type"], "application/json")
                self.assertAccepted(response)


class IpAllowlistTests(EndpointTestCase):
    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"])
    def test_address_outside_the_allowlist_is_refused(self):
        response = self.post(REMOTE_ADDR="198.51.100.1")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7", "10.0.0.0/8"])
    def test_address_inside_an_allowed_cidr_range_is_let_through(self):
        event = self.assertAccepted(self.post(REMOTE_ADDR="10.1.2.3"))

        self.assertEqual(event.source_ip, "10.1.2.3")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["10.0.0.0/8"])
    def test_address_just_outside_an_allowed_cidr_range_is_refused(self):
        response = self.post(REMOTE_ADDR="11.0.0.1")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["2001:db8::/32"])
    def test_ipv6_address_inside_an_allowed_range_is_let_through(self):
        event = self.assertAccepted(self.post(REMOTE_ADDR="2001:db8::5"))

        self.assertEqual(event.source_ip, "2001:db8::5")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["2001:db8::/32"])
    def test_ipv6_address_outside_the_allowed_range_is_refused(self):
        response = self.post(REMOTE_ADDR="2001:db9::5")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"], IOT_TRUSTED_PROXIES=["10.0.0.2"])
    def test_forwarded_for_from_an_untrusted_peer_does_not_pass_the_allowlist(self):
        response = self.post(REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR="203.0.113.7")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"], IOT_TRUSTED_PROXIES=["10.0.0.0/24"])
    def test_forwarded_for_from_a_trusted_proxy_passes_the_allowlist(self):
        response = self.post(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7")

        event = self.assertAccepted(response)
        self.assertEqual(event.source_ip, "203.0.113.7")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"], IOT_TRUSTED_PROXIES=["10.0.0.0/24"])
    def test_client_supplied_forwarded_for_behind_a_trusted_proxy_is_not_believed(self):
        # The proxy appends the real peer (198.51.100.9); the left entry is the client's claim.
        response = self.post(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7, 198.51.100.9")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"], IOT_TRUSTED_PROXIES=["10.0.0.0/24"])
    def test_garbled_forwarded_for_from_a_trusted_proxy_is_refused(self):
        response = self.post(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.7, junk")

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")


class SignatureHeaderTests(EndpointTestCase):
    def test_missing_signature_header_is_refused(self):
        response = self.post(signature=None)

        self.assertRejectedBeforeSignature(response, 403, "MISSING_HEADERS")

    def test_missing_timestamp_header_is_refused(self):
        response = self.post(x_timestamp=None)

        self.assertRejectedBeforeSignature(response, 403, "MISSING_HEADERS")

    def test_empty_signature_header_counts_as_missing(self):
        response = self.post(signature="")

        self.assertRejectedBeforeSignature(response, 403, "MISSING_HEADERS")

    def test_unsigned_request_to_the_trailing_slash_path_is_refused_too(self):
        response = self.post(path=ENDPOINT + "/", signature=None, x_timestamp=None)

        self.assertRejectedBeforeSignature(response, 403, "MISSING_HEADERS")

    def test_timestamp_that_is_not_a_plain_integer_is_refused(self):
        for value in ("12.5", "abc", "-5", " 123", "123 ", "1e9", "+123", "0x10", "١٢٣"):
            with self.subTest(x_timestamp=value):
                response = self.post(x_timestamp=value)

                self.assertRejectedBeforeSignature(response, 400, "INVALID_TIMESTAMP")


class FreshnessAndSignatureTests(EndpointTestCase):
    def setUp(self):
        super().setUp()
        self.now = now_ts()

    def test_timestamp_older_than_the_tolerance_is_refused_as_old(self):
        with frozen_clock(self.now):
            response = self.post(timestamp=self.now - TOLERANCE - 1)

        body = self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")
        self.assertIn("old", body["message"])

    def test_timestamp_further_in_the_future_than_the_tolerance_is_refused_as_future(self):
        with frozen_clock(self.now):
            response = self.post(timestamp=self.now + TOLERANCE + 1)

        body = self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")
        self.assertIn("future", body["message"])

    def test_timestamps_at_the_tolerance_are_accepted(self):
        with frozen_clock(self.now):
            old = self.post(timestamp=self.now - TOLERANCE)
            future = self.post(timestamp=self.now + TOLERANCE)

        self.assertEqual(old.status_code, 200, old.content)
        self.assertEqual(future.status_code, 200, future.content)

    def test_wrong_signature_is_refused(self):
        other_body = self.new_station_body()
        response = self.post(signature=sign(TEST_SECRET, other_body, now_ts()))

        self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")

    def test_body_changed_after_signing_is_refused(self):
        body = self.new_station_body()
        signature = sign(TEST_SECRET, body, self.now)
        tampered = body.replace(b'"battery_level":80', b'"battery_level":81', 1)
        self.assertNotEqual(tampered, body)

        with frozen_clock(self.now):
            response = self.post(tampered, timestamp=self.now, signature=signature)

        self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")

    def test_signature_over_the_same_body_with_another_timestamp_is_refused(self):
        body = self.new_station_body()
        with frozen_clock(self.now):
            response = self.post(
                body,
                timestamp=self.now,
                signature=sign(TEST_SECRET, body, self.now - 1),
            )

        self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")

    def test_signature_by_an_unknown_secret_is_refused(self):
        response = self.post(secret=UNKNOWN_SECRET)

        self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")

    @override_settings(IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[OLD_SECRET])
    def test_signature_by_the_previous_secret_is_accepted_during_rotation(self):
        response = SenderClient(self.staff, secret=OLD_SECRET).post(full_payload(NEW_SERIAL))

        self.assertAccepted(response)

    def test_rejection_log_line_carries_neither_signature_nor_token(self):
        signature = sign(UNKNOWN_SECRET, b"{}", self.now)
        with self.assertLogs("main_app.middleware", "WARNING") as logs:
            self.post(signature=signature)

        output = "\n".join(logs.output)
        self.assertIn("INVALID_SIGNATURE", output)
        self.assertNotIn(signature, output)
        self.assertNotIn(self.authorization.split()[1], output)


class ContentTypeAndSizeTests(EndpointTestCase):
    def test_text_plain_body_is_refused(self):
        response = self.post(content_type="text/plain")

        self.assertRejectedBeforeSignature(response, 400, "INVALID_CONTENT_TYPE")

    def test_form_encoded_body_is_refused(self):
        response = self.post(content_type="application/x-www-form-urlencoded")

        self.assertRejectedBeforeSignature(response, 400, "INVALID_CONTENT_TYPE")

    @override_settings(IOT_MAX_BODY_BYTES=512)
    def test_body_over_the_limit_is_refused_without_being_read(self):
        body = self.new_station_body()
        self.assertGreater(len(body), 512)

        with mock.patch.object(
            HttpRequest, "body", new_callable=mock.PropertyMock, return_value=body
        ) as body_read:
            response = self.post(body)

        self.assertRejectedBeforeSignature(response, 413, "PAYLOAD_TOO_LARGE")
        body_read.assert_not_called()

    @override_settings(IOT_MAX_BODY_BYTES=512)
    def test_declared_content_length_over_the_limit_is_refused_before_reading(self):
        # The body is small; reading the declared 513 bytes from it would fail the test
        # client's payload ("Cannot read more than the available bytes").
        response = self.post(b"{}", CONTENT_LENGTH="513")

        self.assertRejectedBeforeSignature(response, 413, "PAYLOAD_TOO_LARGE")

    def test_body_exactly_at_the_limit_passes_the_size_check(self):
        body = self.new_station_body()
        with override_settings(IOT_MAX_BODY_BYTES=len(body)):
            response = self.post(body)

        self.assertAccepted(response)


class BodyTests(EndpointTestCase):
    def test_body_that_is_not_json_is_refused(self):
        response = self.post(b'{"type":"full",')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_body_that_is_not_utf8_is_refused(self):
        response = self.post(b'{"type":"full","note":"\xff\xfe"}')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")
        event = IoTEvent.objects.get()
        self.assertIsNone(event.payload)
        self.assertIn('"type":"full"', event.raw_body)

    def test_body_with_a_raw_nul_byte_is_refused_and_logged(self):
        # PostgreSQL text cannot hold NUL: the log row must still be written (rule 1),
        # and the answer is the 400 of any non-JSON body, not a 500.
        response = self.post(b'{"type":"full","device":{"serial_number":"1\x00"}}')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")
        event = IoTEvent.objects.get()
        self.assertNotIn("\x00", event.raw_body)
        self.assertIn('"type":"full"', event.raw_body)

    def test_body_neither_utf8_nor_free_of_nul_is_refused_and_logged(self):
        response = self.post(b'{"type":"full","note":"\xff\x00"}')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_escaped_nul_in_a_json_string_is_refused(self):
        response = self.post(b'{"type":"status","timestamp":1762906100,"note":"\\u0000"}')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_deeply_nested_json_is_refused_and_logged(self):
        # 900 levels still decode, but encoding the log row would exhaust the recursion
        # limit (a 500 and no row); 5000 levels do not even decode.
        prefix = compact(status_payload("ONLINE", NEW_SERIAL))[:-1] + b',"extra":'
        for depth in (900, 5000):
            with self.subTest(depth=depth):
                response = self.post(prefix + b"[" * depth + b"]" * depth + b"}")

                self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_json_array_is_refused(self):
        response = self.post(b'[{"type":"full"}]')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_json_nan_is_refused(self):
        response = self.post(b'{"type":"status","timestamp":NaN}')

        self.assertRejectedAfterSignature(response, 400, "INVALID_JSON")

    def test_unknown_type_is_refused(self):
        response = self.post(status_payload("ONLINE", NEW_SERIAL) | {"type": "reboot"})

        self.assertRejectedAfterSignature(response, 400, "INVALID_TYPE")
        self.assertEqual(IoTEvent.objects.get().message_type, "reboot")

    def test_missing_type_is_refused(self):
        payload = status_payload("ONLINE", NEW_SERIAL)
        del payload["type"]

        response = self.post(payload)

        self.assertRejectedAfterSignature(response, 400, "INVALID_TYPE")


class ValidationTests(EndpointTestCase):
    @staticmethod
    def full(**banks) -> dict:
        return full_payload(NEW_SERIAL, banks=banks or {1: (bank_serial(), 80)}, total_slots=2)

    def assertFieldErrors(self, payload: dict, *fields: str) -> dict:
        response = self.post(payload)
        body = self.assertRejectedAfterSignature(response, 400, "VALIDATION_ERROR")
        for field in fields:
            self.assertIn(field, body["errors"])
            self.assertTrue(all(isinstance(m, str) and m for m in body["errors"][field]))
        self.assertIn(fields[0], IoTEvent.objects.get(pk=self.last_event_id).error)
        return body

    def test_battery_level_over_100_is_refused(self):
        payload = self.full()
        payload["slots"][0]["battery_level"] = 101

        self.assertFieldErrors(payload, "slots.0.battery_level")

    def test_slot_number_over_48_is_refused(self):
        payload = self.full()
        payload["slots"][1]["slot_number"] = 49

        self.assertFieldErrors(payload, "slots.1.slot_number")

    def test_serial_with_a_space_is_refused(self):
        payload = self.full()
        payload["device"]["serial_number"] = "864601 069946994"

        self.assertFieldErrors(payload, "device.serial_number")

    def test_slot_listed_twice_is_refused(self):
        payload = self.full()
        payload["slots"][1]["slot_number"] = 1

        self.assertFieldErrors(payload, "slots.1.slot_number")

    def test_bank_in_two_slots_is_refused(self):
        serial = bank_serial()
        payload = full_payload(NEW_SERIAL, banks={1: (serial, 80)}, total_slots=2)
        payload["slots"][1].update(status="OCCUPIED", power_bank_serial=serial, battery_level=80)

        self.assertFieldErrors(payload, "slots.1.power_bank_serial")

    def test_slots_and_power_banks_disagreeing_is_refused(self):
        payload = self.full()
        payload["power_banks"][0]["current_slot"] = 2

        self.assertFieldErrors(payload, "power_banks.0.current_slot")

    def test_more_than_48_slots_is_refused(self):
        payload = full_payload(NEW_SERIAL, total_slots=48)
        payload["slots"].append(dict(payload["slots"][0], slot_number=1))

        self.assertFieldErrors(payload, "slots")

    def test_every_invalid_field_is_named(self):
        payload = self.full()
        payload["slots"][0]["battery_level"] = 101
        payload["slots"][1]["slot_number"] = 49
        payload["timestamp"] = "yesterday"

        body = self.assertFieldErrors(payload, "slots.0.battery_level", "slots.1.slot_number", "timestamp")
        self.assertEqual(len(body["errors"]), 3, body["errors"])

    def test_returned_message_without_return_event_is_refused(self):
        payload = {
            "type": "returned",
            "timestamp": now_ts(),
            "device": {"serial_number": NEW_SERIAL},
        }

        self.assertFieldErrors(payload, "return_event")


class BearerTokenTests(EndpointTestCase):
    def assertNotAuthenticated(self, response):
        self.assertRejectedAfterSignature(response, 401, "NOT_AUTHENTICATED")
        self.assertTrue(response["WWW-Authenticate"].startswith("Bearer"), response["WWW-Authenticate"])

    def test_missing_token_answers_401_with_a_bearer_challenge(self):
        self.assertNotAuthenticated(self.post(authorization=None))

    def test_malformed_token_answers_401(self):
        self.assertNotAuthenticated(self.post(authorization="Bearer not-a-jwt"))

    def test_other_auth_scheme_answers_401(self):
        self.assertNotAuthenticated(self.post(authorization="Basic aW90OnNlY3JldA=="))

    def test_expired_token_answers_401(self):
        token = AccessToken.for_user(self.staff)
        token.set_exp(from_time=timezone.now() - timedelta(days=1))

        self.assertNotAuthenticated(self.post(authorization=f"Bearer {token}"))

    def test_token_of_a_deactivated_user_answers_401(self):
        self.staff.is_active = False
        self.staff.save(update_fields=["is_active"])

        self.assertNotAuthenticated(self.post())

    def test_valid_token_of_a_non_staff_user_answers_403(self):
        response = self.post(authorization=bearer_for(self.customer))

        self.assertRejectedAfterSignature(response, 403, "PERMISSION_DENIED")


class ServerErrorTests(EndpointTestCase):
    def assertFailed(self, response, status: int, code: str) -> tuple[dict, IoTEvent]:
        body = self.assertEnvelope(response, status, code)
        self.assertEqual(self.domain_counts(), self.before)
        events = self.new_events()
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual(event.outcome, IoTEventOutcome.FAILED)
        self.assertEqual(event.http_status, status)
        self.assertEqual(event.response_data, body)
        return body, event

    def test_unreachable_database_answers_503_with_retry_after(self):
        outage = OperationalError("could not connect to server: Connection refused")
        with (
            mock.patch.object(delivery, "apply_message", side_effect=outage),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = self.post()

        body, event = self.assertFailed(response, 503, "SERVICE_UNAVAILABLE")
        self.assertEqual(response["Retry-After"], "5")
        self.assertNotIn("connect", body["message"].lower())
        self.assertIn("Connection refused", event.error)

    @override_settings(IOT_RETRY_AFTER_SECONDS=17)
    def test_retry_after_follows_the_setting(self):
        outage = OperationalError("server closed the connection unexpectedly")
        with (
            mock.patch.object(delivery, "apply_message", side_effect=outage),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = self.post()

        self.assertFailed(response, 503, "SERVICE_UNAVAILABLE")
        self.assertEqual(response["Retry-After"], "17")

    def test_unexpected_exception_answers_500_naming_the_event_and_nothing_else(self):
        crash = RuntimeError("internal detail: /srv/app/secret.py line 42")
        with (
            mock.patch.object(delivery, "apply_message", side_effect=crash),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            response = self.post()

        body, event = self.assertFailed(response, 500, "INTERNAL_ERROR")
        self.assertIn(f"event {event.pk}", body["message"])
        for leak in ("internal detail", "secret.py", "RuntimeError"):
            self.assertNotIn(leak, response.content.decode())
        self.assertIn("Traceback", event.error)
        self.assertIn("internal detail: /srv/app/secret.py line 42", event.error)


class CheckOrderTests(EndpointTestCase):
    """IP allowlist, then signature, then bearer token, then validation (docs/contract.md, section 3)."""

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"])
    def test_bad_address_is_reported_before_a_bad_signature(self):
        response = self.post(REMOTE_ADDR="198.51.100.1", secret=UNKNOWN_SECRET)

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    @override_settings(IOT_SYSTEM_ALLOWED_IPS=["203.0.113.7"])
    def test_bad_address_is_reported_before_missing_headers(self):
        response = self.post(REMOTE_ADDR="198.51.100.1", signature=None, x_timestamp=None)

        self.assertRejectedBeforeSignature(response, 403, "IP_NOT_ALLOWED")

    def test_bad_signature_is_reported_before_a_missing_token(self):
        response = self.post(secret=UNKNOWN_SECRET, authorization=None)

        self.assertRejectedBeforeSignature(response, 403, "INVALID_SIGNATURE")

    def test_missing_token_is_reported_before_an_invalid_body(self):
        payload = full_payload(NEW_SERIAL)
        payload["slots"][0]["battery_level"] = 101

        response = self.post(payload, authorization=None)

        self.assertRejectedAfterSignature(response, 401, "NOT_AUTHENTICATED")

    def test_missing_token_is_reported_before_a_body_that_is_not_json(self):
        response = self.post(b"not json", authorization=None)

        self.assertRejectedAfterSignature(response, 401, "NOT_AUTHENTICATED")

    def test_non_staff_token_is_reported_before_an_unknown_type(self):
        response = self.post(
            status_payload("ONLINE", NEW_SERIAL) | {"type": "reboot"},
            authorization=bearer_for(self.customer),
        )

        self.assertRejectedAfterSignature(response, 403, "PERMISSION_DENIED")

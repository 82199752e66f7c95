"""
The wire module and the reference sender (`iot_tools`), `manage.py iot_send` and
`manage.py simulate_stations`.

The fleet model and the client's retry rules are tested without a server; the commands are
tested against a live server (Django's `LiveServerTestCase`) with signature checking on.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
from collections import Counter
from functools import partial
from io import StringIO
from pathlib import Path
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import LiveServerTestCase, SimpleTestCase, override_settings

from api.rentals.models import PaymentModel, Rental, RentalPackage, RentalStatus
from api.stations.management.commands import iot_send
from api.stations.models import IoTEvent, IoTEventOutcome, PowerBank, Station
from api.stations.services.schemas import parse_message
from api.stations.services.utils.sign_chargeghar_main import SignChargeGharMain
from api.stations.tests.factories import iot_system_group
from iot_tools import wire
from iot_tools.client import LOGIN_PATH, IoTSender
from iot_tools.simulator import Fleet, FleetConfig, Message, Take, luhn_check_digit
from iot_tools.wire import DATA_PATH, compact_json

PROJECT_ROOT = Path(__file__).resolve().parents[3]
MESSAGES_DIR = PROJECT_ROOT / "contrib" / "messages"
SECRET = "iot-tools-test-secret-0123456789abcdef0123456789"
assert len(SECRET) == 48
EMAIL = "iot-sender@chargeghar.test"
PASSWORD = "sender-pass-12345"
START = 1_762_905_971.0


# --- The client, against a scripted transport ------------------------------------------


class _Response(io.BytesIO):
    def __init__(self, status: int, payload):
        super().__init__(json.dumps(payload).encode())
        self.status = status


class ScriptedOpener:
    """Stands in for urllib's opener: answers logins with tokens, data posts from a script."""

    def __init__(self, *data_answers):
        self.data_answers = list(data_answers)
        self.data_requests = []
        self.logins = 0

    def open(self, request, timeout):
        if request.full_url.endswith(LOGIN_PATH):
            self.logins += 1
            token = f"token-{self.logins}"
            return _Response(200, {"data": {"access_token": token, "refresh_token": "r"}})
        self.data_requests.append(request)
        answer = self.data_answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, payload = answer
        if status == 200:
            return _Response(200, payload)
        raise urllib.error.HTTPError(request.full_url, status, "", {}, _Response(status, payload))


class FakeClock:
    def __init__(self, now: float):
        self.now = now
        self.slept = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def scripted_sender(opener, clock=None):
    clock = clock or FakeClock(START)
    return IoTSender("http://127.0.0.1:1", EMAIL, PASSWORD, SECRET, session=opener, clock=clock, sleep=clock.sleep)


def header(request, name):
    return dict(request.header_items())[name.capitalize()]


class WireTests(SimpleTestCase):
    def test_compact_json_is_the_senders_byte_form(self):
        body = compact_json({"type": "status", "device": {"error_message": "孔位异常：0X04", "a": 1}})
        self.assertEqual(body, '{"type":"status","device":{"error_message":"孔位异常：0X04","a":1}}'.encode())

    def test_the_builders_write_the_example_messages_field_for_field(self):
        stamp = "2025-11-12T00:06:11.126Z"
        full = wire.full_message(
            "864601069946994",
            [
                wire.SlotState(1, "40818048", 40, temperature=22, error=("0x04", "孔位异常：0X04")),
                wire.SlotState(2, "40818052", 100),
                wire.SlotState(3, "408180617", 85, temperature=24, lock_count=2),
                wire.SlotState(4, lock_count=1),
            ],
            timestamp=1762905971,
            last_heartbeat=stamp,
            slots_updated_at=stamp,
        )
        returned = wire.returned_message(
            "864601069946994", "40818099", 4, battery=100, timestamp=1762906000,
            returned_at="2025-11-12T00:06:40.512Z",
        )
        status = wire.status_message("864601069946994", "OFFLINE", timestamp=1762906100)
        for name, built in (("full.json", full), ("returned.json", returned), ("status.json", status)):
            with self.subTest(name):
                example = json.loads((MESSAGES_DIR / name).read_text("utf-8"))
                self.assertEqual(compact_json(built), compact_json(example))
                parse_message(built)

    def test_times_are_written_as_javas_instant_writes_them(self):
        self.assertEqual(wire.iso_utc(1762905971.126), "2025-11-12T00:06:11.126Z")
        self.assertEqual(wire.iso_utc(1762905971), "2025-11-12T00:06:11Z")

    def test_signed_headers_pass_the_servers_check(self):
        body = compact_json(wire.status_message("864601069946994", "ONLINE", timestamp=1762905971))
        headers = wire.signed_headers(SECRET, body, 1762905971, authorization="Bearer t")
        self.assertEqual(
            list(headers), ["Content-Type", "Accept", "Authorization", "X-Timestamp", "X-Signature"]
        )
        self.assertEqual(headers["X-Timestamp"], "1762905971")
        with mock.patch("time.time", return_value=1762905971.5):
            result = SignChargeGharMain(secret_key=SECRET).validate_signature(
                body, int(headers["X-Timestamp"]), headers["X-Signature"]
            )
        self.assertEqual(result, (True, ""))


    def test_iot_tools_and_the_bench_import_without_django(self):
        # The bench runs in the seed baseline's virtualenv too, and the tools outside Django.
        code = (
            "import sys; sys.path.insert(0, 'bench'); import bench, iot_tools.client, iot_tools.simulator; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'api', 'main_app')))"
        )
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "[]"), done.stderr)


class IoTClientTests(SimpleTestCase):
    def test_timeouts_are_retried_with_the_identical_body_and_fresh_signatures(self):
        opener = ScriptedOpener(TimeoutError(), TimeoutError(), TimeoutError())
        clock = FakeClock(START)
        result = scripted_sender(opener, clock).send(b'{"type":"status"}')

        self.assertTrue(result.dropped)
        self.assertIsNone(result.status)
        self.assertEqual(result.attempts, 3)
        self.assertEqual(clock.slept, [2, 4])
        self.assertEqual({request.data for request in opener.data_requests}, {b'{"type":"status"}'})
        stamps = [header(request, "X-Timestamp") for request in opener.data_requests]
        self.assertEqual(stamps, [str(int(START)), str(int(START) + 2), str(int(START) + 6)])
        self.assertEqual(len({header(request, "X-Signature") for request in opener.data_requests}), 3)
        self.assertIn("timeout", result.requests[-1].error)

    def test_every_answer_but_200_is_retried_and_200_ends_the_message(self):
        opener = ScriptedOpener(
            (400, {"error": "VALIDATION_ERROR"}), (500, {"error": "INTERNAL_ERROR"}), (200, {"success": True})
        )
        result = scripted_sender(opener).send(b"{}")
        self.assertTrue(result.ok)
        self.assertFalse(result.dropped)
        self.assertEqual(result.attempts, 3)
        self.assertEqual([r.status for r in result.requests], [400, 500, 200])

    def test_a_401_logs_in_again_and_resends_at_once_within_the_same_attempt(self):
        opener = ScriptedOpener((401, {"error": "NOT_AUTHENTICATED"}), (200, {"success": True}))
        sender = scripted_sender(opener)
        sender.login()
        result = sender.send(b"{}")
        self.assertTrue(result.ok)
        self.assertEqual(result.attempts, 1)
        self.assertEqual(opener.logins, 2)
        self.assertEqual(
            [header(request, "Authorization") for request in opener.data_requests],
            ["Bearer token-1", "Bearer token-2"],
        )

    def test_the_token_is_replaced_after_55_minutes(self):
        opener = ScriptedOpener((200, {}), (200, {}), (200, {}))
        clock = FakeClock(START)
        sender = scripted_sender(opener, clock)
        sender.send(b"{}")
        clock.now += 54 * 60
        sender.send(b"{}")
        self.assertEqual(opener.logins, 1)
        clock.now += 2 * 60
        sender.send(b"{}")
        self.assertEqual(opener.logins, 2)

    def test_nothing_secret_shows_in_the_senders_repr(self):
        self.assertNotIn(SECRET, repr(scripted_sender(ScriptedOpener())))
        self.assertNotIn(PASSWORD, repr(scripted_sender(ScriptedOpener())))

    def test_only_http_urls_are_accepted(self):
        with self.assertRaises(ValueError):
            IoTSender("file:///etc/passwd", EMAIL, PASSWORD, SECRET)


# --- The fleet model, without a server --------------------------------------------------------


def fleet(**overrides) -> Fleet:
    config = dict(stations=3, slots=6, interval=1, seed=1, take_probability=1, return_after=1)
    config.update(overrides)
    return Fleet(FleetConfig(**config), start=START)


def messages(items):
    return [item for item in items if isinstance(item, Message)]


def fulls_of(items, serial):
    return [json.loads(m.body) for m in messages(items) if m.message_type == "full" and m.variant == ""
            and m.station_serial == serial]


def banks_in(full: dict) -> set[str]:
    return {slot["power_bank_serial"] for slot in full["slots"] if slot["power_bank_serial"]}


class FleetModelTests(SimpleTestCase):
    def test_serials_are_imeis_and_bank_serials_of_8_or_9_digits(self):
        model = fleet(stations=12)
        for station in model.stations:
            self.assertRegex(station.serial, r"^8646010699\d{5}$")
            self.assertEqual(luhn_check_digit(station.serial[:14]), station.serial[14])
            for slot in station.slots:
                if slot.bank:
                    self.assertRegex(slot.bank.serial, r"^\d{8,9}$")
        self.assertEqual(luhn_check_digit("86460106994699"), "4")  # the real IMEI of docs/contract.md

    def test_same_seed_same_traffic(self):
        first = [m.body for m in messages(fleet(seed=5).advance(START + 30))]
        again = [m.body for m in messages(fleet(seed=5).advance(START + 30))]
        other = [m.body for m in messages(fleet(seed=6).advance(START + 30))]
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)

    def test_every_message_is_a_valid_compact_body_in_the_senders_key_order(self):
        items = fleet(flap_probability=0.5, error_probability=0.5, resend_probability=0.2,
                      stale_probability=0.2).advance(START + 60)
        kinds = Counter(m.label for m in messages(items))
        for label in ("full", "returned", "status", "full (stale)", "full (resend)"):
            self.assertGreater(kinds[label], 0, label)
        for message in messages(items):
            payload = json.loads(message.body)
            self.assertEqual(compact_json(payload), message.body)
            self.assertEqual(list(payload)[:3], ["type", "timestamp", "device"])
            self.assertEqual(payload["timestamp"], message.built_at)
            parse_message(payload)  # the server's own schema accepts it
        first_full = json.loads(messages(items)[0].body)
        self.assertEqual(list(first_full), ["type", "timestamp", "device", "station", "slots", "power_banks"])
        self.assertEqual(
            list(first_full["device"]),
            ["serial_number", "imei", "signal_strength", "wifi_ssid", "last_heartbeat", "status", "hardware_info"],
        )

    def test_error_slots_carry_chinese_messages_as_raw_utf8(self):
        items = fleet(error_probability=1).advance(START + 5)
        errors = [
            slot["slot_metadata"]
            for m in messages(items) if m.message_type == "full"
            for slot in json.loads(m.body)["slots"] if slot["status"] == "ERROR"
        ]
        self.assertTrue(errors)
        self.assertTrue(all("：0X" in e["error_message"] and e["error_code"].startswith("0x") for e in errors))
        self.assertTrue(any("孔位异常".encode() in m.body or "异常".encode() in m.body for m in messages(items)))

    def test_a_taken_bank_leaves_the_next_full_sync_and_comes_back_with_a_return(self):
        model = fleet(stations=1, flap_probability=0, error_probability=0, stale_probability=0)
        serial = model.stations[0].serial
        items = model.advance(START + 6)
        take = next(item for item in items if isinstance(item, Take))
        position = items.index(take)
        before, after = items[:position], items[position + 1:]
        self.assertIn(take.bank_serial, banks_in(fulls_of(before, serial)[-1]))
        self.assertNotIn(take.bank_serial, banks_in(fulls_of(after, serial)[0]))
        returned = next(
            m for m in messages(after)
            if m.message_type == "returned" and json.loads(m.body)["return_event"]["power_bank_serial"] == take.bank_serial
        )
        event = json.loads(returned.body)["return_event"]
        later_fulls = fulls_of(items[items.index(returned) + 1:], serial)
        self.assertTrue(later_fulls)
        slot = later_fulls[0]["slots"][event["slot_number"] - 1]
        self.assertEqual(slot["power_bank_serial"], take.bank_serial)
        # The return went into a slot that was empty in the full sync before it.
        previous = fulls_of(items[: items.index(returned)], serial)[-1]
        self.assertEqual(previous["slots"][event["slot_number"] - 1]["power_bank_serial"], "")

    def test_stale_fulls_go_after_a_newer_one_and_resends_repeat_the_bytes(self):
        items = messages(fleet(stale_probability=0.5, resend_probability=0.5).advance(START + 20))
        for index, message in enumerate(items):
            if message.variant == "stale":
                newer = [m for m in items[:index] if m.station_serial == message.station_serial
                         and m.message_type == "full" and m.variant == ""]
                self.assertGreater(newer[-1].built_at, message.built_at)
            if message.variant == "resend":
                self.assertEqual(items[index - 1].body, message.body)

    def test_a_status_flap_is_offline_then_online_and_silences_the_station(self):
        items = messages(fleet(stations=1, flap_probability=1, take_probability=0).advance(START + 10))
        statuses = [json.loads(m.body)["device"]["status"] for m in items if m.message_type == "status" and not m.variant]
        self.assertEqual(statuses[:2], ["OFFLINE", "ONLINE"])
        offline_at = next(i for i, m in enumerate(items) if b'"OFFLINE"' in m.body)
        online_at = next(i for i, m in enumerate(items) if b'"ONLINE"}' in m.body)
        self.assertFalse([m for m in items[offline_at + 1:online_at] if m.message_type == "full" and not m.variant])

    def test_a_return_waits_until_its_take_was_carried_out(self):
        model = Fleet(FleetConfig(stations=1, slots=6, interval=1, seed=1, take_probability=1, return_after=1),
                      start=START, wait_for_takes=True)
        items = model.advance(START + 5)
        take = next(item for item in items if isinstance(item, Take))
        self.assertFalse([m for m in messages(items) if m.message_type == "returned" and take.bank_serial.encode() in m.body])
        take.executed.set()
        later = model.advance(START + 8)
        self.assertTrue([m for m in messages(later) if m.message_type == "returned" and take.bank_serial.encode() in m.body])


# --- The commands, against a live server -----------------------------------------------------------


@override_settings(IOT_SIGNATURE_VERIFICATION=True, IOT_SYSTEM_SIGNATURE_SECRET=SECRET, IOT_SYSTEM_ALLOWED_IPS=[])
class LiveSenderTests(LiveServerTestCase):
    def setUp(self):
        get_user_model().objects.create_user(
            username="iot-sender", email=EMAIL, password=PASSWORD, is_staff=True
        ).groups.add(iot_system_group())
        self.credentials = {"url": self.live_server_url, "email": EMAIL, "password": PASSWORD, "secret": SECRET}

    def iot_send(self, name, **options):
        out = StringIO()
        call_command("iot_send", str(MESSAGES_DIR / name), stdout=out, stderr=StringIO(),
                     **{**self.credentials, **options})
        return out.getvalue()

    def test_iot_send_delivers_the_example_full_sync(self):
        output = self.iot_send("full.json")
        self.assertIn("attempt 1: HTTP 200", output)
        self.assertIn('"applied": true', output)
        station = Station.objects.get(serial_number="864601069946994")
        self.assertEqual(station.slots.count(), 4)
        error_slot = station.slots.get(slot_number=1)
        self.assertEqual(error_slot.slot_metadata["error_message"], "孔位异常：0X04")
        # The body was re-serialized compactly, in the file's key order, as signed.
        event = IoTEvent.objects.get()
        body = compact_json(json.loads((MESSAGES_DIR / "full.json").read_text("utf-8")))
        self.assertEqual(event.body_sha256, hashlib.sha256(body).hexdigest())

    def test_iot_send_raw_sends_the_files_bytes_and_returned_places_the_bank(self):
        output = self.iot_send("returned.json", raw=True)
        self.assertIn("HTTP 200", output)
        raw = (MESSAGES_DIR / "returned.json").read_bytes()
        self.assertEqual(IoTEvent.objects.get().body_sha256, hashlib.sha256(raw).hexdigest())
        self.assertEqual(PowerBank.objects.get(serial_number="40818099").current_slot.slot_number, 4)

    def test_wrong_secret_is_tried_three_times_with_the_identical_body_then_dropped(self):
        clock = FakeClock(time.time())
        factory = partial(IoTSender, clock=clock, sleep=clock.sleep)
        with (
            mock.patch.object(iot_send.Command, "sender_class", factory),
            mock.patch.object(IoTSender, "_http", autospec=True, side_effect=IoTSender._http) as http,
        ):
            with self.assertRaisesMessage(CommandError, "Dropped after 3 attempts: HTTP 403 INVALID_SIGNATURE"):
                self.iot_send("status.json", secret="a-different-secret-of-plenty-of-characters-000")
        data_calls = [c.args for c in http.call_args_list if c.args[1].endswith(DATA_PATH)]
        self.assertEqual(len(data_calls), 3)
        self.assertEqual(len({body for _, _, body, _ in data_calls}), 1)
        self.assertEqual(len({headers["X-Timestamp"] for *_, headers in data_calls}), 3)
        self.assertEqual(len({headers["X-Signature"] for *_, headers in data_calls}), 3)
        self.assertEqual(clock.slept, [2, 4])
        # Rejected signatures never reach the event log.
        self.assertFalse(IoTEvent.objects.exists())

    def test_no_retry_and_timestamp_offset_show_the_servers_tolerance(self):
        out = StringIO()
        with self.assertRaisesMessage(CommandError, "Dropped after 1 attempt"):
            call_command("iot_send", str(MESSAGES_DIR / "status.json"), no_retry=True, timestamp_offset=1000,
                         stdout=out, **self.credentials)
        self.assertIn("too far in the future", out.getvalue())

    def test_an_expired_or_bad_token_means_one_login_and_a_resend_that_succeeds(self):
        sender = IoTSender(self.live_server_url, EMAIL, PASSWORD, SECRET)
        sender.login()
        sender._access_token = "not-a-valid-jwt"  # what an expired or revoked token looks like
        result = sender.send(compact_json(json.loads((MESSAGES_DIR / "full.json").read_text("utf-8"))))
        self.assertTrue(result.ok)
        self.assertEqual(result.attempts, 1)
        self.assertEqual(result.logins, 1)
        self.assertEqual([(r.status, r.error_code) for r in result.requests], [(401, "NOT_AUTHENTICATED"), (200, "")])

    def test_a_55_minute_old_token_is_replaced_before_sending(self):
        offset = {"seconds": -56 * 60}
        sender = IoTSender(self.live_server_url, EMAIL, PASSWORD, SECRET,
                           clock=lambda: time.time() + offset["seconds"])
        sender.login()  # as if 56 minutes ago
        offset["seconds"] = 0
        result = sender.send(compact_json(json.loads((MESSAGES_DIR / "status.json").read_text("utf-8"))))
        self.assertTrue(result.ok)
        self.assertEqual(result.logins, 1)
        self.assertEqual([r.status for r in result.requests], [200])

    def simulate(self, **options):
        out = StringIO()
        arguments = dict(
            stations=3, slots=6, interval=1, duration=4, seed=1, summary_every=2,
            take_probability=1, return_after=1, flap_probability=0.5,
            resend_probability=0.2, stale_probability=0.2,
            # SQLite in memory: the live server shares one connection across its threads,
            # so requests must not overlap there. PostgreSQL gets real concurrency.
            workers=1 if connection.vendor == "sqlite" else None,
        )
        arguments.update(options)
        call_command("simulate_stations", stdout=out, stderr=StringIO(), **self.credentials, **arguments)
        return out.getvalue()

    def test_simulated_fleet_is_answered_200_throughout(self):
        output = self.simulate()
        self.assertIn("Final answers not 200: 0", output)
        self.assertRegex(output, r"All \d+ message\(s\) answered HTTP 200")
        self.assertIn("[   2.0s] sent", output)  # the live summary line
        self.assertEqual(Station.objects.count(), 3)
        types = set(IoTEvent.objects.values_list("message_type", flat=True))
        self.assertEqual(types, {"full", "returned", "status"})
        self.assertFalse(IoTEvent.objects.exclude(http_status=200).exists())
        self.assertFalse(IoTEvent.objects.filter(outcome=IoTEventOutcome.FAILED).exists())

    def test_with_rentals_a_taken_bank_is_rented_and_its_return_completes_the_rental(self):
        RentalPackage.objects.create(name="1 hour", duration_minutes=60, price="100.00",
                                     payment_model=PaymentModel.PREPAID)
        get_user_model().objects.create_user(username="sita", email="sita@example.com", password=None)
        output = self.simulate(with_rentals=True)
        self.assertIn("Final answers not 200: 0", output)
        completed = Rental.objects.filter(status=RentalStatus.COMPLETED)
        self.assertTrue(completed.exists(), output)
        rental = completed.first()
        self.assertIsNotNone(rental.return_station)
        self.assertGreaterEqual(rental.ended_at, rental.started_at)
        self.assertRegex(output, r"Rentals: started \d+; closed by returns: [1-9]")

    def test_with_rentals_and_no_customer_it_warns_and_runs_without_rentals(self):
        err = StringIO()
        call_command("simulate_stations", stations=1, interval=5, duration=1, seed=1, with_rentals=True,
                     workers=1, stdout=StringIO(), stderr=err, **self.credentials)
        self.assertIn("no active rental package", err.getvalue())
        self.assertFalse(Rental.objects.exists())

    def test_simulator_refuses_a_remote_url_unless_allowed(self):
        with self.assertRaisesMessage(CommandError, "--allow-remote"):
            call_command("simulate_stations", **{**self.credentials, "url": "http://192.0.2.1:8000"})

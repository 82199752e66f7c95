"""
The client of the IoT system's API against the simulator's API over real HTTP (127.0.0.1,
an ephemeral port), and against hand-written answers for what the simulator never says.
"""

import logging
import socket
import time

import httpx
from django.test import SimpleTestCase

from api.iot_system.client import EjectOutcome, InventoryOutcome, IoTSystemClient
from api.iot_system.tests.cabinets import PASSWORD, USERNAME, CabinetApiMixin, quiet_fleet
from iot_tools.simulator import ApiBehaviour, IoTApiServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ClientOverHttpTests(CabinetApiMixin, SimpleTestCase):
    def setUp(self):
        self.fleet = quiet_fleet(slots=4)
        self.server = IoTApiServer(
            self.fleet, username=USERNAME, password=PASSWORD, behaviour=ApiBehaviour(delay=0, check_delay=0)
        ).start()
        self.addCleanup(self.server.stop)
        self.station = self.fleet.stations[0]
        self.bank = self.station.slots[1].bank.serial  # slot 2
        self.client_ = self.api_client(self.server)
        self.addCleanup(self.client_.close)

    def test_an_ejected_bank_is_ejected_with_its_slot_and_the_login_is_reused(self):
        first = self.client_.popup(self.station.serial, self.bank)
        other = self.station.slots[2].bank.serial
        second = self.client_.popup(self.station.serial, other)
        inventory = self.client_.check_all(self.station.serial)

        self.assertEqual((first.outcome, first.slot, first.cabinet_status), (EjectOutcome.EJECTED, 2, 1))
        self.assertTrue(first.known)
        self.assertEqual(second.outcome, EjectOutcome.EJECTED)
        self.assertEqual(self.server.logins, 1, "one login serves every call")
        self.assertIsNone(self.station.slots[1].bank, "the cabinet really let it go")
        self.assertEqual(inventory.outcome, InventoryOutcome.OK)
        self.assertNotIn(self.bank, inventory.bank_slots())

    def test_a_refused_ejection_is_refused_and_the_bank_stays(self):
        self.server.behaviour.refusal_rate = 1.0

        result = self.client_.popup(self.station.serial, self.bank)

        self.assertEqual((result.outcome, result.cabinet_status, result.http_status), (EjectOutcome.REFUSED, 2, 200))
        self.assertEqual(self.station.slots[1].bank.serial, self.bank)
        self.assertIn("did not eject", result.message)

    def test_a_jammed_slot_is_a_refusal(self):
        self.station.slots[1].error = ("0x04", "孔位异常：0X04")

        result = self.client_.popup(self.station.serial, self.bank)

        self.assertEqual((result.outcome, result.cabinet_status), (EjectOutcome.REFUSED, 4))

    def test_an_offline_cabinet_is_offline(self):
        self.station.online = False

        result = self.client_.popup(self.station.serial, self.bank)
        inventory = self.client_.check(self.station.serial)

        self.assertEqual((result.outcome, result.http_status), (EjectOutcome.OFFLINE, 408))
        self.assertFalse(result.known)
        self.assertEqual((inventory.outcome, inventory.http_status), (InventoryOutcome.OFFLINE, 500))

    def test_the_iot_systems_own_timeout_is_a_timeout_even_when_the_bank_came_out(self):
        self.server.behaviour = ApiBehaviour(delay=0, timeout_rate=1.0, late_eject_rate=1.0, wait=0.2)

        result = self.client_.popup(self.station.serial, self.bank)

        self.assertEqual((result.outcome, result.http_status), (EjectOutcome.TIMEOUT, 408))
        self.assertIsNone(self.station.slots[1].bank, "ejected after the IoT system gave up waiting")

    def test_a_cabinet_that_ejects_after_our_timeout_is_a_timeout_sent_once(self):
        self.server.behaviour = ApiBehaviour(delay=0, timeout_rate=1.0, late_eject_rate=1.0, wait=1.0)
        client = self.api_client(self.server, popup_timeout=0.3)
        self.addCleanup(client.close)

        result = client.popup(self.station.serial, self.bank)
        time.sleep(1.2)

        self.assertEqual((result.outcome, result.http_status), (EjectOutcome.TIMEOUT, None))
        self.assertIn("no answer within 0.3 s", result.message)
        self.assertEqual(self.server.popup_requests, 1, "never sent again")
        self.assertIsNone(self.station.slots[1].bank)

    def test_a_cabinet_that_never_answers_is_a_timeout(self):
        self.server.behaviour = ApiBehaviour(hang=True)
        client = self.api_client(self.server, popup_timeout=0.3)
        self.addCleanup(client.close)

        started = time.monotonic()
        result = client.popup(self.station.serial, self.bank)

        self.assertEqual(result.outcome, EjectOutcome.TIMEOUT)
        self.assertLess(time.monotonic() - started, 2.5)
        self.assertEqual(self.station.slots[1].bank.serial, self.bank)
        self.assertEqual(self.server.popup_requests, 1)

    def test_nothing_listening_is_unreachable(self):
        client = IoTSystemClient(f"http://127.0.0.1:{free_port()}", USERNAME, PASSWORD, connect_timeout=1)
        self.addCleanup(client.close)

        self.assertEqual(client.popup(self.station.serial, self.bank).outcome, EjectOutcome.UNREACHABLE)
        self.assertEqual(client.check(self.station.serial).outcome, InventoryOutcome.UNREACHABLE)

    def test_a_refused_login_is_unreachable_and_no_ejection_is_sent(self):
        client = IoTSystemClient(self.server.url, USERNAME, "wrong-password")
        self.addCleanup(client.close)

        result = client.popup(self.station.serial, self.bank)

        self.assertEqual(result.outcome, EjectOutcome.UNREACHABLE)
        self.assertIn("Invalid username or password", result.message)
        self.assertEqual(self.server.popups, [])

    def test_an_expired_token_is_replaced_by_one_new_login_and_the_ejection_goes_once(self):
        self.client_.check(self.station.serial)
        self.server.expire_tokens()

        result = self.client_.popup(self.station.serial, self.bank)

        self.assertEqual(result.outcome, EjectOutcome.EJECTED)
        self.assertEqual(self.server.logins, 2)
        self.assertEqual(len(self.server.popups), 1, "the refused request never reached the cabinet")

    def test_an_unconfigured_client_answers_unreachable_without_a_request(self):
        for url, user, password, reason in [
            ("", USERNAME, PASSWORD, "IOT_SYSTEM_API_URL is not set"),
            ("ftp://iot.example", USERNAME, PASSWORD, "not an http(s) URL"),
            ("http://user:pw@iot.example", USERNAME, PASSWORD, "must not contain credentials"),
            (self.server.url, "", "", "IOT_SYSTEM_API_USERNAME"),
        ]:
            with self.subTest(url=url):
                client = IoTSystemClient(url, user, password)
                result = client.popup(self.station.serial, self.bank)
                self.assertEqual(result.outcome, EjectOutcome.UNREACHABLE)
                self.assertIn(reason, result.message)
                client.close()
        self.assertEqual(self.server.logins, 0)

    def test_inventories_list_each_slot_with_its_bank(self):
        self.station.slots[3].bank = None

        every = self.client_.check_all(self.station.serial)
        occupied = self.client_.check(self.station.serial)

        self.assertEqual([report.slot for report in every.slots], [1, 2, 3, 4])
        self.assertIsNone(every.slots[3].bank_serial)
        self.assertEqual(every.slots[1].bank_serial, self.bank)
        self.assertEqual(every.slots[1].battery, self.station.slots[1].bank.battery)
        self.assertEqual([report.slot for report in occupied.slots], [1, 2, 3])
        self.assertEqual(occupied.bank_slots()[self.bank], 2)

    def test_neither_the_password_nor_the_token_is_ever_logged_or_shown(self):
        with self.assertLogs(level=logging.DEBUG) as logs:
            logging.getLogger("httpx").setLevel(logging.DEBUG)
            logging.getLogger("httpcore").setLevel(logging.DEBUG)
            self.addCleanup(logging.getLogger("httpx").setLevel, logging.NOTSET)
            self.addCleanup(logging.getLogger("httpcore").setLevel, logging.NOTSET)
            self.client_.popup(self.station.serial, self.bank)
            self.server.expire_tokens()
            self.client_.check_all(self.station.serial)
            IoTSystemClient(self.server.url, USERNAME, "not-the-password").popup(self.station.serial, self.bank)
        token = self.client_._token
        self.assertTrue(token)
        text = "\n".join(logs.output)
        self.assertIn(self.bank, text, "the log says what happened")
        for secret in (PASSWORD, "not-the-password", token):
            self.assertNotIn(secret, text)
            self.assertNotIn(secret, repr(self.client_))


class AnswersTheSimulatorNeverGives(SimpleTestCase):
    """Answers from hand-written handlers (httpx.MockTransport): each maps to one outcome."""

    def api_client(self, answer):
        requests = []

        def handler(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            if request.url.path == "/api/auth/login":
                return httpx.Response(200, json={"success": True, "message": "ok", "token": "tkn", "user": {}})
            return answer(request)

        client = IoTSystemClient("http://iot.test", USERNAME, PASSWORD, transport=httpx.MockTransport(handler))
        self.addCleanup(client.close)
        return client, requests

    def popups(self, requests):
        return [r for r in requests if r.url.path == "/popup_sn"]

    def test_a_5xx_is_unexpected_and_never_retried(self):
        client, requests = self.api_client(lambda r: httpx.Response(502, text="<html>Bad gateway</html>"))

        result = client.popup("STATION", "40818048")

        self.assertEqual((result.outcome, result.http_status), (EjectOutcome.UNEXPECTED, 502))
        self.assertEqual(len(self.popups(requests)), 1)

    def test_an_answer_about_another_bank_is_unexpected(self):
        # The IoT system keeps one waiting answer per cabinet: two ejections at once can cross.
        client, _ = self.api_client(
            lambda r: httpx.Response(
                200, json={"code": 200, "data": {"slot": 3, "powerbankSN": "40818099", "status": 1, "success": True}}
            )
        )

        result = client.popup("STATION", "40818048")

        self.assertEqual(result.outcome, EjectOutcome.UNEXPECTED)
        self.assertIn("40818099", result.message)

    def test_a_redirect_to_the_login_page_is_a_refused_token(self):
        answers = iter(
            [
                httpx.Response(302, headers={"Location": "http://iot.test/login"}),
                httpx.Response(
                    200,
                    json={"code": 200, "data": {"slot": 1, "powerbankSN": "40818048", "status": 1, "success": True}},
                ),
            ]
        )
        client, requests = self.api_client(lambda r: next(answers))

        result = client.popup("STATION", "40818048")

        self.assertEqual(result.outcome, EjectOutcome.EJECTED)
        self.assertEqual(len([r for r in requests if r.url.path == "/api/auth/login"]), 2)

    def test_a_token_refused_twice_is_unreachable(self):
        client, requests = self.api_client(lambda r: httpx.Response(401, json={"error": "Authentication required"}))

        result = client.popup("STATION", "40818048")

        self.assertEqual(result.outcome, EjectOutcome.UNREACHABLE)
        self.assertEqual(len(self.popups(requests)), 2, "both refused before reaching the cabinet")

    def test_an_answer_that_is_not_json_is_unexpected(self):
        client, _ = self.api_client(lambda r: httpx.Response(200, text="ok"))

        self.assertEqual(client.popup("STATION", "40818048").outcome, EjectOutcome.UNEXPECTED)
        self.assertEqual(client.check("STATION").outcome, InventoryOutcome.UNEXPECTED)

    def test_the_iot_systems_inventory_timeout_is_a_timeout(self):
        client, _ = self.api_client(
            lambda r: httpx.Response(500, json={"code": 500, "msg": "java.lang.Exception: Request Time Out"})
        )

        self.assertEqual(client.check_all("STATION").outcome, InventoryOutcome.TIMEOUT)

    def test_the_requests_carry_the_contracts_headers_and_parameters(self):
        client, requests = self.api_client(
            lambda r: httpx.Response(
                200, json={"code": 200, "data": {"slot": 1, "powerbankSN": "40818048", "status": 1, "success": True}}
            )
        )

        client.popup("864601069946994", "40818048")

        login, popup = requests
        self.assertEqual(login.method, "POST")
        self.assertEqual(login.headers["content-type"], "application/json")
        self.assertEqual(popup.method, "GET")
        self.assertEqual(dict(popup.url.params), {"rentboxSN": "864601069946994", "singleSN": "40818048"})
        self.assertEqual(popup.headers["authorization"], "Bearer tkn")
        self.assertEqual(popup.headers["accept"], "application/json")

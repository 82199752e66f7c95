"""
The fleet simulator playing the IoT system's API (iot_tools.simulator): the model's ejections
and inventories, and `manage.py simulate_stations --api-port` against a live server, where
every rental a simulated customer starts ejects its bank through that API over HTTP.
"""

import json
import time
from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import LiveServerTestCase, SimpleTestCase, override_settings

from api.iot_system.tests.cabinets import PASSWORD as API_PASSWORD
from api.iot_system.tests.cabinets import USERNAME as API_USERNAME
from api.iot_system.tests.cabinets import quiet_fleet
from api.rentals.models import PaymentModel, Rental, RentalPackage, RentalStatus
from api.stations.tests.factories import iot_system_group
from iot_tools.simulator import Fleet, FleetConfig, Take

EMAIL = "iot-sender@chargeghar.test"
PASSWORD = "sender-pass-0123456789"
SECRET = "simulated-iot-api-test-secret-0123456789abcdef"


class FleetEjectionModelTests(SimpleTestCase):
    def test_an_ejected_bank_leaves_the_next_full_sync_and_comes_back_with_a_return(self):
        start = 1_762_905_600.0
        fleet = quiet_fleet(start=start)
        fleet.advance(start)
        station = fleet.stations[0]
        bank = station.slots[0].bank.serial

        done = fleet.eject(station.serial, bank, at=start + 1)

        self.assertEqual((done.outcome, done.slot), ("ejected", 1))
        self.assertEqual(fleet.eject(station.serial, bank, at=start + 2).outcome, "absent")
        later = fleet.advance(start + 10 * fleet.config.interval)
        fulls = [json.loads(m.body) for m in later if m.message_type == "full"]
        self.assertNotIn(bank, json.dumps(fulls[0]))
        returns = [json.loads(m.body) for m in later if m.message_type == "returned"]
        self.assertEqual([r["return_event"]["power_bank_serial"] for r in returns], [bank])

    def test_an_offline_cabinet_ejects_nothing_and_answers_no_inventory(self):
        fleet = quiet_fleet()
        station = fleet.stations[0]
        station.online = False

        self.assertEqual(fleet.eject(station.serial, station.slots[0].bank.serial).outcome, "offline")
        self.assertIsNone(fleet.inventory(station.serial))
        self.assertIsNone(fleet.inventory("UNKNOWN"))

    def test_with_takes_by_request_a_take_leaves_the_bank_until_it_is_ejected(self):
        start = 1_762_905_600.0
        config = FleetConfig(stations=1, slots=4, interval=10, seed=3, take_probability=1, fill=1.0,
                             flap_probability=0, error_probability=0, resend_probability=0, stale_probability=0)
        fleet = Fleet(config, start=start, takes_by_request=True)

        takes = [item for item in fleet.advance(start + 20) if isinstance(item, Take)]

        self.assertTrue(takes)
        slots = {slot.number: slot.bank.serial for slot in fleet.stations[0].slots if slot.bank}
        self.assertEqual(slots[takes[0].slot_number], takes[0].bank_serial, "still in its slot")


@override_settings(
    IOT_SIGNATURE_VERIFICATION=True,
    IOT_SYSTEM_SIGNATURE_SECRET=SECRET,
    IOT_SYSTEM_API_USERNAME=API_USERNAME,
    IOT_SYSTEM_API_PASSWORD=API_PASSWORD,
)
class SimulatorWithApiTests(LiveServerTestCase):
    def setUp(self):
        get_user_model().objects.create_user(
            username="iot-sender", email=EMAIL, password=PASSWORD, is_staff=True
        ).groups.add(iot_system_group())
        RentalPackage.objects.create(
            name="1 hour", duration_minutes=60, price="100.00", payment_model=PaymentModel.PREPAID
        )
        get_user_model().objects.create_user(username="sita", email="sita@example.com", password=None)

    def simulate(self, **options):
        out = StringIO()
        arguments = dict(
            url=self.live_server_url, email=EMAIL, password=PASSWORD, secret=SECRET,
            stations=2, slots=6, interval=1, duration=5, seed=2, summary_every=5,
            take_probability=1, return_after=1.5, flap_probability=0, error_probability=0,
            resend_probability=0, stale_probability=0,
            with_rentals=True, api_port=0, api_delay=0.05, api_refusal_rate=0, api_timeout_rate=0,
            workers=1 if connection.vendor == "sqlite" else None,
        )
        arguments.update(options)
        started = time.monotonic()
        call_command("simulate_stations", stdout=out, stderr=StringIO(), **arguments)
        return out.getvalue(), time.monotonic() - started

    def test_rentals_eject_their_banks_through_the_api_and_returns_complete_them(self):
        output, _ = self.simulate()

        self.assertIn("IoT system API for these cabinets at http://127.0.0.1:", output)
        self.assertRegex(output, r"IoT system API: 1 login\(s\), [1-9]\d* ejection request\(s\) \(ejected \d+")
        self.assertIn("Final answers not 200: 0", output)
        rentals = Rental.objects.all()
        self.assertTrue(rentals.exists(), output)
        self.assertFalse(rentals.filter(status=RentalStatus.CANCELLED).exists(), output)
        self.assertTrue(rentals.filter(status=RentalStatus.COMPLETED).exists(), output)
        for rental in rentals:
            self.assertEqual(rental.ejection_outcome, "EJECTED", rental.ejection_message)

    def test_refused_ejections_cancel_their_rentals(self):
        output, _ = self.simulate(api_refusal_rate=1.0, duration=3)

        rentals = Rental.objects.all()
        self.assertTrue(rentals.exists(), output)
        self.assertEqual(set(rentals.values_list("status", flat=True)), {RentalStatus.CANCELLED})
        self.assertRegex(output, r"refused \d+")

    def test_the_api_needs_a_login_to_accept(self):
        with override_settings(IOT_SYSTEM_API_PASSWORD=""):
            with self.assertRaisesMessage(CommandError, "IOT_SYSTEM_API_USERNAME and IOT_SYSTEM_API_PASSWORD"):
                self.simulate()

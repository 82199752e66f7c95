"""
Operators drive ejections from the admin, against the simulator's IoT system API over HTTP:
start a rental (the page says what the cabinet answered), eject a bank for maintenance,
refresh a station's inventory; the dashboard counts the ejections under way.
"""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.messages import get_messages
from django.test import TestCase, override_settings
from django.urls import reverse

from api.iot_system.tests.cabinets import CabinetApiMixin, snapshot
from api.rentals.models import Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import PowerBank, PowerBankStatus, Station
from api.stations.services.station_sync_service import StationSyncService
from api.stations.templatetags.fleet_admin import fleet_summary
from api.stations.tests.factories import make_staff
from iot_tools.simulator import ApiBehaviour


@override_settings(IOT_POPUP_GRACE_SECONDS=120)
class AdminEjectionTests(CabinetApiMixin, TestCase):
    def setUp(self):
        self.fleet, self.api = self.start_cabinets(slots=4, popup_timeout=0.5)
        self.cabinet = self.fleet.stations[0]
        StationSyncService().sync_station_data(snapshot(self.fleet, self.cabinet.serial, time.time() - 3600))
        self.bank = PowerBank.objects.get(serial_number=self.cabinet.slots[1].bank.serial)
        self.superuser = make_staff("root@chargeghar.test", is_superuser=True)
        self.client.force_login(self.superuser)
        self.customer = make_staff("sita@example.com", is_staff=False)
        self.package = RentalPackage.objects.create(name="1 hour", duration_minutes=60, price=Decimal("100.00"))

    def messages_of(self, response) -> list[tuple[str, str]]:
        return [(message.level_tag, message.message) for message in get_messages(response.wsgi_request)]

    def start(self):
        return self.client.post(
            reverse("admin:rentals_rental_add"),
            {"customer_email": "sita@example.com", "power_bank": self.bank.pk, "package": self.package.pk},
            follow=True,
        )

    def test_a_rental_started_in_the_admin_ejects_the_bank_and_says_so(self):
        response = self.start()

        rental = Rental.objects.get()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "success")
        self.assertIn(f"Station {self.cabinet.serial} answered: ejected from slot 2", text)
        self.assertContains(response, "Ejection (what the cabinet said)")
        self.assertIsNone(self.cabinet.slots[1].bank)

    def test_a_refusal_is_shown_as_an_error_and_nothing_is_charged(self):
        self.api.behaviour.refusal_rate = 1.0

        response = self.start()

        rental = Rental.objects.get()
        self.assertEqual((rental.status, rental.total_amount), (RentalStatus.CANCELLED, 0))
        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "error")
        self.assertIn("cancelled, nothing charged", text)

    def test_no_answer_is_shown_as_a_warning_with_what_happens_next(self):
        self.api.behaviour = ApiBehaviour(hang=True)

        response = self.start()

        self.assertEqual(Rental.objects.get().status, RentalStatus.PENDING_POPUP)
        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "warning")
        self.assertIn("is waiting for station", text)
        self.assertIn("not sent again", text)
        summary = fleet_summary()
        self.assertEqual((summary.rentals_pending_popup, summary.rentals_pending_popup_stale), (1, 0))
        self.assertContains(self.client.get(reverse("admin:index")), 'data-metric="rentals-pending-popup">1<')

    def test_ejecting_a_bank_for_maintenance_takes_it_out_of_service(self):
        response = self.client.post(
            reverse("admin:stations_powerbank_changelist"),
            {"action": "eject_for_maintenance_action", "_selected_action": [self.bank.pk]},
            follow=True,
        )

        self.bank.refresh_from_db()
        self.assertEqual((self.bank.status, self.bank.current_slot_id), (PowerBankStatus.MAINTENANCE, None))
        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "success")
        self.assertIn("ejected", text)
        self.assertEqual(Rental.objects.count(), 0)

    def test_a_refused_maintenance_ejection_leaves_the_bank_available(self):
        self.api.behaviour.refusal_rate = 1.0

        response = self.client.post(
            reverse("admin:stations_powerbank_changelist"),
            {"action": "eject_for_maintenance_action", "_selected_action": [self.bank.pk]},
            follow=True,
        )

        self.bank.refresh_from_db()
        self.assertEqual(self.bank.status, PowerBankStatus.AVAILABLE)
        self.assertIsNotNone(self.bank.current_slot_id)
        self.assertEqual(self.messages_of(response)[0][0], "error")

    def test_refreshing_an_inventory_reports_the_cabinet_and_settles_its_pending_ejections(self):
        self.api.behaviour = ApiBehaviour(hang=True)
        rental = RentalService.start_rental(
            user=self.customer,
            power_bank=self.bank,
            package=self.package,
            started_at=datetime.now(tz=UTC) - timedelta(seconds=130),
        )
        self.api.behaviour = ApiBehaviour(delay=0, check_delay=0)
        with self.fleet.lock:
            self.cabinet.slots[1].bank = None  # it did come out, without an answer

        response = self.client.post(
            reverse("admin:stations_station_changelist"),
            {"action": "refresh_inventory", "_selected_action": [Station.objects.get().pk]},
            follow=True,
        )

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "success")
        self.assertIn(f"{self.cabinet.serial} says: slot 1:", text)
        self.assertIn("slot 2: empty", text)
        self.assertIn(f"Ejections confirmed: {rental.rental_code}", text)
        self.assertEqual(self.api.popup_requests, 1)

    def test_refreshing_an_offline_cabinet_says_so(self):
        self.cabinet.online = False

        response = self.client.post(
            reverse("admin:stations_station_changelist"),
            {"action": "refresh_inventory", "_selected_action": [Station.objects.get().pk]},
            follow=True,
        )

        ((level, text),) = self.messages_of(response)
        self.assertEqual(level, "warning")
        self.assertIn("OFFLINE", text)

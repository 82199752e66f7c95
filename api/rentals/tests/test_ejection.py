"""
Starting a rental ejects its bank (docs/contract.md, "The other direction"), against the
simulator's IoT system API over real HTTP: every answer, and the cabinet's own reports (full
syncs, the inventory monitor_stations asks for) settling the ejections whose answer never came.
"""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction
from django.test import TestCase, override_settings
from django.utils import timezone

from api.iot_system.client import EjectOutcome, EjectResult
from api.iot_system.tests.cabinets import CabinetApiMixin, snapshot
from api.rentals.models import PaymentStatus, Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.rentals.signals import rental_cancelled
from api.stations.models import PowerBank, PowerBankStatus, SlotStatus, StationSlot
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import return_payload
from api.stations.tests.fleet import FleetInvariantsMixin
from iot_tools.simulator import ApiBehaviour
from main_app.exceptions import Conflict


def sync(payload: dict) -> dict:
    return StationSyncService().sync_station_data(payload)


@override_settings(IOT_POPUP_GRACE_SECONDS=120, IOT_RETURN_GRACE_SECONDS=120)
class EjectionTestCase(CabinetApiMixin, FleetInvariantsMixin, TestCase):
    behaviour = ApiBehaviour(delay=0, check_delay=0)
    popup_timeout = 3.0

    def setUp(self):
        self.fleet, self.api = self.start_cabinets(
            slots=4, behaviour=ApiBehaviour(**vars(self.behaviour)), popup_timeout=self.popup_timeout
        )
        self.cabinet = self.fleet.stations[0]
        self.serial = self.cabinet.serial
        sync(snapshot(self.fleet, self.serial, time.time() - 3600))
        self.bank_serial = self.cabinet.slots[1].bank.serial  # slot 2
        self.bank = PowerBank.objects.get(serial_number=self.bank_serial)
        self.package = RentalPackage.objects.create(name="1 hour", duration_minutes=60, price=Decimal("100.00"))
        self.customer = get_user_model().objects.create_user(
            username="sita", email="sita@example.com", password="x-pass-12345"
        )

    def rent(self, **kwargs) -> Rental:
        return RentalService.start_rental(user=self.customer, power_bank=self.bank, package=self.package, **kwargs)

    def full_sync(self, at: float) -> dict:
        return sync(snapshot(self.fleet, self.serial, at))

    def assertInSlot(self, serial: str, number: int | None):
        bank = PowerBank.objects.select_related("current_slot").get(serial_number=serial)
        self.assertEqual(bank.current_slot.slot_number if bank.current_slot else None, number)
        return bank

    def wait_until_out(self, slot_index: int = 1, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while self.cabinet.slots[slot_index].bank is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIsNone(self.cabinet.slots[slot_index].bank, "the cabinet ejected the bank")


class EjectedTests(EjectionTestCase):
    def test_an_ejected_bank_makes_the_rental_active_from_the_confirmation(self):
        before = timezone.now()

        rental = self.rent()

        after = timezone.now()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(rental.ejection_outcome, EjectOutcome.EJECTED)
        self.assertIn("slot 2", rental.ejection_message)
        self.assertTrue(before <= rental.ejection_requested_at <= rental.started_at <= after)
        self.assertEqual(rental.due_at - rental.started_at, timedelta(minutes=60))
        self.assertEqual((rental.base_amount, rental.payment_status), (Decimal("100.00"), PaymentStatus.PAID))
        bank = self.assertInSlot(self.bank_serial, None)
        self.assertEqual((bank.status, bank.current_station_id), (PowerBankStatus.RENTED, None))
        self.assertEqual(StationSlot.objects.get(slot_number=2).status, SlotStatus.AVAILABLE)
        self.assertEqual(self.api.popups, [(self.serial, self.bank_serial, "ejected")])
        self.assertIsNone(self.cabinet.slots[1].bank)
        self.assertFleetInvariants()

    def test_the_next_full_sync_no_longer_reports_the_bank_and_changes_nothing(self):
        rental = self.rent()

        answer = self.full_sync(time.time() + 300)

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(answer["offline_returns"], [])
        self.assertEqual(PowerBank.objects.get(serial_number=self.bank_serial).status, PowerBankStatus.RENTED)
        self.assertFleetInvariants()

    def test_starting_inside_a_transaction_is_refused_before_anything_is_sent(self):
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                self.rent()
        self.assertEqual(Rental.objects.count(), 0)
        self.assertEqual(self.api.popups, [])

    def test_a_bank_that_is_not_in_a_slot_cannot_be_rented(self):
        PowerBank.objects.filter(pk=self.bank.pk).update(current_slot=None)

        with self.assertRaisesMessage(Conflict, "not in a slot"):
            self.rent()
        self.assertEqual(self.api.popups, [])


class RefusedTests(EjectionTestCase):
    behaviour = ApiBehaviour(delay=0, check_delay=0, refusal_rate=1.0)

    def test_a_refused_ejection_cancels_the_rental_and_charges_nothing(self):
        cancelled = []
        rental_cancelled.connect(lambda rental, **kw: cancelled.append(rental.rental_code), weak=False)
        self.addCleanup(rental_cancelled.receivers.clear)

        with self.captureOnCommitCallbacks(execute=True):
            rental = self.rent()

        self.assertEqual(rental.status, RentalStatus.CANCELLED)
        self.assertEqual(rental.ejection_outcome, EjectOutcome.REFUSED)
        self.assertIn("the cabinet refused", rental.ejection_message)
        self.assertEqual((rental.base_amount, rental.overdue_amount, rental.total_amount), (0, 0, 0))
        self.assertEqual(rental.payment_status, PaymentStatus.PAID, "nothing is owed")
        self.assertIsNotNone(rental.ended_at)
        self.assertEqual(cancelled, [rental.rental_code])
        bank = self.assertInSlot(self.bank_serial, 2)
        self.assertEqual(bank.status, PowerBankStatus.AVAILABLE)

    def test_the_bank_can_be_rented_again_after_a_refusal(self):
        self.rent()
        self.api.behaviour.refusal_rate = 0

        second = self.rent()

        self.assertEqual(second.status, RentalStatus.ACTIVE)
        self.assertEqual(len(self.api.popups), 2)


class LateEjectionTests(EjectionTestCase):
    """The cabinet ejects, but only after our client stopped waiting."""

    behaviour = ApiBehaviour(delay=0, check_delay=0, timeout_rate=1.0, late_eject_rate=1.0, wait=0.8)
    popup_timeout = 0.3

    def test_the_rental_waits_and_the_bank_cannot_be_rented_twice(self):
        rental = self.rent()

        self.assertEqual(rental.status, RentalStatus.PENDING_POPUP)
        self.assertEqual(rental.ejection_outcome, EjectOutcome.TIMEOUT)
        self.assertIn("not sent again", rental.ejection_message)
        with self.assertRaisesMessage(Conflict, "already rented"):
            self.rent()
        self.assertEqual(self.api.popup_requests, 1)
        self.assertInSlot(self.bank_serial, 2)  # nothing moved before the cabinet says so

    def test_the_next_full_sync_without_the_bank_makes_it_active_from_the_request(self):
        rental = self.rent()
        self.wait_until_out()

        answer = self.full_sync(time.time() + 1)

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(rental.started_at, rental.ejection_requested_at)
        self.assertEqual(rental.due_at - rental.started_at, timedelta(minutes=60))
        self.assertEqual(rental.base_amount, Decimal("100.00"))
        self.assertIn("no longer shows the bank", rental.ejection_message)
        self.assertIn(self.bank_serial, answer["detached_power_banks"])
        bank = self.assertInSlot(self.bank_serial, None)
        self.assertEqual((bank.status, bank.current_station_id), (PowerBankStatus.RENTED, None))
        self.assertEqual(self.api.popup_requests, 1, "never sent again")
        self.assertFleetInvariants()

    def test_a_full_sync_built_before_the_request_settles_nothing(self):
        rental = self.rent()
        self.wait_until_out()

        self.full_sync(rental.ejection_requested_at.timestamp() - 5)

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.PENDING_POPUP)

    def test_monitor_stations_asks_the_cabinet_and_confirms_it(self):
        requested = datetime.now(tz=UTC) - timedelta(seconds=130)
        rental = self.rent(started_at=requested)
        self.wait_until_out()

        call_command("monitor_stations", stdout=(out := _Text()))

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(rental.started_at, requested)
        self.assertEqual(self.api.checks, [("/check_all", self.serial)])
        self.assertEqual(PowerBank.objects.get(serial_number=self.bank_serial).status, PowerBankStatus.RENTED)
        self.assertIn("1 ejection(s) confirmed, 0 cancelled", out.text)
        self.assertEqual(self.api.popup_requests, 1)
        self.assertFleetInvariants()

    def test_monitor_stations_leaves_ejections_within_the_grace_alone(self):
        self.rent()

        call_command("monitor_stations", stdout=_Text())

        self.assertEqual(self.api.checks, [])

    def test_an_answer_after_a_cabinet_report_settled_the_rental_changes_nothing(self):
        rental = self.rent()
        self.wait_until_out()
        self.full_sync(time.time() + 1)
        rental.refresh_from_db()
        started = rental.started_at

        late = RentalService.settle_ejection(
            rental,
            EjectResult(EjectOutcome.EJECTED, self.serial, self.bank_serial, "ejected from slot 2", elapsed=12.0),
        )

        self.assertEqual((late.status, late.started_at), (RentalStatus.ACTIVE, started))


class NeverAnsweredTests(EjectionTestCase):
    """The cabinet never answers, and never ejects."""

    behaviour = ApiBehaviour(hang=True)
    popup_timeout = 0.3

    def test_a_full_sync_within_the_grace_that_still_shows_the_bank_decides_nothing(self):
        rental = self.rent()

        self.full_sync(time.time() + 30)

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.PENDING_POPUP)
        self.assertInSlot(self.bank_serial, 2)

    def test_a_full_sync_past_the_grace_that_still_shows_the_bank_cancels_it_and_is_no_lost_return(self):
        rental = self.rent()
        requested = rental.ejection_requested_at.timestamp()

        answer = self.full_sync(requested + 121)

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.CANCELLED)
        self.assertIn("still shows the bank in slot 2", rental.ejection_message)
        self.assertEqual(rental.ejection_outcome, EjectOutcome.TIMEOUT)
        self.assertEqual((rental.base_amount, rental.overdue_amount), (0, 0))
        self.assertEqual(answer["offline_returns"], [])
        bank = self.assertInSlot(self.bank_serial, 2)
        self.assertEqual(bank.status, PowerBankStatus.AVAILABLE)
        self.assertEqual(self.api.popup_requests, 1)
        self.assertFleetInvariants()

    def test_monitor_stations_cancels_it_from_the_cabinets_inventory(self):
        rental = self.rent(started_at=datetime.now(tz=UTC) - timedelta(seconds=130))

        call_command("monitor_stations", stdout=(out := _Text()))

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.CANCELLED)
        self.assertIn("inventory", rental.ejection_message)
        self.assertIn("0 ejection(s) confirmed, 1 cancelled", out.text)

    def test_a_return_of_the_bank_completes_the_rental_from_the_request(self):
        # Ejected without an answer, taken, and brought back before any report settled it.
        rental = self.rent(started_at=datetime.now(tz=UTC) - timedelta(minutes=30))
        with self.fleet.lock:
            self.cabinet.slots[1].bank = None
        sync(snapshot(self.fleet, self.serial, rental.ejection_requested_at.timestamp() + 10))

        StationSyncService().process_return_event(return_payload(self.bank_serial, 3, self.serial))

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertEqual(rental.started_at, rental.ejection_requested_at)
        self.assertEqual(rental.base_amount, Decimal("100.00"))
        self.assertFleetInvariants()


class OfflineAndUnreachableTests(EjectionTestCase):
    def test_an_offline_cabinet_leaves_the_rental_waiting_and_monitor_settles_it_once_online(self):
        self.cabinet.online = False
        rental = self.rent(started_at=datetime.now(tz=UTC) - timedelta(seconds=130))
        self.assertEqual((rental.status, rental.ejection_outcome), (RentalStatus.PENDING_POPUP, EjectOutcome.OFFLINE))

        call_command("monitor_stations", stdout=(out := _Text()))
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.PENDING_POPUP)
        self.assertIn("inventory OFFLINE", out.text)

        self.cabinet.online = True
        call_command("monitor_stations", stdout=_Text())
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.CANCELLED, "the cabinet still has it")
        self.assertEqual(self.api.popup_requests, 1, "asked for inventories, never for the ejection again")

    def test_an_unreachable_iot_system_leaves_the_rental_waiting(self):
        port = self.api.url.rsplit(":", 1)[1]
        self.api.stop()

        with override_settings(IOT_SYSTEM_API_URL=f"http://127.0.0.1:{port}"):
            rental = self.rent()

        self.assertEqual((rental.status, rental.ejection_outcome), (RentalStatus.PENDING_POPUP, EjectOutcome.UNREACHABLE))
        self.assertInSlot(self.bank_serial, 2)


class _Text:
    def __init__(self):
        self.text = ""

    def write(self, value):
        self.text += value

    def flush(self):
        pass

"""
Concurrency on PostgreSQL with real threads and real transactions (docs/design.md, rule 10).

SQLite serializes every writer on one file lock, so these tests only mean something on
PostgreSQL; they skip elsewhere and CI runs them against PostgreSQL.
"""

import os
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import close_old_connections, connection, connections, transaction
from django.test import TransactionTestCase, override_settings

from api.iot_system.client import EjectOutcome, EjectResult
from api.iot_system.tests.cabinets import CabinetApiMixin, snapshot
from api.rentals.models import Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.rentals.signals import rental_cancelled, rental_completed
from api.stations.models import IoTEvent, IoTEventOutcome, PowerBank, PowerBankStatus, Station
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import (
    SenderClient,
    compact,
    full_payload,
    make_staff,
    now_ts,
    return_payload,
)
from api.stations.tests.fleet import FleetInvariantsMixin
from iot_tools.simulator import ApiBehaviour
from main_app.exceptions import Conflict

ON_POSTGRES = connection.vendor == "postgresql"
SKIP_REASON = (
    "concurrency tests need PostgreSQL (set DATABASE_URL=postgres://...); "
    "SQLite serializes all writers"
)
if os.environ.get("REQUIRE_POSTGRES") and not ON_POSTGRES:  # CI must never skip these
    raise RuntimeError("REQUIRE_POSTGRES is set but the test database is not PostgreSQL")


def run_concurrently(functions, *, workers: int | None = None):
    """Run callables at the same moment on their own threads and connections."""
    barrier = threading.Barrier(len(functions))

    def call(function):
        try:
            barrier.wait(timeout=30)
            return function()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=workers or len(functions)) as pool:
        return list(pool.map(call, functions))


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
@override_settings(IOT_RETURN_GRACE_SECONDS=120)
class ConcurrencyTests(FleetInvariantsMixin, TransactionTestCase):
    def setUp(self):
        close_old_connections()
        self.staff = make_staff()

    def rent_the_bank(self, *, started_at: int) -> Rental:
        package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("50"))
        customer = make_staff("customer@chargeghar.test", is_staff=False)
        return RentalService.start_rental(
            user=customer,
            power_bank=PowerBank.objects.get(),
            package=package,
            started_at=datetime.fromtimestamp(started_at, tz=UTC),
        )

    def post_all(self, payloads):
        def poster(payload):
            return lambda: SenderClient(self.staff).post(payload)

        return run_concurrently([poster(payload) for payload in payloads])

    def test_twenty_concurrent_full_syncs_of_a_new_station_create_it_once(self):
        base = now_ts()
        payloads = [
            full_payload(banks={1: ("40818048", 50 + i), 2: ("40818052", 60)}, timestamp=base - i)
            for i in range(20)
        ]

        responses = self.post_all(payloads)

        self.assertEqual(sorted({r.status_code for r in responses}), [200])
        self.assertEqual(Station.objects.count(), 1)
        self.assertEqual(PowerBank.objects.count(), 2)
        self.assertEqual(Station.objects.get().slots.count(), 4)
        # Newest wins whatever the arrival order: the newest body's battery level stays.
        self.assertEqual(PowerBank.objects.get(serial_number="40818048").battery_level, 50)
        self.assertEqual(IoTEvent.objects.filter(outcome=IoTEventOutcome.PROCESSED).count()
                         + IoTEvent.objects.filter(outcome=IoTEventOutcome.STALE).count(), 20)
        self.assertFleetInvariants()

    def test_concurrent_syncs_and_returns_of_one_bank_leave_it_in_one_slot_and_close_its_rental_once(self):
        service = StationSyncService()
        started = now_ts() - 3600
        service.sync_station_data(full_payload("STATION-A", banks={1: ("40818048", 90)}, timestamp=started - 60))
        service.sync_station_data(full_payload("STATION-B", timestamp=started - 60))
        rental = self.rent_the_bank(started_at=started)
        completions = []

        def count(sender, rental, **kwargs):
            completions.append(rental.pk)

        rental_completed.connect(count)
        self.addCleanup(rental_completed.disconnect, count)
        now = now_ts()
        payloads = []
        for i in range(6):
            payloads.append(return_payload("40818048", 2, "STATION-B", timestamp=now - i))
            payloads.append(full_payload("STATION-A", banks={3: ("40818048", 70)}, timestamp=now - 10 + i))
            payloads.append(full_payload("STATION-B", banks={2: ("40818048", 80)}, timestamp=now - 20 + i))

        responses = self.post_all(payloads)

        self.assertEqual(sorted({r.status_code for r in responses}), [200])
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertEqual(completions, [rental.pk])
        self.assertEqual(Rental.objects.filter(status=RentalStatus.COMPLETED).count(), 1)
        bank = PowerBank.objects.get()
        self.assertIsNotNone(bank.current_slot)
        self.assertFleetInvariants()

    def test_concurrent_identical_bodies_are_applied_once(self):
        service = StationSyncService()
        started = now_ts() - 1800
        service.sync_station_data(full_payload(banks={1: ("40818048", 90)}, timestamp=started - 60))
        rental = self.rent_the_bank(started_at=started)
        body = compact(return_payload("40818048", 2, timestamp=now_ts()))

        responses = self.post_all([body] * 10)

        self.assertEqual({r.status_code for r in responses}, {200})
        self.assertEqual(len({r.content for r in responses}), 1, "every delivery gets the original answer")
        self.assertEqual(IoTEvent.objects.filter(duplicate_of__isnull=True).count(), 1)
        self.assertEqual(IoTEvent.objects.filter(outcome=IoTEventOutcome.DUPLICATE).count(), 9)
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertFleetInvariants()

    def test_messages_for_one_station_wait_while_another_station_proceeds(self):
        service = StationSyncService()
        service.sync_station_data(full_payload("STATION-A", timestamp=now_ts() - 60))
        service.sync_station_data(full_payload("STATION-B", timestamp=now_ts() - 60))
        locked = threading.Event()
        release = threading.Event()

        def hold_station_a():
            try:
                with transaction.atomic():
                    Station.objects.select_for_update().get(serial_number="STATION-A")
                    locked.set()
                    release.wait(timeout=30)
            finally:
                connections.close_all()

        def sync(serial):
            def run():
                try:
                    with transaction.atomic():
                        StationSyncService().sync_station_data(full_payload(serial))
                finally:
                    connections.close_all()

            return run

        with ThreadPoolExecutor(max_workers=3) as pool:
            holder = pool.submit(hold_station_a)
            self.assertTrue(locked.wait(timeout=10))
            other = pool.submit(sync("STATION-B"))
            other.result(timeout=10)  # not blocked by the lock on STATION-A
            same = pool.submit(sync("STATION-A"))
            with self.assertRaises(TimeoutError):
                same.result(timeout=1)  # serialized behind the lock
            release.set()
            same.result(timeout=10)
            holder.result(timeout=10)
        self.assertFleetInvariants()


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
@override_settings(IOT_RETURN_GRACE_SECONDS=120)
class LockOrderTests(FleetInvariantsMixin, TransactionTestCase):
    """Writers take station, rental, bank and slot locks in one order: no deadlocks."""

    def setUp(self):
        close_old_connections()
        self.package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("50"))
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)

    def test_rentals_started_while_the_station_syncs_never_deadlock(self):
        banks = {n: (f"4081{n:04d}", 90) for n in range(1, 13)}
        StationSyncService().sync_station_data(full_payload(banks=banks, total_slots=12, timestamp=now_ts() - 60))
        errors = []

        def rent(serial):
            def run():
                try:
                    RentalService.start_rental(
                        user=self.customer,
                        power_bank=PowerBank.objects.get(serial_number=serial),
                        package=self.package,
                    )
                except Exception as exc:  # noqa: BLE001 - the test reports whatever escaped
                    errors.append(exc)

            return run

        def sync(offset):
            def run():
                try:
                    with transaction.atomic():
                        StationSyncService().sync_station_data(
                            full_payload(banks=banks, total_slots=12, timestamp=now_ts() - 30 + offset)
                        )
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

            return run

        work = []
        for n in range(1, 13):
            work.append(rent(banks[n][0]))
            work.append(sync(n))
        run_concurrently(work)

        self.assertEqual(errors, [])
        self.assertEqual(Rental.objects.filter(status=RentalStatus.ACTIVE).count(), 12)
        self.assertFleetInvariants()

    def test_banks_moving_between_two_stations_by_syncs_and_returns_never_deadlock(self):
        service = StationSyncService()
        serials = [f"5081{n:04d}" for n in range(1, 9)]
        base = now_ts() - 120
        service.sync_station_data(
            full_payload("STATION-A", banks={n: (s, 80) for n, s in enumerate(serials, 1)}, total_slots=8, timestamp=base)
        )
        service.sync_station_data(full_payload("STATION-B", total_slots=8, timestamp=base))
        staff = make_staff()
        payloads = []
        for i in range(8):
            # A reports the banks in reverse order while B receives them one by one.
            payloads.append(full_payload(
                "STATION-A", banks={n: (s, 80) for n, s in enumerate(reversed(serials), 1)},
                total_slots=8, timestamp=base + 10 + i,
            ))
            payloads.append(return_payload(serials[i], i + 1, "STATION-B", timestamp=base + 20 + i))
            payloads.append(full_payload(
                "STATION-B", banks={n: (s, 70) for n, s in enumerate(serials[: i + 1], 1)},
                total_slots=8, timestamp=base + 30 + i,
            ))

        responses = run_concurrently([lambda p=p: SenderClient(staff).post(p) for p in payloads])

        self.assertEqual(sorted({r.status_code for r in responses}), [200])
        self.assertFleetInvariants()


class _NoAnswer:
    """A cabinet that never answers in time (the outcome stays unknown)."""

    def popup(self, station_serial, bank_serial):
        return EjectResult(EjectOutcome.TIMEOUT, station_serial, bank_serial, "no answer within 0.1 s")


@unittest.skipUnless(ON_POSTGRES, SKIP_REASON)
@override_settings(IOT_RETURN_GRACE_SECONDS=120, IOT_POPUP_GRACE_SECONDS=120)
class EjectionConcurrencyTests(CabinetApiMixin, FleetInvariantsMixin, TransactionTestCase):
    """Ejections under way against the simulator's IoT API over HTTP, with real threads."""

    def setUp(self):
        close_old_connections()
        self.package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("50"))
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)

    def cabinets(self, **behaviour):
        self.fleet, self.api = self.start_cabinets(
            slots=8, behaviour=ApiBehaviour(**{"delay": 0, "check_delay": 0, **behaviour}), popup_timeout=5.0
        )
        self.serial = self.fleet.stations[0].serial
        StationSyncService().sync_station_data(snapshot(self.fleet, self.serial, time.time() - 3600))
        return [slot.bank.serial for slot in self.fleet.stations[0].slots]

    def rent(self, serial, **kwargs):
        try:
            return RentalService.start_rental(
                user=self.customer, power_bank=PowerBank.objects.get(serial_number=serial), package=self.package, **kwargs
            )
        finally:
            connections.close_all()

    def test_an_ejection_in_flight_holds_no_lock(self):
        banks = self.cabinets(delay=2.0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            renting = pool.submit(self.rent, banks[0])
            deadline = time.monotonic() + 5
            while self.api.popup_requests == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(self.api.popup_requests, 1)
            # While the cabinet is being asked: the station, the bank and its slot are free.
            started = time.monotonic()
            with transaction.atomic():
                Station.objects.select_for_update(nowait=True).get(serial_number=self.serial)
                PowerBank.objects.select_for_update(nowait=True).get(serial_number=banks[0])
                Rental.objects.select_for_update(nowait=True).get()
            StationSyncService().sync_station_data(snapshot(self.fleet, self.serial, time.time() - 1800))
            self.assertLess(time.monotonic() - started, 1.5)
            self.assertFalse(renting.done())
            rental = renting.result(timeout=10)
        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertFleetInvariants()

    def test_two_starts_of_one_bank_make_one_rental_and_one_ejection(self):
        banks = self.cabinets(delay=0.5)

        def attempt():
            try:
                return self.rent(banks[0]).status
            except Conflict as exc:
                return exc.message

        outcomes = run_concurrently([attempt, attempt, attempt])

        self.assertEqual(sorted(outcomes, key=str)[0], RentalStatus.ACTIVE)
        self.assertEqual(outcomes.count(RentalStatus.ACTIVE), 1)
        self.assertEqual(Rental.objects.count(), 1)
        self.assertEqual(self.api.popup_requests, 1)
        self.assertFleetInvariants()

    def test_starts_and_syncs_of_one_station_never_deadlock(self):
        banks = self.cabinets(delay=0.1)
        errors = []

        def rent(serial):
            def run():
                try:
                    self.rent(serial)
                except Exception as exc:  # noqa: BLE001 - the test reports whatever escaped
                    errors.append(exc)

            return run

        def sync(offset):
            def run():
                try:
                    StationSyncService().sync_station_data(snapshot(self.fleet, self.serial, time.time() + offset))
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                finally:
                    connections.close_all()

            return run

        run_concurrently([*(rent(serial) for serial in banks), *(sync(n) for n in range(1, 9))])

        self.assertEqual(errors, [])
        self.assertEqual(Rental.objects.filter(status=RentalStatus.ACTIVE).count(), 8)
        self.assertEqual(self.api.popup_requests, 8)
        self.assertFleetInvariants()

    def test_an_answer_and_a_cabinet_report_settle_each_rental_once(self):
        banks = self.cabinets()
        requested = datetime.fromtimestamp(time.time() - 300, tz=UTC)
        rentals = [self.rent(serial, started_at=requested, cabinet=_NoAnswer()) for serial in banks]
        self.assertEqual({rental.status for rental in rentals}, {RentalStatus.PENDING_POPUP})
        cancelled = []

        def count(sender, rental, **kwargs):
            cancelled.append(rental.pk)

        rental_cancelled.connect(count)
        self.addCleanup(rental_cancelled.disconnect, count)
        # The cabinet kept every bank: its report cancels each rental, and so does each late refusal.
        report = snapshot(self.fleet, self.serial, time.time())

        def refuse(rental):
            def run():
                try:
                    RentalService.settle_ejection(
                        rental, EjectResult(EjectOutcome.REFUSED, self.serial, rental.power_bank.serial_number, "no")
                    )
                finally:
                    connections.close_all()

            return run

        def report_sync():
            try:
                StationSyncService().sync_station_data(report)
            finally:
                connections.close_all()

        run_concurrently([*(refuse(rental) for rental in rentals), report_sync])

        self.assertEqual(Rental.objects.filter(status=RentalStatus.CANCELLED).count(), 8)
        self.assertEqual(sorted(cancelled), sorted(rental.pk for rental in rentals), "each cancelled exactly once")
        self.assertFleetInvariants()

    def test_a_confirmation_and_a_report_without_the_banks_activate_each_rental_once(self):
        banks = self.cabinets()
        requested = datetime.fromtimestamp(time.time() - 60, tz=UTC)
        rentals = [self.rent(serial, started_at=requested, cabinet=_NoAnswer()) for serial in banks]
        for serial in banks:
            self.fleet.eject(self.serial, serial)
        report = snapshot(self.fleet, self.serial, time.time())

        def confirm(rental):
            def run():
                try:
                    RentalService.settle_ejection(
                        rental,
                        EjectResult(EjectOutcome.EJECTED, self.serial, rental.power_bank.serial_number, "ejected", elapsed=1),
                    )
                finally:
                    connections.close_all()

            return run

        def report_sync():
            try:
                StationSyncService().sync_station_data(report)
            finally:
                connections.close_all()

        run_concurrently([*(confirm(rental) for rental in rentals), report_sync])

        settled = Rental.objects.filter(status=RentalStatus.ACTIVE)
        self.assertEqual(settled.count(), 8)
        for rental in settled:
            # From the request (the report won) or a second after it (the answer won), never both.
            self.assertIn(rental.started_at - requested, (timedelta(0), timedelta(seconds=1)))
            self.assertEqual(rental.due_at - rental.started_at, timedelta(minutes=60))
        self.assertEqual(PowerBank.objects.filter(status=PowerBankStatus.RENTED, current_slot__isnull=True).count(), 8)
        self.assertFleetInvariants()

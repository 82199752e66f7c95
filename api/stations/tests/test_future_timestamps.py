"""
A body timestamp from the future never becomes a station's ordering key (docs/design.md,
ordering): a cabinet with a clock days ahead would otherwise make every genuine message
after it stale.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import import_module

from django.test import TestCase, override_settings

from api.rentals.models import RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import IoTEvent, IoTEventOutcome, PowerBank, Station, StationStatus
from api.stations.tests.factories import SIGNED as SIGNED_BASE
from api.stations.tests.factories import (
    STATION_SERIAL,
    SenderClient,
    full_payload,
    make_staff,
    now_ts,
    return_payload,
    status_payload,
)

BANK = "40818052"
TOLERANCE = 300
SIGNED = override_settings(**SIGNED_BASE.options, IOT_SIGNATURE_TOLERANCE_SECONDS=TOLERANCE)


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@SIGNED
class FutureTimestampTests(TestCase):
    def setUp(self):
        self.sender = SenderClient(make_staff())
        self.now = now_ts()
        response = self.sender.post(full_payload(banks={1: (BANK, 90)}, timestamp=self.now - 600))
        self.assertEqual(response.status_code, 200, response.content)

    def assertRefusedAsFuture(self, response):
        self.assertEqual(response.status_code, 400, response.content)
        body = response.json()
        self.assertEqual(body["error"], "VALIDATION_ERROR")
        self.assertIn("timestamp", body["errors"])
        self.assertIn("future", " ".join(body["errors"]["timestamp"]))

    def test_a_full_sync_dated_a_day_ahead_is_refused_and_the_next_genuine_one_applies(self):
        station = Station.objects.get()
        state_at = station.device_state_at

        future = self.sender.post(full_payload(banks={2: (BANK, 50)}, timestamp=self.now + 86400))

        self.assertRefusedAsFuture(future)
        station.refresh_from_db()
        self.assertEqual(station.device_state_at, state_at)
        self.assertEqual(PowerBank.objects.get().current_slot.slot_number, 1)
        event = IoTEvent.objects.latest("pk")
        self.assertEqual(event.outcome, IoTEventOutcome.REJECTED)
        self.assertIn("timestamp", event.error)

        genuine = self.sender.post(full_payload(banks={3: (BANK, 40)}, timestamp=self.now))

        self.assertEqual(genuine.status_code, 200, genuine.content)
        self.assertTrue(genuine.json()["data"]["applied"])
        station.refresh_from_db()
        self.assertEqual(station.device_state_at, at(self.now))
        self.assertEqual(PowerBank.objects.get().current_slot.slot_number, 3)

    def test_a_status_dated_ahead_is_refused(self):
        future = self.sender.post(status_payload("OFFLINE", timestamp=self.now + TOLERANCE + 60))

        self.assertRefusedAsFuture(future)
        station = Station.objects.get()
        self.assertEqual(station.status, StationStatus.ONLINE)
        self.assertEqual(station.device_state_at, at(self.now - 600))

        genuine = self.sender.post(status_payload("OFFLINE", timestamp=self.now))
        self.assertEqual(genuine.status_code, 200, genuine.content)
        self.assertTrue(genuine.json()["data"]["applied"])

    def test_a_timestamp_within_the_tolerance_ahead_is_accepted(self):
        # The same allowance the signature's X-Timestamp gets: ordinary clock drift.
        response = self.sender.post(status_payload("OFFLINE", timestamp=self.now + TOLERANCE - 5))

        self.assertEqual(response.status_code, 200, response.content)
        self.assertTrue(response.json()["data"]["applied"])

    @override_settings(IOT_SIGNATURE_TOLERANCE_SECONDS=30)
    def test_the_limit_follows_the_signature_tolerance(self):
        response = self.sender.post(status_payload("OFFLINE", timestamp=self.now + 120))

        self.assertRefusedAsFuture(response)

    def test_a_return_dated_ahead_is_still_applied_and_moves_no_ordering_key(self):
        # A return is money: it closes the rental (at our clock, never later), and it never
        # was an ordering key.
        package = RentalPackage.objects.create(name="1 h", duration_minutes=60, price=Decimal("100.00"))
        rental = RentalService.start_rental(
            user=make_staff("customer@chargeghar.test", is_staff=False),
            power_bank=PowerBank.objects.get(),
            package=package,
            started_at=at(self.now - 300),
        )
        state_at = Station.objects.get().device_state_at

        response = self.sender.post(
            return_payload(BANK, 2, returned_at=at(self.now + 86400), timestamp=self.now + 86400)
        )

        self.assertEqual(response.status_code, 200, response.content)
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertLessEqual(rental.ended_at, datetime.now(tz=UTC))
        station = Station.objects.get()
        self.assertEqual(station.device_state_at, state_at)
        self.assertLessEqual(station.last_heartbeat, datetime.now(tz=UTC))

    def test_a_device_heartbeat_from_the_future_is_capped_not_refused(self):
        payload = full_payload(timestamp=self.now, last_heartbeat=datetime.now(tz=UTC) + timedelta(days=1))

        response = self.sender.post(payload)

        self.assertEqual(response.status_code, 200, response.content)
        self.assertLessEqual(Station.objects.get(serial_number=STATION_SERIAL).last_heartbeat, datetime.now(tz=UTC))


class RepairMigrationTests(TestCase):
    """Migration 0006 sets times already stored in the future to now."""

    def test_future_times_are_set_to_now_and_others_left_alone(self):
        from django.apps import apps
        from django.utils import timezone

        migration = import_module("api.stations.migrations.0006_repair_future_device_times")
        now = timezone.now()
        frozen = Station.objects.create(
            serial_number="FROZEN01",
            imei="FROZEN01",
            device_state_at=now + timedelta(days=3),
            last_heartbeat=now + timedelta(hours=2),
            status_changed_at=now + timedelta(days=1),
        )
        healthy = Station.objects.create(
            serial_number="HEALTHY1",
            imei="HEALTHY1",
            device_state_at=now - timedelta(minutes=5),
            last_heartbeat=now - timedelta(minutes=4),
            status_changed_at=now - timedelta(hours=1),
        )
        never = Station.objects.create(serial_number="NEVER001", imei="NEVER001")
        before = {
            station.pk: (station.device_state_at, station.last_heartbeat, station.status_changed_at)
            for station in (healthy, never)
        }

        migration.repair_future_times(apps, None)

        frozen.refresh_from_db()
        after = timezone.now()
        for value in (frozen.device_state_at, frozen.last_heartbeat, frozen.status_changed_at):
            self.assertTrue(now <= value <= after, value)
        for station in (healthy, never):
            station.refresh_from_db()
            self.assertEqual(
                (station.device_state_at, station.last_heartbeat, station.status_changed_at), before[station.pk]
            )

    @SIGNED
    def test_a_repaired_station_applies_genuine_messages_again(self):
        from django.apps import apps

        migration = import_module("api.stations.migrations.0006_repair_future_device_times")
        sender = SenderClient(make_staff())
        sender.post(full_payload(timestamp=now_ts() - 60))
        # As a cabinet with a wrong clock left it before timestamps were checked.
        Station.objects.update(device_state_at=datetime.now(tz=UTC) + timedelta(days=30))
        stale = sender.post(status_payload("OFFLINE", timestamp=now_ts() - 30))
        self.assertFalse(stale.json()["data"]["applied"])

        migration.repair_future_times(apps, None)
        genuine = sender.post(status_payload("OFFLINE", timestamp=now_ts() + 1))

        self.assertEqual(genuine.status_code, 200, genuine.content)
        self.assertTrue(genuine.json()["data"]["applied"])
        self.assertEqual(Station.objects.get().status, StationStatus.OFFLINE)

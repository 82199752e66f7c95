"""Full sync rules (docs/design.md, rules 3, 4, 5, 8, 9)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.test import TestCase, override_settings

from api.rentals.models import RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    SlotStatus,
    Station,
    StationSlot,
    StationStatus,
    StationStatusHistory,
    StatusTrigger,
)
from api.stations.services.schemas import parse_message
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import (
    SenderClient,
    full_payload,
    make_staff,
    now_ts,
)
from api.stations.tests.fleet import FleetInvariantsMixin

OTHER_SERIAL = "864601069940000"


def sync(payload):
    return StationSyncService().sync_station_data(payload)


def slot_of(serial):
    bank = PowerBank.objects.select_related("current_slot", "current_station").get(serial_number=serial)
    if bank.current_slot is None:
        return None
    return bank.current_station.serial_number, bank.current_slot.slot_number


class FullSyncTests(FleetInvariantsMixin, TestCase):
    def test_full_sync_registers_a_new_station_with_placeholders(self):
        result = sync(full_payload(banks={2: ("40818052", 90)}))

        station = Station.objects.get()
        self.assertEqual(station.station_name, "Station 6994")
        self.assertEqual(station.address, "Pending")
        self.assertEqual((station.latitude, station.longitude), (0, 0))
        self.assertEqual(station.status, StationStatus.ONLINE)
        self.assertEqual(station.firmware_version, "2.1.5")
        self.assertEqual(station.signal_strength, "31")
        self.assertEqual(result["slots_updated"], 4)
        self.assertEqual(result["powerbanks_updated"], 1)
        self.assertTrue(result["applied"])
        self.assertEqual(slot_of("40818052"), (station.serial_number, 2))
        self.assertEqual(StationSlot.objects.get(slot_number=2).status, SlotStatus.OCCUPIED)
        self.assertFleetInvariants()

    def test_full_sync_matches_a_station_registered_by_imei_without_duplicating_it(self):
        registered = Station.objects.create(
            serial_number="KTM-CENTRAL-01",
            imei="864601069946994",
            station_name="New Road",
            address="New Road, Kathmandu",
        )
        sync(full_payload())

        self.assertEqual(Station.objects.count(), 1)
        registered.refresh_from_db()
        self.assertEqual(registered.status, StationStatus.ONLINE)
        self.assertEqual(registered.slots.count(), 4)

    def test_full_sync_never_overwrites_operator_owned_fields(self):
        sync(full_payload(banks={1: ("40818048", 50)}, timestamp=now_ts() - 60))
        Station.objects.update(
            station_name="Durbar Marg", address="Durbar Marg 4", latitude=Decimal("27.712"), longitude=Decimal("85.318")
        )
        PowerBank.objects.update(model="PB-10K", capacity_mah=10000)

        sync(full_payload(banks={1: ("40818048", 60)}))

        station = Station.objects.get()
        self.assertEqual(
            (station.station_name, station.address, station.latitude, station.longitude),
            ("Durbar Marg", "Durbar Marg 4", Decimal("27.712000"), Decimal("85.318000")),
        )
        bank = PowerBank.objects.get()
        self.assertEqual((bank.model, bank.capacity_mah, bank.battery_level), ("PB-10K", 10000, 60))

    def test_full_sync_counts_as_a_heartbeat(self):
        heartbeat = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        sync(full_payload(timestamp=int(heartbeat.timestamp()), last_heartbeat=heartbeat))
        self.assertEqual(Station.objects.get().last_heartbeat, heartbeat)

    def test_the_station_s_reported_fields_are_stored_exactly(self):
        # The fields travel to the database as one JSON document: times keep their
        # microseconds, text its script, and an integer beyond 64 bits its every digit.
        heartbeat = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
        payload = full_payload(timestamp=int(heartbeat.timestamp()))
        payload["device"]["last_heartbeat"] = "2026-01-01T12:00:00.123456Z"
        hardware_info = {"firmware_version": "2.1.6", "counter": 2**64 + 1, "vendor": "深圳", "nested": {"a": [1, None]}}
        payload["device"].update(hardware_info=hardware_info, signal_strength=-71, wifi_ssid="ChargeGhar 5G")

        sync(payload)

        station = Station.objects.get()
        self.assertEqual(station.hardware_info, hardware_info)
        self.assertEqual(station.firmware_version, "2.1.6")
        self.assertEqual((station.signal_strength, station.wifi_ssid), ("-71", "ChargeGhar 5G"))
        self.assertEqual(station.last_heartbeat, heartbeat)
        self.assertEqual(station.device_state_at, datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
        self.assertEqual(station.status, StationStatus.ONLINE)
        self.assertEqual(station.total_slots, 4)

    def test_a_bank_reported_here_moves_here_and_frees_its_old_slot(self):
        sync(full_payload(OTHER_SERIAL, banks={3: ("40818052", 70)}))

        sync(full_payload(banks={1: ("40818052", 75)}))

        self.assertEqual(slot_of("40818052"), ("864601069946994", 1))
        old_slot = StationSlot.objects.get(station__serial_number=OTHER_SERIAL, slot_number=3)
        self.assertEqual(old_slot.status, SlotStatus.AVAILABLE)
        self.assertFleetInvariants()

    def test_a_bank_absent_from_the_snapshot_is_detached_and_listed(self):
        sync(full_payload(banks={1: ("40818048", 50), 2: ("40818052", 80)}, timestamp=now_ts() - 60))

        result = sync(full_payload(banks={1: ("40818048", 55)}))

        self.assertEqual(result["detached_power_banks"], ["40818052"])
        bank = PowerBank.objects.get(serial_number="40818052")
        self.assertIsNone(bank.current_slot)
        self.assertIsNone(bank.current_station)
        self.assertEqual(StationSlot.objects.get(slot_number=2).status, SlotStatus.AVAILABLE)
        self.assertFleetInvariants()

    def test_two_banks_swap_slots_in_one_snapshot(self):
        sync(full_payload(banks={1: ("40818048", 50), 2: ("40818052", 80)}, timestamp=now_ts() - 60))

        sync(full_payload(banks={1: ("40818052", 80), 2: ("40818048", 50)}))

        self.assertEqual(slot_of("40818048"), ("864601069946994", 2))
        self.assertEqual(slot_of("40818052"), ("864601069946994", 1))
        self.assertFleetInvariants()

    def test_a_bank_listed_only_in_slots_is_registered(self):
        payload = full_payload(banks={1: ("40818048", 50)})
        payload["power_banks"] = []
        sync(payload)
        self.assertEqual(slot_of("40818048"), ("864601069946994", 1))
        self.assertEqual(PowerBank.objects.get().battery_level, 50)

    def test_the_power_banks_entry_places_a_bank_the_slot_entry_left_out(self):
        payload = full_payload(banks={1: ("40818048", 50)})
        del payload["slots"][0]["power_bank_serial"]
        payload["slots"][0]["status"] = "AVAILABLE"
        sync(payload)
        self.assertEqual(slot_of("40818048"), ("864601069946994", 1))
        self.assertEqual(StationSlot.objects.get(slot_number=1).status, SlotStatus.OCCUPIED)

    def test_slot_errors_in_chinese_are_kept_in_slot_metadata(self):
        payload = full_payload(banks={1: ("40818048", 40)})
        payload["slots"][0]["status"] = "ERROR"
        payload["slots"][0]["slot_metadata"]["error_message"] = "孔位异常：0X04"
        sync(payload)
        slot = StationSlot.objects.get(slot_number=1)
        self.assertEqual(slot.status, SlotStatus.ERROR)
        self.assertEqual(slot.slot_metadata["error_message"], "孔位异常：0X04")

    def test_an_older_full_sync_is_stale_and_changes_nothing(self):
        client = SenderClient(make_staff())
        now = now_ts()
        client.post(full_payload(banks={1: ("40818048", 90)}, timestamp=now))
        before = list(PowerBank.objects.values_list("serial_number", "battery_level", "current_slot"))

        response = client.post(full_payload(banks={2: ("40818052", 10)}, timestamp=now - 30))

        self.assertEqual(response.status_code, 200)
        self.assertFalse(response.json()["data"]["applied"])
        self.assertEqual(
            list(PowerBank.objects.values_list("serial_number", "battery_level", "current_slot")), before
        )
        self.assertEqual(IoTEvent.objects.filter(outcome=IoTEventOutcome.STALE).count(), 1)

    def test_a_full_sync_brings_an_offline_station_online_with_history(self):
        sync(full_payload(timestamp=now_ts() - 120))
        Station.objects.update(status=StationStatus.OFFLINE)

        sync(full_payload())

        self.assertEqual(Station.objects.get().status, StationStatus.ONLINE)
        last = StationStatusHistory.objects.first()
        self.assertEqual(
            (last.previous_status, last.status, last.trigger),
            (StationStatus.OFFLINE, StationStatus.ONLINE, StatusTrigger.FULL_SYNC),
        )

    def test_a_repeated_full_sync_writes_no_second_history_row(self):
        sync(full_payload(timestamp=now_ts() - 60))
        sync(full_payload())
        self.assertEqual(StationStatusHistory.objects.count(), 1)


@override_settings(IOT_RETURN_GRACE_SECONDS=120)
class LostReturnTests(FleetInvariantsMixin, TestCase):
    def setUp(self):
        self.package = RentalPackage.objects.create(name="Hour", duration_minutes=60, price=Decimal("60"))
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)
        self.start = now_ts() - 600
        sync(full_payload(banks={1: ("40818048", 90)}, timestamp=self.start - 60))
        self.rental = RentalService.start_rental(
            user=self.customer,
            power_bank=PowerBank.objects.get(serial_number="40818048"),
            package=self.package,
            started_at=datetime.fromtimestamp(self.start, tz=UTC),
        )

    def test_a_bank_back_in_a_slot_after_the_grace_period_closes_its_rental(self):
        snapshot = self.start + 300
        result = sync(full_payload(banks={3: ("40818048", 80)}, timestamp=snapshot))

        self.assertEqual(result["offline_returns_processed"], 1)
        self.rental.refresh_from_db()
        self.assertEqual(self.rental.status, RentalStatus.COMPLETED)
        self.assertEqual(self.rental.ended_at, datetime.fromtimestamp(snapshot, tz=UTC))
        self.assertEqual(self.rental.return_station.serial_number, "864601069946994")
        self.assertTrue(self.rental.is_returned_on_time)
        self.assertEqual(self.rental.return_battery_level, 80)
        self.assertFleetInvariants()

    def test_a_snapshot_within_the_grace_period_leaves_the_rental_open(self):
        result = sync(full_payload(banks={3: ("40818048", 80)}, timestamp=self.start + 60))

        self.assertEqual(result["offline_returns_processed"], 0)
        self.rental.refresh_from_db()
        self.assertEqual(self.rental.status, RentalStatus.ACTIVE)

    def test_lost_return_sends_rental_completed_after_commit(self):
        from api.rentals.signals import rental_completed

        received = []

        def receiver(sender, rental, offline_return, **kwargs):
            received.append((rental.rental_code, offline_return))

        rental_completed.connect(receiver)
        self.addCleanup(rental_completed.disconnect, receiver)
        with self.captureOnCommitCallbacks(execute=True):
            sync(full_payload(banks={3: ("40818048", 80)}, timestamp=self.start + 300))
        self.assertEqual(received, [(self.rental.rental_code, True)])


class FullSyncQueryCountTests(TestCase):
    """
    The cost of a full sync does not depend on the slot count. For an existing station
    two of whose banks were rented out (the common case), the queries are:
      1 SELECT station FOR UPDATE, and whether any reported bank has an open rental
      2 SELECT banks FOR UPDATE          4 INSERT .. ON CONFLICT slots
      3 UPDATE banks leaving slots       5 INSERT .. ON CONFLICT banks
                                         6 UPDATE station
    (plus SELECT open rentals FOR UPDATE, only when some bank has one, and UPDATE of the
    slots banks left, only when the snapshot does not report them). On PostgreSQL, 4, 5
    and 6 are one statement (WITH clauses of the banks' upsert), so every count is two
    lower there.
    """

    def expected(self, count: int) -> int:
        return count - 2 if connection.vendor == "postgresql" else count

    def _second_sync_queries(self, slots: int):
        serial = f"STATION{slots:02d}"
        first = {n: (f"{slots}{n:05d}", 80) for n in range(1, slots + 1) if n % 4}
        sync(full_payload(serial, banks=first, total_slots=slots, timestamp=now_ts() - 60))
        # Two banks rented out, every other one still in place with a new battery level.
        second = {n: (bank, 90) for n, (bank, _) in first.items() if n > 2}
        return parse_message(full_payload(serial, banks=second, total_slots=slots))

    def test_full_sync_of_4_slots_takes_6_queries(self):
        message = self._second_sync_queries(4)
        with self.assertNumQueries(self.expected(6)):
            sync(message)

    def test_full_sync_of_24_slots_takes_6_queries(self):
        message = self._second_sync_queries(24)
        with self.assertNumQueries(self.expected(6)):
            sync(message)

    def test_full_sync_of_48_slots_takes_6_queries(self):
        message = self._second_sync_queries(48)
        with self.assertNumQueries(self.expected(6)):
            sync(message)

    def test_unchanged_full_sync_of_48_slots_takes_5_queries(self):
        serial = "STATION48"
        banks = {n: (f"48{n:05d}", 80) for n in range(1, 49) if n % 4}
        sync(full_payload(serial, banks=banks, total_slots=48, timestamp=now_ts() - 60))
        message = parse_message(full_payload(serial, banks=banks, total_slots=48))
        # No bank moves: no detach, no vacated slots; no open rental to look up.
        with self.assertNumQueries(self.expected(5)):
            sync(message)

    def test_first_full_sync_of_a_new_station_takes_a_constant_number_of_queries(self):
        for slots in (4, 24, 48):
            banks = {n: (f"9{slots}{n:05d}", 80) for n in range(1, slots + 1) if n % 2}
            message = parse_message(full_payload(f"NEW{slots}", banks=banks, total_slots=slots))
            # SELECT by serial, by serial or IMEI, INSERT, SELECT station; rentals; banks;
            # slots; banks; station; history
            with self.assertNumQueries(self.expected(10)):
                sync(message)


class FullSyncTimelineTests(TestCase):
    def test_heartbeat_from_the_future_is_clamped_to_now(self):
        future = datetime.now(tz=UTC) + timedelta(days=1)
        sync(full_payload(last_heartbeat=future))
        self.assertLessEqual(Station.objects.get().last_heartbeat, datetime.now(tz=UTC))

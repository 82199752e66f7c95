"""
Station, slot, power bank and event-log invariants are enforced by the DATABASE.

Every write here goes through `create()`, `bulk_create()` or `update()`, which skip model
validation, so only a constraint can refuse the bad row. Each test also proves the table
is left exactly as it was.
"""

from django.utils import timezone

from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    SlotStatus,
    Station,
    StationSlot,
    StationStatus,
)
from api.stations.tests.fleet import DatabaseInvariantTestCase

STATION_SERIAL = "864601069946994"
OTHER_STATION_SERIAL = "864601069946995"


def make_station(serial=STATION_SERIAL, **fields):
    return Station.objects.create(serial_number=serial, station_name=f"Station {serial[-4:]}", **fields)


def make_slot(station, number=1, **fields):
    return StationSlot.objects.create(station=station, slot_number=number, **fields)


def make_bank(serial="40818048", **fields):
    return PowerBank.objects.create(serial_number=serial, **fields)


class StationInvariantTests(DatabaseInvariantTestCase):
    def setUp(self):
        self.station = make_station()

    def test_station_serial_number_is_unique(self):
        self.assertRefusedByDatabase(Station, lambda: make_station(STATION_SERIAL))

    def test_station_status_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(Station, lambda: make_station(OTHER_STATION_SERIAL, status="BROKEN"))
        self.assertRefusedByDatabase(
            Station, lambda: Station.objects.filter(pk=self.station.pk).update(status="online")
        )
        self.station.refresh_from_db()
        self.assertEqual(self.station.status, StationStatus.OFFLINE)

    def test_station_coordinates_out_of_range_are_refused(self):
        for name, fields in {
            "latitude above 90": {"latitude": 90.5},
            "latitude below -90": {"latitude": -90.5},
            "longitude above 180": {"longitude": 180.5},
            "longitude below -180": {"longitude": -180.5},
        }.items():
            with self.subTest(name):
                self.assertRefusedByDatabase(
                    Station, lambda fields=fields: make_station(OTHER_STATION_SERIAL, **fields)
                )

    def test_station_at_the_coordinate_limits_is_fine(self):
        make_station(OTHER_STATION_SERIAL, latitude=-90, longitude=180)

        self.assertEqual(Station.objects.count(), 2)


class SlotInvariantTests(DatabaseInvariantTestCase):
    def setUp(self):
        self.station = make_station()
        self.slot = make_slot(self.station, 1)

    def test_slot_number_is_unique_per_station(self):
        self.assertRefusedByDatabase(StationSlot, lambda: make_slot(self.station, 1))
        self.assertRefusedByDatabase(
            StationSlot,
            lambda: StationSlot.objects.bulk_create(
                [
                    StationSlot(station=self.station, slot_number=2),
                    StationSlot(station=self.station, slot_number=2),
                ]
            ),
        )

    def test_the_same_slot_number_at_another_station_is_fine(self):
        make_slot(make_station(OTHER_STATION_SERIAL), 1)

        self.assertEqual(StationSlot.objects.filter(slot_number=1).count(), 2)

    def test_slot_number_zero_is_refused(self):
        self.assertRefusedByDatabase(StationSlot, lambda: make_slot(self.station, 0))
        self.assertRefusedByDatabase(
            StationSlot, lambda: StationSlot.objects.filter(pk=self.slot.pk).update(slot_number=0)
        )
        self.slot.refresh_from_db()
        self.assertEqual(self.slot.slot_number, 1)

    def test_slot_battery_level_above_100_is_refused(self):
        self.assertRefusedByDatabase(StationSlot, lambda: make_slot(self.station, 2, battery_level=101))
        self.assertRefusedByDatabase(
            StationSlot, lambda: StationSlot.objects.filter(pk=self.slot.pk).update(battery_level=101)
        )
        self.slot.refresh_from_db()
        self.assertEqual(self.slot.battery_level, 0)

    def test_slot_negative_battery_level_is_refused(self):
        self.assertRefusedByDatabase(
            StationSlot, lambda: StationSlot.objects.filter(pk=self.slot.pk).update(battery_level=-1)
        )
        self.slot.refresh_from_db()
        self.assertEqual(self.slot.battery_level, 0)

    def test_slot_battery_levels_0_and_100_are_fine(self):
        make_slot(self.station, 2, battery_level=100)
        StationSlot.objects.filter(pk=self.slot.pk).update(battery_level=0)

        self.assertEqual(StationSlot.objects.count(), 2)

    def test_slot_status_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(StationSlot, lambda: make_slot(self.station, 2, status="FULL"))
        self.assertRefusedByDatabase(
            StationSlot, lambda: StationSlot.objects.filter(pk=self.slot.pk).update(status="")
        )
        self.slot.refresh_from_db()
        self.assertEqual(self.slot.status, SlotStatus.AVAILABLE)


class PowerBankInvariantTests(DatabaseInvariantTestCase):
    def setUp(self):
        self.station = make_station()
        self.slot = make_slot(self.station, 1)
        self.bank = make_bank("40818048", current_station=self.station, current_slot=self.slot)

    def test_power_bank_serial_number_is_unique(self):
        self.assertRefusedByDatabase(PowerBank, lambda: make_bank("40818048"))

    def test_power_bank_battery_level_above_100_is_refused(self):
        self.assertRefusedByDatabase(PowerBank, lambda: make_bank("40818052", battery_level=101))
        self.assertRefusedByDatabase(
            PowerBank, lambda: PowerBank.objects.filter(pk=self.bank.pk).update(battery_level=101)
        )
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.battery_level, 0)

    def test_power_bank_negative_battery_level_is_refused(self):
        self.assertRefusedByDatabase(
            PowerBank, lambda: PowerBank.objects.filter(pk=self.bank.pk).update(battery_level=-1)
        )
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.battery_level, 0)

    def test_power_bank_status_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(PowerBank, lambda: make_bank("40818052", status="LOST"))
        self.assertRefusedByDatabase(
            PowerBank, lambda: PowerBank.objects.filter(pk=self.bank.pk).update(status="rented")
        )
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.status, PowerBankStatus.AVAILABLE)

    def test_a_slot_holds_at_most_one_power_bank(self):
        self.assertRefusedByDatabase(
            PowerBank,
            lambda: make_bank("40818052", current_station=self.station, current_slot=self.slot),
        )

    def test_moving_a_second_bank_into_an_occupied_slot_is_refused(self):
        other = make_bank("40818052", current_station=self.station)

        self.assertRefusedByDatabase(
            PowerBank, lambda: PowerBank.objects.filter(pk=other.pk).update(current_slot=self.slot)
        )
        other.refresh_from_db()
        self.assertIsNone(other.current_slot_id)

    def test_any_number_of_banks_can_be_out_of_a_slot(self):
        make_bank("40818052")
        make_bank("40818053", current_station=self.station)

        self.assertEqual(PowerBank.objects.filter(current_slot__isnull=True).count(), 2)

    def test_a_bank_in_a_slot_must_have_a_station(self):
        other_slot = make_slot(self.station, 2)

        self.assertRefusedByDatabase(PowerBank, lambda: make_bank("40818052", current_slot=other_slot))
        self.assertRefusedByDatabase(
            PowerBank, lambda: PowerBank.objects.filter(pk=self.bank.pk).update(current_station=None)
        )
        self.bank.refresh_from_db()
        self.assertEqual(self.bank.current_station_id, self.station.pk)


class IoTEventInvariantTests(DatabaseInvariantTestCase):
    def setUp(self):
        self.original = IoTEvent.objects.create(received_at=timezone.now(), body_sha256="a" * 64)

    def test_a_body_digest_has_one_original_event(self):
        self.assertRefusedByDatabase(
            IoTEvent, lambda: IoTEvent.objects.create(received_at=timezone.now(), body_sha256="a" * 64)
        )

    def test_repeat_deliveries_of_a_body_may_point_at_the_original(self):
        for _ in range(2):
            IoTEvent.objects.create(
                received_at=timezone.now(),
                body_sha256="a" * 64,
                duplicate_of=self.original,
                outcome=IoTEventOutcome.DUPLICATE,
            )

        self.assertEqual(IoTEvent.objects.filter(body_sha256="a" * 64).count(), 3)

    def test_event_outcome_outside_the_choices_is_refused(self):
        self.assertRefusedByDatabase(
            IoTEvent,
            lambda: IoTEvent.objects.create(received_at=timezone.now(), body_sha256="b" * 64, outcome="OK"),
        )
        self.assertRefusedByDatabase(
            IoTEvent, lambda: IoTEvent.objects.filter(pk=self.original.pk).update(outcome="DONE")
        )
        self.original.refresh_from_db()
        self.assertEqual(self.original.outcome, IoTEventOutcome.RECEIVED)

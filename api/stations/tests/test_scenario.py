"""
A day in the life of one station, replayed through the endpoint.

Full syncs every 20 minutes; a customer rents a bank and the cabinet's return message is
lost (the next full sync recovers it); a second rental is returned late through a return
message; a full sync delayed in transit arrives after a newer one; the cabinet drops off
the network for an evening and comes back. The final rows are checked field by field.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.test import TestCase, override_settings

from api.rentals.models import PaymentStatus, Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    SlotStatus,
    Station,
    StationSlot,
    StationStatus,
    StationStatusHistory,
    StatusTrigger,
)
from api.stations.services.status import monitor
from api.stations.tests.factories import (
    STATION_SERIAL,
    SenderClient,
    full_payload,
    make_staff,
    return_payload,
    status_payload,
)
from api.stations.tests.fleet import FleetInvariantsMixin

A, B, C, D = "40818048", "40818052", "40818061", "40818077"


@override_settings(IOT_RETURN_GRACE_SECONDS=120, IOT_OFFLINE_AFTER_MINUTES=30)
class OneDayOfOneStationTests(FleetInvariantsMixin, TestCase):
    def setUp(self):
        self.client_ = SenderClient(make_staff())
        self.midnight = (datetime.now(tz=UTC) - timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        self.package = RentalPackage.objects.create(
            name="One hour", duration_minutes=60, price=Decimal("100.00"), grace_minutes=5
        )
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)

    def at(self, hours: float) -> datetime:
        return self.midnight + timedelta(hours=hours)

    def ts(self, hours: float) -> int:
        return int(self.at(hours).timestamp())

    def sync(self, hours: float, banks: dict):
        response = self.client_.post(full_payload(banks=banks, timestamp=self.ts(hours)))
        self.assertEqual(response.status_code, 200, response.content)
        return response.json()["data"]

    def test_one_day_of_syncs_rentals_a_lost_return_a_stale_sync_and_an_offline_evening(self):
        full = {1: (A, 100), 2: (B, 100), 3: (C, 100), 4: (D, 100)}
        hour = 0.0
        # 00:00 - 09:00: all four banks in their slots, every 20 minutes.
        while hour < 9:
            self.sync(hour, full)
            hour += 1 / 3

        # 09:05 a customer takes bank B (an operator starts the rental).
        rental_b = RentalService.start_rental(
            user=self.customer,
            power_bank=PowerBank.objects.get(serial_number=B),
            package=self.package,
            started_at=self.at(9 + 5 / 60),
        )
        without_b = {1: (A, 100), 3: (C, 100), 4: (D, 100)}
        detached = self.sync(9 + 1 / 3, without_b)["detached_power_banks"]
        self.assertEqual(detached, [])  # the rental already took B out of its slot

        self.sync(9 + 2 / 3, without_b)
        # 09:45 B is pushed into slot 2, but the return message is lost. The 10:00 sync
        # sees it there and closes the rental at the snapshot time (before it was due).
        recovered = self.sync(10, {**without_b, 2: (B, 35)})
        self.assertEqual(recovered["offline_returns_processed"], 1)

        # 12:20 arrives, then the 12:00 sync that was delayed in transit: stale.
        self.sync(12 + 1 / 3, full)
        stale = self.client_.post(full_payload(banks=without_b, timestamp=self.ts(12)))
        self.assertEqual(stale.status_code, 200)
        self.assertFalse(stale.json()["data"]["applied"])

        # 14:00 bank C rented; returned late at 15:15 (10 minutes beyond grace) into slot 4,
        # after D was taken out for maintenance.
        rental_c = RentalService.start_rental(
            user=self.customer,
            power_bank=PowerBank.objects.get(serial_number=C),
            package=self.package,
            started_at=self.at(14),
        )
        self.sync(14 + 1 / 3, {1: (A, 100), 2: (B, 60)})
        returned = self.client_.post(
            return_payload(C, 3, battery=20, returned_at=self.at(15.25), timestamp=self.ts(15.25))
        )
        self.assertEqual(returned.status_code, 200)
        self.assertEqual(returned.json()["data"]["charges"]["overdue_amount"], "33.33")
        # The sender retries the identical body (it timed out on its side): same answer.
        retried = self.client_.post(returned.wsgi_request.body)
        self.assertEqual(retried.content, returned.content)

        self.sync(15 + 1 / 3, {1: (A, 100), 2: (B, 70), 3: (C, 25)})

        # 18:00 the cabinet loses its connection; nothing until 19:30.
        offline = self.client_.post(status_payload("OFFLINE", timestamp=self.ts(18)))
        self.assertTrue(offline.json()["data"]["status_changed"])
        monitor(now=self.at(18.75))  # already OFFLINE: the monitor adds nothing
        self.client_.post(status_payload("ONLINE", timestamp=self.ts(19.5)))
        hour = 19.5
        final = {1: (A, 100), 2: (B, 100), 3: (C, 90)}
        while hour < 24:
            self.sync(hour, final)
            hour += 1 / 3
        # After midnight the cabinet goes silent; the monitor notices after 30 minutes.
        monitor(now=self.at(24.5))

        # --- the station
        station = Station.objects.get()
        self.assertEqual(station.serial_number, STATION_SERIAL)
        self.assertEqual(station.status, StationStatus.OFFLINE)
        last_sync = self.at(19.5 + 13 / 3)  # 23:50
        self.assertEqual(station.last_heartbeat, last_sync)
        self.assertEqual(station.device_state_at, last_sync)
        self.assertEqual(station.total_slots, 4)

        # --- the banks and slots
        banks = {
            bank.serial_number: (bank.current_slot.slot_number if bank.current_slot else None, bank.battery_level, bank.status)
            for bank in PowerBank.objects.select_related("current_slot")
        }
        self.assertEqual(
            banks,
            {
                A: (1, 100, PowerBankStatus.AVAILABLE),
                B: (2, 100, PowerBankStatus.AVAILABLE),
                C: (3, 90, PowerBankStatus.AVAILABLE),
                D: (None, 100, PowerBankStatus.AVAILABLE),
            },
        )
        self.assertIsNone(PowerBank.objects.get(serial_number=D).current_station)
        self.assertEqual(
            list(StationSlot.objects.order_by("slot_number").values_list("slot_number", "status")),
            [(1, SlotStatus.OCCUPIED), (2, SlotStatus.OCCUPIED), (3, SlotStatus.OCCUPIED), (4, SlotStatus.AVAILABLE)],
        )

        # --- the rentals
        rental_b.refresh_from_db()
        self.assertEqual(
            (rental_b.status, rental_b.ended_at, rental_b.return_station_id, rental_b.is_returned_on_time),
            (RentalStatus.COMPLETED, self.at(10), station.pk, True),
        )
        self.assertEqual(
            (rental_b.base_amount, rental_b.overdue_amount, rental_b.payment_status, rental_b.return_battery_level),
            (Decimal("100.00"), Decimal("0.00"), PaymentStatus.PAID, 35),
        )
        rental_c.refresh_from_db()
        self.assertEqual(
            (rental_c.status, rental_c.ended_at, rental_c.is_returned_on_time, rental_c.return_battery_level),
            (RentalStatus.COMPLETED, self.at(15.25), False, 20),
        )
        self.assertEqual(
            (rental_c.base_amount, rental_c.overdue_amount, rental_c.payment_status),
            (Decimal("100.00"), Decimal("33.33"), PaymentStatus.PENDING),
        )
        self.assertEqual(Rental.objects.count(), 2)

        # --- the status history, in order
        history = list(
            StationStatusHistory.objects.order_by("changed_at", "id").values_list(
                "previous_status", "status", "trigger", "seconds_in_previous_status"
            )
        )
        self.assertEqual(
            history,
            [
                ("", StationStatus.ONLINE, StatusTrigger.FULL_SYNC, None),
                (StationStatus.ONLINE, StationStatus.OFFLINE, StatusTrigger.STATUS_EVENT, 18 * 3600),
                (StationStatus.OFFLINE, StationStatus.ONLINE, StatusTrigger.STATUS_EVENT, 90 * 60),
                (StationStatus.ONLINE, StationStatus.OFFLINE, StatusTrigger.TIMEOUT, 5 * 3600),
            ],
        )

        # --- the event log: every delivery once, the stale one and the retry marked
        events = IoTEvent.objects.all()
        self.assertEqual(events.filter(outcome=IoTEventOutcome.STALE).count(), 1)
        self.assertEqual(events.filter(outcome=IoTEventOutcome.DUPLICATE).count(), 1)
        self.assertEqual(events.exclude(outcome__in=[IoTEventOutcome.PROCESSED, IoTEventOutcome.STALE, IoTEventOutcome.DUPLICATE]).count(), 0)
        self.assertFleetInvariants()

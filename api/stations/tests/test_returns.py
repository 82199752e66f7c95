"""Returns close rentals correctly (docs/design.md, rules 6 and 7)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from unittest import mock

from django.core.management import call_command
from django.test import TestCase, override_settings

from api.rentals.models import PaymentModel, PaymentStatus, Rental, RentalPackage, RentalStatus
from api.rentals.services.rental_service import RentalService
from api.rentals.signals import rental_completed
from api.stations.ingest import delivery
from api.stations.models import (
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    SlotStatus,
    Station,
    StationSlot,
)
from api.stations.services.station_sync_service import StationSyncService
from api.stations.tests.factories import (
    STATION_SERIAL,
    SenderClient,
    full_payload,
    make_staff,
    now_ts,
    return_payload,
)
from api.stations.tests.fleet import FleetInvariantsMixin

OTHER_SERIAL = "864601069940000"
BANK = "40818052"


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


class ReturnTests(FleetInvariantsMixin, TestCase):
    def setUp(self):
        self.service = StationSyncService()
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)
        self.package = RentalPackage.objects.create(
            name="One hour", duration_minutes=60, price=Decimal("100.00"), grace_minutes=5
        )
        self.t0 = now_ts() - 3 * 3600
        self.service.sync_station_data(full_payload(banks={2: (BANK, 100)}, timestamp=self.t0))

    def rent(self, minutes_ago_started: int | None = None, started_ts: int | None = None) -> Rental:
        started = started_ts if started_ts is not None else self.t0 + 60
        return RentalService.start_rental(
            user=self.customer,
            power_bank=PowerBank.objects.get(serial_number=BANK),
            package=self.package,
            started_at=at(started),
        )

    def test_a_return_closes_the_open_rental_at_the_time_the_bank_went_back(self):
        rental = self.rent()
        returned = self.t0 + 60 + 45 * 60

        data = self.service.process_return_event(
            return_payload(BANK, 3, battery=64, returned_at=at(returned), timestamp=returned + 5)
        )

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertEqual(rental.ended_at, at(returned))
        self.assertEqual(rental.return_station.serial_number, STATION_SERIAL)
        self.assertTrue(rental.is_returned_on_time)
        self.assertEqual((rental.base_amount, rental.overdue_amount), (Decimal("100.00"), Decimal("0.00")))
        self.assertEqual(rental.payment_status, PaymentStatus.PAID)
        self.assertEqual(rental.return_battery_level, 64)
        self.assertEqual(
            data["charges"], {"base_amount": "100.00", "overdue_amount": "0.00", "total": "100.00"}
        )
        self.assertEqual(data["rental_code"], rental.rental_code)
        bank = PowerBank.objects.get(serial_number=BANK)
        self.assertEqual(bank.status, PowerBankStatus.AVAILABLE)
        self.assertEqual(bank.current_slot.slot_number, 3)
        self.assertEqual(bank.battery_level, 64)
        self.assertEqual(StationSlot.objects.get(slot_number=3).status, SlotStatus.OCCUPIED)
        self.assertFleetInvariants()

    def test_a_late_return_is_charged_overdue_beyond_the_grace_minutes(self):
        rental = self.rent()
        returned = self.t0 + 60 + (60 + 15) * 60  # 15 minutes late, 5 of them grace

        data = self.service.process_return_event(
            return_payload(BANK, 2, returned_at=at(returned), timestamp=returned)
        )

        rental.refresh_from_db()
        self.assertFalse(rental.is_returned_on_time)
        # rate 100/60 per minute x 2 x 10 minutes = 33.333.. -> 33.33
        self.assertEqual(rental.overdue_amount, Decimal("33.33"))
        self.assertEqual(rental.payment_status, PaymentStatus.PENDING)
        self.assertEqual(data["charges"]["total"], "133.33")

    def test_an_overdue_rental_is_closed_by_a_return(self):
        rental = self.rent()
        RentalService.mark_overdue(now=at(self.t0 + 2 * 3600))
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.OVERDUE)

        self.service.process_return_event(return_payload(BANK, 2, timestamp=now_ts()))

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)

    def test_without_returned_at_the_body_timestamp_is_the_return_time(self):
        rental = self.rent()
        payload = return_payload(BANK, 2, timestamp=self.t0 + 1800)
        del payload["return_event"]["returned_at"]

        self.service.process_return_event(payload)

        rental.refresh_from_db()
        self.assertEqual(rental.ended_at, at(self.t0 + 1800))

    def test_the_return_time_is_never_before_the_start_nor_in_the_future(self):
        rental = self.rent()
        # A minute before the start: clock drift within the tolerance, kept at the start.
        self.service.process_return_event(
            return_payload(BANK, 2, returned_at=at(self.t0), timestamp=now_ts())
        )
        rental.refresh_from_db()
        self.assertEqual(rental.ended_at, rental.started_at)

        other = self.rent()
        future = now_ts() + 86400
        self.service.process_return_event(
            return_payload(BANK, 1, returned_at=at(future), timestamp=now_ts())
        )
        other.refresh_from_db()
        self.assertLessEqual(other.ended_at, datetime.now(tz=UTC))

    def test_a_return_at_another_station_closes_the_right_rental(self):
        rental = self.rent()
        self.service.sync_station_data(full_payload(OTHER_SERIAL, timestamp=self.t0))

        self.service.process_return_event(return_payload(BANK, 4, OTHER_SERIAL, timestamp=now_ts()))

        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertEqual(rental.station.serial_number, STATION_SERIAL)
        self.assertEqual(rental.return_station.serial_number, OTHER_SERIAL)
        bank = PowerBank.objects.get(serial_number=BANK)
        self.assertEqual(bank.current_station.serial_number, OTHER_SERIAL)
        self.assertFleetInvariants()

    def test_a_return_to_an_unknown_station_slot_and_bank_registers_them(self):
        data = self.service.process_return_event(
            return_payload("99990001", 7, "864601069949999", timestamp=now_ts())
        )

        station = Station.objects.get(serial_number="864601069949999")
        self.assertEqual(station.station_name, "Station 9999")
        slot = StationSlot.objects.get(station=station, slot_number=7)
        self.assertEqual(slot.status, SlotStatus.OCCUPIED)
        bank = PowerBank.objects.get(serial_number="99990001")
        self.assertEqual(bank.current_slot, slot)
        self.assertIsNone(data["rental_id"])
        self.assertIsNone(data["charges"])
        self.assertFleetInvariants()

    def test_a_return_with_no_open_rental_only_places_the_bank(self):
        self.service.process_return_event(return_payload(BANK, 4, timestamp=now_ts()))

        self.assertEqual(Rental.objects.count(), 0)
        bank = PowerBank.objects.get(serial_number=BANK)
        self.assertEqual(bank.current_slot.slot_number, 4)
        # The slot it was in is free again: occupied slots match placed banks.
        self.assertEqual(StationSlot.objects.get(slot_number=2).status, SlotStatus.AVAILABLE)
        self.assertFleetInvariants()

    def test_a_second_delivery_of_the_same_return_changes_nothing_and_charges_nothing(self):
        rental = self.rent()
        returned = self.t0 + 600
        payload = return_payload(BANK, 2, returned_at=at(returned), timestamp=returned)
        self.service.process_return_event(payload)
        rental.refresh_from_db()
        closed = (rental.ended_at, rental.base_amount, rental.overdue_amount, rental.updated_at)

        # Not the identical body (that is caught by the event log): a re-generated one.
        again = dict(payload, timestamp=returned + 30)
        data = self.service.process_return_event(again)

        rental.refresh_from_db()
        self.assertEqual(
            (rental.ended_at, rental.base_amount, rental.overdue_amount, rental.updated_at), closed
        )
        self.assertIsNone(data["rental_id"])
        self.assertEqual(Rental.objects.filter(status=RentalStatus.COMPLETED).count(), 1)

    def test_a_zero_battery_level_in_a_return_does_not_erase_the_known_level(self):
        self.service.process_return_event(return_payload(BANK, 2, battery=0, timestamp=now_ts()))
        self.assertEqual(PowerBank.objects.get(serial_number=BANK).battery_level, 100)

    def test_a_return_into_a_slot_the_database_thought_full_displaces_the_stale_bank(self):
        self.service.sync_station_data(
            full_payload(banks={1: ("40818048", 50), 2: (BANK, 100)}, timestamp=self.t0 + 1)
        )
        self.service.process_return_event(return_payload(BANK, 1, timestamp=now_ts()))

        self.assertIsNone(PowerBank.objects.get(serial_number="40818048").current_slot)
        self.assertEqual(PowerBank.objects.get(serial_number=BANK).current_slot.slot_number, 1)
        self.assertFleetInvariants()

    def test_postpaid_rental_is_charged_for_the_minutes_used(self):
        self.package.payment_model = PaymentModel.POSTPAID
        self.package.save()
        rental = self.rent()
        returned = self.t0 + 60 + 20 * 60 + 1  # 20 min 1 s -> 21 minutes

        self.service.process_return_event(return_payload(BANK, 2, returned_at=at(returned), timestamp=returned))

        rental.refresh_from_db()
        self.assertEqual(rental.base_amount, Decimal("35.00"))  # 100/60 x 21
        self.assertEqual(rental.payment_status, PaymentStatus.PENDING)

    def test_rental_completed_is_sent_once_after_commit(self):
        rental = self.rent()
        received = []

        def receiver(sender, rental, offline_return, **kwargs):
            received.append((rental.rental_code, rental.status, offline_return))

        rental_completed.connect(receiver)
        self.addCleanup(rental_completed.disconnect, receiver)
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            self.service.process_return_event(return_payload(BANK, 2, timestamp=now_ts()))
        self.assertEqual(received, [], "must not be sent before the transaction commits")
        for callback in callbacks:
            callback()
        self.assertEqual(received, [(rental.rental_code, RentalStatus.COMPLETED, False)])

    def test_a_return_through_the_endpoint_answers_the_contract_fields(self):
        rental = self.rent()
        client = SenderClient(make_staff())

        response = client.post(return_payload(BANK, 2, timestamp=now_ts()))

        self.assertEqual(response.status_code, 200)
        data = response.json()["data"]
        self.assertEqual(
            set(data),
            {
                "rental_id",
                "rental_code",
                "rental_status",
                "returned_on_time",
                "charges",
                "payment_status",
                "power_bank_status",
                "station_serial",
                "slot_number",
                "predates_open_rental",
            },
        )
        self.assertEqual(data["rental_id"], str(rental.pk))
        self.assertEqual(data["rental_status"], "COMPLETED")
        self.assertEqual(data["power_bank_status"], "AVAILABLE")
        self.assertEqual(data["slot_number"], 2)
        self.assertIs(data["predates_open_rental"], False)

    def test_a_return_is_applied_even_after_newer_device_state(self):
        rental = self.rent()
        self.service.sync_station_data(full_payload(timestamp=now_ts()))  # newer state, no bank
        returned = self.t0 + 900
        self.service.process_return_event(
            return_payload(BANK, 2, returned_at=at(returned), timestamp=returned)
        )
        rental.refresh_from_db()
        self.assertEqual(rental.status, RentalStatus.COMPLETED)
        self.assertEqual(rental.ended_at, at(returned))


class EarlierRentalReturnTests(FleetInvariantsMixin, TestCase):
    """
    A return dated more than the clock tolerance before the bank's open rental started is
    about an earlier rental (a re-generated message, a delayed one, an operator re-running
    an old event): it closes nothing, charges nothing and leaves the bank where it is.
    """

    def setUp(self):
        self.service = StationSyncService()
        self.sender = SenderClient(make_staff())
        self.customer = make_staff("customer@chargeghar.test", is_staff=False)
        self.package = RentalPackage.objects.create(
            name="One hour", duration_minutes=60, price=Decimal("100.00"), grace_minutes=5
        )
        self.t0 = now_ts() - 3 * 3600
        self.service.sync_station_data(full_payload(banks={2: (BANK, 100)}, timestamp=self.t0))
        self.first = self.rent(self.t0 + 60)

    def rent(self, started: int) -> Rental:
        return RentalService.start_rental(
            user=self.customer,
            power_bank=PowerBank.objects.get(serial_number=BANK),
            package=self.package,
            started_at=at(started),
        )

    def assertUntouched(self, rental: Rental) -> None:
        before = {field: getattr(rental, field) for field in ("status", "ended_at", "base_amount", "updated_at")}
        rental.refresh_from_db()
        self.assertEqual(
            {field: getattr(rental, field) for field in before}, before, "the open rental was touched"
        )
        self.assertIsNone(rental.ended_at)
        bank = PowerBank.objects.get(serial_number=BANK)
        self.assertEqual((bank.status, bank.current_slot_id), (PowerBankStatus.RENTED, None))
        self.assertFalse(StationSlot.objects.filter(status=SlotStatus.OCCUPIED).exists())
        self.assertFleetInvariants()

    def test_a_second_message_about_the_first_rentals_return_leaves_the_second_rental_open(self):
        returned = self.t0 + 600
        self.service.process_return_event(return_payload(BANK, 2, returned_at=at(returned), timestamp=returned))
        second = self.rent(self.t0 + 3600)
        station = Station.objects.get()

        # Not the identical body (the event log answers that one): the cabinet's re-generated report.
        response = self.sender.post(return_payload(BANK, 3, returned_at=at(returned), timestamp=returned + 40))

        self.assertEqual(response.status_code, 200, response.content)
        answer = response.json()
        data = answer["data"]
        self.assertIs(data["predates_open_rental"], True)
        self.assertIsNone(data["rental_id"])
        self.assertIsNone(data["charges"])
        self.assertEqual(data["power_bank_status"], PowerBankStatus.RENTED)
        self.assertIn("earlier rental", answer["message"])
        self.assertUntouched(second)
        self.assertEqual(Station.objects.get().last_heartbeat, station.last_heartbeat)
        event = IoTEvent.objects.get()
        self.assertEqual(event.outcome, IoTEventOutcome.PROCESSED)
        self.assertEqual(event.response_data, answer)
        self.first.refresh_from_db()
        self.assertEqual(self.first.ended_at, at(returned), "the first rental keeps its own return")

    def test_without_returned_at_the_body_timestamp_decides(self):
        self.service.process_return_event(return_payload(BANK, 2, timestamp=self.t0 + 600))
        second = self.rent(self.t0 + 3600)
        payload = return_payload(BANK, 2, timestamp=self.t0 + 610)
        del payload["return_event"]["returned_at"]

        data = self.service.process_return_event(payload)

        self.assertIs(data["predates_open_rental"], True)
        self.assertUntouched(second)

    def test_a_return_dated_within_the_tolerance_before_the_start_closes_the_rental_at_its_start(self):
        data = self.service.process_return_event(
            return_payload(BANK, 2, returned_at=at(self.t0 + 60 - 240), timestamp=now_ts())
        )

        self.assertIs(data["predates_open_rental"], False)
        self.first.refresh_from_db()
        self.assertEqual(self.first.status, RentalStatus.COMPLETED)
        self.assertEqual(self.first.ended_at, self.first.started_at)

    @override_settings(IOT_SIGNATURE_TOLERANCE_SECONDS=30)
    def test_the_margin_is_the_signature_tolerance(self):
        data = self.service.process_return_event(
            return_payload(BANK, 2, returned_at=at(self.t0 + 60 - 240), timestamp=now_ts())
        )

        self.assertIs(data["predates_open_rental"], True)
        self.assertUntouched(self.first)

    def test_re_processing_an_old_failed_return_does_not_close_the_next_rental(self):
        body = return_payload(BANK, 2, returned_at=at(self.t0 + 600), timestamp=self.t0 + 605)
        with (
            mock.patch.object(delivery, "apply_message", side_effect=RuntimeError("transient")),
            self.assertLogs("main_app.exceptions", "ERROR"),
        ):
            failed = self.sender.post(body)
        self.assertEqual(failed.status_code, 500)
        event = IoTEvent.objects.get()
        self.assertEqual(event.outcome, IoTEventOutcome.FAILED)
        # The next snapshot shows the bank back: the first rental closes as a lost return.
        self.service.sync_station_data(full_payload(banks={2: (BANK, 90)}, timestamp=self.t0 + 900))
        self.first.refresh_from_db()
        self.assertEqual(self.first.status, RentalStatus.COMPLETED)
        second = self.rent(self.t0 + 3600)

        out = StringIO()
        call_command("reprocess_iot_events", "--failed", stdout=out)

        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].startswith(f"event {event.pk}: PROCESSED (HTTP 200)"), lines)
        self.assertIn("earlier rental", lines[0])
        self.assertUntouched(second)
        event.refresh_from_db()
        self.assertIs(event.response_data["data"]["predates_open_rental"], True)


class StartRentalTests(TestCase):
    def test_starting_a_rental_takes_the_bank_out_of_its_slot(self):
        StationSyncService().sync_station_data(full_payload(banks={1: (BANK, 90)}))
        package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("10"))
        customer = make_staff("c@chargeghar.test", is_staff=False)

        rental = RentalService.start_rental(
            user=customer, power_bank=PowerBank.objects.get(), package=package
        )

        self.assertEqual(rental.status, RentalStatus.ACTIVE)
        self.assertEqual(len(rental.rental_code), 8)
        self.assertEqual(rental.due_at - rental.started_at, timedelta(minutes=60))
        bank = PowerBank.objects.get()
        self.assertEqual((bank.status, bank.current_slot), (PowerBankStatus.RENTED, None))
        self.assertEqual(StationSlot.objects.get(slot_number=1).status, SlotStatus.AVAILABLE)

    def test_a_rented_bank_cannot_be_rented_again(self):
        from main_app.exceptions import Conflict

        StationSyncService().sync_station_data(full_payload(banks={1: (BANK, 90)}))
        package = RentalPackage.objects.create(name="h", duration_minutes=60, price=Decimal("10"))
        customer = make_staff("c@chargeghar.test", is_staff=False)
        RentalService.start_rental(user=customer, power_bank=PowerBank.objects.get(), package=package)

        with self.assertRaises(Conflict):
            RentalService.start_rental(user=customer, power_bank=PowerBank.objects.get(), package=package)
        self.assertEqual(Rental.objects.count(), 1)

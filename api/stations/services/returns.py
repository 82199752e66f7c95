"""
A power bank pushed back into a slot (docs/design.md, rules 6 and 7). Every write a return
makes is in this module; the rental is closed through `RentalService`, which owns rentals.

A return is a fact about money: it always closes the bank's open rental, whatever newer
device state the station has applied. Unknown stations, slots and banks are registered so
that a customer's rental closes even when the cabinet has never synced.

The one exception is a return dated before the open rental began (by more than the clock
tolerance): the bank went back at the end of an earlier rental, and this message is a late
or re-generated report of that. It closes nothing, charges nothing and leaves the bank
with the customer who has it now.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from api.rentals.models import Rental
from api.rentals.services.charges import Charges
from api.rentals.services.rental_service import RentalService
from api.stations.models import PowerBank, PowerBankStatus, SlotStatus, Station, StationSlot
from api.stations.services.schemas import ReturnMessage
from api.stations.services.stations import advance_heartbeat, lock_station

logger = logging.getLogger(__name__)


@dataclass
class ReturnResult:
    station: Station
    slot_number: int
    power_bank: PowerBank
    rental: Rental | None
    charges: Charges | None
    # The open rental this return is too old for (it closed nothing), if so.
    predates: Rental | None = None
    # A return is a fact about money: it always applies, whatever state is newer (rule 3).
    applied = True

    @property
    def summary(self) -> str:
        if self.predates is not None:
            return (
                "Return dated before the bank's open rental started: it belongs to an earlier "
                "rental; nothing changed"
            )
        return "Return processed successfully" if self.rental is not None else "Power bank placed; no open rental was found"

    def as_response(self) -> dict:
        rental, charges = self.rental, self.charges
        return {
            "rental_id": str(rental.pk) if rental else None,
            "rental_code": rental.rental_code if rental else None,
            "rental_status": rental.status if rental else None,
            "returned_on_time": rental.is_returned_on_time if rental else None,
            "charges": (
                {
                    "base_amount": str(charges.base_amount),
                    "overdue_amount": str(charges.overdue_amount),
                    "total": str(charges.total),
                }
                if charges
                else None
            ),
            "payment_status": rental.payment_status if rental else None,
            "power_bank_status": self.power_bank.status,
            "station_serial": self.station.serial_number,
            "slot_number": self.slot_number,
            "predates_open_rental": self.predates is not None,
        }


def _lock_or_register_bank(serial_number: str) -> PowerBank:
    """The bank, row-locked; registered first if it was never seen (as `lock_station` does)."""
    bank = PowerBank.objects.select_for_update().filter(serial_number=serial_number).first()
    if bank is not None:
        return bank
    PowerBank.objects.bulk_create(
        [PowerBank(serial_number=serial_number, status=PowerBankStatus.AVAILABLE)],
        ignore_conflicts=True,
    )
    return PowerBank.objects.select_for_update().get(serial_number=serial_number)


def apply_return(message: ReturnMessage, *, now: datetime | None = None) -> ReturnResult:
    """Close the bank's open rental and put the bank in the slot. Caller provides the transaction."""
    now = now or timezone.now()
    event = message.return_event
    station, _ = lock_station(serial_number=message.device.serial_number)

    # Station, rental, banks, slots: the lock order of every writer (see full_sync.py).
    rental = next(iter(RentalService.open_rentals_for(serials=[event.power_bank_serial])), None)
    charges = None
    returned_at = event.returned_at or message.sent_at
    if rental is not None and _predates(rental, returned_at):
        return _earlier_rental_return(message, station, rental, returned_at)
    bank = _lock_or_register_bank(event.power_bank_serial)

    if rental is not None:
        (charges,) = RentalService.close_returned(
            [(rental, event.battery_level)],
            ended_at=returned_at,
            return_station=station,
            offline_return=False,
            now=now,
        )
        logger.info(
            "Rental %s returned at %s slot %s",
            rental.rental_code,
            station.serial_number,
            event.slot_number,
        )
    else:
        logger.info(
            "Return of %s at %s: no open rental; placing the bank only",
            event.power_bank_serial,
            station.serial_number,
        )

    # The sender's battery level may be stale or 0; a 0 does not erase a known level.
    battery = event.battery_level or bank.battery_level

    # Whatever bank the database still had in that slot has physically left it.
    PowerBank.objects.filter(
        current_slot__station=station, current_slot__slot_number=event.slot_number
    ).exclude(pk=bank.pk).update(current_slot=None, updated_at=now)

    slot = StationSlot(
        station=station,
        slot_number=event.slot_number,
        status=SlotStatus.OCCUPIED,
        battery_level=battery,
    )
    StationSlot.objects.bulk_create(
        [slot],
        update_conflicts=True,
        unique_fields=["station", "slot_number"],
        update_fields=["status", "battery_level", "updated_at"],
    )

    if bank.current_slot_id and bank.current_slot_id != slot.pk:
        StationSlot.objects.filter(pk=bank.current_slot_id, status=SlotStatus.OCCUPIED).update(
            status=SlotStatus.AVAILABLE, battery_level=0, updated_at=now
        )
    bank.current_station = station
    bank.current_slot_id = slot.pk
    bank.status = PowerBankStatus.AVAILABLE
    bank.battery_level = battery
    if event.hardware_info:
        bank.hardware_info = {**bank.hardware_info, **event.hardware_info}
    bank.save(
        update_fields=[
            "current_station",
            "current_slot",
            "status",
            "battery_level",
            "hardware_info",
            "updated_at",
        ]
    )

    # A return is a sign of life, but not device state: status and ordering stay as they are.
    if advance_heartbeat(station, message.device.last_heartbeat or message.sent_at, now=now):
        Station.objects.filter(pk=station.pk).update(last_heartbeat=station.last_heartbeat, updated_at=now)

    return ReturnResult(
        station=station,
        slot_number=event.slot_number,
        power_bank=bank,
        rental=rental,
        charges=charges,
    )


def _predates(rental: Rental, returned_at: datetime) -> bool:
    """
    Did the bank go back before this rental began? Within the tolerance it is clock drift
    between the cabinet and our server (the rental's start is our clock), and the rental
    is closed at its start as before.
    """
    return returned_at < rental.started_at - timedelta(seconds=settings.IOT_SIGNATURE_TOLERANCE_SECONDS)


def _earlier_rental_return(
    message: ReturnMessage, station: Station, rental: Rental, returned_at: datetime
) -> ReturnResult:
    """
    A report about an earlier rental: the open rental stays open and uncharged, and the
    bank stays with its customer (the rental's lock, taken above, keeps it so meanwhile).
    Not even the heartbeat moves: the message speaks about the past.
    """
    logger.warning(
        "Return of %s at %s dated %s, before its open rental %s started at %s: "
        "an earlier rental's; nothing changed",
        message.return_event.power_bank_serial,
        station.serial_number,
        returned_at.isoformat(),
        rental.rental_code,
        rental.started_at.isoformat(),
    )
    return ReturnResult(
        station=station,
        slot_number=message.return_event.slot_number,
        power_bank=rental.power_bank,
        rental=None,
        charges=None,
        predates=rental,
    )

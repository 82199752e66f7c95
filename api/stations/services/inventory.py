"""
Moves of power banks that no station message reports: a bank handed to a customer, a bank
an operator has ejected for maintenance.

The stations app owns slot and bank rows; other apps move banks through here. The callers
of the `take_out_*` functions hold the station's and the bank's row locks (docs/design.md,
lock order).
"""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from api.iot_system.client import EjectOutcome, EjectResult, get_client
from api.rentals.models import BANK_TAKEN_STATUSES, Rental
from api.stations.models import PowerBank, PowerBankStatus, SlotStatus, Station, StationSlot
from main_app.exceptions import Conflict

logger = logging.getLogger(__name__)


def _leave_slot(bank: PowerBank, *, status: str, now: datetime) -> None:
    if bank.current_slot_id:
        StationSlot.objects.filter(pk=bank.current_slot_id, status=SlotStatus.OCCUPIED).update(
            status=SlotStatus.AVAILABLE, battery_level=0, updated_at=now
        )
    PowerBank.objects.filter(pk=bank.pk).update(
        status=status, current_slot=None, current_station=None, updated_at=now
    )
    bank.status, bank.current_slot_id, bank.current_station_id = status, None, None


def take_out_for_rental(bank: PowerBank, *, now: datetime) -> None:
    """The bank leaves its slot (now AVAILABLE) and its station, and is RENTED."""
    _leave_slot(bank, status=PowerBankStatus.RENTED, now=now)


def take_out_for_maintenance(bank: PowerBank, *, now: datetime) -> None:
    """The bank leaves its slot (now AVAILABLE) and its station, in MAINTENANCE."""
    _leave_slot(bank, status=PowerBankStatus.MAINTENANCE, now=now)


@dataclass
class MaintenanceEjection:
    bank: PowerBank
    station_serial: str
    ejection: EjectResult

    @property
    def summary(self) -> str:
        outcome = self.ejection.outcome
        where = f"station {self.station_serial}"
        if outcome == EjectOutcome.EJECTED:
            return f"Bank {self.bank.serial_number} ejected at {where} ({self.ejection.message}); now MAINTENANCE, out of its slot."
        if outcome == EjectOutcome.REFUSED:
            return f"Bank {self.bank.serial_number}: {where} refused to eject it ({self.ejection.message}); it stays AVAILABLE in its slot."
        return (
            f"Bank {self.bank.serial_number}: no answer from {where} ({outcome}: {self.ejection.message}). "
            "It stays in MAINTENANCE, so nobody rents it; the cabinet's next full sync shows whether it left. "
            "The ejection is not sent again."
        )


def eject_for_maintenance(bank_id: int, *, cabinet=None, now: datetime | None = None) -> MaintenanceEjection:
    """
    An operator takes a bank out of service: it is marked MAINTENANCE at once (so no rental
    can take it meanwhile), its cabinet is asked to eject it outside any transaction, and the
    answer decides: ejected, it leaves its slot; refused, it is AVAILABLE again; unknown, it
    stays MAINTENANCE in its slot until the cabinet's next report. Raises `Conflict` for a
    bank that is not AVAILABLE in a slot or is taken by a rental.
    """
    with transaction.atomic(durable=True):
        # Station, bank: the lock order of every writer (no rental is written).
        station_id = PowerBank.objects.filter(pk=bank_id).values_list("current_station_id", flat=True).get()
        station = Station.objects.select_for_update().filter(pk=station_id).first() if station_id else None
        bank = PowerBank.objects.select_for_update().get(pk=bank_id)
        if station is None or bank.current_station_id != station.pk or bank.current_slot_id is None:
            raise Conflict(f"Power bank {bank.serial_number} is not in a slot: no cabinet can eject it.")
        if bank.status != PowerBankStatus.AVAILABLE:
            raise Conflict(f"Power bank {bank.serial_number} is {bank.status}, not AVAILABLE.")
        if Rental.objects.filter(power_bank=bank, status__in=BANK_TAKEN_STATUSES).exists():
            raise Conflict(f"Power bank {bank.serial_number} is taken by a rental.")
        PowerBank.objects.filter(pk=bank.pk).update(status=PowerBankStatus.MAINTENANCE, updated_at=timezone.now())
    ejection = (cabinet or get_client()).popup(station.serial_number, bank.serial_number)
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        Station.objects.select_for_update().filter(pk=station.pk).first()
        bank = PowerBank.objects.select_for_update().get(pk=bank_id)
        if ejection.outcome == EjectOutcome.EJECTED:
            if bank.current_station_id in (None, station.pk):
                take_out_for_maintenance(bank, now=now)
        elif ejection.outcome == EjectOutcome.REFUSED:
            # Only our own mark is undone: a sync may have written the bank's state meanwhile.
            if bank.status == PowerBankStatus.MAINTENANCE and bank.current_station_id == station.pk:
                PowerBank.objects.filter(pk=bank.pk).update(status=PowerBankStatus.AVAILABLE, updated_at=now)
                bank.status = PowerBankStatus.AVAILABLE
    logger.info("Maintenance ejection of bank %s at %s: %s", bank.serial_number, station.serial_number, ejection.outcome)
    return MaintenanceEjection(bank=bank, station_serial=station.serial_number, ejection=ejection)

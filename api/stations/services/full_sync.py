"""
A full sync: the station's whole truth in one message (DESIGN rules 4, 5, 8, 9).

Set-based: the number of queries does not depend on the slot count. Every writer takes
its locks in one order: its station, then rentals, then power banks, then slots. Messages
for stations that trade banks (and operators starting rentals) therefore never wait on
each other in a cycle. The queries:

    1. SELECT the station FOR UPDATE, and whether a bank reported in a slot has an open
       rental (plus a SELECT, an INSERT and a second SELECT if the station is new)
    2. SELECT the open rentals of the banks reported in slots, FOR UPDATE  (only if any)
    3. SELECT the banks reported here or linked to this station, FOR UPDATE, with the
       station and number of the slot each is in
    4. UPDATE banks: take every moving bank out of its slot  (only if a bank moves or leaves)
    5. UPDATE slots left empty by those banks to AVAILABLE   (only if there are any)
    6. UPDATE the rentals closed as lost returns            (only if there are any)
    7. INSERT .. ON CONFLICT DO UPDATE every reported slot, then every reported bank into
       its slot, and UPDATE the station (and the caller's last write, if it gave one): one
       statement on PostgreSQL, three or four elsewhere
    8. INSERT a status-history row                          (only if the status changed)

Step 4 before step 7 is what lets two banks swap slots in one snapshot: a slot never
holds two banks, not even for the duration of one statement.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db.models import Case, Value, When
from django.utils import timezone

from api.rentals.models import Rental
from api.rentals.services.rental_service import RentalService
from api.stations.models import (
    PowerBank,
    PowerBankStatus,
    SlotStatus,
    Station,
    StationSlot,
    StationStatus,
    StatusTrigger,
)
from api.stations.services.schemas import FullSyncMessage
from api.stations.services.stations import advance_heartbeat, is_stale, lock_station_for_sync, status_change
from api.stations.services.upserts import BankRow, SlotRow, upsert_slots_and_banks
from main_app import sql

logger = logging.getLogger(__name__)


@dataclass
class _SlotState:
    status: str
    battery_level: int
    metadata: dict
    bank_serial: str | None = None


@dataclass
class _BankState:
    status: str
    battery_level: int
    hardware_info: dict
    slot_number: int | None


@dataclass
class FullSyncResult:
    station: Station
    applied: bool
    slots_updated: int = 0
    powerbanks_updated: int = 0
    offline_returns: list[Rental] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    # The rows returned by the caller's `last_write`, when it gave one and the sync applied.
    last_rows: list[tuple] | None = None

    def as_response(self, *, now: datetime) -> dict:
        return {
            "station_id": str(self.station.pk),
            "station_serial": self.station.serial_number,
            "slots_updated": self.slots_updated,
            "powerbanks_updated": self.powerbanks_updated,
            "offline_returns_processed": len(self.offline_returns),
            "offline_returns": [rental.rental_code for rental in self.offline_returns],
            "detached_power_banks": self.detached,
            "applied": self.applied,
            "timestamp": now.isoformat(),
        }


def _merge_reports(message: FullSyncMessage) -> tuple[dict[int, _SlotState], dict[str, _BankState]]:
    """
    One view of the snapshot from its two lists. The schema has already refused lists that
    contradict each other; here each list fills what the other left out, and the
    `power_banks` entry wins on the bank's own state.
    """
    slots = {
        slot.slot_number: _SlotState(
            status=slot.status,
            battery_level=slot.battery_level,
            metadata=slot.slot_metadata,
            bank_serial=slot.power_bank_serial,
        )
        for slot in message.slots
    }
    banks = {
        bank.serial_number: _BankState(
            status=bank.status,
            battery_level=bank.battery_level,
            hardware_info=bank.hardware_info,
            slot_number=bank.current_slot,
        )
        for bank in message.power_banks
    }
    for number, slot in slots.items():
        if slot.bank_serial and slot.bank_serial not in banks:
            banks[slot.bank_serial] = _BankState(
                status=PowerBankStatus.AVAILABLE,
                battery_level=slot.battery_level,
                hardware_info={},
                slot_number=number,
            )
    for serial, bank in banks.items():
        if bank.slot_number is None:
            continue
        slot = slots.get(bank.slot_number)
        if slot is None:
            slots[bank.slot_number] = _SlotState(
                status=SlotStatus.OCCUPIED,
                battery_level=bank.battery_level,
                metadata={},
                bank_serial=serial,
            )
        else:
            slot.bank_serial = serial
            if slot.status == SlotStatus.AVAILABLE:
                slot.status = SlotStatus.OCCUPIED
    return slots, banks


def _station_fields(station: Station, message: FullSyncMessage, *, now: datetime) -> None:
    device = message.device
    station.imei = device.imei or station.imei or device.serial_number
    if message.station.total_slots is not None:
        station.total_slots = message.station.total_slots
    station.hardware_info = device.hardware_info
    station.firmware_version = str(device.hardware_info.get("firmware_version", ""))[:32]
    if device.signal_strength is not None:
        station.signal_strength = str(device.signal_strength)
    if device.wifi_ssid is not None:
        station.wifi_ssid = device.wifi_ssid
    # The device's own heartbeat time.
    advance_heartbeat(station, device.last_heartbeat or message.sent_at, now=now)
    station.device_state_at = message.sent_at


STATION_SYNC_FIELDS = [
    "imei",
    "total_slots",
    "hardware_info",
    "firmware_version",
    "signal_strength",
    "wifi_ssid",
    "last_heartbeat",
    "device_state_at",
    "status",
    "status_changed_at",
]
_STATION_UPDATE_FIELDS = [Station._meta.get_field(name) for name in [*STATION_SYNC_FIELDS, "updated_at"]]
_STATION_UPDATE_SQL = (
    f"UPDATE {sql.quote(Station._meta.db_table)} "
    f"SET {', '.join(f'{sql.quote(field.column)} = %s' for field in _STATION_UPDATE_FIELDS)} WHERE id = %s"
)


class _KnownBank(NamedTuple):
    id: int
    serial_number: str
    current_slot_id: int | None
    here: bool  # linked to the station being synced
    slot_number: int | None  # of its current slot
    slot_here: bool  # its current slot is one of this station's

    def in_slot(self, number: int | None) -> bool:
        """Already in this station's slot `number`?"""
        return self.slot_here and number is not None and self.slot_number == number


def _lock_banks(station: Station, *, serials: list[str]) -> list[tuple]:
    """
    The banks reported in the snapshot or linked to this station, locked in id order, with
    where their slot is (a slot's station and number never change, so they need no lock).
    """
    banks = sql.quote(PowerBank._meta.db_table)
    slots = sql.quote(StationSlot._meta.db_table)
    serial_match, params = sql.in_values("bank.serial_number", serials)
    station_id = sql.db_value(Station._meta.pk, station.pk)
    return sql.fetch(
        "SELECT bank.id, bank.serial_number, bank.current_slot_id, "
        "CASE WHEN bank.current_station_id = %s THEN 1 ELSE 0 END, "
        "slot.slot_number, CASE WHEN slot.station_id = %s THEN 1 ELSE 0 END "
        f"FROM {banks} bank LEFT JOIN {slots} slot ON slot.id = bank.current_slot_id "
        f"WHERE {serial_match} OR bank.current_station_id = %s ORDER BY bank.id{sql.for_update('bank')}",
        [station_id, station_id, *params, station_id],
    )


def apply_full_sync(
    message: FullSyncMessage,
    *,
    now: datetime | None = None,
    last_write: Callable[[FullSyncResult], tuple[str, list]] | None = None,
) -> FullSyncResult:
    """
    Apply a full sync. The caller provides the transaction.

    `last_write`, if given, is called with the result once it is known and returns one more
    write (SQL with a RETURNING clause, and its parameters) for the caller's own rows: it
    travels in the sync's last statement, and the rows it returns come back in
    `result.last_rows`. A stale sync writes nothing and does not call it.
    """
    now = now or timezone.now()
    device = message.device
    slots, banks = _merge_reports(message)
    placed = [serial for serial, state in sorted(banks.items()) if state.slot_number is not None]
    station, maybe_open_rentals = lock_station_for_sync(
        serial_number=device.serial_number, imei=device.imei or device.serial_number, bank_serials=placed
    )
    if is_stale(station, message.sent_at):
        logger.info(
            "Stale full sync for %s: sent %s, state already at %s",
            station.serial_number,
            message.sent_at.isoformat(),
            station.device_state_at.isoformat(),
        )
        return FullSyncResult(station=station, applied=False)

    # 2. Lost returns: a bank back in a slot while its rental is open (DESIGN rule 8).
    grace = timedelta(seconds=settings.IOT_RETURN_GRACE_SECONDS)
    closed: list[Rental] = []
    open_rentals = RentalService.open_rentals_for(serials=placed) if placed and maybe_open_rentals else []
    for rental in open_rentals:
        serial = rental.power_bank.serial_number
        if message.sent_at - rental.started_at < grace:
            continue  # just taken out: the cabinet may not have noticed yet
        RentalService.complete(
            rental,
            ended_at=message.sent_at,
            return_station=station,
            battery_level=banks[serial].battery_level,
            now=now,
        )
        closed.append(rental)

    # 3. Where every bank of interest is now, locked in a fixed order.
    known = {
        row.serial_number: row for row in map(_KnownBank._make, _lock_banks(station, serials=list(banks)))
    }

    # 4. Take every bank that moves or leaves out of its slot first.
    detached = sorted(serial for serial, bank in known.items() if serial not in banks and bank.here)
    moving = [
        bank
        for serial, bank in known.items()
        if bank.current_slot_id is not None
        and (serial not in banks or not bank.in_slot(banks[serial].slot_number))
    ]
    leaving_ids = {bank.id for bank in moving} | {known[serial].id for serial in detached}
    if leaving_ids:
        PowerBank.objects.filter(pk__in=leaving_ids).update(
            current_slot=None,
            current_station=Case(
                When(serial_number__in=detached, then=Value(None)),
                default="current_station",
            ),
            updated_at=now,
        )

    # 5. Slots those banks left, here or at another station. This station's reported slots
    # are written by the upsert below anyway, with the snapshot's status.
    vacated = {bank.current_slot_id for bank in moving if not (bank.slot_here and bank.slot_number in slots)}
    if vacated:
        StationSlot.objects.filter(pk__in=vacated, status=SlotStatus.OCCUPIED).update(
            status=SlotStatus.AVAILABLE, battery_level=0, updated_at=now
        )

    # 6. Close the recovered returns.
    if closed:
        Rental.objects.bulk_update(closed, RentalService.COMPLETION_FIELDS)
        RentalService.announce_completed(closed, offline_return=True)
        logger.info(
            "Station %s: closed %d lost return(s): %s",
            station.serial_number,
            len(closed),
            ", ".join(rental.rental_code for rental in closed),
        )

    # 7. The station itself: a full sync is a heartbeat and says the station is up.
    _station_fields(station, message, now=now)
    history = status_change(
        station,
        device.status or StationStatus.ONLINE,
        at=message.sent_at if message.sent_at <= now else now,
        trigger=StatusTrigger.FULL_SYNC,
    )
    station.updated_at = now
    station_update = (
        _STATION_UPDATE_SQL,
        [sql.db_value(field, getattr(station, field.attname)) for field in _STATION_UPDATE_FIELDS]
        + [sql.db_value(Station._meta.pk, station.pk)],
    )

    result = FullSyncResult(
        station=station,
        applied=True,
        slots_updated=len(slots),
        powerbanks_updated=len(banks),
        offline_returns=closed,
        detached=detached,
    )

    # ...written with the slots and the banks, in one statement on PostgreSQL.
    # Model and capacity are operator-owned and never written here.
    result.last_rows = upsert_slots_and_banks(
        station.pk,
        [
            SlotRow(number, state.status, state.battery_level, state.metadata)
            for number, state in sorted(slots.items())
        ],
        [
            BankRow(serial, state.status, state.battery_level, state.hardware_info, state.slot_number)
            for serial, state in sorted(banks.items())
        ],
        now=now,
        along_with=station_update,
        last=last_write(result) if last_write is not None else None,
    )

    # 8. Its status history, when the status changed.
    if history is not None:
        history.save()

    return result

"""
A full sync: the station's whole truth in one message (docs/design.md, rules 4, 5, 8, 9).

Every write a full sync makes is in this module: the station, its slots, the banks (moved
here, detached, placed, handed to a customer whose ejection it confirms), the rentals
closed as lost returns and the pending ejections it settles (both through `RentalService`,
which owns rental rows) and the status history. The number of queries does not depend on
the slot count. Every writer takes its locks in one order: its station, then rentals,
then power banks, then slots. Messages for stations that trade banks (and operators
starting rentals) therefore never wait on each other in a cycle. The queries:

    1. SELECT the station FOR UPDATE, and whether a bank reported in a slot has an open
       rental or an ejection is pending at the station (plus a SELECT, an INSERT and a
       second SELECT if the station is new)
    2. SELECT those rentals FOR UPDATE, and load them                     (only if any)
    3. SELECT the banks reported here or linked to this station, FOR UPDATE, with the
       station and number of the slot each is in
    4. UPDATE banks: take every moving bank out of its slot  (only if a bank moves or leaves)
    5. UPDATE slots left empty by those banks to AVAILABLE   (only if there are any)
    6. UPDATE the rentals closed as lost returns            (only if there are any)
       UPDATE the pending ejections settled                 (only if there are any)
    7. INSERT .. ON CONFLICT DO UPDATE every reported slot, then every reported bank into
       its slot, and UPDATE the station: one statement on PostgreSQL (`_write_snapshot`),
       three elsewhere
    8. INSERT a status-history row                          (only if the status changed)

Step 4 before step 7 is what lets two banks swap slots in one snapshot: a slot never
holds two banks, not even for the duration of one statement.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

import orjson
from django.conf import settings
from django.db.models import Case, Value, When
from django.utils import timezone

from api.rentals.models import OPEN_RENTAL_STATUSES, Rental, RentalStatus
from api.rentals.services.rental_service import RentalService, Settlement, open_rentals_clause
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
from api.stations.services.stations import (
    STATION_COLUMNS,
    advance_heartbeat,
    find_or_register,
    is_stale,
    status_change,
)
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
    ejections: Settlement = field(default_factory=Settlement)
    processed_at: datetime | None = None

    @property
    def summary(self) -> str:
        return (
            "Station data updated successfully"
            if self.applied
            else "Out-of-date full sync recorded but not applied"
        )

    def as_response(self) -> dict:
        return {
            "station_id": str(self.station.pk),
            "station_serial": self.station.serial_number,
            "slots_updated": self.slots_updated,
            "powerbanks_updated": self.powerbanks_updated,
            "offline_returns_processed": len(self.offline_returns),
            "offline_returns": [rental.rental_code for rental in self.offline_returns],
            "detached_power_banks": self.detached,
            "applied": self.applied,
            "timestamp": self.processed_at.isoformat(),
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


def _lock_station(message: FullSyncMessage, *, placed: list[str]) -> tuple[Station, bool]:
    """
    The station, row-locked (registered first if unknown), and whether any of the banks it
    reports in slots has taken by a rental, or an ejection is pending at the station: one
    statement answers both, since usually neither. The caller locks and reads the rentals
    themselves only when the second is true.

    The rental check is read from the statement's snapshot, which may predate a rental
    opened while this statement waited for the station's lock. Such a rental is seconds
    old, inside the grace period in which a full sync leaves a rental open anyway. For a
    station registered just now the answer is always true.
    """
    device = message.device
    open_rentals, params = open_rentals_clause(placed, pending_at=f"{STATION_COLUMNS.table}.id")
    rows = sql.fetch(
        f"SELECT {STATION_COLUMNS.sql}, EXISTS (SELECT 1 {open_rentals}) "
        f"FROM {STATION_COLUMNS.table} WHERE serial_number = %s{_STATION_FOR_UPDATE}",
        [*params, device.serial_number],
    )
    if rows:
        ((*station_row, maybe_open),) = rows
        return STATION_COLUMNS.instances([station_row])[0], bool(maybe_open)
    station, _ = find_or_register(
        serial_number=device.serial_number, imei=device.imei or device.serial_number
    )
    return station, True


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
    serial_match, params = sql.in_values("bank.serial_number", serials)
    station_id = sql.db_value(Station._meta.pk, station.pk)
    return sql.fetch(
        "SELECT bank.id, bank.serial_number, bank.current_slot_id, "
        "CASE WHEN bank.current_station_id = %s THEN 1 ELSE 0 END, "
        "slot.slot_number, CASE WHEN slot.station_id = %s THEN 1 ELSE 0 END "
        f"FROM {_BANK_TABLE} bank LEFT JOIN {_SLOT_TABLE} slot ON slot.id = bank.current_slot_id "
        f"WHERE {serial_match} OR bank.current_station_id = %s ORDER BY bank.id{_BANK_FOR_UPDATE}",
        [station_id, station_id, *params, station_id],
    )


# Written into `_lock_station`'s and `_lock_banks`' statements, worked out once.
_BANK_TABLE = sql.quote(PowerBank._meta.db_table)
_SLOT_TABLE = sql.quote(StationSlot._meta.db_table)
_BANK_FOR_UPDATE = sql.for_update("bank")
_STATION_FOR_UPDATE = sql.for_update(Station._meta.db_table)


def apply_full_sync(message: FullSyncMessage, *, now: datetime | None = None) -> FullSyncResult:
    """Apply a full sync. The caller provides the transaction."""
    now = now or timezone.now()
    device = message.device
    slots, banks = _merge_reports(message)
    placed = [serial for serial, state in sorted(banks.items()) if state.slot_number is not None]

    # 1. The station's lock: every write about this station waits here.
    station, maybe_open_rentals = _lock_station(message, placed=placed)
    if is_stale(station, message.sent_at):
        logger.info(
            "Stale full sync for %s: sent %s, state already at %s",
            station.serial_number,
            message.sent_at.isoformat(),
            station.device_state_at.isoformat(),
        )
        return FullSyncResult(station=station, applied=False, processed_at=now)

    # 2. Lost returns: a bank back in a slot while its rental is open (rule 8); and the
    # ejections pending at this station, which this snapshot may settle.
    grace = timedelta(seconds=settings.IOT_RETURN_GRACE_SECONDS)
    rentals = RentalService.open_rentals_for(serials=placed, pending_at=station) if maybe_open_rentals else []
    placed_here = set(placed)
    # A rental taken out moments ago: the cabinet may not have noticed yet. A rental whose
    # ejection is unconfirmed is never a lost return: the bank may never have left.
    closing = [
        rental
        for rental in rentals
        if rental.status in OPEN_RENTAL_STATUSES
        and rental.power_bank.serial_number in placed_here
        and message.sent_at - rental.started_at >= grace
    ]
    pending = [
        rental for rental in rentals if rental.status == RentalStatus.PENDING_POPUP and rental.station_id == station.pk
    ]

    # 3. Where every bank of interest is now, locked in a fixed order (the banks of this
    # station's pending ejections too, wherever they are).
    lock_serials = list(banks) + [
        rental.power_bank.serial_number for rental in pending if rental.power_bank.serial_number not in banks
    ]
    known = {
        row.serial_number: row for row in map(_KnownBank._make, _lock_banks(station, serials=lock_serials))
    }

    # Pending ejections this snapshot settles: a bank not in any of its slots left with the
    # customer; one still in a slot past the grace never left (RentalService decides).
    ejections = Settlement()
    if pending:
        ejections = RentalService.settle_from_report(
            pending,
            bank_slots={serial: state.slot_number for serial, state in banks.items() if state.slot_number is not None},
            reported_at=message.sent_at,
            source=f"the full sync of station {station.serial_number}",
            now=now,
        )
    handed_out = {rental.power_bank.serial_number for rental in ejections.activated}
    for serial in handed_out & banks.keys():
        banks[serial].status = PowerBankStatus.RENTED

    # 4. Take every bank that moves or leaves out of its slot first. A bank whose ejection
    # this snapshot confirmed is with its customer: RENTED, at no station.
    detached = sorted(serial for serial, bank in known.items() if serial not in banks and bank.here)
    moving = [
        bank
        for serial, bank in known.items()
        if bank.current_slot_id is not None
        and (serial not in banks or not bank.in_slot(banks[serial].slot_number))
    ]
    rented_out = [known[serial] for serial in handed_out - banks.keys() if serial in known]
    leaving_ids = {bank.id for bank in moving} | {known[serial].id for serial in detached} | {
        bank.id for bank in rented_out
    }
    if leaving_ids:
        away = [*detached, *(bank.serial_number for bank in rented_out)]
        fields = {}
        if rented_out:
            fields["status"] = Case(
                When(pk__in=[bank.id for bank in rented_out], then=Value(PowerBankStatus.RENTED)),
                default="status",
            )
        PowerBank.objects.filter(pk__in=leaving_ids).update(
            current_slot=None,
            current_station=Case(
                When(serial_number__in=away, then=Value(None)),
                default="current_station",
            ),
            updated_at=now,
            **fields,
        )

    # 5. Slots those banks left, here or at another station. This station's reported slots
    # are written by the snapshot below anyway, with the snapshot's status.
    vacated = {
        bank.current_slot_id
        for bank in [*moving, *rented_out]
        if bank.current_slot_id is not None and not (bank.slot_here and bank.slot_number in slots)
    }
    if vacated:
        StationSlot.objects.filter(pk__in=vacated, status=SlotStatus.OCCUPIED).update(
            status=SlotStatus.AVAILABLE, battery_level=0, updated_at=now
        )

    # 6. Close the recovered returns, as offline returns at this station at snapshot time.
    if closing:
        RentalService.close_returned(
            [(rental, banks[rental.power_bank.serial_number].battery_level) for rental in closing],
            ended_at=message.sent_at,
            return_station=station,
            offline_return=True,
            now=now,
        )
        logger.info(
            "Station %s: closed %d lost return(s): %s",
            station.serial_number,
            len(closing),
            ", ".join(rental.rental_code for rental in closing),
        )

    # 7. The station itself (a full sync is a heartbeat and says the station is up), its
    # slots and its banks. Model and capacity are operator-owned and never written here.
    _station_fields(station, message, now=now)
    history = status_change(
        station,
        device.status or StationStatus.ONLINE,
        at=message.sent_at if message.sent_at <= now else now,
        trigger=StatusTrigger.FULL_SYNC,
    )
    station.updated_at = now
    _write_snapshot(
        station,
        [
            _SlotRow(number, state.status, state.battery_level, state.metadata)
            for number, state in sorted(slots.items())
        ],
        [
            _BankRow(serial, state.status, state.battery_level, state.hardware_info, state.slot_number)
            for serial, state in sorted(banks.items())
        ],
        now=now,
    )

    # 8. Its status history, when the status changed.
    if history is not None:
        history.save()

    return FullSyncResult(
        station=station,
        applied=True,
        slots_updated=len(slots),
        powerbanks_updated=len(banks),
        offline_returns=closing,
        detached=detached,
        ejections=ejections,
        processed_at=now,
    )


# --- Step 7: the snapshot's rows ----------------------------------------------------------
# The row-heavy writes. On PostgreSQL they are one statement: the rows travel as JSON
# documents unpacked by `jsonb_to_recordset` (the database parses them in C, where the
# ORM's `bulk_create` builds a model instance and quotes every value of every row in
# Python, the largest cost of a full sync when first profiled), the slots' upsert is a
# data-modifying WITH clause whose RETURNING gives the banks their slot ids, and the
# station's UPDATE is one more WITH clause, its values one more document, read as a row of
# the station table (`jsonb_populate_record`, so each column's type is the table's own).
# Other databases (SQLite in development) use `bulk_create` twice and an UPDATE. Both paths
# run the whole test suite in CI; docs/performance.md has the figures.


@dataclass(slots=True)
class _SlotRow:
    slot_number: int
    status: str
    battery_level: int
    slot_metadata: dict


@dataclass(slots=True)
class _BankRow:
    serial_number: str
    status: str
    battery_level: int
    hardware_info: dict
    slot_number: int | None  # one of the slot rows' numbers, or None: not in a slot


_STATION_SYNC_FIELDS = [
    Station._meta.get_field(name)
    for name in [
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
        "updated_at",
    ]
]
_STATION_UPDATE_SQL = (
    f"UPDATE {sql.quote(Station._meta.db_table)} "
    f"SET {', '.join(f'{sql.quote(field.column)} = %s' for field in _STATION_SYNC_FIELDS)} WHERE id = %s"
)
_STATION_CTE = f"""
    station AS (
        UPDATE {sql.quote(Station._meta.db_table)} SET
            {', '.join(f'{sql.quote(field.column)} = r.{sql.quote(field.column)}' for field in _STATION_SYNC_FIELDS)}
        FROM jsonb_populate_record(NULL::{sql.quote(Station._meta.db_table)}, %s::jsonb) AS r
        WHERE {sql.quote(Station._meta.db_table)}.id = %s
    )
"""
_SLOTS = StationSlot._meta.db_table
_BANKS = PowerBank._meta.db_table
_SLOTS_CTE = f"""
    slots AS (
        INSERT INTO {_SLOTS} (station_id, slot_number, status, battery_level, slot_metadata, updated_at)
        SELECT %s, r.slot_number, r.status, r.battery_level, r.slot_metadata, %s
        FROM jsonb_to_recordset(%s::jsonb)
             AS r(slot_number integer, status text, battery_level integer, slot_metadata jsonb)
        ON CONFLICT (station_id, slot_number) DO UPDATE SET
            status = EXCLUDED.status,
            battery_level = EXCLUDED.battery_level,
            slot_metadata = EXCLUDED.slot_metadata,
            updated_at = EXCLUDED.updated_at
        RETURNING slot_number, id
    )
"""
_BANKS_INSERT = f"""
    INSERT INTO {_BANKS} (serial_number, model, capacity_mah, status, battery_level, hardware_info,
                          current_station_id, current_slot_id, created_at, updated_at)
    SELECT r.serial_number, '', NULL, r.status, r.battery_level, r.hardware_info,
           CASE WHEN r.slot_number IS NULL THEN NULL ELSE %s::uuid END, slots.id, %s, %s
    FROM jsonb_to_recordset(%s::jsonb)
         AS r(serial_number text, status text, battery_level integer, hardware_info jsonb, slot_number integer)
    LEFT JOIN slots ON slots.slot_number = r.slot_number
    ON CONFLICT (serial_number) DO UPDATE SET
        status = EXCLUDED.status,
        battery_level = EXCLUDED.battery_level,
        hardware_info = EXCLUDED.hardware_info,
        current_station_id = EXCLUDED.current_station_id,
        current_slot_id = EXCLUDED.current_slot_id,
        updated_at = EXCLUDED.updated_at
"""
_SNAPSHOT_SQL = f"WITH {_STATION_CTE}, {_SLOTS_CTE} {_BANKS_INSERT}"


def _write_snapshot(station: Station, slots: list[_SlotRow], banks: list[_BankRow], *, now: datetime) -> None:
    """
    Upsert the station's reported slots, then the reported banks, each at this station in
    its slot (if any), and write the station's fields. The caller has taken every bank
    that moves or leaves out of its old slot, so no slot ever holds two banks, not even
    within the statement. New banks get a blank model and capacity; existing banks keep theirs.
    """
    if sql.db().vendor != "postgresql":
        _bulk_upsert(station.pk, slots, banks, now=now)
        station_params = [sql.db_value(field, getattr(station, field.attname)) for field in _STATION_SYNC_FIELDS]
        sql.cursor().execute(_STATION_UPDATE_SQL, [*station_params, sql.db_value(Station._meta.pk, station.pk)])
        return
    station_row = {field.column: getattr(station, field.attname) for field in _STATION_SYNC_FIELDS}
    sql.cursor().execute(
        _SNAPSHOT_SQL,
        [_json(station_row), station.pk, station.pk, now, _json(slots), station.pk, now, now, _json(banks)],
    )


def _json(value) -> str:
    try:
        # orjson encodes dataclasses and datetimes itself, several times faster than json.dumps...
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        # ...but not integers beyond 64 bits, which JSON (and jsonb) allow in metadata.
        return json.dumps(value, ensure_ascii=False, default=_plain)


def _plain(value):
    """What the standard library's JSON encoder is given for a row or a time."""
    if isinstance(value, datetime):
        return value.isoformat()
    return asdict(value)


def _bulk_upsert(station_id, slots: list[_SlotRow], banks: list[_BankRow], *, now: datetime) -> None:
    objects = [
        StationSlot(
            station_id=station_id,
            slot_number=row.slot_number,
            status=row.status,
            battery_level=row.battery_level,
            slot_metadata=row.slot_metadata,
            updated_at=now,
        )
        for row in slots
    ]
    if objects:
        StationSlot.objects.bulk_create(
            objects,
            update_conflicts=True,
            unique_fields=["station", "slot_number"],
            update_fields=["status", "battery_level", "slot_metadata", "updated_at"],
        )
    slot_id = {slot.slot_number: slot.pk for slot in objects}
    if not banks:
        return
    PowerBank.objects.bulk_create(
        [
            PowerBank(
                serial_number=row.serial_number,
                status=row.status,
                battery_level=row.battery_level,
                hardware_info=row.hardware_info,
                current_station_id=station_id if row.slot_number is not None else None,
                current_slot_id=slot_id.get(row.slot_number),
                updated_at=now,
            )
            for row in banks
        ],
        update_conflicts=True,
        unique_fields=["serial_number"],
        update_fields=[
            "status",
            "battery_level",
            "hardware_info",
            "current_station",
            "current_slot",
            "updated_at",
        ],
    )

"""
The row-heavy writes of a full sync: upsert every reported slot, then every reported bank
into its slot. Their cost does not depend on the slot count.

On PostgreSQL they are one statement: the rows travel as JSON documents unpacked by
`jsonb_to_recordset` (the database parses them in C, where the ORM's `bulk_create` builds
a model instance and quotes every value of every row in Python, the largest cost of a full
sync when first profiled), the slots' upsert is a data-modifying WITH clause whose RETURNING
gives the banks their slot ids, and two more writes of the caller can ride along. Other
databases (SQLite in development) use `bulk_create` twice. Both paths run the whole test
suite in CI; docs/performance.md has the figures.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime

import orjson
from django.db import connection

from api.stations.models import PowerBank, StationSlot


@dataclass(slots=True)
class SlotRow:
    slot_number: int
    status: str
    battery_level: int
    slot_metadata: dict


@dataclass(slots=True)
class BankRow:
    serial_number: str
    status: str
    battery_level: int
    hardware_info: dict
    slot_number: int | None  # one of the slot rows' numbers, or None: not in a slot


def _json(rows: Iterable) -> str:
    rows = list(rows)
    try:
        # orjson encodes dataclasses itself, several times faster than json.dumps...
        return orjson.dumps(rows).decode("utf-8")
    except orjson.JSONEncodeError:
        # ...but not integers beyond 64 bits, which JSON (and jsonb) allow in metadata.
        return json.dumps([asdict(row) for row in rows], ensure_ascii=False)


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


def upsert_slots_and_banks(
    station_id,
    slots: list[SlotRow],
    banks: list[BankRow],
    *,
    now: datetime,
    along_with: tuple[str, list] | None = None,
    last: tuple[str, list] | None = None,
) -> list[tuple] | None:
    """
    Insert or update the station's reported slots, then the reported banks, each at this
    station in its slot (if any). The caller has taken every bank that moves or leaves out
    of its old slot, so no slot ever holds two banks, not even within the statement.

    Model and capacity are operator-owned: new banks get them blank, existing banks keep them.

    `along_with` is one more write (SQL and parameters, no RETURNING) and `last` one more
    with a RETURNING clause, whose rows are returned (None without `last`); both for rows
    these do not touch. On PostgreSQL they travel in the same statement, as WITH clauses.
    """
    if connection.vendor != "postgresql":
        _bulk_upsert(station_id, slots, banks, now=now)
        with connection.cursor() as cursor:
            if along_with is not None:
                cursor.execute(*along_with)
            if last is None:
                return None
            cursor.execute(*last)
            return cursor.fetchall()
    clauses, params = [], []
    if along_with is not None:
        clauses.append(f"along_with AS ({along_with[0]})")
        params += along_with[1]
    if last is not None:
        clauses.append(f"last AS ({last[0]})")
        params += last[1]
    clauses.append(_SLOTS_CTE)
    params += [station_id, now, _json(slots)]
    banks_params = [station_id, now, now, _json(banks)]
    with connection.cursor() as cursor:
        if last is None:
            cursor.execute(f"WITH {', '.join(clauses)} {_BANKS_INSERT}", [*params, *banks_params])
            return None
        clauses.append(f"banks AS ({_BANKS_INSERT})")
        cursor.execute(f"WITH {', '.join(clauses)} SELECT * FROM last", [*params, *banks_params])
        return cursor.fetchall()


def _bulk_upsert(station_id, slots: list[SlotRow], banks: list[BankRow], *, now: datetime) -> None:
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

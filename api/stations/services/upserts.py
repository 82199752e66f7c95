"""
The two row-heavy statements of a full sync: upsert every reported slot, upsert every
reported bank. One statement each, whatever the slot count.

On PostgreSQL the rows travel as one JSON document unpacked by `jsonb_to_recordset`: the
database parses it in C, where the ORM's `bulk_create` builds a model instance and quotes
every value of every row in Python (the largest cost of a full sync when profiled; see
docs/performance.md). Other databases (SQLite in development) use `bulk_create`. Both
paths run the whole test suite in CI.
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
    current_slot_id: int | None


def _json(rows: Iterable) -> str:
    rows = list(rows)
    try:
        # orjson encodes dataclasses itself, several times faster than json.dumps...
        return orjson.dumps(rows).decode("utf-8")
    except orjson.JSONEncodeError:
        # ...but not integers beyond 64 bits, which JSON (and jsonb) allow in metadata.
        return json.dumps([asdict(row) for row in rows], ensure_ascii=False)


def upsert_slots(station_id, rows: list[SlotRow], *, now: datetime) -> dict[int, int]:
    """Insert or update the station's slots; returns slot number -> slot id."""
    if not rows:
        return {}
    if connection.vendor == "postgresql":
        table = StationSlot._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {table} (station_id, slot_number, status, battery_level, slot_metadata, updated_at)
                SELECT %s, r.slot_number, r.status, r.battery_level, r.slot_metadata, %s
                FROM jsonb_to_recordset(%s::jsonb)
                     AS r(slot_number integer, status text, battery_level integer, slot_metadata jsonb)
                ON CONFLICT (station_id, slot_number) DO UPDATE SET
                    status = EXCLUDED.status,
                    battery_level = EXCLUDED.battery_level,
                    slot_metadata = EXCLUDED.slot_metadata,
                    updated_at = EXCLUDED.updated_at
                RETURNING slot_number, id
                """,
                [station_id, now, _json(rows)],
            )
            return dict(cursor.fetchall())
    objects = [
        StationSlot(
            station_id=station_id,
            slot_number=row.slot_number,
            status=row.status,
            battery_level=row.battery_level,
            slot_metadata=row.slot_metadata,
            updated_at=now,
        )
        for row in rows
    ]
    StationSlot.objects.bulk_create(
        objects,
        update_conflicts=True,
        unique_fields=["station", "slot_number"],
        update_fields=["status", "battery_level", "slot_metadata", "updated_at"],
    )
    return {slot.slot_number: slot.pk for slot in objects}


def upsert_banks(
    station_id, rows: list[BankRow], *, now: datetime, along_with: tuple[str, list] | None = None
) -> None:
    """
    Insert or update the reported banks, each at this station (in its slot, if any).

    Model and capacity are operator-owned: new banks get them blank, existing banks keep them.

    `along_with` is one more write (SQL and parameters, no RETURNING) for rows the upsert does
    not touch: on PostgreSQL it travels in the same statement, as a data-modifying WITH
    clause, which saves a round trip per full sync; elsewhere it runs right after.
    """
    if not rows or connection.vendor != "postgresql":
        if rows:
            _bulk_upsert_banks(station_id, rows, now=now)
        if along_with is not None:
            with connection.cursor() as cursor:
                cursor.execute(*along_with)
        return
    along_sql, along_params = ("", [])
    if along_with is not None:
        along_sql, along_params = f"WITH along_with AS ({along_with[0]}) ", along_with[1]
    table = PowerBank._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            along_sql
            + f"""
            INSERT INTO {table} (serial_number, model, capacity_mah, status, battery_level,
                                 hardware_info, current_station_id, current_slot_id,
                                 created_at, updated_at)
            SELECT r.serial_number, '', NULL, r.status, r.battery_level, r.hardware_info,
                   CASE WHEN r.current_slot_id IS NULL THEN NULL ELSE %s::uuid END,
                   r.current_slot_id, %s, %s
            FROM jsonb_to_recordset(%s::jsonb)
                 AS r(serial_number text, status text, battery_level integer,
                      hardware_info jsonb, current_slot_id bigint)
            ON CONFLICT (serial_number) DO UPDATE SET
                status = EXCLUDED.status,
                battery_level = EXCLUDED.battery_level,
                hardware_info = EXCLUDED.hardware_info,
                current_station_id = EXCLUDED.current_station_id,
                current_slot_id = EXCLUDED.current_slot_id,
                updated_at = EXCLUDED.updated_at
            """,
            [*along_params, station_id, now, now, _json(rows)],
        )


def _bulk_upsert_banks(station_id, rows: list[BankRow], *, now: datetime) -> None:
    PowerBank.objects.bulk_create(
        [
            PowerBank(
                serial_number=row.serial_number,
                status=row.status,
                battery_level=row.battery_level,
                hardware_info=row.hardware_info,
                current_station_id=station_id if row.current_slot_id is not None else None,
                current_slot_id=row.current_slot_id,
                updated_at=now,
            )
            for row in rows
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

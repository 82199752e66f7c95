"""
Finding, registering and locking stations, and the rules every message applies to a
station's liveness and ordering. The writes themselves are made by the message's module
(`full_sync`, `returns`, `status`) or, for an operator's change, `set_status_by_operator`.
"""

import uuid
from datetime import datetime

from django.db import transaction
from django.db.models import Case, Q, Value, When

from api.stations.models import (
    PENDING_ADDRESS,
    Station,
    StationStatus,
    StationStatusHistory,
    StatusTrigger,
)
from main_app import sql

STATION_COLUMNS = sql.Columns(Station, [field.name for field in Station._meta.concrete_fields])
_LOCK_BY_SERIAL_SQL = f"SELECT {STATION_COLUMNS.sql} FROM {STATION_COLUMNS.table} WHERE serial_number = %s"


def placeholder_name(serial_number: str) -> str:
    return f"Station {serial_number[-4:]}"


def lock_station(*, serial_number: str, imei: str | None = None) -> tuple[Station, bool]:
    """
    Return the station for this serial (or IMEI), row-locked; register it if unknown.

    All writes about one station serialize on this lock, so the caller must be inside a
    transaction and must take it before touching the station's slots, banks or rentals.
    Twenty concurrent first messages of one new station create it once: the insert
    ignores a conflict on the serial, and everyone then waits for the same row.
    Returns `(station, created)`.
    """
    # The common case first: the station is known by its serial (fixed SQL: the hot path).
    station = next(
        iter(STATION_COLUMNS.instances(sql.fetch(_LOCK_BY_SERIAL_SQL + sql.for_update(), [serial_number]))), None
    )
    if station is not None:
        return station, False
    return find_or_register(serial_number=serial_number, imei=imei)


def find_or_register(*, serial_number: str, imei: str | None) -> tuple[Station, bool]:
    """
    The station by serial, else by IMEI (an operator may have registered it so), row-locked;
    registered with placeholders if neither is known (rule 6). Returns `(station, created)`.
    """
    keys = {serial_number} | ({imei} if imei else set())
    query = (
        Station.objects.select_for_update()
        .filter(Q(serial_number=serial_number) | Q(imei__in=keys))
        # An exact serial match beats a station an operator registered by IMEI.
        .order_by(Case(When(serial_number=serial_number, then=Value(0)), default=Value(1)))
    )
    station = query.first()
    if station is not None:
        return station, False
    candidate = Station(
        id=uuid.uuid4(),
        serial_number=serial_number,
        imei=imei or serial_number,
        station_name=placeholder_name(serial_number),
        address=PENDING_ADDRESS,
        latitude=0,
        longitude=0,
        status=StationStatus.OFFLINE,
    )
    Station.objects.bulk_create([candidate], ignore_conflicts=True)
    station = query.first()
    return station, station.pk == candidate.pk


def advance_heartbeat(station: Station, heard_at: datetime, *, now: datetime) -> bool:
    """
    Move `station.last_heartbeat` (in memory) to `heard_at`, never past `now` and never
    backwards. Returns whether it moved; the caller saves it.
    """
    heard_at = min(heard_at, now)
    if station.last_heartbeat is not None and heard_at <= station.last_heartbeat:
        return False
    station.last_heartbeat = heard_at
    return True


def is_stale(station: Station, sent_at: datetime) -> bool:
    """A full or status message older than the newest state applied changes nothing."""
    return station.device_state_at is not None and sent_at < station.device_state_at


def status_change(
    station: Station, new_status: str, *, at: datetime, trigger: str
) -> StationStatusHistory | None:
    """
    Apply `new_status` to `station` in memory and return the unsaved history row, or None
    when the status does not change. The caller saves both (it holds the station lock).
    """
    if station.status == new_status and station.status_changed_at is not None:
        return None
    previous_at = station.status_changed_at
    seconds = None
    if previous_at is not None:
        # Message times have whole seconds and the monitor uses server time: never let a
        # change appear to happen before the one it follows.
        at = max(at, previous_at)
        seconds = int((at - previous_at).total_seconds())
    history = StationStatusHistory(
        station=station,
        status=new_status,
        previous_status=station.status if previous_at is not None else "",
        changed_at=at,
        seconds_in_previous_status=seconds,
        trigger=trigger,
    )
    station.status = new_status
    station.status_changed_at = at
    return history


def set_status_by_operator(
    *, station_id, new_status: str, at: datetime
) -> tuple[Station, StationStatusHistory | None]:
    """
    An operator's status change from the admin (trigger ADMIN), under the station lock.

    Returns the station and the saved history row, or None when the status was already
    `new_status`. Opens its own transaction (or joins the caller's).
    """
    with transaction.atomic():
        station = Station.objects.select_for_update().get(pk=station_id)
        history = status_change(station, new_status, at=at, trigger=StatusTrigger.ADMIN)
        if history is not None:
            Station.objects.filter(pk=station.pk).update(
                status=station.status, status_changed_at=station.status_changed_at, updated_at=at
            )
            history.save()
    return station, history

"""
Reads of stations, slots, power banks and the event log, for the admin and the dashboard.

Query conditions, querysets and counts; nothing here writes. This module reads the stations
app's own tables only, so any admin (the rentals admin picks rentable banks here) and the
dashboard may import it without tying the apps in a loop.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, NullIf

from api.stations.models import (
    PENDING_ADDRESS,
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    Station,
    StationSlot,
    StationStatus,
    StationStatusHistory,
)

# A bank at or above this battery level counts as charged (ready to hand out).
CHARGED_BATTERY_LEVEL = 80
# The dashboard's "messages, last hour".
EVENT_WINDOW = timedelta(hours=1)


# --- Conditions --------------------------------------------------------------------------------


def rentable_power_banks_q() -> Q:
    """Banks a customer can take right now: AVAILABLE and sitting in a slot."""
    return Q(status=PowerBankStatus.AVAILABLE, current_slot__isnull=False)


def failed_events_q() -> Q:
    """Events whose last attempt failed (FAILED, or answered 5xx), found by `failed_at`'s index."""
    return Q(failed_at__isnull=False) & (Q(outcome=IoTEventOutcome.FAILED) | Q(http_status__gte=500))


def placement_pending_q() -> Q:
    """Stations still at the placeholder location a sync gave them (docs/design.md, rule 5)."""
    return Q(address__in=[PENDING_ADDRESS, ""]) | Q(latitude=0, longitude=0)


def heartbeat_cutoff(now: datetime) -> datetime:
    return now - timedelta(minutes=settings.IOT_OFFLINE_AFTER_MINUTES)


# --- Stations and slots ------------------------------------------------------------------------


def _slot_count_subquery():
    slots = StationSlot.objects.filter(station=OuterRef("pk")).order_by().values("station")
    return Subquery(slots.annotate(n=Count("pk")).values("n"), output_field=IntegerField())


def _bank_count_subquery(condition: Q | None = None):
    banks = (
        PowerBank.objects.filter(current_station=OuterRef("pk"), current_slot__isnull=False)
        .order_by()
        .values("current_station")
    )
    return Subquery(banks.annotate(n=Count("pk", filter=condition)).values("n"), output_field=IntegerField())


def with_slot_counts(queryset: QuerySet[Station]) -> QuerySet[Station]:
    """
    Annotate `slots_charged`, `slots_occupied` and `slots_total` (no query per row).

    Correlated subqueries rather than a GROUP BY over joins: PostgreSQL evaluates them only
    for the rows of the page it returns (after ORDER BY/LIMIT), while a grouped join would
    aggregate every slot and bank of the fleet before paginating, and joining slots and
    banks together would multiply the rows it counts.
    """
    return queryset.annotate(
        slots_occupied=Coalesce(_bank_count_subquery(), Value(0)),
        slots_charged=Coalesce(_bank_count_subquery(Q(battery_level__gte=CHARGED_BATTERY_LEVEL)), Value(0)),
        slots_total=Coalesce(NullIf("total_slots", Value(0)), _slot_count_subquery(), Value(0)),
    )


def station_by_serial(serial_number: str) -> Station | None:
    return Station.objects.filter(serial_number=serial_number).first()


def recent_status_history(station: Station, limit: int) -> list[StationStatusHistory]:
    return list(station.status_history.all()[:limit])


def recent_events_of_station(station: Station, limit: int) -> list[IoTEvent]:
    """The station's latest messages, without their bodies."""
    return list(
        IoTEvent.objects.filter(station_serial=station.serial_number).only(
            "id", "received_at", "message_type", "outcome", "http_status", "duration_ms"
        )[:limit]
    )


# --- Power banks -------------------------------------------------------------------------------


def banks_by_slot(station: Station) -> dict[int, PowerBank]:
    """The banks sitting in the station's slots, by slot id (one query)."""
    return {
        bank.current_slot_id: bank
        for bank in PowerBank.objects.filter(current_station=station, current_slot__isnull=False).only(
            "id", "serial_number", "battery_level", "status", "current_slot_id"
        )
    }


def rentable_power_banks() -> QuerySet[PowerBank]:
    """Rentable banks with the station and slot their label names."""
    return PowerBank.objects.filter(rentable_power_banks_q()).select_related("current_station", "current_slot")


# --- The fleet at a glance ---------------------------------------------------------------------


@dataclass(frozen=True)
class FleetFigures:
    stations_total: int
    stations_online: int
    stations_offline: int
    stations_maintenance: int
    # ONLINE by status but silent past the timeout: the monitor has not caught up yet.
    stations_silent: int
    stations_placement_pending: int
    power_banks_total: int
    power_banks_rentable: int
    power_banks_rented: int
    events_last_hour: int
    events_failed_last_hour: int


def fleet_figures(now: datetime) -> FleetFigures:
    """Stations, banks and recent messages in three aggregate queries, one per table."""
    stations = Station.objects.aggregate(
        total=Count("pk"),
        online=Count("pk", filter=Q(status=StationStatus.ONLINE)),
        offline=Count("pk", filter=Q(status=StationStatus.OFFLINE)),
        maintenance=Count("pk", filter=Q(status=StationStatus.MAINTENANCE)),
        silent=Count(
            "pk",
            filter=Q(status=StationStatus.ONLINE)
            & (Q(last_heartbeat__isnull=True) | Q(last_heartbeat__lt=heartbeat_cutoff(now))),
        ),
        placement_pending=Count("pk", filter=placement_pending_q()),
    )
    banks = PowerBank.objects.aggregate(
        total=Count("pk"),
        rentable=Count("pk", filter=rentable_power_banks_q()),
        rented=Count("pk", filter=Q(status=PowerBankStatus.RENTED)),
    )
    events = IoTEvent.objects.filter(received_at__gte=now - EVENT_WINDOW).aggregate(
        total=Count("pk"),
        failed=Count("pk", filter=failed_events_q()),
    )
    return FleetFigures(
        stations_total=stations["total"],
        stations_online=stations["online"],
        stations_offline=stations["offline"],
        stations_maintenance=stations["maintenance"],
        stations_silent=stations["silent"],
        stations_placement_pending=stations["placement_pending"],
        power_banks_total=banks["total"],
        power_banks_rentable=banks["rentable"],
        power_banks_rented=banks["rented"],
        events_last_hour=events["total"],
        events_failed_last_hour=events["failed"],
    )


# --- Read when Prometheus scrapes (main_app/metrics.py) -------------------------------------------


def station_counts_by_status(now: datetime) -> tuple[dict[str, int], int]:
    """
    Stations per status (every status, 0 included), and how many of those not in
    maintenance have a last heartbeat older than the timeout, in one grouped query.
    """
    rows = (
        Station.objects.order_by()
        .values("status")
        .annotate(
            total=Count("pk"),
            silent=Count(
                "pk",
                filter=Q(last_heartbeat__lt=heartbeat_cutoff(now)) & ~Q(status=StationStatus.MAINTENANCE),
            ),
        )
    )
    by_status = dict.fromkeys(StationStatus.values, 0)
    silent = 0
    for row in rows:
        by_status[row["status"]] = row["total"]
        silent += row["silent"]
    return by_status, silent


def rentable_power_bank_count() -> int:
    return PowerBank.objects.filter(rentable_power_banks_q()).count()


# The planner's estimate, kept by (auto)vacuum and ANALYZE; -1 until a table is first
# analyzed, when the statistics system's count of live rows stands in. On PostgreSQL the log
# is partitioned by day: the sum over its partitions (the parent itself holds no rows, and
# nothing analyzes a partitioned parent by itself); a plain table is its own only leaf.
_EVENT_LOG_ESTIMATE_SQL = (
    "SELECT COALESCE(SUM(CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE COALESCE(s.n_live_tup, 0) END), 0) "
    "FROM pg_partition_tree(to_regclass(%s)) t JOIN pg_class c ON c.oid = t.relid "
    "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE t.isleaf"
)


def event_log_row_estimate() -> int:
    """
    The event log's size without counting it on PostgreSQL, where a count would read the
    whole table (one row per message): the statistics' estimate. Elsewhere a count.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_EVENT_LOG_ESTIMATE_SQL, [IoTEvent._meta.db_table])
            row = cursor.fetchone()
        return int(row[0]) if row else 0
    return IoTEvent.objects.count()

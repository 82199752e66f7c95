"""
Read-only numbers for the operators' dashboard on the admin index.

Four aggregate queries whatever the size of the fleet, one per table: each counts several
things at once with `Count(filter=...)`. Nothing here writes.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from api.rentals.models import OPEN_RENTAL_STATUSES, Rental, RentalStatus
from api.stations.models import (
    PENDING_ADDRESS,
    IoTEvent,
    IoTEventOutcome,
    PowerBank,
    PowerBankStatus,
    Station,
    StationStatus,
)

EVENT_WINDOW = timedelta(hours=1)


def rentable_power_banks_q() -> Q:
    """Banks a customer can take right now: AVAILABLE and sitting in a slot."""
    return Q(status=PowerBankStatus.AVAILABLE, current_slot__isnull=False)


def overdue_rentals_q(now: datetime) -> Q:
    """Marked OVERDUE, or still ACTIVE past the due time (the monitor has not run yet)."""
    return Q(status=RentalStatus.OVERDUE) | Q(status=RentalStatus.ACTIVE, due_at__lt=now)


def failed_events_q() -> Q:
    return Q(outcome=IoTEventOutcome.FAILED) | Q(http_status__gte=500)


def placement_pending_q() -> Q:
    """Stations still at the placeholder location a sync gave them (DESIGN rule 5)."""
    return Q(address__in=[PENDING_ADDRESS, ""]) | Q(latitude=0, longitude=0)


def heartbeat_cutoff(now: datetime) -> datetime:
    return now - timedelta(minutes=settings.IOT_OFFLINE_AFTER_MINUTES)


@dataclass(frozen=True)
class FleetSummary:
    at: datetime
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
    rentals_open: int
    rentals_overdue: int
    events_last_hour: int
    events_failed_last_hour: int


def fleet_summary(*, now: datetime | None = None) -> FleetSummary:
    """The fleet at a glance, in four queries."""
    now = now or timezone.now()
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
    # Only open rentals are counted: the (status, due_at) index keeps this off the history.
    rentals = Rental.objects.filter(status__in=OPEN_RENTAL_STATUSES).aggregate(
        open=Count("pk"),
        overdue=Count("pk", filter=overdue_rentals_q(now)),
    )
    events = IoTEvent.objects.filter(received_at__gte=now - EVENT_WINDOW).aggregate(
        total=Count("pk"),
        failed=Count("pk", filter=failed_events_q()),
    )
    return FleetSummary(
        at=now,
        stations_total=stations["total"],
        stations_online=stations["online"],
        stations_offline=stations["offline"],
        stations_maintenance=stations["maintenance"],
        stations_silent=stations["silent"],
        stations_placement_pending=stations["placement_pending"],
        power_banks_total=banks["total"],
        power_banks_rentable=banks["rentable"],
        power_banks_rented=banks["rented"],
        rentals_open=rentals["open"],
        rentals_overdue=rentals["overdue"],
        events_last_hour=events["total"],
        events_failed_last_hour=events["failed"],
    )

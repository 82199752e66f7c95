"""
Reads of rentals and packages, for the admin and the dashboard.

Query conditions, querysets and counts; nothing here writes (every write goes through
`RentalService`). This module reads the rentals app's own tables only, so the stations admin
and the dashboard may import it without tying the apps in a loop.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from api.rentals.models import OPEN_RENTAL_STATUSES, Rental, RentalPackage, RentalStatus


def open_rentals_q() -> Q:
    """The customer still holds the bank."""
    return Q(status__in=OPEN_RENTAL_STATUSES)


def overdue_rentals_q(now: datetime) -> Q:
    """Marked OVERDUE, or still ACTIVE past the due time (the monitor has not run yet)."""
    return Q(status=RentalStatus.OVERDUE) | Q(status=RentalStatus.ACTIVE, due_at__lt=now)


def past_due(rental: Rental, now: datetime) -> bool:
    """ACTIVE past the due time, not marked OVERDUE yet."""
    return rental.status == RentalStatus.ACTIVE and rental.due_at < now


def recent_rentals_of_bank(power_bank, limit: int) -> list[Rental]:
    """The bank's latest rentals, newest first, with their customers."""
    return list(
        Rental.objects.filter(power_bank=power_bank).select_related("user").order_by("-started_at")[:limit]
    )


def active_packages() -> QuerySet[RentalPackage]:
    return RentalPackage.objects.filter(is_active=True)


def pending_ejections_q() -> Q:
    """The cabinet was asked to eject the bank and has not said it did."""
    return Q(status=RentalStatus.PENDING_POPUP)


@dataclass(frozen=True)
class RentalFigures:
    rentals_open: int
    rentals_overdue: int
    # Ejections waiting for their cabinet, and of those the ones past the grace, which
    # monitor_stations settles from an inventory.
    rentals_pending_popup: int
    rentals_pending_popup_stale: int


def rental_figures(now: datetime) -> RentalFigures:
    """Open, overdue and ejecting rentals in one query."""
    # Only unfinished rentals are counted: the (status, due_at) index keeps this off the history.
    stale = now - timedelta(seconds=settings.IOT_POPUP_GRACE_SECONDS)
    counts = Rental.objects.filter(open_rentals_q() | pending_ejections_q()).aggregate(
        open=Count("pk", filter=open_rentals_q()),
        overdue=Count("pk", filter=overdue_rentals_q(now)),
        pending=Count("pk", filter=pending_ejections_q()),
        pending_stale=Count("pk", filter=pending_ejections_q() & Q(ejection_requested_at__lt=stale)),
    )
    return RentalFigures(
        rentals_open=counts["open"],
        rentals_overdue=counts["overdue"],
        rentals_pending_popup=counts["pending"],
        rentals_pending_popup_stale=counts["pending_stale"],
    )


def unfinished_rental_counts(now: datetime) -> dict[str, int]:
    """
    For the metrics, in one grouped query: `open` (the customer holds the bank), `overdue`
    (of those, late) and `pending` (every PENDING status the model has, not started yet).
    """
    pending = [status for status in RentalStatus.values if status.startswith("PENDING")]
    rows = (
        Rental.objects.filter(Q(status__in=[*OPEN_RENTAL_STATUSES, *pending]))
        .order_by()
        .values("status")
        .annotate(total=Count("pk"), overdue=Count("pk", filter=overdue_rentals_q(now)))
    )
    counts = {"open": 0, "overdue": 0, "pending": 0}
    for row in rows:
        if row["status"] in OPEN_RENTAL_STATUSES:
            counts["open"] += row["total"]
            counts["overdue"] += row["overdue"]
        else:
            counts["pending"] += row["total"]
    return counts

"""Station liveness: status messages and the heartbeat timeout (docs/design.md, rule 9)."""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from api.rentals.services.rental_service import RentalService, StationCheck
from api.stations.models import Station, StationStatus, StatusTrigger
from api.stations.services.schemas import StatusMessage
from api.stations.services.stations import advance_heartbeat, is_stale, lock_station, status_change

logger = logging.getLogger(__name__)


@dataclass
class StatusResult:
    station: Station
    applied: bool
    status_changed: bool

    @property
    def summary(self) -> str:
        return "Station status updated" if self.applied else "Out-of-date status recorded but not applied"

    def as_response(self) -> dict:
        heartbeat = self.station.last_heartbeat
        return {
            "station_id": str(self.station.pk),
            "serial_number": self.station.serial_number,
            "status": self.station.status,
            "status_changed": self.status_changed,
            "last_heartbeat": heartbeat.isoformat() if heartbeat else None,
            "applied": self.applied,
        }


def apply_status(message: StatusMessage, *, now: datetime | None = None) -> StatusResult:
    """Apply an ONLINE/OFFLINE/MAINTENANCE message. The caller provides the transaction."""
    now = now or timezone.now()
    station, _ = lock_station(serial_number=message.device.serial_number)
    if is_stale(station, message.sent_at):
        return StatusResult(station=station, applied=False, status_changed=False)
    at = min(message.sent_at, now)
    history = status_change(
        station, message.device.status, at=at, trigger=StatusTrigger.STATUS_EVENT
    )
    station.device_state_at = message.sent_at
    fields = {"device_state_at": station.device_state_at, "updated_at": now}
    if message.device.status == StationStatus.ONLINE and advance_heartbeat(station, at, now=now):
        fields["last_heartbeat"] = station.last_heartbeat
    if history is not None:
        fields.update(status=station.status, status_changed_at=station.status_changed_at)
        history.save()
    Station.objects.filter(pk=station.pk).update(**fields)
    return StatusResult(station=station, applied=True, status_changed=history is not None)


@dataclass
class MonitorResult:
    stations_marked_offline: list[str]
    rentals_marked_overdue: int
    # Stations asked for an inventory because an ejection there waited past the grace.
    ejection_checks: list[StationCheck] = field(default_factory=list)


def mark_silent_stations_offline(*, now: datetime | None = None) -> list[str]:
    """
    Stations ONLINE whose last heartbeat is older than the timeout, and stations ONLINE that
    never sent one (set ONLINE by hand) once they have been ONLINE that long: the admin's
    dashboard counts both as silent, and both are OFFLINE as far as anyone can tell.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.IOT_OFFLINE_AFTER_MINUTES)
    silent = Q(last_heartbeat__lt=cutoff) | (
        Q(last_heartbeat__isnull=True) & (Q(status_changed_at__isnull=True) | Q(status_changed_at__lt=cutoff))
    )
    marked = []
    candidates = Station.objects.filter(silent, status=StationStatus.ONLINE).values_list("serial_number", flat=True)
    for serial in list(candidates):
        # One short transaction per station: never hold many station locks at once.
        with transaction.atomic():
            station = (
                Station.objects.select_for_update()
                .filter(silent, serial_number=serial, status=StationStatus.ONLINE)
                .first()
            )
            if station is None:
                continue  # a message arrived meanwhile
            history = status_change(
                station, StationStatus.OFFLINE, at=now, trigger=StatusTrigger.TIMEOUT
            )
            Station.objects.filter(pk=station.pk).update(
                status=station.status, status_changed_at=station.status_changed_at, updated_at=now
            )
            if history is not None:
                history.save()
            marked.append(serial)
    if marked:
        logger.warning("Marked %d silent station(s) OFFLINE: %s", len(marked), ", ".join(marked))
    return marked


def monitor(*, now: datetime | None = None) -> MonitorResult:
    """
    The periodic liveness pass: silent stations go OFFLINE, late rentals OVERDUE, and the
    cabinets of ejections pending past IOT_POPUP_GRACE_SECONDS are asked for an inventory
    that settles them (never for the ejection again).
    """
    now = now or timezone.now()
    offline = mark_silent_stations_offline(now=now)
    # Settled first: a rental its inventory makes ACTIVE from the request may be overdue already.
    checks = RentalService.settle_stale_ejections(now=now)
    return MonitorResult(
        stations_marked_offline=offline,
        rentals_marked_overdue=RentalService.mark_overdue(now=now),
        ejection_checks=checks,
    )



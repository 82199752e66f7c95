"""
Template tags for the operators' admin: `{% fleet_dashboard %}` on the admin index.

The dashboard is where the figures of both apps meet, and it follows the rule for all admin
and read code between `api.stations` and `api.rentals`:

- Each app's reads for the admin and the dashboard live in its `selectors` module, which
  imports its own app's models and nothing of the other app.
- An app's admin, and this dashboard, read the other app only through that app's selectors;
  display helpers and list filters shared by both admins live in `main_app.admin_display`
  and `main_app.admin_filters`.
- No module imports another app's `admin`.
"""

from dataclasses import asdict, dataclass
from datetime import datetime

from django import template
from django.conf import settings
from django.utils import timezone

from api.rentals.selectors import RentalFigures, rental_figures
from api.stations.selectors import FleetFigures, fleet_figures

register = template.Library()


@dataclass(frozen=True)
class FleetSummary(FleetFigures, RentalFigures):
    at: datetime


def fleet_summary(*, now: datetime | None = None) -> FleetSummary:
    """The fleet at a glance, in four queries: three of the stations app, one of rentals."""
    now = now or timezone.now()
    return FleetSummary(at=now, **asdict(fleet_figures(now)), **asdict(rental_figures(now)))


@register.inclusion_tag("admin/stations/fleet_dashboard.html", takes_context=True)
def fleet_dashboard(context):
    """The fleet at a glance, for users who may see stations (four queries)."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.has_perm("stations.view_station"):
        return {"summary": None}
    return {
        "summary": fleet_summary(),
        "offline_after_minutes": settings.IOT_OFFLINE_AFTER_MINUTES,
        "popup_grace_seconds": settings.IOT_POPUP_GRACE_SECONDS,
        "can_view_banks": user.has_perm("stations.view_powerbank"),
        "can_view_rentals": user.has_perm("rentals.view_rental"),
        "can_view_events": user.has_perm("stations.view_iotevent"),
    }

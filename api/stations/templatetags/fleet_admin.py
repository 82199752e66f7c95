"""Template tags for the operators' admin: `{% fleet_dashboard %}` on the admin index."""

from django import template
from django.conf import settings

from api.stations.services.dashboard import fleet_summary

register = template.Library()


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
        "can_view_banks": user.has_perm("stations.view_powerbank"),
        "can_view_rentals": user.has_perm("rentals.view_rental"),
        "can_view_events": user.has_perm("stations.view_iotevent"),
    }

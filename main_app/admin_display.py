"""
Display helpers for the operators' admin, shared by every app's admin.

They know no model of any app: an app's admin brings its own tones and choices, so the
stations admin and the rentals admin can both use them without importing each other.
"""

import json
from datetime import datetime

from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

# The admin's stylesheet (badges, meters, the dashboard) ships with the stations app's static
# files; every admin page of the project uses this one sheet.
ADMIN_MEDIA_CSS = {"all": ["stations/admin.css"]}


def badge(label, tone: str):
    return format_html('<span class="cg-badge cg-badge--{}">{}</span>', tone, label)


def choice_badge(value: str, choices, tones: dict):
    if not value:
        return "-"
    return badge(choices(value).label if value in choices.values else value, tones.get(value, "muted"))


def admin_link(obj, text=None):
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def age(moment: datetime | None, *, now: datetime | None = None) -> str:
    """'3 min ago' style, coarse on purpose: operators scan it, they do not compute with it."""
    if moment is None:
        return "never"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def pre(text: str):
    return format_html('<pre class="cg-pre">{}</pre>', text) if text else "-"

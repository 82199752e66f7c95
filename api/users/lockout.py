"""
Login throttling with django-axes: the callables its settings name (main_app/settings.py).

Failures are counted per account and client address together, in the database, so every
worker and host shares them: ten failures for one account from one address lock that
address out for that account during the cool-off, and nobody else. The account is named
the same way whichever door was knocked on: the API logs in by email, the admin form by
username, and both count against the account's email in lower case (an account that does
not exist counts under what was typed).
"""

import math

from axes.helpers import get_client_username, get_cool_off, get_failure_limit
from axes.models import AccessAttempt
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.template.response import TemplateResponse
from django.utils import timezone

from main_app.exceptions import TooManyAttempts, json_error

# Computed once per request: axes asks for the account several times per attempt.
_KEYS_ATTR = "_login_account_keys"


def _resolve(email: str | None, username: str | None) -> str | None:
    if email is not None:
        return email.strip().lower()
    if username is None:
        return None
    account = get_user_model()._default_manager.filter(username=username).only("email").first()
    if account is not None and account.email:
        return account.email.lower()
    return username


def account_key(request, credentials=None) -> str | None:
    """AXES_USERNAME_CALLABLE: the account an attempt is about, as axes stores it."""
    credentials = credentials or {}
    email = credentials.get("email")
    username = credentials.get("username")
    if email is None and username is None and request is not None:
        username = request.POST.get("username")
    if email is not None and not isinstance(email, str):
        email = str(email)
    cache = request.__dict__.setdefault(_KEYS_ATTR, {}) if request is not None else {}
    lookup = (email, username)
    if lookup not in cache:
        cache[lookup] = _resolve(email, username)
    return cache[lookup]


def seconds_until_unlocked(request, credentials=None) -> int:
    """
    How long the lockout of this account from this address still lasts.

    Axes counts the failures of the attempts newer than the cool-off (one row per user
    agent, dated by its latest failure); the lock ends when the rows that make up the
    limit, newest first, fall out of that window.
    """
    cool_off = get_cool_off(request)
    now = getattr(request, "axes_attempt_time", None) or timezone.now()
    rows = (
        AccessAttempt.objects.filter(
            username=get_client_username(request, credentials),
            ip_address=getattr(request, "axes_ip_address", None),
            attempt_time__gte=now - cool_off,
        )
        .order_by("-attempt_time")
        .values_list("attempt_time", "failures_since_start")
    )
    limit = get_failure_limit(request, credentials)
    total = 0
    for attempt_time, failures in rows:
        total += failures
        if total >= limit:
            return max(1, math.ceil((attempt_time + cool_off - now).total_seconds()))
    return max(1, math.ceil(cool_off.total_seconds()))


def too_many_attempts(request, credentials=None) -> TooManyAttempts:
    return TooManyAttempts(retry_after=seconds_until_unlocked(request, credentials))


def lockout_response(request, original_response=None, credentials=None):
    """AXES_LOCKOUT_CALLABLE: the API's envelope under /api/, else a page for the admin form."""
    error = too_many_attempts(request, credentials)
    if request.path.startswith("/api/"):
        return json_error(error)
    minutes = math.ceil(int(error.headers["Retry-After"]) / 60)
    context = {
        **admin.site.each_context(request),
        "title": "Too many failed login attempts",
        "retry_after_minutes": minutes,
    }
    response = TemplateResponse(request, "users/lockout.html", context, status=error.status_code)
    response["Retry-After"] = error.headers["Retry-After"]
    return response.render()

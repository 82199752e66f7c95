"""
The service's Prometheus metrics: every series it exports is defined here, and served at
`GET /metrics` (docs/deploy.md, section 6).

Under gunicorn each worker is a process of its own, so counters and histograms are kept in
prometheus_client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set in the process
environment (before anything imports prometheus_client), every worker writes its values to
files there and a scrape, whichever worker answers it, sums the files of all of them,
including workers that have died since (gunicorn.conf.py). Without the variable (tests,
`runserver`) they live in this process.

The fleet figures are not kept by any process: a collector reads them from the database
when Prometheus scrapes, one cheap query each (`FleetCollector`). Recording never touches
the database, so a delivery costs the same queries with metrics on or off.

METRICS_ENABLED=false turns recording into no-ops and `/metrics` into a 404.
"""

import hmac
import logging
import os

from django.conf import settings
from django.db import Error as DatabaseError
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from main_app.exceptions import ERROR_CODES, NotFound, PermissionDenied, json_error

logger = logging.getLogger(__name__)

MESSAGE_TYPES = ("full", "returned", "status")
# A body without a known `type` (refused as INVALID_TYPE or INVALID_JSON) is counted under
# this one label, so a sender's typo cannot create a series per spelling.
UNKNOWN_TYPE = "unknown"
OUTCOMES = ("processed", "duplicate", "stale", "rejected", "failed")

IOT_MESSAGES = Counter(
    "chargeghar_iot_messages_total",
    "Station data deliveries that passed the signature check, by message type and event-log outcome.",
    ["type", "outcome"],
)
IOT_REJECTIONS = Counter(
    "chargeghar_iot_rejections_total",
    "Station data requests answered 4xx, by error code (transport checks, bearer token, validation).",
    ["code"],
)
IOT_PROCESSING = Histogram(
    "chargeghar_iot_processing_seconds",
    "Station data deliveries from receipt of the request to the answer, by message type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IOT_MESSAGE_LAG = Histogram(
    "chargeghar_iot_message_lag_seconds",
    "Our receive time minus the body timestamp (when the sender built the message).",
    # The lowest bucket catches a sender whose clock runs ahead of ours.
    buckets=(0, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400),
)
IOT_CLOCK_SKEW = Histogram(
    "chargeghar_iot_clock_skew_seconds",
    "X-Timestamp minus our clock (negative: the sender's clock is behind ours).",
    # X-Timestamp is whole seconds, so an exact clock shows as -1..0. The signature
    # tolerance (300 s by default) is where requests start being refused.
    buckets=(-300, -120, -60, -30, -10, -5, -2, -1, 0, 1, 2, 5, 10, 30, 60, 120, 300),
)
ADMIN_LOGIN_FAILURES = Counter(
    "chargeghar_admin_login_failures_total",
    "Failed logins (Django's user_login_failed signal: the admin site, and any login through authenticate()).",
)
ADMIN_LOGIN_LOCKOUTS = Counter(
    "chargeghar_admin_login_lockouts_total",
    "Login attempts locked out by django-axes (its user_locked_out signal: the failure that locks, "
    "and each attempt refused while locked).",
)
DATABASE_UNAVAILABLE = Counter(
    "chargeghar_database_unavailable_total",
    "Requests answered 503 because the database could not be reached (API answers and /readyz).",
)
HTTP_SERVER_ERRORS = Counter(
    "chargeghar_http_server_errors_total",
    "Responses with a 5xx status, on any path, by status.",
    ["status"],
)

# Every label combination exists from a worker's start with 0, so that `increase()` sees the
# first event of each kind instead of a series appearing at 1.
_MESSAGES = {(t, o): IOT_MESSAGES.labels(t, o) for t in (*MESSAGE_TYPES, UNKNOWN_TYPE) for o in OUTCOMES}
_PROCESSING = {t: IOT_PROCESSING.labels(t) for t in (*MESSAGE_TYPES, UNKNOWN_TYPE)}
_REJECTIONS = {code: IOT_REJECTIONS.labels(code) for code, error in ERROR_CODES.items() if error.status_code < 500}


def enabled() -> bool:
    return settings.METRICS_ENABLED


def message_type_label(message_type: str) -> str:
    return message_type if message_type in MESSAGE_TYPES else UNKNOWN_TYPE


def delivery(message_type: str, outcome: str, seconds: float) -> None:
    """A station data delivery settled; `outcome` is the event-log outcome, lowercased."""
    if not enabled():
        return
    label = message_type_label(message_type)
    _MESSAGES[label, outcome].inc()
    _PROCESSING[label].observe(seconds)


def rejection(code: str) -> None:
    if not enabled():
        return
    counter = _REJECTIONS.get(code)
    if counter is None:  # a 4xx code added to the vocabulary after this module was loaded
        counter = IOT_REJECTIONS.labels(code)
    counter.inc()


def message_lag(seconds: float) -> None:
    if enabled():
        IOT_MESSAGE_LAG.observe(seconds)


def clock_skew(seconds: float) -> None:
    if enabled():
        IOT_CLOCK_SKEW.observe(seconds)


def database_unavailable() -> None:
    if enabled():
        DATABASE_UNAVAILABLE.inc()


def server_error(status: int) -> None:
    if enabled():
        HTTP_SERVER_ERRORS.labels(str(status)).inc()


def login_failed(sender=None, **kwargs) -> None:
    """Receiver of django.contrib.auth's user_login_failed (its credentials are not read)."""
    if enabled():
        ADMIN_LOGIN_FAILURES.inc()


def login_locked_out(sender=None, **kwargs) -> None:
    """Receiver of axes.signals.user_locked_out."""
    if enabled():
        ADMIN_LOGIN_LOCKOUTS.inc()


# --- Read at scrape time -----------------------------------------------------------------------


class FleetCollector:
    """
    The fleet from the database, one aggregate query per table, when Prometheus scrapes.

    A database that cannot answer leaves the fleet series out and `chargeghar_database_up` 0;
    the counters are still served.
    """

    def collect(self):
        from api.rentals import selectors as rentals
        from api.stations import selectors as stations

        now = timezone.now()
        try:
            by_status, silent = stations.station_counts_by_status(now)
            banks_ready = stations.rentable_power_bank_count()
            rentals_by_status = rentals.unfinished_rental_counts(now)
            event_rows = stations.event_log_row_estimate()
        except DatabaseError as exc:
            logger.warning("Metrics: the fleet could not be read from the database: %s", type(exc).__name__)
            yield GaugeMetricFamily("chargeghar_database_up", "Whether the scrape could read the database.", value=0)
            return
        yield GaugeMetricFamily("chargeghar_database_up", "Whether the scrape could read the database.", value=1)
        stations_family = GaugeMetricFamily("chargeghar_fleet_stations", "Stations by status.", labels=["status"])
        for status, count in sorted(by_status.items()):
            stations_family.add_metric([status.lower()], count)
        yield stations_family
        yield GaugeMetricFamily(
            "chargeghar_fleet_stations_silent",
            "Stations (not in maintenance) whose last heartbeat is older than IOT_OFFLINE_AFTER_MINUTES.",
            value=silent,
        )
        yield GaugeMetricFamily(
            "chargeghar_fleet_power_banks_ready", "Power banks AVAILABLE in a slot: ready to rent.", value=banks_ready
        )
        rentals_family = GaugeMetricFamily(
            "chargeghar_fleet_rentals",
            "Rentals not finished: open (the customer holds the bank), of them overdue, and pending.",
            labels=["status"],
        )
        for status, count in sorted(rentals_by_status.items()):
            rentals_family.add_metric([status], count)
        yield rentals_family
        yield GaugeMetricFamily(
            "chargeghar_iot_event_log_rows",
            "Rows in the IoT event log (PostgreSQL's planner estimate; an exact count on SQLite).",
            value=event_rows,
        )


class _Scrape:
    """What one scrape exposes: the processes' counters and the fleet, read now."""

    def __init__(self):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.counters = CollectorRegistry()
            MultiProcessCollector(self.counters)
        else:
            self.counters = REGISTRY

    def collect(self):
        yield from self.counters.collect()
        yield from FleetCollector().collect()


def exposition() -> bytes:
    return generate_latest(_Scrape())


def may_scrape(request) -> bool:
    """A bearer token equal to METRICS_BEARER_TOKEN, or an address in METRICS_ALLOWED_IPS."""
    from main_app.middleware import address_in, client_ip

    token = settings.METRICS_BEARER_TOKEN
    if token:
        scheme, _, presented = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return True
    return address_in(client_ip(request), settings.METRICS_ALLOWED_IPS)


@never_cache
@require_GET
def metrics_view(request):
    if not enabled():
        return json_error(NotFound())
    if not may_scrape(request):
        return json_error(
            PermissionDenied("Metrics are served to METRICS_ALLOWED_IPS or with METRICS_BEARER_TOKEN.")
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


# Series that a scrape may show, for the checks of the alert rules and the dashboard.
SERIES = (
    "chargeghar_iot_messages_total",
    "chargeghar_iot_rejections_total",
    "chargeghar_iot_processing_seconds",
    "chargeghar_iot_message_lag_seconds",
    "chargeghar_iot_clock_skew_seconds",
    "chargeghar_admin_login_failures_total",
    "chargeghar_admin_login_lockouts_total",
    "chargeghar_database_unavailable_total",
    "chargeghar_http_server_errors_total",
    "chargeghar_database_up",
    "chargeghar_fleet_stations",
    "chargeghar_fleet_stations_silent",
    "chargeghar_fleet_power_banks_ready",
    "chargeghar_fleet_rentals",
    "chargeghar_iot_event_log_rows",
)

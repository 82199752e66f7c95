"""
Small builders for the sender's messages and a client that posts them as the sender does.

The messages, their bytes and their signatures are `iot_tools.wire`'s (docs/contract.md, section 2:
compact JSON, keys in the Java sender's order), with real serial formats by default.
"""

import itertools
import time
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import override_settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from api.stations.models import IoTEvent, IoTEventOutcome
from api.stations.views.internal_views import IOT_SYSTEM_GROUP, PUSH_STATION_DATA
from iot_tools import wire
from iot_tools.wire import DATA_PATH, SlotState, full_message, iso_utc, returned_message, status_message
from iot_tools.wire import compact_json as compact

STATION_SERIAL = "864601069946994"
ENDPOINT = DATA_PATH
TEST_SECRET = "test-signing-secret-that-is-long-enough-0123456789"
SLOT_ERROR = ("0x04", "孔位异常：0X04")
SLOT_ERROR_MESSAGE = SLOT_ERROR[1]

_bank_serials = itertools.count(40818000)

# ISO 8601 UTC with milliseconds, as the sender writes times.
iso = iso_utc


def now_ts() -> int:
    return int(time.time())


def logged_event(**fields) -> IoTEvent:
    """An event-log row written directly, dated as failed where `event_log.settle` would date it."""
    failed = fields.get("outcome") == IoTEventOutcome.FAILED or (fields.get("http_status") or 0) >= 500
    if failed:
        fields.setdefault("failed_at", fields["received_at"])
    return IoTEvent.objects.create(**fields)


def bank_serial() -> str:
    return str(next(_bank_serials))


def full_payload(
    serial: str = STATION_SERIAL,
    *,
    banks: dict[int, tuple[str, int]] | None = None,
    total_slots: int = 4,
    timestamp: int | None = None,
    status: str = "ONLINE",
    last_heartbeat: datetime | None = None,
    errors: dict[int, tuple[str, str]] | None = None,
) -> dict:
    """
    A full sync of `total_slots` slots; `banks` maps slot number -> (bank serial, battery),
    `errors` slot number -> (error code, error message).
    """
    banks = banks or {}
    errors = errors or {}
    timestamp = timestamp if timestamp is not None else now_ts()
    slots = [
        SlotState(number, *banks.get(number, ("", 0)), error=errors.get(number))
        for number in range(1, total_slots + 1)
    ]
    return full_message(
        serial,
        slots,
        timestamp=timestamp,
        status=status,
        last_heartbeat=iso(last_heartbeat) if last_heartbeat else None,
    )


def with_faulty_first_slot(payload: dict) -> dict:
    """Slot 1 (holding a bank) in ERROR with the sender's Chinese error text; its bank in MAINTENANCE."""
    first = payload["slots"][0]
    faulty = full_message(
        payload["device"]["serial_number"],
        [SlotState(1, first["power_bank_serial"], first["battery_level"], error=SLOT_ERROR)],
        timestamp=payload["timestamp"],
    )
    payload["slots"][0] = faulty["slots"][0]
    payload["power_banks"][0] = faulty["power_banks"][0]
    return payload


def return_payload(
    bank_serial_: str,
    slot_number: int,
    serial: str = STATION_SERIAL,
    *,
    battery: int = 100,
    returned_at: datetime | None = None,
    timestamp: int | None = None,
) -> dict:
    timestamp = timestamp if timestamp is not None else now_ts()
    return returned_message(
        serial,
        bank_serial_,
        slot_number,
        battery=battery,
        timestamp=timestamp,
        returned_at=iso(returned_at) if returned_at else None,
    )


def status_payload(status: str, serial: str = STATION_SERIAL, *, timestamp: int | None = None) -> dict:
    return status_message(serial, status, timestamp=timestamp if timestamp is not None else now_ts())


def make_staff(email: str = "iot@chargeghar.test", password: str = "s3cret-pass-123", *, sender: bool = True, **extra):
    """
    A user, staff unless `is_staff=False`. A staff user is in the "IoT system" group, so it may
    push station data as the sender's account does, unless `sender=False`.
    """
    User = get_user_model()
    user = User.objects.create_user(
        username=email.split("@")[0],
        email=email,
        password=password,
        is_staff=extra.pop("is_staff", True),
        **extra,
    )
    if sender and user.is_staff:
        user.groups.add(iot_system_group())
    return user


def iot_system_group():
    """The group the stations migration creates (made again here: TransactionTestCase flushes it)."""
    app_label, codename = PUSH_STATION_DATA.split(".")
    group, _ = Group.objects.get_or_create(name=IOT_SYSTEM_GROUP)
    group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return group


def bearer_for(user) -> str:
    return f"Bearer {RefreshToken.for_user(user).access_token}"


# Signature verification on, with the test secret and no address rules: as in production.
SIGNED = override_settings(
    IOT_SIGNATURE_VERIFICATION=True,
    IOT_SYSTEM_SIGNATURE_SECRET=TEST_SECRET,
    IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS=[],
    IOT_SYSTEM_ALLOWED_IPS=[],
    IOT_TRUSTED_PROXIES=[],
)


class SenderClient:
    """Posts bodies as the Java sender does: bearer token, X-Timestamp, X-Signature."""

    def __init__(self, user, *, secret: str = TEST_SECRET, client: APIClient | None = None):
        self.client = client or APIClient()
        self.authorization = bearer_for(user)
        self.secret = secret

    def post(self, payload: dict | bytes, *, timestamp: int | None = None, sign: bool = True, **headers):
        body = payload if isinstance(payload, bytes) else compact(payload)
        timestamp = timestamp if timestamp is not None else now_ts()
        extra = {"HTTP_AUTHORIZATION": self.authorization}
        if sign:
            extra["HTTP_X_TIMESTAMP"] = str(timestamp)
            extra["HTTP_X_SIGNATURE"] = wire.sign(self.secret, body, timestamp)
        extra.update(headers)
        return self.client.generic(
            "POST", ENDPOINT, data=body, content_type=extra.pop("content_type", "application/json"), **extra
        )


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(tz=UTC) - timedelta(minutes=minutes)

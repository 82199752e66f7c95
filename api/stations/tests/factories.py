"""
Small builders for the sender's messages and a client that posts them as the sender does.

Payloads follow DESIGN section 2: compact JSON, keys in the Java sender's order, real
serial formats by default.
"""

import itertools
import json
import time
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from api.stations.services.utils.sign_chargeghar_main import SignChargeGharMain

STATION_SERIAL = "864601069946994"
ENDPOINT = "/api/internal/stations/data"
TEST_SECRET = "test-signing-secret-that-is-long-enough-0123456789"

_bank_serials = itertools.count(40818000)


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds, as the sender writes it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ts() -> int:
    return int(time.time())


def bank_serial() -> str:
    return str(next(_bank_serials))


def slot(number: int, bank: str | None = None, battery: int = 0, status: str | None = None, **extra):
    entry = {
        "slot_number": number,
        "status": status or ("OCCUPIED" if bank else "AVAILABLE"),
        "battery_level": battery if bank else 0,
    }
    if bank:
        entry["power_bank_serial"] = bank
    entry["slot_metadata"] = extra.pop(
        "slot_metadata", {"micro_switch": "0", "solenoid_valve": "0", "lock_count": 0}
    )
    entry.update(extra)
    return entry


def bank(serial: str, slot_number: int | None, battery: int = 100, status: str = "AVAILABLE", **extra):
    entry = {
        "serial_number": serial,
        "status": status,
        "battery_level": battery,
        "current_slot": slot_number,
        "hardware_info": {"temperature": 23, "voltage": 50, "current": 0, "area_code": 73},
    }
    entry.update(extra)
    return entry


def full_payload(
    serial: str = STATION_SERIAL,
    *,
    banks: dict[int, tuple[str, int]] | None = None,
    total_slots: int = 4,
    timestamp: int | None = None,
    status: str = "ONLINE",
    last_heartbeat: datetime | None = None,
) -> dict:
    """A full sync of `total_slots` slots; `banks` maps slot number -> (bank serial, battery)."""
    banks = banks or {}
    timestamp = timestamp if timestamp is not None else now_ts()
    heartbeat = last_heartbeat or datetime.fromtimestamp(timestamp, tz=UTC)
    slots = [
        slot(n, *(banks[n] if n in banks else (None, 0))) for n in range(1, total_slots + 1)
    ]
    power_banks = [bank(serial_, n, battery) for n, (serial_, battery) in sorted(banks.items())]
    return {
        "type": "full",
        "timestamp": timestamp,
        "device": {
            "serial_number": serial,
            "imei": serial,
            "signal_strength": "31",
            "wifi_ssid": "",
            "last_heartbeat": iso(heartbeat),
            "status": status,
            "hardware_info": {"firmware_version": "2.1.5", "protocol_version": "0xA8"},
        },
        "station": {
            "serial_number": serial,
            "total_slots": total_slots,
            "pinboards": [{"index": 1, "io": 0, "temperature": 0, "soft_version": 4, "hard_version": 15}],
        },
        "slots": slots,
        "power_banks": power_banks,
    }


SLOT_ERROR_MESSAGE = "孔位异常：0X04"


def with_faulty_first_slot(payload: dict) -> dict:
    """Slot 1 in ERROR with the sender's Chinese error text; its bank in MAINTENANCE."""
    payload["slots"][0]["status"] = "ERROR"
    payload["slots"][0]["slot_metadata"] = {
        "micro_switch": "0",
        "solenoid_valve": "1",
        "lock_count": 0,
        "error_code": "0x04",
        "error_message": SLOT_ERROR_MESSAGE,
    }
    payload["power_banks"][0]["status"] = "MAINTENANCE"
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
    returned_at = returned_at or datetime.fromtimestamp(timestamp, tz=UTC)
    return {
        "type": "returned",
        "timestamp": timestamp,
        "device": {"serial_number": serial, "last_heartbeat": iso(returned_at)},
        "return_event": {
            "power_bank_serial": bank_serial_,
            "slot_number": slot_number,
            "battery_level": battery,
            "returned_at": iso(returned_at),
            "condition": "NORMAL",
            "hardware_info": {"temperature": 28, "voltage": 4800, "current": 0},
        },
    }


def status_payload(status: str, serial: str = STATION_SERIAL, *, timestamp: int | None = None) -> dict:
    return {
        "type": "status",
        "timestamp": timestamp if timestamp is not None else now_ts(),
        "device": {"serial_number": serial, "status": status},
    }


def compact(payload: dict) -> bytes:
    """The body as the Java sender writes it: no spaces, raw UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_staff(email: str = "iot@chargeghar.test", password: str = "s3cret-pass-123", **extra):
    User = get_user_model()
    return User.objects.create_user(
        username=email.split("@")[0],
        email=email,
        password=password,
        is_staff=extra.pop("is_staff", True),
        **extra,
    )


def bearer_for(user) -> str:
    return f"Bearer {RefreshToken.for_user(user).access_token}"


class SenderClient:
    """Posts bodies as the Java sender does: bearer token, X-Timestamp, X-Signature."""

    def __init__(self, user, *, secret: str = TEST_SECRET, client: APIClient | None = None):
        self.client = client or APIClient()
        self.authorization = bearer_for(user)
        self.signer = SignChargeGharMain(secret_key=secret)

    def post(self, payload: dict | bytes, *, timestamp: int | None = None, sign: bool = True, **headers):
        body = payload if isinstance(payload, bytes) else compact(payload)
        timestamp = timestamp if timestamp is not None else now_ts()
        extra = {"HTTP_AUTHORIZATION": self.authorization}
        if sign:
            extra["HTTP_X_TIMESTAMP"] = str(timestamp)
            extra["HTTP_X_SIGNATURE"] = self.signer.generate_signature(body, timestamp)
        extra.update(headers)
        return self.client.generic(
            "POST", ENDPOINT, data=body, content_type=extra.pop("content_type", "application/json"), **extra
        )


def minutes_ago(minutes: float) -> datetime:
    return datetime.now(tz=UTC) - timedelta(minutes=minutes)

"""
The station messages as the Java IoT management system puts them on the wire (docs/contract.md,
sections 1 and 2): the body bytes, the signature, the headers and the three message types.

Everything that sends or checks a station message uses this module: the server's signature
check, the reference sender and the fleet simulator, the tests' factories and the bench. The
tests keep an oracle of their own (the standard library written out once, the vectors in
contrib/signature_vectors/ and, where a JDK is installed, the JDK's own calls), so a drift
here is caught rather than shared.

Standard library only: the server, the tools and a benchmark run in another project's
virtualenv all import it.
"""

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

DATA_PATH = "/api/internal/stations/data"


def compact_json(payload: Any) -> bytes:
    """The body as the Java sender writes it: no spaces, keys in the given order, raw UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def sign(secret: str | bytes, body: str | bytes, timestamp: int) -> str:
    """
    X-Signature: standard Base64 (with padding, 44 characters) of HMAC-SHA256 keyed with the
    secret as UTF-8 over the body bytes followed by the decimal timestamp, no separator.
    A str body is taken as its UTF-8 bytes.
    """
    message = _utf8(body) + str(timestamp).encode("ascii")
    return base64.b64encode(hmac.new(_utf8(secret), message, hashlib.sha256).digest()).decode("ascii")


def signed_headers(
    secret: str | bytes, body: bytes, timestamp: int, *, authorization: str | None = None
) -> dict[str, str]:
    """The headers the sender posts `body` with; `authorization` is the whole header value."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    headers["X-Timestamp"] = str(timestamp)
    headers["X-Signature"] = sign(secret, body, timestamp)
    return headers


def iso_utc(moment: float | datetime) -> str:
    """
    ISO 8601 UTC with milliseconds, as the sender writes times; a zero fraction is left out,
    as Java's `Instant.toString()` does.
    """
    value = moment.astimezone(UTC) if isinstance(moment, datetime) else datetime.fromtimestamp(moment, tz=UTC)
    millis = value.microsecond // 1000
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


# --- Messages, keys in the Java sender's order ----------------------------------------------


class SlotState(NamedTuple):
    """
    What a cabinet reports about one slot in a full sync: the bank in it ("" for none) with
    its level and temperature, and a fault as (error code, error message). A faulty slot is
    ERROR and its bank MAINTENANCE, as cabinets report them. (A named tuple: the bench
    builds thousands a second next to the server it measures.)
    """

    number: int
    bank: str = ""
    battery: int = 0
    temperature: int = 23
    error: tuple[str, str] | None = None
    lock_count: int = 0


def full_message(
    serial: str,
    slots: Iterable[SlotState],
    *,
    timestamp: int,
    total_slots: int | None = None,
    status: str = "ONLINE",
    signal_strength: int | str = 31,
    last_heartbeat: str | None = None,
    slots_updated_at: str | None = None,
    pinboards: int = 1,
) -> dict:
    """
    A `full` sync of `serial` (its IMEI too). `total_slots` is what the station claims
    (default: the number of slots given); `last_heartbeat` defaults to the timestamp's time;
    `slots_updated_at`, when given, is each slot's `last_updated`, which real cabinets send.
    """
    slots = list(slots)
    slot_entries, bank_entries = [], []
    for slot in slots:
        metadata = {
            "micro_switch": "0",
            "solenoid_valve": "1" if slot.error else "0",
            "lock_count": slot.lock_count,
        }
        if slots_updated_at is not None:
            metadata["last_updated"] = slots_updated_at
        if slot.error:
            metadata["error_code"], metadata["error_message"] = slot.error
        slot_entries.append(
            {
                "slot_number": slot.number,
                "status": "ERROR" if slot.error else ("OCCUPIED" if slot.bank else "AVAILABLE"),
                "battery_level": slot.battery if slot.bank else 0,
                "power_bank_serial": slot.bank,
                "slot_metadata": metadata,
            }
        )
        if slot.bank:
            bank_entries.append(
                {
                    "serial_number": slot.bank,
                    "status": "MAINTENANCE" if slot.error else "AVAILABLE",
                    "battery_level": slot.battery,
                    "current_slot": slot.number,
                    "hardware_info": {
                        "temperature": slot.temperature,
                        "voltage": 50,
                        "current": 2 if slot.battery < 100 else 0,  # charging until full
                        "area_code": 73,
                    },
                }
            )
    return {
        "type": "full",
        "timestamp": timestamp,
        "device": {
            "serial_number": serial,
            "imei": serial,
            "signal_strength": str(signal_strength),
            "wifi_ssid": "",
            "last_heartbeat": last_heartbeat if last_heartbeat is not None else iso_utc(timestamp),
            "status": status,
            "hardware_info": {"firmware_version": "2.1.5", "protocol_version": "0xA8"},
        },
        "station": {
            "serial_number": serial,
            "total_slots": len(slots) if total_slots is None else total_slots,
            "pinboards": [
                {"index": board, "io": 0, "temperature": 0, "soft_version": 4, "hard_version": 15}
                for board in range(1, pinboards + 1)
            ],
        },
        "slots": slot_entries,
        "power_banks": bank_entries,
    }


def returned_message(
    serial: str,
    bank: str,
    slot_number: int,
    *,
    battery: int,
    timestamp: int,
    returned_at: str | None = None,
    temperature: int = 28,
) -> dict:
    """A `returned` event: `bank` was pushed into `slot_number` of `serial` at `returned_at`
    (default: the timestamp's time), which is also the device's heartbeat."""
    stamp = returned_at if returned_at is not None else iso_utc(timestamp)
    return {
        "type": "returned",
        "timestamp": timestamp,
        "device": {"serial_number": serial, "last_heartbeat": stamp},
        "return_event": {
            "power_bank_serial": bank,
            "slot_number": slot_number,
            "battery_level": battery,
            "returned_at": stamp,
            "condition": "NORMAL",
            "hardware_info": {"temperature": temperature, "voltage": 4800, "current": 0},
        },
    }


def status_message(serial: str, status: str, *, timestamp: int) -> dict:
    """A `status` change (ONLINE, OFFLINE, ...) of `serial`."""
    return {
        "type": "status",
        "timestamp": timestamp,
        "device": {"serial_number": serial, "status": status},
    }

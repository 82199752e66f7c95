"""
OpenAPI description of the station data endpoint (served at /api/schema/).

The request schema is generated from the same pydantic models that validate the messages,
so the documentation cannot drift from the validation. The examples are the real sender's
formats (docs/contract.md, section 2); a test posts each of them to the endpoint.
"""

from typing import Annotated, Literal

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from pydantic import BaseModel, Field, RootModel

from api.stations.services.schemas import FullSyncMessage, ReturnMessage, StatusMessage
from main_app.exceptions import (
    ApiError,
    InvalidContentType,
    InvalidJson,
    InvalidSignature,
    InvalidTimestamp,
    InvalidType,
    IpNotAllowed,
    MissingHeaders,
    NotAuthenticated,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    ValidationFailed,
)
from main_app.openapi import error_response


class StationMessage(RootModel):
    """One of the three message types, told apart by `type`."""

    root: Annotated[FullSyncMessage | ReturnMessage | StatusMessage, Field(discriminator="type")]


class FullSyncData(BaseModel):
    station_id: str
    station_serial: str
    slots_updated: int
    powerbanks_updated: int
    offline_returns_processed: int = Field(description="Rentals closed because the bank was seen back in a slot.")
    offline_returns: list[str] = Field(description="Codes of those rentals.")
    detached_power_banks: list[str] = Field(description="Banks linked to this station but absent from the snapshot.")
    applied: bool = Field(description="False when the snapshot was older than the state already applied.")
    timestamp: str


class Charges(BaseModel):
    base_amount: str
    overdue_amount: str
    total: str


class ReturnData(BaseModel):
    rental_id: str | None
    rental_code: str | None
    rental_status: str | None
    returned_on_time: bool | None
    charges: Charges | None
    payment_status: str | None
    power_bank_status: str
    station_serial: str
    slot_number: int
    predates_open_rental: bool = Field(
        description="True when the return is dated before the bank's open rental started (by more than the "
        "signature tolerance): it is an earlier rental's, and nothing was closed, charged or moved."
    )


class StatusData(BaseModel):
    station_id: str
    serial_number: str
    status: str
    status_changed: bool
    last_heartbeat: str | None
    applied: bool


class StationDataResponse(BaseModel):
    """Success envelope; `data` depends on the message type."""

    success: Literal[True]
    message: str
    data: FullSyncData | ReturnData | StatusData


FULL_EXAMPLE = {
    "type": "full",
    "timestamp": 1762905971,
    "device": {
        "serial_number": "864601069946994",
        "imei": "864601069946994",
        "signal_strength": "31",
        "wifi_ssid": "",
        "last_heartbeat": "2025-11-12T00:06:11.126Z",
        "status": "ONLINE",
        "hardware_info": {"firmware_version": "2.1.5", "protocol_version": "0xA8"},
    },
    "station": {
        "serial_number": "864601069946994",
        "total_slots": 2,
        "pinboards": [{"index": 1, "io": 0, "temperature": 0, "soft_version": 4, "hard_version": 15}],
    },
    "slots": [
        {
            "slot_number": 1,
            "status": "ERROR",
            "battery_level": 40,
            "power_bank_serial": "40818048",
            "slot_metadata": {
                "micro_switch": "0",
                "solenoid_valve": "1",
                "lock_count": 0,
                "last_updated": "2025-11-12T00:06:11.126Z",
                "error_code": "0x04",
                "error_message": "孔位异常：0X04",
            },
        },
        {
            "slot_number": 2,
            "status": "OCCUPIED",
            "battery_level": 100,
            "power_bank_serial": "40818052",
            "slot_metadata": {
                "micro_switch": "0",
                "solenoid_valve": "0",
                "lock_count": 0,
                "last_updated": "2025-11-12T00:06:11.126Z",
            },
        },
    ],
    "power_banks": [
        {
            "serial_number": "40818048",
            "status": "MAINTENANCE",
            "battery_level": 40,
            "current_slot": 1,
            "hardware_info": {"temperature": 22, "voltage": 50, "current": 2, "area_code": 73},
        },
        {
            "serial_number": "40818052",
            "status": "AVAILABLE",
            "battery_level": 100,
            "current_slot": 2,
            "hardware_info": {"temperature": 23, "voltage": 50, "current": 0, "area_code": 73},
        },
    ],
}

RETURNED_EXAMPLE = {
    "type": "returned",
    "timestamp": 1762906000,
    "device": {"serial_number": "864601069946994", "last_heartbeat": "2025-11-12T00:06:40.512Z"},
    "return_event": {
        "power_bank_serial": "40818052",
        "slot_number": 2,
        "battery_level": 100,
        "returned_at": "2025-11-12T00:06:40.512Z",
        "condition": "NORMAL",
        "hardware_info": {"temperature": 28, "voltage": 4800, "current": 0},
    },
}

STATUS_EXAMPLE = {
    "type": "status",
    "timestamp": 1762906100,
    "device": {"serial_number": "864601069946994", "status": "OFFLINE"},
}

REQUEST_EXAMPLES = [
    OpenApiExample("full", value=FULL_EXAMPLE, request_only=True,
                   summary="Full sync: every device upload, about every 20 minutes"),
    OpenApiExample("returned", value=RETURNED_EXAMPLE, request_only=True,
                   summary="A power bank was pushed into a slot"),
    OpenApiExample("status", value=STATUS_EXAMPLE, request_only=True,
                   summary="The cabinet's connection went ONLINE or OFFLINE"),
]


STATION_DATA_RESPONSES = {
    200: OpenApiResponse(
        response=StationDataResponse,
        description=(
            "Processed; also a repeat of a body already processed (the original answer), "
            "and an out-of-date full or status message that was recorded but not applied "
            "(`data.applied` false). Only 200 counts as success for the sender."
        ),
    ),
    400: error_response(
        f"{InvalidTimestamp.code}, {InvalidContentType.code}, {InvalidJson.code}, {InvalidType.code} or "
        f"{ValidationFailed.code} (with `errors` naming each field).",
        ValidationFailed,
        "Invalid 'full' message: slots.0.battery_level.",
    ),
    401: error_response(
        "Bearer token missing, malformed or expired (with `WWW-Authenticate: Bearer`): log in again.",
        NotAuthenticated,
    ),
    403: error_response(
        f"{IpNotAllowed.code}, {MissingHeaders.code}, {InvalidSignature.code} (also for a timestamp outside the "
        f"tolerance, either way) or {PermissionDenied.code} (a token of an account without the push permission).",
        InvalidSignature,
        "Signature validation failed: Signature mismatch",
    ),
    413: error_response("The body is larger than the limit (1 MiB by default).", PayloadTooLarge,
                "The request body is larger than 1048576 bytes."),
    500: error_response("Unexpected; the message names the event to look up.", ApiError,
                "Unexpected error; the event log has the details under event 42."),
    503: error_response("The database is unreachable; retry after `Retry-After` seconds.", ServiceUnavailable),
}

SIGNATURE_HEADERS = [
    OpenApiParameter(
        "X-Timestamp", str, OpenApiParameter.HEADER, required=True,
        description="Unix time in seconds, a plain integer; within 300 s of the server's clock.",
    ),
    OpenApiParameter(
        "X-Signature", str, OpenApiParameter.HEADER, required=True,
        description=(
            "base64(HMAC-SHA256(key = shared secret as UTF-8, message = raw body bytes followed "
            "by the decimal X-Timestamp)); standard Base64 with padding (44 characters)."
        ),
    ),
]

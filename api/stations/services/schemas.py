"""
Schemas of the three messages the IoT system sends (docs/contract.md, section 2).

pydantic (its validation core is compiled) checks types, ranges, formats and list sizes;
the model validators add the cross-field rules: no slot twice, no bank in two slots, and
`slots` agreeing with `power_banks`. Unknown extra keys are accepted and kept.
"""

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from api.stations.models import PowerBankStatus, SlotStatus, StationStatus
from main_app.exceptions import InvalidType, ValidationFailed

MAX_SLOTS = 48

# Letters, digits, '-' and '_', 1-64 characters: real IMEIs and bank serials, and the
# shorter test serials (TEST12345, PB12345), but no whitespace or control characters.
Serial = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$", strict=True)]
SlotNumber = Annotated[StrictInt, Field(ge=1, le=MAX_SLOTS)]
BatteryLevel = Annotated[StrictInt, Field(ge=0, le=100)]
# Unix seconds between 2001 and 2286; anything else is a unit or type mistake.
UnixSeconds = Annotated[StrictInt, Field(ge=1_000_000_000, le=9_999_999_999)]
ShortText = Annotated[str, StringConstraints(max_length=64)]


def _aware(value: datetime | None) -> datetime | None:
    """The time in UTC (a naive one is taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        # PostgreSQL refuses offsets past ±15:59, which ISO 8601 allows (up to ±23:59).
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+00:01 is before year 1 in UTC: SQLite cannot store it and
        # PostgreSQL stores 1 BC, then fails to read the row back.
        raise ValueError("Time is outside the range of UTC dates (years 1-9999).") from None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    timestamp: UnixSeconds

    @property
    def sent_at(self) -> datetime:
        """When the sender built the message: the order of device state (docs/design.md, rule 3)."""
        return datetime.fromtimestamp(self.timestamp, tz=UTC)


class _OrderedMessage(_Message):
    """
    A `full` or `status` message: its timestamp becomes the station's ordering key, so it
    must not be ahead of our clock by more than a signature's timestamp may be. Accepted,
    a timestamp from a cabinet whose clock runs days ahead would make every genuine message
    after it stale until that day (docs/design.md, ordering).
    """

    @field_validator("timestamp")
    @classmethod
    def _not_in_the_future(cls, value: int) -> int:
        tolerance = settings.IOT_SIGNATURE_TOLERANCE_SECONDS
        ahead = value - int(time.time())
        if ahead > tolerance:
            raise ValueError(
                f"The timestamp is {ahead} s in the future by our clock; at most {tolerance} s "
                "is accepted. Check the clock of the device or sender."
            )
        return value


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class FullDevice(_Part):
    serial_number: Serial
    imei: Serial | None = None
    # Stored as text in a 16-character column: an integer has to fit it as well.
    signal_strength: (
        Annotated[str, StringConstraints(max_length=16)]
        | Annotated[StrictInt, Field(ge=-(10**15) + 1, le=10**16 - 1)]
        | None
    ) = None
    wifi_ssid: ShortText | None = None
    last_heartbeat: datetime | None = None
    status: StationStatus | None = None
    hardware_info: dict[str, Any] = Field(default_factory=dict)

    _aware_heartbeat = field_validator("last_heartbeat")(_aware)


class FullStation(_Part):
    serial_number: Serial | None = None
    total_slots: Annotated[StrictInt, Field(ge=0, le=MAX_SLOTS)] | None = None


class SlotReport(_Part):
    slot_number: SlotNumber
    status: SlotStatus = SlotStatus.AVAILABLE
    battery_level: BatteryLevel = 0
    power_bank_serial: Serial | None = None
    slot_metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("power_bank_serial", mode="before")
    @classmethod
    def _empty_serial_is_none(cls, value):
        # Empty slots come as "" or null depending on the firmware.
        return None if value == "" else value


class PowerBankReport(_Part):
    serial_number: Serial
    status: PowerBankStatus = PowerBankStatus.AVAILABLE
    battery_level: BatteryLevel = 0
    current_slot: SlotNumber | None = None
    hardware_info: dict[str, Any] = Field(default_factory=dict)


class FullSyncMessage(_OrderedMessage):
    type: Literal["full"]
    device: FullDevice
    station: FullStation = Field(default_factory=FullStation)
    slots: Annotated[list[SlotReport], Field(max_length=MAX_SLOTS)] = Field(default_factory=list)
    power_banks: Annotated[list[PowerBankReport], Field(max_length=MAX_SLOTS)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _slots_and_banks_agree(self):
        errors: dict[str, list[str]] = {}

        def add(field, message):
            errors.setdefault(field, []).append(message)

        seen_slots: dict[int, int] = {}
        bank_in_slot: dict[str, int] = {}
        for index, slot in enumerate(self.slots):
            if slot.slot_number in seen_slots:
                add(f"slots.{index}.slot_number", f"Slot {slot.slot_number} is listed twice.")
            seen_slots[slot.slot_number] = index
            serial = slot.power_bank_serial
            if serial is not None:
                if serial in bank_in_slot:
                    add(
                        f"slots.{index}.power_bank_serial",
                        f"Power bank {serial} is in slots {bank_in_slot[serial]} and "
                        f"{slot.slot_number}.",
                    )
                bank_in_slot[serial] = slot.slot_number

        seen_banks: set[str] = set()
        slot_taken_by: dict[int, str] = {}
        slot_by_number = {slot.slot_number: slot for slot in self.slots}
        for index, bank in enumerate(self.power_banks):
            if bank.serial_number in seen_banks:
                add(
                    f"power_banks.{index}.serial_number",
                    f"Power bank {bank.serial_number} is listed twice.",
                )
            seen_banks.add(bank.serial_number)
            if bank.current_slot is None:
                if bank.serial_number in bank_in_slot:
                    add(
                        f"power_banks.{index}.current_slot",
                        f"Power bank {bank.serial_number} has no slot here but slot "
                        f"{bank_in_slot[bank.serial_number]} lists it.",
                    )
                continue
            other = slot_taken_by.get(bank.current_slot)
            if other is not None and other != bank.serial_number:
                add(
                    f"power_banks.{index}.current_slot",
                    f"Slot {bank.current_slot} is claimed by power banks {other} and "
                    f"{bank.serial_number}.",
                )
            slot_taken_by[bank.current_slot] = bank.serial_number
            listed_slot = bank_in_slot.get(bank.serial_number)
            if listed_slot is not None and listed_slot != bank.current_slot:
                add(
                    f"power_banks.{index}.current_slot",
                    f"Power bank {bank.serial_number} is in slot {bank.current_slot} here but "
                    f"slot {listed_slot} lists it.",
                )
            slot = slot_by_number.get(bank.current_slot)
            if slot is not None and slot.power_bank_serial not in (None, bank.serial_number):
                add(
                    f"power_banks.{index}.current_slot",
                    f"Slot {bank.current_slot} lists power bank {slot.power_bank_serial}, not "
                    f"{bank.serial_number}.",
                )

        for index, slot in enumerate(self.slots):
            if (
                slot.status == SlotStatus.OCCUPIED
                and slot.power_bank_serial is None
                and slot.slot_number not in slot_taken_by
            ):
                add(
                    f"slots.{index}.status",
                    f"Slot {slot.slot_number} is OCCUPIED but no power bank is reported in it.",
                )
        if errors:
            raise CrossFieldErrors(errors)
        return self


class ReturnDevice(_Part):
    serial_number: Serial
    last_heartbeat: datetime | None = None

    _aware_heartbeat = field_validator("last_heartbeat")(_aware)


class ReturnEvent(_Part):
    power_bank_serial: Serial
    slot_number: SlotNumber
    battery_level: BatteryLevel = 0
    returned_at: datetime | None = None
    condition: ShortText | None = None
    hardware_info: dict[str, Any] = Field(default_factory=dict)

    _aware_returned_at = field_validator("returned_at")(_aware)


class ReturnMessage(_Message):
    type: Literal["returned"]
    device: ReturnDevice
    return_event: ReturnEvent


class StatusDevice(_Part):
    serial_number: Serial
    status: StationStatus


class StatusMessage(_OrderedMessage):
    type: Literal["status"]
    device: StatusDevice


MESSAGE_TYPES: dict[str, type[_Message]] = {
    "full": FullSyncMessage,
    "returned": ReturnMessage,
    "status": StatusMessage,
}


class CrossFieldErrors(ValueError):
    """Raised inside a model validator to report several fields at once."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("cross-field validation failed")
        self.errors = errors


def _field_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "non_field_errors"


def parse_message(data: Any) -> _Message:
    """
    Validate a decoded body and return the typed message.

    Raises `InvalidType` for a missing or unknown `type` and `ValidationFailed` (with
    `errors` naming each field) for anything else wrong.
    """
    message_type = data.get("type") if isinstance(data, dict) else None
    schema = MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if schema is None:
        raise InvalidType(
            "Unknown message type; expected one of: " + ", ".join(MESSAGE_TYPES) + "."
        )
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for error in exc.errors(include_url=False, include_input=False):
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, CrossFieldErrors):
                for field, messages in cause.errors.items():
                    errors.setdefault(field, []).extend(messages)
                continue
            errors.setdefault(_field_name(error["loc"]), []).append(error["msg"])
        raise ValidationFailed(
            f"Invalid '{message_type}' message: " + ", ".join(sorted(errors)) + ".",
            errors=errors,
        ) from None

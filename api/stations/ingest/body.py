"""
Decoding a delivered body, hardened against what JSON allows and the database cannot store.

The body is decoded once, here, from the raw bytes that were signed. What comes out is
either the decoded value or the sentence the sender will read in an INVALID_JSON answer;
nothing is raised, because an undecodable body is still logged before it is refused.
"""

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

# Real messages nest 4 deep. Far deeper bodies can still be decoded, then exhaust Python's
# recursion limit when the log row's JSON is encoded: refuse them up front instead.
MAX_NESTING = 32

# Escapes that JSON allows but text columns do not store: NUL, and surrogate halves.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
# orjson reads an integer beyond 64 bits as a float, which would change the value; the
# standard library keeps it exact. Such an integer has 19 digits or more, so a body with a
# run of 19 digits anywhere (a string's too) takes the standard library's way. Found by
# turning every digit into 0 and searching for nineteen: a regular expression for it cost
# more than the decoding it guards.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19


@dataclass(frozen=True, slots=True)
class Body:
    """A delivered body: its bytes, and the decoded value or why it could not be decoded."""

    raw: bytes
    data: Any = None
    error: str | None = None

    @property
    def message_type(self) -> str:
        """The `type` the body claims, for the log (best effort, length-capped)."""
        value = self.data.get("type") if isinstance(self.data, dict) else None
        return value[:16] if isinstance(value, str) else ""

    @property
    def station_serial(self) -> str:
        """The device serial the body claims, for the log (best effort, length-capped)."""
        device = self.data.get("device") if isinstance(self.data, dict) else None
        value = device.get("serial_number") if isinstance(device, dict) else None
        return value[:64] if isinstance(value, str) else ""


def decode(raw: bytes) -> Body:
    # Nearly every body is plain JSON: orjson (compiled) decodes it several times faster
    # than the standard library, to the same value. Whatever it refuses, and whatever it
    # would read differently (long integers, the escapes checked below), goes the standard
    # library's way, which also words the sender's error.
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_AS_ZEROS) and not _UNSTORABLE_ESCAPE.search(raw):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if _nested_deeper_than(data, MAX_NESTING):
                return Body(raw, error="The body is nested too deeply.")
            return Body(raw, data=data)
    return _decode_exactly(raw)


def _decode_exactly(raw: bytes) -> Body:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Body(raw, error="The body is not valid UTF-8.")
    if "\x00" in text:
        return Body(raw, error="The body contains a NUL character.")
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return Body(raw, error="The body is not valid JSON.")
    if _nested_deeper_than(data, MAX_NESTING):
        return Body(raw, error="The body is nested too deeply.")
    if _UNSTORABLE_ESCAPE.search(raw):
        # Rare: only pay for the full check when such an escape is present at all.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return Body(raw, error="The body contains an unpaired surrogate escape.")
        if "\\u0000" in text.replace("\\\\", ""):
            return Body(raw, error="The body contains a NUL character.")
    return Body(raw, data=data)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # Python reads 1e999 as infinity, which neither jsonb nor SQLite's JSON check stores.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# A decoder makes plain dicts and lists only, so their exact types are what to look for
# (a set lookup of the type is twice as fast as isinstance here, on every value of the body).
_CONTAINERS = frozenset((dict, list))


def _nested_deeper_than(data: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (iterative, no recursion)."""
    level = [data] if type(data) in _CONTAINERS else []
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return True

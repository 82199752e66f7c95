"""
Hypothesis strategies for hostile input to the station data endpoint.

Three families of bodies (valid messages with mutations, arbitrary JSON, arbitrary bytes)
and the headers a sender, a proxy or an attacker could put in front of them. Everything
that names a station or a bank draws from the small fixture of `test_hostile_input`, so
that a mutated message often hits rows that exist, and a valid one changes real state.
"""

import base64
import copy
import json
import string
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from api.stations.tests.factories import (
    compact,
    full_payload,
    iso,
    now_ts,
    return_payload,
    status_payload,
)

# --- The fixture the strategies aim at -------------------------------------------------

EXISTING_SERIAL = "864601069946000"
NEW_SERIAL = "864601069946994"
SEED_SERIAL = "TEST12345"
STATION_SERIALS = (EXISTING_SERIAL, NEW_SERIAL, SEED_SERIAL)
# Two banks in slots 1 and 2 of the existing station, one in a customer's hands, then
# banks nobody has seen yet (the seed's short serial among them).
PLACED_BANKS = ("40818001", "40818002")
RENTED_BANK = "40818003"
BANK_SERIALS = (*PLACED_BANKS, RENTED_BANK, "40818004", "PB12345")

# --- Scalars ---------------------------------------------------------------------------

# Strings a parser, a database or a log has tripped over somewhere.
NASTY_STRINGS = (
    "",
    " ",
    "\t",
    "\r\n",
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\u202etxt.exe",
    "\ufeff",
    "\ud800",  # a lone surrogate: only expressible as a \\ud800 escape
    "\udfff",
    "孔位异常：0X04",
    "🔋⚡🪫",
    "８６４６０１０６９９４６９９４",  # full-width digits
    "٨٦٤٦٠١",  # Arabic-Indic digits
    "NaN",
    "Infinity",
    "null",
    "true",
    "0x10",
    "1e9",
    "-1",
    "+1",
    "١٢٣",
    "40818048 ",
    " 864601069946994",
    "864601069946994\n",
    "A" * 64,
    "A" * 65,
    "x" * 10_000,
    "online",
    "ONLINE ",
    "Online",
    "FULL",
    "returned ",
    "'; DROP TABLE stations_station; --",
    "${jndi:ldap://example.invalid/a}",
    "{{7*7}}",
    "%s%s%n",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:45",
    "1970-01-01T00:00:00Z",
    "2025-13-45T99:99:99Z",
    "2025-11-12T00:06:11.126Z",
    "2025-11-12 00:06:11",
    "2025-11-12T00:06:11.126+14:00",
    "2025-11-12T00:06:11.126-23:59",
    "1762905971",
    "1762905971000",
)

NASTY_NUMBERS = (
    0,
    -1,
    1,
    47,
    48,
    49,
    100,
    101,
    255,
    256,
    32_767,
    32_768,
    65_535,
    65_536,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**30,
    -(10**30),
    999_999_999,
    1_000_000_000,
    9_999_999_999,
    10_000_000_000,
    1_762_905_971_000,
    0.0,
    -0.0,
    0.5,
    1.0,
    100.0,
    1e308,
    -1e308,
    5e-324,
    1.5e10,
)

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    st.sampled_from(NASTY_STRINGS),
    # Long strings: column widths are 16, 32, 64 and 255 characters.
    st.integers(min_value=15, max_value=300).map(lambda n: "9" * n),
    st.integers(min_value=15, max_value=300).map(lambda n: "é" * n),
)

# Offsets up to a minute short of a day either way, on dates at both ends of the calendar.
aware_datetimes = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
# The first and last moments of the calendar, where an offset pushes UTC out of range.
edge_datetimes = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.sampled_from((datetime(1, 1, 1), datetime(1, 1, 1, 5, 44), datetime(9999, 12, 31, 23, 59, 59))),
    st.sampled_from((0, 1, -1, 345, -720, 840, 24 * 60 - 1, -(24 * 60 - 1))),
)
datetime_strings = st.one_of(
    edge_datetimes.map(lambda moment: moment.isoformat()),
    aware_datetimes.map(lambda moment: moment.isoformat()),
    aware_datetimes.map(lambda moment: moment.isoformat(timespec="milliseconds")),
    st.datetimes().map(lambda moment: moment.isoformat()),  # naive: taken as UTC
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(NASTY_NUMBERS),
    # NaN and Infinity serialize to tokens that are not JSON; the endpoint must say so.
    st.floats(),
    hostile_text,
    datetime_strings,
)


def _json_containers(children):
    keys = st.one_of(st.text(max_size=12), st.sampled_from(KNOWN_KEYS))
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    )


KNOWN_KEYS = (
    "type",
    "timestamp",
    "device",
    "station",
    "slots",
    "power_banks",
    "return_event",
    "serial_number",
    "imei",
    "status",
    "slot_number",
    "power_bank_serial",
    "battery_level",
    "current_slot",
    "returned_at",
    "last_heartbeat",
    "hardware_info",
    "slot_metadata",
    "total_slots",
    "signal_strength",
    "wifi_ssid",
    "condition",
)

json_values = st.recursive(json_scalars, _json_containers, max_leaves=25)

# --- Valid messages ----------------------------------------------------------------------


@st.composite
def valid_payloads(draw) -> dict:
    """A well-formed full, returned or status message about the fixture's hardware."""
    kind = draw(st.sampled_from(("full", "returned", "status")))
    serial = draw(st.sampled_from(STATION_SERIALS))
    # Body timestamps: mostly recent, sometimes older than what the station already has.
    timestamp = now_ts() - draw(st.sampled_from((0, 5, 60, 3600, 86_400 * 30)))
    if kind == "status":
        status = draw(st.sampled_from(("ONLINE", "OFFLINE", "MAINTENANCE")))
        return status_payload(status, serial, timestamp=timestamp)
    if kind == "returned":
        returned_at = datetime.fromtimestamp(timestamp, tz=UTC) - timedelta(
            seconds=draw(st.integers(min_value=0, max_value=7200))
        )
        return return_payload(
            draw(st.sampled_from(BANK_SERIALS)),
            draw(st.integers(min_value=1, max_value=6)),
            serial,
            battery=draw(st.integers(min_value=0, max_value=100)),
            returned_at=returned_at,
            timestamp=timestamp,
        )
    total_slots = draw(st.integers(min_value=1, max_value=6))
    placements = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=total_slots),
                st.sampled_from(BANK_SERIALS),
                st.integers(min_value=0, max_value=100),
            ),
            unique_by=(lambda p: p[0], lambda p: p[1]),
            max_size=total_slots,
        )
    )
    payload = full_payload(
        serial,
        banks={number: (bank, battery) for number, bank, battery in placements},
        total_slots=total_slots,
        timestamp=timestamp,
        status=draw(st.sampled_from(("ONLINE", "OFFLINE", "MAINTENANCE"))),
    )
    if draw(st.booleans()):
        # The real sender's slot metadata, Chinese error text included.
        payload["slots"][0]["slot_metadata"].update(
            last_updated=iso(datetime.fromtimestamp(timestamp, tz=UTC)),
            error_code="0x04",
            error_message="孔位异常：0X04",
        )
    return payload


# --- Mutations -----------------------------------------------------------------------------


def _paths(document, prefix=()):
    """Every location in a JSON document, the root included."""
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _paths(value, prefix + (index,))


def _get(document, path):
    for step in path:
        document = document[step]
    return document


def _parent(document, path):
    return _get(document, path[:-1])


NEAR_MISS_ENUMS = (
    "ONLINE",
    "OFFLINE",
    "MAINTENANCE",
    "AVAILABLE",
    "OCCUPIED",
    "ERROR",
    "RENTED",
    "DAMAGED",
    "online",
    "Available",
    "UNKNOWN",
    "ONLINE\x00",
    "full",
    "returned",
    "status",
    "FULL",
    "return",
    "heartbeat",
    "",
)

MUTATIONS = ("drop", "replace", "scalar", "number", "enum", "duplicate", "extra", "transplant")

# Optional fields that reach a column as they are, with values aimed at their type: a
# uniform pick among the ~80 locations of a message would seldom land on them.
_numbers = st.one_of(st.sampled_from(NASTY_NUMBERS), st.integers(), json_scalars)
_moments = st.one_of(edge_datetimes.map(lambda moment: moment.isoformat()), datetime_strings, json_scalars)
HOT_FIELDS = {
    "full": (
        (("device", "signal_strength"), _numbers),
        (("device", "last_heartbeat"), _moments),
        (("device", "wifi_ssid"), json_scalars),
        (("device", "imei"), json_scalars),
        (("device", "status"), st.sampled_from(NEAR_MISS_ENUMS)),
        (("device", "hardware_info", "firmware_version"), json_scalars),
        (("station", "total_slots"), _numbers),
        (("slots", 0, "battery_level"), _numbers),
        (("power_banks", 0, "current_slot"), _numbers),
    ),
    "returned": (
        (("device", "last_heartbeat"), _moments),
        (("return_event", "returned_at"), _moments),
        (("return_event", "battery_level"), _numbers),
        (("return_event", "condition"), json_scalars),
        (("return_event", "hardware_info"), json_values),
    ),
    "status": ((("device", "status"), st.sampled_from(NEAR_MISS_ENUMS)),),
}


def _settable(document, path) -> bool:
    """Whether `path` names a slot that can be assigned (earlier mutations may have changed the shape)."""
    try:
        parent = _parent(document, path)
    except (KeyError, IndexError, TypeError):
        return False
    if isinstance(parent, dict):
        return True
    return isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent)


@st.composite
def mutated_payloads(draw) -> object:
    """A valid message with one to five mutations applied anywhere in it."""
    document = copy.deepcopy(draw(valid_payloads()))
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        message_type = document.get("type") if isinstance(document, dict) else None
        hot = HOT_FIELDS.get(message_type) if isinstance(message_type, str) else None
        if hot and draw(st.booleans()):
            path, values = draw(st.sampled_from(hot))
            if _settable(document, path):
                _parent(document, path)[path[-1]] = draw(values)
            continue
        paths = list(_paths(document))
        path = draw(st.sampled_from(paths))
        mutation = draw(st.sampled_from(MUTATIONS))
        if mutation == "transplant":
            # A value from elsewhere in the message: a slot list as a device, and so on.
            value = copy.deepcopy(_get(document, draw(st.sampled_from(paths))))
        elif mutation in ("replace", "extra"):
            value = draw(json_values)
        elif mutation == "scalar":
            value = draw(json_scalars)
        elif mutation == "number":
            value = draw(st.one_of(st.sampled_from(NASTY_NUMBERS), st.integers()))
        elif mutation == "enum":
            value = draw(st.sampled_from(NEAR_MISS_ENUMS))
        else:
            value = None

        if not path:
            if mutation in ("replace", "scalar", "number", "enum"):
                document = value
            continue
        parent = _parent(document, path)
        key = path[-1]
        if mutation == "drop":
            del parent[key]
        elif mutation == "duplicate":
            target = parent[key]
            if isinstance(target, list) and target:
                target.append(copy.deepcopy(target[draw(st.integers(0, len(target) - 1))]))
            elif isinstance(parent, list):
                parent.append(copy.deepcopy(target))
        elif mutation == "extra":
            target = parent[key]
            if isinstance(target, dict):
                target[draw(st.one_of(st.text(max_size=10), st.sampled_from(KNOWN_KEYS)))] = value
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), value)
            else:
                parent[key] = value
        else:
            parent[key] = value
    return document


# --- Encoding ----------------------------------------------------------------------------


def encode(document, style: str = "compact") -> bytes:
    """
    The document as a body: compact raw UTF-8 like the Java sender, or ASCII-escaped,
    or indented. Lone surrogates can only travel as escapes, so they force ASCII.
    """
    if style == "compact":
        try:
            return compact(document)
        except UnicodeEncodeError:
            style = "ascii"
    if style == "ascii":
        return json.dumps(document, separators=(",", ":")).encode("ascii")
    return json.dumps(document, indent=2).encode("utf-8", "surrogatepass")


encodings = st.sampled_from(("compact", "compact", "ascii", "indented"))


@st.composite
def hostile_bytes(draw) -> bytes:
    """Bodies that are not JSON, not UTF-8, truncated, or JSON at the edges of the decoder."""
    valid = compact(draw(valid_payloads()))
    choice = draw(st.integers(min_value=0, max_value=9))
    if choice == 0:
        return draw(st.binary(max_size=300))
    if choice == 1:
        return valid[: draw(st.integers(min_value=0, max_value=len(valid) - 1))]
    if choice == 2:
        # Bytes spliced into a valid body: invalid UTF-8, NUL, stray quotes and braces.
        position = draw(st.integers(min_value=0, max_value=len(valid)))
        junk = draw(
            st.one_of(
                st.sampled_from(
                    (
                        b"\xff",
                        b"\xc3",
                        b"\xed\xa0\x80",
                        b"\xf4\x90\x80\x80",
                        b"\x00",
                        b'"',
                        b"}",
                        b"\\",
                        b"\\u",
                    )
                ),
                st.binary(min_size=1, max_size=8),
            )
        )
        return valid[:position] + junk + valid[position:]
    if choice == 3:
        return draw(st.sampled_from((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"))) + valid
    if choice == 4:
        return valid.decode("utf-8").encode(draw(st.sampled_from(("utf-16", "utf-32", "latin-1"))), "replace")
    if choice == 5:
        depth = draw(st.sampled_from((31, 32, 33, 500, 5000, 100_000)))
        opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"))))
        return b'{"type":"status","x":' + opener * depth + b"1" + closer * depth + b"}"
    if choice == 6:
        digits = draw(st.sampled_from((19, 20, 400, 4300, 4301, 50_000)))
        return b'{"type":"status","timestamp":' + b"1" * digits + b',"device":{}}'
    if choice == 7:
        token = draw(
            st.sampled_from(
                (
                    b"NaN",
                    b"Infinity",
                    b"-Infinity",
                    b"1e999",
                    b"-1e999",
                    b"0x10",
                    b"01",
                    b"1.",
                    b".5",
                    b"+1",
                    b"--1",
                )
            )
        )
        return (
            b'{"type":"status","timestamp":' + token + b',"device":{"serial_number":"1","status":"ONLINE"}}'
        )
    if choice == 8:
        # Escapes that JSON accepts but a text column cannot hold.
        escape = draw(
            st.sampled_from(
                (rb"\u0000", rb"\ud800", rb"\udc00", rb"\ud83d\ude00", rb"\\u0000", rb"\u0000\u0000")
            )
        )
        return valid[:-1] + b',"note":"' + escape + b'"}'
    # Duplicate keys: the last one wins in Python's decoder.
    return valid[:-1] + b',"type":' + json.dumps(draw(st.sampled_from(NEAR_MISS_ENUMS))).encode() + b"}"


# --- Headers ------------------------------------------------------------------------------

# HTTP carries header values as latin-1 (PEP 3333): no CR or LF, no characters past U+00FF.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
) | st.text(alphabet=st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=20)

MISSING = None


@st.composite
def x_timestamps(draw, now: int):
    """(header value or None, the integer it signs with if it is one)."""
    choice = draw(st.integers(min_value=0, max_value=8))
    if choice == 0:
        return str(now)
    if choice == 1:
        return MISSING
    if choice == 2:
        return ""
    if choice == 3:
        offset = draw(st.one_of(st.integers(-400, 400), st.integers(-(10**9), 10**9)))
        return str(max(now + offset, 0))
    if choice == 4:
        return str(draw(st.sampled_from((10**12 - 1, 10**12, 10**13, 10**30, 2**63, 0, 1))))
    if choice == 5:
        junk = draw(header_text)
        where = draw(st.sampled_from(("before", "after", "inside")))
        text = str(now)
        if where == "before":
            return junk + text
        if where == "after":
            return text + junk
        return text[:5] + junk + text[5:]
    if choice == 6:
        return draw(
            st.sampled_from(
                (
                    f"-{now}",
                    f"+{now}",
                    f" {now}",
                    f"{now} ",
                    f"\t{now}",
                    f"{now}.0",
                    f"{now}e0",
                    "²³",
                    "\xa0123",
                    f"0{now}",
                    "0x6914B0D3",
                )
            )
        )
    if choice == 7:
        return draw(st.text(alphabet="0123456789", min_size=1, max_size=30))
    return draw(header_text)


@st.composite
def x_signatures(draw, valid: str):
    choice = draw(st.integers(min_value=0, max_value=8))
    if choice == 0:
        return valid
    if choice == 1:
        return MISSING
    if choice == 2:
        return ""
    if choice == 3:
        return base64.b64encode(draw(st.binary(min_size=0, max_size=64))).decode("ascii")
    if choice == 4:
        index = draw(st.integers(min_value=0, max_value=len(valid) - 1))
        replacement = draw(st.sampled_from(string.ascii_letters + string.digits + "+/="))
        return valid[:index] + replacement + valid[index + 1 :]
    if choice == 5:
        return draw(
            st.sampled_from(
                (
                    valid.rstrip("="),
                    valid + "=",
                    " " + valid,
                    valid + " ",
                    valid.lower(),
                    valid.replace("+", "-").replace("/", "_"),
                    valid * 2,
                )
            )
        )
    if choice == 6:
        return draw(st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=100))
    return draw(header_text)


CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    "application/json; charset=latin-1",
    "application/json; charset=bogus",
    "APPLICATION/JSON",
    " application/json ",
    "application/json;;;",
    "application/json; boundary=",
    'application/json; charset="utf-8"',
    "application/jsonx",
    "application/problem+json",
    "application/x-json",
    "text/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=----x",
    "application/octet-stream",
    "*/*",
    "",
)


def _no_rfc2231(value: str) -> bool:
    # Django 5.2.19 raises ValueError while *building* the request for an RFC 2231
    # parameter with an unknown charset (`charset*=bogus''x`): before any middleware, so
    # the WSGI server answers 500 (Django ticket #36991, fixed upstream with a 400).
    # Nothing in this project runs early enough to answer it; left out until Django does.
    return "*" not in value


content_types = st.one_of(
    st.sampled_from(CONTENT_TYPES),
    st.just(MISSING),
    header_text.filter(_no_rfc2231),
    header_text.filter(_no_rfc2231).map(lambda params: "application/json;" + params),
)


@st.composite
def authorizations(draw, staff: str, customer: str):
    """Authorization values: the staff token, a customer's token, and junk in many shapes."""
    token = staff.split(" ", 1)[1]
    choice = draw(st.integers(min_value=0, max_value=9))
    if choice == 0:
        return staff
    if choice == 1:
        return MISSING
    if choice == 2:
        return customer
    if choice == 3:
        return "Bearer " + draw(header_text)
    if choice == 4:
        index = draw(st.integers(min_value=0, max_value=len(token) - 1))
        replacement = draw(st.sampled_from(string.ascii_letters + string.digits + "-_."))
        return "Bearer " + token[:index] + replacement + token[index + 1 :]
    if choice == 5:
        return draw(
            st.sampled_from(
                (
                    "Bearer",
                    "Bearer ",
                    "bearer " + token,
                    "BEARER " + token,
                    "Bearer  " + token,
                    "Bearer " + token + " extra",
                    "Bearer " + token + ".",
                    "Bearer ..",
                    "Bearer a.b.c",
                    "Bearer eyJhbGciOiJub25lIn0.eyJ1c2VyX2lkIjoxfQ.",
                    "Token " + token,
                    "Basic aW90OnNlY3JldA==",
                    "Digest username=x",
                    "",
                )
            )
        )
    if choice == 6:
        # A forged token: the staff token's header and claims with a signature of our own.
        header, claims, _ = token.split(".")
        forged = base64.urlsafe_b64encode(draw(st.binary(min_size=1, max_size=40))).rstrip(b"=").decode()
        return f"Bearer {header}.{claims}.{forged}"
    if choice == 7:
        # alg=none with the staff user's claims.
        _, claims, _ = token.split(".")
        none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        return f"Bearer {none_header}.{claims}."
    if choice == 8:
        scheme = draw(st.text(alphabet=string.ascii_letters, min_size=1, max_size=10))
        return f"{scheme} {draw(header_text)}"
    return draw(header_text)


forwarded_for = st.one_of(
    st.just(MISSING),
    st.sampled_from(
        (
            "203.0.113.7",
            "198.51.100.1",
            "203.0.113.7, 198.51.100.9",
            "198.51.100.9, 203.0.113.7",
            "::1",
            "2001:db8::5",
            "::ffff:203.0.113.7",
            "fe80::1%eth0",
            "203.0.113.7:443",
            "[2001:db8::5]",
            "unknown",
            ",,,",
            " ",
            "203.0.113.7,",
            "999.1.1.1",
        )
    ),
    header_text,
)

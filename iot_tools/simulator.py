"""
A fleet of simulated cabinets that produces the real sender's traffic, and a runner that
sends it (used by `manage.py simulate_stations`). Standard library only.

The fleet is a discrete-event model: every station, bank and flap has its next event in
one time-ordered queue, and `Fleet.advance(until)` plays the events up to a moment and
returns what the cabinets would have sent by then. All decisions come from one seeded
`random.Random`, so the same seed and the same start time give the same messages whatever
the tick rate; the model needs no server and no database.

What the fleet does (the formats of docs/contract.md, section 2, keys in the Java sender's order):

- every station sends a `full` sync at start, then every `interval` seconds (jittered);
- customers take charged banks (the bank is absent from the station's next full sync) and
  return them later into an empty slot of the same or another station (a `returned`
  message, then full syncs showing the bank); the returned battery level is sometimes 0,
  as real cabinets send;
- slots go into ERROR with Chinese messages in `slot_metadata` and recover;
- stations drop OFFLINE and come back ONLINE (`status` messages), sending nothing between;
- some bodies are sent twice (the identical bytes, as the sender's retry after a lost
  answer), and some full syncs are held back and sent after a newer one (out of date).

`IoTApiServer` plays the other direction, the IoT system's own HTTP API for the same
cabinets (login, `popup_sn`, `check`, `check_all`; docs/contract.md, "The other
direction"), with a configurable delay, refusal and timeout rate. A bank it ejects is gone
from the cabinet's next full sync and comes back later like any rented bank. With
`takes_by_request`, a customer's take is only a wish (`Take`): the bank leaves its slot when
the runner's rental start has the API eject it.
"""

import heapq
import itertools
import json
import logging
import random
import secrets
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from iot_tools.client import IoTSender, SendResult
from iot_tools.wire import SlotState, compact_json, full_message, iso_utc, returned_message, status_message

logger = logging.getLogger(__name__)

MIN_SLOTS, MAX_SLOTS = 4, 48
DEFAULT_PREFIX = "8646010699"
# What cabinets report for faulty slots (code, message). The texts follow the sender's
# "孔位异常：0X04" pattern; they are illustrative, not a catalogue of the firmware's codes.
SLOT_ERRORS = [
    ("0x04", "孔位异常：0X04"),
    ("0x02", "充电异常：0X02"),
    ("0x08", "电池温度过高：0X08"),
    ("0x10", "锁止机构故障：0X10"),
]
# A bank is rented out only when at least this charged.
RENTABLE_BATTERY = 50
# Time to wait before re-checking a return whose take has not been carried out yet.
TAKE_WAIT_SECONDS = 0.5


def luhn_check_digit(digits: str) -> str:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def station_imei(prefix: str, index: int) -> str:
    """A 15-digit IMEI: the prefix, the station number zero-padded, and a Luhn check digit."""
    width = 14 - len(prefix)
    body = f"{prefix}{index:0{width}d}"
    if len(body) != 14:
        raise ValueError(f"Station number {index} does not fit after prefix {prefix!r}.")
    return body + luhn_check_digit(body)


@dataclass
class FleetConfig:
    stations: int = 5
    slots: int = 8
    interval: float = 10.0  # seconds between a station's full syncs (real cabinets: ~20 min)
    seed: int | None = None
    prefix: str = DEFAULT_PREFIX
    take_probability: float = 0.3  # per station and full-sync cycle: a customer takes a bank
    return_after: float | None = None  # seconds a bank stays out at least (default 3 intervals)
    flap_probability: float = 0.05  # per station and cycle: OFFLINE, then ONLINE again
    error_probability: float = 0.05  # per station and cycle: a slot goes into ERROR
    recover_probability: float = 0.5  # per ERROR slot and cycle: the fault clears
    resend_probability: float = 0.03  # per message: the identical body is sent again
    stale_probability: float = 0.03  # per full sync: held back, sent after a newer one
    fill: float = 0.75  # share of slots holding a bank at start
    jitter: float = 0.2  # full-sync interval varies by +/- this share

    def __post_init__(self):
        if self.return_after is None:
            self.return_after = 3 * self.interval

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.stations < 1:
            raise ValueError("stations must be at least 1")
        if not MIN_SLOTS <= self.slots <= MAX_SLOTS:
            raise ValueError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.return_after < 0:
            raise ValueError("return_after must not be negative")
        if not (self.prefix.isdigit() and 1 <= len(self.prefix) <= 13):
            raise ValueError("prefix must be 1-13 digits")
        if self.stations >= 10 ** (14 - len(self.prefix)):
            raise ValueError(f"prefix {self.prefix!r} leaves room for fewer than {self.stations} stations")
        for name in (
            "take_probability",
            "flap_probability",
            "error_probability",
            "recover_probability",
            "resend_probability",
            "stale_probability",
            "fill",
            "jitter",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")


# --- What the fleet produces -----------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A body a station sends. `variant` is "" or "resend" (same bytes again) or "stale"."""

    station_serial: str
    message_type: str
    body: bytes
    built_at: int  # the body's `timestamp`
    variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.message_type} ({self.variant})" if self.variant else self.message_type


@dataclass
class Take:
    """A customer took `bank_serial` out of a slot (the runner may start a rental for it)."""

    station_serial: str
    bank_serial: str
    slot_number: int
    at: float
    # Set by the runner once the take was carried out, so the bank's return (possibly at
    # another station, on another thread) is never sent before its rental exists.
    executed: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


# --- The model ----------------------------------------------------------------------------


@dataclass
class SimBank:
    serial: str
    battery: int
    temperature: int = 23
    origin: "SimStation | None" = None
    take: Take | None = None


@dataclass
class SimSlot:
    number: int
    bank: SimBank | None = None
    error: tuple[str, str] | None = None  # (error_code, error_message)
    lock_count: int = 0

    @property
    def free(self) -> bool:
        return self.bank is None and self.error is None


@dataclass
class SimStation:
    serial: str
    slots: list[SimSlot]
    online: bool = True
    signal: int = 31
    fulls_built: int = 0
    held: Message | None = None  # a full sync held back, to be sent after a newer one


class Fleet:
    """
    N cabinets of M slots. `advance(until)` returns the `Message`s and `Take`s due by then,
    in time order; a station's items must be delivered in that order.

    With `wait_for_takes`, a bank is returned only after its `Take.executed` is set (the
    runner sets it); without, takes count as carried out at once. With `takes_by_request`,
    a take leaves the bank in its slot: it leaves when `eject` is called for it (the IoT
    API does, for the rental the runner starts).

    Thread-safe: `advance`, `eject` and `inventory` hold one lock, since the API's threads
    change the cabinets while the runner plays them.
    """

    def __init__(
        self, config: FleetConfig, *, start: float, wait_for_takes: bool = False, takes_by_request: bool = False
    ):
        config.validate()
        self.config = config
        self.rng = random.Random(config.seed)
        self.wait_for_takes = wait_for_takes
        self.takes_by_request = takes_by_request
        self.lock = threading.RLock()
        self._events: list[tuple[float, int, str, object]] = []
        self._sequence = itertools.count()
        self._bank_serials: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.stations = [self._new_station(index) for index in range(1, config.stations + 1)]
        self._by_serial = {station.serial: station for station in self.stations}
        for station in self.stations:
            self._schedule(start, "full", station)

    def station(self, serial: str) -> "SimStation | None":
        return self._by_serial.get(serial)

    # Set-up.

    def _new_bank_serial(self) -> str:
        while True:
            serial = str(self.rng.randrange(10_000_000, 1_000_000_000))  # 8-9 digits
            if serial not in self._bank_serials:
                self._bank_serials.add(serial)
                return serial

    def _new_station(self, index: int) -> SimStation:
        config = self.config
        station = SimStation(
            serial=station_imei(config.prefix, index),
            slots=[SimSlot(number) for number in range(1, config.slots + 1)],
            signal=self.rng.randint(18, 31),
        )
        for slot in station.slots:
            if self.rng.random() < config.fill:
                slot.bank = SimBank(self._new_bank_serial(), battery=self.rng.choice([100, 100, 80, 60, 35]))
            if self.rng.random() < config.error_probability:
                slot.error = self.rng.choice(SLOT_ERRORS)
        return station

    def _schedule(self, at: float, kind: str, target: object) -> None:
        heapq.heappush(self._events, (at, next(self._sequence), kind, target))

    def _jittered(self, low: float | None = None, high: float | None = None) -> float:
        jitter = self.config.jitter
        low = 1 - jitter if low is None else low
        high = 1 + jitter if high is None else high
        return self.config.interval * self.rng.uniform(low, high)

    # Playing events.

    def advance(self, until: float) -> list[Message | Take]:
        produced: list[Message | Take] = []
        with self.lock:
            while self._events and self._events[0][0] <= until:
                at, _, kind, target = heapq.heappop(self._events)
                produced.extend(getattr(self, f"_on_{kind}")(at, target))
        return produced

    # What the IoT system's API asks of a cabinet.

    def eject(self, station_serial: str, bank_serial: str, *, at: float | None = None) -> "Ejection":
        """Pop `bank_serial` out of its slot now: it goes with a customer and comes back later."""
        at = time.time() if at is None else at
        with self.lock:
            station = self._by_serial.get(station_serial)
            if station is None or not station.online:
                return Ejection("offline")
            slot = next((s for s in station.slots if s.bank is not None and s.bank.serial == bank_serial), None)
            if slot is None:
                return Ejection("absent")
            if slot.error is not None:
                return Ejection("jammed", slot.number)  # the slot's spring does not release it
            bank, slot.bank = slot.bank, None
            slot.lock_count += 1
            take = Take(station.serial, bank.serial, slot.number, at)
            take.executed.set()  # the rental exists: the API is asked for a started rental
            bank.origin, bank.take = station, take
            self.counts["ejections"] += 1
            self._schedule(at + self.config.return_after * self.rng.uniform(1.0, 1.5), "return", bank)
            return Ejection("ejected", slot.number)

    def inventory(self, station_serial: str) -> "list[SimSlot] | None":
        """The cabinet's slots as it reads them now; None when it is offline or unknown."""
        with self.lock:
            station = self._by_serial.get(station_serial)
            if station is None or not station.online:
                return None
            return [replace(slot) for slot in station.slots]

    def _maybe_resend(self, message: Message) -> list[Message]:
        if self.rng.random() < self.config.resend_probability:
            self.counts["resends"] += 1
            return [message, replace(message, variant="resend")]
        return [message]

    def _on_full(self, at: float, station: SimStation) -> list[Message]:
        config = self.config
        self._schedule(at + self._jittered(), "full", station)
        if not station.online:
            return []  # a disconnected cabinet uploads nothing
        for slot in station.slots:
            bank = slot.bank
            if bank is not None:
                if bank.battery < 100 and slot.error is None:
                    bank.battery = min(100, bank.battery + self.rng.randint(5, 20))
                bank.temperature = self.rng.randint(20, 30)
            if slot.error is not None and self.rng.random() < config.recover_probability:
                slot.error = None
        if self.rng.random() < config.error_probability:
            healthy = [slot for slot in station.slots if slot.error is None]
            if healthy:
                self.rng.choice(healthy).error = self.rng.choice(SLOT_ERRORS)
                self.counts["slot errors"] += 1
        station.signal = max(10, min(31, station.signal + self.rng.randint(-2, 2)))

        message = Message(station.serial, "full", compact_json(full_payload(station, at)), int(at))
        station.fulls_built += 1
        produced: list[Message] = []
        if station.fulls_built > 1 and station.held is None and self.rng.random() < config.stale_probability:
            station.held = replace(message, variant="stale")
            self.counts["held back"] += 1
        else:
            produced.extend(self._maybe_resend(message))
            # Out of date only once a full with a strictly newer timestamp went first.
            if station.held is not None and station.held.built_at < message.built_at:
                produced.append(station.held)
                station.held = None
        if self.rng.random() < config.take_probability:
            self._schedule(at + self._jittered(0.2, 0.8), "take", station)
        if self.rng.random() < config.flap_probability:
            self._schedule(at + self._jittered(0.2, 0.6), "offline", station)
        return produced

    def _on_take(self, at: float, station: SimStation) -> list[Take]:
        if not station.online:
            return []
        candidates = [
            slot
            for slot in station.slots
            if slot.bank is not None and slot.error is None and slot.bank.battery >= RENTABLE_BATTERY
        ]
        if not candidates:
            return []
        slot = self.rng.choice(candidates)
        if self.takes_by_request:
            # A customer asks for this bank; it leaves only if the API ejects it.
            self.counts["takes"] += 1
            take = Take(station.serial, slot.bank.serial, slot.number, at)
            take.executed.set()
            return [take]
        bank, slot.bank = slot.bank, None
        slot.lock_count += 1
        take = Take(station.serial, bank.serial, slot.number, at)
        if not self.wait_for_takes:
            take.executed.set()
        bank.origin, bank.take = station, take
        self.counts["takes"] += 1
        self._schedule(at + self.config.return_after * self.rng.uniform(1.0, 1.5), "return", bank)
        return [take]

    def _on_return(self, at: float, bank: SimBank) -> list[Message]:
        if bank.take is not None and not bank.take.executed.is_set():
            # No random draw here: waiting must not change what the seed decides.
            self._schedule(at + TAKE_WAIT_SECONDS, "return", bank)
            return []
        preferred = bank.origin if self.rng.random() < 0.5 else self.rng.choice(self.stations)
        candidates = [s for s in self.stations if s.online and any(slot.free for slot in s.slots)]
        if not candidates:
            self._schedule(at + self.config.interval, "return", bank)
            return []
        station = preferred if preferred in candidates else self.rng.choice(candidates)
        slot = self.rng.choice([slot for slot in station.slots if slot.free])
        bank.battery = max(3, bank.battery - self.rng.randint(10, 60))
        bank.temperature = self.rng.randint(24, 32)
        slot.bank = bank
        slot.lock_count += 1
        bank.origin, bank.take = None, None
        self.counts["returns"] += 1
        # Cabinets often report the level they last knew, or 0, in the return event.
        reported = 0 if self.rng.random() < 0.2 else bank.battery
        body = compact_json(
            returned_message(
                station.serial,
                bank.serial,
                slot.number,
                battery=reported,
                timestamp=int(at),
                returned_at=iso_utc(at),
                temperature=bank.temperature,
            )
        )
        return self._maybe_resend(Message(station.serial, "returned", body, int(at)))

    def _on_offline(self, at: float, station: SimStation) -> list[Message]:
        if not station.online:
            return []
        station.online = False
        self.counts["flaps"] += 1
        self._schedule(at + self._jittered(0.1, 0.4), "online", station)
        body = compact_json(status_message(station.serial, "OFFLINE", timestamp=int(at)))
        return self._maybe_resend(Message(station.serial, "status", body, int(at)))

    def _on_online(self, at: float, station: SimStation) -> list[Message]:
        station.online = True
        body = compact_json(status_message(station.serial, "ONLINE", timestamp=int(at)))
        return self._maybe_resend(Message(station.serial, "status", body, int(at)))


# --- Payloads ----------------------------------------------------------------------------


def full_payload(station: SimStation, at: float) -> dict:
    stamp = iso_utc(at)
    slots = []
    for slot in station.slots:
        state = SlotState(slot.number, error=slot.error, lock_count=slot.lock_count)
        if slot.bank is not None:
            state = state._replace(bank=slot.bank.serial, battery=slot.bank.battery, temperature=slot.bank.temperature)
        slots.append(state)
    return full_message(
        station.serial,
        slots,
        timestamp=int(at),
        signal_strength=station.signal,
        last_heartbeat=stamp,
        slots_updated_at=stamp,
        # One pinboard per four slots, as the cabinets are built.
        pinboards=(len(station.slots) + 3) // 4,
    )


# --- Statistics ------------------------------------------------------------------------------


def answer_key(result: SendResult) -> tuple[str, str]:
    """(HTTP status, error code) of a final answer; no answer is ("-", what went wrong)."""
    if result.status is None:
        error = result.requests[-1].error if result.requests else "no answer"
        return "-", "TIMEOUT" if "timeout" in error else "NO_ANSWER"
    return str(result.status), result.error_code or "-"


class RunStats:
    """Counters shared by the sending threads; every method is thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sent: Counter[str] = Counter()  # messages handed to the sender, by label
        self.answers: Counter[tuple[str, str]] = Counter()  # final answer per message
        self.answers_by_label: dict[str, Counter[str]] = {}
        self.dropped: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()  # HTTP requests to the data endpoint, by label
        self.request_answers: Counter[str] = Counter()  # the same requests by HTTP status ("-": none)
        self.login_failures = 0
        self.interrupted: Counter[str] = Counter()  # messages cut short by Ctrl-C
        self.not_applied = 0  # full/status answered 200 with applied=false or unchanged
        self.rentals_closed = 0
        self.rentals: Counter[str] = Counter()  # "started" or "skipped: <reason>"
        self.takes = 0
        self.exceptions: Counter[str] = Counter()

    def record(self, message: Message, result: SendResult) -> None:
        key = answer_key(result)
        with self._lock:
            self.sent[message.label] += 1
            self.answers[key] += 1
            self.answers_by_label.setdefault(message.label, Counter())[key[0]] += 1
            self.attempts[message.label] += result.attempts
            if result.dropped:
                self.dropped[message.label] += 1
            for request in result.requests:
                if request.stage == "login":
                    self.login_failures += 1
                    continue
                self.requests[message.label] += 1
                self.request_answers[str(request.status) if request.status else "-"] += 1
            data = result.data.get("data") if result.ok and isinstance(result.data, dict) else None
            if isinstance(data, dict):
                if message.message_type == "full" and data.get("applied") is False:
                    self.not_applied += 1
                # A resent body is answered with the original response: count the rental once.
                if (
                    message.message_type == "returned"
                    and message.variant != "resend"
                    and data.get("rental_status") == "COMPLETED"
                ):
                    self.rentals_closed += 1

    def record_interrupted(self, message: Message) -> None:
        with self._lock:
            self.interrupted[message.label] += 1

    def record_take(self, outcome: str | None) -> None:
        with self._lock:
            self.takes += 1
            if outcome:
                self.rentals[outcome] += 1

    def record_exception(self, exc: BaseException) -> None:
        with self._lock:
            self.exceptions[exc.__class__.__name__] += 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def not_ok(self) -> int:
        return sum(count for (status, _), count in self.answers.items() if status != "200")

    def line(self, elapsed: float) -> str:
        with self._lock:
            by_type = ", ".join(f"{label} {count}" for label, count in sorted(self.sent.items()))
            answers = ", ".join(
                f"{status}{'/' + code if code != '-' else ''} x{count}"
                for (status, code), count in sorted(self.answers.items())
            )
            retried = sum(self.attempts.values()) - sum(self.sent.values())
            text = (
                f"[{elapsed:6.1f}s] sent {sum(self.sent.values())} ({by_type or 'none'}) | "
                f"answers {answers or 'none'} | retries {retried}, dropped {sum(self.dropped.values())}, "
                f"no answer {self.request_answers.get('-', 0)}"
            )
            if self.exceptions:
                text += f", errors {sum(self.exceptions.values())}"
            text += f" | takes {self.takes}"
            if self.rentals:
                text += f", rentals started {self.rentals.get('started', 0)}, closed {self.rentals_closed}"
            return text

    def table(self) -> str:
        with self._lock:
            lines = ["Server answers (final answer per message):", f"  {'HTTP':<5} {'error code':<22} {'messages':>8}"]
            for (status, code), count in sorted(self.answers.items()):
                lines.append(f"  {status:<5} {code:<22} {count:>8}")
            if not self.answers:
                lines.append("  (nothing sent)")
            lines.append("")
            lines.append("Per message type:")
            header = f"  {'type':<18} {'sent':>6} {'200':>6} {'other':>6} {'dropped':>8} {'attempts':>9} {'requests':>9}"
            lines.append(header)
            for label in sorted(self.sent):
                by_status = self.answers_by_label.get(label, Counter())
                ok = by_status.get("200", 0)
                lines.append(
                    f"  {label:<18} {self.sent[label]:>6} {ok:>6} {self.sent[label] - ok:>6} "
                    f"{self.dropped[label]:>8} {self.attempts[label]:>9} {self.requests[label]:>9}"
                )
            lines.append("")
            requests = ", ".join(f"{status} x{count}" for status, count in sorted(self.request_answers.items()))
            lines.append(f"HTTP requests to the data endpoint, by status: {requests or 'none'}")
            if self.login_failures:
                lines.append(f"Failed logins: {self.login_failures}")
            if self.interrupted:
                cut = ", ".join(f"{label} {count}" for label, count in sorted(self.interrupted.items()))
                lines.append(f"Cut short by Ctrl-C (no final answer): {cut}")
            lines.append(f"Full syncs answered 200 but not applied (out of date): {self.not_applied}")
            if self.rentals or self.rentals_closed:
                rentals = ", ".join(f"{outcome} {count}" for outcome, count in sorted(self.rentals.items()))
                lines.append(f"Rentals: {rentals}; closed by returns: {self.rentals_closed}")
            if self.exceptions:
                errors = ", ".join(f"{name} x{count}" for name, count in sorted(self.exceptions.items()))
                lines.append(f"Unexpected errors in the simulator: {errors}")
            lines.append(f"Final answers not 200: {sum(c for (s, _), c in self.answers.items() if s != '200')}")
            return "\n".join(lines)


# --- Sending ------------------------------------------------------------------------------


class Interrupted(Exception):
    """Raised from the sender's sleep when the run is stopped with Ctrl-C."""


class FleetRunner:
    """
    Plays a `Fleet` in real time and sends what it produces with one shared `IoTSender`.

    Stations send concurrently on a thread pool; each station's messages go one after the
    other, in the order the fleet produced them. `on_take(take)` (optional) runs on the
    station's thread in that order and returns a short outcome for the statistics.
    """

    def __init__(
        self,
        fleet: Fleet,
        sender: IoTSender,
        *,
        workers: int,
        write: Callable[[str], None] = print,
        on_take: Callable[[Take], str | None] | None = None,
        summary_every: float = 5.0,
        tick: float = 0.05,
        clock: Callable[[], float] = time.time,
    ):
        self.fleet = fleet
        self.sender = sender
        self.workers = max(1, workers)
        self.write = write
        self.on_take = on_take
        self.summary_every = summary_every
        self.tick = tick
        self.clock = clock
        self.stats = RunStats()
        self.interrupted = False
        self._lock = threading.Lock()
        self._pending: dict[str, deque] = {}
        self._draining: set[str] = set()
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self.elapsed = 0.0
        # The sender waits between attempts through us, so Ctrl-C cuts the wait short.
        sender.sleep = self._interruptible_sleep

    def _interruptible_sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Interrupted()

    def _enqueue(self, item: Message | Take) -> None:
        with self._lock:
            self._pending.setdefault(item.station_serial, deque()).append(item)
            if item.station_serial in self._draining:
                return
            self._draining.add(item.station_serial)
        self._pool.submit(self._drain, item.station_serial)

    def _drain(self, serial: str) -> None:
        while True:
            with self._lock:
                queue = self._pending.get(serial)
                if self._stop.is_set() or not queue:
                    self._draining.discard(serial)
                    return
                item = queue.popleft()
            try:
                if isinstance(item, Take):
                    self._take(item)
                else:
                    self._send(item)
            except Exception as exc:  # keep the station's thread alive; count and log it
                logger.exception("Simulator failed on %s for %s", type(item).__name__, serial)
                self.stats.record_exception(exc)

    def _send(self, message: Message) -> None:
        try:
            result = self.sender.send(message.body)
        except Interrupted:
            self.stats.record_interrupted(message)
            return
        self.stats.record(message, result)

    def _take(self, take: Take) -> None:
        try:
            outcome = self.on_take(take) if self.on_take is not None else None
        finally:
            take.executed.set()
        self.stats.record_take(outcome)

    def _busy(self) -> bool:
        with self._lock:
            return bool(self._draining)

    def _stop_now(self) -> None:
        self.interrupted = True
        self._stop.set()
        with self._lock:
            for queue in self._pending.values():
                queue.clear()
        self.write("Interrupted: finishing requests in flight (up to the sender's timeout)...")

    def run(self, duration: float | None = None) -> RunStats:
        start = self.clock()
        next_summary = start + self.summary_every
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="station")
        try:
            try:
                while duration is None or self.clock() - start < duration:
                    now = self.clock()
                    for item in self.fleet.advance(now):
                        self._enqueue(item)
                    if now >= next_summary:
                        self.write(self.stats.line(next_summary - start))
                        next_summary += self.summary_every
                    time.sleep(self.tick)
                # Time is up: what is already queued still goes out.
                while self._busy():
                    now = self.clock()
                    if now >= next_summary:
                        self.write(self.stats.line(next_summary - start))
                        next_summary += self.summary_every
                    time.sleep(self.tick)
            except KeyboardInterrupt:
                self._stop_now()
            self._pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # a second Ctrl-C while requests finish
            self._stop_now()
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.elapsed = self.clock() - start
        return self.stats


# --- The IoT system's own API, for the fleet's cabinets -----------------------------------------


@dataclass(frozen=True)
class Ejection:
    """A cabinet's answer to `Fleet.eject`: "ejected", "absent", "jammed" or "offline"."""

    outcome: str
    slot: int | None = None


@dataclass
class ApiBehaviour:
    """How the simulated IoT system answers. Rates are shares 0-1, drawn per request."""

    delay: float = 0.5  # seconds the cabinet takes to answer an ejection
    refusal_rate: float = 0.0  # the cabinet answers and does not eject (status 0x02)
    timeout_rate: float = 0.0  # no answer from the cabinet: 408 "Request Time Out" after `wait`
    late_eject_rate: float = 0.5  # of the timed-out ones, the share whose bank comes out anyway
    wait: float = 15.0  # how long the IoT system waits for the cabinet (15 s in the real one)
    hang: bool = False  # accept ejections and never answer them (until the server stops)
    check_delay: float = 0.2  # seconds a cabinet takes to answer an inventory

    def validate(self) -> None:
        for name in ("refusal_rate", "timeout_rate", "late_eject_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("delay", "wait", "check_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def _http_result(data, *, code: int = 200, msg: str = "ok") -> dict:
    """The IoT system's answer envelope (its HttpResult)."""
    return {"code": code, "type": 0, "data": data, "msg": msg, "time": int(time.time() * 1000)}


def _powerbank_entry(slot: SimSlot) -> dict:
    """One slot as the IoT system's /check answers it (its Powerbank, as Jackson writes it)."""
    bank = slot.bank
    if slot.error is not None:
        status, message = int(slot.error[0], 16), slot.error[1]
    elif bank is not None:
        status, message = 1, "OK"
    else:
        status, message = 0, "NONE"
    serial = bank.serial if bank is not None else "0"
    return {
        "index": slot.number,
        "pinboardIndex": (slot.number - 1) // 4 + 1,
        "status": status,
        "power": bank.battery if bank is not None else 0,
        "temp": bank.temperature if bank is not None else 0,
        "voltage": 0,
        "current": 0,
        "snAsInt": int(serial),
        "snAsString": serial,
        "area": 0,
        "softVersion": 0,
        "hardVersion": 0,
        "message": message,
        "locked": False,
        "lockCount": slot.lock_count,
        "putaway": bank is not None,
        "microSwitch": "0",
        "solenoidValveSwitch": "0",
    }


class IoTApiServer:
    """
    The Java IoT system's HTTP API for a `Fleet`'s cabinets, on a `ThreadingHTTPServer`:

    - `POST /api/auth/login {"username", "password"}` -> 200 `{"success", "message", "token", "user"}`
    - `GET /popup_sn?rentboxSN=&singleSN=` -> 200 `data {slot, powerbankSN, status, success}`,
      or 408 "Device is Offline" / "Request Time Out"
    - `GET /check?deviceName=` (occupied slots) and `/check_all?deviceName=` (every slot)

    Every GET wants `Authorization: Bearer <token>`: without a valid one it is refused before
    reaching a cabinet, 401 for a client that accepts JSON, else a redirect to /login, as
    the real one's filter does. `port=0` picks a free port (`url` tells which).

    `popups` records every ejection request with what the server did about it, and
    `expire_tokens()` forgets the tokens it gave out (the next GET is a 401).
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        username: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: ApiBehaviour | None = None,
        seed: int | None = None,
    ):
        if not username or not password:
            raise ValueError("the API needs a username and a password to accept")
        self.fleet = fleet
        self.behaviour = behaviour or ApiBehaviour()
        self.behaviour.validate()
        self._username = username
        self._password = password
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._tokens: set[str] = set()
        self._stopping = threading.Event()
        self.logins = 0
        self.popup_requests = 0  # counted on arrival, before any waiting
        self.popups: list[tuple[str, str, str]] = []  # (station, bank, what happened), once it has
        self.checks: list[tuple[str, str]] = []  # (path, station)
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def __repr__(self):
        return f"<IoTApiServer {self.url} for {len(self.fleet.stations)} cabinet(s)>"

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "IoTApiServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="iot-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases requests that hang on purpose
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "IoTApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def _record(self, station: str, bank: str, what: str) -> None:
        with self._lock:
            self.popups.append((station, bank, what))

    # Requests.

    def login(self, body) -> dict:
        if (
            isinstance(body, dict)
            and secrets.compare_digest(str(body.get("username", "")).encode(), self._username.encode())
            and secrets.compare_digest(str(body.get("password", "")).encode(), self._password.encode())
        ):
            token = secrets.token_urlsafe(24)
            with self._lock:
                self._tokens.add(token)
                self.logins += 1
            return {
                "success": True,
                "message": "Login successful",
                "token": token,
                "user": {"id": 1, "username": self._username, "role": "ADMIN", "isActive": True},
            }
        return {"success": False, "message": "Invalid username or password", "token": None, "user": None}

    def authorized(self, header: str) -> bool:
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        with self._lock:
            return token in self._tokens

    def popup(self, station_serial: str, bank_serial: str) -> tuple[int, dict]:
        behaviour = self.behaviour
        with self._lock:
            self.popup_requests += 1
        if self.fleet.inventory(station_serial) is None:
            self._record(station_serial, bank_serial, "offline")
            return 408, _http_result(None, code=408, msg="Device is Offline")
        if behaviour.hang:
            self._record(station_serial, bank_serial, "hung")
            self._stopping.wait()
            return 408, _http_result(None, code=408, msg="Request Time Out")
        if self._draw() < behaviour.timeout_rate:
            late = self._draw() < behaviour.late_eject_rate
            self._stopping.wait(behaviour.wait)
            if late:
                done = self.fleet.eject(station_serial, bank_serial)
                self._record(station_serial, bank_serial, f"timed out, {done.outcome} late")
            else:
                self._record(station_serial, bank_serial, "timed out")
            return 408, _http_result(None, code=408, msg="Request Time Out")
        self._stopping.wait(behaviour.delay)
        if self._draw() < behaviour.refusal_rate:
            slots = self.fleet.inventory(station_serial) or []
            slot = next((s.number for s in slots if s.bank is not None and s.bank.serial == bank_serial), 0)
            self._record(station_serial, bank_serial, "refused")
            return 200, _http_result({"slot": slot, "powerbankSN": bank_serial, "status": 2, "success": False})
        done = self.fleet.eject(station_serial, bank_serial)
        self._record(station_serial, bank_serial, done.outcome)
        if done.outcome == "offline":
            return 408, _http_result(None, code=408, msg="Device is Offline")
        if done.outcome == "ejected":
            return 200, _http_result({"slot": done.slot, "powerbankSN": bank_serial, "status": 1, "success": True})
        status = 4 if done.outcome == "jammed" else 2
        return 200, _http_result(
            {"slot": done.slot or 0, "powerbankSN": bank_serial, "status": status, "success": False}
        )

    def check(self, station_serial: str, *, all_slots: bool) -> tuple[int, dict]:
        with self._lock:
            self.checks.append(("/check_all" if all_slots else "/check", station_serial))
        self._stopping.wait(self.behaviour.check_delay)
        slots = self.fleet.inventory(station_serial)
        if slots is None:
            # The real one answers an inventory's failure 500 with the exception's text.
            return 500, _http_result(None, code=500, msg="java.lang.Exception: Device is Offline")
        entries = [_powerbank_entry(slot) for slot in slots if all_slots or slot.bank is not None]
        return 200, _http_result(entries)

    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "SimulatedIoTSystem/1"

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                logger.debug("IoT API %s: " + format, self.address_string(), *args)

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                body = json.dumps(payload, ensure_ascii=False).encode("utf-8") if payload is not None else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if payload is not None:
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The client stopped waiting (its timeout): as a real server, nothing to do.
                    self.close_connection = True

            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if urllib.parse.urlsplit(self.path).path != "/api/auth/login":
                    self._send(404, _http_result(None, code=404, msg="Not Found"))
                    return
                try:
                    body = json.loads(raw.decode("utf-8")) if raw else None
                except (UnicodeDecodeError, ValueError):
                    body = None
                self._send(200, api.login(body))

            def do_GET(self):  # noqa: N802
                parts = urllib.parse.urlsplit(self.path)
                query = {key: values[-1] for key, values in urllib.parse.parse_qs(parts.query).items()}
                if parts.path not in ("/popup_sn", "/check", "/check_all"):
                    self._send(404, _http_result(None, code=404, msg="Not Found"))
                    return
                if not api.authorized(self.headers.get("Authorization", "")):
                    if "application/json" in self.headers.get("Accept", ""):
                        self._send(401, {"error": "Authentication required", "code": 401})
                    else:
                        self._send(302, None, {"Location": "/login"})
                    return
                if parts.path == "/popup_sn":
                    status, payload = api.popup(query.get("rentboxSN", ""), query.get("singleSN", ""))
                else:
                    status, payload = api.check(query.get("deviceName", ""), all_slots=parts.path == "/check_all")
                self._send(status, payload)

        return Handler

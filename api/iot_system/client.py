"""
A client for the Java IoT system's HTTP API: eject ("pop up") a bank, ask a cabinet for its
inventory. The contract is docs/contract.md, "The other direction: ejecting a bank"; in short:

- `POST /api/auth/login {"username", "password"}` answers 200 `{"success", "message", "token",
  "user"}` (a wrong password is 200 too, with `success` false). Every other call is a GET with
  `Authorization: Bearer <token>` and `Accept: application/json`; a token the IoT system no
  longer accepts is answered 401 (or, without that Accept header, a redirect to /login)
  before anything reaches a cabinet.
- Answers are `{code, type, data, msg, time}`. `/popup_sn?rentboxSN=&singleSN=` waits up to
  15 s for the cabinet: 200 with `data {slot, powerbankSN, status, success}` (success false:
  the cabinet did not eject), 408 with `msg` "Device is Offline" or "Request Time Out".
  `/check` and `/check_all?deviceName=` answer the cabinet's slots as a list, or 500 with
  the same two messages.

Every exchange ends in one typed result, never an exception. An ejection is sent at most
once: only an answer that proves the cabinet never got it (a refused token, a connection
that was never made) is followed by anything, and then only by a new login and the one
request. Nothing is retried on a timeout or a 5xx, because the cabinet may have ejected the
bank meanwhile, and a second request could eject another one.

The password and the token are never logged, nor part of any result or repr.
"""

import logging
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)

LOGIN_PATH = "/api/auth/login"
POPUP_PATH = "/popup_sn"
CHECK_PATH = "/check"
CHECK_ALL_PATH = "/check_all"
# The cabinet's answer to an ejection: 0x01 ejected; anything else did not.
CABINET_EJECTED = 0x01


class EjectOutcome(StrEnum):
    EJECTED = "EJECTED"  # the cabinet says it ejected this bank
    REFUSED = "REFUSED"  # the cabinet answered and did not eject it
    TIMEOUT = "TIMEOUT"  # no answer in time: the cabinet may or may not have ejected it
    OFFLINE = "OFFLINE"  # the IoT system holds the cabinet offline and sent it nothing
    UNREACHABLE = "UNREACHABLE"  # the request never reached the IoT system, or our login was refused
    UNEXPECTED = "UNEXPECTED"  # an answer that says neither: outcome unknown


class InventoryOutcome(StrEnum):
    OK = "OK"
    TIMEOUT = "TIMEOUT"
    OFFLINE = "OFFLINE"
    UNREACHABLE = "UNREACHABLE"
    UNEXPECTED = "UNEXPECTED"


@dataclass(frozen=True)
class EjectResult:
    outcome: EjectOutcome
    station_serial: str
    bank_serial: str
    # For operators: what the IoT system or the cabinet said, or what went wrong.
    message: str
    slot: int | None = None
    cabinet_status: int | None = None
    http_status: int | None = None
    # Seconds from the call to its answer (a monotonic clock, login included).
    elapsed: float = 0.0

    @property
    def known(self) -> bool:
        """Did the cabinet say what happened? Otherwise its next report has to."""
        return self.outcome in (EjectOutcome.EJECTED, EjectOutcome.REFUSED)


@dataclass(frozen=True)
class SlotReport:
    slot: int
    bank_serial: str | None  # None: no bank in the slot
    battery: int | None = None
    status: int | None = None  # the cabinet's slot status: 1 normal, 0 empty, others faults
    message: str = ""


@dataclass(frozen=True)
class InventoryResult:
    outcome: InventoryOutcome
    station_serial: str
    message: str
    slots: tuple[SlotReport, ...] = field(default_factory=tuple)
    http_status: int | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == InventoryOutcome.OK

    def bank_slots(self) -> dict[str, int]:
        """Bank serial -> the slot the cabinet has it in."""
        return {report.bank_serial: report.slot for report in self.slots if report.bank_serial}


# --- One HTTP exchange ------------------------------------------------------------------------


@dataclass
class _Answer:
    status: int | None = None
    body: Any = None
    location: str = ""
    # Set when no answer came: "connect" (nothing was sent), "timeout", "broken".
    failure: str = ""
    error: str = ""

    @property
    def data(self) -> Any:
        return self.body.get("data") if isinstance(self.body, dict) else None

    @property
    def msg(self) -> str:
        if isinstance(self.body, dict):
            text = self.body.get("msg") or self.body.get("message") or self.body.get("error")
            if isinstance(text, str):
                return text[:300]
        return ""

    @property
    def auth_refused(self) -> bool:
        """Refused before the controller ran: 401, or the browser redirect to the login page."""
        if self.status == 401:
            return True
        return self.status in (301, 302, 303, 307, 308) and urllib.parse.urlsplit(
            self.location
        ).path.rstrip("/").endswith("/login")


class _LoginFailed(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class IoTSystemClient:
    """
    Thread-safe: one instance serves every thread of a process, and they share one login.
    `transport` is an httpx transport for tests that do not want a socket.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        connect_timeout: float = 3.0,
        timeout: float = 10.0,
        popup_timeout: float = 20.0,
        check_timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ):
        base_url = (base_url or "").strip().rstrip("/")
        self.problem = ""
        if not base_url:
            self.problem = "IOT_SYSTEM_API_URL is not set: no cabinet can be asked"
        else:
            parts = urllib.parse.urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                self.problem = "IOT_SYSTEM_API_URL is not an http(s) URL"
            elif parts.username or parts.password:
                # Credentials belong in IOT_SYSTEM_API_USERNAME/PASSWORD, never in a URL
                # that ends up in logs.
                self.problem = "IOT_SYSTEM_API_URL must not contain credentials"
            elif not username or not password:
                self.problem = "IOT_SYSTEM_API_USERNAME and IOT_SYSTEM_API_PASSWORD must be set"
        self.base_url = "" if self.problem else base_url
        self.username = username
        self._password = password
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.popup_timeout = popup_timeout
        self.check_timeout = check_timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._http = httpx.Client(
            base_url=self.base_url or "http://unconfigured.invalid",
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_settings(cls, **kwargs) -> "IoTSystemClient":
        return cls(
            settings.IOT_SYSTEM_API_URL,
            settings.IOT_SYSTEM_API_USERNAME,
            settings.IOT_SYSTEM_API_PASSWORD,
            connect_timeout=settings.IOT_SYSTEM_API_CONNECT_TIMEOUT,
            timeout=settings.IOT_SYSTEM_API_TIMEOUT,
            popup_timeout=settings.IOT_SYSTEM_API_POPUP_TIMEOUT,
            check_timeout=settings.IOT_SYSTEM_API_CHECK_TIMEOUT,
            **kwargs,
        )

    def __repr__(self):
        # Deliberately without the password or the token.
        return f"<IoTSystemClient {self.base_url or '(not configured)'} as {self.username or '-'}>"

    def close(self) -> None:
        self._http.close()

    # --- HTTP ---------------------------------------------------------------------------

    def _timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_timeout, read=read, write=read, pool=self.connect_timeout)

    def _exchange(self, method: str, path: str, *, read: float, **kwargs) -> _Answer:
        try:
            response = self._http.request(method, path, timeout=self._timeout(read), **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return _Answer(failure="connect", error=f"could not connect to the IoT system ({type(exc).__name__})")
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return _Answer(failure="connect", error=f"the IoT system's URL is not usable ({type(exc).__name__})")
        except httpx.TimeoutException:
            return _Answer(failure="timeout", error=f"no answer within {read:g} s")
        except httpx.TransportError as exc:
            return _Answer(failure="broken", error=f"the connection broke before an answer ({type(exc).__name__})")
        try:
            body = response.json()
        except ValueError:
            body = None
        return _Answer(status=response.status_code, body=body, location=response.headers.get("location", ""))

    # --- Login ----------------------------------------------------------------------------

    def _login_locked(self) -> str:
        answer = self._exchange(
            "POST", LOGIN_PATH, read=self.timeout, json={"username": self.username, "password": self._password}
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        token = body.get("token")
        if answer.status == 200 and body.get("success") is True and isinstance(token, str) and token:
            self._token = token
            logger.debug("Logged in to the IoT system at %s as %s", self.base_url, self.username)
            return token
        self._token = None
        if answer.failure:
            reason = answer.error
        elif answer.status == 200:
            reason = f"refused: {body.get('message') or 'no token'}"
        else:
            reason = f"HTTP {answer.status}" + (f": {answer.msg}" if answer.msg else "")
        raise _LoginFailed(f"login to the IoT system failed ({reason})")

    def _current_token(self) -> str:
        with self._lock:
            return self._token or self._login_locked()

    def _replace_token(self, rejected: str) -> str:
        """A new login after a refused token, unless another thread already made one."""
        with self._lock:
            if self._token and self._token != rejected:
                return self._token
            self._token = None
            return self._login_locked()

    def _get(self, path: str, params: Mapping[str, str], *, read: float) -> _Answer:
        """GET with the token; a refused token is followed by one new login and one resend."""
        token = self._current_token()
        answer = self._exchange("GET", path, read=read, params=params, headers={"Authorization": f"Bearer {token}"})
        if answer.auth_refused:
            token = self._replace_token(token)
            answer = self._exchange("GET", path, read=read, params=params, headers={"Authorization": f"Bearer {token}"})
        return answer

    # --- Ejecting a bank ------------------------------------------------------------------

    def popup(self, station_serial: str, bank_serial: str) -> EjectResult:
        """Ask the cabinet `station_serial` to eject `bank_serial`, once."""
        started = time.monotonic()

        def result(outcome: EjectOutcome, message: str, **fields) -> EjectResult:
            ejection = EjectResult(
                outcome=outcome,
                station_serial=station_serial,
                bank_serial=bank_serial,
                message=message,
                elapsed=time.monotonic() - started,
                **fields,
            )
            level = logging.INFO if ejection.known else logging.WARNING
            logger.log(
                level,
                "Ejection of bank %s at station %s: %s (%s) after %.1f s",
                bank_serial,
                station_serial,
                outcome,
                message,
                ejection.elapsed,
            )
            return ejection

        if self.problem:
            return result(EjectOutcome.UNREACHABLE, self.problem)
        try:
            answer = self._get(
                POPUP_PATH, {"rentboxSN": station_serial, "singleSN": bank_serial}, read=self.popup_timeout
            )
        except _LoginFailed as exc:
            return result(EjectOutcome.UNREACHABLE, exc.text)
        if answer.failure == "connect":
            return result(EjectOutcome.UNREACHABLE, answer.error)
        if answer.failure:
            return result(EjectOutcome.TIMEOUT, answer.error)
        status = answer.status
        if answer.auth_refused:
            return result(EjectOutcome.UNREACHABLE, "the IoT system refused a fresh login's token", http_status=status)
        if status == 408:
            text = answer.msg or "timeout"
            if "offline" in text.lower():
                return result(EjectOutcome.OFFLINE, f"the IoT system says the cabinet is offline ({text})", http_status=status)
            return result(EjectOutcome.TIMEOUT, f"the cabinet did not answer in time ({text})", http_status=status)
        data = answer.data
        if status != 200 or not isinstance(data, dict):
            detail = f"HTTP {status}" + (f": {answer.msg}" if answer.msg else "")
            return result(EjectOutcome.UNEXPECTED, f"unexpected answer from the IoT system ({detail})", http_status=status)
        slot = _int(data.get("slot"))
        cabinet_status = _int(data.get("status"))
        reported = str(data.get("powerbankSN") or "").strip()
        if reported not in ("", "0", bank_serial):
            # The IoT system keeps one pending answer per cabinet: with two ejections at one
            # cabinet at once, this may be the other one's.
            return result(
                EjectOutcome.UNEXPECTED,
                f"the cabinet answered about bank {reported}, not {bank_serial}",
                slot=slot,
                cabinet_status=cabinet_status,
                http_status=status,
            )
        if data.get("success") is True and reported == bank_serial:
            return result(
                EjectOutcome.EJECTED,
                f"ejected from slot {slot}" if slot else "ejected",
                slot=slot,
                cabinet_status=cabinet_status,
                http_status=status,
            )
        if data.get("success") is False or (cabinet_status is not None and cabinet_status != CABINET_EJECTED):
            return result(
                EjectOutcome.REFUSED,
                "the cabinet did not eject it"
                + (f" (status 0x{cabinet_status:02X})" if cabinet_status is not None else ""),
                slot=slot,
                cabinet_status=cabinet_status,
                http_status=status,
            )
        return result(EjectOutcome.UNEXPECTED, "the answer names no bank and no outcome", http_status=status)

    # --- Inventories ------------------------------------------------------------------------

    def check(self, station_serial: str) -> InventoryResult:
        """The cabinet's occupied slots, as the cabinet reads them now."""
        return self._inventory(CHECK_PATH, station_serial)

    def check_all(self, station_serial: str) -> InventoryResult:
        """Every slot of the cabinet, empty ones included."""
        return self._inventory(CHECK_ALL_PATH, station_serial)

    def _inventory(self, path: str, station_serial: str) -> InventoryResult:
        started = time.monotonic()

        def result(outcome: InventoryOutcome, message: str, **fields) -> InventoryResult:
            inventory = InventoryResult(
                outcome=outcome,
                station_serial=station_serial,
                message=message,
                elapsed=time.monotonic() - started,
                **fields,
            )
            logger.log(
                logging.INFO if inventory.ok else logging.WARNING,
                "Inventory of station %s (%s): %s (%s)",
                station_serial,
                path,
                outcome,
                message,
            )
            return inventory

        if self.problem:
            return result(InventoryOutcome.UNREACHABLE, self.problem)
        try:
            answer = self._get(path, {"deviceName": station_serial}, read=self.check_timeout)
        except _LoginFailed as exc:
            return result(InventoryOutcome.UNREACHABLE, exc.text)
        if answer.failure == "connect":
            return result(InventoryOutcome.UNREACHABLE, answer.error)
        if answer.failure:
            return result(InventoryOutcome.TIMEOUT, answer.error)
        status = answer.status
        if answer.auth_refused:
            return result(InventoryOutcome.UNREACHABLE, "the IoT system refused a fresh login's token", http_status=status)
        text = answer.msg
        if status != 200 and "offline" in text.lower():
            return result(InventoryOutcome.OFFLINE, f"the IoT system says the cabinet is offline ({text})", http_status=status)
        if status != 200 and ("time out" in text.lower() or "timeout" in text.lower() or status == 408):
            return result(InventoryOutcome.TIMEOUT, f"the cabinet did not answer in time ({text or status})", http_status=status)
        data = answer.data
        if status != 200 or not isinstance(data, list):
            detail = f"HTTP {status}" + (f": {text}" if text else "")
            return result(InventoryOutcome.UNEXPECTED, f"unexpected answer from the IoT system ({detail})", http_status=status)
        slots = tuple(sorted((report for report in map(_slot_report, data) if report), key=lambda r: r.slot))
        banks = sum(1 for report in slots if report.bank_serial)
        return result(
            InventoryOutcome.OK,
            f"{banks} bank(s) in {len(slots)} reported slot(s)",
            slots=slots,
            http_status=status,
        )


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _slot_report(item: Any) -> SlotReport | None:
    """One `Powerbank` of a /check answer; None for an entry without a slot number."""
    if not isinstance(item, dict):
        return None
    slot = _int(item.get("index"))
    if slot is None or slot < 1:
        return None
    serial = str(item.get("snAsString") or "").strip()
    number = _int(item.get("snAsInt"))
    # An empty slot is serial "0" (snAsInt 0).
    bank = serial if serial not in ("", "0") and number != 0 else None
    message = item.get("message")
    return SlotReport(
        slot=slot,
        bank_serial=bank,
        battery=_int(item.get("power")),
        status=_int(item.get("status")),
        message=message if isinstance(message, str) else "",
    )


# --- The process's client ---------------------------------------------------------------------

_client = None
_client_lock = threading.Lock()


def get_client():
    """The client of this process, built once from the settings (IOT_SYSTEM_API_CLIENT)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = import_string(settings.IOT_SYSTEM_API_CLIENT).from_settings()
        return _client


def reset_client() -> None:
    """Forget the process's client (and its login); the next call builds a new one."""
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None and hasattr(client, "close"):
        client.close()


@receiver(setting_changed)
def _settings_changed(*, setting, **kwargs):
    # override_settings in tests: a client built from the old values must not outlive them.
    if setting.startswith("IOT_SYSTEM_API_"):
        reset_client()

"""
A client that sends station messages exactly as the Java IoT management system does.

Used by `manage.py iot_send` and `manage.py simulate_stations`, and meant as the reference
the Java team can compare their sender against (docs/contract.md, sections 1 and 2):

- Log in with `POST /api/admin/login {"email", "password"}`; only HTTP 200 with both
  `data.access_token` and `data.refresh_token` counts. Log in lazily, again when the token
  is older than 55 minutes, and again whenever the data endpoint answers 401.
- `POST /api/internal/stations/data` with the headers of `wire.signed_headers`:
  `Content-Type: application/json`, `Authorization: Bearer <token>`,
  `X-Timestamp: <unix seconds>` and
  `X-Signature: base64(HMAC-SHA256(secret as UTF-8, body + timestamp))`.
- Only HTTP 200 is success. Anything else, a 15 s read timeout or a connection error is
  retried: 3 attempts in all, sleeping 2 s then 4 s, with the identical body and a fresh
  timestamp and signature. After the third failure the message is dropped.
- A 401 is answered by logging in again and resending at once; that resend belongs to the
  same attempt (docs/contract.md, "Retries"), once per attempt so a login that keeps
  producing rejected tokens cannot loop.

Only the standard library is used, so this works outside Django. The secret, the tokens and
the signatures are never logged or printed.
"""

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from iot_tools.wire import DATA_PATH, compact_json, signed_headers

logger = logging.getLogger(__name__)

LOGIN_PATH = "/api/admin/login"
# The sender logs in again this long after its last login (the token lives 60 minutes).
TOKEN_MAX_AGE_SECONDS = 55 * 60
DEFAULT_TIMEOUT = 15
DEFAULT_RETRY_SLEEPS = (2, 4)


class LoginFailed(Exception):
    """The login endpoint did not answer 200 with both tokens."""

    def __init__(self, status: int | None, data: Any, error: str = ""):
        self.status = status
        self.data = data
        self.error = error
        super().__init__(f"login failed: {describe(status, data, error)}")


@dataclass
class HttpAnswer:
    """One HTTP exchange: `status` is None when no answer came (timeout, refused, ...)."""

    status: int | None
    data: Any = None
    error: str = ""
    elapsed: float = 0.0

    @property
    def error_code(self) -> str:
        return error_code(self.data)


@dataclass
class RequestRecord:
    """One POST of the body to the data endpoint."""

    attempt: int
    timestamp: int
    status: int | None
    error_code: str = ""
    error: str = ""
    message: str = ""
    elapsed: float = 0.0
    stage: str = "data"  # "login" when the attempt failed at logging in
    logged_in_before: bool = False


@dataclass
class SendResult:
    """How one message ended: its last answer, how many attempts, and whether it was dropped."""

    status: int | None
    data: Any
    attempts: int
    dropped: bool
    requests: list[RequestRecord] = field(default_factory=list)
    logins: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error_code(self) -> str:
        if self.requests and self.requests[-1].error_code:
            return self.requests[-1].error_code
        return error_code(self.data)


def error_code(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return ""


def describe(status: int | None, data: Any, error: str = "") -> str:
    """A short human description of an answer (never contains tokens)."""
    if status is None:
        return error or "no answer"
    text = f"HTTP {status}"
    code = error_code(data)
    if code:
        text += f" {code}"
    if isinstance(data, dict) and isinstance(data.get("message"), str) and status != 200:
        text += f": {data['message']}"
    return text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The sender does not follow redirects: a 3xx is an answer like any other non-200.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def default_opener() -> urllib.request.OpenerDirector:
    """Direct connections only: no proxies from the environment, no redirects."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class IoTSender:
    """
    Sends signed bodies to one server, logging in as staff. Thread-safe: one instance can
    serve many threads and they share one login, as the Java sender's threads do.

    `session` is a urllib `OpenerDirector` (default: direct, no redirects); `clock` returns
    Unix seconds (timestamps and token age); `sleep` waits between attempts.
    """

    def __init__(
        self,
        base_url: str,
        email: str,
        password: str,
        secret: str,
        timeout: float = DEFAULT_TIMEOUT,
        retry_sleeps: Sequence[float] = DEFAULT_RETRY_SLEEPS,
        session: urllib.request.OpenerDirector | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Any] | None = None,
        *,
        timestamp_offset: int = 0,
    ):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Not an http(s) URL: {base_url!r}")
        if not secret:
            raise ValueError("The signing secret is empty.")
        self.base_url = base_url.rstrip("/")
        self.email = email
        self._password = password
        self._secret = secret
        self.timeout = timeout
        # Attempts = one more than the sleeps between them (3 attempts: 2 s, then 4 s).
        self.retry_sleeps = tuple(retry_sleeps)
        self.session = session or default_opener()
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.timestamp_offset = timestamp_offset
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._token_obtained_at: float | None = None

    def __repr__(self):
        # Deliberately without password, secret or token.
        return f"<IoTSender {self.base_url} as {self.email}>"

    @property
    def max_attempts(self) -> int:
        return len(self.retry_sleeps) + 1

    # --- HTTP -------------------------------------------------------------------------

    def _http(self, url: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
        """POST `body` and return the answer; never raises for HTTP or network failures."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        started = time.monotonic()
        try:
            with self.session.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                raw = exc.read()
            except (OSError, http.client.HTTPException):
                raw = b""  # the status is the answer; a body cut short does not change it
            finally:
                exc.close()
        except TimeoutError:  # socket.timeout is an alias of TimeoutError
            return HttpAnswer(None, error=f"read timeout after {self.timeout:g} s",
                              elapsed=time.monotonic() - started)
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                text = f"timeout after {self.timeout:g} s"
            else:
                text = f"connection error: {reason}"
            return HttpAnswer(None, error=text, elapsed=time.monotonic() - started)
        except (OSError, http.client.HTTPException) as exc:
            # http.client raises RemoteDisconnected, IncompleteRead & co. directly, not wrapped.
            return HttpAnswer(None, error=f"connection error: {exc.__class__.__name__}: {exc}",
                              elapsed=time.monotonic() - started)
        try:
            data = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            data = None
        return HttpAnswer(status, data=data, elapsed=time.monotonic() - started)

    # --- Login --------------------------------------------------------------------------

    def login(self) -> str:
        """Log in now and keep the token; raises `LoginFailed` unless 200 with both tokens."""
        with self._lock:
            return self._login_locked()

    def _login_locked(self) -> str:
        body = compact_json({"email": self.email, "password": self._password})
        answer = self._http(
            self.base_url + LOGIN_PATH,
            body,
            {"Content-Type": "application/json", "Accept": "application/json"},
        )
        data = answer.data.get("data") if isinstance(answer.data, dict) else None
        if (
            answer.status != 200
            or not isinstance(data, dict)
            or not data.get("access_token")
            or not data.get("refresh_token")
        ):
            # The answer of a failed login carries no token; it is safe to keep and show.
            raise LoginFailed(answer.status, answer.data, answer.error)
        self._access_token = data["access_token"]
        self._token_obtained_at = self.clock()
        logger.debug("Logged in to %s as %s", self.base_url, self.email)
        return self._access_token

    def _token_is_fresh(self) -> bool:
        return (
            self._access_token is not None
            and self._token_obtained_at is not None
            and self.clock() - self._token_obtained_at < TOKEN_MAX_AGE_SECONDS
        )

    def _current_token(self) -> tuple[str, bool]:
        """The token to use, logging in first when there is none or it is 55 minutes old."""
        with self._lock:
            if self._token_is_fresh():
                return self._access_token, False
            return self._login_locked(), True

    def _replace_rejected_token(self, rejected: str) -> tuple[str, bool]:
        """Log in again after a 401, unless another thread already replaced that token."""
        with self._lock:
            if self._access_token != rejected and self._token_is_fresh():
                return self._access_token, False
            return self._login_locked(), True

    # --- Sending ------------------------------------------------------------------------

    def _post_data(self, body: bytes, token: str) -> tuple[int, HttpAnswer]:
        timestamp = int(self.clock()) + self.timestamp_offset
        headers = signed_headers(self._secret, body, timestamp, authorization=f"Bearer {token}")
        return timestamp, self._http(self.base_url + DATA_PATH, body, headers)

    def send(
        self,
        body: bytes,
        *,
        on_request: Callable[[RequestRecord], Any] | None = None,
    ) -> SendResult:
        """
        Deliver `body` (bytes, sent exactly as given) with the sender's retry rules.

        `on_request` is called after every request (data or failed login) with its record,
        so a caller can report attempts as they happen.
        """
        if not isinstance(body, bytes | bytearray):
            raise TypeError("body must be bytes; use compact_json() to serialize a payload")
        body = bytes(body)
        records: list[RequestRecord] = []
        logins = 0
        last = HttpAnswer(None, error="not sent")

        def record(entry: RequestRecord) -> None:
            records.append(entry)
            if on_request is not None:
                on_request(entry)

        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                self.sleep(self.retry_sleeps[attempt - 2])
            try:
                token, fresh_login = self._current_token()
                logins += fresh_login
            except LoginFailed as exc:
                last = HttpAnswer(exc.status, data=exc.data, error=exc.error)
                record(self._record(attempt, int(self.clock()), last, stage="login"))
                continue
            timestamp, last = self._post_data(body, token)
            record(self._record(attempt, timestamp, last, logged_in=fresh_login))
            if last.status == 401 and not fresh_login:
                # The token was refused (expired, server restarted with a new key, ...):
                # log in again and resend at once, within this attempt.
                try:
                    token, relogged = self._replace_rejected_token(token)
                    logins += relogged
                except LoginFailed as exc:
                    last = HttpAnswer(exc.status, data=exc.data, error=exc.error)
                    record(self._record(attempt, int(self.clock()), last, stage="login"))
                    continue
                timestamp, last = self._post_data(body, token)
                record(self._record(attempt, timestamp, last, logged_in=relogged))
            if last.status == 200:
                return SendResult(
                    status=200,
                    data=last.data,
                    attempts=attempt,
                    dropped=False,
                    requests=records,
                    logins=logins,
                )
        logger.debug(
            "Dropped a %d-byte message after %d attempts: %s",
            len(body),
            self.max_attempts,
            describe(last.status, last.data, last.error),
        )
        return SendResult(
            status=last.status,
            data=last.data,
            attempts=self.max_attempts,
            dropped=True,
            requests=records,
            logins=logins,
        )

    @staticmethod
    def _record(
        attempt: int, timestamp: int, answer: HttpAnswer, *, stage: str = "data", logged_in: bool = False
    ) -> RequestRecord:
        message = answer.data.get("message", "") if isinstance(answer.data, dict) else ""
        return RequestRecord(
            attempt=attempt,
            timestamp=timestamp,
            status=answer.status,
            error_code=answer.error_code,
            error=answer.error,
            message=message if isinstance(message, str) else "",
            elapsed=answer.elapsed,
            stage=stage,
            logged_in_before=logged_in,
        )


# --- Command-line helpers shared by iot_send and simulate_stations ------------------------

DEFAULT_URL = "http://127.0.0.1:8000"


def add_sender_arguments(parser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    parser.add_argument("--email", default=None, help="staff login (default: $IOT_SEND_EMAIL)")
    parser.add_argument("--password", default=None, help="its password (default: $IOT_SEND_PASSWORD)")
    parser.add_argument(
        "--secret",
        default=None,
        help="HMAC secret (default: $IOT_SYSTEM_SIGNATURE_SECRET, then the server's setting)",
    )


def sender_from_options(
    options: dict,
    *,
    default_secret: Callable[[], str] = lambda: "",
    factory: Callable[..., IoTSender] = IoTSender,
    **kwargs,
) -> IoTSender:
    """
    Build an `IoTSender` from --url/--email/--password/--secret, falling back to the
    environment and, for the secret, to `default_secret()` (asked only when neither gave
    one). Raises ValueError with a message fit for the user when something is missing.
    """
    email = options.get("email") or os.environ.get("IOT_SEND_EMAIL")
    password = options.get("password") or os.environ.get("IOT_SEND_PASSWORD")
    secret = options.get("secret") or os.environ.get("IOT_SYSTEM_SIGNATURE_SECRET") or default_secret()
    missing = [
        name
        for name, value in (
            ("--email or $IOT_SEND_EMAIL", email),
            ("--password or $IOT_SEND_PASSWORD", password),
            ("--secret or $IOT_SYSTEM_SIGNATURE_SECRET", secret),
        )
        if not value
    ]
    if missing:
        raise ValueError("Missing " + ", ".join(missing) + ".")
    return factory(options.get("url") or DEFAULT_URL, email, password, secret, **kwargs)

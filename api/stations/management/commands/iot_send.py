"""
Send one message file to the station data endpoint exactly as the Java sender would.

    manage.py iot_send contrib/messages/full.json --url http://127.0.0.1:8000 \
        --email admin@chargeghar.local --password ... --secret ...

The file is re-serialized compactly in its own key order (or, with --raw, sent byte for
byte), signed, and delivered with the sender's login and retry rules (iot_tools/client.py).
Each attempt is printed, then the final answer. Exit status 0 on HTTP 200, 1 otherwise.
"""

import hashlib
import json
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from iot_tools.client import IoTSender, RequestRecord, add_sender_arguments, describe, sender_from_options
from iot_tools.wire import DATA_PATH, compact_json


def configured_secret() -> str:
    """The server's own signing secret, the last fallback for --secret."""
    return getattr(settings, "IOT_SYSTEM_SIGNATURE_SECRET", "")


class Command(BaseCommand):
    help = (
        "Send a JSON message file (or - for standard input) to /api/internal/stations/data, "
        "signed and retried exactly as the Java IoT sender does. Exit status 0 on HTTP 200."
    )

    # Tests replace this to inject a clock or a sleep; it must accept IoTSender's arguments.
    sender_class = IoTSender

    def add_arguments(self, parser):
        parser.add_argument("file", help="JSON file to send, or - to read standard input")
        add_sender_arguments(parser)
        parser.add_argument(
            "--raw",
            action="store_true",
            help="send the file's bytes exactly as they are (default: compact JSON in the file's key order)",
        )
        parser.add_argument(
            "--fresh-timestamp",
            action="store_true",
            help="set the body's top-level \"timestamp\" to now (a new body, not a repeat)",
        )
        parser.add_argument(
            "--no-retry", action="store_true", help="one attempt only (the sender makes three)"
        )
        parser.add_argument(
            "--timestamp-offset",
            type=int,
            default=0,
            metavar="SECONDS",
            help="shift X-Timestamp by this many seconds (to try the server's tolerance)",
        )

    def handle(self, *args, file, raw=False, fresh_timestamp=False, no_retry=False,
               timestamp_offset=0, **options):
        body = self._body(file, raw=raw, fresh_timestamp=fresh_timestamp)
        try:
            sender = sender_from_options(
                options,
                retry_sleeps=() if no_retry else (2, 4),
                timestamp_offset=timestamp_offset,
                default_secret=configured_secret,
                factory=self.sender_class,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        self.stdout.write(f"POST {sender.base_url}{DATA_PATH} as {sender.email}")
        self.stdout.write(
            f"body: {len(body)} bytes, SHA-256 {hashlib.sha256(body).hexdigest()} "
            f"({self._describe_body(body)})"
        )
        if timestamp_offset:
            self.stdout.write(f"X-Timestamp shifted by {timestamp_offset:+d} s")
        result = sender.send(body, on_request=self._print_request)

        if result.data is not None:
            self.stdout.write(json.dumps(result.data, indent=2, ensure_ascii=False))
        if result.ok:
            self.stdout.write(
                self.style.SUCCESS(
                    f"HTTP 200 after {result.attempts} attempt{'s' if result.attempts > 1 else ''}"
                )
            )
            return
        raise CommandError(
            f"Dropped after {result.attempts} attempt{'s' if result.attempts > 1 else ''}: "
            f"{describe(result.status, result.data, result.requests[-1].error if result.requests else '')}",
            returncode=1,
        )

    def _print_request(self, record: RequestRecord) -> None:
        if record.logged_in_before:
            self.stdout.write("  (logged in)")
        text = f"attempt {record.attempt}: "
        if record.stage == "login":
            text += "login failed: "
        text += f"HTTP {record.status}" if record.status is not None else record.error
        if record.error_code:
            text += f" {record.error_code}"
        if record.message and record.status != 200:
            text += f": {record.message}"
        if record.stage == "data":
            text += f"  [X-Timestamp {record.timestamp}, {record.elapsed * 1000:.0f} ms]"
        style = self.style.SUCCESS if record.status == 200 else self.style.WARNING
        self.stdout.write(style(text))

    def _body(self, file: str, *, raw: bool, fresh_timestamp: bool) -> bytes:
        try:
            if file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(file, "rb") as handle:
                    data = handle.read()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}") from None
        if raw:
            if fresh_timestamp:
                raise CommandError("--fresh-timestamp changes the body; it cannot go with --raw.")
            return data
        try:
            # json keeps the file's key order, which is what the body is signed over.
            payload = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"{file} is not UTF-8 JSON ({exc}); use --raw to send it anyway.") from None
        if fresh_timestamp:
            if not isinstance(payload, dict) or "timestamp" not in payload:
                raise CommandError("--fresh-timestamp needs a JSON object with a \"timestamp\" key.")
            payload["timestamp"] = int(time.time())
        return compact_json(payload)

    @staticmethod
    def _describe_body(body: bytes) -> str:
        try:
            payload = json.loads(body)
        except ValueError:
            return "not JSON"
        if not isinstance(payload, dict):
            return "not a JSON object"
        device = payload.get("device") if isinstance(payload.get("device"), dict) else {}
        return f"type {payload.get('type')!r}, station {device.get('serial_number')!r}"

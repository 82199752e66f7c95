"""
HMAC-SHA256 request signatures shared with the Java IoT management system.

The sender signs `body + str(timestamp)` (the exact body string with the decimal Unix
timestamp appended, no separator) with the shared secret as UTF-8, and sends the digest as
standard Base64 with padding (44 characters). We verify over the raw bytes we received,
never over re-serialized JSON. The signature itself is `iot_tools.wire.sign`, the one the
reference sender uses too.
"""

import hmac
import time
from collections.abc import Iterable

from django.conf import settings

from iot_tools.wire import sign


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class SignChargeGharMain:
    """Generate and check signatures with the current secret and any previous ones."""

    def __init__(self, secret_key: str | None = None, previous_secrets: Iterable[str] | None = None):
        self.secret_key = secret_key or settings.IOT_SYSTEM_SIGNATURE_SECRET
        if not self.secret_key:
            raise ValueError("Signature secret key not configured in settings")
        if previous_secrets is None:
            # Only the configured secret rotates; an explicit key stands alone.
            previous_secrets = (
                () if secret_key else settings.IOT_SYSTEM_SIGNATURE_PREVIOUS_SECRETS
            )
        self._keys = [_as_bytes(self.secret_key)] + [
            _as_bytes(s) for s in previous_secrets if s and s != self.secret_key
        ]

    def generate_signature(self, payload: str | bytes, timestamp: int) -> str:
        """Base64 HMAC-SHA256 of `payload + timestamp` with the current secret."""
        return sign(self._keys[0], payload, timestamp)

    def validate_signature(
        self,
        payload: str | bytes,
        timestamp: int,
        received_signature: str,
        time_tolerance: int = 300,
    ) -> tuple[bool, str]:
        """
        Check freshness (both ways) and the signature against every accepted secret.

        Returns `(True, "")` or `(False, reason)`; the reason is safe to show the sender.
        """
        time_diff = self.get_current_timestamp() - int(timestamp)
        if time_diff > time_tolerance:
            return False, f"Request timestamp too old ({time_diff}s > {time_tolerance}s allowed)"
        if -time_diff > time_tolerance:
            return (
                False,
                f"Request timestamp too far in the future ({-time_diff}s > {time_tolerance}s allowed)",
            )
        # "surrogatepass" encodes any str, lone surrogates included, so garbage is a
        # mismatch rather than an exception; it can never equal the ASCII expected value.
        received = str(received_signature).encode("utf-8", "surrogatepass")
        # Compare against every key without stopping early, in constant time per key.
        matched = False
        for key in self._keys:
            expected = sign(key, payload, timestamp).encode("ascii")
            matched |= hmac.compare_digest(expected, received)
        if not matched:
            return False, "Signature mismatch"
        return True, ""

    @staticmethod
    def get_current_timestamp() -> int:
        """Current Unix time in whole seconds."""
        return int(time.time())


def get_signature_util() -> SignChargeGharMain:
    """A signer for the configured secrets (built per call, so settings changes apply)."""
    return SignChargeGharMain()

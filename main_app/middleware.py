"""
Transport security for the IoT endpoints under /api/internal/ (docs/contract.md, section 3, and docs/design.md, Security).

Checks, in order: source IP allowlist, signature headers, a plain-integer timestamp, the
content type, the body size (from Content-Length, before a byte is read), then freshness
and the HMAC over the raw body. Bearer-token authentication and validation come after, in
the view. Rejections use the API envelope and never log the signature or the token.
"""

import ipaddress
import logging
import re
import time
from functools import lru_cache

from django.conf import settings

from api.stations.services.utils.sign_chargeghar_main import get_signature_util
from main_app import metrics
from main_app.exceptions import (
    ApiError,
    InvalidContentType,
    InvalidRequest,
    InvalidSignature,
    InvalidTimestamp,
    IpNotAllowed,
    MissingHeaders,
    PayloadTooLarge,
    json_error,
)

logger = logging.getLogger(__name__)

PROTECTED_PREFIX = "/api/internal"
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")


@lru_cache(maxsize=32)
def _networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


# The same few addresses (the sender, the proxies) arrive on every request; parsing one is
# a noticeable part of the checks' cost. Bounded, so junk in X-Forwarded-For cannot grow it.
@lru_cache(maxsize=1024)
def _parse_ip(value: str):
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def _in(address, networks) -> bool:
    return address is not None and any(address in network for network in networks)


def client_ip(request) -> str | None:
    """
    The address of the client as far as we can trust it.

    X-Forwarded-For is believed only when the peer is a configured proxy, and then only
    back to the first hop that is not itself a trusted proxy.
    """
    peer = _parse_ip(request.META.get("REMOTE_ADDR", ""))
    proxies = _networks(tuple(settings.IOT_TRUSTED_PROXIES))
    if peer is None or not _in(peer, proxies):
        return str(peer) if peer else None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for hop in reversed([part for part in forwarded.split(",") if part.strip()]):
        address = _parse_ip(hop)
        if address is None:
            return None  # a garbled chain cannot be trusted
        if not _in(address, proxies):
            return str(address)
    return str(peer)


def address_in(ip: str | None, entries) -> bool:
    """Whether an address (as `client_ip` gives it) is in a list of addresses or CIDR ranges."""
    return _in(_parse_ip(ip or ""), _networks(tuple(entries)))


def is_protected_path(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class IoTSignatureValidationMiddleware:
    """Guards every path under /api/internal/, with or without a trailing slash."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_protected_path(request.path_info):
            try:
                self.check(request)
            except ApiError as exc:
                logger.warning(
                    "Rejected %s from %s: %s",
                    request.path_info,
                    getattr(request, "iot_client_ip", None),
                    exc.code,
                )
                metrics.rejection(exc.code)
                return json_error(exc)
        return self.get_response(request)

    def check(self, request) -> None:
        ip = client_ip(request)
        request.iot_client_ip = ip
        allowed = settings.IOT_SYSTEM_ALLOWED_IPS
        if allowed and not _in(_parse_ip(ip or ""), _networks(tuple(allowed))):
            raise IpNotAllowed()

        verify = settings.IOT_SIGNATURE_VERIFICATION
        signature = request.META.get("HTTP_X_SIGNATURE", "")
        timestamp_text = request.META.get("HTTP_X_TIMESTAMP", "")
        if verify:
            if not signature or not timestamp_text:
                raise MissingHeaders()
            if not _TIMESTAMP_RE.fullmatch(timestamp_text):
                raise InvalidTimestamp()
            # Before the HMAC, so that a clock far enough off to be refused is seen too.
            metrics.clock_skew(int(timestamp_text) - time.time())

        if request.content_type != "application/json":
            raise InvalidContentType()
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise InvalidRequest("Invalid Content-Length.")
        if length > settings.IOT_MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"The request body is larger than {settings.IOT_MAX_BODY_BYTES} bytes."
            )

        if not verify:
            return
        body = request.body
        ok, reason = get_signature_util().validate_signature(
            payload=body,
            timestamp=int(timestamp_text),
            received_signature=signature,
            time_tolerance=settings.IOT_SIGNATURE_TOLERANCE_SECONDS,
        )
        if not ok:
            raise InvalidSignature(f"Signature validation failed: {reason}")

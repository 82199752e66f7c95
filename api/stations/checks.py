"""
System checks for the IoT integration (docs/design.md, Security), with stable ids.

Errors stop `manage.py check --deploy` and gunicorn start-up scripts that run checks; they
apply only with DEBUG off, where a weak secret or disabled verification is a breach.
"""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

MIN_SECRET_LENGTH = 32
PLACEHOLDERS = {
    "change-me-to-a-long-random-secret",
    "your-strong-secret-key-min-32-chars-here-change-me",
    "your-production-secret-key-here-min-32-chars",
}


# No test mode here: the test settings (main_app/settings_test.py) run without a secret and
# without verification, as the seed's tests need, and silence exactly those messages by id
# with SILENCED_SYSTEM_CHECKS, Django's own switch for that.
@register(Tags.security)
def check_iot_security(app_configs=None, **kwargs):
    """The IoT security rules; empty with DEBUG on."""
    if settings.DEBUG:
        return []
    messages = []
    secret = settings.IOT_SYSTEM_SIGNATURE_SECRET or ""
    if not secret:
        messages.append(
            Error(
                "IOT_SYSTEM_SIGNATURE_SECRET is not set.",
                hint="Set it to the secret shared with the IoT system (32+ random characters).",
                id="iot.E001",
            )
        )
    elif secret in PLACEHOLDERS:
        messages.append(
            Error(
                "IOT_SYSTEM_SIGNATURE_SECRET is still the example placeholder.",
                hint="Generate a real secret, e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'.",
                id="iot.E002",
            )
        )
    elif len(secret) < MIN_SECRET_LENGTH:
        messages.append(
            Error(
                f"IOT_SYSTEM_SIGNATURE_SECRET is shorter than {MIN_SECRET_LENGTH} characters.",
                hint="Use at least 32 random characters.",
                id="iot.E003",
            )
        )
    if not settings.IOT_SIGNATURE_VERIFICATION:
        messages.append(
            Error(
                "IoT signature verification is turned off (IOT_SIGNATURE_VERIFICATION=false).",
                hint="Anyone could then write station data; turn it on in production.",
                id="iot.E004",
            )
        )
    if not settings.IOT_SYSTEM_ALLOWED_IPS:
        messages.append(
            Warning(
                "IOT_SYSTEM_ALLOWED_IPS is empty: any address may call /api/internal/.",
                hint="List the IoT system's addresses or CIDR ranges.",
                id="iot.W001",
            )
        )
    return messages

import gc
import os

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver
from django.utils.http import parse_header_parameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings")

django_application = get_wsgi_application()


def refuse_insecure_configuration() -> None:
    """
    With DEBUG off, stop here if a security system check reports an error (the IoT checks
    iot.E001-E004: no, a placeholder or a short signing secret, or verification off).

    The exception stops the gunicorn worker while it boots, and gunicorn then exits
    non-zero with the message in its log ("Worker failed to boot") instead of serving.
    Checks silenced by SILENCED_SYSTEM_CHECKS stay silenced, as in `manage.py check`.
    """
    if settings.DEBUG:
        return
    errors = [
        message
        for message in checks.run_checks(tags=[checks.Tags.security])
        if message.is_serious() and not message.is_silenced()
    ]
    if errors:
        found = "; ".join(f"{message.id}: {message.msg}" for message in errors)
        raise ImproperlyConfigured(f"Refusing to start with an insecure configuration: {found}")


refuse_insecure_configuration()

# Everything loaded by now (Django, the apps, the URLconf and the views it imports) lives as
# long as the process. Freezing it keeps the garbage collector from walking those ~100,000
# objects again in every full collection: a full collection stalled a worker for up to 80 ms
# (docs/performance.md), now it only looks at what requests left behind.
get_resolver().url_patterns  # noqa: B018 - imports every view now rather than on first use
gc.freeze()


def application(environ, start_response):
    """
    Django's WSGI application, with one guard in front.

    Django 5.2 raises while building the request when a Content-Type parameter uses an
    RFC 2231 encoding Python does not know (e.g. `charset*=bogus''x`; Django ticket 36991),
    which no view or middleware can catch: the client would get a bare 500. Refuse such a
    header here with the API's envelope instead.
    """
    from main_app.exceptions import InvalidContentType, wsgi_error

    try:
        parse_header_parameters(environ.get("CONTENT_TYPE", ""))
    except ValueError:
        return wsgi_error(InvalidContentType("The Content-Type header cannot be parsed."), start_response)
    return django_application(environ, start_response)


import os

from django.core.wsgi import get_wsgi_application
from django.utils.http import parse_header_parameters

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "main_app.settings")

django_application = get_wsgi_application()


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


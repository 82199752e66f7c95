from django.conf import settings
from rest_framework.parsers import JSONParser

from main_app.exceptions import InvalidJson, PayloadTooLarge


class LimitedJSONParser(JSONParser):
    """JSON parser that refuses oversized bodies before reading them."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request else 0
        except ValueError:
            length = 0
        if length > settings.API_MAX_BODY_BYTES:
            raise PayloadTooLarge()
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # Deep nesting fits easily under the size limit; DRF only catches ValueError.
            raise InvalidJson("The body is nested too deeply.") from None
        if not isinstance(data, dict):
            raise InvalidJson("The body must be a JSON object.")
        return data

"""
POST /api/internal/stations/data: the IoT management system's only write path.

Transport checks (IP, signature, content type, size) happened in
`main_app.middleware.IoTSignatureValidationMiddleware`. DRF then checks the bearer token
and the push permission (`CanPushStationData`), and `ingest.delivery.deliver` does the
rest: log, validate, apply, settle. A refusal by DRF's checks is logged too (`refuse`): it is an answer the
sender got.
"""

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import APIException
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from api.stations.ingest.delivery import deliver, refuse
from api.stations.openapi import (
    REQUEST_EXAMPLES,
    SIGNATURE_HEADERS,
    STATION_DATA_RESPONSES,
    StationMessage,
)
from main_app.exceptions import to_api_error

# The permission the sender's account needs, and the group the stations migration 0004
# creates with it; superusers have it too.
PUSH_STATION_DATA = "stations.push_station_data"
IOT_SYSTEM_GROUP = "IoT system"


class CanPushStationData(BasePermission):
    """An active staff account with `stations.push_station_data` (the "IoT system" group)."""

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_staff and user.has_perm(PUSH_STATION_DATA))


class JsonWhateverTheAcceptHeader(BaseContentNegotiation):
    """
    The sender is a machine that reads JSON answers only: the endpoint answers JSON whatever
    its Accept header says, and does not parse the header (DRF's documented way to ignore
    the client, IgnoreClientContentNegotiation). With DRF's default a stray `Accept:
    text/html` would make a valid message a 406 and leave it unapplied.
    """

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _source_ip(request) -> str | None:
    # The middleware worked out the client's address (behind trusted proxies, the forwarded one).
    return getattr(request._request, "iot_client_ip", None) or request.META.get("REMOTE_ADDR")


class StationDataInternalView(APIView):
    """Receives `full`, `returned` and `status` messages (docs/contract.md)."""

    permission_classes = [IsAuthenticated, CanPushStationData]
    # Declared for the schema only: the body is read raw (it was signed as bytes) and
    # decoded once by the ingest pipeline; request.data is never touched.
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonWhateverTheAcceptHeader

    def initial(self, request, *args, **kwargs):
        try:
            super().initial(request, *args, **kwargs)
        except APIException as exc:
            refuse(body=request.body, source_ip=_source_ip(request), error=to_api_error(exc))
            raise

    @extend_schema(
        operation_id="station_data",
        summary="Receive a message from the IoT management system",
        description=(
            "Signed JSON from the IoT system: `full`, `returned` or `status`. Checks run in "
            "this order: IP allowlist, signature headers and HMAC, bearer token (a staff account "
            "with the push permission), "
            "validation, processing. Idempotent by the SHA-256 of the body: a repeated body "
            "is answered with the original response and not applied again."
        ),
        request=StationMessage,
        responses=STATION_DATA_RESPONSES,
        parameters=SIGNATURE_HEADERS,
        examples=REQUEST_EXAMPLES,
        tags=["internal"],
    )
    def post(self, request):
        answer = deliver(body=request.body, source_ip=_source_ip(request))
        return Response(answer.body, status=answer.status, headers=answer.headers)


@extend_schema(exclude=True)
class StationDataInternalSlashView(StationDataInternalView):
    """The same endpoint with a trailing slash (not redirected: redirecting a POST loses it)."""

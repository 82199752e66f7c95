"""
POST /api/internal/stations/data: the IoT management system's only write path.

Transport checks (IP, signature, content type, size) happened in
`main_app.middleware.IoTSignatureValidationMiddleware`. Here, in order: the delivery is
logged, the bearer token and staff permission are checked, then the body is validated and
applied by `events.process`. Every answer, success or failure, is written back to the log.
"""

import logging

from drf_spectacular.utils import extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from api.stations.openapi import (
    REQUEST_EXAMPLES,
    SIGNATURE_HEADERS,
    STATION_DATA_RESPONSES,
    StationMessage,
)
from api.stations.services import events
from main_app.exceptions import ApiError, error_response, to_api_error

logger = logging.getLogger(__name__)


class StationDataInternalView(APIView):
    """Receives `full`, `returned` and `status` messages (DESIGN sections 2-4)."""

    permission_classes = [IsAuthenticated, IsAdminUser]
    # Declared for the schema only: the body is read raw (it was signed as bytes) and
    # decoded once by the event log; request.data is never touched.
    parser_classes = [JSONParser]
    delivery: events.Delivery | None = None

    def initial(self, request, *args, **kwargs):
        # Logged before authentication: a 401 or 403 is an answer the sender got, too.
        self.delivery = events.receive(
            body=request.body,
            source_ip=getattr(request._request, "iot_client_ip", None)
            or request.META.get("REMOTE_ADDR"),
        )
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="station_data",
        summary="Receive a message from the IoT management system",
        description=(
            "Signed JSON from the IoT system: `full`, `returned` or `status`. Checks run in "
            "this order: IP allowlist, signature headers and HMAC, bearer token (staff), "
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
        status_code, body = events.process(self.delivery)
        return Response(body, status=status_code)

    def handle_exception(self, exc):
        error = to_api_error(exc)
        delivery = self.delivery
        if delivery is not None:
            if error.code == "INTERNAL_ERROR":
                # The client learns only where to look; operators find the traceback there.
                error = ApiError(
                    f"Unexpected error; the event log has the details under event {delivery.event.pk}."
                )
            response = error_response(error)
            events.finish(
                delivery,
                http_status=error.status_code,
                response=error.payload(),
                exc=exc if error.status_code >= 500 else error,
            )
            delivery.recorded = True
            return response
        return error_response(error)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self.delivery is not None and not self.delivery.recorded:
            events.finish(self.delivery, http_status=response.status_code, response=response.data)
        return response


@extend_schema(exclude=True)
class StationDataInternalSlashView(StationDataInternalView):
    """The same endpoint with a trailing slash (not redirected: redirecting a POST loses it)."""

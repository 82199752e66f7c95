"""Schema pieces shared by every API: the error envelope."""

from typing import Any, Literal

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from pydantic import BaseModel, Field


class ErrorEnvelope(BaseModel):
    """Every failure, whatever the endpoint."""

    success: Literal[False]
    message: str = Field(description="A sentence for people; never exception text.")
    error: str = Field(description="Stable code, e.g. VALIDATION_ERROR, INVALID_SIGNATURE.")
    errors: dict[str, Any] | None = Field(
        default=None, description="Field -> messages, for VALIDATION_ERROR only."
    )


def error_response(description: str, code: str, message: str, status_code: int) -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorEnvelope,
        description=description,
        examples=[
            OpenApiExample(
                code,
                value={"success": False, "message": message, "error": code},
                response_only=True,
                status_codes=[str(status_code)],
            )
        ],
    )

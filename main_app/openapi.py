"""Schema pieces shared by every API: the error envelope."""

from typing import Any, Literal

from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from pydantic import BaseModel, Field

from main_app.exceptions import ERROR_CODES, ApiError, ValidationFailed


class ErrorEnvelope(BaseModel):
    """Every failure, whatever the endpoint."""

    success: Literal[False]
    message: str = Field(description="A sentence for people; never exception text.")
    error: str = Field(
        description="Stable code (docs/contract.md says when each is sent).",
        json_schema_extra={"enum": sorted(ERROR_CODES)},
    )
    errors: dict[str, Any] | None = Field(
        default=None, description=f"Field -> messages, for {ValidationFailed.code} only."
    )


def error_response(description: str, error: type[ApiError], message: str | None = None) -> OpenApiResponse:
    """A documented failure: the code and status are the error class's, the message an example."""
    return OpenApiResponse(
        response=ErrorEnvelope,
        description=description,
        examples=[
            OpenApiExample(
                error.code,
                value={"success": False, "message": message or error.default_message, "error": error.code},
                response_only=True,
                status_codes=[str(error.status_code)],
            )
        ],
    )

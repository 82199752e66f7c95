from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from api.users import services
from api.users.serializers import (
    AdminLoginDataSerializer,
    AdminLoginSerializer,
    AdminUserSerializer,
    EmptyDataSerializer,
    TokenRefreshDataSerializer,
    TokenRefreshRequestSerializer,
)
from main_app.exceptions import (
    InvalidCredentials,
    NotAuthenticated,
    PayloadTooLarge,
    PermissionDenied,
    TooManyAttempts,
    ValidationFailed,
)
from main_app.openapi import error_response
from main_app.parsers import LimitedJSONParser


def _envelope(name, data_serializer):
    return inline_serializer(
        name=name,
        fields={
            "success": serializers.BooleanField(),
            "message": serializers.CharField(),
            "data": data_serializer,
        },
    )


def _user_data(user) -> dict:
    return {
        "id": user.pk,
        "email": user.email,
        "username": user.username,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
    }


class AdminLoginView(APIView):
    """Log in as staff with email and password; answers a JWT pair (used by the IoT sender)."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=AdminLoginSerializer,
        responses={
            200: _envelope("AdminLoginResponse", AdminLoginDataSerializer()),
            400: error_response("Malformed body.", ValidationFailed),
            401: error_response(
                "Wrong email or password, an inactive account or one that is not staff: "
                "the same answer for each.",
                InvalidCredentials,
            ),
            413: error_response("Body too large.", PayloadTooLarge),
            429: error_response(
                "Too many failed logins for this account from this address: refused, even with "
                "the right password, until the cool-off ends (`Retry-After`, in seconds).",
                TooManyAttempts,
            ),
        },
        tags=["admin auth"],
    )
    def post(self, request):
        serializer = AdminLoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # Django's request, not DRF's wrapper: django-axes marks it, and its middleware reads it.
        user = services.authenticate_admin(request._request, **serializer.validated_data)
        tokens = services.issue_tokens(user)
        return Response(
            {
                "success": True,
                "message": "Admin login successful",
                "data": {
                    "user_id": user.pk,
                    **tokens,
                    "user": _user_data(user),
                },
            }
        )


class AdminTokenRefreshView(APIView):
    """Exchange a refresh token for a new access token and a new refresh token; the old one is revoked."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=TokenRefreshRequestSerializer,
        responses={
            200: _envelope("TokenRefreshResponse", TokenRefreshDataSerializer()),
            400: error_response("Malformed body.", ValidationFailed),
            401: error_response(
                "Invalid, expired or revoked refresh token (a used one, or one issued before a "
                "password change): log in again.",
                NotAuthenticated,
                services.INVALID_REFRESH,
            ),
            403: error_response("Not a staff account.", PermissionDenied, "This account has no admin access."),
        },
        tags=["admin auth"],
    )
    def post(self, request):
        serializer = TokenRefreshRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.refresh_tokens(**serializer.validated_data)
        return Response({"success": True, "message": "Token refreshed", "data": tokens})


class AdminLogoutView(APIView):
    """Revoke a refresh token; access tokens issued with it still work until they expire."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=TokenRefreshRequestSerializer,
        responses={
            200: _envelope("AdminLogoutResponse", EmptyDataSerializer()),
            400: error_response("Malformed body.", ValidationFailed),
            401: error_response(
                "Invalid, expired or already revoked refresh token.",
                NotAuthenticated,
                services.INVALID_REFRESH,
            ),
        },
        tags=["admin auth"],
    )
    def post(self, request):
        serializer = TokenRefreshRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.revoke_refresh_token(**serializer.validated_data)
        return Response({"success": True, "message": "Logged out", "data": {}})


class AdminMeView(APIView):
    """The staff user the bearer token belongs to (lets a client check its token)."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: _envelope("AdminMeResponse", AdminUserSerializer())}, tags=["admin auth"])
    def get(self, request):
        return Response(
            {
                "success": True,
                "message": "Authenticated",
                "data": _user_data(request.user),
            }
        )

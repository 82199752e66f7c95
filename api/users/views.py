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
    TokenRefreshDataSerializer,
    TokenRefreshRequestSerializer,
)
from main_app.exceptions import (
    InvalidCredentials,
    NotAuthenticated,
    PayloadTooLarge,
    PermissionDenied,
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
                "Wrong email or password (the same answer for both), or an inactive account.",
                InvalidCredentials,
            ),
            403: error_response("Not a staff account.", PermissionDenied, "This account has no admin access."),
            413: error_response("Body too large.", PayloadTooLarge),
        },
        tags=["admin auth"],
    )
    def post(self, request):
        serializer = AdminLoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.authenticate_admin(**serializer.validated_data)
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
    """Exchange a refresh token for a new access token."""

    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [LimitedJSONParser]

    @extend_schema(
        request=TokenRefreshRequestSerializer,
        responses={
            200: _envelope("TokenRefreshResponse", TokenRefreshDataSerializer()),
            400: error_response("Malformed body.", ValidationFailed),
            401: error_response(
                "Invalid or expired refresh token: log in again.",
                NotAuthenticated,
                "The refresh token is invalid or expired.",
            ),
        },
        tags=["admin auth"],
    )
    def post(self, request):
        serializer = TokenRefreshRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        access = services.refresh_access_token(**serializer.validated_data)
        return Response(
            {"success": True, "message": "Token refreshed", "data": {"access_token": access}}
        )


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

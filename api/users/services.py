"""Admin authentication for the IoT sender and other API clients: login, refresh, logout."""

import logging

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth import authenticate, get_user_model
from django.db import transaction
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.utils import get_md5_hash_password

from api.users.lockout import too_many_attempts
from main_app.exceptions import InvalidCredentials, NotAuthenticated, PermissionDenied

logger = logging.getLogger(__name__)
User = get_user_model()

INVALID_REFRESH = "The refresh token is invalid, expired or revoked."


def authenticate_admin(request, *, email: str, password: str):
    """
    Return the active staff user with this email and password.

    `request` is Django's HttpRequest: django-axes, the first authentication backend,
    refuses a locked-out account and address before any password is hashed, and counts
    every failure. An unknown email, a wrong password, an inactive account and a non-staff
    account all get the same error (api.users.backends.StaffEmailBackend).
    """
    user = authenticate(request, email=email, password=password)
    if getattr(request, "axes_locked_out", False):
        # Either locked before this attempt or by this failure.
        raise too_many_attempts(request, {"email": email})
    if user is None:
        raise InvalidCredentials()
    # Django's login() would reset the failures through the user_logged_in signal; the API
    # keeps no session, and that signal would also create one and write last_login.
    AxesProxyHandler.get_implementation().reset_user_attempts(request, {"email": email})
    return user


def issue_tokens(user) -> dict:
    refresh = RefreshToken.for_user(user)
    return {"access_token": str(refresh.access_token), "refresh_token": str(refresh)}


def _verified_refresh(refresh_token: str) -> RefreshToken:
    try:
        return RefreshToken(refresh_token)  # signature, expiry, type and the blacklist
    except TokenError:
        raise NotAuthenticated(INVALID_REFRESH) from None


def _token_user(refresh: RefreshToken):
    """The still active staff user the token was issued to, with the password it was issued for."""
    user = User.objects.filter(pk=refresh.get(api_settings.USER_ID_CLAIM)).first()
    if user is None or not user.is_active:
        raise NotAuthenticated(INVALID_REFRESH)
    if refresh.get(api_settings.REVOKE_TOKEN_CLAIM) != get_md5_hash_password(user.password):
        raise NotAuthenticated(INVALID_REFRESH)
    if not user.is_staff:
        raise PermissionDenied("This account has no admin access.")
    return user


def refresh_tokens(*, refresh_token: str) -> dict:
    """
    A new access and refresh token for a valid refresh token, which is revoked (rotation).

    Revoking is the one guarded step: of two requests with the same token, only the one whose
    blacklist row is created gets new tokens.
    """
    refresh = _verified_refresh(refresh_token)
    user = _token_user(refresh)
    with transaction.atomic():
        _, created = refresh.blacklist()
        if not created:
            raise NotAuthenticated(INVALID_REFRESH)
        return issue_tokens(user)


def revoke_refresh_token(*, refresh_token: str) -> None:
    """Logout: the refresh token can no longer be used."""
    refresh = _verified_refresh(refresh_token)
    refresh.blacklist()


def revoke_all_tokens(user) -> int:
    """Blacklist every refresh token the user still has (password change, deactivation)."""
    outstanding = OutstandingToken.objects.filter(user=user, blacklistedtoken__isnull=True)
    rows = [BlacklistedToken(token=token) for token in outstanding]
    BlacklistedToken.objects.bulk_create(rows, ignore_conflicts=True)
    if rows:
        logger.info("Revoked %d refresh token(s) of user %s", len(rows), user.pk)
    return len(rows)

"""Admin authentication for the IoT sender and other API clients."""

from django.contrib.auth import get_user_model
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken

from main_app.exceptions import InvalidCredentials, NotAuthenticated, PermissionDenied

User = get_user_model()


def authenticate_admin(*, email: str, password: str):
    """
    Return the active staff user with this email and password.

    A wrong email and a wrong password get the same error, and take the same time: when
    no user matches, a password is still hashed (as Django's ModelBackend does).
    """
    user = User.objects.filter(email__iexact=email).first()
    if user is None:
        User().set_password(password)
        raise InvalidCredentials()
    if not user.check_password(password) or not user.is_active:
        raise InvalidCredentials()
    if not user.is_staff:
        raise PermissionDenied("This account has no admin access.")
    return user


def issue_tokens(user) -> dict:
    refresh = RefreshToken.for_user(user)
    return {"access_token": str(refresh.access_token), "refresh_token": str(refresh)}


def refresh_access_token(*, refresh_token: str) -> str:
    """A new access token for a valid refresh token of a user who is still active staff."""
    try:
        refresh = RefreshToken(refresh_token)
    except TokenError:
        raise NotAuthenticated("The refresh token is invalid or expired.") from None
    user = User.objects.filter(pk=refresh.get("user_id")).first()
    if user is None or not user.is_active:
        raise NotAuthenticated("The refresh token is invalid or expired.")
    if not user.is_staff:
        raise PermissionDenied("This account has no admin access.")
    return str(refresh.access_token)

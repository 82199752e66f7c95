"""
Bearer-token authentication for the API: simplejwt's, with the token's user cached briefly.

Every request of the IoT sender carries the same token; reading its user from the database
each time was one of the endpoint's ten round trips (docs/performance.md). The signature
and expiry of the token are still checked on every request; only the user's row (is it
active, is it staff, its permissions) is re-read at most every `AUTH_USER_CACHE_SECONDS`
per process. A deactivated or demoted account therefore loses access within that time (at
once in the process that saved the change); 0 turns the cache off.

Every token carries a digest of the password hash it was issued under (simplejwt's
CHECK_REVOKE_TOKEN claim), checked against the user as read, cached or not: after a
password change, on any host, a token issued before it stops working as soon as that host
reads the user again, so within `AUTH_USER_CACHE_SECONDS`.

The token itself is verified once per process: the IoT sender presents the same bytes on
every request, and decoding them again (base64, HMAC, JSON, claims) was most of the
authentication's CPU. A token's signature and claims are fixed by its bytes, so the result
of verifying them cannot change while the signing key stays the same (a new key means a new
process); only its expiry depends on the time, and it is checked on every request.
"""

import threading

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.utils import aware_utcnow, get_md5_hash_password

# Verified tokens of this process by their bytes. A handful of accounts call the API, so
# this stays small; it is emptied whenever it reaches the bound, which costs one more
# verification per token, nothing else.
_VERIFIED: dict[bytes, object] = {}
_VERIFIED_MAX = 256
_verified_lock = threading.Lock()


def _cache_key(user_id) -> str:
    return f"auth-user:{user_id}"


class CachedUserJWTAuthentication(JWTAuthentication):
    def get_validated_token(self, raw_token):
        token = _VERIFIED.get(raw_token)
        if token is not None:
            try:
                token.check_exp(current_time=aware_utcnow())
            except TokenError:
                with _verified_lock:
                    _VERIFIED.pop(raw_token, None)
            else:
                return token
        # Not verified yet, or expired: simplejwt decides, and answers an invalid token.
        token = super().get_validated_token(raw_token)
        with _verified_lock:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            _VERIFIED[raw_token] = token
        return token

    def get_user(self, validated_token):
        seconds = settings.AUTH_USER_CACHE_SECONDS
        user_id = validated_token.get(api_settings.USER_ID_CLAIM)
        if seconds <= 0 or user_id is None:
            return super().get_user(validated_token)
        key = _cache_key(user_id)
        user = cache.get(key)
        if user is not None and _issued_for(validated_token, user):
            return user
        # Nothing cached, or the token was issued under another password than the cached
        # row's: a token newer than the cached row is then right, an older one is refused.
        # Unknown and inactive users, and stale tokens, raise here and are never cached.
        user = super().get_user(validated_token)
        if not user.is_superuser:
            # Fills the user's permission cache, so that it is cached along with the user
            # (a superuser has every permission without a query).
            user.get_all_permissions()
        cache.set(key, user, seconds)
        return user


def _issued_for(validated_token, user) -> bool:
    if not api_settings.CHECK_REVOKE_TOKEN:
        return True
    return validated_token.get(api_settings.REVOKE_TOKEN_CLAIM) == get_md5_hash_password(user.password)


@receiver(post_save, sender=get_user_model(), dispatch_uid="auth-user-cache-save")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="auth-user-cache-delete")
def forget_cached_user(sender, instance, **kwargs):
    cache.delete(_cache_key(getattr(instance, api_settings.USER_ID_FIELD)))


class CachedUserJWTScheme(SimpleJWTScheme):
    """The OpenAPI security scheme of the class above: simplejwt's bearer token, unchanged."""

    target_class = CachedUserJWTAuthentication

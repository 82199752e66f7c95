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
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.utils import get_md5_hash_password


def _cache_key(user_id) -> str:
    return f"auth-user:{user_id}"


class CachedUserJWTAuthentication(JWTAuthentication):
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

"""
Bearer-token authentication for the API: simplejwt's, with the token's user cached briefly.

Every request of the IoT sender carries the same token; reading its user from the database
each time was one of the endpoint's ten round trips (docs/performance.md). The signature
and expiry of the token are still checked on every request; only the user's row (is it
active, is it staff) is re-read at most every `AUTH_USER_CACHE_SECONDS` per process. A
deactivated or demoted account therefore loses access within that time (at once in the
process that saved the change); 0 turns the cache off.
"""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.settings import api_settings


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
        if user is None:
            # Unknown and inactive users raise here and are never cached.
            user = super().get_user(validated_token)
            cache.set(key, user, seconds)
        return user


@receiver(post_save, sender=get_user_model(), dispatch_uid="auth-user-cache-save")
@receiver(post_delete, sender=get_user_model(), dispatch_uid="auth-user-cache-delete")
def forget_cached_user(sender, instance, **kwargs):
    cache.delete(_cache_key(getattr(instance, api_settings.USER_ID_FIELD)))


class CachedUserJWTScheme(SimpleJWTScheme):
    """The OpenAPI security scheme of the class above: simplejwt's bearer token, unchanged."""

    target_class = CachedUserJWTAuthentication

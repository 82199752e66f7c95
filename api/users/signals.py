"""
Ending every token of an account whose password changed or that was deactivated.

Refresh tokens are blacklisted at once, in the transaction that saves the change. Access
tokens cannot be blacklisted (they are never looked up); they stop working through the
password claim and the active check in api/users/authentication.py, within
`AUTH_USER_CACHE_SECONDS` on every host. A change made with `QuerySet.update()` sends no
signal: refresh then refuses the token by the same claim and check.
"""

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

User = get_user_model()

_BEFORE_ATTR = "_credentials_before_save"


@receiver(pre_save, sender=User, dispatch_uid="users-credentials-before-save")
def remember_credentials(sender, instance, raw=False, update_fields=None, **kwargs):
    if raw or instance.pk is None:
        return
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return
    instance.__dict__[_BEFORE_ATTR] = (
        sender._default_manager.filter(pk=instance.pk).values_list("password", "is_active").first()
    )


@receiver(post_save, sender=User, dispatch_uid="users-revoke-tokens-after-save")
def revoke_tokens_on_credential_change(sender, instance, created=False, raw=False, **kwargs):
    before = instance.__dict__.pop(_BEFORE_ATTR, None)
    if raw or created or before is None:
        return
    password, was_active = before
    if password != instance.password or (was_active and not instance.is_active):
        from api.users.services import revoke_all_tokens

        revoke_all_tokens(instance)

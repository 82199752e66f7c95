from django.apps import AppConfig


class UsersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "api.users"
    label = "users"

    def ready(self):
        # Connects the receivers that drop a saved or deleted user from the token cache, and
        # those that revoke a user's tokens when the password changes or the account is disabled.
        from api.users import authentication, signals  # noqa: F401

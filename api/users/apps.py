from django.apps import AppConfig


class UsersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "api.users"
    label = "users"

    def ready(self):
        # Connects the receivers that drop a saved or deleted user from the token cache.
        from api.users import authentication  # noqa: F401

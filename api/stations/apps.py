from django.apps import AppConfig


class StationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "api.stations"
    label = "stations"
    verbose_name = "Stations"

    def ready(self):
        from api.stations import checks  # noqa: F401  (registers the system checks)

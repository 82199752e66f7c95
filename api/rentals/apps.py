from django.apps import AppConfig


class RentalsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "api.rentals"
    label = "rentals"
    verbose_name = "Rentals"

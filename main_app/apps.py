from django.apps import AppConfig, apps


class MainAppConfig(AppConfig):
    name = "main_app"
    verbose_name = "ChargeGhar main backend"

    def ready(self):
        connect_login_metrics()


def connect_login_metrics() -> None:
    """
    Count failed logins (Django's own signal, sent by authenticate() whatever the backend)
    and django-axes lockouts. axes is optional here: its signals module is imported only
    when the app is installed, because importing it loads its models and receivers.
    """
    from django.contrib.auth.signals import user_login_failed

    from main_app import metrics

    user_login_failed.connect(metrics.login_failed, dispatch_uid="chargeghar_metrics_login_failed")
    if apps.is_installed("axes"):
        try:
            from axes.signals import user_locked_out
        except ImportError:
            return
        user_locked_out.connect(metrics.login_locked_out, dispatch_uid="chargeghar_metrics_login_locked_out")

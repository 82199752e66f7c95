from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from main_app import health, metrics

admin.site.site_header = "ChargeGhar operations"
admin.site.site_title = "ChargeGhar operations"
admin.site.index_title = "Station network"

urlpatterns = [
    path("admin/", admin.site.urls),
    # The station data endpoint first: every message of the IoT system is matched against
    # the patterns before its own.
    path("api/", include("api.stations.urls")),
    path("api/", include("api.users.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-docs"),
    path("api/schema/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="schema-redoc"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
]

handler404 = "main_app.exceptions.handler404"
handler500 = "main_app.exceptions.handler500"

from django.urls import path

from api.stations.views.internal_views import StationDataInternalSlashView, StationDataInternalView

urlpatterns = [
    path("internal/stations/data", StationDataInternalView.as_view(), name="station-data"),
    path("internal/stations/data/", StationDataInternalSlashView.as_view(), name="station-data-slash"),
]

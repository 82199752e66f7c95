from django.urls import re_path

from api.stations.views.internal_views import StationDataInternalView

urlpatterns = [
    # The sender posts without a trailing slash; accept both rather than redirect a POST.
    re_path(r"^internal/stations/data/?$", StationDataInternalView.as_view(), name="station-data"),
]

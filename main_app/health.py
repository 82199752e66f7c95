"""Liveness and readiness probes for load balancers and orchestrators."""

from django.db import Error, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from main_app import metrics


@never_cache
@require_GET
def healthz(request):
    """The process is alive and serving requests."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request):
    """
    The database answers; 503 otherwise, so traffic goes elsewhere.

    Any database error counts, not only the ones the API answers 503 for: `SELECT 1` has no
    other way to fail. Django's base `Error` rather than `DatabaseError`, because a
    connection found closed raises `InterfaceError`, which is not a `DatabaseError`.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Error:
        metrics.database_unavailable()
        response = JsonResponse({"status": "unavailable", "database": "down"}, status=503)
        response["Retry-After"] = "5"
        return response
    return JsonResponse({"status": "ok", "database": "up"})

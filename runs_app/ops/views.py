"""The operations pages: the configured connections, ``/healthz`` and ``/metrics``."""

import hmac

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from runs_app.conf import app_settings
from runs_app.errors import error_body
from runs_app.ops import health
from runs_app.ops import metrics as runs_metrics


@staff_member_required
def connection_list(request):
    """The configured remote services, without their secrets: for staff who may view the connections' state."""
    if not request.user.has_perm("runs_app.view_connectionstate"):
        raise PermissionDenied("The connections page needs the permission runs_app.view_connectionstate.")
    connections = []
    for name in app_settings.CONNECTIONS:
        conn = app_settings.connection(name)
        connections.append(
            {
                "name": name,
                "is_default": name == app_settings.DEFAULT_CONNECTION,
                "kind": conn["KIND"],
                "endpoint": conn["ENDPOINT"],
                "api_version": conn["API_VERSION"],
                "auth": conn["AUTH"],
                "has_key": bool(conn["API_KEY"]),
            }
        )
    return render(
        request,
        "runs_app/connection_list.html",
        {"connections": connections, "title": "Connections", "site_header": "runs_app"},
    )


@never_cache
@require_GET
def healthz(request):
    """Database, broker, each connection's last successful call, the poller: 200 when all are ok, else 503.
    Open to anyone (load balancers); error texts only for staff."""
    user = request.user
    body, status = health.report(details=bool(user.is_authenticated and user.is_active and user.is_staff))
    return JsonResponse(body, status=status)


@never_cache
@require_GET
def metrics(request):
    """Prometheus metrics: with RUNS_APP["METRICS_TOKEN"] set, for ``Authorization: Bearer <token>``; staff
    users holding ``runs_app.view_run`` (session) may always read them."""
    token = app_settings.METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    bearer_ok = bool(token) and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
    user = request.user
    may_view = user.is_authenticated and user.is_active and user.is_staff and user.has_perm("runs_app.view_run")
    if not (bearer_ok or may_view):
        response = JsonResponse(error_body("Metrics need the metrics bearer token, or a staff session with the "
                                           "permission runs_app.view_run.",
                                           code="forbidden"), status=403)
        if token:
            response["WWW-Authenticate"] = 'Bearer realm="runs_app metrics"'
        return response
    return HttpResponse(runs_metrics.render(), content_type=CONTENT_TYPE_LATEST)

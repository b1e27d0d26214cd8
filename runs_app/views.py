from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from runs_app.conf import app_settings


@staff_member_required
def connection_list(request):
    """The configured remote services, without their secrets."""
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

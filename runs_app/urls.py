"""Pages of runs_app. Include with ``path("runs/", include("runs_app.urls"))`` under any prefix."""

from django.urls import path

from runs_app.ops import views
from runs_app.web import live

app_name = "runs_app"

urlpatterns = [
    path("connections/", views.connection_list, name="connection-list"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("threads/<str:thread_id>/live/", live.thread_live, name="thread-live"),
    path("threads/<str:thread_id>/live/runs/", live.thread_live_runs, name="thread-live-runs"),
    path("runs/<str:run_id>/live/", live.run_live, name="run-live"),
    path("runs/<str:run_id>/events/", live.run_events, name="run-events"),
    path("runs/<str:run_id>/live/tool-outputs/", live.run_live_tool_outputs, name="run-live-tool-outputs"),
    path("runs/<str:run_id>/live/cancel/", live.run_live_cancel, name="run-live-cancel"),
]

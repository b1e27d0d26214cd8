"""Pages of runs_app. Include with ``path("runs/", include("runs_app.urls"))`` under any prefix."""

from django.urls import path

from runs_app import views

app_name = "runs_app"

urlpatterns = [
    path("connections/", views.connection_list, name="connection-list"),
]

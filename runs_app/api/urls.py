"""The REST API. Include under any prefix: ``path("api/", include("runs_app.api.urls"))``.

Ids in paths are the service's ids (thread_…, run_…, step_…), not database keys.
"""

from django.urls import path

from runs_app.api import views

app_name = "runs_app_api"

urlpatterns = [
    path("threads/", views.ThreadListCreateView.as_view(), name="thread-list"),
    path("threads/import/", views.ThreadImportView.as_view(), name="thread-import"),
    path("threads/runs/", views.ThreadAndRunCreateView.as_view(), name="thread-and-run-create"),
    path("threads/<str:thread_id>/", views.ThreadDetailView.as_view(), name="thread-detail"),
    path("threads/<str:thread_id>/messages/", views.ThreadMessageListCreateView.as_view(), name="thread-messages"),
    path("threads/<str:thread_id>/messages/<str:message_id>/", views.ThreadMessageDetailView.as_view(),
         name="thread-message-detail"),
    path("threads/<str:thread_id>/runs/", views.ThreadRunListCreateView.as_view(), name="thread-runs"),
    path("runs/", views.RunListView.as_view(), name="run-list"),
    path("runs/<str:run_id>/", views.RunDetailView.as_view(), name="run-detail"),
    path("runs/<str:run_id>/cancel/", views.RunCancelView.as_view(), name="run-cancel"),
    path("runs/<str:run_id>/submit_tool_outputs/", views.RunSubmitToolOutputsView.as_view(),
         name="run-submit-tool-outputs"),
    path("runs/<str:run_id>/refresh/", views.RunRefreshView.as_view(), name="run-refresh"),
    path("runs/<str:run_id>/steps/", views.RunStepListView.as_view(), name="run-steps"),
    path("runs/<str:run_id>/steps/<str:step_id>/", views.RunStepDetailView.as_view(), name="run-step-detail"),
    path("runs/<str:run_id>/events/", views.RunEventListView.as_view(), name="run-events"),
]

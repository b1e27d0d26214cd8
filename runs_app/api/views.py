"""API views: parse the request, check the run's state, call one service, answer with the mirror's row.

Writes go through ``runs_app.services`` (or ``runs_app.web.relay`` for ``"stream": true``) with
``request.user``, so every action is audited like the admin's.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from runs_app import services
from runs_app.api import serializers as api
from runs_app.api.csrf import enforce_csrf
from runs_app.api.exceptions import api_exception_handler
from runs_app.api.filters import MessageFilter, RunFilter
from runs_app.api.pagination import ProtocolCursorPagination
from runs_app.api.parsers import GuardedJSONParser
from runs_app.api.permissions import api_permission_classes
from runs_app.conf import app_settings
from runs_app.models import Message, Run, RunEvent, RunStep, Thread
from runs_app.web import relay

# --- schema pieces --------------------------------------------------------------------------------------

THREAD_ID = OpenApiParameter("thread_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                             description="The service's thread id (thread_…).")
RUN_ID = OpenApiParameter("run_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                          description="The service's run id (run_…).")
MESSAGE_ID = OpenApiParameter("message_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                               description="The service's message id (msg_…).")
ORDER = OpenApiParameter("order", OpenApiTypes.STR, OpenApiParameter.QUERY, enum=["asc", "desc"], default="asc",
                         description="asc: oldest first (the thread's order); desc: newest first.")
STEP_ID = OpenApiParameter("step_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                           description="The service's run step id (step_…).")
CONNECTION = OpenApiParameter("connection", OpenApiTypes.STR, OpenApiParameter.QUERY,
                              description="The RUNS_APP connection to create on (default: DEFAULT_CONNECTION).")
METADATA_QUERY = OpenApiParameter(
    "metadata", {"type": "object", "additionalProperties": {"type": "string"}}, OpenApiParameter.QUERY,
    style="deepObject", explode=True, description="metadata[key]=value: runs whose metadata has that value.")
SSE = OpenApiResponse(OpenApiTypes.STR, description=(
    'With "stream": true: the service\'s server-sent events relayed unchanged (`event: NAME` / `data: JSON`), '
    "ending with `event: done` / `data: [DONE]`; an `error` event if the service's stream breaks."))

_ERROR_DESCRIPTIONS = {
    400: "Invalid request; `param` names the field. Also the service's own 400.",
    401: "Not authenticated.",
    403: "Not staff, or missing the model permission this action needs.",
    404: "Not in the mirror (or, for a call to the service, not found there).",
    409: "The run is not in the state the action needs.",
    429: "The service is rate limiting; see Retry-After.",
    502: "The service failed (5xx, timeout, refused connection or credentials).",
}


def errors(*codes: int) -> dict:
    return {code: OpenApiResponse(api.ErrorSerializer, description=_ERROR_DESCRIPTIONS[code]) for code in codes}


READ_ERRORS = errors(400, 401, 403, 404)
WRITE_ERRORS = errors(400, 401, 403, 404, 409, 429, 502)


# --- helpers --------------------------------------------------------------------------------------------

def connection_param(request) -> str:
    name = request.query_params.get("connection") or app_settings.DEFAULT_CONNECTION
    if name not in app_settings.CONNECTIONS:
        configured = ", ".join(sorted(app_settings.CONNECTIONS))
        raise ValidationError({"connection": [f"No connection named {name!r}; configured: {configured}."]})
    return name


def get_thread(request, thread_id: str) -> Thread:
    """The mirrored thread (``?connection=`` names one when several connections hold the id; 404, 400 otherwise)."""
    return Thread.objects.by_remote_id(thread_id, connection=request.query_params.get("connection"))


def get_run(request, run_id: str) -> Run:
    return Run.objects.select_related("thread").by_remote_id(run_id,
                                                             connection=request.query_params.get("connection"))


def validated(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return _plain(serializer.validated_data)


def _plain(value):
    """Validated data as plain dicts and lists, without the keys given as null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def run_response(run: Run, http_status=status.HTTP_200_OK) -> Response:
    run = Run.objects.select_related("thread").get(pk=run.pk)
    return Response(api.RunSerializer(run).data, status=http_status)


class RunsAPIView(generics.GenericAPIView):
    """The API's base: its permission policy (``RUNS_APP["API_PERMISSION_CLASSES"]``) and pagination."""

    #: {HTTP method: [model permissions]} the default policy requires on top of staff status.
    required_permissions: dict[str, list[str]] = {}
    pagination_class = ProtocolCursorPagination
    # JSON checked for size and depth before parsing; forms for the browsable clients DRF offers.
    parser_classes = [GuardedJSONParser, FormParser, MultiPartParser]

    def get_permissions(self):
        return [permission() for permission in api_permission_classes()]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        enforce_csrf(request)  # a write with credentials a browser replays on its own

    def get_exception_handler(self):
        return api_exception_handler  # the API's one error shape, whatever the site's EXCEPTION_HANDLER


class StreamingRunsAPIView(RunsAPIView):
    def perform_content_negotiation(self, request, force=False):
        # SSE clients send "Accept: text/event-stream"; the stream bypasses renderers, errors fall back to JSON.
        return super().perform_content_negotiation(request, force=True)


# --- threads --------------------------------------------------------------------------------------------

class ThreadListCreateView(mixins.ListModelMixin, RunsAPIView):
    serializer_class = api.ThreadSerializer
    queryset = Thread.objects.all()
    ordering = "-created_at"
    required_permissions = {"GET": ["runs_app.view_thread"], "POST": ["runs_app.add_thread"]}

    @extend_schema(summary="Threads in the mirror, newest first", responses={200: api.ThreadSerializer(many=True),
                                                                           **READ_ERRORS})
    def get(self, request):
        return self.list(request)

    @extend_schema(summary="Create a thread on the service", parameters=[CONNECTION],
                   request=api.ThreadCreateRequestSerializer, responses={201: api.ThreadSerializer, **WRITE_ERRORS})
    def post(self, request):
        connection = connection_param(request)
        body = validated(api.ThreadCreateRequestSerializer, request)
        thread = services.thread_create(connection=connection, user=request.user, **body)
        return Response(api.ThreadSerializer(thread).data, status=status.HTTP_201_CREATED)


class ThreadImportView(RunsAPIView):
    serializer_class = api.ThreadSerializer
    required_permissions = {"POST": ["runs_app.add_thread"]}

    @extend_schema(summary="Import a thread with its runs, steps and messages, and follow it",
                   parameters=[CONNECTION], request=api.ThreadImportRequestSerializer,
                   responses={200: api.ThreadSerializer, **WRITE_ERRORS})
    def post(self, request):
        connection = connection_param(request)
        body = validated(api.ThreadImportRequestSerializer, request)
        thread = services.thread_import(connection=connection, user=request.user, **body)
        return Response(api.ThreadSerializer(thread).data)


class ThreadDetailView(RunsAPIView):
    serializer_class = api.ThreadSerializer
    required_permissions = {"GET": ["runs_app.view_thread"]}

    @extend_schema(summary="A thread", parameters=[THREAD_ID], responses={200: api.ThreadSerializer, **READ_ERRORS})
    def get(self, request, thread_id):
        return Response(api.ThreadSerializer(get_thread(request, thread_id)).data)


class ThreadMessageListCreateView(mixins.ListModelMixin, RunsAPIView):
    serializer_class = api.MessageSerializer
    filterset_class = MessageFilter
    filter_backends = [DjangoFilterBackend]
    ordering = Message.THREAD_ORDER
    required_permissions = {"GET": ["runs_app.view_message"], "POST": ["runs_app.add_message"]}

    def get_queryset(self) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the filters' model
            return Message.objects.none()
        return get_thread(self.request, self.kwargs["thread_id"]).messages.select_related("thread")

    @extend_schema(summary="A thread's messages in the mirror: every message of the thread, in its order",
                   parameters=[THREAD_ID, ORDER], responses={200: api.MessageSerializer(many=True), **READ_ERRORS})
    def get(self, request, thread_id):
        order = request.query_params.get("order", "asc")
        if order not in ("asc", "desc"):
            raise ValidationError({"order": ["Must be 'asc' or 'desc'."]})
        self.ordering = Message.THREAD_ORDER if order == "asc" else tuple(f"-{f}" for f in Message.THREAD_ORDER)
        return self.list(request)

    @extend_schema(summary="Add a message to the thread on the service", parameters=[THREAD_ID],
                   request=api.MessageCreateRequestSerializer,
                   responses={201: api.MessageSerializer, **WRITE_ERRORS})
    def post(self, request, thread_id):
        thread = get_thread(request, thread_id)
        body = validated(api.MessageCreateRequestSerializer, request)
        message = services.message_create(thread=thread, user=request.user, **body)
        return Response(api.MessageSerializer(message).data, status=status.HTTP_201_CREATED)


class ThreadMessageDetailView(RunsAPIView):
    serializer_class = api.MessageSerializer
    required_permissions = {"GET": ["runs_app.view_message"]}

    @extend_schema(summary="A message", parameters=[THREAD_ID, MESSAGE_ID],
                   responses={200: api.MessageSerializer, **READ_ERRORS})
    def get(self, request, thread_id, message_id):
        message = get_thread(request, thread_id).messages.select_related("thread").filter(remote_id=message_id).first()
        if message is None:
            raise NotFound(f"Message {message_id} of thread {thread_id} is not in the mirror.")
        return Response(api.MessageSerializer(message).data)


# --- runs -----------------------------------------------------------------------------------------------

class ThreadRunListCreateView(mixins.ListModelMixin, StreamingRunsAPIView):
    serializer_class = api.RunSerializer
    ordering = "-created_at"
    required_permissions = {"GET": ["runs_app.view_run"], "POST": ["runs_app.add_run"]}

    def get_queryset(self) -> QuerySet:
        return get_thread(self.request, self.kwargs["thread_id"]).runs.select_related("thread")

    @extend_schema(summary="A thread's runs in the mirror, newest first", parameters=[THREAD_ID],
                   responses={200: api.RunSerializer(many=True), **READ_ERRORS})
    def get(self, request, thread_id):
        return self.list(request)

    @extend_schema(summary="Create a run on the thread", parameters=[THREAD_ID],
                   request=api.RunCreateRequestSerializer,
                   responses={201: api.RunSerializer, (200, "text/event-stream"): SSE, **WRITE_ERRORS})
    def post(self, request, thread_id):
        thread = get_thread(request, thread_id)
        body = validated(api.RunCreateRequestSerializer, request)
        if body.pop("stream", False):
            return relay.sse_response(services.run_create_stream(thread=thread, user=request.user, **body))
        run = services.run_create(thread=thread, user=request.user, **body)
        return run_response(run, status.HTTP_201_CREATED)


class ThreadAndRunCreateView(StreamingRunsAPIView):
    serializer_class = api.RunSerializer
    required_permissions = {"POST": ["runs_app.add_thread", "runs_app.add_run"]}

    @extend_schema(summary="Create a thread and a run on it", operation_id="threads_and_run_create",
                   parameters=[CONNECTION],
                   request=api.ThreadAndRunCreateRequestSerializer,
                   responses={201: api.RunSerializer, (200, "text/event-stream"): SSE, **WRITE_ERRORS})
    def post(self, request):
        connection = connection_param(request)
        body = validated(api.ThreadAndRunCreateRequestSerializer, request)
        if body.pop("stream", False):
            return relay.sse_response(services.thread_and_run_create_stream(connection=connection, user=request.user,
                                                                         **body))
        run = services.thread_and_run_create(connection=connection, user=request.user, **body)
        return run_response(run, status.HTTP_201_CREATED)


class RunListView(generics.ListAPIView, RunsAPIView):
    serializer_class = api.RunSerializer
    queryset = Run.objects.select_related("thread")
    filterset_class = RunFilter
    ordering_fields = ["created_at", "first_seen_at"]
    ordering = "-created_at"

    filter_backends = [DjangoFilterBackend, OrderingFilter]
    required_permissions = {"GET": ["runs_app.view_run"]}

    @extend_schema(summary="Runs in the mirror", parameters=[METADATA_QUERY],
                   responses={200: api.RunSerializer(many=True), **READ_ERRORS})
    def get(self, request):
        return self.list(request)


class RunDetailView(RunsAPIView):
    serializer_class = api.RunSerializer
    required_permissions = {"GET": ["runs_app.view_run"], "PATCH": ["runs_app.change_run_metadata"]}

    @extend_schema(summary="A run", parameters=[RUN_ID], responses={200: api.RunSerializer, **READ_ERRORS})
    def get(self, request, run_id):
        return Response(api.RunSerializer(get_run(request, run_id)).data)

    @extend_schema(summary="Replace a run's metadata", parameters=[RUN_ID],
                   request=api.RunMetadataUpdateRequestSerializer,
                   responses={200: api.RunSerializer, **WRITE_ERRORS})
    def patch(self, request, run_id):
        run = get_run(request, run_id)
        body = validated(api.RunMetadataUpdateRequestSerializer, request)
        return run_response(services.run_modify_metadata(run=run, metadata=body["metadata"], user=request.user))


class RunCancelView(RunsAPIView):
    serializer_class = api.RunSerializer
    required_permissions = {"POST": ["runs_app.cancel_run"]}

    @extend_schema(summary="Cancel a run", parameters=[RUN_ID], request=None,
                   responses={200: api.RunSerializer, **WRITE_ERRORS})
    def post(self, request, run_id):
        return run_response(services.run_cancel(run=get_run(request, run_id), user=request.user))


class RunSubmitToolOutputsView(StreamingRunsAPIView):
    serializer_class = api.RunSerializer
    required_permissions = {"POST": ["runs_app.submit_tool_outputs"]}

    @extend_schema(summary="Submit the outputs of a run's pending tool calls", parameters=[RUN_ID],
                   request=api.ToolOutputsSubmitRequestSerializer,
                   responses={200: api.RunSerializer, (200, "text/event-stream"): SSE, **WRITE_ERRORS})
    def post(self, request, run_id):
        run = get_run(request, run_id)
        body = validated(api.ToolOutputsSubmitRequestSerializer, request)
        if body.pop("stream", False):
            return relay.sse_response(services.run_submit_tool_outputs_stream(run=run, user=request.user, **body))
        return run_response(services.run_submit_tool_outputs(run=run, user=request.user, **body))


class RunRefreshView(RunsAPIView):
    serializer_class = api.RunSerializer
    required_permissions = {"POST": ["runs_app.refresh_run"]}

    @extend_schema(summary="Fetch a run, its steps and messages from the service now", parameters=[RUN_ID],
                   request=None, responses={200: api.RunSerializer, **WRITE_ERRORS})
    def post(self, request, run_id):
        return run_response(services.run_refresh(run=get_run(request, run_id), user=request.user))


class RunStepListView(generics.ListAPIView, RunsAPIView):
    serializer_class = api.RunStepSerializer
    ordering = "created_at"
    required_permissions = {"GET": ["runs_app.view_runstep"]}

    def get_queryset(self) -> QuerySet:
        return get_run(self.request, self.kwargs["run_id"]).steps.select_related("run__thread")

    @extend_schema(summary="A run's steps in the mirror, oldest first", parameters=[RUN_ID],
                   responses={200: api.RunStepSerializer(many=True), **READ_ERRORS})
    def get(self, request, run_id):
        return self.list(request)


class RunStepDetailView(RunsAPIView):
    serializer_class = api.RunStepSerializer
    required_permissions = {"GET": ["runs_app.view_runstep"]}

    @extend_schema(summary="A run step", parameters=[RUN_ID, STEP_ID],
                   responses={200: api.RunStepSerializer, **READ_ERRORS})
    def get(self, request, run_id, step_id):
        run = get_run(request, run_id)
        step = RunStep.objects.select_related("run__thread").filter(run=run, remote_id=step_id).first()
        if step is None:
            raise NotFound(f"Step {step_id} of run {run_id} is not in the mirror.")
        return Response(api.RunStepSerializer(step).data)


class RunEventListView(generics.ListAPIView, RunsAPIView):
    serializer_class = api.RunEventSerializer
    ordering = "observed_at"
    required_permissions = {"GET": ["runs_app.view_runevent"]}

    def get_queryset(self) -> QuerySet:
        run = get_run(self.request, self.kwargs["run_id"])
        return RunEvent.objects.filter(run=run).select_related("user", "operator_action")

    @extend_schema(summary="A run's timeline: status changes and operator actions, oldest first",
                   parameters=[RUN_ID], responses={200: api.RunEventSerializer(many=True), **READ_ERRORS})
    def get(self, request, run_id):
        return self.list(request)

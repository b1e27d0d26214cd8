"""The live pages: watch a run as it happens, start one on a thread, answer its tool calls, cancel it.

- ``GET  threads/<thread_id>/live/``               the thread's messages and a form to start a run
- ``POST threads/<thread_id>/live/runs/``          add the user message, start a run, relay its stream
- ``GET  runs/<run_id>/live/``                     watch any run (fed by ``runs/<run_id>/events/``)
- ``GET  runs/<run_id>/events/``                   the run's mirror changes as server-sent events (``feed``)
- ``POST runs/<run_id>/live/tool-outputs/``        submit tool outputs, relay the continued stream
- ``POST runs/<run_id>/live/cancel/``              cancel the run (JSON answer)

Active staff only (pages redirect to the admin login, the endpoints the page's script calls answer 403 JSON);
every POST is CSRF-protected here, whatever the site's middleware, and needs the admin's model permission
for what it does. Errors are the API's (``runs_app.errors``): the same body and status for the same error.
Cancel answers the run as the API does (``runs_app.mirror.representation``).
Model output is rendered as text (template autoescaping, ``textContent`` in ``live.js``), never as HTML.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from runs_app import errors, services
from runs_app.conf import app_settings
from runs_app.mirror.representation import run_object
from runs_app.models import AmbiguousRemoteId, Message, Run, Thread
from runs_app.web import relay
from runs_app.web.bodies import parse_json_body
from runs_app.web.clients import TooManyFeeds, client_socket, feed_slots
from runs_app.web.csrf import json_csrf_protect
from runs_app.web.feed import MirrorFeed

ID_HELP = "Ids look like thread_abc123 / run_abc123."


# --- access -------------------------------------------------------------------------------------------

def _error(status: int, message: str, *, code: str, param: str | None = None):
    return JsonResponse(errors.error_body(message, code=code, param=param), status=status)


def _error_response(exc: Exception) -> JsonResponse | None:
    """The one mapping of every door (``runs_app.errors``), as JSON."""
    answer = errors.answer_for(exc)
    if answer is None:
        return None
    response = JsonResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def staff_endpoint(*perms: str):
    """For the endpoints the page's script calls: 403 JSON (not a login redirect) for anyone but active staff
    holding ``perms``."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            user = request.user
            if not (user.is_authenticated and user.is_active and user.is_staff):
                return _error(403, "Only staff users may use the live pages; log in to the admin first.",
                              code="forbidden")
            missing = [p for p in perms if not user.has_perm(p)]
            if missing:
                return _error(403, f"This action needs the permission(s): {', '.join(missing)}.",
                              code="permission_denied")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


#: CSRF as Django checks it, a failure in the JSON error body the page's script reads.
json_csrf = json_csrf_protect(lambda message: _error(403, message, code="csrf_failed"))


def _lookup(model, remote_id: str, request):
    """The mirror row with this remote id (``?connection=`` picks one when several connections have it)."""
    rows = model.objects.select_related("thread") if model is Run else model.objects
    return rows.by_remote_id(remote_id, connection=request.GET.get("connection") or request.POST.get("connection"))


def _page_row(model, remote_id: str, request):
    try:
        return _lookup(model, remote_id, request)
    except (model.DoesNotExist, AmbiguousRemoteId) as exc:
        raise Http404(f"{exc} {ID_HELP}") from exc


def _admin_url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def _body(request) -> dict:
    if request.content_type == "application/json":
        data = parse_json_body(request.body)
        if not isinstance(data, dict):
            raise ValidationError({"body": ["Send a JSON object."]})
        return data
    return request.POST.dict()


# --- pages --------------------------------------------------------------------------------------------

def _live_urls() -> dict:
    """URL templates for the page's script (``RUN_ID`` replaced there)."""
    return {
        "events": reverse("runs_app:run-events", args=["RUN_ID"]),
        "live": reverse("runs_app:run-live", args=["RUN_ID"]),
        "tool_outputs": reverse("runs_app:run-live-tool-outputs", args=["RUN_ID"]),
        "cancel": reverse("runs_app:run-live-cancel", args=["RUN_ID"]),
        "admin_run": (_admin_url("admin:runs_app_run_changelist") or "") + "?q=RUN_ID",
    }


@never_cache  # the page shows the mirror as it is: never from a cache, never stored
@staff_member_required
@require_GET
def thread_live(request, thread_id: str):
    thread = _page_row(Thread, thread_id, request)
    if not request.user.has_perm("runs_app.view_thread"):
        raise Http404("You may not view threads.")
    runs = list(thread.runs.order_by("-created_at", "-id")[:20])
    current = next((r for r in runs if not r.is_terminal), None)
    messages = Message.objects.filter(thread=thread).order_by(*Message.THREAD_ORDER)
    run_messages = []
    if current is not None:  # the current run's messages are shown (and grow) in the live panel
        run_messages = list(messages.filter(run_remote_id=current.remote_id))
        messages = messages.exclude(run_remote_id=current.remote_id)
    assistants, assistants_error = services.assistant_choices(thread.connection)
    last_assistant = next((r.assistant_id for r in runs if r.assistant_id), "")
    return render(request, "runs_app/live_thread.html", {
        "title": f"Thread {thread.remote_id} — live", "thread": thread, "messages": list(messages), "runs": runs,
        "run_messages": run_messages,
        "current": current, "assistants": assistants, "assistants_error": assistants_error,
        "last_assistant": last_assistant, "urls": _live_urls(),
        "start_url": reverse("runs_app:thread-live-runs", args=[thread.remote_id]),
        "admin_thread_url": _admin_url("admin:runs_app_thread_change", thread.pk),
        "can_start": request.user.has_perm("runs_app.add_run"),
    })


@never_cache
@staff_member_required
@require_GET
def run_live(request, run_id: str):
    run = _page_row(Run, run_id, request)
    if not request.user.has_perm("runs_app.view_run"):
        raise Http404("You may not view runs.")
    messages = Message.objects.filter(thread=run.thread).exclude(run_remote_id=run.remote_id).filter(
        created_at__lte=run.created_at).order_by(*Message.THREAD_ORDER) if run.created_at else Message.objects.none()
    return render(request, "runs_app/live_run.html", {
        "title": f"Run {run.remote_id} — live", "run": run, "thread": run.thread,
        "earlier_messages": list(messages)[-20:], "urls": _live_urls(),
        "run_messages": list(Message.objects.filter(run_remote_id=run.remote_id, connection=run.connection)
                             .order_by(*Message.THREAD_ORDER)),
        "admin_run_url": _admin_url("admin:runs_app_run_change", run.pk),
        "thread_live_url": reverse("runs_app:thread-live", args=[run.thread.remote_id]),
        "can_cancel": request.user.has_perm("runs_app.cancel_run"),
        "can_submit": request.user.has_perm("runs_app.submit_tool_outputs"),
    })


# --- endpoints the page's script calls ----------------------------------------------------------------------

def on_mirror_row(model, param: str):
    """Passes the mirror row named by the URL's ``param`` instead of its id, and answers every error the layers
    below raise as the API does (``runs_app.errors``): 404 when the row is not in the mirror, 400 for bad input,
    409 for a run not in the state the action needs, the service's own status for its refusals."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, **kwargs):
            try:
                row = _lookup(model, kwargs.pop(param), request)
            except model.DoesNotExist as exc:
                return _error(404, f"{exc} {ID_HELP}", code="not_found", param=param)
            except AmbiguousRemoteId as exc:
                return _error_response(exc)
            try:
                return view(request, row)
            except Exception as exc:
                response = _error_response(exc)
                if response is None:
                    raise
                return response

        return wrapped

    return decorator


@require_GET
@staff_endpoint("runs_app.view_run")
@on_mirror_row(Run, "run_id")
def run_events(request, run: Run):
    try:
        slot = feed_slots.take(request.user.pk, app_settings.LIVE_MAX_FEEDS_PER_USER)
    except TooManyFeeds as exc:
        response = _error(429, str(exc), code="too_many_feeds")
        response["Retry-After"] = str(int(app_settings.LIVE_HEARTBEAT))
        return response
    return relay.event_stream_response(MirrorFeed(run, client=client_socket(request.META), slot=slot))


@require_POST
@json_csrf
@staff_endpoint("runs_app.add_run")
@on_mirror_row(Thread, "thread_id")
def thread_live_runs(request, thread: Thread):
    data = _body(request)
    assistant_id = str(data.get("assistant_id") or "").strip()
    content = str(data.get("content") or "")
    instructions = str(data.get("instructions") or "").strip() or None
    services.validate_run_request(assistant_id, {})
    services.validate_message({"role": "user", "content": content})
    # The message goes inside the create-run request: a refused run leaves nothing on the thread.
    return relay.sse_response(services.run_create_stream(
        thread=thread, assistant_id=assistant_id, user=request.user, instructions=instructions,
        additional_messages=[{"role": "user", "content": content}]))


@require_POST
@json_csrf
@staff_endpoint("runs_app.submit_tool_outputs")
@on_mirror_row(Run, "run_id")
def run_live_tool_outputs(request, run: Run):
    data = _body(request)
    outputs = data.get("tool_outputs")
    if outputs is None:  # a plain form: one field per call, named by its id
        outputs = [{"tool_call_id": c["id"], "output": data.get(c["id"], "")} for c in run.pending_tool_calls
                   if c.get("id") in data]
    return relay.sse_response(services.run_submit_tool_outputs_stream(run=run, tool_outputs=outputs,
                                                                     user=request.user))


@require_POST
@json_csrf
@staff_endpoint("runs_app.cancel_run")
@on_mirror_row(Run, "run_id")
def run_live_cancel(request, run: Run):
    return JsonResponse(run_object(services.run_cancel(run=run, user=request.user)))


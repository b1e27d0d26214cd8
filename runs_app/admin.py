"""The Django admin as the ops console: a read-only mirror with actions that go through ``runs_app.services``.

Mirror rows are never added, edited or deleted here except a thread's local deletion (with Django's
confirmation; nothing is deleted remotely). Every write is a service call; the services validate, talk to
the remote service and audit. Everything the model or the service produced is untrusted text: it is
rendered with ``format_html``/``escape`` only.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter

from django.contrib import admin, messages
from django.contrib.admin import SimpleListFilter
from django.contrib.admin.utils import unquote
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Count, QuerySet
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from runs_app import services
from runs_app.assistants import APIStatusError, AssistantsError
from runs_app.conf import app_settings
from runs_app.forms import RunStartForm, ThreadImportForm, ToolOutputsForm, metadata_formset, pretty_json_text
from runs_app.models import (
    ConnectionState,
    Message,
    OperatorAction,
    PollerLane,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
    Thread,
)
from runs_app.sync_status import sync_status

CSS = {"all": ["runs_app/admin.css"]}


# --- small renderers ----------------------------------------------------------------------------------

def status_badge(status: str):
    known = status if status in RunStatus.values else "unknown"
    return format_html('<span class="runs-badge runs-badge--{}">{}</span>', known, status or "—")


def pretty_block(value, *, empty="—"):
    if value in (None, "", [], {}):
        return empty
    return format_html('<pre class="runs-pre">{}</pre>', pretty_json_text(value))


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h {minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m {secs:02d}s"
    return f"{sign}{secs}s"


def run_duration(run: Run, now: dt.datetime | None = None) -> float | None:
    start = run.started_at or run.created_at
    if start is None:
        return None
    end = run.completed_at or run.failed_at or run.cancelled_at
    if end is None:
        end = run.status_changed_at if run.is_terminal else (now or timezone.now())
    return (end - start).total_seconds() if end else None


def utc_seconds(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def timestamp_field(field: str, label: str):
    """A read-only display of a datetime to the second, in UTC (Django's default shows minutes only)."""

    @admin.display(description=label, ordering=field)
    def show(self, obj):
        return utc_seconds(getattr(obj, field))

    return show


def admin_link(obj, label=None):
    if obj is None:
        return "—"
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else str(obj))


def step_details_html(step: RunStep):
    details = step.step_details or {}
    if step.type == "message_creation":
        message_id = (details.get("message_creation") or {}).get("message_id", "")
        body = format_html("creates message <code>{}</code>", message_id)
    elif step.type == "tool_calls":
        body = format_html_join("", "{}", ((render_tool_call(c),) for c in step.tool_calls)) or "—"
    else:
        body = pretty_block(details)
    if step.last_error:
        body = format_html('{}<div class="runs-error">{}</div>', body, pretty_json_text(step.last_error))
    return body


def raw_html(obj):
    return format_html('<details><summary>Show the object as last received</summary>'
                       '<pre class="runs-pre">{}</pre></details>', pretty_json_text(obj.raw))


def render_tool_call(call: dict):
    """One tool call, readable: function name with arguments and output, code and logs, search results."""
    kind = call.get("type", "")
    if kind == "function":
        function = call.get("function") or {}
        output = function.get("output")
        return format_html(
            '<div class="runs-call"><strong>function {}</strong> <code>{}</code>'
            '<div>arguments</div><pre class="runs-pre">{}</pre><div>output</div>{}</div>',
            function.get("name", ""), call.get("id", ""), pretty_json_text(function.get("arguments", "")),
            format_html('<pre class="runs-pre">{}</pre>', pretty_json_text(output)) if output is not None
            else "(not answered yet)",
        )
    if kind == "code_interpreter":
        code = call.get("code_interpreter") or {}
        outputs = format_html_join(
            "", '<div>{}</div><pre class="runs-pre">{}</pre>',
            ((o.get("type", ""), o.get("logs") if o.get("type") == "logs" else pretty_json_text(o))
             for o in code.get("outputs") or []),
        )
        return format_html(
            '<div class="runs-call"><strong>code interpreter</strong> <code>{}</code>'
            '<div>input</div><pre class="runs-pre">{}</pre>{}</div>',
            call.get("id", ""), code.get("input", ""), outputs,
        )
    if kind == "file_search":
        search = call.get("file_search") or {}
        results = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.get("file_name") or r.get("file_id", ""), r.get("score", ""),
              " ".join(c.get("text", "") for c in r.get("content") or [] if isinstance(c, dict)))
             for r in search.get("results") or []),
        )
        return format_html(
            '<div class="runs-call"><strong>file search</strong> <code>{}</code>'
            '<div>ranking options: {}</div><table class="runs-table"><tr><th>file</th><th>score</th>'
            "<th>content</th></tr>{}</table></div>",
            call.get("id", ""), pretty_json_text(search.get("ranking_options") or {}), results,
        )
    return format_html('<div class="runs-call"><strong>{}</strong>{}</div>', kind, pretty_block(call))


# --- the run changelist: filters, paginator, overview -------------------------------------------------------

class EstimatedCountPaginator(Paginator):
    """On PostgreSQL, an unfiltered list of a large table is counted from pg_class.reltuples, not COUNT(*)."""

    ESTIMATE_ABOVE = 100_000

    @cached_property
    def count(self):
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            connection = connections[queryset.db]
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                                   [queryset.model._meta.db_table])
                    row = cursor.fetchone()
                if row and row[0] is not None and row[0] >= self.ESTIMATE_ABOVE:
                    return int(row[0])
        return super().count


class AttentionFilter(SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [("needs_action", "needs action"), ("stuck", "stuck"), ("expiring", "expiring soon")]

    def queryset(self, request, queryset):
        return {
            "stuck": queryset.stuck,
            "needs_action": queryset.needing_action,
            "expiring": queryset.expiring_soon,
        }.get(self.value(), lambda: queryset)()


class RecentValuesFilter(SimpleListFilter):
    """Choices from the newest runs only (a DISTINCT over a million rows is too slow for a sidebar)."""

    field = ""
    sample = 5000

    def base(self):
        return Run.objects.all()

    def lookups(self, request, model_admin):
        recent = self.base().order_by("-created_at").values("pk")[: self.sample]
        values = list(Run.objects.filter(pk__in=recent).exclude(**{self.field: ""})
                      .values_list(self.field, flat=True).distinct().order_by(self.field)[:50])
        current = self.value()
        if current and current not in values:
            values.append(current)  # a value typed into the URL still shows as selected
        return [(v, v) for v in values]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.field: self.value()})
        return queryset


class AssistantFilter(RecentValuesFilter):
    title = "assistant"
    parameter_name = "assistant"
    field = "assistant_id"


class ModelFilter(RecentValuesFilter):
    title = "model"
    parameter_name = "model"
    field = "model"


class ErrorCodeFilter(RecentValuesFilter):
    title = "failed with error code"
    parameter_name = "error_code"
    field = "last_error_code"

    def base(self):
        return Run.objects.filter(status=RunStatus.FAILED)

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(status=RunStatus.FAILED, last_error_code=self.value())
        return queryset


class ConnectionFilter(SimpleListFilter):
    title = "connection"
    parameter_name = "connection"

    def lookups(self, request, model_admin):
        names = list(app_settings.CONNECTIONS)
        if self.value() and self.value() not in names:
            names.append(self.value())
        return [(n, n) for n in names]

    def queryset(self, request, queryset):
        return queryset.filter(connection=self.value()) if self.value() else queryset


REQUEST_SAMPLE_KEY = "runs_app:admin:request-sample"
REQUEST_SAMPLE_MIN_AGE = 10.0


def run_overview(now: dt.datetime | None = None) -> dict:
    """The numbers above the run list: ``sync_status`` (as ``manage.py runs_sync_status``) plus the last 24 hours."""
    now = now or timezone.now()
    status = sync_status(now=now)
    active = Counter()
    for statuses in status["active_runs"]["by_connection"].values():
        active.update(statuses)
    last_day = dict(Run.objects.terminal().filter(created_at__gte=now - dt.timedelta(hours=24))
                    .values_list("status").annotate(n=Count("id")).order_by())
    # The request rate is the growth of each connection's counter since a sample at least 10 s old.
    sample = cache.get(REQUEST_SAMPLE_KEY)
    current = {"at": now.timestamp(), "requests": {c["connection"]: c["requests"] for c in status["connections"]}}
    rates = {}
    if sample and current["at"] - sample["at"] >= REQUEST_SAMPLE_MIN_AGE:
        minutes = (current["at"] - sample["at"]) / 60
        for name, count in current["requests"].items():
            if name in sample["requests"]:
                rates[name] = round((count - sample["requests"][name]) / minutes, 1)
    if not sample or current["at"] - sample["at"] >= 60:
        cache.set(REQUEST_SAMPLE_KEY, current, 3600)
    for connection in status["connections"]:
        connection["requests_per_minute"] = rates.get(connection["connection"])
    lag = status["lag_seconds"]
    return {
        "active": [(s, active[s]) for s in RunStatus.values if active.get(s)],
        "active_total": status["active_runs"]["total"],
        "last_day": [(s, last_day[s]) for s in RunStatus.values if s in last_day],
        "needs_action": active.get(RunStatus.REQUIRES_ACTION, 0),
        "stuck": status["stuck"],
        "expiring": status["expiring"],
        "lag_max": human_seconds(lag["max"]) if lag["max"] is not None else "—",
        "lag_p50": human_seconds(lag["p50"]) if lag["p50"] is not None else "—",
        "connections": status["connections"],
        "lanes": status["lanes"],
    }


# --- shared admin pieces --------------------------------------------------------------------------------

class ReadOnlyMixin:
    """Records nobody edits by hand: the mirror is written by the sync engine and the services only."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    class Media:
        css = CSS


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    fk_name = "run"
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("created_at", "id")


def error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


class StepInline(ReadOnlyInline):
    model = RunStep
    fields = ("step", "type", "step_status", "created", "completed", "total_tokens", "details")
    readonly_fields = fields
    show_change_link = False
    verbose_name = "step"
    verbose_name_plural = "steps"

    created = timestamp_field("created_at", "created (UTC)")
    completed = timestamp_field("completed_at", "completed")

    @admin.display(description="step")
    def step(self, step):
        return admin_link(step, step.remote_id)

    @admin.display(description="status")
    def step_status(self, step):
        return status_badge(step.status)

    @admin.display(description="details")
    def details(self, step):
        return step_details_html(step)


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ("message", "role", "status", "created", "message_text")
    readonly_fields = fields
    verbose_name = "message"
    verbose_name_plural = "messages of this run"

    created = timestamp_field("created_at", "created (UTC)")

    @admin.display(description="message")
    def message(self, message):
        return admin_link(message, message.remote_id)

    @admin.display(description="text")
    def message_text(self, message):
        return format_html('<div class="runs-text">{}</div>', message.text or "(no text)")


# --- runs -------------------------------------------------------------------------------------------------

@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("run_id", "thread_id", "assistant_id", "model", "status_badge", "created", "duration",
                    "tokens", "time_left")
    list_display_links = ("run_id",)
    list_filter = ("status", ConnectionFilter, AssistantFilter, ModelFilter, ("created_at", admin.DateFieldListFilter),
                   AttentionFilter, ErrorCodeFilter)
    list_select_related = ("thread",)
    search_fields = ("remote_id", "thread__remote_id", "assistant_id", "metadata")
    search_help_text = "A run, thread or assistant id, or text found in the metadata."
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 50
    ordering = ("-created_at",)
    actions = ["cancel_runs", "refresh_runs"]
    inlines = [StepInline, MessageInline]
    change_list_template = "admin/runs_app/run/change_list.html"
    change_form_template = "admin/runs_app/run/change_form.html"
    fieldsets = [
        (None, {"fields": ("remote_id", "connection", "thread_link", "assistant_id", "model", "status_badge",
                           "time_left", "metadata_block")}),
        ("Times (UTC)", {"fields": ("created", "started", "expires", "completed", "failed", "cancelled",
                                    "duration")}),
        ("The conversation before this run", {"fields": ("prompt_block",)}),
        ("Waiting for tool outputs", {"fields": ("pending_calls",)}),
        ("Usage", {"fields": ("prompt_tokens", "completion_tokens", "total_tokens")}),
        ("Error", {"fields": ("last_error_code", "last_error_block", "incomplete_block")}),
        ("Timeline", {"fields": ("timeline",)}),
        ("Configuration", {"classes": ("collapse",), "fields": (
            "instructions_block", "tools_block", "tool_choice", "response_format", "truncation_strategy",
            "temperature", "top_p", "max_prompt_tokens", "max_completion_tokens", "parallel_tool_calls")}),
        ("Sync (UTC)", {"classes": ("collapse",), "fields": (
            "status_changed", "observed_from_s", "observed_to_s", "synced", "first_seen", "polls",
            "next_poll", "claimed_by", "claimed_until_s", "stuck_since_s", "expiring_flagged",
            "answered_call_ids", "steps_synced_for")}),
        ("Raw remote object", {"fields": ("raw_block",)}),
    ]

    # -- permissions of the actions (used by @admin.action(permissions=...)) --

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.cancel_run")

    def has_submit_tool_outputs_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.submit_tool_outputs")

    def has_change_metadata_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.change_run_metadata")

    def has_refresh_permission(self, request, obj=None):
        return request.user.has_perm("runs_app.refresh_run")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("thread")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        # An exact id uses an index instead of a LIKE over every row. The unique indexes lead with the
        # connection, so the lookup names the connections (configured ones and any the sync engine knew).
        if term and " " not in term:
            known = sorted(set(app_settings.CONNECTIONS) | set(ConnectionState.objects.values_list("connection",
                                                                                                   flat=True)))
            if term.startswith("run_"):
                return queryset.filter(connection__in=known, remote_id=term), False
            if term.startswith("thread_"):
                return queryset.filter(thread__connection__in=known, thread__remote_id=term), False
            if term.startswith("asst_"):
                return queryset.filter(assistant_id=term), False
        return super().get_search_results(request, queryset, search_term)

    # -- list columns --

    @admin.display(description="run", ordering="remote_id")
    def run_id(self, run):
        return run.remote_id

    @admin.display(description="thread")
    def thread_id(self, run):
        return admin_link(run.thread, run.thread.remote_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run):
        return status_badge(run.status)

    created = timestamp_field("created_at", "created (UTC)")
    started = timestamp_field("started_at", "started")
    expires = timestamp_field("expires_at", "expires")
    completed = timestamp_field("completed_at", "completed")
    failed = timestamp_field("failed_at", "failed")
    cancelled = timestamp_field("cancelled_at", "cancelled")
    status_changed = timestamp_field("status_changed_at", "status changed (seen by the mirror)")
    observed_from_s = timestamp_field("observed_from", "observed from")
    observed_to_s = timestamp_field("observed_to", "observed to")
    synced = timestamp_field("synced_at", "synced")
    first_seen = timestamp_field("first_seen_at", "first seen")
    next_poll = timestamp_field("next_poll_at", "next poll")
    claimed_until_s = timestamp_field("claimed_until", "claimed until")
    stuck_since_s = timestamp_field("stuck_since", "stuck since")
    expiring_flagged = timestamp_field("expiring_flagged_at", "flagged as expiring")

    @admin.display(description="duration")
    def duration(self, run):
        return human_seconds(run_duration(run))

    @admin.display(description="tokens", ordering="total_tokens")
    def tokens(self, run):
        if run.total_tokens is None:
            return "—"
        return format_html('<span title="prompt {} + completion {}">{}</span>', run.prompt_tokens or 0,
                           run.completion_tokens or 0, run.total_tokens)

    @admin.display(description="time left")
    def time_left(self, run):
        if run.status != RunStatus.REQUIRES_ACTION or not run.expires_at:
            return "—"
        left = (run.expires_at - timezone.now()).total_seconds()
        if left <= 0:
            return format_html('<span class="runs-urgent">expired {} ago</span>', human_seconds(-left))
        css = "runs-urgent" if left <= float(app_settings.EXPIRING_WITHIN) else ""
        return format_html('<span class="{}">{}</span>', css, human_seconds(left))

    # -- change page fields --

    @admin.display(description="thread")
    def thread_link(self, run):
        return admin_link(run.thread, run.thread.remote_id)

    @admin.display(description="metadata")
    def metadata_block(self, run):
        if not run.metadata:
            return "—"
        return format_html('<table class="runs-table">{}</table>', format_html_join(
            "", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in run.metadata.items())))

    PROMPT_MESSAGES = 5

    @admin.display(description="latest messages")
    def prompt_block(self, run):
        """The thread's last messages before this run (its prompt), whoever wrote them, in the thread's order."""
        earlier = run.thread.messages.exclude(run_remote_id=run.remote_id).exclude(run__created_at__gt=run.created_at)
        if run.created_at:
            earlier = earlier.filter(created_at__lte=run.created_at)
        messages = list(earlier.order_by(*(f"-{f}" for f in Message.THREAD_ORDER))[:self.PROMPT_MESSAGES])[::-1]
        if not messages:
            return "— (none in the mirror)"
        url = reverse("admin:runs_app_message_changelist") + f"?thread__id__exact={run.thread_id}"
        rows = format_html_join("", '<tr><th>{}</th><td><div class="runs-text">{}</div></td></tr>',
                                ((m.role, m.text or "(no text)") for m in messages))
        return format_html('<table class="runs-table">{}</table><a href="{}">the whole conversation</a>', rows, url)

    @admin.display(description="pending tool calls")
    def pending_calls(self, run):
        calls = run.pending_tool_calls
        if not calls:
            return "—"
        return format_html_join("", "{}", ((render_tool_call(c),) for c in calls))

    @admin.display(description="last error")
    def last_error_block(self, run):
        return pretty_block(run.last_error)

    @admin.display(description="incomplete details")
    def incomplete_block(self, run):
        return pretty_block(run.incomplete_details)

    @admin.display(description="instructions")
    def instructions_block(self, run):
        return format_html('<div class="runs-text">{}</div>', run.instructions) if run.instructions else "—"

    @admin.display(description="tools")
    def tools_block(self, run):
        return pretty_block(run.tools)

    @admin.display(description="raw")
    def raw_block(self, run):
        return raw_html(run)

    @admin.display(description="timeline")
    def timeline(self, run):
        events = run.events.select_related("user", "operator_action").order_by("observed_at", "id")
        rows = []
        for event in events:
            if event.kind == RunEvent.Kind.ACTION and event.operator_action:
                action = event.operator_action
                outcome = "succeeded" if action.succeeded else format_html(
                    '<span class="runs-urgent">failed</span>: {}', action.error)
                what = format_html("{} — {}{}", action.action, outcome,
                                   format_html(" (request id {})", action.request_id) if action.request_id else "")
            else:
                what = format_html("{} → {}", event.from_status or "∅", status_badge(event.to_status))
            rows.append((event.observed_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], event.get_kind_display(),
                         what, event.source, event.user.get_username() if event.user else "—"))
        if not rows:
            return "—"
        return format_html(
            '<table class="runs-table runs-timeline"><tr><th>observed</th><th>kind</th><th>what</th>'
            "<th>source</th><th>user</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    # -- views --

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("export.csv", view(self.export_view), name="runs_app_run_export"),
            path("<path:object_id>/metadata/", view(self.metadata_view), name="runs_app_run_metadata"),
            path("<path:object_id>/tool-outputs/", view(self.tool_outputs_view), name="runs_app_run_tool_outputs"),
            path("<path:object_id>/cancel/", view(self.cancel_view), name="runs_app_run_cancel"),
            path("<path:object_id>/refresh/", view(require_POST(self.refresh_view)), name="runs_app_run_refresh"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "overview": run_overview()}
        return super().changelist_view(request, extra_context=extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self._run(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "run": run,
            "can_cancel": self.has_cancel_permission(request) and not run.is_terminal,
            "can_submit": self.has_submit_tool_outputs_permission(request) and bool(run.pending_tool_calls),
            "can_edit_metadata": self.has_change_metadata_permission(request),
            "can_refresh": self.has_refresh_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def _run(self, request, object_id) -> Run:
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404(f"No run with primary key {object_id!r}.")
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return run

    def _change_url(self, run):
        return reverse("admin:runs_app_run_change", args=[run.pk])

    def _context(self, request, run, title, **extra):
        return {**self.admin_site.each_context(request), "opts": self.opts, "original": run, "run": run,
                "title": title, "subtitle": run.remote_id, "has_view_permission": True, **extra}

    # Cancel: one run (button on its page) or many (the action); both confirm first.

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request, queryset):
        runs = self._bulk_selection(request, queryset, "cancel")
        if runs is None:
            return None
        if request.POST.get("confirm") == "yes":
            self._cancel(request, runs)
            return None
        return TemplateResponse(request, "admin/runs_app/run/cancel_confirmation.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Cancel runs?",
            "runs": runs, "cancellable": [r for r in runs if not r.is_terminal],
            "not_cancellable": [r for r in runs if r.is_terminal], "action_form": True,
            "selected": [r.pk for r in runs], "action_name": "cancel_runs",
        })

    def cancel_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._cancel(request, [run])
            return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/cancel_confirmation.html", {
            **self._context(request, run, "Cancel this run?"),
            "runs": [run], "cancellable": [] if run.is_terminal else [run],
            "not_cancellable": [run] if run.is_terminal else [],
        })

    def _cancel(self, request, runs: list[Run]) -> None:
        cancelled = []
        for run in runs:
            if run.is_terminal:
                messages.warning(request, f"Run {run.remote_id} is already {run.status}; it cannot be cancelled.")
                continue
            try:
                run = services.run_cancel(run=run, user=request.user)
            except (ValidationError, AssistantsError) as exc:
                messages.error(request, f"Could not cancel run {run.remote_id}: {error_text(exc)}")
            else:
                cancelled.append(f"{run.remote_id} ({run.status})")
        if cancelled:
            messages.success(request, f"Cancel requested for {len(cancelled)} run(s): {', '.join(cancelled)}.")

    @admin.action(description="Refresh selected runs from the service now", permissions=["refresh"])
    def refresh_runs(self, request, queryset):
        runs = self._bulk_selection(request, queryset, "refresh")
        if runs is not None:
            self._refresh(request, runs)

    # Each run is one request to the service, made while the operator waits: "select all" over a large
    # list must not turn into thousands of them.
    MAX_BULK = 200

    def _bulk_selection(self, request, queryset, verb: str) -> list[Run] | None:
        runs = list(queryset.select_related("thread")[: self.MAX_BULK + 1])
        if len(runs) > self.MAX_BULK:
            messages.error(request, f"Select at most {self.MAX_BULK} runs to {verb} at once; nothing was sent. "
                                    "Narrow the list with the filters first.")
            return None
        return runs

    def refresh_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_refresh_permission(request):
            raise PermissionDenied
        self._refresh(request, [run])
        return HttpResponseRedirect(self._change_url(run))

    def _refresh(self, request, runs: list[Run]) -> None:
        refreshed = []
        for run in runs:
            try:
                run = services.run_refresh(run=run, user=request.user)
            except (ValidationError, AssistantsError) as exc:
                messages.error(request, f"Could not refresh run {run.remote_id}: {error_text(exc)}")
            else:
                refreshed.append(f"{run.remote_id} ({run.status})")
        if refreshed:
            messages.success(request, f"Refreshed {len(refreshed)} run(s): {', '.join(refreshed)}.")

    def metadata_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_change_metadata_permission(request):
            raise PermissionDenied
        formset = metadata_formset(metadata=run.metadata, data=request.POST if request.method == "POST" else None)
        service_errors = []
        if request.method == "POST" and formset.is_valid():
            try:
                run = services.run_modify_metadata(run=run, metadata=formset.metadata, user=request.user)
            except (ValidationError, AssistantsError) as exc:
                service_errors.append(error_text(exc))
                messages.error(request, f"Could not modify the metadata of run {run.remote_id}: {error_text(exc)}")
            else:
                messages.success(request, f"Metadata of run {run.remote_id} saved ({len(run.metadata)} keys).")
                return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/metadata.html", self._context(
            request, run, "Modify metadata", formset=formset, service_errors=service_errors,
            limits={"keys": services.METADATA_MAX_KEYS, "key": services.METADATA_MAX_KEY_LENGTH,
                    "value": services.METADATA_MAX_VALUE_LENGTH}))

    def tool_outputs_view(self, request, object_id):
        run = self._run(request, object_id)
        if not self.has_submit_tool_outputs_permission(request):
            raise PermissionDenied
        if run.status != RunStatus.REQUIRES_ACTION or not run.pending_tool_calls:
            if request.method == "POST":
                return self._moved_on(request, run, f"Run {run.remote_id} is {run.status} in the mirror; it no "
                                                    "longer waits for tool outputs. Nothing was sent.")
            messages.warning(request, f"Run {run.remote_id} is {run.status}; it does not wait for tool outputs.")
            return HttpResponseRedirect(self._change_url(run))
        form = ToolOutputsForm(request.POST if request.method == "POST" else None, tool_calls=run.pending_tool_calls)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.run_submit_tool_outputs(run=run, tool_outputs=form.tool_outputs(request.POST),
                                                       user=request.user)
            except ValidationError as exc:
                form.add_error(None, exc.message_dict.get("tool_outputs") or exc.messages)
                messages.error(request, f"The tool outputs were not sent: {error_text(exc)}")
            except APIStatusError as exc:
                if exc.status == 400 and "do not accept tool outputs" in (exc.message or ""):
                    return self._moved_on(request, run, f"The service refused the tool outputs of run "
                                                        f"{run.remote_id}: {exc}")
                messages.error(request, f"The tool outputs of run {run.remote_id} were not accepted: {exc}")
            except AssistantsError as exc:
                messages.error(request, f"The tool outputs of run {run.remote_id} were not accepted: {exc}")
            else:
                messages.success(request, f"Tool outputs sent; run {run.remote_id} is now {run.status}.")
                return HttpResponseRedirect(self._change_url(run))
        return TemplateResponse(request, "admin/runs_app/run/tool_outputs.html", self._context(
            request, run, "Submit tool outputs", form=form))

    def _moved_on(self, request, run: Run, message: str):
        """The run left requires_action meanwhile: say so, and fetch its real state."""
        messages.error(request, message)
        try:
            run = services.run_refresh(run=run, user=request.user)
        except AssistantsError as exc:
            messages.error(request, f"Could not refresh run {run.remote_id}: {exc}")
        else:
            messages.info(request, f"Refreshed run {run.remote_id} from the service: it is {run.status}.")
        return HttpResponseRedirect(self._change_url(run))

    # CSV export of the filtered list, streamed.

    EXPORT_COLUMNS = [
        ("run", "remote_id"), ("thread", "thread__remote_id"), ("connection", "connection"),
        ("assistant", "assistant_id"), ("model", "model"), ("status", "status"), ("created_at", "created_at"),
        ("started_at", "started_at"), ("completed_at", "completed_at"), ("failed_at", "failed_at"),
        ("cancelled_at", "cancelled_at"), ("expires_at", "expires_at"), ("prompt_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"), ("total_tokens", "total_tokens"),
        ("last_error_code", "last_error_code"), ("last_error", "last_error"), ("metadata", "metadata"),
    ]

    def export_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        queryset = changelist.queryset.values_list(*(field for _, field in self.EXPORT_COLUMNS))
        writer = csv.writer(_Echo())

        def rows():
            yield writer.writerow([name for name, _ in self.EXPORT_COLUMNS])
            for row in queryset.iterator(chunk_size=2000):
                yield writer.writerow([csv_cell(value) for value in row])

        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="runs-{stamp}.csv"'
        return response


class _Echo:
    def write(self, value):
        return value


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet never evaluates (formula injection: = + - @ tab CR are quoted)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if value in ("{}", "[]"):
            return ""
    text = str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


# --- threads ----------------------------------------------------------------------------------------------

@admin.register(Thread)
class ThreadAdmin(ReadOnlyAdmin):
    list_display = ("remote_id", "connection", "created_at", "tracked", "synced_at", "runs_link")
    list_filter = ("connection", "tracked")
    search_fields = ("=remote_id", "metadata")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    change_list_template = "admin/runs_app/thread/change_list.html"
    change_form_template = "admin/runs_app/thread/change_form.html"
    fieldsets = [
        (None, {"fields": ("remote_id", "connection", "created_at", "metadata_block", "tool_resources_block",
                           "runs_block", "messages_link")}),
        ("Sync", {"classes": ("collapse",), "fields": ("tracked", "next_discovery_at", "discovery_interval",
                                                       "observed_from", "observed_to", "synced_at", "first_seen_at")}),
        ("Raw remote object", {"fields": ("raw_block",)}),
    ]

    def has_delete_permission(self, request, obj=None):
        # Deleting a thread only forgets it locally (with its runs and messages); nothing is deleted remotely.
        return request.user.has_perm("runs_app.delete_thread")

    def has_import_permission(self, request):
        return request.user.has_perm("runs_app.add_thread")

    def get_deleted_objects(self, objs, request):
        # The thread's runs, steps, messages and timeline go with it; their admins are read-only, so
        # Django would otherwise refuse. The audit log keeps its rows (SET_NULL).
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        mirror = {str(m._meta.verbose_name) for m in (Run, RunStep, Message, RunEvent)}
        return deleted, model_count, set(perms_needed) - mirror, protected

    def has_start_run_permission(self, request):
        return request.user.has_perm("runs_app.add_run")

    @admin.display(description="runs")
    def runs_link(self, thread):
        url = reverse("admin:runs_app_run_changelist") + f"?thread__id__exact={thread.pk}"
        return format_html('<a href="{}">runs</a>', url)

    @admin.display(description="metadata")
    def metadata_block(self, thread):
        return pretty_block(thread.metadata)

    @admin.display(description="tool resources")
    def tool_resources_block(self, thread):
        return pretty_block(thread.tool_resources)

    @admin.display(description="newest runs")
    def runs_block(self, thread):
        runs = list(thread.runs.order_by("-created_at")[:20])
        if not runs:
            return "—"
        rows = ((admin_link(r, r.remote_id), r.assistant_id, status_badge(r.status),
                 r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "—") for r in runs)
        return format_html('<table class="runs-table">{}</table>{}', format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows), self.runs_link(thread))

    @admin.display(description="messages")
    def messages_link(self, thread):
        url = reverse("admin:runs_app_message_changelist") + f"?thread__id__exact={thread.pk}"
        return format_html('<a href="{}">messages of this thread</a>', url)

    @admin.display(description="raw")
    def raw_block(self, thread):
        return raw_html(thread)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("import/", view(self.import_view), name="runs_app_thread_import"),
            path("<path:object_id>/start-run/", view(self.start_run_view), name="runs_app_thread_start_run"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_import": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context=extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_start_run": self.has_start_run_permission(request),
                         "can_import": self.has_import_permission(request)}
        return super().change_view(request, object_id, form_url, extra_context)

    def import_view(self, request):
        if not self.has_import_permission(request):
            raise PermissionDenied
        form = ThreadImportForm(request.POST if request.method == "POST" else None,
                                initial={"thread_id": request.GET.get("thread_id", "")})
        if request.method == "POST" and form.is_valid():
            try:
                thread = services.thread_import(thread_id=form.cleaned_data["thread_id"],
                                                connection=form.cleaned_data["connection"], user=request.user)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
                messages.error(request, f"The thread was not imported: {error_text(exc)}")
            except AssistantsError as exc:
                messages.error(request, f"Could not import thread {form.cleaned_data['thread_id']}: {exc}")
            else:
                messages.success(request, f"Imported thread {thread.remote_id}: {thread.runs.count()} run(s), "
                                          f"{thread.messages.count()} message(s); it is now followed.")
                return redirect("admin:runs_app_thread_change", thread.pk)
        return TemplateResponse(request, "admin/runs_app/thread/import.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Import a thread", "form": form,
            "has_view_permission": True,
        })

    def start_run_view(self, request, object_id):
        thread = self.get_object(request, unquote(object_id))
        if thread is None:
            raise Http404(f"No thread with primary key {object_id!r}.")
        if not self.has_start_run_permission(request):
            raise PermissionDenied
        recent = Run.objects.filter(thread=thread).exclude(assistant_id="").order_by("-created_at").first()
        form = RunStartForm(request.POST if request.method == "POST" else None,
                            initial={"assistant_id": recent.assistant_id if recent else ""})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = services.run_create(thread=thread, assistant_id=data["assistant_id"].strip(), user=request.user,
                                          instructions=data["instructions"] or None, metadata=data["metadata"] or None)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
                messages.error(request, f"The run was not started: {error_text(exc)}")
            except AssistantsError as exc:
                messages.error(request, f"Could not start a run on thread {thread.remote_id}: {exc}")
            else:
                messages.success(request, f"Started run {run.remote_id} on thread {thread.remote_id} ({run.status}).")
                return redirect("admin:runs_app_run_change", run.pk)
        return TemplateResponse(request, "admin/runs_app/thread/start_run.html", {
            **self.admin_site.each_context(request), "opts": self.opts, "title": "Start a run", "form": form,
            "original": thread, "subtitle": thread.remote_id, "has_view_permission": True,
        })


# --- steps, messages, timeline, audit, sync state ------------------------------------------------------------

@admin.register(RunStep)
class RunStepAdmin(ReadOnlyAdmin):
    list_display = ("remote_id", "run_link", "type", "step_status", "created_at", "completed_at", "total_tokens")
    list_filter = ("type", "status")
    list_select_related = ("run",)
    search_fields = ("=remote_id", "=run__remote_id")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    fields = ("remote_id", "connection", "run_link", "type", "step_status", "created_at", "completed_at", "failed_at",
              "cancelled_at", "expires_at", "prompt_tokens", "completion_tokens", "total_tokens", "details",
              "raw_block")

    @admin.display(description="run")
    def run_link(self, step):
        return admin_link(step.run, step.run.remote_id)

    @admin.display(description="status")
    def step_status(self, step):
        return status_badge(step.status)

    @admin.display(description="details")
    def details(self, step):
        return step_details_html(step)

    @admin.display(description="raw")
    def raw_block(self, step):
        return raw_html(step)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("remote_id", "thread_link", "run_link", "role", "status", "created_at", "excerpt")
    list_filter = ("role", "status")
    ordering = ("-created_at", "-position", "-id")
    list_select_related = ("thread", "run")
    search_fields = ("=remote_id", "=thread__remote_id", "=run_remote_id")
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    fields = ("remote_id", "connection", "thread_link", "run_link", "assistant_id", "role", "status", "created_at",
              "completed_at", "incomplete_at", "message_text", "content_block", "attachments_block", "raw_block")

    @admin.display(description="thread")
    def thread_link(self, message):
        return admin_link(message.thread, message.thread.remote_id)

    @admin.display(description="run")
    def run_link(self, message):
        return admin_link(message.run, message.run.remote_id) if message.run else (message.run_remote_id or "—")

    @admin.display(description="text")
    def excerpt(self, message):
        text = message.text
        return text[:120] + ("…" if len(text) > 120 else "")

    @admin.display(description="text")
    def message_text(self, message):
        return format_html('<div class="runs-text">{}</div>', message.text or "(no text)")

    @admin.display(description="content blocks")
    def content_block(self, message):
        return pretty_block(message.content)

    @admin.display(description="attachments")
    def attachments_block(self, message):
        return pretty_block(message.attachments)

    @admin.display(description="raw")
    def raw_block(self, message):
        return raw_html(message)


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    list_display = ("observed_at", "run_link", "kind", "from_status", "to_status", "source", "user",
                    "operator_action_link")
    list_filter = ("kind", "source", "to_status")
    list_select_related = ("run", "user", "operator_action")
    search_fields = ("=run__remote_id",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator

    @admin.display(description="run")
    def run_link(self, event):
        return admin_link(event.run, event.run.remote_id)

    @admin.display(description="operator action")
    def operator_action_link(self, event):
        return admin_link(event.operator_action) if event.operator_action_id else "—"


@admin.register(OperatorAction)
class OperatorActionAdmin(ReadOnlyAdmin):
    list_display = ("at", "user", "action", "target", "succeeded", "request_id", "error_excerpt")
    list_filter = ("action", "succeeded", "connection")
    list_select_related = ("user",)
    search_fields = ("=target", "=request_id", "user__username")
    date_hierarchy = None
    show_full_result_count = False
    fields = ("at", "user", "action", "connection", "target", "thread_link", "run_link", "succeeded", "request_id",
              "error", "sent_block", "answer_block")

    @admin.display(description="error")
    def error_excerpt(self, action):
        return action.error[:160]

    @admin.display(description="thread")
    def thread_link(self, action):
        return admin_link(action.thread, action.thread.remote_id) if action.thread else "—"

    @admin.display(description="run")
    def run_link(self, action):
        return admin_link(action.run, action.run.remote_id) if action.run else "—"

    @admin.display(description="sent")
    def sent_block(self, action):
        return pretty_block(action.sent)

    @admin.display(description="answer")
    def answer_block(self, action):
        return pretty_block(action.answer)


@admin.register(ConnectionState)
class ConnectionStateAdmin(ReadOnlyAdmin):
    list_display = ("connection", "requests", "rate_limited", "paused_until", "pause_reason", "last_success_at",
                    "last_error_at", "last_error")


@admin.register(PollerLane)
class PollerLaneAdmin(ReadOnlyAdmin):
    list_display = ("lane", "heartbeat_at", "cycles", "runs_polled")

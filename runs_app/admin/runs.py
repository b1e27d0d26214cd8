"""Runs: the list with its overview, filters and CSV export; a run's page; cancel, refresh, metadata and
tool outputs, each through the services."""

from __future__ import annotations

import csv
import datetime as dt
import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from runs_app.admin.base import ReadOnlyAdmin, ReadOnlyInline
from runs_app.admin.changelist import (
    AssistantFilter,
    AttentionFilter,
    ConnectionFilter,
    ErrorCodeFilter,
    EstimatedCountPaginator,
    ModelFilter,
    run_overview,
)
from runs_app.admin.displays import (
    StepDisplays,
    admin_link,
    human_seconds,
    json_display,
    raw_display,
    render_tool_call,
    run_duration,
    status_badge,
    timestamp_field,
)
from runs_app.admin.run_actions import RunActions
from runs_app.conf import app_settings
from runs_app.models import (
    ConnectionState,
    Message,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
)


class StepInline(StepDisplays, ReadOnlyInline):
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


@admin.register(Run)
class RunAdmin(RunActions, ReadOnlyAdmin):
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
        css = "runs-urgent" if left <= app_settings.EXPIRING_WITHIN else ""
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

    last_error_block = json_display("last_error", "last error")

    incomplete_block = json_display("incomplete_details", "incomplete details")

    @admin.display(description="instructions")
    def instructions_block(self, run):
        return format_html('<div class="runs-text">{}</div>', run.instructions) if run.instructions else "—"

    tools_block = json_display("tools", "tools")

    raw_block = raw_display()

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

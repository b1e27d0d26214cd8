"""The other mirrored records (steps, messages, the timeline), the audit log and the sync engine's
state: read-only lists and pages."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from runs_app.admin.base import ReadOnlyAdmin
from runs_app.admin.changelist import EstimatedCountPaginator
from runs_app.admin.displays import (
    StepDisplays,
    admin_link,
    json_display,
    raw_display,
)
from runs_app.models import (
    ConnectionState,
    Message,
    OperatorAction,
    PollerLane,
    RunEvent,
    RunStep,
)


@admin.register(RunStep)
class RunStepAdmin(StepDisplays, ReadOnlyAdmin):
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


    raw_block = raw_display()


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

    content_block = json_display("content", "content blocks")

    attachments_block = json_display("attachments", "attachments")

    raw_block = raw_display()


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

    sent_block = json_display("sent", "sent")

    answer_block = json_display("answer", "answer")


@admin.register(ConnectionState)
class ConnectionStateAdmin(ReadOnlyAdmin):
    list_display = ("connection", "requests", "rate_limited", "paused_until", "pause_reason", "last_success_at",
                    "last_error_at", "last_error")


@admin.register(PollerLane)
class PollerLaneAdmin(ReadOnlyAdmin):
    list_display = ("lane", "heartbeat_at", "cycles", "runs_polled")

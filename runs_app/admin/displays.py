"""How the admin shows things: badges, durations, times to the second, links, JSON blocks (one
factory for every JSON field), tool calls and steps made readable. Everything the model or the service produced is
untrusted text, rendered with ``format_html`` only."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from runs_app.admin.forms import pretty_json_text
from runs_app.models import (
    Run,
    RunStatus,
    RunStep,
)


def status_badge(status: str):
    known = status if status in RunStatus.values else "unknown"
    return format_html('<span class="runs-badge runs-badge--{}">{}</span>', known, status or "—")


def pretty_block(value, *, empty="—"):
    if value in (None, "", [], {}):
        return empty
    return format_html('<pre class="runs-pre">{}</pre>', pretty_json_text(value))


def json_display(field: str, description: str, *, empty: str = "—"):
    """A read-only admin display of one JSON field, pretty-printed (the model's methods, made once)."""

    @admin.display(description=description)
    def show(self, obj):
        return pretty_block(getattr(obj, field), empty=empty)

    return show


class StepDisplays:
    """A step's status badge and readable details, for every admin that lists steps."""

    @admin.display(description="status")
    def step_status(self, step):
        return status_badge(step.status)

    @admin.display(description="details")
    def details(self, step):
        return step_details_html(step)


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


def raw_display():
    """The admin display of a mirrored object's raw remote object, folded."""

    @admin.display(description="raw")
    def show(self, obj):
        return raw_html(obj)

    return show


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


def error_text(exc: Exception) -> str:
    """An error as an operator reads it: the service's message with its request id, or what was wrong."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)

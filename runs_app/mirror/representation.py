"""Rows shaped into the protocol's own objects — the one representation every door answers with (the API, the live
pages, the mirror feed): the latest remote object as received, with the mirror's columns (the truth it holds) over
it, in the service's field names and shapes (Unix seconds, ``null`` for absent strings), plus a ``mirror`` object
saying what the mirror knows about its sync. Fields the service added that runs_app does not know are kept.
"""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from runs_app.models import Message, MirrorRow, Run, RunStatus, RunStep, Thread


def unix(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def iso(value: dt.datetime | None) -> str | None:
    """As DRF renders a date-time: ISO 8601 in UTC, with ``Z``."""
    if value is None:
        return None
    text = timezone.localtime(value, dt.UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def usage(row: Run | RunStep) -> dict | None:
    raw = row.raw.get("usage") if isinstance(row.raw, dict) else None
    if row.total_tokens is None and not isinstance(raw, dict):
        return None
    columns = {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
               "total_tokens": row.total_tokens}
    return {**(raw if isinstance(raw, dict) else {}), **{k: v for k, v in columns.items() if v is not None}}


def _mirror(row: MirrorRow, **more) -> dict:
    return {"connection": row.connection, "synced_at": iso(row.synced_at), "first_seen_at": iso(row.first_seen_at),
            **more}


def _raw(row: MirrorRow) -> dict:
    return dict(row.raw) if isinstance(row.raw, dict) else {}


def thread_object(thread: Thread, *, mirror: bool = True) -> dict:
    obj = {**_raw(thread), "id": thread.remote_id, "object": "thread", "created_at": unix(thread.created_at),
           "metadata": thread.metadata or {}, "tool_resources": thread.tool_resources}
    if mirror:
        obj["mirror"] = _mirror(thread, tracked=thread.tracked)
    return obj


def run_object(run: Run, *, mirror: bool = True, now: dt.datetime | None = None) -> dict:
    """``mirror=False`` leaves out the sync bookkeeping (whose lag changes every second): what the feed compares."""
    obj = {
        **_raw(run),
        "id": run.remote_id, "object": "thread.run", "created_at": unix(run.created_at),
        "thread_id": run.thread_remote_id, "assistant_id": run.assistant_id, "status": run.status,
        "required_action": run.required_action if run.status == RunStatus.REQUIRES_ACTION else None,
        "last_error": run.last_error, "expires_at": unix(run.expires_at), "started_at": unix(run.started_at),
        "cancelled_at": unix(run.cancelled_at), "failed_at": unix(run.failed_at),
        "completed_at": unix(run.completed_at), "incomplete_details": run.incomplete_details, "model": run.model,
        "instructions": run.instructions, "tools": run.tools or [], "tool_resources": run.tool_resources,
        "metadata": run.metadata or {}, "usage": usage(run), "temperature": run.temperature, "top_p": run.top_p,
        "max_prompt_tokens": run.max_prompt_tokens, "max_completion_tokens": run.max_completion_tokens,
        "truncation_strategy": run.truncation_strategy, "tool_choice": run.tool_choice,
        "response_format": run.response_format, "parallel_tool_calls": run.parallel_tool_calls,
    }
    if mirror:
        now = now or timezone.now()
        lag = None if run.is_terminal or run.synced_at is None else round((now - run.synced_at).total_seconds(), 3)
        obj["mirror"] = _mirror(
            run, lag_seconds=lag, status_changed_at=iso(run.status_changed_at), next_poll_at=iso(run.next_poll_at),
            polls=run.polls, stuck=not run.is_terminal and run.stuck_since is not None,
            stuck_since=iso(run.stuck_since),
            expiring=run.status == RunStatus.REQUIRES_ACTION and run.expiring_flagged_at is not None,
            answered_call_ids=list(run.answered_call_ids or []))
    return obj


def step_object(step: RunStep, *, mirror: bool = True) -> dict:
    run = step.run
    obj = {
        **_raw(step),
        "id": step.remote_id, "object": "thread.run.step", "created_at": unix(step.created_at),
        "run_id": run.remote_id, "assistant_id": step.raw.get("assistant_id") or run.assistant_id or None,
        "thread_id": run.thread_remote_id, "type": step.type, "status": step.status,
        "step_details": step.step_details, "last_error": step.last_error, "expires_at": unix(step.expires_at),
        "cancelled_at": unix(step.cancelled_at), "failed_at": unix(step.failed_at),
        "completed_at": unix(step.completed_at), "metadata": step.metadata or {}, "usage": usage(step),
    }
    if mirror:
        obj["mirror"] = _mirror(step)
    return obj


def message_object(message: Message, *, mirror: bool = True) -> dict:
    obj = {
        **_raw(message),
        "id": message.remote_id, "object": "thread.message", "created_at": unix(message.created_at),
        "thread_id": message.thread.remote_id, "status": message.status or None,
        "incomplete_details": message.incomplete_details, "completed_at": unix(message.completed_at),
        "incomplete_at": unix(message.incomplete_at), "role": message.role, "content": message.content or [],
        "assistant_id": message.assistant_id or None, "run_id": message.run_remote_id or None,
        "attachments": message.attachments or [], "metadata": message.metadata or {},
    }
    if mirror:
        obj["mirror"] = _mirror(message)
    return obj

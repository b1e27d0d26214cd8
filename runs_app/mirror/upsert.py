"""The one upsert: applies a remote object from any source (poll, list page, stream event, action response).

Each ``apply_*`` runs in a transaction under a row lock and is idempotent; which observation wins is decided by
the pure rules of ``runs_app.mirror.ordering``. The upsert reports, it never calls upward: a run that needs
polling is announced with the ``polling_needed`` signal after commit (the poller listens), status changes with
the public signals of ``runs_app.signals``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db import connection as db_connection
from django.utils import timezone

from runs_app import signals
from runs_app.conf import app_settings
from runs_app.mirror.ordering import (
    MESSAGE_TERMINAL,
    WRITING_RUN_STATUSES,
    Observation,
    call_ids,
    merge_delta,
    run_payload_is_newer,
    simple_is_newer,
    text_of,
    ts,
    without_nul,
)
from runs_app.models import (
    TERMINAL_RUN_STATUSES,
    TERMINAL_STEP_STATUSES,
    Message,
    MessageStatus,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
    Source,
    Thread,
)


@dataclass(frozen=True)
class Applied:
    """The outcome of one upsert."""

    row: object
    created: bool
    applied: bool  # False: ignored as stale (the row is unchanged)
    old_status: str | None = None

    @property
    def status_changed(self) -> bool:
        return self.applied and self.old_status != getattr(self.row, "status", None)


def apply_thread(payload: dict, *, connection: str, seen: Observation) -> Applied:
    payload = without_nul(payload)
    with transaction.atomic():
        thread, created = _locked_get_or_create(
            Thread, connection, payload["id"], defaults={"created_at": ts(payload.get("created_at")),
                                                         **_thread_defaults()}
        )
        thread.raw = payload
        thread.created_at = ts(payload.get("created_at")) or thread.created_at
        thread.metadata = payload.get("metadata") or {}
        thread.tool_resources = payload.get("tool_resources")
        thread.synced_at = seen.received
        thread.save()
    return Applied(thread, created, True)


def thread_stub(connection: str, remote_id: str) -> Thread:
    """The thread row for a run or message that arrives before its thread (filled in later)."""
    thread, _ = _locked_get_or_create(Thread, connection, remote_id, defaults=_thread_defaults())
    return thread


def _discovery_interval() -> dt.timedelta:
    return dt.timedelta(seconds=app_settings.DISCOVERY_INTERVAL)


def _thread_defaults() -> dict:
    return {"next_discovery_at": timezone.now() + dt.timedelta(seconds=app_settings.DISCOVERY_INTERVAL)}


RUN_FIELDS = (
    "assistant_id", "required_action", "last_error", "incomplete_details", "model", "tool_resources",
    "tool_choice", "response_format", "truncation_strategy", "temperature", "top_p", "max_prompt_tokens",
    "max_completion_tokens", "parallel_tool_calls",
)


RUN_TIMES = ("created_at", "started_at", "expires_at", "cancelled_at", "failed_at", "completed_at")


def apply_run(payload: dict, *, connection: str, seen: Observation, user=None) -> Applied:
    """Apply a run object. Creates the thread stub if needed; records status changes in the timeline."""
    payload = without_nul(payload)
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(connection=connection, remote_id=payload["id"]).first()
        if run is None:  # (a known run's thread is known: the lookup of its stub is spared)
            fresh = Run(connection=connection, remote_id=payload["id"],
                        thread=thread_stub(connection, payload["thread_id"]))
            try:
                with transaction.atomic():  # one INSERT of the whole row
                    applied, event = _apply_to_run(fresh, True, payload, seen, user)
                    if event is not None:
                        event.save()
                return applied
            except IntegrityError:  # created meanwhile by another source: apply to that row
                run = Run.objects.select_for_update().get(connection=connection, remote_id=payload["id"])
        applied, event = _apply_to_run(run, False, payload, seen, user)
        if event is not None:
            event.save()
    return applied


def apply_runs(items: list[tuple[dict, Observation]], *, connection: str) -> list[Applied]:
    """Apply many run objects of one connection (a poll pass's) in one transaction, by the same rules as
    ``apply_run``: the known rows locked and read in one query, the timeline's new entries written in one."""
    items = [(without_nul(payload), seen) for payload, seen in items]
    with transaction.atomic():
        known = {run.remote_id: run for run in Run.objects.select_for_update().filter(
            connection=connection, remote_id__in=[payload["id"] for payload, _ in items])}
        results, events, written = [], [], []
        for payload, seen in items:
            run = known.get(payload["id"])
            if run is None:
                results.append(apply_run(payload, connection=connection, seen=seen))
                continue
            applied, event = _apply_to_run(run, False, payload, seen, None, save=False)
            results.append(applied)
            if applied.applied:
                written.append(run)
            if event is not None:
                events.append(event)
        _save_runs(written)
        RunEvent.objects.bulk_create(events)
    return results


def _save_runs(runs: list[Run]) -> None:
    """Write whole run rows as ``run.save()`` would (no signal listens to saves), as one prepared UPDATE sent for every
    row (``executemany``): a pass's changed runs cost the statement's compilation once, not once per run."""
    if not runs:
        return
    fields = [f for f in Run._meta.concrete_fields if not f.primary_key]
    quote = db_connection.ops.quote_name
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    # Quoted column names and placeholders only are interpolated; every value is a parameter.
    sql = f"UPDATE {quote(Run._meta.db_table)} SET {assignments} WHERE {quote(Run._meta.pk.column)} = %s"  # noqa: S608
    rows = [[f.get_db_prep_save(getattr(run, f.attname), db_connection) for f in fields] + [run.pk] for run in runs]
    with db_connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _apply_to_run(run: Run, created: bool, payload: dict, seen: Observation, user, *,
                  save: bool = True) -> tuple[Applied, RunEvent | None]:
    """The ordering rules and the write of one locked run row (left to the caller with ``save=False``); returns the
    timeline entry to write, if any."""
    old_status = None if created else run.status
    answered = set(run.answered_call_ids or [])
    if not created and not run_payload_is_newer(
        current_status=run.status, current_calls=call_ids(run.required_action), answered=answered,
        current_from=run.observed_from, current_to=run.observed_to, incoming=payload, seen=seen,
    ):
        return Applied(run, False, False, old_status), None
    new_status = payload.get("status") or run.status
    if old_status == RunStatus.REQUIRES_ACTION and new_status != RunStatus.REQUIRES_ACTION:
        answered |= call_ids(run.required_action)  # the outputs were taken, by us or by someone
    _fill_run(run, payload)
    run.answered_call_ids = sorted(answered)
    run.observed_from, run.observed_to, run.synced_at = seen.sent, seen.received, seen.received
    changed = created or old_status != new_status
    if changed:
        run.status_changed_at = seen.received
        run.stuck_since = None
        if new_status != RunStatus.REQUIRES_ACTION:
            run.expiring_flagged_at = None
    if run.expiring_flagged_at and run.expires_at and run.expires_at > seen.received + dt.timedelta(
            seconds=app_settings.EXPIRING_WITHIN):
        run.expiring_flagged_at = None  # Foundry moves expires_at (far later while requires_action)
    if new_status in TERMINAL_RUN_STATUSES:
        run.next_poll_at = None
        if changed:  # nothing new starts on the thread right after its run: the next listing, an interval on
            Thread.objects.filter(pk=run.thread_id, next_discovery_at__lt=seen.received + _discovery_interval()
                                  ).update(next_discovery_at=seen.received + _discovery_interval())
    elif created or run.next_poll_at is None or (changed and seen.source != Source.POLL):
        # A new run, or one an action or a stream moved on (a submit's queued): the poller's first look comes
        # when a change is likely (the poller, after its own polls, sets the next one itself).
        run.next_poll_at = seen.received + dt.timedelta(seconds=app_settings.POLL_FAST)
        transaction.on_commit(_announce_polling_needed)
    if save:
        run.save()
    event = None
    if changed:
        event = RunEvent(run=run, kind=RunEvent.Kind.STATUS, from_status=old_status or "", to_status=new_status,
                         source=seen.source, observed_at=seen.received, user=user)
        transaction.on_commit(lambda: _send_status_signals(run, old_status, new_status, seen.source))
    return Applied(run, created, True, old_status), event


def _fill_run(run: Run, payload: dict) -> None:
    run.raw = payload
    run.status = payload.get("status") or run.status
    for field in RUN_FIELDS:
        if field in payload:
            setattr(run, field, payload[field])
    for field in RUN_TIMES:
        if field in payload:
            setattr(run, field, ts(payload[field]))
    run.instructions = payload.get("instructions") or ""
    run.model = payload.get("model") or ""
    run.assistant_id = payload.get("assistant_id") or ""
    run.tools = payload.get("tools") or []
    run.metadata = payload.get("metadata") or {}
    run.last_error_code = ((payload.get("last_error") or {}).get("code") or "")[:64]
    usage = payload.get("usage") or {}
    run.prompt_tokens = usage.get("prompt_tokens")
    run.completion_tokens = usage.get("completion_tokens")
    run.total_tokens = usage.get("total_tokens")


def _send_status_signals(run: Run, old_status: str | None, new_status: str, source: str) -> None:
    signals.run_status_changed.send(sender=Run, run=run, old_status=old_status, new_status=new_status,
                                    source=source)
    if new_status == RunStatus.REQUIRES_ACTION:
        signals.run_requires_action.send(sender=Run, run=run)


STEP_TIMES = ("created_at", "cancelled_at", "failed_at", "completed_at")


def apply_step(payload: dict, *, connection: str, seen: Observation) -> Applied:
    payload = without_nul(payload)
    with transaction.atomic():
        run = _run_for(connection, payload)
        if run is None:
            return Applied(None, False, False)
        step, created = _locked_get_or_create(
            RunStep, connection, payload["id"],
            defaults={"run": run, "type": payload.get("type") or "", "created_at": ts(payload.get("created_at"))},
        )
        old_status = None if created else step.status
        new_status = payload.get("status") or step.status
        if not created and not simple_is_newer(old_status, new_status, TERMINAL_STEP_STATUSES, step, seen):
            return Applied(step, False, False, old_status)
        step.raw = payload
        step.type = payload.get("type") or step.type
        step.status = new_status
        step.step_details = payload.get("step_details") or {}
        step.last_error = payload.get("last_error")
        step.metadata = payload.get("metadata") or {}
        for field in STEP_TIMES:
            if field in payload:
                setattr(step, field, ts(payload[field]))
        # Real traffic says expires_at, the spec expired_at: accept either.
        step.expires_at = ts(payload.get("expires_at", payload.get("expired_at")))
        usage = payload.get("usage") or {}
        step.prompt_tokens = usage.get("prompt_tokens")
        step.completion_tokens = usage.get("completion_tokens")
        step.total_tokens = usage.get("total_tokens")
        step.observed_from, step.observed_to, step.synced_at = seen.sent, seen.received, seen.received
        step.save()
        if step.status == "completed" and step.type == "tool_calls":
            _mark_answered(run, {c.get("id") for c in step.tool_calls if c.get("type") == "function"})
    return Applied(step, created, True, old_status)


def apply_step_delta(payload: dict, *, connection: str, seen: Observation) -> RunStep | None:
    """Fold a ``thread.run.step.delta`` into its step: tool calls merged by index, arguments concatenated."""
    payload = without_nul(payload)
    with transaction.atomic():
        step = RunStep.objects.select_for_update().filter(connection=connection, remote_id=payload.get("id")).first()
        if step is None:
            return None
        delta = (payload.get("delta") or {}).get("step_details") or {}
        details = dict(step.step_details or {"type": delta.get("type", "tool_calls")})
        calls = list(details.get("tool_calls") or [])
        for part in delta.get("tool_calls") or []:
            index = part.get("index", len(calls))
            while len(calls) <= index:
                calls.append({})
            calls[index] = merge_delta(calls[index], {k: v for k, v in part.items() if k != "index"})
        details["tool_calls"] = calls
        step.step_details = details
        step.synced_at = seen.received
        step.save(update_fields=["step_details", "synced_at"])
    return step


def _mark_answered(run: Run, ids: set[str]) -> None:
    ids = {i for i in ids if i}
    if ids and not ids <= set(run.answered_call_ids or []):
        locked = Run.objects.select_for_update().get(pk=run.pk)
        locked.answered_call_ids = sorted(set(locked.answered_call_ids or []) | ids)
        locked.save(update_fields=["answered_call_ids"])


def apply_message(payload: dict, *, connection: str, seen: Observation, position: int | None = None) -> Applied:
    """Apply a message object; ``position`` is its place in the thread when it comes from a listing of the
    thread (it orders messages of the same second), kept whether or not the payload is newer."""
    payload = without_nul(payload)
    with transaction.atomic():
        thread = thread_stub(connection, payload["thread_id"])
        message, created = _locked_get_or_create(
            Message, connection, payload["id"],
            defaults={"thread": thread, "role": payload.get("role") or "", "created_at": ts(payload.get("created_at")),
                      **({"position": position} if position is not None else {})},
        )
        if position is not None and message.position != position:
            message.position = position
            Message.objects.filter(pk=message.pk).update(position=position)
        old_status = None if created else message.status
        run = None
        if payload.get("run_id"):
            run = message.run if message.run_id else Run.objects.filter(connection=connection,
                                                                       remote_id=payload["run_id"]).first()
        new_status = payload.get("status") or _implied_message_status(run, old_status)
        if not created and not simple_is_newer(old_status or MessageStatus.IN_PROGRESS, new_status,
                                                MESSAGE_TERMINAL, message, seen):
            return Applied(message, False, False, old_status)
        if (not created and new_status == old_status == MessageStatus.IN_PROGRESS
                and len(text_of(payload.get("content"))) < len(message.text)):
            return Applied(message, False, False, old_status)  # deltas already folded more text
        message.raw = payload
        message.role = payload.get("role") or message.role
        message.status = new_status
        message.content = payload.get("content") or []
        message.attachments = payload.get("attachments") or []
        message.incomplete_details = payload.get("incomplete_details")
        message.assistant_id = payload.get("assistant_id") or ""
        message.metadata = payload.get("metadata") or {}
        message.completed_at = ts(payload.get("completed_at"))
        message.incomplete_at = ts(payload.get("incomplete_at"))
        message.run_remote_id = payload.get("run_id") or ""
        if run is not None and message.run_id is None:
            message.run = run
        message.observed_from, message.observed_to, message.synced_at = seen.sent, seen.received, seen.received
        message.save()
    return Applied(message, created, True, old_status)


def _implied_message_status(run: Run | None, old_status: str | None) -> str:
    """REST messages of Azure and Foundry carry no status: a message of a run still going is being written; any
    other is final (what the mirror knew stays, if final)."""
    if run is not None and run.status in WRITING_RUN_STATUSES:
        return MessageStatus.IN_PROGRESS
    return old_status if old_status in MESSAGE_TERMINAL else MessageStatus.COMPLETED


def apply_message_delta(payload: dict, *, connection: str, seen: Observation) -> Message | None:
    """Fold a ``thread.message.delta``: blocks merged by index, text values concatenated."""
    payload = without_nul(payload)
    with transaction.atomic():
        message = Message.objects.select_for_update().filter(connection=connection,
                                                             remote_id=payload.get("id")).first()
        if message is None or message.status in MESSAGE_TERMINAL:
            return message
        content = list(message.content or [])
        for part in (payload.get("delta") or {}).get("content") or []:
            index = part.get("index", len(content))
            while len(content) <= index:
                content.append({})
            content[index] = merge_delta(content[index], {k: v for k, v in part.items() if k != "index"})
        message.content = content
        message.synced_at = seen.received
        message.save(update_fields=["content", "synced_at"])
    return message


def apply_event(name: str, data, *, connection: str, seen: Observation):
    """Apply one stream event to the mirror. Returns the affected row (None for events that carry none)."""
    if not isinstance(data, dict):
        return None
    if name == "thread.created":
        return apply_thread(data, connection=connection, seen=seen).row
    if name.startswith("thread.run.step."):
        if name == "thread.run.step.delta":
            return apply_step_delta(data, connection=connection, seen=seen)
        return apply_step(data, connection=connection, seen=seen).row
    if name.startswith("thread.run."):
        return apply_run(data, connection=connection, seen=seen).row
    if name == "thread.message.delta":
        return apply_message_delta(data, connection=connection, seen=seen)
    if name.startswith("thread.message."):
        return apply_message(data, connection=connection, seen=seen).row
    return None


def _run_for(connection: str, payload: dict) -> Run | None:
    run = Run.objects.filter(connection=connection, remote_id=payload.get("run_id")).first()
    if run is None and payload.get("thread_id") and payload.get("run_id"):
        # A step seen before its run (list order, stream race): create a placeholder the next poll fills.
        thread = thread_stub(connection, payload["thread_id"])
        run, _ = _locked_get_or_create(Run, connection, payload["run_id"],
                                       defaults={"thread": thread, "status": RunStatus.QUEUED,
                                                 "next_poll_at": timezone.now()})
    return run


def _locked_get_or_create(model, connection: str, remote_id: str, *, defaults: dict):
    """The row, locked for this transaction, created if missing (a concurrent creator is waited for)."""
    query = model.objects.select_for_update()
    row = query.filter(connection=connection, remote_id=remote_id).first()
    if row is not None:
        return row, False
    try:
        with transaction.atomic():
            return model.objects.create(connection=connection, remote_id=remote_id, **defaults), True
    except IntegrityError:
        return query.get(connection=connection, remote_id=remote_id), False


def _announce_polling_needed() -> None:
    signals.polling_needed.send(sender=Run)

"""The one upsert: applies a remote object from any source (poll, list page, stream event, action response).

Each ``apply_*`` runs in a transaction under a row lock and is idempotent. Ordering rules (runs):

1. A terminal run never reverts; a payload of the same terminal status may refresh its fields.
2. Happens-before from request timing: a payload whose request was sent after the stored state's
   answer arrived is newer and wins; one whose answer arrived before the stored state's request was
   sent is older and is ignored.
3. Concurrent observations (overlapping request windows) are ordered by lifecycle rank
   (queued < in_progress < requires_action < cancelling < terminal), except that
   ``requires_action → queued/in_progress`` (after tool outputs) is accepted once the pending calls are
   known to be answered, and a ``requires_action`` for calls already answered is stale.

The protocol has no version numbers or update timestamps, so timing and rank are all there is; a
non-terminal run keeps being polled, so any wrong guess in case 3 is corrected by the next poll.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from runs_app import signals
from runs_app.conf import app_settings
from runs_app.models import (
    TERMINAL_RUN_STATUSES,
    TERMINAL_STEP_STATUSES,
    Message,
    MessageStatus,
    Run,
    RunEvent,
    RunStatus,
    RunStep,
    Thread,
)

RUN_RANK = {
    RunStatus.QUEUED: 0,
    RunStatus.IN_PROGRESS: 1,
    RunStatus.REQUIRES_ACTION: 2,
    RunStatus.CANCELLING: 3,
}
TERMINAL_RANK = 4


@dataclass(frozen=True)
class Observation:
    """When a payload was observed: its request was sent at ``sent`` and answered at ``received``."""

    source: str
    sent: dt.datetime
    received: dt.datetime

    @classmethod
    def now(cls, source: str, sent: dt.datetime | None = None) -> Observation:
        received = timezone.now()
        return cls(source, sent or received, received)


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


def without_nul(value):
    """The value with U+0000 replaced by U+FFFD: PostgreSQL stores no NUL in text or jsonb, and remote
    objects (model output, echoed input) may carry one. Applied to everything the mirror stores."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def ts(value) -> dt.datetime | None:
    """The protocol's Unix seconds as an aware datetime (None stays None)."""
    if value is None or value == "":
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)


def run_rank(status: str) -> int:
    return TERMINAL_RANK if status in TERMINAL_RUN_STATUSES else RUN_RANK.get(status, 0)


def call_ids(required_action) -> set[str]:
    calls = ((required_action or {}).get("submit_tool_outputs") or {}).get("tool_calls") or []
    return {c.get("id") for c in calls if c.get("id")}


def run_payload_is_newer(*, current_status: str, current_calls: set[str], answered: set[str],
                         current_from, current_to, incoming: dict, seen: Observation) -> bool:
    """The ordering rules above, as a pure function (tested with hypothesis)."""
    new_status = incoming.get("status")
    if current_status in TERMINAL_RUN_STATUSES:
        if new_status != current_status:
            return False  # rule 1
        return current_from is None or seen.received >= current_from
    if new_status in TERMINAL_RUN_STATUSES:
        return True
    if current_to is not None and seen.sent > current_to:
        return True  # rule 2: newer
    if current_from is not None and seen.received < current_from:
        return False  # rule 2: older
    new_calls = call_ids(incoming.get("required_action"))
    if new_status == RunStatus.REQUIRES_ACTION and new_calls and new_calls <= answered:
        return False  # rule 3: waits for calls already answered
    if current_status == RunStatus.REQUIRES_ACTION and new_status in (RunStatus.QUEUED, RunStatus.IN_PROGRESS):
        return bool(current_calls) and current_calls <= answered
    return run_rank(new_status) >= run_rank(current_status)


# --- threads ----------------------------------------------------------------------------------------

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


def _thread_defaults() -> dict:
    return {"next_discovery_at": timezone.now() + dt.timedelta(seconds=float(app_settings.DISCOVERY_INTERVAL))}


# --- runs -------------------------------------------------------------------------------------------

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
        thread = thread_stub(connection, payload["thread_id"])
        run, created = _locked_get_or_create(
            Run, connection, payload["id"],
            defaults={"thread": thread, "status": payload.get("status") or RunStatus.QUEUED,
                      "created_at": ts(payload.get("created_at"))},
        )
        old_status = None if created else run.status
        answered = set(run.answered_call_ids or [])
        if not created and not run_payload_is_newer(
            current_status=run.status, current_calls=call_ids(run.required_action), answered=answered,
            current_from=run.observed_from, current_to=run.observed_to, incoming=payload, seen=seen,
        ):
            return Applied(run, False, False, old_status)
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
                seconds=float(app_settings.EXPIRING_WITHIN)):
            run.expiring_flagged_at = None  # Foundry moves expires_at (far later while requires_action)
        if new_status in TERMINAL_RUN_STATUSES:
            run.next_poll_at = None
        elif created or run.next_poll_at is None:
            run.next_poll_at = seen.received  # the poller takes it from here
            transaction.on_commit(_wake_poller)
        run.save()
        if changed:
            RunEvent.objects.create(run=run, kind=RunEvent.Kind.STATUS, from_status=old_status or "",
                                    to_status=new_status, source=seen.source, observed_at=seen.received, user=user)
            transaction.on_commit(lambda: _send_status_signals(run, old_status, new_status, seen.source))
    return Applied(run, created, True, old_status)


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


def _wake_poller() -> None:
    from runs_app import poller

    poller.wake()


def _send_status_signals(run: Run, old_status: str | None, new_status: str, source: str) -> None:
    signals.run_status_changed.send(sender=Run, run=run, old_status=old_status, new_status=new_status,
                                    source=source)
    if new_status == RunStatus.REQUIRES_ACTION:
        signals.run_requires_action.send(sender=Run, run=run)


# --- run steps --------------------------------------------------------------------------------------

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
        if not created and not _simple_is_newer(old_status, new_status, TERMINAL_STEP_STATUSES, step, seen):
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


# --- messages ---------------------------------------------------------------------------------------

MESSAGE_TERMINAL = frozenset({MessageStatus.COMPLETED, MessageStatus.INCOMPLETE})


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
        if not created and not _simple_is_newer(old_status or MessageStatus.IN_PROGRESS, new_status,
                                                MESSAGE_TERMINAL, message, seen):
            return Applied(message, False, False, old_status)
        if (not created and new_status == old_status == MessageStatus.IN_PROGRESS
                and len(_text_of(payload.get("content"))) < len(message.text)):
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


#: While its run is in one of these, a message of the run may still grow.
WRITING_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.CANCELLING})


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


def merge_delta(snapshot, delta):
    """Merge a streamed delta into a snapshot the way the SDKs do: strings concatenated, dicts merged,
    lists of indexed items merged by ``index``, other values replaced."""
    if isinstance(snapshot, dict) and isinstance(delta, dict):
        merged = dict(snapshot)
        for key, value in delta.items():
            if key in ("index", "type", "id") or key not in merged:
                merged[key] = value  # identifiers are replaced, never concatenated (as openai-python does)
            else:
                merged[key] = merge_delta(merged[key], value)
        return merged
    if isinstance(snapshot, str) and isinstance(delta, str):
        return snapshot + delta
    if isinstance(snapshot, list) and isinstance(delta, list):
        merged = list(snapshot)
        for item in delta:
            if isinstance(item, dict) and "index" in item:
                index = item["index"]
                while len(merged) <= index:
                    merged.append({})
                merged[index] = merge_delta(merged[index], {k: v for k, v in item.items() if k != "index"})
            else:
                merged.append(item)
        return merged
    return delta if delta is not None else snapshot


def _text_of(content) -> str:
    return "".join(b.get("text", {}).get("value", "") for b in content or [] if isinstance(b, dict))


# --- stream events ----------------------------------------------------------------------------------

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


# --- helpers ----------------------------------------------------------------------------------------

def _simple_is_newer(old_status, new_status, terminal, row, seen: Observation) -> bool:
    """Steps and messages: terminal never reverts, then happens-before, then rank."""
    if old_status in terminal:
        return new_status == old_status and (row.observed_from is None or seen.received >= row.observed_from)
    if new_status in terminal:
        return True
    if row.observed_to is not None and seen.sent > row.observed_to:
        return True
    # Older: ignore. Both in progress and concurrent: take it (content is compared by the caller).
    return not (row.observed_from is not None and seen.received < row.observed_from)


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

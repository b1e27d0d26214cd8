"""Runs: create, cancel, modify metadata, submit tool outputs, refresh; and what a poll or an action's answer
fetches with them (steps, the thread's new messages)."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from runs_app.assistants import AssistantsClient, AssistantsError
from runs_app.conf import app_settings
from runs_app.mirror import upsert
from runs_app.mirror.ordering import Observation
from runs_app.models import STOPPED_RUN_STATUSES, Run, RunStatus, Source, Thread
from runs_app.services.audit import ActionAudit, real_user
from runs_app.services.clients import get_client
from runs_app.services.errors import RunStateConflict
from runs_app.services.messages import messages_sync_after_create, thread_messages_sync
from runs_app.services.polling import request_polling
from runs_app.services.validation import validate_metadata, validate_run_request, validate_tool_outputs

logger = logging.getLogger("runs_app.services")

def ensure_thread_idle(thread: Thread) -> None:
    """The service allows one active run per thread: refuse a new one while the thread's run is active. The mirror
    may be behind (the run ended since the last poll), so an active run is looked at once before refusing."""
    active = thread.runs.active().order_by("-created_at").first()
    if active is None:
        return
    try:
        active = run_poll(run=active)
    except AssistantsError as exc:  # cannot look: the mirror's word stands
        logger.info("%s: could not look at %s before refusing a new run: %s", thread.remote_id, active.remote_id, exc)
    if not active.is_terminal:
        raise RunStateConflict(f"Run {active.remote_id} is still {active.status} on thread {thread.remote_id}; "
                               "wait for it to end or cancel it first.", param="thread_id")


def run_create(*, thread: Thread, assistant_id: str, user=None, **fields) -> Run:
    validate_run_request(assistant_id, fields)
    ensure_thread_idle(thread)
    sent = {"assistant_id": assistant_id, **{k: v for k, v in fields.items() if v is not None}}
    client = get_client(thread.connection)
    with ActionAudit(action="create_run", connection=thread.connection, target=thread.remote_id, user=user,
                     thread=thread, sent=sent) as audit:
        started = timezone.now()
        # A new user message goes inside the create (additional_messages): a refused run leaves nothing behind.
        payload = client.create_run(thread.remote_id, assistant_id=assistant_id, **fields)
        run = upsert.apply_run(payload, connection=thread.connection, seen=Observation.now(Source.ACTION, started),
                             user=real_user(user)).row
        audit.action.target = run.remote_id
        audit.succeeded(payload, run=run, thread=thread)
    if fields.get("additional_messages"):
        messages_sync_after_create(run.thread, client)
    request_polling()
    return run


def thread_and_run_create(*, assistant_id: str, connection: str | None = None, thread: dict | None = None,
                          user=None, **fields) -> Run:
    connection = connection or app_settings.DEFAULT_CONNECTION
    validate_run_request(assistant_id, fields, thread=thread)
    sent = {"assistant_id": assistant_id, "thread": thread, **{k: v for k, v in fields.items() if v is not None}}
    client = get_client(connection)
    with ActionAudit(action="create_thread_and_run", connection=connection, target="(new thread)", user=user,
                     sent=sent) as audit:
        started = timezone.now()
        payload = client.create_thread_and_run(assistant_id=assistant_id, thread=thread, **fields)
        seen = Observation.now(Source.ACTION, started)
        run = upsert.apply_run(payload, connection=connection, seen=seen, user=real_user(user)).row
        audit.action.target = run.remote_id
        audit.succeeded(payload, run=run, thread=run.thread)
    if (thread or {}).get("messages"):
        messages_sync_after_create(run.thread, client)
    request_polling()
    return run


def run_cancel(*, run: Run, user=None) -> Run:
    if run.is_terminal or run.status == RunStatus.CANCELLING:
        raise RunStateConflict(f"Run {run.remote_id} is already {run.status}; it cannot be cancelled.",
                               param="run_id")
    with ActionAudit(action="cancel_run", connection=run.connection, target=run.remote_id, user=user, run=run) as audit:
        started = timezone.now()
        payload = get_client(run.connection).cancel_run(run.thread.remote_id, run.remote_id)
        run = _apply_action_answer(payload, run, started, user)
        audit.succeeded(payload, run=run)
    return run


def run_modify_metadata(*, run: Run, metadata: dict, user=None) -> Run:
    metadata = validate_metadata(metadata)
    with ActionAudit(action="modify_metadata", connection=run.connection, target=run.remote_id, user=user, run=run,
                sent={"metadata": metadata}) as audit:
        started = timezone.now()
        payload = get_client(run.connection).modify_run(run.thread.remote_id, run.remote_id, metadata=metadata)
        run = _apply_action_answer(payload, run, started, user)
        audit.succeeded(payload, run=run)
    return run


def run_submit_tool_outputs(*, run: Run, tool_outputs: list[dict], user=None) -> Run:
    outputs = validate_tool_outputs(run, tool_outputs)
    with ActionAudit(action="submit_tool_outputs", connection=run.connection, target=run.remote_id, user=user, run=run,
                sent={"tool_outputs": outputs}) as audit:
        started = timezone.now()
        payload = get_client(run.connection).submit_tool_outputs(run.thread.remote_id, run.remote_id,
                                                                 tool_outputs=outputs)
        mark_answered(run, [o["tool_call_id"] for o in outputs])
        run = _apply_action_answer(payload, run, started, user)
        audit.succeeded(payload, run=run)
    request_polling()
    return run


def run_refresh(*, run: Run, user=None) -> Run:
    """Fetch the run, its steps and its messages now (an operator's refresh)."""
    with ActionAudit(action="refresh_run", connection=run.connection, target=run.remote_id, user=user,
                     run=run) as audit:
        run = run_poll(run=run, source=Source.ACTION, force_details=True)
        audit.succeeded({"status": run.status}, run=run)
    return run


def run_poll(*, run: Run, source: str = Source.POLL, force_details: bool = False,
             client: AssistantsClient | None = None) -> Run:
    """Retrieve the run, apply it, and fetch its steps and messages when the run shows they changed."""
    client = client or get_client(run.connection)
    started = timezone.now()
    payload = client.retrieve_run(run.thread.remote_id, run.remote_id)
    if force_details:
        run = upsert.apply_run(payload, connection=run.connection, seen=Observation.now(source, started)).row
        run_details_sync(run=run, client=client, source=source)
        return run
    return run_apply_polled(run=run, payload=payload, seen=Observation.now(source, started), client=client)


def runs_apply_polled(*, polls: list[tuple[Run, dict, Observation]]) -> list[Run]:
    """Apply a poll pass's run objects through the upsert in ONE transaction (each row by the same rules as alone);
    their steps and messages are the caller's to fetch (``details_owed``, ``run_details_sync``)."""
    by_connection: dict[str, list[int]] = {}
    for index, (run, _, _) in enumerate(polls):
        by_connection.setdefault(run.connection, []).append(index)
    rows: list[Run | None] = [None] * len(polls)
    with transaction.atomic():
        for name, indexes in by_connection.items():
            applied = upsert.apply_runs([(polls[i][1], polls[i][2]) for i in indexes], connection=name)
            for i, result in zip(indexes, applied, strict=True):
                rows[i] = result.row
    return rows


def run_apply_polled(*, run: Run, payload: dict, seen: Observation, client: AssistantsClient | None = None) -> Run:
    """Apply a polled run object, and fetch the run's steps and messages if it shows they changed."""
    run = upsert.apply_run(payload, connection=run.connection, seen=seen).row
    if details_owed(run):
        run_details_sync(run=run, client=client, source=seen.source)
    return run


def details_marker(run: Run) -> str:
    """What, in a run object, says its steps or messages changed: status, pending calls, token count."""
    pending = ",".join(sorted(c.get("id", "") for c in run.pending_tool_calls))
    return f"{run.status}|{pending}|{run.total_tokens or 0}|{len(run.answered_call_ids or [])}"[:200]


def details_owed(run: Run) -> bool:
    """The run stands at a status whose steps and messages we fetch, and they were not fetched for it yet."""
    return run.status in STOPPED_RUN_STATUSES and details_marker(run) != run.steps_synced_for


def run_details_sync(*, run: Run, client: AssistantsClient | None = None, source: str = Source.POLL,
                     messages: bool = True) -> None:
    """Fetch the run's steps (every page) and the thread's new messages (``thread_messages_sync``: the run's own,
    and whatever else was added to the thread). If that fails, the run is left due for a poll, even when it is
    terminal: the poller fetches them again (a terminal run is polled only while it is owed them)."""
    client = client or get_client(run.connection)
    marker = details_marker(run)
    try:
        started = timezone.now()
        written = set()
        for step in client.iter_run_steps(run.thread.remote_id, run.remote_id, order="asc"):
            upsert.apply_step(step, connection=run.connection, seen=Observation.now(source, started))
            written.add(((step.get("step_details") or {}).get("message_creation") or {}).get("message_id"))
        if messages:
            thread_messages_sync(thread=run.thread, client=client, source=source,
                                 expect=frozenset(written - {None}))
    except AssistantsError:
        retry_at = timezone.now() + dt.timedelta(seconds=app_settings.POLL_FAST)
        Run.objects.filter(pk=run.pk, next_poll_at__isnull=True).update(next_poll_at=retry_at)
        raise
    Run.objects.filter(pk=run.pk).update(steps_synced_for=marker)
    run.steps_synced_for = marker


def _apply_action_answer(payload: dict, run: Run, started, user) -> Run:
    return upsert.apply_run(payload, connection=run.connection, seen=Observation.now(Source.ACTION, started),
                          user=real_user(user)).row


def mark_answered(run: Run, ids: list[str]) -> None:
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        locked.answered_call_ids = sorted(set(locked.answered_call_ids or []) | set(ids))
        locked.save(update_fields=["answered_call_ids"])
    run.answered_call_ids = locked.answered_call_ids

"""A thread's messages: every one of them in the mirror (``thread_messages_sync``), and adding one."""

from __future__ import annotations

import logging

from django.utils import timezone

from runs_app.assistants import AssistantsClient, AssistantsError, BadRequest, NotFound
from runs_app.mirror import upsert
from runs_app.mirror.ordering import MESSAGE_TERMINAL, Observation
from runs_app.models import STOPPED_RUN_STATUSES, UNLISTED_POSITION, Message, Run, Source, Thread
from runs_app.services.audit import ActionAudit
from runs_app.services.clients import get_client
from runs_app.services.validation import validate_message

logger = logging.getLogger("runs_app.services")

def message_create(*, thread: Thread, content: str | list, role: str = "user", attachments: list | None = None,
                   metadata: dict | None = None, user=None) -> Message:
    """Add a message to a thread: the protocol's create-message body, validated as the service would."""
    body = validate_message({"role": role, "content": content, "attachments": attachments, "metadata": metadata})
    with ActionAudit(action="create_message", connection=thread.connection, target=thread.remote_id, user=user,
                     thread=thread, sent=body) as audit:
        started = timezone.now()
        payload = get_client(thread.connection).create_message(thread.remote_id, **body)
        message = upsert.apply_message(payload, connection=thread.connection,
                                     seen=Observation.now(Source.ACTION, started)).row
        audit.succeeded({"id": payload.get("id"), "object": payload.get("object")}, thread=thread)
    return message


def thread_messages_sync(*, thread: Thread, client: AssistantsClient | None = None,
                         source: str = Source.POLL, expect: frozenset[str] = frozenset()) -> int:
    """Fetch the thread's messages newer than its cursor, oldest first, and apply them: every message of the
    thread, whoever wrote it (the prompt sent with the thread, messages added before a run or by another
    application, the runs' answers). One request when nothing is new. Returns how many were listed.

    The cursor then moves to the newest message that can no longer change — one not written by a run, or one
    whose run has stopped (requires_action or terminal in the mirror) — so a message still being written is
    listed again by the next sync, once its run stopped.

    ``expect``: ids of messages known to exist (a run's message_creation steps name them). One missing after a
    listing from the cursor means the cursor's message was deleted on the service — which may answer an empty
    page rather than an error —, so the whole thread is listed again."""
    client = client or get_client(thread.connection)
    cursor = thread.messages_cursor
    started = timezone.now()
    try:
        payloads = list(client.iter_messages(thread.remote_id, order="asc", after=cursor or None))
    except (NotFound, BadRequest):
        if not cursor:
            raise
        return _thread_messages_sync_again(thread, client, source, cursor)
    if cursor and expect and not expect <= {p.get("id") for p in payloads} | set(
            Message.objects.filter(thread=thread, remote_id__in=expect).values_list("remote_id", flat=True)):
        return _thread_messages_sync_again(thread, client, source, cursor)
    seen = Observation.now(source, started)
    base = _position_after(thread, cursor)
    stopped = set(Run.objects.filter(
        connection=thread.connection, remote_id__in={p.get("run_id") for p in payloads if p.get("run_id")},
        status__in=STOPPED_RUN_STATUSES).values_list("remote_id", flat=True))
    new_cursor, settled = cursor, True
    for offset, payload in enumerate(payloads):
        upsert.apply_message(payload, connection=thread.connection, seen=seen, position=base + offset)
        settled = settled and (payload.get("status") in MESSAGE_TERMINAL or not payload.get("run_id")
                               or payload["run_id"] in stopped)
        if settled:
            new_cursor = payload["id"]
    # Compare-and-set: a concurrent sync that already moved the cursor wins.
    Thread.objects.filter(pk=thread.pk, messages_cursor=cursor).update(messages_cursor=new_cursor,
                                                                       messages_synced_at=seen.received)
    thread.messages_cursor = new_cursor
    return len(payloads)


def _thread_messages_sync_again(thread: Thread, client: AssistantsClient, source: str, cursor: str) -> int:
    logger.info("%s: message cursor %s is gone from the service; listing the thread's messages from the start",
                thread.remote_id, cursor)
    Thread.objects.filter(pk=thread.pk, messages_cursor=cursor).update(messages_cursor="")
    thread.messages_cursor = ""
    return thread_messages_sync(thread=thread, client=client, source=source)


def _position_after(thread: Thread, cursor: str) -> int:
    if not cursor:
        return 0
    position = Message.objects.filter(thread=thread, remote_id=cursor).values_list("position", flat=True).first()
    if position is None or position >= UNLISTED_POSITION:
        return Message.objects.filter(thread=thread).count()
    return position + 1


def messages_sync_after_create(thread: Thread, client: AssistantsClient | None = None) -> None:
    """After a create that added messages (a thread's, a run's additional_messages): mirror them now, so the prompt
    shows while the run goes on. Best effort: if it fails, the run's end brings them."""
    try:
        thread_messages_sync(thread=thread, client=client, source=Source.ACTION)
    except AssistantsError as exc:
        logger.warning("%s: the new messages could not be listed now (%s); the run's end brings them",
                       thread.remote_id, exc)

"""Threads: create, import (with all their runs, steps and messages), and what an import fetches."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.utils import timezone

from runs_app.conf import app_settings
from runs_app.mirror import upsert
from runs_app.mirror.ordering import Observation
from runs_app.models import Source, Thread
from runs_app.services.audit import ActionAudit
from runs_app.services.clients import get_client
from runs_app.services.messages import messages_sync_after_create, thread_messages_sync
from runs_app.services.polling import request_polling
from runs_app.services.runs import run_details_sync
from runs_app.services.validation import validate_messages, validate_metadata


def thread_create(*, connection: str | None = None, messages: list | None = None, tool_resources: dict | None = None,
                  metadata: dict | None = None, user=None) -> Thread:
    connection = connection or app_settings.DEFAULT_CONNECTION
    metadata = validate_metadata(metadata)
    messages = validate_messages(messages, field="messages")
    sent = {"messages": messages, "tool_resources": tool_resources, "metadata": metadata}
    client = get_client(connection)
    with ActionAudit(action="create_thread", connection=connection, target="(new thread)", user=user,
                     sent=sent) as audit:
        started = timezone.now()
        payload = client.create_thread(messages=messages, tool_resources=tool_resources, metadata=metadata or None)
        thread = upsert.apply_thread(payload, connection=connection, seen=Observation.now(Source.ACTION, started)).row
        audit.action.target = thread.remote_id
        audit.succeeded(payload, thread=thread)
    if messages:
        messages_sync_after_create(thread, client)
    request_polling()  # discovery follows the new thread
    return thread


def thread_import(*, thread_id: str, connection: str | None = None, user=None) -> Thread:
    """Fetch a thread with all its runs, their steps, and its messages (every page)."""
    connection = connection or app_settings.DEFAULT_CONNECTION
    thread_id = (thread_id or "").strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", thread_id):
        raise ValidationError({"thread_id": ["Give a thread id such as thread_abc123."]})
    with ActionAudit(action="import_thread", connection=connection, target=thread_id, user=user,
                sent={"thread_id": thread_id}) as audit:
        thread, counts = thread_sync(connection=connection, thread_id=thread_id, source=Source.IMPORT)
        audit.succeeded({"thread_id": thread_id, **counts}, thread=thread)
    request_polling()
    return thread


def thread_sync(*, connection: str, thread_id: str, source: str = Source.IMPORT) -> tuple[Thread, dict]:
    """The thread, all its runs with their steps, and all its messages (every page)."""
    client = get_client(connection)
    started = timezone.now()
    payload = client.retrieve_thread(thread_id)
    thread = upsert.apply_thread(payload, connection=connection, seen=Observation.now(source, started)).row
    started = timezone.now()
    runs = [upsert.apply_run(run_payload, connection=connection, seen=Observation.now(source, started)).row
            for run_payload in client.iter_runs(thread_id, order="asc")]
    # The messages once for the whole thread, after the runs (whose statuses say which messages are final).
    messages = thread_messages_sync(thread=thread, client=client, source=source)
    for run in runs:
        run_details_sync(run=run, client=client, source=source, messages=False)
    Thread.objects.filter(pk=thread.pk).update(tracked=True, next_discovery_at=timezone.now())
    return thread, {"runs": len(runs), "messages": messages}

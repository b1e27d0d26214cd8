"""Actions answered by the service's event stream: create a run, create a thread and run, submit tool outputs, each
with ``stream: true``. Each validates and checks its preconditions, opens the stream (a refusal is an
``AssistantsError`` before any event) and returns an ``OpenedStream``; whoever reads it (the relay to a client)
applies its events to the mirror and calls ``run_seen`` when the first run event names the run."""

from __future__ import annotations

from dataclasses import dataclass, field

from runs_app.assistants import EventStream
from runs_app.conf import app_settings
from runs_app.models import Run, Thread
from runs_app.services.audit import ActionAudit, real_user
from runs_app.services.clients import get_client
from runs_app.services.messages import messages_sync_after_create
from runs_app.services.runs import ensure_thread_idle, mark_answered
from runs_app.services.validation import validate_run_request, validate_tool_outputs


@dataclass
class OpenedStream:
    """A service stream opened by an action, and what is left to do once its run is known."""

    events: EventStream
    connection: str
    audit: ActionAudit | None = None
    #: The run's id when known before the first event (a submit); else taken from the first run event.
    run_remote_id: str | None = None
    #: The create carried messages: the stream never shows a user's, so they are listed once the run exists.
    sync_messages: bool = False
    _seen: bool = field(default=False, repr=False)

    def run_seen(self, run: Run) -> None:
        """The first run event arrived: complete the audit, and mirror the messages the create carried."""
        if self._seen:
            return
        self._seen = True
        self.run_remote_id = self.run_remote_id or run.remote_id
        if self.audit is not None:
            self.audit.action.target = run.remote_id
            self.audit.succeeded({"stream": True, "run_id": run.remote_id}, run=run, thread=run.thread)
        if self.sync_messages:
            messages_sync_after_create(run.thread)

    def close(self) -> None:
        self.events.close()


def run_create_stream(*, thread: Thread, assistant_id: str, user=None, **fields) -> OpenedStream:
    validate_run_request(assistant_id, fields)
    ensure_thread_idle(thread)
    sent = {"assistant_id": assistant_id, "stream": True, **{k: v for k, v in fields.items() if v is not None}}
    audit = ActionAudit(action="create_run", connection=thread.connection, target=thread.remote_id, user=user,
                        thread=thread, sent=sent)
    with audit:
        events = get_client(thread.connection).create_run_stream(thread.remote_id, assistant_id=assistant_id,
                                                                 **fields)
    return OpenedStream(events, thread.connection, audit, sync_messages=bool(fields.get("additional_messages")))


def thread_and_run_create_stream(*, assistant_id: str, connection: str | None = None, thread: dict | None = None,
                                 user=None, **fields) -> OpenedStream:
    connection = connection or app_settings.DEFAULT_CONNECTION
    validate_run_request(assistant_id, fields, thread=thread)
    sent = {"assistant_id": assistant_id, "thread": thread, "stream": True,
            **{k: v for k, v in fields.items() if v is not None}}
    audit = ActionAudit(action="create_thread_and_run", connection=connection, target="(new thread)", user=user,
                        sent=sent)
    with audit:
        events = get_client(connection).create_thread_and_run_stream(assistant_id=assistant_id, thread=thread,
                                                                     **fields)
    return OpenedStream(events, connection, audit, sync_messages=bool((thread or {}).get("messages")))


def run_submit_tool_outputs_stream(*, run: Run, tool_outputs: list[dict], user=None) -> OpenedStream:
    outputs = validate_tool_outputs(run, tool_outputs)
    audit = ActionAudit(action="submit_tool_outputs", connection=run.connection, target=run.remote_id,
                        user=real_user(user), run=run, sent={"tool_outputs": outputs, "stream": True})
    with audit:
        events = get_client(run.connection).submit_tool_outputs_stream(run.thread.remote_id, run.remote_id,
                                                                       tool_outputs=outputs)
    try:
        mark_answered(run, [o["tool_call_id"] for o in outputs])
        audit.succeeded({"stream": True, "run_id": run.remote_id}, run=run)
    except BaseException:
        events.close()  # nobody will read it
        raise
    opened = OpenedStream(events, run.connection, None, run_remote_id=run.remote_id)
    opened._seen = True  # the run is known and the audit done
    return opened

"""Every write goes through here: the admin, the API, the pages and the tasks all call these services.

Services validate input before calling the service (``django.core.exceptions.ValidationError`` with the
field and the reason), call it through the client, apply the answer through the one upsert
(``runs_app.sync``) and, for operator actions, write the audit log (``OperatorAction``) and the run's
timeline. Remote errors propagate as the client's ``AssistantsError`` ladder, after being audited.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from runs_app import sync
from runs_app.assistants import APIStatusError, AssistantsClient, AssistantsError, BadRequest, NotFound
from runs_app.conf import app_settings
from runs_app.models import UNLISTED_POSITION, Message, OperatorAction, Run, RunEvent, RunStatus, Source, Thread
from runs_app.sync import Observation

logger = logging.getLogger("runs_app.services")

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512
_SECRET_KEY_RE = re.compile(r"(api[-_]?key|token|secret|password|authorization|credential)", re.IGNORECASE)

#: How clients are made; tests and embedding sites may replace it (e.g. to pass a TokenCredential).
client_factory: Callable[[str], AssistantsClient] = AssistantsClient


def get_client(connection: str | None = None) -> AssistantsClient:
    return client_factory(connection or app_settings.DEFAULT_CONNECTION)


# --- validation -------------------------------------------------------------------------------------

def validate_metadata(metadata: Any, *, field: str = "metadata") -> dict:
    """The service's limits: at most 16 keys, keys up to 64 characters, string values up to 512."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValidationError({field: ["Must be an object of string keys and string values."]})
    errors = []
    if len(metadata) > METADATA_MAX_KEYS:
        errors.append(f"At most {METADATA_MAX_KEYS} keys are allowed; got {len(metadata)}.")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            errors.append(f"Key {key!r} must be a non-empty string.")
        elif len(key) > METADATA_MAX_KEY_LENGTH:
            errors.append(f"Key {key[:20]!r}… is {len(key)} characters; the limit is {METADATA_MAX_KEY_LENGTH}.")
        if not isinstance(value, str):
            errors.append(f"The value of {str(key)[:64]!r} must be a string.")
        elif len(value) > METADATA_MAX_VALUE_LENGTH:
            errors.append(f"The value of {key[:64]!r} is {len(value)} characters; the limit is "
                          f"{METADATA_MAX_VALUE_LENGTH}.")
    if errors:
        raise ValidationError({field: errors})
    return metadata


#: The service's limit on a message's text (OpenAI: "string too long … maximum length 256000").
MESSAGE_MAX_CHARACTERS = 256_000
MESSAGE_FIELDS = ("role", "content", "attachments", "metadata")
MESSAGE_ROLES = ("user", "assistant")
CONTENT_PART_TYPES = ("text", "image_file", "image_url")
IMAGE_DETAILS = ("auto", "low", "high")
ATTACHMENT_TOOLS = ("code_interpreter", "file_search")


def validate_message(body: Any, *, field: str = "") -> dict:
    """A create-message body as the service validates it (also each of a thread's ``messages`` and a run's
    ``additional_messages``, with ``field`` their path): role, content as a string or content parts, attachments,
    metadata. Refuses what the service would refuse — and empty or whitespace-only text, which it would take and
    the model would answer — with the exact field (``content[1].text``) named. Returns the body to send."""
    prefix = f"{field}." if field else ""

    def fail(name: str, message: str):
        raise ValidationError({f"{prefix}{name}" if name else (field or "body"): [message]})

    if not isinstance(body, dict):
        fail("", "Give a message: an object with role and content.")
    for key in body:
        if key not in MESSAGE_FIELDS:
            fail(str(key), f"Unknown field; a message has {', '.join(MESSAGE_FIELDS)}.")
    role = body.get("role")
    if role not in MESSAGE_ROLES:
        fail("role", "Required: 'user' or 'assistant'." if role is None else "Must be 'user' or 'assistant'.")
    if "content" not in body or body["content"] is None:
        fail("content", "Required: the message's text, or a list of content parts.")
    content = _validated_content(body.get("content"), fail)
    out = {"role": role, "content": content}
    attachments = body.get("attachments")
    if attachments is not None:
        out["attachments"] = _validated_attachments(attachments, fail)
    if body.get("metadata") is not None:
        out["metadata"] = validate_metadata(body["metadata"], field=f"{prefix}metadata")
    return out


def _validated_content(content: Any, fail) -> str | list:
    if isinstance(content, str):
        _check_text(sync.without_nul(content), "content", fail)
        return sync.without_nul(content)
    if not isinstance(content, list) or not content:
        fail("content", "Give the message's text, or a non-empty list of content parts.")
    parts, total = [], 0
    for index, part in enumerate(content):
        name = f"content[{index}]"
        if not isinstance(part, dict):
            fail(name, "Each content part must be an object with a type.")
        kind = part.get("type")
        if kind not in CONTENT_PART_TYPES:
            fail(f"{name}.type", f"Unknown content part type {str(kind)[:40]!r}; use {', '.join(CONTENT_PART_TYPES)}.")
        for key in part:
            if key not in ("type", kind):
                fail(f"{name}.{key}", f"Unknown field of a {kind} part.")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                fail(f"{name}.text", "Must be a string.")
            text = sync.without_nul(text)
            _check_text(text, f"{name}.text", fail)
            total += len(text)
            parts.append({"type": "text", "text": text})
            continue
        inner = part.get(kind)
        key = "file_id" if kind == "image_file" else "url"
        if not isinstance(inner, dict) or not isinstance(inner.get(key), str) or not inner[key].strip():
            fail(f"{name}.{kind}.{key}", f"A {kind} part needs {kind}.{key}.")
        if kind == "image_url" and not re.match(r"^(https?://|data:image/)", inner["url"]):
            fail(f"{name}.image_url.url", "Give an http(s) URL or a data:image/… URL.")
        if inner.get("detail") is not None and inner["detail"] not in IMAGE_DETAILS:
            fail(f"{name}.{kind}.detail", f"Must be one of {', '.join(IMAGE_DETAILS)}.")
        unknown = set(inner) - {key, "detail"}
        if unknown:
            fail(f"{name}.{kind}.{sorted(unknown)[0]}", f"Unknown field of {kind}.")
        parts.append({"type": kind, kind: dict(inner)})
    if total > MESSAGE_MAX_CHARACTERS:
        fail("content", f"The text parts hold {total:,} characters together; the limit is "
                        f"{MESSAGE_MAX_CHARACTERS:,}.")
    return parts


def _check_text(text: str, name: str, fail) -> None:
    if not text.strip():
        fail(name, "Write some text: it is empty or only whitespace.")
    if len(text) > MESSAGE_MAX_CHARACTERS:
        fail(name, f"{len(text):,} characters; the limit is {MESSAGE_MAX_CHARACTERS:,}.")


def _validated_attachments(attachments: Any, fail) -> list:
    if not isinstance(attachments, list):
        fail("attachments", "Must be a list of {file_id, tools}.")
    out = []
    for index, item in enumerate(attachments):
        name = f"attachments[{index}]"
        if not isinstance(item, dict):
            fail(name, "Must be an object with file_id and tools.")
        unknown = set(item) - {"file_id", "tools"}
        if unknown:
            fail(f"{name}.{sorted(unknown)[0]}", "Unknown field of an attachment.")
        if not isinstance(item.get("file_id"), str) or not item["file_id"].strip():
            fail(f"{name}.file_id", "Give the attached file's id.")
        tools = item.get("tools") or []
        if not isinstance(tools, list):
            fail(f"{name}.tools", "Must be a list of tools.")
        for tool_index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") not in ATTACHMENT_TOOLS:
                fail(f"{name}.tools[{tool_index}].type", f"Must be one of {', '.join(ATTACHMENT_TOOLS)}.")
        out.append({"file_id": item["file_id"], "tools": [{"type": t["type"]} for t in tools]})
    return out


def validate_messages(messages: Any, *, field: str) -> list[dict] | None:
    """A list of create-message bodies (a thread's ``messages``, a run's ``additional_messages``)."""
    if messages is None:
        return None
    if not isinstance(messages, list):
        raise ValidationError({field: ["Must be a list of messages."]})
    return [validate_message(message, field=f"{field}[{index}]") for index, message in enumerate(messages)]


def validate_run_request(assistant_id: str, fields: dict, *, thread: dict | None = None) -> None:
    """What a create-run (or create-thread-and-run) request needs before it is sent; normalises metadata and
    messages."""
    if not assistant_id:
        raise ValidationError({"assistant_id": ["Choose an assistant."]})
    fields["metadata"] = validate_metadata(fields.get("metadata")) or None
    if fields.get("additional_messages") is not None:
        fields["additional_messages"] = validate_messages(fields["additional_messages"], field="additional_messages")
    if thread:
        if "metadata" in thread:
            validate_metadata(thread["metadata"], field="thread.metadata")
        if thread.get("messages") is not None:
            thread["messages"] = validate_messages(thread["messages"], field="thread.messages")


def validate_tool_outputs(run: Run, tool_outputs: Any) -> list[dict]:
    """All and only the pending tool calls, each answered once with a string output."""
    if run.status != RunStatus.REQUIRES_ACTION:
        raise ValidationError({"tool_outputs": [
            f"Run {run.remote_id} is {run.status}; only a run in requires_action accepts tool outputs."]})
    if not isinstance(tool_outputs, list) or not tool_outputs:
        raise ValidationError({"tool_outputs": ["Give one output per pending tool call."]})
    pending = [c["id"] for c in run.pending_tool_calls]
    seen, errors = [], []
    for index, item in enumerate(tool_outputs):
        if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
            errors.append(f"Item {index} needs a tool_call_id.")
            continue
        if not isinstance(item.get("output"), str):
            errors.append(f"The output for {item['tool_call_id']} must be a string.")
        seen.append(item["tool_call_id"])
    unknown = [i for i in seen if i not in pending]
    missing = [i for i in pending if i not in seen]
    duplicated = sorted({i for i in seen if seen.count(i) > 1})
    if unknown:
        errors.append(f"Not pending on this run: {', '.join(unknown)}.")
    if missing:
        errors.append(f"Missing outputs for: {', '.join(missing)}.")
    if duplicated:
        errors.append(f"Answered more than once: {', '.join(duplicated)}.")
    if errors:
        raise ValidationError({"tool_outputs": errors})
    return [{"tool_call_id": i["tool_call_id"], "output": i["output"]} for i in tool_outputs]


def redact(value: Any) -> Any:
    """A copy with the values of secret-looking keys replaced (and NULs, which PostgreSQL cannot store), for
    the audit log."""
    value = sync.without_nul(value)
    if isinstance(value, dict):
        return {k: ("***" if isinstance(k, str) and _SECRET_KEY_RE.search(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


# --- audit ------------------------------------------------------------------------------------------

class ActionAudit:
    """Records one operator action: the request before it is sent, the answer or error after."""

    def __init__(self, *, action: str, connection: str, target: str, user=None, run: Run | None = None,
                 thread: Thread | None = None, sent: dict | None = None):
        self.action = OperatorAction.objects.create(
            action=action, connection=connection, target=target, user=real_user(user), run=run, thread=thread,
            sent=redact(sent or {}),
        )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, AssistantsError):
            self.action.succeeded = False
            self.action.error = sync.without_nul(str(exc))
            self.action.request_id = exc.request_id or ""
            if isinstance(exc, APIStatusError):
                self.action.answer = sync.without_nul({"status": exc.status, "code": exc.code,
                                                       "message": exc.message, "param": exc.param})
            self.action.save()
            self._timeline()
        return False

    def succeeded(self, answer: dict | None, *, run: Run | None = None, thread: Thread | None = None) -> None:
        self.action.succeeded = True
        self.action.answer = sync.without_nul(answer)
        if run is not None:
            self.action.run = run
        if thread is not None:
            self.action.thread = thread
        self.action.save()
        self._timeline()

    def _timeline(self):
        if self.action.run_id:
            RunEvent.objects.create(run_id=self.action.run_id, kind=RunEvent.Kind.ACTION, source=Source.ACTION,
                                    user=self.action.user, operator_action=self.action,
                                    observed_at=self.action.at)


def real_user(user):
    return user if user is not None and getattr(user, "is_authenticated", False) else None


# --- threads ----------------------------------------------------------------------------------------

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
        thread = sync.apply_thread(payload, connection=connection, seen=Observation.now(Source.ACTION, started)).row
        audit.action.target = thread.remote_id
        audit.succeeded(payload, thread=thread)
    if messages:
        messages_sync_after_create(thread, client)
    _wake_poller()  # discovery follows the new thread
    return thread


def message_create(*, thread: Thread, content: str | list, role: str = "user", attachments: list | None = None,
                   metadata: dict | None = None, user=None) -> Message:
    """Add a message to a thread: the protocol's create-message body, validated as the service would."""
    body = validate_message({"role": role, "content": content, "attachments": attachments, "metadata": metadata})
    with ActionAudit(action="create_message", connection=thread.connection, target=thread.remote_id, user=user,
                     thread=thread, sent=body) as audit:
        started = timezone.now()
        payload = get_client(thread.connection).create_message(thread.remote_id, **body)
        message = sync.apply_message(payload, connection=thread.connection,
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
        status__in=DETAIL_STATUSES).values_list("remote_id", flat=True))
    new_cursor, settled = cursor, True
    for offset, payload in enumerate(payloads):
        sync.apply_message(payload, connection=thread.connection, seen=seen, position=base + offset)
        settled = settled and (payload.get("status") in sync.MESSAGE_TERMINAL or not payload.get("run_id")
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
    _wake_poller()
    return thread


def thread_sync(*, connection: str, thread_id: str, source: str = Source.IMPORT) -> tuple[Thread, dict]:
    """The thread, all its runs with their steps, and all its messages (every page)."""
    client = get_client(connection)
    started = timezone.now()
    payload = client.retrieve_thread(thread_id)
    thread = sync.apply_thread(payload, connection=connection, seen=Observation.now(source, started)).row
    started = timezone.now()
    runs = [sync.apply_run(run_payload, connection=connection, seen=Observation.now(source, started)).row
            for run_payload in client.iter_runs(thread_id, order="asc")]
    # The messages once for the whole thread, after the runs (whose statuses say which messages are final).
    messages = thread_messages_sync(thread=thread, client=client, source=source)
    for run in runs:
        run_details_sync(run=run, client=client, source=source, messages=False)
    Thread.objects.filter(pk=thread.pk).update(tracked=True, next_discovery_at=timezone.now())
    return thread, {"runs": len(runs), "messages": messages}


# --- runs -------------------------------------------------------------------------------------------

def run_create(*, thread: Thread, assistant_id: str, user=None, **fields) -> Run:
    validate_run_request(assistant_id, fields)
    sent = {"assistant_id": assistant_id, **{k: v for k, v in fields.items() if v is not None}}
    client = get_client(thread.connection)
    with ActionAudit(action="create_run", connection=thread.connection, target=thread.remote_id, user=user,
                     thread=thread, sent=sent) as audit:
        started = timezone.now()
        # A new user message goes inside the create (additional_messages): a refused run leaves nothing behind.
        payload = client.create_run(thread.remote_id, assistant_id=assistant_id, **fields)
        run = sync.apply_run(payload, connection=thread.connection, seen=Observation.now(Source.ACTION, started),
                             user=real_user(user)).row
        audit.action.target = run.remote_id
        audit.succeeded(payload, run=run, thread=thread)
    if fields.get("additional_messages"):
        messages_sync_after_create(run.thread, client)
    _wake_poller()
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
        run = sync.apply_run(payload, connection=connection, seen=seen, user=real_user(user)).row
        audit.action.target = run.remote_id
        audit.succeeded(payload, run=run, thread=run.thread)
    if (thread or {}).get("messages"):
        messages_sync_after_create(run.thread, client)
    _wake_poller()
    return run


def run_cancel(*, run: Run, user=None) -> Run:
    if run.is_terminal:
        raise ValidationError({"run": [f"Run {run.remote_id} is already {run.status}; it cannot be cancelled."]})
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
    _wake_poller()
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
        run = sync.apply_run(payload, connection=run.connection, seen=Observation.now(source, started)).row
        run_details_sync(run=run, client=client, source=source)
        return run
    return run_apply_polled(run=run, payload=payload, seen=Observation.now(source, started), client=client)


def run_apply_polled(*, run: Run, payload: dict, seen: Observation, client: AssistantsClient | None = None) -> Run:
    """Apply a polled run object, and fetch the run's steps and messages if it shows they changed."""
    run = sync.apply_run(payload, connection=run.connection, seen=seen).row
    if details_owed(run):
        run_details_sync(run=run, client=client, source=seen.source)
    return run


#: Statuses at which a polled run's steps and messages are fetched (when they changed): where an operator
#: needs them. While queued or in progress they are left to the next of these (or to a stream relay).
DETAIL_STATUSES = frozenset({"requires_action", "completed", "failed", "cancelled", "expired", "incomplete"})


def details_marker(run: Run) -> str:
    """What, in a run object, says its steps or messages changed: status, pending calls, token count."""
    pending = ",".join(sorted(c.get("id", "") for c in run.pending_tool_calls))
    return f"{run.status}|{pending}|{run.total_tokens or 0}|{len(run.answered_call_ids or [])}"[:200]


def details_owed(run: Run) -> bool:
    """The run stands at a status whose steps and messages we fetch, and they were not fetched for it yet."""
    return run.status in DETAIL_STATUSES and details_marker(run) != run.steps_synced_for


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
            sync.apply_step(step, connection=run.connection, seen=Observation.now(source, started))
            written.add(((step.get("step_details") or {}).get("message_creation") or {}).get("message_id"))
        if messages:
            thread_messages_sync(thread=run.thread, client=client, source=source,
                                 expect=frozenset(written - {None}))
    except AssistantsError:
        retry_at = timezone.now() + dt.timedelta(seconds=float(app_settings.POLL_FAST))
        Run.objects.filter(pk=run.pk, next_poll_at__isnull=True).update(next_poll_at=retry_at)
        raise
    Run.objects.filter(pk=run.pk).update(steps_synced_for=marker)
    run.steps_synced_for = marker


def _apply_action_answer(payload: dict, run: Run, started, user) -> Run:
    return sync.apply_run(payload, connection=run.connection, seen=Observation.now(Source.ACTION, started),
                          user=real_user(user)).row


def mark_answered(run: Run, ids: list[str]) -> None:
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        locked.answered_call_ids = sorted(set(locked.answered_call_ids or []) | set(ids))
        locked.save(update_fields=["answered_call_ids"])
    run.answered_call_ids = locked.answered_call_ids


def _wake_poller() -> None:
    from runs_app import poller

    transaction.on_commit(lambda: poller.wake(throttle=False))

"""What a request must hold before anything is sent: the service's own limits, checked here so that bad input
is a ``ValidationError`` naming the exact field (``content[1].text``, ``metadata``, ``tool_outputs``) and nothing
reaches the service."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

from runs_app.mirror.ordering import without_nul
from runs_app.models import Run, RunStatus
from runs_app.services.errors import RunStateConflict

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512


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
        elif not _storable(key):
            errors.append(f"Key {key[:20]!r} holds a NUL or a lone surrogate, which cannot be sent or stored.")
        if not isinstance(value, str):
            errors.append(f"The value of {str(key)[:64]!r} must be a string.")
        elif len(value) > METADATA_MAX_VALUE_LENGTH:
            errors.append(f"The value of {key[:64]!r} is {len(value)} characters; the limit is "
                          f"{METADATA_MAX_VALUE_LENGTH}.")
        elif not _storable(value):
            errors.append(f"The value of {str(key)[:64]!r} holds a NUL or a lone surrogate, which cannot be sent "
                          "or stored.")
    if errors:
        raise ValidationError({field: errors})
    return metadata


def _storable(text: str) -> bool:
    """Keys and values alike: no NUL (PostgreSQL refuses it) and valid UTF-8 (a lone surrogate is not)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        _check_text(without_nul(content), "content", fail)
        return without_nul(content)
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
            text = without_nul(text)
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
    if not _storable(text):
        fail(name, "Holds a lone surrogate (not valid Unicode), which cannot be sent.")
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
        raise RunStateConflict(f"Run {run.remote_id} is {run.status}; only a run in requires_action accepts tool "
                               "outputs.", param="run_id")
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

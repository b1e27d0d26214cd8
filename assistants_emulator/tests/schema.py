"""JSON-Schema validators for Assistants-protocol payloads, built from the OpenAI OpenAPI spec.

The spec (`fixtures/spec/openai-openapi-2024-08-28.yaml`) is OpenAPI 3.0: it marks optional nulls with
`nullable: true` and points at `#/components/schemas/...`. `_to_json_schema` rewrites it into
JSON Schema 2020-12 (`nullable` → `"null"` in `type`/`enum` or an `anyOf` with `{"type": "null"}`,
`$ref` → `#/$defs/...`), then `SPEC_EXCEPTIONS` patches the few places where real traffic
(the recordings in `fixtures/recordings/`) disagrees with the spec. Real traffic wins.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "fixtures"
SPEC_PATH = FIXTURES / "spec" / "openai-openapi-2024-08-28.yaml"
RECORDINGS = FIXTURES / "recordings"

_REF_PREFIX = "#/components/schemas/"


# --------------------------------------------------------------------------------------------
# Where the 2024-08-28 OpenAI spec and real traffic differ. Each entry was found by validating
# the recordings' own bodies against the unpatched schemas (see test_schema_validators.py,
# which proves every exception is still needed and that the recordings pass with them).
# --------------------------------------------------------------------------------------------


def _step_expires_at(defs: dict) -> None:
    # Real run steps (OpenAI streams, Azure 2024-05 lists) send `expires_at`; the spec names it
    # `expired_at` and requires it. Accept either, require neither.
    step = defs["RunStepObject"]
    step["required"] = [r for r in step["required"] if r != "expired_at"]
    step["properties"]["expires_at"] = {"type": ["integer", "null"]}


def _run_parallel_tool_calls_optional(defs: dict) -> None:
    # Azure 2024-05-01-preview runs have no `parallel_tool_calls` (added in 2024-07/08 versions).
    run = defs["RunObject"]
    run["required"] = [r for r in run["required"] if r != "parallel_tool_calls"]


def _usage_details(defs: dict) -> None:
    # Real usage objects add `prompt_token_details.cached_tokens` (Azure 2025, OpenAI) and
    # `completion_tokens_details.reasoning_tokens` (OpenAI). The spec lists neither; they are
    # already allowed (no additionalProperties:false) but we pin their shape so typos bite.
    details = {
        "prompt_token_details": {"type": ["object", "null"], "properties": {"cached_tokens": {"type": "integer"}}},
        "completion_tokens_details": {
            "type": ["object", "null"],
            "properties": {"reasoning_tokens": {"type": "integer"}},
        },
    }
    for name in ("RunCompletionUsage", "RunStepCompletionUsage"):
        defs[name]["properties"].update(copy.deepcopy(details))


def _run_reasoning_effort(defs: dict) -> None:
    # OpenAI 2025 runs and assistants carry `reasoning_effort` (null for gpt-4o); not in the 2024 spec.
    effort = {"type": ["string", "null"], "enum": ["minimal", "low", "medium", "high", None]}
    for name in ("RunObject", "AssistantObject"):
        defs[name]["properties"]["reasoning_effort"] = copy.deepcopy(effort)


def _file_search_result_attributes(defs: dict) -> None:
    # OpenAI file_search results carry `attributes` (vector-store file attributes), absent in the spec.
    defs["RunStepDetailsToolCallsFileSearchResultObject"]["properties"]["attributes"] = {"type": ["object", "null"]}


def _azure_error_shape(defs: dict) -> None:
    # Azure gateway errors (429 throttling, 401, 404 routing) are {"error":{"code":"429","message":...}}:
    # no `type`, no `param`, `code` a numeric string. The emulator's Azure 500 uses a PascalCase code
    # ("InternalServerError"): accepted here, but NOT evidenced by our recordings or protocol.md (unverified).
    # Only accepted by the Azure error schema.
    defs["AzureGatewayError"] = {
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "pattern": "^([0-9]{3}|[A-Z][A-Za-z]+)$"},
            "message": {"type": "string"},
        },
    }
    defs["AzureErrorResponse"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"anyOf": [{"$ref": "#/$defs/Error"}, {"$ref": "#/$defs/AzureGatewayError"}]}},
    }


def _run_instructions_nullable(defs: dict) -> None:
    # Runs of an assistant without instructions send `"instructions": null` (every OpenAI recording).
    defs["RunObject"]["properties"]["instructions"] = {"type": ["string", "null"]}


def _rest_message_lifecycle_optional(defs: dict) -> None:
    # REST message objects (create / list, OpenAI 2025 and Azure 2024-05) omit `status`,
    # `incomplete_details`, `completed_at`, `incomplete_at`; only streamed messages carry them.
    msg = defs["MessageObject"]
    lifecycle = {"status", "incomplete_details", "completed_at", "incomplete_at"}
    msg["required"] = [r for r in msg["required"] if r not in lifecycle]


def _rest_step_metadata_optional(defs: dict) -> None:
    # REST run steps (list / retrieve, OpenAI 2025) omit `metadata`; streamed steps carry it.
    step = defs["RunStepObject"]
    step["required"] = [r for r in step["required"] if r != "metadata"]


def _empty_list_ids_nullable(defs: dict) -> None:
    # An empty list page is {"data":[],"first_id":null,"last_id":null,"has_more":false}.
    for name in ("ListRunsResponse", "ListRunStepsResponse", "ListMessagesResponse", "ListAssistantsResponse"):
        for key in ("first_id", "last_id"):
            defs[name]["properties"][key] = {"type": ["string", "null"]}


def _list_threads(defs: dict) -> None:
    # `GET /threads` (Foundry `threads.list`, also answered by Azure; protocol.md §10) is not in the 2024 OpenAI
    # spec: the usual cursor page of thread objects.
    page = copy.deepcopy(defs["ListRunsResponse"])
    page["properties"]["data"] = {"type": "array", "items": {"$ref": "#/$defs/ThreadObject"}}
    for key in ("first_id", "last_id"):
        page["properties"][key] = {"type": ["string", "null"]}
    defs["ListThreadsResponse"] = page


def _run_error_invalid_engine(defs: dict) -> None:
    # Foundry fails a run whose model is not deployed inside a 200 stream with
    # `last_error.code = "invalid_engine_error"` (protocol.md §10), a code the 2024 spec does not list.
    code = defs["RunObject"]["properties"]["last_error"]["properties"]["code"]
    code["enum"] = [*code["enum"], "invalid_engine_error"]


class SpecException(NamedTuple):
    why: str
    patch: Callable[[dict], None]
    # True when some recorded body fails validation without this patch (proved by
    # test_schema_validators.py::test_each_recording_exception_is_needed). False for additive
    # fields the spec's open objects already allow (we pin their shape) and for shapes known
    # from protocol.md (quoted real traffic) rather than from our recordings.
    seen_in_recordings: bool


SPEC_EXCEPTIONS: dict[str, SpecException] = {
    "step.expires_at": SpecException(
        "run steps send `expires_at`; the spec requires `expired_at`", _step_expires_at, True
    ),
    "step.rest.metadata_optional": SpecException(
        "REST run steps (list/retrieve) omit `metadata`", _rest_step_metadata_optional, True
    ),
    "run.parallel_tool_calls.optional": SpecException(
        "Azure 2024-05-01-preview runs have no `parallel_tool_calls`", _run_parallel_tool_calls_optional, True
    ),
    "run.instructions.nullable": SpecException("runs send `instructions: null`", _run_instructions_nullable, True),
    "message.rest.lifecycle_optional": SpecException(
        "REST messages omit status/incomplete_details/completed_at/incomplete_at",
        _rest_message_lifecycle_optional,
        True,
    ),
    "list.empty_ids_nullable": SpecException(
        "empty list pages have `first_id`/`last_id` null", _empty_list_ids_nullable, True
    ),
    "usage.details": SpecException(
        "usage adds `prompt_token_details.cached_tokens` / `completion_tokens_details.reasoning_tokens`",
        _usage_details,
        False,
    ),
    "run.reasoning_effort": SpecException(
        "runs and assistants carry `reasoning_effort` (OpenAI 2025)", _run_reasoning_effort, False
    ),
    "file_search.result.attributes": SpecException(
        "file_search results carry `attributes` (OpenAI 2025)", _file_search_result_attributes, False
    ),
    "threads.list": SpecException(
        "Foundry/Azure list threads: a cursor page of thread objects (protocol.md §10)", _list_threads, False
    ),
    "run.last_error.invalid_engine_error": SpecException(
        "Foundry runs of an undeployed model fail with `invalid_engine_error` (protocol.md §10)",
        _run_error_invalid_engine,
        False,
    ),
    "azure.error.gateway_shape": SpecException(
        'Azure 429/404 gateway errors: {"error":{"code":"429","message":...}}, no type/param (protocol.md §3)',
        _azure_error_shape,
        False,
    ),
}


# --------------------------------------------------------------------------------------------
# OpenAPI 3.0 → JSON Schema 2020-12
# --------------------------------------------------------------------------------------------

_DROP_KEYS = {"example", "discriminator", "xml", "externalDocs", "deprecated", "readOnly", "writeOnly"}


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-") or key in _DROP_KEYS or key == "nullable":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
            out[key] = "#/$defs/" + value[len(_REF_PREFIX) :]
        elif key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _to_json_schema(value)
    # OpenAPI 3.0 booleans `exclusiveMinimum: true` qualify `minimum`; 2020-12 wants the number itself.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(exclusive), bool) and out.pop(exclusive) and bound in out:
            out[exclusive] = out.pop(bound)
    if node.get("nullable") is True:
        out = _make_nullable(out)
    return out


def _make_nullable(schema: dict) -> dict:
    if "$ref" in schema or "oneOf" in schema or "anyOf" in schema or "allOf" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    typ = schema.get("type")
    if isinstance(typ, str):
        schema["type"] = [typ, "null"]
    elif isinstance(typ, list) and "null" not in typ:
        schema["type"] = [*typ, "null"]
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema


@functools.cache
def _spec_components() -> dict:
    with SPEC_PATH.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    return spec["components"]["schemas"]


@functools.cache
def _defs(excluded: frozenset[str] = frozenset(), *, with_exceptions: bool = True) -> dict:
    defs = {name: _to_json_schema(schema) for name, schema in _spec_components().items()}
    if with_exceptions:
        for key, exception in SPEC_EXCEPTIONS.items():
            if key not in excluded:
                exception.patch(defs)
    return defs


def _reachable(defs: dict, name: str) -> dict:
    """Only the definitions `name` refers to, transitively: the full spec makes validators slow to build."""
    keep: dict[str, Any] = {}
    todo = [name]
    while todo:
        current = todo.pop()
        if current in keep:
            continue
        keep[current] = defs[current]
        todo += [ref[len("#/$defs/") :] for ref in _refs(defs[current])]
    return keep


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


@functools.cache
def validator(name: str, *, strict_spec: bool = False, without: frozenset[str] = frozenset()) -> jsonschema.Validator:
    """A Draft 2020-12 validator for `components/schemas/<name>` (or a schema added by an exception).

    strict_spec=True gives the unpatched spec; `without` drops named SPEC_EXCEPTIONS (to prove each is needed).
    """
    defs = _defs(without, with_exceptions=not strict_spec)
    if name not in defs:
        raise KeyError(f"no schema {name!r} in the spec or SPEC_EXCEPTIONS")
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": _reachable(defs, name),
        "$ref": f"#/$defs/{name}",
    }
    cls = jsonschema.Draft202012Validator
    cls.check_schema(root)
    return cls(root)


def errors(name: str, instance: Any, **kwargs: Any) -> list[str]:
    """Human-readable validation errors (empty when valid)."""
    v = validator(name, **kwargs)
    errs = list(v.iter_errors(instance))
    if not errs:
        return []
    best = best_match(errs)
    return [_describe(best)] + [_describe(e) for e in errs if e is not best][:4]


def _describe(err: ValidationError) -> str:
    path = "/".join(str(p) for p in err.absolute_path) or "<root>"
    deepest = best_match([err]) if err.context else err
    if deepest is not err:
        path = "/".join(str(p) for p in deepest.absolute_path) or path
        return f"{path}: {deepest.message}"
    return f"{path}: {err.message}"


def assert_valid(name: str, instance: Any, *, where: str = "", **kwargs: Any) -> None:
    problems = errors(name, instance, **kwargs)
    if problems:
        shown = json.dumps(instance)[:1500]
        raise AssertionError(f"{where or name} does not match {name}:\n  " + "\n  ".join(problems) + f"\n{shown}")


# --------------------------------------------------------------------------------------------
# Which schema a body or an event belongs to
# --------------------------------------------------------------------------------------------

EVENT_FAMILIES = {
    "thread.created": "ThreadStreamEvent",
    "thread.run.step.": "RunStepStreamEvent",
    "thread.run.": "RunStreamEvent",
    "thread.message.": "MessageStreamEvent",
    "error": "ErrorEvent",
    "done": "DoneEvent",
}

EVENT_DATA_SCHEMA = {
    "thread.created": "ThreadObject",
    "thread.run.step.delta": "RunStepDeltaObject",
    "thread.run.step.": "RunStepObject",
    "thread.run.": "RunObject",
    "thread.message.delta": "MessageDeltaObject",
    "thread.message.": "MessageObject",
    "error": "Error",
}


def _lookup(table: dict[str, str], event: str) -> str:
    if event in table:
        return table[event]
    for prefix, name in table.items():
        if prefix.endswith(".") and event.startswith(prefix):
            return name
    raise AssertionError(f"unknown stream event {event!r}")


def event_errors(event: str, data: Any, **kwargs: Any) -> list[str]:
    """Validate one SSE event: the data object against its schema, then the {event, data} envelope."""
    if event != "done":
        problems = errors(_lookup(EVENT_DATA_SCHEMA, event), data, **kwargs)
        if problems:
            return problems
    return errors(_lookup(EVENT_FAMILIES, event), {"event": event, "data": data}, **kwargs)


def assert_event_valid(event: str, data: Any, **kwargs: Any) -> None:
    problems = event_errors(event, data, **kwargs)
    if problems:
        shown = json.dumps(data)[:1500]
        raise AssertionError(f"event {event} does not match the spec:\n  " + "\n  ".join(problems) + f"\n{shown}")


def body_schema(method: str, path: str, status: int, *, azure: bool = False) -> str | None:
    """The schema name for a non-streaming response body, from method + path (query ignored).

    `path` is relative to the API root (`/threads/...`, `/assistants/...`).
    """
    if status >= 400:
        return "AzureErrorResponse" if azure else "ErrorResponse"
    parts = [p for p in path.split("?")[0].strip("/").split("/") if p]
    if not parts:
        return None
    if parts[0] == "assistants":
        if len(parts) == 1:
            return "AssistantObject" if method == "POST" else "ListAssistantsResponse"
        return "DeleteAssistantResponse" if method == "DELETE" else "AssistantObject"
    if parts[0] != "threads":
        return None
    if parts == ["threads"]:
        return "ListThreadsResponse" if method == "GET" else "ThreadObject"
    if parts == ["threads", "runs"]:
        return "RunObject"
    if len(parts) == 2:
        return "DeleteThreadResponse" if method == "DELETE" else "ThreadObject"
    kind = parts[2]
    if kind == "messages":
        if len(parts) == 3:
            return "MessageObject" if method == "POST" else "ListMessagesResponse"
        return "DeleteMessageResponse" if method == "DELETE" else "MessageObject"
    if kind == "runs":
        if len(parts) == 3:
            return "RunObject" if method == "POST" else "ListRunsResponse"
        if len(parts) > 4 and parts[4] == "steps":
            return "ListRunStepsResponse" if len(parts) == 5 else "RunStepObject"
        return "RunObject"  # the run itself, /cancel, /submit_tool_outputs
    return None


# --------------------------------------------------------------------------------------------
# SSE parsing (kept here so the recordings and live streams go through the same parser)
# --------------------------------------------------------------------------------------------


def parse_sse(raw: str) -> list[tuple[str, str]]:
    """Split raw SSE text into (event, data) pairs, checking the framing the protocol promises.

    Every event is exactly one `event:` line then one `data:` line, then a blank line; no `id:`/`retry:`.
    """
    assert raw.endswith("\n\n"), f"stream does not end with a blank line: {raw[-80:]!r}"
    out = []
    for block in raw.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 2, f"event block is not exactly event:+data: lines: {block[:300]!r}"
        assert lines[0].startswith("event: "), f"first line is not `event: `: {lines[0][:200]!r}"
        assert lines[1].startswith("data: "), f"second line is not `data: `: {lines[1][:200]!r}"
        out.append((lines[0][len("event: ") :], lines[1][len("data: ") :]))
    assert out, "empty stream"
    assert out[-1] == ("done", "[DONE]"), f"stream does not end with event: done / data: [DONE]: {out[-1]!r}"
    return out


def decode_events(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, Any]]:
    return [(event, data if event == "done" else json.loads(data)) for event, data in pairs]


def load_recording(relative: str) -> dict:
    with (RECORDINGS / relative).open(encoding="utf-8") as fh:
        return json.load(fh)


def recording_files() -> list[str]:
    return sorted(str(p.relative_to(RECORDINGS)) for p in RECORDINGS.rglob("*.json"))

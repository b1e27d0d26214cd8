"""Replay the client side of real recorded sessions against the emulator and compare with what the service sent.

For each recorded request we send the recorded body (ids substituted with the emulator's own, learned by
walking the recorded and the emulated responses side by side) and compare:
- the status code;
- for JSON bodies, the shape: the set of key paths of the body (recursively; list items merged), since ids,
  text and timestamps legitimately differ;
- for streams, the event-name sequence with consecutive `*.delta` duplicates collapsed (delta counts differ),
  and the shape of each event group's data.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from assistants_emulator.tests import schema
from assistants_emulator.tests.wire import TERMINAL, collapse_deltas

ID_RE = re.compile(r"^(asst|thread|run|step|msg|call)_[A-Za-z0-9]+$")
SETTLED_STATUSES = TERMINAL | {"requires_action"}

# The scripted model only calls a function the user message names (or a forced tool_choice). The recorded
# prompts ("What should I wear outside right now?") leave the choice to a real model, so the replay adds
# `tool_choice: "required"` to the request that started the recorded function call. `"required"` is a plain
# string like the recorded `"auto"`, so the run objects' shapes stay comparable.
FORCE_FUNCTION_CALL = {"tool_choice": "required"}

# Response headers clients rely on (protocol.md §4): when the recording has one, the emulator must send it too.
PROTOCOL_HEADERS = ("x-request-id", "apim-request-id", "x-ms-region", "x-ratelimit-remaining-requests")


def _rank(status: str | None) -> int:
    return {"queued": 0, "in_progress": 1, "requires_action": 2}.get(status or "", 3)


def shape(value: Any, prefix: str = "") -> set[str]:
    """Key paths of a JSON value: `usage.prompt_tokens`, `tools[].function.name`, ... (leaf types ignored)."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= shape(sub, path)
    elif isinstance(value, list):
        for item in value:
            paths |= shape(item, f"{prefix}[]")
    return paths


def shape_diff(recorded: Any, emulated: Any) -> dict[str, list[str]]:
    want, got = shape(recorded), shape(emulated)
    diff = {}
    if want - got:
        diff["missing"] = sorted(want - got)
    if got - want:
        diff["extra"] = sorted(got - want)
    return diff


def learn_ids(recorded: Any, emulated: Any, ids: dict[str, str]) -> None:
    """Map every recorded id to the emulator's id found at the same place in the emulated response."""
    if isinstance(recorded, dict) and isinstance(emulated, dict):
        for key, value in recorded.items():
            if key in emulated:
                learn_ids(value, emulated[key], ids)
    elif isinstance(recorded, list) and isinstance(emulated, list):
        for rec_item, emu_item in zip(recorded, emulated, strict=False):
            learn_ids(rec_item, emu_item, ids)
    elif isinstance(recorded, str) and isinstance(emulated, str) and ID_RE.match(recorded):
        ids.setdefault(recorded, emulated)


def substitute(text: str, ids: dict[str, str]) -> str:
    for recorded, emulated in ids.items():
        text = text.replace(recorded, emulated)
    return text


def header_problems(recorded: dict, emulated) -> list[str]:
    """Content-Type media type, chunked streaming and the protocol headers the recording has."""
    recorded = {k.lower(): v for k, v in recorded.items()}
    emulated = {k.lower(): v for k, v in emulated.items()}
    problems = []
    media = recorded.get("content-type", "").split(";")[0]
    if media and emulated.get("content-type", "").split(";")[0] != media:
        problems.append(f"Content-Type {emulated.get('content-type')!r}, recorded {media!r}")
    if recorded.get("transfer-encoding") == "chunked" and emulated.get("transfer-encoding") != "chunked":
        problems.append(f"recorded a chunked body, emulated Transfer-Encoding {emulated.get('transfer-encoding')!r}")
    missing = [h for h in PROTOCOL_HEADERS if h in recorded and h not in emulated]
    if missing:
        problems.append(f"response headers missing {missing}")
    return problems


def group_events(events: list[tuple[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Consecutive same-name delta events form one group; every other event is its own group."""
    groups: list[tuple[str, list[Any]]] = []
    for event, data in events:
        if event.endswith(".delta") and groups and groups[-1][0] == event:
            groups[-1][1].append(data)
        else:
            groups.append((event, [data]))
    return groups


class Replayer:
    def __init__(self, emulator, recording: str):
        self.emulator = emulator
        self.recording = recording
        self.entries = schema.load_recording(recording)["Entries"]
        self.azure = recording.startswith("Azure")
        self.ids: dict[str, str] = {}
        self.session = requests.Session()
        if self.azure:
            self.session.headers["api-key"] = emulator.api_key
        else:
            self.session.headers.update({"Authorization": f"Bearer {emulator.api_key}", "OpenAI-Beta": "assistants=v2"})
        self.problems: list[str] = []

    def url(self, recorded_uri: str) -> str:
        parts = urlsplit(recorded_uri)
        path = parts.path
        local = f"{self.emulator.url.rstrip('/')}{path}"
        return substitute(local + (f"?{parts.query}" if parts.query else ""), self.ids)

    def replay(self, *, patches: dict[int, dict] | None = None) -> list[str]:
        patches = patches or {}
        for index, entry in enumerate(self.entries):
            if "/files" in entry["RequestUri"]:
                continue
            self.replay_entry(index, entry, patches.get(index))
        return self.problems

    def replay_entry(self, index: int, entry: dict, patch: dict | None) -> None:
        method, where = (
            entry["RequestMethod"],
            f"#{index} {entry['RequestMethod']} {urlsplit(entry['RequestUri']).path}",
        )
        body = entry["RequestBody"]
        if patch:
            body = {**body, **patch}
        data = substitute(json.dumps(body), self.ids).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        recorded = entry["ResponseBody"]
        if isinstance(recorded, list):
            self.replay_stream(where, method, entry, data, headers)
            return
        if method == "GET" and isinstance(recorded, dict) and recorded.get("object") == "thread.run":
            resp = self.poll_run(entry, recorded["status"])
        else:
            resp = self.session.request(method, self.url(entry["RequestUri"]), data=data, headers=headers, timeout=30)
        status, emulated = resp.status_code, (resp.json() if resp.content else None)
        self.check_headers(where, entry["ResponseHeaders"], resp.headers)
        if status != entry["StatusCode"]:
            self.problems.append(f"{where}: status {status}, recorded {entry['StatusCode']}: {emulated}")
            return
        if isinstance(recorded, dict):
            learn_ids(recorded, emulated, self.ids)
            if recorded.get("object") == "thread.run" and emulated.get("status") != recorded.get("status"):
                if recorded["status"] in SETTLED_STATUSES:
                    self.problems.append(f"{where}: run status {emulated.get('status')}, recorded {recorded['status']}")
                elif set(recorded) != set(emulated):  # a transient poll overtaken: top-level keys only
                    self.problems.append(f"{where}: run keys differ {shape_diff(recorded, emulated)}")
                return
            diff = shape_diff(recorded, emulated)
            if diff:
                self.problems.append(f"{where}: body shape differs {diff}")

    def check_headers(self, where: str, recorded: dict, emulated) -> None:
        self.problems += [f"{where}: {problem}" for problem in header_problems(recorded, emulated)]

    def poll_run(self, entry: dict, recorded_status: str) -> requests.Response:
        """A recorded poll: poll until the emulator's run reaches the recorded status or a later one.

        Timing differs (the emulator is fast), so a recorded `in_progress` poll may meet a later status.
        """
        deadline = time.monotonic() + 15
        while True:
            resp = self.session.get(self.url(entry["RequestUri"]), timeout=30)
            if resp.status_code != 200 or _rank(resp.json().get("status")) >= _rank(recorded_status):
                return resp
            if time.monotonic() > deadline:
                return resp
            time.sleep(0.005)

    def replay_stream(self, where: str, method: str, entry: dict, data: bytes | None, headers: dict) -> None:
        resp = self.session.request(
            method, self.url(entry["RequestUri"]), data=data, headers=headers, stream=True, timeout=30
        )
        with resp:
            raw = b"".join(resp.iter_content(chunk_size=None)).decode("utf-8")
        self.check_headers(where, entry["ResponseHeaders"], resp.headers)
        if resp.status_code != entry["StatusCode"]:
            self.problems.append(f"{where}: status {resp.status_code}, recorded {entry['StatusCode']}: {raw[:300]}")
            return
        recorded = group_events(schema.decode_events(schema.parse_sse("".join(entry["ResponseBody"]))))
        emulated = group_events(schema.decode_events(schema.parse_sse(raw)))
        want = collapse_deltas([name for name, _ in recorded])
        got = collapse_deltas([name for name, _ in emulated])
        if want != got:
            self.problems.append(f"{where}: event sequence differs\n  recorded {want}\n  emulated {got}")
            return
        for (name, rec_items), (_, emu_items) in zip(recorded, emulated, strict=True):
            if name == "done":
                continue
            learn_ids(rec_items[0], emu_items[0], self.ids)
            # The first delta of a group opens the content/tool call (id, name, `arguments: ""`, `annotations: []`);
            # the following ones carry only fragments: compare the first and the rest separately.
            parts = [("", rec_items[:1], emu_items[:1])]
            if len(rec_items) > 1 and len(emu_items) > 1:
                parts.append((" (later deltas)", rec_items[1:], emu_items[1:]))
            elif len(rec_items) > 1 or len(emu_items) > 1:
                parts[0] = ("", rec_items, emu_items)  # one side sent a single delta: compare the union
            for label, rec_part, emu_part in parts:
                rec_shape = set().union(*(shape(item) for item in rec_part))
                emu_shape = set().union(*(shape(item) for item in emu_part))
                if rec_shape != emu_shape:
                    diff = {"missing": sorted(rec_shape - emu_shape), "extra": sorted(emu_shape - rec_shape)}
                    self.problems.append(f"{where} [{name}]{label}: data shape differs {diff}")


def _format(problems: list[str]) -> str:
    return "\n".join(problems)


def test_replay_streaming_tool_call(emulator):
    """openai-dotnet StreamingToolCall(): /threads/runs stream to requires_action, then submit_tool_outputs stream."""
    replayer = Replayer(emulator, "openai__openai-dotnet/StreamingToolCall().json")
    problems = replayer.replay(patches={1: FORCE_FUNCTION_CALL})
    assert not problems, _format(problems)
    # The submit URL and tool_call_id were rewritten to the emulator's ids, learned from its stream.
    assert any(k.startswith("call_") for k in replayer.ids) and any(k.startswith("run_") for k in replayer.ids)


def test_replay_streaming_run_works(emulator):
    """openai-dotnet StreamingRunWorks: a plain text run streamed with include[] in the query."""
    problems = Replayer(emulator, "openai__openai-dotnet/StreamingRunWorks.json").replay()
    assert not problems, _format(problems)


def test_replay_azure_function_tools_work(emulator):
    """Azure 2024-05-01-preview FunctionToolsWork, non-streaming: run/step/message key sets match the recording
    (no `parallel_tool_calls` at that api-version)."""
    problems = Replayer(emulator, "Azure__azure-sdk-assets/2024-05-01-preview/FunctionToolsWork.json").replay(
        patches={1: FORCE_FUNCTION_CALL}
    )
    assert not problems, _format(problems)


def test_replay_basic_run_operations(emulator):
    """openai-dotnet BasicRunOperationsWork: empty run list, bodiless POST /threads, message and run lists."""
    problems = Replayer(emulator, "openai__openai-dotnet/BasicRunOperationsWork.json").replay()
    assert not problems, _format(problems)


# ------------------------------------------------------------------------------------------ the comparison itself


def test_shape_comparison_detects_a_missing_nested_key():
    rec = {"usage": {"prompt_tokens": 1, "prompt_token_details": {"cached_tokens": 0}}, "tools": [{"type": "x"}]}
    emu = {"usage": {"prompt_tokens": 9}, "tools": [{"type": "y", "extra": 1}]}
    assert shape_diff(rec, emu) == {
        "missing": ["usage.prompt_token_details", "usage.prompt_token_details.cached_tokens"],
        "extra": ["tools[].extra"],
    }
    assert shape_diff({"a": 1, "b": None}, {"a": "x", "b": 3}) == {}


def test_header_comparison_detects_missing_protocol_headers():
    recorded = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Transfer-Encoding": "chunked",
        "apim-request-id": "u",
    }
    assert (
        header_problems(
            recorded, {"content-type": "text/event-stream", "transfer-encoding": "chunked", "APIM-Request-Id": "v"}
        )
        == []
    )
    assert len(header_problems(recorded, {"Content-Type": "application/json"})) == 3


def test_learned_ids_rewrite_urls_and_bodies():
    ids: dict[str, str] = {}
    learn_ids({"id": "run_abc", "thread_id": "thread_q", "n": "text"}, {"id": "run_1", "thread_id": "thread_2"}, ids)
    assert ids == {"run_abc": "run_1", "thread_q": "thread_2"}
    assert substitute("/threads/thread_q/runs/run_abc", ids) == "/threads/thread_2/runs/run_1"


@pytest.mark.parametrize("recording", ["openai__openai-dotnet/StreamingToolCall().json"])
def test_recorded_stream_groups_collapse_deltas(recording):
    entry = schema.load_recording(recording)["Entries"][2]
    groups = group_events(schema.decode_events(schema.parse_sse("".join(entry["ResponseBody"]))))
    names = [name for name, _ in groups]
    assert names.count("thread.message.delta") == 1 and len(groups[names.index("thread.message.delta")][1]) > 1

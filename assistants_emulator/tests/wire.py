"""Raw-HTTP access to the emulator, validating every body and every stream event against the spec.

One `Wire` per API surface: Azure OpenAI (`/openai/...?api-version=`, `api-key` header), OpenAI
(`/v1/...`, Bearer + `OpenAI-Beta: assistants=v2`) and Foundry classic agents
(`/api/projects/{project}/...?api-version=2025-05-01`, Bearer only).
"""

from __future__ import annotations

import time
from typing import Any

import requests

from assistants_emulator.tests import schema

AZURE_API_VERSION = "2024-08-01-preview"
FOUNDRY_API_VERSION = "2025-05-01"
SURFACES = ("azure", "openai", "foundry")
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}
# Where the SDK's poll helper stops (requires_action pauses the run).
SETTLED = TERMINAL | {"requires_action"}


class Wire:
    def __init__(self, base_url: str, surface: str, api_key: str, *, project: str = "demo"):
        assert surface in SURFACES, surface
        self.base_url = base_url.rstrip("/")
        self.surface = surface
        self.api_key = api_key
        self.project = project
        self.session = requests.Session()
        self.session.headers.update(self.auth_headers(api_key))

    def auth_headers(self, key: str) -> dict[str, str]:
        if self.surface == "azure":
            return {"api-key": key}
        if self.surface == "openai":
            return {"Authorization": f"Bearer {key}", "OpenAI-Beta": "assistants=v2"}
        return {"Authorization": f"Bearer {key}"}

    def url(self, path: str) -> str:
        if self.surface == "azure":
            return f"{self.base_url}/openai{path}"
        if self.surface == "openai":
            return f"{self.base_url}/v1{path}"
        return f"{self.base_url}/api/projects/{self.project}{path}"

    def params(self, params: dict | list | None = None) -> list[tuple[str, Any]]:
        items = list(params.items()) if isinstance(params, dict) else list(params or [])
        if self.surface == "azure":
            items.append(("api-version", AZURE_API_VERSION))
        elif self.surface == "foundry":
            items.append(("api-version", FOUNDRY_API_VERSION))
        return items

    # ---------------------------------------------------------------- plain JSON

    def raw(self, method: str, path: str, *, json: Any = None, params=None, headers=None) -> requests.Response:
        return self.session.request(
            method, self.url(path), json=json, params=self.params(params), headers=headers, timeout=30
        )

    def call(self, method: str, path: str, *, json: Any = None, params=None, expect: int = 200, headers=None) -> dict:
        """Send a request, check the status and validate the JSON body against the spec."""
        resp = self.raw(method, path, json=json, params=params, headers=headers)
        assert resp.status_code == expect, (
            f"{method} {path}: expected {expect}, got {resp.status_code}: {resp.text[:800]}"
        )
        assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
        body = resp.json()
        name = schema.body_schema(method, path, resp.status_code, azure=self.surface != "openai")
        assert name, f"no schema known for {method} {path}"
        schema.assert_valid(name, body, where=f"{self.surface} {method} {path} -> {resp.status_code}")
        return body

    def get(self, path: str, **kwargs) -> dict:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs) -> dict:
        return self.call("POST", path, json=json if json is not None else {}, **kwargs)

    # ---------------------------------------------------------------- streams

    def stream(self, path: str, json: dict, *, params=None) -> list[tuple[str, Any]]:
        """POST with stream=true, read to the end, check the framing and validate every event."""
        resp = self.session.post(
            self.url(path), json={**json, "stream": True}, params=self.params(params), stream=True, timeout=30
        )
        try:
            assert resp.status_code == 200, f"stream {path}: {resp.status_code} {resp.text[:800]}"
            assert resp.headers.get("Content-Type", "").startswith("text/event-stream"), resp.headers
            raw = b"".join(resp.iter_content(chunk_size=None)).decode("utf-8")
        finally:
            resp.close()
        events = schema.decode_events(schema.parse_sse(raw))
        for event, data in events:
            schema.assert_event_valid(event, data)
        return events

    # ---------------------------------------------------------------- scenario helpers

    def assistant(self, *, tools: list | None = None, **extra) -> dict:
        return self.post("/assistants", {"model": "gpt-4o", "tools": tools or [], **extra})

    def thread(self, text: str | None = None) -> dict:
        messages = [{"role": "user", "content": text}] if text is not None else []
        return self.post("/threads", {"messages": messages})

    def run(self, thread_id: str, assistant_id: str, **extra) -> dict:
        return self.post(f"/threads/{thread_id}/runs", {"assistant_id": assistant_id, **extra})

    def wait_run(self, thread_id: str, run_id: str, until=SETTLED, timeout: float = 15.0) -> dict:
        """Poll the run until its status is in `until` (a deadline, not a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/threads/{thread_id}/runs/{run_id}")
            if run["status"] in until:
                return run
            assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout}s"
            time.sleep(0.02)

    def run_to(self, text: str, *, tools: list | None = None, until=SETTLED, **run_extra) -> tuple[dict, dict]:
        """Create assistant + thread with `text`, start a run and poll it to `until`. Returns (assistant, run)."""
        asst = self.assistant(tools=tools)
        thread = self.thread(text)
        run = self.run(thread["id"], asst["id"], **run_extra)
        assert run["status"] == "queued", run["status"]
        return asst, self.wait_run(thread["id"], run["id"], until=until)


def await_status(handle, object_id: str, statuses, timeout: float = 15.0) -> dict:
    """Block on the emulator's state-change record (long-poll, no sleeping) until `object_id` reaches one of
    `statuses`. Returns that record entry (`{"seq", "object", "id", "from", "to", "monotonic", "wall", ...}`)."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    since = 0
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{object_id} never reached {sorted(statuses)} within {timeout}s"
        for entry in handle.state.events_since(since, wait=left):
            since = entry["seq"]
            if entry["id"] == object_id and entry["to"] in statuses:
                return entry


def event_names(events: list[tuple[str, Any]]) -> list[str]:
    return [event for event, _ in events]


def collapse_deltas(names: list[str]) -> list[str]:
    """Event names with consecutive duplicate delta events collapsed (delta counts legitimately differ)."""
    out: list[str] = []
    for name in names:
        if name.endswith(".delta") and out and out[-1] == name:
            continue
        out.append(name)
    return out


FUNCTION_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Gets the weather at a location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}
SECOND_FUNCTION_TOOL = {
    "type": "function",
    "function": {
        "name": "get_local_time",
        "description": "Gets the local time at a location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}

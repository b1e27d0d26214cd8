"""Raw-HTTP tests of the emulator's run lifecycle (requests against serve_in_thread; no sleeps, deadlines only)."""

from __future__ import annotations

import json
import time

import pytest
import requests

import assistants_emulator as emulator_pkg
from assistants_emulator.pytest_plugin import TEST_API_KEY as KEY

OPENAI_HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


class Api:
    """A tiny OpenAI-surface client for the tests."""

    def __init__(self, base: str, headers=None):
        self.base = base + "/v1"
        self.s = requests.Session()
        self.s.headers.update(headers or OPENAI_HEADERS)

    def post(self, path, body=None, expect=200, **kw):
        r = self.s.post(self.base + path, json=body, **kw)
        assert r.status_code == expect, r.text
        return r.json()

    def get(self, path, expect=200, **kw):
        r = self.s.get(self.base + path, **kw)
        assert r.status_code == expect, r.text
        return r.json()

    def assistant(self, tools=(), **kw):
        return self.post("/assistants", {"model": "gpt-4o", "tools": list(tools), **kw})

    def thread(self, text="hello"):
        return self.post("/threads", {"messages": [{"role": "user", "content": text}]})

    def wait(self, tid, rid, statuses, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(f"/threads/{tid}/runs/{rid}")
            if run["status"] in statuses:
                return run
            assert time.monotonic() < deadline, f"run stuck in {run['status']}"
            time.sleep(0.005)

    def start(self, text, tools=(), **run_kw):
        a = self.assistant(tools)
        t = self.thread(text)
        run = self.post(f"/threads/{t['id']}/runs", {"assistant_id": a["id"], **run_kw})
        return t, run


def sse_events(raw: str) -> list:
    out = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, data = lines[0][7:], lines[1][6:]
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


@pytest.fixture
def api(emulator):
    return Api(emulator.url)


def test_plain_run_reaches_completed_with_usage_and_answer(api):
    t, run = api.start("tell me something")
    assert run["status"] == "queued" and run["expires_at"] == run["created_at"] + 600
    assert run["temperature"] == 1.0 and run["truncation_strategy"] == {"type": "auto", "last_messages": None}
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "completed" and done["expires_at"] is None and done["completed_at"]
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + done["usage"]["completion_tokens"] > 0
    msgs = api.get(f"/threads/{t['id']}/messages")
    assert (
        msgs["data"][0]["role"] == "assistant" and "tell me something" in msgs["data"][0]["content"][0]["text"]["value"]
    )
    assert api.get(f"/threads/{t['id']}/messages", params={"run_id": run["id"]})["data"][0]["run_id"] == run["id"]
    steps = api.get(f"/threads/{t['id']}/runs/{run['id']}/steps")["data"]
    assert [s["type"] for s in steps] == ["message_creation"]
    assert steps[0]["status"] == "completed" and steps[0]["expires_at"] is None and steps[0]["usage"]


def test_requires_action_then_submit_completes_and_quotes_outputs(api):
    t, run = api.start("what is the weather? use get_weather", tools=[WEATHER])
    ra = api.wait(t["id"], run["id"], {"requires_action"} | TERMINAL)
    assert ra["status"] == "requires_action"
    (call,) = ra["required_action"]["submit_tool_outputs"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Seattle, WA", "unit": "c"}
    step = api.get(f"/threads/{t['id']}/runs/{run['id']}/steps")["data"][0]
    assert step["status"] == "in_progress" and step["expires_at"] == ra["expires_at"]
    assert step["step_details"]["tool_calls"][0]["function"]["output"] is None
    after = api.post(
        f"/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "22C and sunny"}]},
    )
    assert after["status"] == "queued" and after["required_action"] is None
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "completed"
    answer = api.get(f"/threads/{t['id']}/messages")["data"][0]["content"][0]["text"]["value"]
    assert "22C and sunny" in answer
    # A second submit is refused with the real message.
    err = api.post(
        f"/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "x"}]},
        expect=400,
    )
    assert err["error"]["message"] == 'Runs in status "completed" do not accept tool outputs.'


def test_parallel_function_calls_and_missing_outputs_error(api):
    t, run = api.start("call get_weather and get_time", tools=[WEATHER, TIME_TOOL])
    ra = api.wait(t["id"], run["id"], {"requires_action"} | TERMINAL)
    calls = ra["required_action"]["submit_tool_outputs"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    err = api.post(
        f"/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": calls[0]["id"], "output": "a"}]},
        expect=400,
    )
    assert err["error"]["message"] == (
        f"Expected tool outputs for call_ids ['{calls[0]['id']}', '{calls[1]['id']}'], got ['{calls[0]['id']}']"
    )


def test_sequential_calls_when_parallel_tool_calls_false(api):
    t, run = api.start("call get_weather and get_time", tools=[WEATHER, TIME_TOOL], parallel_tool_calls=False)
    for name in ("get_weather", "get_time"):
        ra = api.wait(t["id"], run["id"], {"requires_action"} | TERMINAL)
        (call,) = ra["required_action"]["submit_tool_outputs"]["tool_calls"]
        assert call["function"]["name"] == name
        api.post(
            f"/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": call["id"], "output": name}]},
        )
    assert api.wait(t["id"], run["id"], TERMINAL)["status"] == "completed"


def test_cancel_in_progress_run(api, emulator):
    t, run = api.start("[slow:5] take your time")
    api.wait(t["id"], run["id"], {"in_progress"})
    cancelling = api.post(f"/threads/{t['id']}/runs/{run['id']}/cancel")
    assert cancelling["status"] == "cancelling"
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "cancelled" and done["cancelled_at"] and done["expires_at"] is None
    err = api.post(f"/threads/{t['id']}/runs/{run['id']}/cancel", expect=400)
    assert err["error"] == {
        "message": "Cannot cancel run with status 'cancelled'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    changes = [(e["object"], e["from"], e["to"]) for e in emulator.events() if e["run_id"] == run["id"]]
    assert ("thread.run", "in_progress", "cancelling") in changes and (
        "thread.run",
        "cancelling",
        "cancelled",
    ) in changes


def test_active_run_conflict_messages(api):
    t, run = api.start("[slow:5] hold the thread")
    a2 = api.assistant()
    err = api.post(f"/threads/{t['id']}/runs", {"assistant_id": a2["id"]}, expect=400)
    assert err["error"]["message"] == f"Thread {t['id']} already has an active run {run['id']}."
    err = api.post(f"/threads/{t['id']}/messages", {"role": "user", "content": "more"}, expect=400)
    assert err["error"]["message"] == f"Can't add messages to {t['id']} while a run {run['id']} is active."
    api.post(f"/threads/{t['id']}/runs/{run['id']}/cancel")


def test_a_rate_limit_inside_a_run_fails_the_run_and_its_step(api):
    t, run = api.start("please [fail:rate_limit_exceeded]")
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "failed" and done["failed_at"]
    assert done["last_error"] == {
        "code": "rate_limit_exceeded",
        "message": "Rate limit is exceeded. Try again in 60 seconds.",
    }
    step = api.get(f"/threads/{t['id']}/runs/{run['id']}/steps")["data"][0]
    assert step["status"] == "failed" and step["last_error"]["code"] == "rate_limit_exceeded"


def test_max_completion_tokens_gives_incomplete(api):
    t, run = api.start("a long answer please", max_completion_tokens=3)
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "incomplete" and done["incomplete_details"] == {"reason": "max_completion_tokens"}
    assert done["usage"]["completion_tokens"] == 3


def test_code_interpreter_and_file_search_steps(api):
    t, run = api.start(
        "calculate 6*7 with code, then search the file", tools=[{"type": "code_interpreter"}, {"type": "file_search"}]
    )
    done = api.wait(t["id"], run["id"], TERMINAL)
    assert done["status"] == "completed"
    steps = api.get(f"/threads/{t['id']}/runs/{run['id']}/steps", params={"order": "asc"})["data"]
    assert [s["type"] for s in steps] == ["tool_calls", "tool_calls", "message_creation"]
    code = steps[0]["step_details"]["tool_calls"][0]["code_interpreter"]
    assert "6 * 7" in code["input"] and code["outputs"] == [{"type": "logs", "logs": "42\n"}]
    fs = steps[1]["step_details"]["tool_calls"][0]["file_search"]
    assert fs["ranking_options"] == {"ranker": "default_2024_08_21", "score_threshold": 0.0}
    assert "content" not in fs["results"][0]
    inc = api.get(
        f"/threads/{t['id']}/runs/{run['id']}/steps/{steps[1]['id']}",
        params={"include[]": "step_details.tool_calls[*].file_search.results[*].content"},
    )
    assert inc["step_details"]["tool_calls"][0]["file_search"]["results"][0]["content"][0]["type"] == "text"
    text = api.get(f"/threads/{t['id']}/messages")["data"][0]["content"][0]["text"]
    assert "【4:0†source】" in text["value"] and text["annotations"][0]["type"] == "file_citation"


def test_expiry_when_outputs_never_arrive():
    url, handle = emulator_pkg.serve_in_thread(api_key=KEY, speed=50, expire_after=0.5)
    try:
        api = Api(url)
        t, run = api.start("use get_weather", tools=[WEATHER])
        done = api.wait(t["id"], run["id"], TERMINAL, timeout=5)
        assert done["status"] == "expired" and done["expires_at"] is None and done["required_action"] is None
        step = api.get(f"/threads/{t['id']}/runs/{run['id']}/steps")["data"][0]
        assert step["status"] == "expired"
        err = api.post(
            f"/threads/{t['id']}/runs/{run['id']}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": "call_x", "output": "late"}]},
            expect=400,
        )
        assert err["error"]["message"] == 'Runs in status "expired" do not accept tool outputs.'
    finally:
        handle.stop()


def test_modify_run_metadata_only(api):
    t, run = api.start("hi")
    out = api.post(f"/threads/{t['id']}/runs/{run['id']}", {"metadata": {"k": "v"}})
    assert out["metadata"] == {"k": "v"}
    err = api.post(f"/threads/{t['id']}/runs/{run['id']}", {"model": "x"}, expect=400)
    assert err["error"]["message"] == "Unrecognized request argument supplied: model"


def test_event_record_is_ordered_and_filterable(api, emulator):
    t, run = api.start("hi")
    api.wait(t["id"], run["id"], TERMINAL)
    events = emulator.events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    run_changes = [(e["from"], e["to"]) for e in events if e["object"] == "thread.run"]
    assert run_changes == [(None, "queued"), ("queued", "in_progress"), ("in_progress", "completed")]
    since = events[2]["seq"]
    body = requests.get(f"{emulator.url}/_emulator/events", params={"since": since}).json()
    assert [e["seq"] for e in body["data"]] == [e["seq"] for e in events if e["seq"] > since]
    assert all(e["wall"] > 0 and e["monotonic"] > 0 for e in events)

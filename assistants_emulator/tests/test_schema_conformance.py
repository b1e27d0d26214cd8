"""Every endpoint and run shape over raw HTTP: each JSON body and each SSE event must match the spec.

`Wire.call` validates every response body and `Wire.stream` validates every event and the SSE framing,
so the assertions here are about behaviour; schema conformance is checked on every request.
"""

from __future__ import annotations

import json

import pytest
import requests

from assistants_emulator.tests import schema
from assistants_emulator.tests.wire import (
    FUNCTION_TOOL,
    SECOND_FUNCTION_TOOL,
    TERMINAL,
    Wire,
    collapse_deltas,
    event_names,
)

FILE_SEARCH_INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"

TEXT_RUN_EVENTS = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.delta",
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
    "done",
]


def _steps(wire: Wire, run: dict, **params) -> list[dict]:
    return wire.get(f"/threads/{run['thread_id']}/runs/{run['id']}/steps", params=params)["data"]


def _messages(wire: Wire, thread_id: str, **params) -> list[dict]:
    return wire.get(f"/threads/{thread_id}/messages", params=params)["data"]


def _terminal_fields_consistent(run: dict) -> None:
    """The timestamp of the terminal status is set, the others are null; expires_at is null once terminal."""
    stamp = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at", "incomplete": None}
    for status, key in stamp.items():
        if key:
            assert (run[key] is not None) == (run["status"] == status), (key, run["status"])
    if run["status"] in TERMINAL:
        assert run["expires_at"] is None, "expires_at becomes null once the run is terminal"


# ------------------------------------------------------------------------------------------ objects


def test_assistant_endpoints_match_spec(wire):
    created = wire.assistant(
        tools=[FUNCTION_TOOL, {"type": "code_interpreter"}], name="conformance", metadata={"a": "b"}
    )
    assert created["object"] == "assistant" and created["name"] == "conformance"
    assert wire.get(f"/assistants/{created['id']}")["id"] == created["id"]
    listed = wire.get("/assistants", params={"limit": 5})
    assert created["id"] in [a["id"] for a in listed["data"]]
    deleted = wire.call("DELETE", f"/assistants/{created['id']}")
    assert deleted == {"id": created["id"], "object": "assistant.deleted", "deleted": True}
    wire.get(f"/assistants/{created['id']}", expect=404)


def test_thread_and_message_endpoints_match_spec(wire):
    thread = wire.thread("first message")
    assert thread["object"] == "thread"
    assert wire.get(f"/threads/{thread['id']}")["id"] == thread["id"]
    msg = wire.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": "second", "metadata": {"k": "v"}})
    assert msg["object"] == "thread.message" and msg["run_id"] is None and msg["metadata"] == {"k": "v"}
    assert msg["content"][0]["text"]["value"] == "second"
    assert wire.get(f"/threads/{thread['id']}/messages/{msg['id']}")["id"] == msg["id"]
    listed = wire.get(f"/threads/{thread['id']}/messages", params={"order": "asc"})
    assert [m["content"][0]["text"]["value"] for m in listed["data"]] == ["first message", "second"]
    assert listed["first_id"] == listed["data"][0]["id"] and listed["has_more"] is False
    deleted = wire.call("DELETE", f"/threads/{thread['id']}")
    assert deleted == {"id": thread["id"], "object": "thread.deleted", "deleted": True}
    wire.get(f"/threads/{thread['id']}", expect=404)


def test_empty_run_list_has_null_ids(wire):
    thread = wire.thread()
    page = wire.get(f"/threads/{thread['id']}/runs")
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


# ------------------------------------------------------------------------------------------ run shapes


def test_completed_text_run_matches_spec(any_wire):
    wire = any_wire
    _, run = wire.run_to("hello there")
    assert run["status"] == "completed"
    _terminal_fields_consistent(run)
    assert (
        run["usage"]
        and run["usage"]["total_tokens"] == run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    )
    runs = wire.get(f"/threads/{run['thread_id']}/runs")["data"]
    assert [r["id"] for r in runs] == [run["id"]]
    steps = _steps(wire, run)
    assert [s["type"] for s in steps] == ["message_creation"]
    assert steps[0]["status"] == "completed" and steps[0]["usage"] is not None
    step = wire.get(f"/threads/{run['thread_id']}/runs/{run['id']}/steps/{steps[0]['id']}")
    assert step["step_details"]["message_creation"]["message_id"]
    answer = _messages(wire, run["thread_id"], run_id=run["id"])
    assert [m["role"] for m in answer] == ["assistant"]
    assert answer[0]["id"] == step["step_details"]["message_creation"]["message_id"]
    assert answer[0]["content"][0]["text"]["value"]


def test_requires_action_then_submit_matches_spec(wire):
    _, run = wire.run_to("What is get_current_weather in Paris?", tools=[FUNCTION_TOOL])
    assert run["status"] == "requires_action"
    calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_current_weather"]
    assert "location" in json.loads(calls[0]["function"]["arguments"])
    (step,) = _steps(wire, run)
    assert step["type"] == "tool_calls" and step["status"] == "in_progress" and step["usage"] is None
    assert step["step_details"]["tool_calls"][0]["function"]["output"] is None
    base = f"/threads/{run['thread_id']}/runs/{run['id']}"
    after = wire.post(
        f"{base}/submit_tool_outputs", {"tool_outputs": [{"tool_call_id": calls[0]["id"], "output": "22C"}]}
    )
    assert after["status"] == "queued" and after["required_action"] is None
    done = wire.wait_run(run["thread_id"], run["id"])
    assert done["status"] == "completed"
    _terminal_fields_consistent(done)
    steps = _steps(wire, run, order="asc")
    assert [s["type"] for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0]["status"] == "completed"
    assert steps[0]["step_details"]["tool_calls"][0]["function"]["output"] == "22C"


def test_parallel_tool_calls_match_spec(wire):
    _, run = wire.run_to(
        "Use get_current_weather and get_local_time for Oslo", tools=[FUNCTION_TOOL, SECOND_FUNCTION_TOOL]
    )
    assert run["status"] == "requires_action" and run["parallel_tool_calls"] is True
    calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    assert sorted(c["function"]["name"] for c in calls) == ["get_current_weather", "get_local_time"]
    assert len({c["id"] for c in calls}) == 2
    base = f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs"
    missing = wire.post(base, {"tool_outputs": [{"tool_call_id": calls[0]["id"], "output": "x"}]}, expect=400)
    wanted = ", ".join(repr(c["id"]) for c in calls)
    assert missing["error"] == {
        "message": f"Expected tool outputs for call_ids [{wanted}], got [{calls[0]['id']!r}]",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    outputs = [{"tool_call_id": c["id"], "output": f"out-{i}"} for i, c in enumerate(calls)]
    wire.post(base, {"tool_outputs": outputs})
    assert wire.wait_run(run["thread_id"], run["id"])["status"] == "completed"


def test_parallel_tool_calls_false_gives_one_call(wire):
    _, run = wire.run_to(
        "Use get_current_weather and get_local_time for Oslo",
        tools=[FUNCTION_TOOL, SECOND_FUNCTION_TOOL],
        parallel_tool_calls=False,
    )
    assert run["parallel_tool_calls"] is False
    assert len(run["required_action"]["submit_tool_outputs"]["tool_calls"]) == 1


def test_code_interpreter_step_matches_spec(wire):
    _, run = wire.run_to("Please calculate 6 * 7 with code", tools=[{"type": "code_interpreter"}])
    assert run["status"] == "completed"
    steps = _steps(wire, run, order="asc")
    assert [s["type"] for s in steps] == ["tool_calls", "message_creation"]
    (call,) = steps[0]["step_details"]["tool_calls"]
    assert call["type"] == "code_interpreter" and call["code_interpreter"]["input"]
    assert {o["type"] for o in call["code_interpreter"]["outputs"]} <= {"logs", "image"}
    assert any("42" in o.get("logs", "") for o in call["code_interpreter"]["outputs"])


def test_file_search_step_with_include_matches_spec(wire):
    _, run = wire.run_to("search the file for the answer", tools=[{"type": "file_search"}])
    assert run["status"] == "completed"
    plain = _steps(wire, run, order="asc")
    assert [s["type"] for s in plain] == ["tool_calls", "message_creation"]
    (call,) = plain[0]["step_details"]["tool_calls"]
    assert call["type"] == "file_search"
    assert call["file_search"]["ranking_options"]["ranker"]
    assert all("content" not in r for r in call["file_search"].get("results", [])), "content needs include[]"
    included = _steps(wire, run, order="asc", **{"include[]": FILE_SEARCH_INCLUDE})
    (call,) = included[0]["step_details"]["tool_calls"]
    results = call["file_search"]["results"]
    assert results and all(r["content"] and r["content"][0]["type"] == "text" for r in results)
    one = wire.get(
        f"/threads/{run['thread_id']}/runs/{run['id']}/steps/{included[0]['id']}",
        params={"include[]": FILE_SEARCH_INCLUDE},
    )
    assert one["step_details"]["tool_calls"][0]["file_search"]["results"][0]["content"]


def test_incomplete_run_matches_spec(wire):
    _, run = wire.run_to("[words:400] tell me a long story", max_completion_tokens=256)
    assert run["status"] == "incomplete"
    assert run["incomplete_details"] == {"reason": "max_completion_tokens"}
    _terminal_fields_consistent(run)
    assert run["max_completion_tokens"] == 256


def test_failed_run_matches_spec(wire):
    _, run = wire.run_to("[fail:server_error] hello")
    assert run["status"] == "failed"
    assert run["last_error"]["code"] == "server_error" and run["last_error"]["message"]
    _terminal_fields_consistent(run)


def test_rate_limited_run_fails_inside_200(wire):
    # A rate limit during a run arrives as a failed run on a 200 GET, not as an HTTP 429 (protocol.md §8).
    _, run = wire.run_to("[fail:rate_limit_exceeded] hello")
    assert run["status"] == "failed"
    assert run["last_error"]["code"] == "rate_limit_exceeded"


def test_cancelled_run_matches_spec(wire):
    asst = wire.assistant()
    thread = wire.thread("[slow:30] take your time")
    run = wire.run(thread["id"], asst["id"])
    cancelling = wire.post(f"/threads/{thread['id']}/runs/{run['id']}/cancel")
    assert cancelling["status"] == "cancelling"
    done = wire.wait_run(thread["id"], run["id"], until=TERMINAL)
    assert done["status"] == "cancelled"
    _terminal_fields_consistent(done)


@pytest.mark.slow  # each waits for a run to expire in real seconds
@pytest.mark.parametrize("surface", ["azure", "openai"])
@pytest.mark.parametrize("text", ["[expire] hello", "call get_current_weather and never answer"])
def test_expired_run_matches_spec(short_expiry_emulator, surface, text):
    # Tool outputs not submitted before expires_at (or a run that never finishes) → expired.
    wire = Wire(short_expiry_emulator.url, surface, short_expiry_emulator.api_key)
    _, run = wire.run_to(text, tools=[FUNCTION_TOOL], until=TERMINAL)
    assert run["status"] == "expired"
    assert run["expires_at"] is None and run["required_action"] is None
    assert all(s["status"] in ("expired", "completed") for s in _steps(wire, run))


# ------------------------------------------------------------------------------------------ errors


def test_error_400_metadata_too_many_properties(wire):
    body = wire.post("/threads", {"metadata": {f"k{i}": "v" for i in range(17)}}, expect=400)
    assert body["error"] == {
        "message": "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
        "but got an object with 17 properties instead.",
        "type": "invalid_request_error",
        "param": "metadata",
        "code": "object_above_max_properties",
    }


def test_error_400_active_run_conflict(wire):
    asst = wire.assistant()
    thread = wire.thread("[slow:30] hold the thread")
    run = wire.run(thread["id"], asst["id"])
    second = wire.post(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]}, expect=400)
    assert second["error"]["message"] == f"Thread {thread['id']} already has an active run {run['id']}."
    msg = wire.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": "x"}, expect=400)
    assert msg["error"]["message"] == f"Can't add messages to {thread['id']} while a run {run['id']} is active."
    wire.post(f"/threads/{thread['id']}/runs/{run['id']}/cancel")


def test_error_400_cancel_completed_run(wire):
    _, run = wire.run_to("hi")
    body = wire.post(f"/threads/{run['thread_id']}/runs/{run['id']}/cancel", expect=400)
    assert body["error"] == {
        "message": "Cannot cancel run with status 'completed'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_error_400_submit_to_completed_run(wire):
    _, run = wire.run_to("hi")
    body = wire.post(
        f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": "call_x", "output": "y"}]},
        expect=400,
    )
    assert body["error"] == {
        "message": 'Runs in status "completed" do not accept tool outputs.',
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_error_401_wrong_key(emulator, wire):
    resp = wire.raw("GET", "/assistants", headers=wire.auth_headers("wrong-key"))
    assert resp.status_code == 401
    name = "AzureErrorResponse" if wire.surface == "azure" else "ErrorResponse"
    schema.assert_valid(name, resp.json())
    if wire.surface == "openai":
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert "wrong-key" not in resp.text, "the key must be masked"
    else:
        assert resp.json()["error"]["code"] == "401"


def test_error_404_unknown_objects(wire):
    body = wire.get("/threads/thread_doesnotexist", expect=404)
    assert body["error"]["message"] == "No thread found with id 'thread_doesnotexist'."
    thread = wire.thread()
    wire.get(f"/threads/{thread['id']}/runs/run_nope", expect=404)
    wire.get(f"/threads/{thread['id']}/messages/msg_nope", expect=404)
    assert wire.get("/assistants/asst_x", expect=404)["error"]["message"] == "No assistant found with id 'asst_x'."


def test_error_404_deployment_scoped_assistants_path(emulator):
    azure = Wire(emulator.url, "azure", emulator.api_key)
    body = azure.get("/deployments/gpt-4o/threads/thread_x", expect=404)
    assert body == {"error": {"code": "404", "message": "Resource not found"}}


def test_error_429_fault_injection(emulator, wire):
    emulator.set_faults("429=1.0")
    try:
        resp = wire.raw("GET", "/assistants")
    finally:
        emulator.set_faults(None)
    assert resp.status_code == 429
    name = "AzureErrorResponse" if wire.surface == "azure" else "ErrorResponse"
    schema.assert_valid(name, resp.json())
    assert "retry-after" in {k.lower() for k in resp.headers}


def test_error_5xx_fault_injection(emulator, wire):
    emulator.set_faults("5xx=1.0")
    try:
        resp = wire.raw("GET", "/assistants")
    finally:
        emulator.set_faults(None)
    assert resp.status_code >= 500
    schema.assert_valid("AzureErrorResponse" if wire.surface == "azure" else "ErrorResponse", resp.json())


# ------------------------------------------------------------------------------------------ pagination


def test_cursor_pagination_over_messages(wire):
    thread = wire.thread()
    ids = [wire.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": f"m{i}"})["id"] for i in range(7)]
    seen, after = [], None
    while True:
        params = {"limit": 3, "order": "asc", **({"after": after} if after else {})}
        page = wire.get(f"/threads/{thread['id']}/messages", params=params)
        seen += [m["id"] for m in page["data"]]
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids
    desc = wire.get(f"/threads/{thread['id']}/messages", params={"limit": 100})["data"]
    assert [m["id"] for m in desc] == ids[::-1], "default order is desc"
    before = wire.get(f"/threads/{thread['id']}/messages", params={"order": "asc", "before": ids[3]})["data"]
    assert [m["id"] for m in before] == ids[:3]


# ------------------------------------------------------------------------------------------ streams


def test_stream_text_run_events_match_spec(any_wire):
    wire = any_wire
    asst = wire.assistant()
    thread = wire.thread("stream me a reply")
    events = wire.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    assert collapse_deltas(event_names(events)) == TEXT_RUN_EVENTS
    text = "".join(d["delta"]["content"][0]["text"]["value"] for e, d in events if e == "thread.message.delta")
    final_message = next(d for e, d in events if e == "thread.message.completed")
    assert final_message["content"][0]["text"]["value"] == text
    final_run = next(d for e, d in events if e == "thread.run.completed")
    _terminal_fields_consistent(final_run)
    # The stream and the REST view agree.
    assert wire.get(f"/threads/{thread['id']}/runs/{final_run['id']}")["status"] == "completed"


def test_stream_thread_and_run_starts_with_thread_created(wire):
    asst = wire.assistant()
    events = wire.stream(
        "/threads/runs", {"assistant_id": asst["id"], "thread": {"messages": [{"role": "user", "content": "hi"}]}}
    )
    names = event_names(events)
    assert names[:2] == ["thread.created", "thread.run.created"]
    assert events[1][1]["thread_id"] == events[0][1]["id"]
    assert collapse_deltas(names[1:]) == TEXT_RUN_EVENTS


def test_stream_requires_action_then_submit_stream(wire):
    asst = wire.assistant(tools=[FUNCTION_TOOL])
    thread = wire.thread("check get_current_weather please")
    first = wire.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    assert collapse_deltas(event_names(first)) == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.requires_action",
        "done",
    ]
    first_delta = next(d for e, d in first if e == "thread.run.step.delta")
    call = first_delta["delta"]["step_details"]["tool_calls"][0]
    assert call["id"] and call["function"]["name"] == "get_current_weather" and call["function"]["output"] is None
    run = first[-2][1]
    call_id = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"]
    assert call_id == call["id"]
    second = wire.stream(
        f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call_id, "output": "sunny"}]},
    )
    assert collapse_deltas(event_names(second)) == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
        *TEXT_RUN_EVENTS[3:],
    ]
    assert second[0][1]["step_details"]["tool_calls"][0]["function"]["output"] == "sunny"


@pytest.mark.parametrize(
    ("text", "tool", "tool_type"),
    [
        ("calculate 2 + 3 with code", {"type": "code_interpreter"}, "code_interpreter"),
        ("search my files", {"type": "file_search"}, "file_search"),
    ],
)
def test_stream_hosted_tool_step_deltas_match_spec(wire, text, tool, tool_type):
    asst = wire.assistant(tools=[tool])
    thread = wire.thread(text)
    events = wire.stream(
        f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]}, params={"include[]": FILE_SEARCH_INCLUDE}
    )
    names = event_names(events)
    assert names[-2:] == ["thread.run.completed", "done"]
    deltas = [d for e, d in events if e == "thread.run.step.delta"]
    assert deltas and deltas[0]["delta"]["step_details"]["tool_calls"][0]["type"] == tool_type
    tool_step = next(d for e, d in events if e == "thread.run.step.completed" and d["type"] == "tool_calls")
    assert tool_step["step_details"]["tool_calls"][0]["type"] == tool_type


def test_stream_failed_run_ends_with_run_failed(wire):
    asst = wire.assistant()
    thread = wire.thread("[fail:server_error] go")
    events = wire.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    assert event_names(events)[-2:] == ["thread.run.failed", "done"]
    assert events[-2][1]["last_error"]["code"] == "server_error"


def test_stream_incomplete_run_ends_with_run_incomplete(wire):
    asst = wire.assistant()
    thread = wire.thread("[words:400] a long one")
    events = wire.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"], "max_completion_tokens": 256})
    names = event_names(events)
    assert names[-2:] == ["thread.run.incomplete", "done"]
    assert "thread.message.incomplete" in names
    message = next(d for e, d in events if e == "thread.message.incomplete")
    assert message["status"] == "incomplete" and message["incomplete_details"] == {"reason": "max_tokens"}
    assert events[-2][1]["incomplete_details"] == {"reason": "max_completion_tokens"}


def test_stream_cancel_mid_stream_ends_with_run_cancelled(wire):
    asst = wire.assistant()
    thread = wire.thread("[slow:2] [words:60] cancel me")
    resp = wire.session.post(
        wire.url(f"/threads/{thread['id']}/runs"),
        json={"assistant_id": asst["id"], "stream": True},
        params=wire.params(),
        stream=True,
        timeout=30,
    )
    chunks, cancelled = [], False
    try:
        for chunk in resp.iter_content(chunk_size=None):
            chunks.append(chunk)
            raw = b"".join(chunks).decode()
            if not cancelled and "thread.run.in_progress" in raw:
                run_id = schema.decode_events([p for p in _pairs_so_far(raw) if p[0] == "thread.run.created"])[0][1][
                    "id"
                ]
                wire.post(f"/threads/{thread['id']}/runs/{run_id}/cancel")
                cancelled = True
    finally:
        resp.close()
    events = schema.decode_events(schema.parse_sse(b"".join(chunks).decode()))
    for event, data in events:
        schema.assert_event_valid(event, data)
    names = event_names(events)
    assert cancelled and names[-2:] == ["thread.run.cancelled", "done"], names[-4:]


def _pairs_so_far(raw: str) -> list[tuple[str, str]]:
    pairs = []
    for block in raw.split("\n\n")[:-1]:
        lines = block.split("\n")
        if len(lines) == 2:
            pairs.append((lines[0].removeprefix("event: "), lines[1].removeprefix("data: ")))
    return pairs


# ------------------------------------------------------------------------------------------ headers and triggers


def test_error_400_missing_openai_beta_header(openai_wire):
    resp = openai_wire.raw("GET", "/assistants", headers={"OpenAI-Beta": None})
    assert resp.status_code == 400
    schema.assert_valid("ErrorResponse", resp.json())
    assert resp.json()["error"]["code"] == "invalid_beta"
    assert "OpenAI-Beta: assistants=v2" in resp.json()["error"]["message"]


def test_error_404_unknown_api_version(emulator):
    resp = requests.get(
        f"{emulator.url}/openai/assistants", params={"api-version": "1999-01-01"}, headers={"api-key": emulator.api_key}
    )
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_run_responses_carry_request_id_and_poll_after_headers(wire):
    asst = wire.assistant()
    thread = wire.thread("hi")
    run = wire.run(thread["id"], asst["id"])
    resp = wire.raw("GET", f"/threads/{thread['id']}/runs/{run['id']}")
    assert int(resp.headers["openai-poll-after-ms"]) > 0, "lets the SDK's *_and_poll helpers poll at the run's pace"
    assert resp.headers["x-request-id"]
    if wire.surface == "azure":
        assert resp.headers["apim-request-id"] == resp.headers["x-request-id"]


def test_incomplete_trigger_truncates_the_answer(wire):
    _, run = wire.run_to("[incomplete] please answer")
    assert run["status"] == "incomplete" and run["incomplete_details"] == {"reason": "max_completion_tokens"}


def test_html_trigger_is_sent_verbatim(wire):
    _, run = wire.run_to("[html] show markup")
    text = _messages(wire, run["thread_id"], run_id=run["id"])[0]["content"][0]["text"]["value"]
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(1)</script>" in text


def test_forced_tool_choice_calls_the_named_function(wire):
    _, run = wire.run_to(
        "no names here",
        tools=[FUNCTION_TOOL, SECOND_FUNCTION_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_local_time"}},
    )
    assert run["status"] == "requires_action"
    assert [c["function"]["name"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]] == [
        "get_local_time"
    ]
    assert run["tool_choice"] == {"type": "function", "function": {"name": "get_local_time"}}


# ------------------------------------------------------------------------------------------ request echo


def test_run_echoes_its_parameters(wire):
    asst = wire.assistant(instructions="Be terse.")
    thread = wire.thread("first")
    run = wire.run(
        thread["id"],
        asst["id"],
        instructions="Override.",
        additional_instructions="And polite.",
        additional_messages=[{"role": "user", "content": "extra question"}],
        metadata={"case": "echo"},
        temperature=0.5,
        top_p=0.9,
        max_prompt_tokens=5000,
        max_completion_tokens=4000,
        truncation_strategy={"type": "last_messages", "last_messages": 5},
        response_format={"type": "json_object"},
    )
    assert run["model"] == asst["model"] and run["metadata"] == {"case": "echo"}
    assert run["instructions"].startswith("Override.")
    assert (run["temperature"], run["top_p"]) == (0.5, 0.9)
    assert (run["max_prompt_tokens"], run["max_completion_tokens"]) == (5000, 4000)
    assert run["truncation_strategy"] == {"type": "last_messages", "last_messages": 5}
    assert run["response_format"] == {"type": "json_object"}
    done = wire.wait_run(thread["id"], run["id"])
    assert done["status"] == "completed"
    texts = [m["content"][0]["text"]["value"] for m in _messages(wire, thread["id"], order="asc")]
    assert texts[:2] == ["first", "extra question"], "additional_messages are added to the thread before the run"
    assert json.loads(texts[2])["answer"], "json_object response_format gives a JSON answer"


def test_run_defaults_match_protocol(wire):
    _, run = wire.run_to("hello")
    assert run["temperature"] == 1 and run["top_p"] == 1
    assert run["tool_choice"] == "auto" and run["response_format"] == "auto"
    assert run["truncation_strategy"] == {"type": "auto", "last_messages": None}
    assert run["parallel_tool_calls"] is True
    assert run["expires_at"] is None and run["created_at"] <= run["started_at"] <= run["completed_at"]


def test_message_content_parts_and_metadata_updates(wire):
    thread = wire.post("/threads", {"metadata": {"a": "1"}})
    msg = wire.post(
        f"/threads/{thread['id']}/messages",
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
    )
    assert [c["text"] for c in msg["content"]] == [
        {"value": "part one", "annotations": []},
        {"value": "part two", "annotations": []},
    ]
    updated = wire.post(f"/threads/{thread['id']}", {"metadata": {"a": "2"}})
    assert updated["metadata"] == {"a": "2"}
    msg2 = wire.post(f"/threads/{thread['id']}/messages/{msg['id']}", {"metadata": {"seen": "yes"}})
    assert msg2["metadata"] == {"seen": "yes"} and msg2["id"] == msg["id"]


def test_cancel_requires_action_run_cancels_its_steps(wire):
    _, run = wire.run_to("call get_current_weather", tools=[FUNCTION_TOOL])
    assert run["status"] == "requires_action"
    cancelling = wire.post(f"/threads/{run['thread_id']}/runs/{run['id']}/cancel")
    assert cancelling["status"] in ("cancelling", "cancelled")
    done = wire.wait_run(run["thread_id"], run["id"], until=TERMINAL)
    assert done["status"] == "cancelled" and done["required_action"] is None
    (step,) = _steps(wire, run)
    assert step["status"] == "cancelled" and step["cancelled_at"] is not None and step["expires_at"] is None


def test_stream_readable_with_sseclient(wire):
    # The client side of the project reads streams with requests + sseclient-py: the same events must come out.
    sseclient = pytest.importorskip("sseclient")
    asst = wire.assistant()
    thread = wire.thread("read me with sseclient")
    resp = wire.session.post(
        wire.url(f"/threads/{thread['id']}/runs"),
        json={"assistant_id": asst["id"], "stream": True},
        params=wire.params(),
        stream=True,
        timeout=30,
    )
    with resp:
        events = [(e.event, e.data) for e in sseclient.SSEClient(resp).events()]
    assert events[-1] == ("done", "[DONE]")
    decoded = [(name, json.loads(data)) for name, data in events[:-1]]
    for name, data in decoded:
        schema.assert_event_valid(name, data)
    assert collapse_deltas([name for name, _ in events]) == TEXT_RUN_EVENTS

"""Foundry classic agents on the wire (protocol.md §10), over raw HTTP, plus `GET /threads` on every dialect.

Each test pins one recorded Foundry fact; where the other dialects must differ (or must not), the test says so.
Runs are awaited on the emulator's state-change record (`await_status`), never by sleeping.
"""

from __future__ import annotations

import time

import pytest

from assistants_emulator.tests.wire import (
    FUNCTION_TOOL,
    SECOND_FUNCTION_TOOL,
    TERMINAL,
    Wire,
    await_status,
    collapse_deltas,
    event_names,
)

STREAM_RESOURCES = {"code_interpreter": {"file_ids": []}}
ZERO_COUNTS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
WEATHER_TEXT = "call get_current_weather for me"


@pytest.fixture
def foundry(emulator) -> Wire:
    return Wire(emulator.url, "foundry", emulator.api_key)


def _run_until(wire: Wire, handle, thread_id: str, run_id: str, statuses) -> dict:
    await_status(handle, run_id, statuses)
    return wire.get(f"/threads/{thread_id}/runs/{run_id}")


def _start(wire: Wire, text: str, *, tools=None, **run_extra) -> tuple[dict, dict, dict]:
    asst = wire.assistant(tools=tools)
    thread = wire.thread(text)
    run = wire.run(thread["id"], asst["id"], **run_extra)
    return asst, thread, run


def _submit_outputs(wire: Wire, run: dict, output: str = "sunny", *, stream: bool = False):
    calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    body = {"tool_outputs": [{"tool_call_id": c["id"], "output": output} for c in calls]}
    path = f"/threads/{run['thread_id']}/runs/{run['id']}/submit_tool_outputs"
    return wire.stream(path, body) if stream else wire.post(path, body)


# ------------------------------------------------------------------------------------------ GET /threads
@pytest.mark.parametrize("surface", ["foundry", "azure"])
def test_list_threads_pages_in_creation_order_and_forgets_deleted_threads(emulator, surface):
    wire = Wire(emulator.url, surface, emulator.api_key)
    created = [wire.thread(f"thread {i}")["id"] for i in range(5)]
    page = wire.get("/threads")
    assert [t["id"] for t in page["data"]] == created[::-1], "default order is desc by creation"
    assert page["first_id"] == created[-1] and page["last_id"] == created[0] and page["has_more"] is False
    assert all(t["object"] == "thread" for t in page["data"])

    asc = wire.get("/threads", params={"order": "asc", "limit": 2})
    assert [t["id"] for t in asc["data"]] == created[:2] and asc["has_more"] is True
    after = wire.get("/threads", params={"order": "asc", "limit": 2, "after": asc["last_id"]})
    assert [t["id"] for t in after["data"]] == created[2:4] and after["has_more"] is True
    before = wire.get("/threads", params={"order": "asc", "limit": 2, "before": after["first_id"]})
    assert [t["id"] for t in before["data"]] == created[:2]

    wire.call("DELETE", f"/threads/{created[1]}")
    remaining = [t["id"] for t in wire.get("/threads", params={"order": "asc"})["data"]]
    assert remaining == [created[0], *created[2:]]
    bad = wire.call("GET", "/threads", params={"limit": 0}, expect=400)
    assert bad["error"]["param"] == "limit"


def test_list_threads_is_not_an_openai_endpoint(emulator):
    wire = Wire(emulator.url, "openai", emulator.api_key)
    wire.thread("exists")
    body = wire.call("GET", "/threads", expect=404)
    assert body["error"]["message"] == "Invalid URL (GET /v1/threads)"


# ------------------------------------------------------------------------------------------ run shape
def test_foundry_usage_details_are_spelled_prompt_token_details(foundry, emulator):
    _, thread, run = _start(foundry, WEATHER_TEXT, tools=[FUNCTION_TOOL])
    run = _run_until(foundry, emulator, thread["id"], run["id"], {"requires_action"})
    _submit_outputs(foundry, run)
    done = _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)
    assert done["status"] == "completed"
    steps = foundry.get(f"/threads/{thread['id']}/runs/{run['id']}/steps")["data"]
    assert {s["type"] for s in steps} == {"tool_calls", "message_creation"}
    for usage in [done["usage"], *(s["usage"] for s in steps)]:
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
        assert usage["prompt_token_details"] == {"cached_tokens": 0}
        assert "prompt_tokens_details" not in usage

    plain = foundry.thread("hello")
    events = foundry.stream(f"/threads/{plain['id']}/runs", {"assistant_id": done["assistant_id"]})
    finished = dict(events)["thread.run.completed"]
    assert "prompt_token_details" in finished["usage"] and "prompt_tokens_details" not in finished["usage"]
    step_usages = [d["usage"] for e, d in events if e == "thread.run.step.completed"]
    assert step_usages and all("prompt_token_details" in u for u in step_usages)


def test_foundry_runs_carry_empty_tool_resources_in_json_and_code_interpreter_in_streams(foundry, emulator):
    asst, thread, run = _start(foundry, "hello there")
    assert run["tool_resources"] == {}
    assert _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)["tool_resources"] == {}

    events = foundry.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    runs = [d for e, d in events if e.startswith("thread.run.") and d.get("object") == "thread.run"]
    assert len(runs) >= 4 and all(r["tool_resources"] == STREAM_RESOURCES for r in runs)
    # The same streamed run, answered as JSON: {} again (in the retrieve and in the list).
    assert foundry.get(f"/threads/{thread['id']}/runs/{runs[0]['id']}")["tool_resources"] == {}
    listed = foundry.get(f"/threads/{thread['id']}/runs")["data"]
    assert len(listed) == 2 and all(r["tool_resources"] == {} for r in listed)

    # A run created without a stream and continued by a streamed submit: its events carry the stream shape.
    _, thread2, run2 = _start(foundry, WEATHER_TEXT, tools=[FUNCTION_TOOL])
    run2 = _run_until(foundry, emulator, thread2["id"], run2["id"], {"requires_action"})
    assert run2["tool_resources"] == {}
    second = _submit_outputs(foundry, run2, stream=True)
    assert all(d["tool_resources"] == STREAM_RESOURCES for e, d in second if e.startswith("thread.run.")
               and d.get("object") == "thread.run")


def test_azure_streamed_runs_keep_their_recorded_resources(emulator):
    # The Azure/OpenAI recordings: a streamed run echoes the empty code_interpreter resource in JSON answers too.
    azure = Wire(emulator.url, "azure", emulator.api_key)
    asst = azure.assistant()
    thread = azure.thread("hi")
    events = azure.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    run_id = events[0][1]["id"]
    assert azure.get(f"/threads/{thread['id']}/runs/{run_id}")["tool_resources"] == STREAM_RESOURCES


def test_foundry_rest_messages_have_no_lifecycle_fields_but_streamed_ones_do(foundry, emulator):
    lifecycle = {"status", "incomplete_details", "incomplete_at", "completed_at"}
    asst = foundry.assistant()
    thread = foundry.thread()
    created = foundry.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": "hello"})
    assert not lifecycle & set(created)
    run = foundry.run(thread["id"], asst["id"])
    _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)
    listed = foundry.get(f"/threads/{thread['id']}/messages")["data"]
    assert [m["role"] for m in listed] == ["assistant", "user"]
    for message in listed:
        assert not lifecycle & set(message), message
        retrieved = foundry.get(f"/threads/{thread['id']}/messages/{message['id']}")
        assert not lifecycle & set(retrieved)
        assert retrieved["content"] == message["content"]

    events = foundry.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    streamed = [d for e, d in events if e in ("thread.message.created", "thread.message.completed")]
    assert len(streamed) == 2 and all(lifecycle <= set(m) for m in streamed)
    assert streamed[-1]["status"] == "completed" and streamed[-1]["completed_at"] is not None


@pytest.mark.parametrize("text", ["[fail:server_error] go", "[fail:invalid_prompt] go", f"{WEATHER_TEXT} [fail]"])
def test_foundry_failed_run_reports_zero_usage(foundry, emulator, text):
    _, thread, run = _start(foundry, text, tools=[FUNCTION_TOOL])
    run = _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL | {"requires_action"})
    if run["status"] == "requires_action":
        _submit_outputs(foundry, run)   # a completed tool step that used tokens, then the failure
        run = _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)
    assert run["status"] == "failed"
    assert {k: run["usage"][k] for k in ZERO_COUNTS} == ZERO_COUNTS
    assert foundry.get(f"/threads/{thread['id']}/runs")["data"][0]["usage"]["total_tokens"] == 0


def test_failed_run_after_a_tool_step_keeps_its_usage_outside_foundry(emulator):
    azure = Wire(emulator.url, "azure", emulator.api_key)
    _, thread, run = _start(azure, f"{WEATHER_TEXT} [fail]", tools=[FUNCTION_TOOL])
    run = _run_until(azure, emulator, thread["id"], run["id"], {"requires_action"})
    _submit_outputs(azure, run)
    failed = _run_until(azure, emulator, thread["id"], run["id"], TERMINAL)
    assert failed["status"] == "failed" and failed["usage"]["total_tokens"] > 0
    # The same run read through Foundry: zeros.
    seen_by_foundry = Wire(emulator.url, "foundry", emulator.api_key).get(f"/threads/{thread['id']}/runs/{run['id']}")
    assert seen_by_foundry["usage"]["total_tokens"] == 0


def test_foundry_streamed_failure_event_reports_zero_usage(foundry):
    asst = foundry.assistant()
    thread = foundry.thread("[fail:rate_limit_exceeded] go")
    events = foundry.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    assert event_names(events)[-2:] == ["thread.run.failed", "done"]
    failed = events[-2][1]
    assert failed["last_error"]["code"] == "rate_limit_exceeded"
    assert {k: failed["usage"][k] for k in ZERO_COUNTS} == ZERO_COUNTS


# ------------------------------------------------------------------------------------------ expires_at
def test_foundry_expires_at_moves_far_out_while_requires_action(foundry, emulator):
    expire_after = emulator.state.expire_after
    _, thread, run = _start(foundry, WEATHER_TEXT, tools=[FUNCTION_TOOL])
    assert run["status"] == "queued" and run["expires_at"] == run["created_at"] + int(expire_after)
    original = run["expires_at"]
    before = time.time()
    run = _run_until(foundry, emulator, thread["id"], run["id"], {"requires_action"})
    after = time.time()
    assert int(before + 3 * expire_after) - 1 <= run["expires_at"] <= int(after + 3 * expire_after)
    tool_step = foundry.get(f"/threads/{thread['id']}/runs/{run['id']}/steps")["data"][0]
    assert tool_step["status"] == "in_progress" and tool_step["expires_at"] == run["expires_at"]

    resumed = _submit_outputs(foundry, run)
    assert resumed["status"] == "queued" and resumed["expires_at"] == original
    done = _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)
    assert done["status"] == "completed" and done["expires_at"] is None


def test_azure_expires_at_stays_put_while_requires_action(emulator):
    azure = Wire(emulator.url, "azure", emulator.api_key)
    _, thread, run = _start(azure, WEATHER_TEXT, tools=[FUNCTION_TOOL])
    waiting = _run_until(azure, emulator, thread["id"], run["id"], {"requires_action"})
    assert waiting["expires_at"] == run["expires_at"] == run["created_at"] + int(emulator.state.expire_after)


@pytest.mark.slow  # waits for a run to expire in real seconds
def test_foundry_expiry_timer_follows_the_extended_expires_at(short_expiry_emulator):
    # expire_after = 1 s: an Azure run in requires_action expires 1 s after creation; a Foundry one only at
    # its extended expires_at (3 s after it started waiting).
    handle = short_expiry_emulator
    foundry = Wire(handle.url, "foundry", handle.api_key)
    _, thread, run = _start(foundry, WEATHER_TEXT, tools=[FUNCTION_TOOL])
    waiting = await_status(handle, run["id"], "requires_action")
    waiting_run = foundry.get(f"/threads/{thread['id']}/runs/{run['id']}")
    assert waiting_run["status"] == "requires_action"
    assert waiting_run["expires_at"] >= int(waiting["wall"] + 3 * handle.state.expire_after) - 1
    expired = await_status(handle, run["id"], "expired", timeout=10)
    assert expired["from"] == "requires_action"
    assert expired["monotonic"] - waiting["monotonic"] >= 2.5, "expired at the old created_at + expire_after"
    final = foundry.get(f"/threads/{thread['id']}/runs/{run['id']}")
    assert final["status"] == "expired" and final["expires_at"] is None


# ------------------------------------------------------------------------------------------ gateway 429
def test_foundry_429_is_the_gateway_shape(emulator):
    emulator.set_faults({"429": 1.0})
    foundry = Wire(emulator.url, "foundry", emulator.api_key)
    r = foundry.raw("GET", "/assistants")
    assert r.status_code == 429
    assert r.json() == {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}}
    assert r.headers["Retry-After"] == "1" and r.headers["policy-id"]
    names = {k.lower() for k in r.headers}
    assert "retry-after-ms" not in names
    assert not [n for n in names if n.startswith(("x-ratelimit-", "openai-"))], names

    azure = Wire(emulator.url, "azure", emulator.api_key).raw("GET", "/assistants")
    assert azure.status_code == 429 and int(azure.headers["retry-after-ms"]) >= 1
    assert "x-ratelimit-remaining-requests" in azure.headers and "policy-id" not in azure.headers
    openai = Wire(emulator.url, "openai", emulator.api_key).raw("GET", "/assistants")
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert "openai-version" in openai.headers and "retry-after-ms" in openai.headers

    emulator.set_faults(None)
    assert foundry.raw("GET", "/assistants").status_code == 200


# ------------------------------------------------------------------------------------------ engine errors
@pytest.mark.parametrize(
    ("model", "text", "run_model"),
    [
        ("gpt-4o", "[fail:invalid_engine_error] hello", None),
        ("undeployed-gpt-4o", "hello", None),
        ("gpt-4o", "hello", "undeployed-gpt-5"),
    ],
    ids=["trigger", "assistant-model", "run-model"],
)
def test_undeployed_model_fails_inside_a_200_stream(foundry, model, text, run_model):
    asst = foundry.assistant(model=model)
    thread = foundry.thread(text)
    body = {"assistant_id": asst["id"], **({"model": run_model} if run_model else {})}
    events = foundry.stream(f"/threads/{thread['id']}/runs", body)
    assert event_names(events) == [
        "thread.run.created", "thread.run.queued", "thread.run.in_progress", "thread.run.failed", "done",
    ]
    failed = events[-2][1]
    used = run_model or model
    assert failed["last_error"] == {"code": "invalid_engine_error",
                                    "message": f"Failed to resolve model info for: {used}"}
    assert failed["model"] == used and failed["failed_at"] is not None and failed["expires_at"] is None
    assert {k: failed["usage"][k] for k in ZERO_COUNTS} == ZERO_COUNTS
    assert foundry.get(f"/threads/{thread['id']}/runs/{failed['id']}/steps")["data"] == []


# ------------------------------------------------------------------------------------------ streams
def test_streamed_submit_opens_with_the_completed_tool_step(any_wire):
    asst = any_wire.assistant(tools=[FUNCTION_TOOL])
    thread = any_wire.thread(WEATHER_TEXT)
    first = any_wire.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    assert event_names(first)[-2:] == ["thread.run.requires_action", "done"]
    second = _submit_outputs(any_wire, first[-2][1], "22 degrees", stream=True)
    names = event_names(second)
    assert names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert names[-2:] == ["thread.run.completed", "done"]
    step = second[0][1]
    assert step["type"] == "tool_calls" and step["status"] == "completed" and step["completed_at"] is not None
    assert step["step_details"]["tool_calls"][0]["function"]["output"] == "22 degrees"
    assert step["usage"]["total_tokens"] == step["usage"]["prompt_tokens"] + step["usage"]["completion_tokens"] > 0
    assert "prompt_token_details" in step["usage"]


def test_foundry_function_call_deltas_carry_index_and_null_output(foundry):
    asst = foundry.assistant(tools=[FUNCTION_TOOL, SECOND_FUNCTION_TOOL])
    thread = foundry.thread("call get_current_weather and get_local_time")
    events = foundry.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    calls = [c for e, d in events if e == "thread.run.step.delta" for c in d["delta"]["step_details"]["tool_calls"]]
    assert calls and all(isinstance(c["index"], int) and c["type"] == "function" for c in calls)
    openers = [c for c in calls if "id" in c]
    assert [c["index"] for c in openers] == [0, 1]
    for opener in openers:
        assert opener["function"]["output"] is None and "output" in opener["function"]
        assert opener["function"]["arguments"] == ""
    required = events[-2][1]["required_action"]["submit_tool_outputs"]["tool_calls"]
    for opener, call in zip(openers, required, strict=True):
        fragments = "".join(c["function"].get("arguments", "") for c in calls if c["index"] == opener["index"])
        assert opener["id"] == call["id"] and fragments == call["function"]["arguments"]


# ------------------------------------------------------------------------------------------ objects
def test_foundry_objects_need_no_beta_header_and_name_the_assistant(foundry, emulator):
    sends_beta = any(k.lower() == "openai-beta" for k in foundry.session.headers)   # never print the headers
    assert not sends_beta
    asst = foundry.assistant(tools=[FUNCTION_TOOL])
    assert asst["object"] == "assistant" and asst["id"].startswith("asst_")
    assert foundry.get(f"/assistants/{asst['id']}")["object"] == "assistant"
    assert [a["object"] for a in foundry.get("/assistants")["data"]] == ["assistant"]
    thread = foundry.thread("hello")
    run = foundry.run(thread["id"], asst["id"])
    done = _run_until(foundry, emulator, thread["id"], run["id"], TERMINAL)
    steps = foundry.get(f"/threads/{thread['id']}/runs/{run['id']}/steps")["data"]
    messages = foundry.get(f"/threads/{thread['id']}/messages")["data"]
    for obj in [run, done, *steps, messages[0]]:
        assert obj["assistant_id"] == asst["id"] and "agent_id" not in obj, obj["object"]
    events = foundry.stream(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    stamped = [d for _, d in events if isinstance(d, dict) and "assistant_id" in d]
    assert collapse_deltas(event_names(events))[-2:] == ["thread.run.completed", "done"]
    assert len(stamped) >= 8 and all(d["assistant_id"] == asst["id"] for d in stamped)


def test_foundry_create_run_takes_tool_resources_and_openai_does_not(emulator):
    resources = {"code_interpreter": {"file_ids": ["assistant-abc"]}}
    foundry = Wire(emulator.url, "foundry", emulator.api_key)
    asst = foundry.assistant(tools=[{"type": "code_interpreter"}])
    thread = foundry.thread("hello")
    run = foundry.run(thread["id"], asst["id"], tool_resources=resources)
    assert run["tool_resources"] == resources
    events = foundry.stream(f"/threads/{foundry.thread('hi')['id']}/runs",
                            {"assistant_id": asst["id"], "tool_resources": resources})
    assert events[0][1]["tool_resources"] == resources

    for surface in ("azure", "openai"):
        wire = Wire(emulator.url, surface, emulator.api_key)
        asst = wire.assistant()
        thread = wire.thread("hello")
        body = wire.post(f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"], "tool_resources": resources},
                         expect=400)
        assert body["error"]["message"] == "Unrecognized request argument supplied: tool_resources"

"""The official openai SDK against the emulator, as `AzureOpenAI` (2024-08-01-preview) and as `OpenAI` (/v1).

Each test drives a helper the SDK ships (create_and_poll, streams with AssistantEventHandler, auto-pagination)
or checks that an error surfaces as the SDK's matching exception class with the service's real message.
"""

from __future__ import annotations

import json
import time

import openai
import pytest
from openai import AssistantEventHandler, AzureOpenAI, OpenAI

from assistants_emulator.tests.wire import AZURE_API_VERSION, FUNCTION_TOOL, SECOND_FUNCTION_TOOL, TERMINAL, Wire

# client.beta.assistants/threads are marked deprecated (Assistants API sunset); they are what we test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

POLL_MS = 10  # the SDK's default poll interval is 1 s; the emulator runs fast


def make_client(emulator, kind: str, *, api_key: str | None = None, max_retries: int = 2):
    key = api_key or emulator.api_key
    if kind == "azure":
        return AzureOpenAI(
            azure_endpoint=emulator.azure_endpoint, api_key=key, api_version=AZURE_API_VERSION, max_retries=max_retries
        )
    return OpenAI(base_url=emulator.openai_base_url, api_key=key, max_retries=max_retries)


@pytest.fixture(params=["azure", "openai"])
def kind(request):
    return request.param


@pytest.fixture
def client(emulator, kind):
    with make_client(emulator, kind) as c:
        yield c


@pytest.fixture
def strict_client(emulator, kind):
    """No retries: errors must surface on the first response."""
    with make_client(emulator, kind, max_retries=0) as c:
        yield c


def _assistant(client, tools=None):
    return client.beta.assistants.create(model="gpt-4o", tools=tools or [], name="sdk-conformance")


def _thread(client, text):
    return client.beta.threads.create(messages=[{"role": "user", "content": text}])


def _requires_action_run(client, text="what does get_current_weather say for Rome?", tools=(FUNCTION_TOOL,)):
    asst = _assistant(client, list(tools))
    thread = _thread(client, text)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    assert run.status == "requires_action", run.status
    return run


def _wait(client, thread_id, run_id, until=TERMINAL, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        if run.status in until:
            return run
        assert time.monotonic() < deadline, f"run still {run.status}"
        time.sleep(0.02)


class RecordingHandler(AssistantEventHandler):
    """Keeps what the callbacks saw, to compare with what the handler accumulated."""

    def __init__(self):
        super().__init__()
        self.text = ""
        self.events: list[str] = []
        self.tool_calls_created: list[str] = []
        self.text_done: list[str] = []

    def on_event(self, event):
        self.events.append(event.event)

    def on_text_delta(self, delta, snapshot):
        self.text += delta.value or ""

    def on_text_done(self, text):
        self.text_done.append(text.value)

    def on_tool_call_created(self, tool_call):
        self.tool_calls_created.append(tool_call.type)


# ------------------------------------------------------------------------------------------ polling helpers


def test_create_and_poll_completes(client):
    asst = _assistant(client)
    thread = _thread(client, "hello from the SDK")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed" and run.completed_at and run.usage.total_tokens > 0
    messages = client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id)
    assert [m.role for m in messages.data] == ["assistant"]
    assert messages.data[0].content[0].text.value


def test_function_run_requires_action_then_submit_tool_outputs_and_poll(client):
    run = _requires_action_run(client)
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_current_weather"]
    assert "location" in json.loads(calls[0].function.arguments)
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "18C and cloudy"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    steps = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=run.thread_id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.tool_calls[0].function.output == "18C and cloudy"


def test_parallel_function_calls_submitted_together(client):
    run = _requires_action_run(
        client, "get_current_weather and get_local_time for Lima", tools=(FUNCTION_TOOL, SECOND_FUNCTION_TOOL)
    )
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert len(calls) == 2
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": c.id, "output": c.function.name} for c in calls],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"


# ------------------------------------------------------------------------------------------ streaming helpers


def test_stream_event_handler_final_run_steps_and_text(client):
    asst = _assistant(client)
    thread = _thread(client, "stream through the SDK please")
    handler = RecordingHandler()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id, event_handler=handler) as stream:
        stream.until_done()
    final_run = handler.get_final_run()
    assert final_run.status == "completed"
    assert [s.type for s in handler.get_final_run_steps()] == ["message_creation"]
    (message,) = handler.get_final_messages()
    assert message.content[0].text.value == handler.text == handler.text_done[-1]
    assert handler.text.startswith("This is a scripted reply")
    stored = client.beta.threads.messages.retrieve(message.id, thread_id=thread.id)
    assert stored.content[0].text.value == handler.text
    assert handler.events[0] == "thread.run.created" and handler.events[-1] == "thread.run.completed"


def test_submit_tool_outputs_stream(client):
    asst = _assistant(client, [FUNCTION_TOOL])
    thread = _thread(client, "stream get_current_weather for Kyiv")
    first = RecordingHandler()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=asst.id, event_handler=first) as stream:
        stream.until_done()
    run = first.get_final_run()
    assert run.status == "requires_action"
    assert first.tool_calls_created == ["function"]
    (step,) = first.get_final_run_steps()
    call = step.step_details.tool_calls[0]
    assert call.function.name == "get_current_weather" and json.loads(call.function.arguments) == json.loads(
        run.required_action.submit_tool_outputs.tool_calls[0].function.arguments
    ), "step deltas accumulate into the full arguments"
    second = RecordingHandler()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "snowing"}],
        event_handler=second,
    ) as stream:
        stream.until_done()
    assert second.get_final_run().status == "completed"
    assert "snowing" in second.text
    assert second.get_final_messages()[0].content[0].text.value == second.text


# ------------------------------------------------------------------------------------------ cancel / update


def test_cancel_goes_cancelling_then_cancelled(client):
    asst = _assistant(client)
    thread = _thread(client, "[slow:30] a long job")
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    cancelling = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    final = client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=POLL_MS)
    assert final.status == "cancelled" and final.cancelled_at


def test_update_run_metadata(client):
    asst = _assistant(client)
    thread = _thread(client, "hi")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    updated = client.beta.threads.runs.update(run.id, thread_id=thread.id, metadata={"ticket": "T-1", "owner": "qa"})
    assert updated.metadata == {"ticket": "T-1", "owner": "qa"} and updated.status == "completed"
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).metadata == {"ticket": "T-1", "owner": "qa"}


# ------------------------------------------------------------------------------------------ pagination


@pytest.fixture(scope="module")
def fast_emulator():
    """A separate, very fast emulator so 250 sequential runs stay quick."""
    import assistants_emulator as emulator_pkg

    url, handle = emulator_pkg.serve_in_thread(api_key="fast-key-cnry7", speed=1000.0)
    try:
        yield url, handle
    finally:
        handle.stop()


@pytest.mark.slow  # 250 runs, each created and finished through the SDK
def test_auto_pagination_over_250_runs(fast_emulator):
    url, _handle = fast_emulator
    wire = Wire(url, "azure", "fast-key-cnry7")
    asst = wire.assistant()
    thread = wire.thread("seed")
    created = []
    for _ in range(250):  # one active run per thread: each must finish before the next starts
        run = wire.run(thread["id"], asst["id"])
        wire.wait_run(thread["id"], run["id"], until=TERMINAL)
        created.append(run["id"])
    client = AzureOpenAI(azure_endpoint=url, api_key="fast-key-cnry7", api_version=AZURE_API_VERSION)
    page = client.beta.threads.runs.list(thread_id=thread["id"], limit=100, order="asc")
    assert len(page.data) == 100 and page.has_more
    assert [r.id for r in page] == created, "auto-pagination walks every page, in order"
    assert [r.id for r in client.beta.threads.runs.list(thread_id=thread["id"], limit=30)] == created[::-1]


def test_auto_pagination_over_250_messages(client, emulator, kind):
    wire = Wire(emulator.url, kind, emulator.api_key)
    thread = wire.thread()
    created = [
        wire.post(f"/threads/{thread['id']}/messages", {"role": "user", "content": f"message {i}"})["id"]
        for i in range(250)
    ]
    listed = [m.id for m in client.beta.threads.messages.list(thread_id=thread["id"], order="asc")]
    assert listed == created


def test_steps_pagination_with_small_limits(client):
    # 250 steps in one run cannot happen by protocol (a run has a handful of steps), so page a multi-step run
    # with limit=1 and limit=2 instead: code_interpreter + file_search + function call, then the answer.
    tools = [{"type": "code_interpreter"}, {"type": "file_search"}, FUNCTION_TOOL]
    run = _requires_action_run(client, "calculate 3 * 4 with code, search the file, then get_current_weather", tools)
    calls = run.required_action.submit_tool_outputs.tool_calls
    client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": c.id, "output": "ok"} for c in calls],
        poll_interval_ms=POLL_MS,
    )
    everything = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=run.thread_id, limit=100, order="asc")
    assert len(everything.data) >= 4
    for limit in (1, 2):
        page = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=run.thread_id, limit=limit, order="asc")
        assert len(page.data) == limit and page.has_more
        assert [s.id for s in page] == [s.id for s in everything.data]


# ------------------------------------------------------------------------------------------ errors


def test_metadata_17_keys_raises_bad_request(strict_client):
    with pytest.raises(openai.BadRequestError) as info:
        strict_client.beta.threads.create(metadata={f"key{i}": "v" for i in range(17)})
    assert info.value.status_code == 400
    assert "Invalid 'metadata': too many properties. Expected an object with at most 16 properties" in str(info.value)
    assert info.value.param == "metadata" and info.value.code == "object_above_max_properties"


def test_submit_outputs_to_completed_run_raises_bad_request(strict_client):
    asst = _assistant(strict_client)
    thread = _thread(strict_client, "hi")
    run = strict_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS
    )
    with pytest.raises(openai.BadRequestError, match="do not accept tool outputs"):
        strict_client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": "y"}]
        )


def test_missing_tool_outputs_raises_bad_request(strict_client):
    run = _requires_action_run(
        strict_client, "get_current_weather and get_local_time in Quito", tools=(FUNCTION_TOOL, SECOND_FUNCTION_TOOL)
    )
    first = run.required_action.submit_tool_outputs.tool_calls[0]
    with pytest.raises(openai.BadRequestError, match=r"Expected tool outputs for call_ids"):
        strict_client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": first.id, "output": "x"}]
        )
    assert strict_client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "requires_action"


def test_cancel_completed_run_raises_bad_request(strict_client):
    asst = _assistant(strict_client)
    thread = _thread(strict_client, "hi")
    run = strict_client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS
    )
    with pytest.raises(openai.BadRequestError, match=r"Cannot cancel run with status 'completed'\."):
        strict_client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_active_run_conflict_raises_bad_request(strict_client):
    asst = _assistant(strict_client)
    thread = _thread(strict_client, "[slow:30] busy")
    run = strict_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    try:
        with pytest.raises(openai.BadRequestError, match=f"already has an active run {run.id}"):
            strict_client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
        with pytest.raises(openai.BadRequestError, match="Can't add messages to"):
            strict_client.beta.threads.messages.create(thread_id=thread.id, role="user", content="more")
    finally:
        strict_client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_unknown_ids_raise_not_found(strict_client):
    with pytest.raises(openai.NotFoundError, match="No thread found with id 'thread_missing'"):
        strict_client.beta.threads.retrieve("thread_missing")
    with pytest.raises(openai.NotFoundError, match="No assistant found with id 'asst_missing'"):
        strict_client.beta.assistants.retrieve("asst_missing")


def test_wrong_key_raises_authentication_error(emulator, kind):
    c = make_client(emulator, kind, api_key="sk-wrong-key-cnry7-000000", max_retries=0)
    with c, pytest.raises(openai.AuthenticationError) as info:
        c.beta.assistants.list()
    assert info.value.status_code == 401
    assert "sk-wrong-key-cnry7-000000" not in str(info.value), "the key must not be echoed whole"


def test_rate_limit_fault_raises_rate_limit_error(emulator, strict_client):
    emulator.set_faults({"429": 1.0})
    try:
        with pytest.raises(openai.RateLimitError) as info:
            strict_client.beta.assistants.list()
    finally:
        emulator.set_faults(None)
    assert info.value.status_code == 429


def test_server_fault_raises_internal_server_error(emulator, strict_client):
    emulator.set_faults({"5xx": 1.0})
    try:
        with pytest.raises(openai.InternalServerError) as info:
            strict_client.beta.assistants.list()
    finally:
        emulator.set_faults(None)
    assert info.value.status_code >= 500


# ------------------------------------------------------------------------------------------ Foundry classic agents


def test_foundry_wire_format_with_bearer_token(emulator):
    """Foundry classic agents: project-scoped paths, api-version=2025-05-01, Bearer auth; same protocol."""
    foundry = Wire(emulator.url, "foundry", emulator.api_key)
    assert foundry.url("/threads").startswith(emulator.foundry_endpoint(project="demo"))
    agent = foundry.assistant(tools=[FUNCTION_TOOL])
    thread = foundry.thread("ask get_current_weather for Nairobi")
    run = foundry.run(thread["id"], agent["id"])
    run = foundry.wait_run(thread["id"], run["id"])
    assert run["status"] == "requires_action"
    call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    foundry.post(
        f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "warm"}]},
    )
    assert foundry.wait_run(thread["id"], run["id"])["status"] == "completed"
    # Foundry takes Entra tokens only: an api-key header alone is refused.
    resp = foundry.session.get(
        foundry.url("/assistants"), params=foundry.params(), headers={"Authorization": "", "api-key": emulator.api_key}
    )
    assert resp.status_code == 401


def test_steps_list_include_file_search_content(client):
    asst = _assistant(client, [{"type": "file_search"}])
    thread = _thread(client, "search the document for the totals")
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed"
    include = ["step_details.tool_calls[*].file_search.results[*].content"]
    steps = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id, include=include, order="asc")
    call = steps.data[0].step_details.tool_calls[0]
    assert call.type == "file_search" and call.file_search.ranking_options.ranker
    assert call.file_search.results and call.file_search.results[0].content[0].text
    answer = client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id).data[0].content[0].text
    assert "【4:0†source】" in answer.value
    (citation,) = answer.annotations
    assert citation.type == "file_citation" and citation.file_citation.file_id
    # Indices count code points, as in the recorded FileSearchWorks answer (start 29, end 53 for 24 characters).
    assert answer.value[citation.start_index : citation.end_index] == citation.text == "【4:0†source】"

"""Microsoft's own Foundry SDK (`azure-ai-agents`) as the judge of the emulator's Foundry classic agents dialect.

The SDK talks to `emulator.foundry_endpoint("demo")` over real loopback HTTP and authenticates the way a
deployed app does: `ManagedIdentityCredential()` fetches an Entra token for `https://ai.azure.com` from the
App Service–style endpoint of the `managed_identity` fixture, and the emulator accepts it as Bearer token.
Runs are awaited on the emulator's state-change record (`await_status`) or by the SDK's own polling helper.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from azure.ai.agents import AgentsClient
from azure.ai.agents.models import (
    AgentEventHandler,
    CodeInterpreterTool,
    CodeInterpreterToolResource,
    FunctionTool,
    ListSortOrder,
    MessageDeltaChunk,
    RequiredFunctionToolCall,
    RunStep,
    SubmitToolOutputsAction,
    ThreadMessage,
    ThreadRun,
    ToolOutput,
    ToolResources,
)
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.rest import HttpRequest
from azure.identity import ManagedIdentityCredential

from assistants_emulator.tests.identity import serve_managed_identity
from assistants_emulator.tests.wire import await_status

FOUNDRY_RESOURCE = "https://ai.azure.com"
API_VERSIONS = ("2025-05-01", "2025-05-15-preview", "v1")
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


def get_weather(location: str) -> str:
    """Gets the current weather at a location.

    :param location: The city, e.g. Seattle, WA.
    :return: The weather as JSON.
    """
    return json.dumps({"location": location, "weather": "sunny", "temperature_c": 22})


class _AllowLoopbackHttp(SansIOHTTPPolicy):
    """azure-core refuses Bearer tokens over plain http; the emulator listens on plain http on loopback only."""

    def on_request(self, request):
        request.context["enforce_https"] = False


class _Wiretap(SansIOHTTPPolicy):
    """Every attempt the SDK sends (it sits behind the retry policy): method, URL, status."""

    def __init__(self):
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def on_response(self, request, response):
        sent = request.http_request
        with self._lock:
            self.seen.append((sent.method, sent.url, response.http_response.status_code))

    def paths(self, method: str, fragment: str) -> list[tuple[str, int]]:
        with self._lock:
            return [(url, status) for m, url, status in self.seen if m == method and fragment in url]


@pytest.fixture
def wiretap():
    return _Wiretap()


def make_client(emulator, wiretap: _Wiretap, **kwargs) -> AgentsClient:
    return AgentsClient(
        endpoint=emulator.foundry_endpoint("demo"),
        credential=ManagedIdentityCredential(),
        per_call_policies=[_AllowLoopbackHttp()],
        per_retry_policies=[wiretap],
        **kwargs,
    )


@pytest.fixture
def client(emulator, managed_identity, wiretap):
    with make_client(emulator, wiretap) as agents:
        yield agents


def _wait(emulator, agents: AgentsClient, run: ThreadRun, statuses) -> ThreadRun:
    await_status(emulator, run.id, statuses)
    return agents.runs.get(thread_id=run.thread_id, run_id=run.id)


def _agent(agents: AgentsClient, model: str = "gpt-4o"):
    return agents.create_agent(model=model, name="weather-agent", instructions="You answer about the weather.",
                               tools=FunctionTool({get_weather}).definitions)


def _thread_with(agents: AgentsClient, text: str):
    thread = agents.threads.create()
    agents.messages.create(thread_id=thread.id, role="user", content=text)
    return thread


def _assistant_text(agents: AgentsClient, thread_id: str) -> str:
    message = agents.messages.get_last_message_text_by_role(thread_id=thread_id, role="assistant")
    assert message is not None, "no assistant message"
    return message.text.value


def _raw_get(agents: AgentsClient, path: str, api_version: str = "v1") -> dict:
    """A REST GET through the SDK's own pipeline (same auth), to see the JSON the models parse."""
    response = agents.send_request(HttpRequest("GET", f"{agents._config.endpoint}{path}?api-version={api_version}"))
    assert response.status_code == 200, response.text()
    return response.json()


class Collector(AgentEventHandler):
    """Collects text deltas, every run snapshot, finished steps and completed messages of a stream."""

    def __init__(self):
        super().__init__()
        self.deltas: list[str] = []
        self.runs: list[ThreadRun] = []
        self.steps: list[RunStep] = []
        self.messages: list[ThreadMessage] = []
        self.done = False

    def on_message_delta(self, delta: MessageDeltaChunk):
        self.deltas.append(delta.text)

    def on_thread_run(self, run: ThreadRun):
        self.runs.append(run)

    def on_run_step(self, step: RunStep):
        self.steps.append(step)

    def on_thread_message(self, message: ThreadMessage):
        if message.status == "completed":
            self.messages.append(message)

    def on_done(self):
        self.done = True

    @property
    def final_run(self) -> ThreadRun:
        assert self.runs, "the stream carried no run"
        return self.runs[-1]


def _drain(handler: AgentEventHandler) -> list[str]:
    """Iterate a handler to its end; returns the event types in order."""
    return [event_type for event_type, _data, _ in handler]


# ------------------------------------------------------------------------------------------ basics
def test_agent_thread_message_and_run_complete_with_managed_identity(client, managed_identity):
    agent = _agent(client)
    assert agent.id.startswith("asst_") and agent["object"] == "assistant"
    assert agent.model == "gpt-4o" and agent.tools[0].function.name == "get_weather"
    assert managed_identity.requests == [FOUNDRY_RESOURCE], "the SDK asks for the Foundry audience"
    assert managed_identity.refused == 0

    thread = client.threads.create()
    message = client.messages.create(thread_id=thread.id, role="user", content="Hello from the Foundry SDK")
    assert message.thread_id == thread.id and message.role == "user"
    assert message.content[0].text.value == "Hello from the Foundry SDK"

    run = client.runs.create_and_process(thread_id=thread.id, agent_id=agent.id, polling_interval=0.05)
    assert run.status == "completed" and run.agent_id == agent.id and run.thread_id == thread.id
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens > 0
    assert run.completed_at is not None and run.expires_at is None and run.last_error is None
    assert "Hello from the Foundry SDK" in _assistant_text(client, thread.id)
    # One token for the whole client: azure-core caches it.
    assert managed_identity.requests == [FOUNDRY_RESOURCE]


def test_requires_action_then_submit_tool_outputs_completes(client, emulator):
    agent = _agent(client)
    thread = _thread_with(client, "Please call get_weather for Seattle")
    run = client.runs.create(thread_id=thread.id, agent_id=agent.id)
    assert run.status == "queued"
    run = _wait(emulator, client, run, "requires_action")
    assert run.status == "requires_action" and isinstance(run.required_action, SubmitToolOutputsAction)
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert len(calls) == 1 and isinstance(calls[0], RequiredFunctionToolCall)
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"location": "Seattle, WA"}
    # The run waits far beyond created_at + expire_after while the tool runs (Foundry).
    assert run.expires_at.timestamp() > run.created_at.timestamp() + emulator.state.expire_after

    output = FunctionTool({get_weather}).execute(calls[0])
    resumed = client.runs.submit_tool_outputs(thread_id=thread.id, run_id=run.id,
                                              tool_outputs=[ToolOutput(tool_call_id=calls[0].id, output=output)])
    assert resumed.status == "queued" and resumed.required_action is None
    done = _wait(emulator, client, run, TERMINAL)
    assert done.status == "completed"
    assert "sunny" in _assistant_text(client, thread.id)
    steps = list(client.run_steps.list(thread_id=thread.id, run_id=run.id, order=ListSortOrder.ASCENDING))
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.tool_calls[0].function["output"] == output


def test_create_and_process_runs_the_function_itself(client):
    client.enable_auto_function_calls({get_weather})
    agent = _agent(client)
    thread = _thread_with(client, "What is the weather? Use get_weather.")
    run = client.runs.create_and_process(thread_id=thread.id, agent_id=agent.id, polling_interval=0.05)
    assert run.status == "completed"
    assert "temperature_c" in _assistant_text(client, thread.id)


# ------------------------------------------------------------------------------------------ streaming
def test_stream_collects_text_deltas_and_the_final_run(client):
    agent = _agent(client)
    thread = _thread_with(client, "Tell me something [words:40]")
    handler = Collector()
    with client.runs.stream(thread_id=thread.id, agent_id=agent.id, event_handler=handler) as stream:
        stream.until_done()
    assert handler.done
    assert [r.status for r in handler.runs][:3] == ["queued", "queued", "in_progress"]
    final = handler.final_run
    assert final.status == "completed" and final.usage.total_tokens > 0
    assert len(handler.deltas) == 40
    text = "".join(handler.deltas)
    assert handler.messages and handler.messages[-1].text_messages[0].text.value == text
    assert _assistant_text(client, thread.id) == text


def test_streamed_submit_of_tool_outputs(client):
    agent = _agent(client)
    thread = _thread_with(client, "call get_weather please")
    first = Collector()
    with client.runs.stream(thread_id=thread.id, agent_id=agent.id, event_handler=first) as stream:
        names = _drain(stream)
    assert names[-2:] == ["thread.run.requires_action", "done"]
    run = first.final_run
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]

    second = Collector()
    client.runs.submit_tool_outputs_stream(thread_id=thread.id, run_id=run.id, event_handler=second,
                                           tool_outputs=[ToolOutput(tool_call_id=call.id, output="rainy, 12 C")])
    names = _drain(second)
    assert names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert names[-2:] == ["thread.run.completed", "done"]
    tool_step = second.steps[0]
    assert tool_step.type == "tool_calls" and tool_step.status == "completed"
    assert tool_step.step_details.tool_calls[0].function["output"] == "rainy, 12 C"
    assert tool_step.usage.total_tokens > 0
    assert second.final_run.status == "completed"
    assert "rainy, 12 C" in "".join(second.deltas)


def test_stream_runs_the_function_itself_and_continues_in_the_same_handler(client):
    client.enable_auto_function_calls({get_weather})
    agent = _agent(client)
    thread = _thread_with(client, "call get_weather please")
    handler = Collector()
    with client.runs.stream(thread_id=thread.id, agent_id=agent.id, event_handler=handler) as stream:
        names = _drain(stream)
    assert "thread.run.requires_action" in names and names[-2:] == ["thread.run.completed", "done"]
    assert handler.final_run.status == "completed"
    assert "temperature_c" in "".join(handler.deltas)


def test_undeployed_model_fails_inside_the_stream(client):
    agent = _agent(client, model="undeployed-gpt-4o")   # creating the agent still works
    thread = _thread_with(client, "hello")
    handler = Collector()
    with client.runs.stream(thread_id=thread.id, agent_id=agent.id, event_handler=handler) as stream:
        names = _drain(stream)
    assert names == ["thread.run.created", "thread.run.queued", "thread.run.in_progress", "thread.run.failed",
                     "done"]
    failed = handler.final_run
    assert failed.status == "failed" and failed.last_error["code"] == "invalid_engine_error"
    assert "undeployed-gpt-4o" in failed.last_error["message"]
    assert failed.usage.total_tokens == 0
    polled = client.runs.get(thread_id=thread.id, run_id=failed.id)
    assert polled.status == "failed" and polled.last_error["code"] == "invalid_engine_error"


def test_invalid_engine_trigger_fails_a_polled_run(client):
    agent = _agent(client)
    thread = _thread_with(client, "[fail:invalid_engine_error] hello")
    run = client.runs.create_and_process(thread_id=thread.id, agent_id=agent.id, polling_interval=0.05)
    assert run.status == "failed" and run.last_error["code"] == "invalid_engine_error"
    assert run.failed_at is not None and run.usage.prompt_tokens == 0


# ------------------------------------------------------------------------------------------ lists & updates
def test_list_runs_and_run_steps_iterate_every_page(client, emulator, wiretap):
    agent = _agent(client)
    thread = _thread_with(client, "call get_weather please")
    run_ids = []
    for _ in range(3):
        run = client.runs.create(thread_id=thread.id, agent_id=agent.id)
        run_ids.append(run.id)
        run = _wait(emulator, client, run, "requires_action")
        call = run.required_action.submit_tool_outputs.tool_calls[0]
        client.runs.submit_tool_outputs(thread_id=thread.id, run_id=run.id,
                                        tool_outputs=[ToolOutput(tool_call_id=call.id, output="fine")])
        assert _wait(emulator, client, run, TERMINAL).status == "completed"

    listed = list(client.runs.list(thread_id=thread.id, limit=1))
    assert [r.id for r in listed] == run_ids[::-1], "default order: newest first"
    assert len(wiretap.paths("GET", f"/threads/{thread.id}/runs?")) >= 3, "one request per page of one"
    ascending = list(client.runs.list(thread_id=thread.id, limit=2, order=ListSortOrder.ASCENDING))
    assert [r.id for r in ascending] == run_ids

    steps = list(client.run_steps.list(thread_id=thread.id, run_id=run_ids[0], limit=1))
    assert [s.type for s in steps] == ["message_creation", "tool_calls"]
    assert all(s.run_id == run_ids[0] and s.agent_id == agent.id for s in steps)
    step = client.run_steps.get(thread_id=thread.id, run_id=run_ids[0], step_id=steps[1].id)
    assert step.step_details.tool_calls[0].function["output"] == "fine"


def test_run_level_tool_resources(client, emulator):
    # The SDK's runs.create sends tool_resources when given; the emulator once refused it as unknown.
    agent = client.create_agent(model="gpt-4o", name="coder", tools=CodeInterpreterTool().definitions)
    thread = _thread_with(client, "hello")
    resources = ToolResources(code_interpreter=CodeInterpreterToolResource(file_ids=["assistant-abc"]))
    run = client.runs.create(thread_id=thread.id, agent_id=agent.id, tool_resources=resources)
    assert run.tool_resources.code_interpreter.file_ids == ["assistant-abc"]
    done = _wait(emulator, client, run, TERMINAL)
    assert done.status == "completed" and done.tool_resources.code_interpreter.file_ids == ["assistant-abc"]


def test_update_run_metadata(client, emulator):
    agent = _agent(client)
    thread = _thread_with(client, "hello")
    run = client.runs.create(thread_id=thread.id, agent_id=agent.id, metadata={"origin": "sdk"})
    updated = client.runs.update(thread_id=thread.id, run_id=run.id, metadata={"origin": "sdk", "ticket": "42"})
    assert updated.id == run.id and updated.metadata == {"origin": "sdk", "ticket": "42"}
    assert _wait(emulator, client, run, TERMINAL).metadata == {"origin": "sdk", "ticket": "42"}


def test_cancel_a_run_in_progress(client, emulator):
    agent = _agent(client)
    thread = _thread_with(client, "[slow:30] take your time")
    run = client.runs.create(thread_id=thread.id, agent_id=agent.id)
    assert _wait(emulator, client, run, "in_progress").status == "in_progress"
    cancelling = client.runs.cancel(thread_id=thread.id, run_id=run.id)
    assert cancelling.status == "cancelling"
    cancelled = _wait(emulator, client, run, TERMINAL)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None and cancelled.expires_at is None


def test_list_threads_iterates_every_page_and_drops_deleted_ones(client, wiretap):
    created = [client.threads.create(metadata={"n": str(i)}).id for i in range(5)]
    listed = [t.id for t in client.threads.list(limit=2)]
    assert listed == created[::-1]
    assert len(wiretap.paths("GET", "/threads?")) >= 3
    ascending = [t.id for t in client.threads.list(order=ListSortOrder.ASCENDING)]
    assert ascending == created
    client.threads.delete(created[2])
    assert [t.id for t in client.threads.list()] == [created[4], created[3], created[1], created[0]]


def test_messages_list_has_no_rest_status_but_the_models_cope(client, emulator):
    agent = _agent(client)
    thread = _thread_with(client, "hello messages")
    run = client.runs.create(thread_id=thread.id, agent_id=agent.id)
    assert _wait(emulator, client, run, TERMINAL).status == "completed"
    messages = list(client.messages.list(thread_id=thread.id, order=ListSortOrder.ASCENDING))
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].run_id == run.id and messages[1].agent_id == agent.id
    assert messages[1].text_messages[0].text.value.startswith("This is a scripted reply")
    assert all(m.status is None for m in messages)
    raw = _raw_get(client, f"/threads/{thread.id}/messages")
    assert len(raw["data"]) == 2
    for body in raw["data"]:
        assert not {"status", "incomplete_details", "incomplete_at", "completed_at"} & set(body)
        assert body["assistant_id"] == (agent.id if body["role"] == "assistant" else None)
    raw_run = _raw_get(client, f"/threads/{thread.id}/runs/{run.id}")
    assert raw_run["tool_resources"] == {} and "prompt_token_details" in raw_run["usage"]


# ------------------------------------------------------------------------------------------ gateway 429
def test_gateway_429_is_retried_by_the_sdk(client, emulator, wiretap):
    emulator.set_faults("429=1,times=1,match=^POST /threads$")
    thread = client.threads.create()
    assert thread.id in emulator.state.threads and len(emulator.state.threads) == 1, "the 429'd POST did not happen"
    attempts = [status for url, status in wiretap.paths("POST", "/threads?")]
    assert attempts == [429, 200]
    assert requests.get(f"{emulator.url}/_emulator/faults", timeout=10).json()["injected"] == {"429": 1}


# ------------------------------------------------------------------------------------------ api versions
@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_each_api_version_runs_a_small_cycle(emulator, managed_identity, wiretap, api_version):
    with make_client(emulator, wiretap, api_version=api_version) as agents:
        agent = _agent(agents)
        thread = _thread_with(agents, f"hello on {api_version}")
        run = agents.runs.create_and_process(thread_id=thread.id, agent_id=agent.id, polling_interval=0.05)
        assert run.status == "completed"
        assert f"hello on {api_version}" in _assistant_text(agents, thread.id)
    assert wiretap.seen and all(f"api-version={api_version}" in url for _, url, _ in wiretap.seen)
    assert all(status == 200 for _, _, status in wiretap.seen)
    assert managed_identity.requests == [FOUNDRY_RESOURCE]


def test_the_token_endpoint_refuses_strangers(managed_identity, monkeypatch):
    query = {"api-version": "2019-08-01", "resource": FOUNDRY_RESOURCE}
    header = {"X-IDENTITY-HEADER": managed_identity.secret}
    assert requests.get(managed_identity.endpoint, params=query, timeout=10).status_code == 401
    wrong = {"X-IDENTITY-HEADER": "wrong-hdr-cnry7-0000"}
    assert requests.get(managed_identity.endpoint, params=query, headers=wrong, timeout=10).status_code == 401
    old = {**query, "api-version": "2017-09-01"}
    assert requests.get(managed_identity.endpoint, params=old, headers=header, timeout=10).status_code == 400
    assert requests.post(managed_identity.endpoint, params=query, headers=header, timeout=10).status_code == 405
    assert managed_identity.refused == 4 and managed_identity.requests == []
    granted = requests.get(managed_identity.endpoint, params=query, headers=header, timeout=10).json()
    assert set(granted) >= {"access_token", "expires_on", "resource", "token_type"}
    assert granted["resource"] == FOUNDRY_RESOURCE and granted["token_type"] == "Bearer"
    assert int(granted["expires_on"]) > time.time() + 60
    assert managed_identity.requests == [FOUNDRY_RESOURCE] and managed_identity.count == 5

    # azure-identity itself, with the wrong IDENTITY_HEADER: the endpoint says no and no token comes back.
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-hdr-cnry7-0000")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token(FOUNDRY_RESOURCE + "/.default")
    assert managed_identity.refused == 5


def test_a_wrong_token_is_refused(emulator, monkeypatch, wiretap):
    # Without the managed identity endpoint's token the emulator's Foundry dialect answers 401.
    with serve_managed_identity("not-the-emulator-key-cnry7-0000") as other:
        monkeypatch.setenv("IDENTITY_ENDPOINT", other.endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", other.secret)
        monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
        with make_client(emulator, wiretap) as agents, pytest.raises(ClientAuthenticationError):
            agents.threads.create()
    assert other.requests == [FOUNDRY_RESOURCE]
    assert [status for _, _, status in wiretap.seen] == [401]

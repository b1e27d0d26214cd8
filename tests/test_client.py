"""AssistantsClient against the emulator: every operation on all three connection kinds."""

import json
import logging

import pytest

from runs_app.assistants import AssistantsClient, BadRequest, NotFound, errors
from runs_app.assistants.client import REQUEST_TAG
from tests.client_helpers import FakeCredential, connection_settings, wait_for

KINDS = ["azure_openai", "openai", "foundry_agents"]
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


@pytest.fixture(params=KINDS)
def client(request, emulator):
    """The client under test, once for each connection kind (the ``assistant`` it uses is the same object on the
    emulator, whichever dialect reads it)."""
    kind = request.param
    credential = FakeCredential([emulator.api_key]) if kind == "foundry_agents" else None
    return AssistantsClient("default", settings=connection_settings(kind, emulator), credential=credential)


def settle(client, run):
    return wait_for(lambda: (r := client.retrieve_run(run["thread_id"], run["id"]))["status"] in TERMINAL | {
        "requires_action"} and r)


def test_threads_and_messages_are_created_read_tagged_and_paged(client):
    thread = client.create_thread(messages=[{"role": "user", "content": "Hello ünïcode 【4:0†source】"}],
                                  metadata={"team": "ops"})
    assert thread["object"] == "thread" and thread["metadata"] == {"team": "ops"}
    assert client.retrieve_thread(thread["id"])["id"] == thread["id"]
    message = client.create_message(thread["id"], content="second")
    assert message["role"] == "user"
    assert message["metadata"][REQUEST_TAG]  # tagged for the lost-response guard
    texts = [m["content"][0]["text"]["value"] for m in client.iter_messages(thread["id"], order="asc")]
    assert texts == ["Hello ünïcode 【4:0†source】", "second"]
    page = client.list_messages(thread["id"], limit=1)
    assert page["object"] == "list" and len(page["data"]) == 1 and page["has_more"] is True


def test_an_assistant_is_retrieved_iterated_and_listed(client, assistant):
    assert client.retrieve_assistant(assistant["id"])["name"] == assistant["name"] == "ops"
    assert [a["id"] for a in client.iter_assistants()] == [assistant["id"]]
    assert client.list_assistants(limit=5)["data"][0]["id"] == assistant["id"]


def test_create_run_completes_with_steps_and_answer(client, assistant):
    thread = client.create_thread(messages=[{"role": "user", "content": "Say something nice"}])
    run = client.create_run(thread["id"], assistant_id=assistant["id"], temperature=0.5, metadata={"k": "v"},
                            additional_instructions="Be brief.", truncation_strategy={"type": "auto"})
    assert run["status"] == "queued" and run["temperature"] == 0.5
    assert run["metadata"]["k"] == "v" and REQUEST_TAG in run["metadata"]
    final = settle(client, run)
    assert final["status"] == "completed" and final["usage"]["total_tokens"] > 0
    steps = list(client.iter_run_steps(thread["id"], run["id"]))
    assert [s["type"] for s in steps] == ["message_creation"]
    step = client.retrieve_run_step(thread["id"], run["id"], steps[0]["id"])
    assert step["status"] == "completed"
    answer = client.list_messages(thread["id"], run_id=run["id"])["data"]
    assert answer[0]["role"] == "assistant" and answer[0]["content"][0]["text"]["value"]
    assert [r["id"] for r in client.iter_runs(thread["id"])] == [run["id"]]
    assert client.list_runs(thread["id"], limit=1)["data"][0]["id"] == run["id"]


def test_tool_call_then_submit_outputs(client, assistant):
    run = client.create_thread_and_run(
        assistant_id=assistant["id"], thread={"messages": [{"role": "user", "content": "get_weather in Oslo?"}]}
    )
    waiting = settle(client, run)
    assert waiting["status"] == "requires_action"
    call = waiting["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    json.loads(call["function"]["arguments"])
    after = client.submit_tool_outputs(run["thread_id"], run["id"],
                                       tool_outputs=[{"tool_call_id": call["id"], "output": "sunny"}])
    assert after["status"] == "queued"
    assert settle(client, run)["status"] == "completed"


def test_a_run_is_modified_then_cancelled_and_cancelling_it_again_is_a_bad_request(client, assistant):
    thread = client.create_thread(messages=[{"role": "user", "content": "take your time [slow:30]"}])
    run = client.create_run(thread["id"], assistant_id=assistant["id"])
    modified = client.modify_run(thread["id"], run["id"], metadata={"ticket": "OPS-1"})
    assert modified["metadata"] == {"ticket": "OPS-1"}
    assert client.cancel_run(thread["id"], run["id"])["status"] == "cancelling"
    assert settle(client, run)["status"] == "cancelled"
    with pytest.raises(BadRequest, match="Cannot cancel run with status 'cancelled'"):
        client.cancel_run(thread["id"], run["id"])


def test_streamed_run_yields_typed_events(client, assistant):
    thread = client.create_thread(messages=[{"role": "user", "content": "stream please"}])
    with client.create_run_stream(thread["id"], assistant_id=assistant["id"]) as stream:
        events = list(stream)
    names = [e.name for e in events]
    assert names[0] == "thread.run.created" and names[-2:] == ["thread.run.completed", "done"]
    assert events[-1].data is None and events[-1].raw == "[DONE]"
    text = "".join(e.data["delta"]["content"][0]["text"]["value"] for e in events if e.name == "thread.message.delta")
    final = client.list_messages(thread["id"])["data"][0]["content"][0]["text"]["value"]
    assert text == final and text
    assert stream.finished


def test_streamed_thread_and_run_then_streamed_outputs(client, assistant):
    stream = client.create_thread_and_run_stream(
        assistant_id=assistant["id"], thread={"messages": [{"role": "user", "content": "get_weather for Rome"}]}
    )
    events = list(stream)
    names = [e.name for e in events]
    assert names[:2] == ["thread.created", "thread.run.created"]
    assert names[-2:] == ["thread.run.requires_action", "done"]
    run = events[-2].data
    call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    outputs = [{"tool_call_id": call["id"], "output": "22 C"}]
    names = [e.name for e in client.submit_tool_outputs_stream(run["thread_id"], run["id"], tool_outputs=outputs)]
    assert names[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert names[-2:] == ["thread.run.completed", "done"]


def test_create_thread_and_run_with_tool_resources_uses_one_request(client, assistant):
    run = client.create_thread_and_run(assistant_id=assistant["id"], tool_resources={"code_interpreter": {}},
                                       thread={"messages": [{"role": "user", "content": "hi"}]})
    assert run["object"] == "thread.run"


def test_steps_include_file_search_results(remote, client):
    asst = remote.create_assistant(model="gpt-4o", tools=[{"type": "file_search"}])
    thread = client.create_thread(messages=[{"role": "user", "content": "search the files for the policy"}])
    run = settle(client, client.create_run(thread["id"], assistant_id=asst["id"]))
    include = ["step_details.tool_calls[*].file_search.results[*].content"]
    steps = client.list_run_steps(thread["id"], run["id"], include=include, order="asc")["data"]
    search = steps[0]["step_details"]["tool_calls"][0]["file_search"]
    assert search["results"][0]["content"]
    plain = client.retrieve_run_step(thread["id"], run["id"], steps[0]["id"])
    assert "content" not in plain["step_details"]["tool_calls"][0]["file_search"]["results"][0]


def test_pagination_follows_after_until_has_more_is_false(client, assistant):
    thread = client.create_thread(messages=[{"role": "user", "content": f"m{i}"} for i in range(7)])
    assert len(list(client.iter_messages(thread["id"], limit=2))) == 7
    with pytest.raises(TypeError, match="Unknown list parameter"):
        client.list_messages(thread["id"], page=2)


def test_service_errors_carry_message_code_and_request_id(client, assistant):
    with pytest.raises(NotFound) as caught:
        client.retrieve_run("thread_missing", "run_missing")
    error = caught.value
    assert error.status == 404 and error.request_id
    assert "thread_missing" in error.message
    assert str(error).startswith("The service answered 404: ")
    assert error.request_id in str(error)
    run = client.create_thread_and_run(assistant_id=assistant["id"])
    with pytest.raises(BadRequest) as caught:
        client.modify_run(run["thread_id"], run["id"], metadata={f"k{i}": "v" for i in range(17)})
    assert caught.value.param == "metadata"
    assert caught.value.code == "object_above_max_properties"
    assert "too many properties" in str(caught.value)


def test_unknown_run_field_is_refused_before_sending(client):
    with pytest.raises(TypeError, match="unknown field"):
        client.create_run("thread_x", assistant_id="asst_x", temprature=1)


def test_one_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="runs_app.client"):
        client.create_thread()
    line = caplog.records[-1].getMessage()
    assert "POST /threads -> 200 in" in line and "attempt 1" in line and "request id " in line


def test_named_connection_from_settings(emulator, settings):
    settings.RUNS_APP = {"CONNECTIONS": {"east": connection_settings("azure_openai", emulator)},
                         "DEFAULT_CONNECTION": "east"}
    client = AssistantsClient()
    assert client.connection == "east"
    assert client.create_thread()["object"] == "thread"


def test_wrong_key_is_authentication_error_naming_the_setting(emulator):
    conf = {**connection_settings("azure_openai", emulator), "API_KEY": "wrong-key-cnry7-123"}
    with pytest.raises(errors.AuthenticationError) as caught:
        AssistantsClient("east", settings=conf).create_thread()
    assert "RUNS_APP['CONNECTIONS']['east']" in str(caught.value)
    assert "wrong-key-cnry7-123" not in str(caught.value)

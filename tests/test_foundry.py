"""runs_app on Foundry classic agents, as deployed: ``KIND = "foundry_agents"``, ``AUTH = "entra"`` with no credential
configured, so azure-identity's DefaultAzureCredential takes a managed identity token (the ``managed_identity``
fixture) for ``https://ai.azure.com`` — the scenarios ``assistants_emulator/tests/test_foundry_sdk.py`` drives with
Microsoft's SDK, through runs_app's client, services, relay and mirror, and the Foundry wire facts of protocol.md §10.
"""

import time

import pytest
from django.utils import timezone

from runs_app import poller, services
from runs_app.assistants import AssistantsClient, RateLimited
from runs_app.mirror import ordering, upsert
from runs_app.models import ConnectionState, Message, Run, RunStep
from runs_app.web import relay
from tests.client_helpers import wait_for
from tests.conftest import FAST_POLLER, MaskedSettings
from tests.factories import api_client, staff_user, weather_assistant

pytestmark = pytest.mark.django_db

TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


@pytest.fixture
def foundry(settings, emulator, managed_identity):
    settings.RUNS_APP = MaskedSettings({"CONNECTIONS": {"default": {
        "KIND": "foundry_agents", "ENDPOINT": emulator.foundry_endpoint("demo"), "AUTH": "entra"}}, **FAST_POLLER})
    return AssistantsClient()


@pytest.fixture
def agent(foundry):
    """The weather assistant, created through runs_app's own Foundry client (Entra token, project endpoint)."""
    return weather_assistant(foundry)


def polled(run, statuses=TERMINAL):
    return wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in statuses and r)


def remote_run(client, run_id, thread_id, statuses=TERMINAL):
    return wait_for(lambda: (r := client.retrieve_run(thread_id, run_id))["status"] in statuses and r)


def test_client_drives_every_operation_with_one_managed_identity_token(foundry, agent, managed_identity, emulator):
    assert agent["object"] == "assistant"
    thread = foundry.create_thread()
    foundry.create_message(thread["id"], content="what is get_weather in Oslo?")
    run = foundry.create_run(thread["id"], assistant_id=agent["id"])
    assert run["assistant_id"] == agent["id"] and run["tool_resources"] == {}
    waiting = remote_run(foundry, run["id"], thread["id"], {"requires_action"})
    calls = waiting["required_action"]["submit_tool_outputs"]["tool_calls"]
    foundry.submit_tool_outputs(thread["id"], run["id"], tool_outputs=[
        {"tool_call_id": c["id"], "output": "sunny"} for c in calls])
    done = remote_run(foundry, run["id"], thread["id"])
    assert done["status"] == "completed" and done["expires_at"] is None
    assert "prompt_token_details" in done["usage"] and "prompt_tokens_details" not in done["usage"]
    assert [r["id"] for r in foundry.iter_runs(thread["id"])] == [run["id"]]
    steps = list(foundry.iter_run_steps(thread["id"], run["id"], limit=1, order="asc"))  # every page, one step a page
    assert [s["type"] for s in steps] == ["tool_calls", "message_creation"]
    updated = foundry.modify_run(thread["id"], run["id"], metadata={"ticket": "7"})
    assert updated["metadata"] == {"ticket": "7"}
    slow = foundry.create_run(thread["id"], assistant_id=agent["id"],
                              additional_messages=[{"role": "user", "content": "take your time [slow:30]"}])
    remote_run(foundry, slow["id"], thread["id"], {"in_progress"})
    assert foundry.cancel_run(thread["id"], slow["id"])["status"] in ("cancelling", "cancelled")
    assert remote_run(foundry, slow["id"], thread["id"])["status"] == "cancelled"
    listed = foundry.list_threads(limit=100)["data"]
    assert thread["id"] in [t["id"] for t in listed]
    messages = foundry.list_messages(thread["id"])["data"]
    assert messages and all("status" not in m for m in messages)  # Foundry's REST messages carry no status
    # Many requests, many clients (one per poll in the poller): one token from the identity endpoint.
    for _ in range(5):
        AssistantsClient().retrieve_run(thread["id"], run["id"])
    assert managed_identity.requests == ["https://ai.azure.com"]


def test_streams_and_a_streamed_submit_that_opens_with_the_tool_steps_completion(foundry, agent):
    thread = foundry.create_thread(messages=[{"role": "user", "content": "get_weather in Lima"}])
    with foundry.create_run_stream(thread["id"], assistant_id=agent["id"]) as stream:
        events = list(stream)
    names = [e.name for e in events]
    assert names[0] == "thread.run.created" and names[-2:] == ["thread.run.requires_action", "done"]
    assert events[0].data["tool_resources"] == {"code_interpreter": {"file_ids": []}}  # Foundry's stream shape
    run = events[-2].data
    calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    deltas = [e.data for e in events if e.name == "thread.run.step.delta"]
    assert deltas and all(c.get("index") is not None for d in deltas for c in d["delta"]["step_details"]["tool_calls"])
    with foundry.submit_tool_outputs_stream(thread["id"], run["id"], tool_outputs=[
            {"tool_call_id": c["id"], "output": "rainy"} for c in calls]) as stream:
        continued = list(stream)
    assert [e.name for e in continued[:3]] == ["thread.run.step.completed", "thread.run.queued",
                                               "thread.run.in_progress"]
    assert continued[0].data["step_details"]["tool_calls"][0]["function"]["output"] == "rainy"
    assert [e.name for e in continued[-2:]] == ["thread.run.completed", "done"]


def test_the_mirror_of_a_foundry_conversation(foundry, agent, django_user_model):
    run = services.thread_and_run_create(assistant_id=agent["id"], thread={"messages": [
        {"role": "user", "content": "hello foundry"}]})
    run = polled(run)
    assert run.status == "completed" and run.tool_resources == {}
    assert run.raw["usage"]["prompt_token_details"] == {"cached_tokens": 0}
    prompt, answer = Message.objects.filter(thread=run.thread).order_by(*Message.THREAD_ORDER)
    assert (prompt.role, prompt.text, prompt.status) == ("user", "hello foundry", "completed")
    assert answer.run == run and answer.status == "completed" and "hello foundry" in answer.text
    api = api_client(staff_user(django_user_model, "reader", permissions=("view_run",)))
    usage = api.get(f"/api/runs/{run.remote_id}/").json()["usage"]
    assert usage["prompt_token_details"] == {"cached_tokens": 0} and usage["total_tokens"] == run.total_tokens > 0


def test_a_failed_run_reports_zero_usage(foundry, agent):
    run = polled(services.thread_and_run_create(assistant_id=agent["id"], thread={"messages": [
        {"role": "user", "content": "break [fail:server_error]"}]}))
    assert run.status == "failed" and run.last_error_code == "server_error"
    assert (run.prompt_tokens, run.completion_tokens, run.total_tokens) == (0, 0, 0)


def test_an_undeployed_model_fails_inside_the_200_stream_and_the_mirror_says_why(foundry, agent):
    thread = services.thread_create()
    events = b"".join(relay.Relay(services.run_create_stream(
        thread=thread, assistant_id=agent["id"], model="undeployed-gpt-9",
        additional_messages=[{"role": "user", "content": "hi"}])))
    assert b"event: thread.run.failed" in events and events.endswith(b"event: done\ndata: [DONE]\n\n")
    run = Run.objects.get(thread=thread)
    assert run.status == "failed" and run.last_error_code == "invalid_engine_error"
    assert "undeployed-gpt-9" in run.last_error["message"]


def test_a_relayed_submit_continues_the_mirror(foundry, agent):
    thread = services.thread_create(messages=[{"role": "user", "content": "get_weather in Rome"}])
    b"".join(relay.Relay(services.run_create_stream(thread=thread, assistant_id=agent["id"])))
    run = Run.objects.get(thread=thread)
    assert run.status == "requires_action"
    outputs = [{"tool_call_id": c["id"], "output": "warm"} for c in run.pending_tool_calls]
    b"".join(relay.Relay(services.run_submit_tool_outputs_stream(run=run, tool_outputs=outputs)))
    run.refresh_from_db()
    assert run.status == "completed"
    [tool_step] = RunStep.objects.filter(run=run, type="tool_calls")
    assert tool_step.status == "completed" and tool_step.tool_calls[0]["function"]["output"] == "warm"
    assert "warm" in Message.objects.get(run=run, role="assistant").text


def test_expires_at_moves_while_waiting_and_the_expiring_flag_follows(foundry, agent, settings):
    run = polled(services.thread_and_run_create(assistant_id=agent["id"], thread={"messages": [
        {"role": "user", "content": "get_weather in Kyiv"}]}), {"requires_action"})
    # Foundry pushes expires_at far past created_at + 600 s while a run waits for tool outputs.
    assert (run.expires_at - run.created_at).total_seconds() > 600
    settings.RUNS_APP = {**settings.RUNS_APP, "EXPIRING_WITHIN": 10_000.0}
    assert poller.flag_stuck_and_expiring()["expiring"] == 1
    settings.RUNS_APP = {**settings.RUNS_APP, "EXPIRING_WITHIN": 120.0}
    Run.objects.filter(pk=run.pk).update(raw={})  # make the next poll apply the (same) run object again
    run = services.run_poll(run=Run.objects.get(pk=run.pk))
    assert run.expiring_flagged_at is None  # expires_at is well beyond EXPIRING_WITHIN now
    services.run_cancel(run=run)


def test_the_gateways_429_is_waited_out_as_its_retry_after_says(foundry, agent, emulator, settings):
    thread = foundry.create_thread()
    emulator.set_faults(f"429=1,times=1,match=GET /threads/{thread['id']}$")
    started = time.monotonic()
    assert foundry.retrieve_thread(thread["id"])["id"] == thread["id"]
    assert time.monotonic() - started >= 0.9  # Retry-After: 1 (no retry-after-ms from the gateway)
    settings.RUNS_APP = {**settings.RUNS_APP, "RETRY_AFTER_CAP": 0.5}
    emulator.set_faults(f"429=1,times=1,match=GET /threads/{thread['id']}$")
    with pytest.raises(RateLimited) as caught:
        AssistantsClient().retrieve_thread(thread["id"])
    error = caught.value
    assert error.retry_after == 1 and error.status == 429 and error.code == "429"
    assert error.message == "Rate limit is exceeded. Try again in 1 seconds."


def test_a_429_during_polling_pauses_the_connection_for_its_retry_after(foundry, agent, emulator, settings):
    run = services.thread_and_run_create(assistant_id=agent["id"], thread={"messages": [
        {"role": "user", "content": "take your time [slow:30]"}]})
    settings.RUNS_APP = {**settings.RUNS_APP, "RETRY_AFTER_CAP": 0.5}
    emulator.set_faults(f"429=1,times=1,match=GET /threads/[^/]+/runs/{run.remote_id}$")
    Run.objects.filter(pk=run.pk).update(next_poll_at=timezone.now())
    [claimed] = poller.claim_due_runs("lane-token")
    assert poller.poll_claimed(claimed, "lane-token") == "paused"
    state = ConnectionState.objects.get(connection="default")
    assert state.rate_limited == 1 and "Rate limit is exceeded" in state.pause_reason
    assert 0.5 < (state.paused_until - state.last_error_at).total_seconds() <= 1.5
    services.run_cancel(run=Run.objects.get(pk=run.pk))


def test_an_unknown_step_type_is_kept_and_shown(foundry, agent, admin_client):
    from runs_app.models import Source

    run = polled(services.thread_and_run_create(assistant_id=agent["id"], thread={"messages": [
        {"role": "user", "content": "hi"}]}))
    # Newer Foundry recordings show MCP tool steps of type "activities", which OpenAI never had.
    step = {"id": "step_mcp1", "object": "thread.run.step", "type": "activities", "status": "completed",
            "run_id": run.remote_id, "thread_id": run.thread.remote_id, "assistant_id": agent["id"],
            "created_at": int(time.time()), "step_details": {"type": "activities", "activities": [
                {"type": "mcp_list_tools", "server_label": "<b>docs</b>"}]}}
    upsert.apply_step(step, connection="default", seen=ordering.Observation.now(Source.POLL))
    mirrored = RunStep.objects.get(remote_id="step_mcp1")
    assert mirrored.type == "activities" and mirrored.step_details["activities"][0]["server_label"] == "<b>docs</b>"
    page = admin_client.get(f"/admin/runs_app/run/{run.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "activities" in body and "&lt;b&gt;docs&lt;/b&gt;" in body and "<b>docs</b>" not in body

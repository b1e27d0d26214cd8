"""The REST API against the emulator: every endpoint's happy path, auth (401/403), bodies (400 naming the
field), unknown ids (404), wrong states (409), the service's errors passed through, and an end-to-end stream."""

import base64
import json
import re

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from runs_app import services
from runs_app.models import Message, OperatorAction, Run, RunStep
from tests.client_helpers import wait_for
from tests.factories import non_staff_user, password_for, settled, staff_user, waiting_run

pytestmark = pytest.mark.django_db

FRAME = re.compile(rb"event: ([^\n]+)\ndata: ([^\n]*)\n\n")
ACTION_PERMISSIONS = ["add_thread", "add_run", "cancel_run", "submit_tool_outputs", "change_run_metadata",
                      "refresh_run"]


def frames(response):
    body = b"".join(response.streaming_content)
    return [(name.decode(), data.decode()) for name, data in FRAME.findall(body)]


def assert_error(response, status, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "code", "param", "request_id"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


# --- auth -------------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("get", "/api/threads/"), ("post", "/api/threads/"), ("post", "/api/threads/import/"),
    ("get", "/api/threads/thread_x/"), ("get", "/api/threads/thread_x/messages/"),
    ("get", "/api/threads/thread_x/runs/"), ("post", "/api/threads/thread_x/runs/"), ("post", "/api/threads/runs/"),
    ("get", "/api/runs/"), ("get", "/api/runs/run_x/"), ("patch", "/api/runs/run_x/"),
    ("post", "/api/runs/run_x/cancel/"), ("post", "/api/runs/run_x/submit_tool_outputs/"),
    ("post", "/api/runs/run_x/refresh/"), ("get", "/api/runs/run_x/steps/"), ("get", "/api/runs/run_x/steps/step_x/"),
    ("get", "/api/runs/run_x/events/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_unauthenticated_is_401_with_a_challenge(method, path):
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert_error(response, 401)
    # The token scheme: a browser never answers it with a password prompt it would remember (tests/test_hardening).
    assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_non_staff_is_403(django_user_model, method, path):
    client = APIClient()
    client.force_authenticate(non_staff_user(django_user_model, "visitor"))
    assert_error(getattr(client, method)(path, {}, format="json"), 403)


@pytest.mark.parametrize(("method", "path", "permission"), [
    ("post", "/api/threads/", "runs_app.add_thread"), ("post", "/api/threads/import/", "runs_app.add_thread"),
    ("post", "/api/threads/runs/", "runs_app.add_run"), ("patch", "/api/runs/run_x/", "runs_app.change_run_metadata"),
    ("post", "/api/runs/run_x/cancel/", "runs_app.cancel_run"),
    ("post", "/api/runs/run_x/submit_tool_outputs/", "runs_app.submit_tool_outputs"),
    ("post", "/api/runs/run_x/refresh/", "runs_app.refresh_run"),
])
def test_actions_need_the_admins_model_permissions(django_user_model, method, path, permission):
    codename = permission.split(".")[1]
    client = APIClient()
    client.force_authenticate(staff_user(django_user_model, "reader",
                                         permissions=[p for p in ACTION_PERMISSIONS if p != codename]))
    error = assert_error(getattr(client, method)(path, {}, format="json"), 403)
    assert permission in error["message"]
    assert_error(client.get("/api/runs/"), 403)  # reading needs the view permission (tests/test_hardening.py)


def test_basic_and_token_authentication(operator):
    client = APIClient()
    basic = base64.b64encode(f"operator:{password_for('operator')}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION="Basic " + basic)
    assert client.get("/api/runs/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"operator:wrong").decode())
    assert_error(client.get("/api/runs/"), 401)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
    assert client.get("/api/runs/").status_code == 200


def test_a_logged_in_session_authenticates_to_the_api(client, operator):
    client.force_login(operator)
    assert client.get("/api/threads/").status_code == 200


def test_permission_policy_is_configurable(settings, api):
    settings.RUNS_APP = {**settings.RUNS_APP, "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"]}
    assert APIClient().get("/api/runs/").status_code == 401
    assert api.get("/api/runs/").status_code == 200


# --- threads ----------------------------------------------------------------------------------------------

def test_create_thread_list_and_retrieve(mirror_settings, api, operator):
    response = api.post("/api/threads/", {"messages": [{"role": "user", "content": "hello"}],
                                          "metadata": {"team": "ops"}}, format="json")
    assert response.status_code == 201, response.content
    thread = response.json()
    assert thread["id"].startswith("thread_") and thread["object"] == "thread"
    assert isinstance(thread["created_at"], int) and thread["metadata"] == {"team": "ops"}
    assert thread["mirror"]["connection"] == "default" and thread["mirror"]["synced_at"]
    assert OperatorAction.objects.get(action="create_thread").user == operator
    listed = api.get("/api/threads/").json()
    assert listed["object"] == "list" and [t["id"] for t in listed["data"]] == [thread["id"]]
    assert api.get(f"/api/threads/{thread['id']}/").json()["id"] == thread["id"]
    services.thread_import(thread_id=thread["id"])  # the messages land in the mirror
    messages = api.get(f"/api/threads/{thread['id']}/messages/").json()["data"]
    assert [(m["object"], m["role"], m["content"][0]["text"]["value"]) for m in messages] == [
        ("thread.message", "user", "hello")]


def test_create_thread_connection_parameter(mirror_settings, api):
    assert_error(api.post("/api/threads/?connection=nowhere", {}, format="json"), 400, "connection")
    assert api.post("/api/threads/?connection=default", {}, format="json").status_code == 201


@pytest.mark.parametrize(("body", "param"), [
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": 5}}, "metadata.k"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": "hi"}, "messages"),
])
def test_create_thread_invalid_bodies_name_the_field(mirror_settings, api, body, param):
    assert_error(api.post("/api/threads/", body, format="json"), 400, param)


def test_import_thread_mirrors_its_runs_and_refuses_a_bad_id_or_connection(mirror_settings, api, remote, assistant):
    thread = remote.create_thread(messages=[{"role": "user", "content": "hi"}])
    run = remote.create_run(thread["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(thread["id"], run["id"])["status"] == "completed")
    response = api.post("/api/threads/import/", {"thread_id": thread["id"]}, format="json")
    assert response.status_code == 200 and response.json()["id"] == thread["id"]
    assert [r["id"] for r in api.get(f"/api/threads/{thread['id']}/runs/").json()["data"]] == [run["id"]]
    assert_error(api.post("/api/threads/import/", {}, format="json"), 400, "thread_id")
    assert_error(api.post("/api/threads/import/", {"thread_id": "../x"}, format="json"), 400, "thread_id")
    assert_error(api.post("/api/threads/import/?connection=nope", {"thread_id": "thread_x"}, format="json"), 400,
                 "connection")


def test_service_errors_pass_through_with_status_and_request_id(mirror_settings, api):
    error = assert_error(api.post("/api/threads/import/", {"thread_id": "thread_missing"}, format="json"), 404)
    assert error["request_id"] and "thread_missing" in error["message"]


def test_service_5xx_is_502(mirror_settings, settings, emulator, api):
    settings.RUNS_APP = {**mirror_settings, "MAX_RETRIES": 0}
    emulator.set_faults({"5xx": 1.0})
    error = assert_error(api.post("/api/threads/", {}, format="json"), 502)
    assert error["request_id"]


@pytest.mark.parametrize("path", ["/api/threads/thread_nope/", "/api/threads/thread_nope/messages/",
                                  "/api/threads/thread_nope/runs/"])
def test_unknown_thread_is_404(api, path):
    assert_error(api.get(path), 404)


# --- runs -------------------------------------------------------------------------------------------------

def test_create_run_on_a_thread(mirror_settings, api, assistant, operator):
    thread = services.thread_create(messages=[{"role": "user", "content": "hi"}])
    response = api.post(f"/api/threads/{thread.remote_id}/runs/", {
        "assistant_id": assistant["id"], "metadata": {"ticket": "7"}, "temperature": 0.5,
        "additional_instructions": "be brief", "max_completion_tokens": 500}, format="json")
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["object"] == "thread.run" and run["thread_id"] == thread.remote_id and run["status"] == "queued"
    assert run["metadata"]["ticket"] == "7" and run["temperature"] == 0.5 and isinstance(run["created_at"], int)
    assert set(run["mirror"]) >= {"connection", "synced_at", "lag_seconds", "stuck", "expiring"}
    assert OperatorAction.objects.get(action="create_run").user == operator
    listed = api.get(f"/api/threads/{thread.remote_id}/runs/").json()["data"]
    assert [r["id"] for r in listed] == [run["id"]]
    assert api.get(f"/api/runs/{run['id']}/").json()["id"] == run["id"]


@pytest.mark.parametrize(("body", "param"), [
    ({}, "assistant_id"),
    ({"assistant_id": "asst_x", "temperature": 3}, "temperature"),
    ({"assistant_id": "asst_x", "max_prompt_tokens": 0}, "max_prompt_tokens"),
    ({"assistant_id": "asst_x", "tools": "all"}, "tools"),
    ({"assistant_id": "asst_x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
])
def test_create_run_invalid_bodies_name_the_field(mirror_settings, api, body, param):
    thread = services.thread_create()
    assert_error(api.post(f"/api/threads/{thread.remote_id}/runs/", body, format="json"), 400, param)
    assert not Run.objects.exists()


def test_create_run_unknown_thread_and_unknown_assistant(mirror_settings, api):
    assert_error(api.post("/api/threads/thread_nope/runs/", {"assistant_id": "asst_x"}, format="json"), 404)
    thread = services.thread_create()
    error = assert_error(api.post(f"/api/threads/{thread.remote_id}/runs/", {"assistant_id": "asst_nope"},
                                  format="json"), 404)
    assert error["request_id"]  # the service's own 404


def test_create_thread_and_run(mirror_settings, api, assistant):
    response = api.post("/api/threads/runs/", {"assistant_id": assistant["id"], "thread": {
        "messages": [{"role": "user", "content": "hello"}], "metadata": {"a": "b"}}}, format="json")
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["thread_id"].startswith("thread_") and Run.objects.filter(remote_id=run["id"]).exists()
    assert_error(api.post("/api/threads/runs/?connection=nope", {"assistant_id": assistant["id"]}, format="json"),
                 400, "connection")
    assert_error(api.post("/api/threads/runs/", {"assistant_id": assistant["id"], "thread": {
        "metadata": {"k" * 65: "v"}}}, format="json"), 400, "thread.metadata")


def test_run_list_filters_ordering_and_cursor_pagination(mirror_settings, api, assistant):
    first = services.thread_and_run_create(assistant_id=assistant["id"], metadata={"team": "a"},
                                           thread={"messages": [{"role": "user", "content": "hi"}]})
    second = waiting_run(assistant)
    services.run_modify_metadata(run=second, metadata={"team": "b"})
    settled(first)

    def ids(query):
        response = api.get(f"/api/runs/?{query}")
        assert response.status_code == 200, response.content
        return {r["id"] for r in response.json()["data"]}

    assert ids("") == {first.remote_id, second.remote_id}
    assert ids("status=requires_action") == ids("needs_action=true") == {second.remote_id}
    assert ids("status=completed&status=requires_action") == {first.remote_id, second.remote_id}
    assert ids("needs_action=false") == {first.remote_id}
    assert ids("metadata[team]=a") == {first.remote_id} and ids("metadata[team]=c") == set()
    assert ids(f"thread_id={second.thread.remote_id}") == {second.remote_id}
    assert ids(f"assistant_id={assistant['id']}&connection=default&model=gpt-4o") == {first.remote_id,
                                                                                      second.remote_id}
    assert ids("created_after=2000-01-01T00:00:00Z") == ids("created_after=946684800") == ids("")
    assert ids("created_before=946684800") == set() and ids("stuck=true") == set()
    assert_error(api.get("/api/runs/?created_after=yesterday"), 400, "created_after")
    assert_error(api.get("/api/runs/?status=sleeping"), 400, "status")
    assert_error(api.get("/api/runs/?cursor=nonsense"), 404)
    page = api.get("/api/runs/?limit=1&ordering=created_at").json()
    assert page["has_more"] and len(page["data"]) == 1 and page["first_id"] == page["last_id"]
    rest = api.get(page["next"]).json()
    assert {page["data"][0]["id"], rest["data"][0]["id"]} == {first.remote_id, second.remote_id}
    assert not rest["has_more"]


def test_patching_metadata_is_audited_and_a_bad_body_names_the_field(mirror_settings, api, assistant, operator):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "hi"}]})
    response = api.patch(f"/api/runs/{run.remote_id}/", {"metadata": {"owner": "ops"}}, format="json")
    assert response.status_code == 200 and response.json()["metadata"] == {"owner": "ops"}
    assert OperatorAction.objects.get(action="modify_metadata").user == operator
    assert_error(api.patch(f"/api/runs/{run.remote_id}/", {}, format="json"), 400, "metadata")
    assert_error(api.patch(f"/api/runs/{run.remote_id}/", {"metadata": {"k": "v" * 513}}, format="json"), 400,
                 "metadata")
    assert_error(api.patch("/api/runs/run_nope/", {"metadata": {}}, format="json"), 404)


def test_cancel_answers_cancelling_is_audited_and_is_refused_once_cancelling_or_cancelled(
        mirror_settings, api, assistant, operator):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "slowly [slow:30]"}]})
    response = api.post(f"/api/runs/{run.remote_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    assert OperatorAction.objects.get(action="cancel_run").user == operator
    assert_error(api.post(f"/api/runs/{run.remote_id}/cancel/"), 409, "run_id")  # already cancelling
    settled(run)
    error = assert_error(api.post(f"/api/runs/{run.remote_id}/cancel/"), 409, "run_id")
    assert "already cancelled" in error["message"]
    assert_error(api.post("/api/runs/run_nope/cancel/"), 404)


def test_cancel_when_the_mirror_is_stale_passes_the_services_400_through(mirror_settings, api, assistant, remote):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "quick"}]})
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    error = assert_error(api.post(f"/api/runs/{run.remote_id}/cancel/"), 400)
    assert "Cannot cancel run" in error["message"] and error["request_id"]


def test_submit_tool_outputs_checks_the_calls_is_audited_and_is_refused_once_answered(
        mirror_settings, api, assistant, operator):
    run = waiting_run(assistant)
    call_id = run.pending_tool_calls[0]["id"]
    url = f"/api/runs/{run.remote_id}/submit_tool_outputs/"
    assert_error(api.post(url, {"tool_outputs": [{"tool_call_id": "call_nope", "output": "x"}]}, format="json"),
                 400, "tool_outputs")
    assert_error(api.post(url, {"tool_outputs": []}, format="json"), 400, "tool_outputs")
    assert_error(api.post(url, {"tool_outputs": [{"tool_call_id": call_id}]}, format="json"), 400,
                 "tool_outputs[0].output")
    response = api.post(url, {"tool_outputs": [{"tool_call_id": call_id, "output": "sunny"}]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "queued" and call_id in response.json()["mirror"]["answered_call_ids"]
    assert OperatorAction.objects.get(action="submit_tool_outputs").user == operator
    settled(run)
    assert_error(api.post(url, {"tool_outputs": [{"tool_call_id": call_id, "output": "x"}]}, format="json"), 409,
                 "run_id")
    assert_error(api.post("/api/runs/run_nope/submit_tool_outputs/", {"tool_outputs": []}, format="json"), 404)


def test_refresh_returns_the_services_state_with_usage_and_is_audited(
        mirror_settings, api, assistant, remote, operator):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "hi"}]})
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    response = api.post(f"/api/runs/{run.remote_id}/refresh/")
    assert response.status_code == 200 and response.json()["status"] == "completed"
    assert response.json()["usage"]["total_tokens"] > 0 and response.json()["mirror"]["lag_seconds"] is None
    assert OperatorAction.objects.get(action="refresh_run").user == operator
    assert_error(api.post("/api/runs/run_nope/refresh/"), 404)


def test_a_runs_steps_and_timeline_are_served_and_unknown_ids_are_404(mirror_settings, api, assistant, operator):
    run = waiting_run(assistant, user=operator)
    steps = api.get(f"/api/runs/{run.remote_id}/steps/").json()["data"]
    assert [(s["object"], s["type"], s["run_id"], s["thread_id"]) for s in steps] == [
        ("thread.run.step", "tool_calls", run.remote_id, run.thread.remote_id)]
    step = api.get(f"/api/runs/{run.remote_id}/steps/{steps[0]['id']}/").json()
    assert step["step_details"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert_error(api.get(f"/api/runs/{run.remote_id}/steps/step_nope/"), 404)
    assert_error(api.get("/api/runs/run_nope/steps/"), 404)
    events = api.get(f"/api/runs/{run.remote_id}/events/").json()["data"]
    statuses = [e["to_status"] for e in events if e["kind"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "requires_action"
    action = next(e for e in events if e["kind"] == "action")
    assert action["user"] == "operator" and action["action"]["action"] == "create_thread_and_run"
    assert_error(api.get("/api/runs/run_nope/events/"), 404)
    assert_error(api.get("/api/runs/run_nope/"), 404)


# --- streaming, end to end -----------------------------------------------------------------------------------

def test_stream_create_thread_and_run_then_submit_tool_outputs_end_to_end(mirror_settings, api, assistant,
                                                                          operator):
    response = api.post("/api/threads/runs/", {"assistant_id": assistant["id"], "stream": True, "thread": {
        "messages": [{"role": "user", "content": "get_weather in Oslo"}]}}, format="json",
        HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = frames(response)
    names = [name for name, _ in events]
    assert names[:2] == ["thread.created", "thread.run.created"] and names[-2:] == [
        "thread.run.requires_action", "done"]
    created_thread = json.loads(events[0][1])  # the split create's thread.created carries the thread object
    assert created_thread["object"] == "thread" and created_thread["id"] == json.loads(events[1][1])["thread_id"]
    waiting = json.loads(events[-2][1])
    run_id, thread_id = waiting["id"], waiting["thread_id"]
    mirrored = api.get(f"/api/runs/{run_id}/").json()
    assert mirrored["status"] == "requires_action" and mirrored["required_action"] == waiting["required_action"]
    assert OperatorAction.objects.get(action="create_thread_and_run").user == operator

    calls = waiting["required_action"]["submit_tool_outputs"]["tool_calls"]
    response = api.post(f"/api/runs/{run_id}/submit_tool_outputs/", {"stream": True, "tool_outputs": [
        {"tool_call_id": c["id"], "output": "sunny, 21 C"} for c in calls]}, format="json")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = frames(response)
    assert [name for name, _ in events][-2:] == ["thread.run.completed", "done"]
    last_run = json.loads(events[-2][1])
    last_message = json.loads([data for name, data in events if name == "thread.message.completed"][-1])
    last_steps = {}
    for name, data in events:
        if name.startswith("thread.run.step.") and name != "thread.run.step.delta":
            step = json.loads(data)
            last_steps[step["id"]] = step

    run = api.get(f"/api/runs/{run_id}/").json()
    assert run["status"] == "completed" == last_run["status"]
    assert run["usage"]["total_tokens"] == last_run["usage"]["total_tokens"]
    assert run["completed_at"] == last_run["completed_at"] and run["required_action"] is None
    steps = {s["id"]: s for s in api.get(f"/api/runs/{run_id}/steps/").json()["data"]}
    for step_id, step in last_steps.items():
        assert steps[step_id]["status"] == step["status"] and steps[step_id]["type"] == step["type"]
    tool_step = next(s for s in steps.values() if s["type"] == "tool_calls")
    assert tool_step["step_details"]["tool_calls"][0]["function"]["output"] == "sunny, 21 C"
    messages = api.get(f"/api/threads/{thread_id}/messages/").json()["data"]
    answer = next(m for m in messages if m["id"] == last_message["id"])
    assert answer["content"] == last_message["content"] and answer["status"] == "completed"
    assert "sunny, 21 C" in Message.objects.get(remote_id=last_message["id"]).text
    assert RunStep.objects.filter(run__remote_id=run_id).count() == len(steps)
    assert OperatorAction.objects.filter(action="submit_tool_outputs", user=operator, succeeded=True).exists()


def test_stream_create_run_on_a_thread(mirror_settings, api, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "hello"}])
    response = api.post(f"/api/threads/{thread.remote_id}/runs/", {"assistant_id": assistant["id"],
                                                                   "stream": True}, format="json")
    names = [name for name, _ in frames(response)]
    assert names[0] == "thread.run.created" and names[-2:] == ["thread.run.completed", "done"]
    assert Run.objects.get(thread=thread).status == "completed"


def test_stream_refusals_come_before_the_first_byte(mirror_settings, api, assistant):
    thread = services.thread_create()
    assert_error(api.post(f"/api/threads/{thread.remote_id}/runs/", {"assistant_id": assistant["id"], "stream": True,
                                                                     "metadata": {"k" * 65: "v"}}, format="json"),
                 400, "metadata")
    error = assert_error(api.post("/api/threads/runs/", {"assistant_id": "asst_nope", "stream": True},
                                  format="json"), 404)
    assert error["request_id"]


def test_service_rate_limit_is_429_with_retry_after(mirror_settings, settings, emulator, api):
    settings.RUNS_APP = {**mirror_settings, "MAX_RETRIES": 0}
    emulator.set_faults({"429": 1.0})
    response = api.post("/api/threads/", {}, format="json")
    error = assert_error(response, 429)
    assert error["request_id"] and response["Retry-After"] == "1"


# --- schema and docs ----------------------------------------------------------------------------------------

def test_schema_swagger_and_redoc_are_served_to_staff(api):
    schema = api.get("/api/schema/?format=json").json()
    assert schema["openapi"].startswith("3.") and len(schema["paths"]) == 15
    assert "text/event-stream" in schema["paths"]["/api/threads/runs/"]["post"]["responses"]["200"]["content"]
    assert api.get("/api/docs/").status_code == 200
    assert api.get("/api/redoc/")["Location"] == "/api/docs/"  # ReDoc loads its logo from a CDN: not served
    assert APIClient().get("/api/schema/").status_code == 401


def test_schema_generates_without_warnings(tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))

"""Whole conversations: every message of a tracked thread reaches the mirror (the prompt given with the thread, the
ones added before a run or by another application, the runs' answers), in the thread's order, incrementally; the
API adds and reads messages; a refused run start leaves nothing behind; thread discovery follows new threads."""

import logging
import re
import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from runs_app import poller, services
from runs_app.assistants import AssistantsClient
from runs_app.mirror import ordering, upsert
from runs_app.models import ConnectionState, Message, OperatorAction, Run, Thread
from runs_app.ops.sync_status import sync_status
from tests.client_helpers import wait_for
from tests.factories import api_client, finished_by_the_poller, staff_user

pytestmark = pytest.mark.django_db

TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


class RequestLog(logging.Handler):
    """The requests runs_app's services made, as (method, path): the client logs one line per attempt (the tests'
    own ``remote`` client, standing for another application, is left out)."""

    LINE = re.compile(r"^(?!remote )\S+ (GET|POST|DELETE) (\S+) -> ")

    def __init__(self):
        super().__init__(logging.INFO)
        self.calls: list = []

    def emit(self, record):
        match = self.LINE.match(record.getMessage())
        if match:
            self.calls.append(match.groups())


@pytest.fixture
def counted():
    handler = RequestLog()
    logger = logging.getLogger("runs_app.client")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield handler.calls
    logger.removeHandler(handler)
    logger.setLevel(level)


def texts(thread):
    return [(m.role, m.text) for m in Message.objects.filter(thread=thread).order_by(*Message.THREAD_ORDER)]


def remote_texts(remote, thread_id):
    return [(m["role"], "\n".join(b["text"]["value"] for b in m["content"] if b["type"] == "text"))
            for m in remote.iter_messages(thread_id, order="asc")]


# --- the sync -------------------------------------------------------------------------------------------------

def test_every_message_of_the_thread_whoever_wrote_it_in_the_threads_order(mirror_settings, assistant, remote):
    thread = services.thread_create(messages=[{"role": "user", "content": "first"},
                                              {"role": "assistant", "content": "second"}])
    assert texts(thread) == [("user", "first"), ("assistant", "second")]  # mirrored right after the create
    remote.create_message(thread.remote_id, content="third, from another application")
    run = services.run_create(thread=thread, assistant_id=assistant["id"],
                              additional_messages=[{"role": "user", "content": "fourth [words:5]"}])
    run = wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in TERMINAL and r)
    assert run.status == "completed"
    # All in the same second on the emulator: the place in the thread's listing orders them.
    assert texts(thread) == remote_texts(remote, thread.remote_id)
    assert [role for role, _ in texts(thread)] == ["user", "assistant", "user", "user", "assistant"]
    assert Message.objects.get(thread=thread, role="assistant", run=run).text.count(" ") == 4


@pytest.mark.slow  # an answer written over 2 real seconds
def test_one_request_when_nothing_is_new_and_the_cursor_stops_at_a_message_still_written(
        mirror_settings, assistant, remote, counted):
    thread = services.thread_create(messages=[{"role": "user", "content": "a long answer [slow:2]"}])
    run = services.run_create(thread=thread, assistant_id=assistant["id"])
    wait_for(lambda: any(m["role"] == "assistant" for m in remote.iter_messages(thread.remote_id)))
    Run.objects.filter(pk=run.pk).update(status="in_progress")
    counted.clear()
    services.thread_messages_sync(thread=thread)
    writing = Message.objects.get(thread=thread, role="assistant")
    # Azure REST messages carry no status: one of a run still going is taken as still being written.
    assert writing.status == "in_progress"
    thread.refresh_from_db()
    assert thread.messages_cursor == Message.objects.get(thread=thread, role="user").remote_id
    assert counted == [("GET", f"/threads/{thread.remote_id}/messages")]
    run = wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in TERMINAL and r)
    writing.refresh_from_db()
    assert writing.status == "completed" and writing.text == remote_texts(remote, thread.remote_id)[-1][1]
    thread.refresh_from_db()
    assert thread.messages_cursor == writing.remote_id
    counted.clear()
    assert services.thread_messages_sync(thread=thread) == 0
    assert counted == [("GET", f"/threads/{thread.remote_id}/messages")]


def test_a_deleted_cursor_message_does_not_hide_the_next_answer(mirror_settings, remote, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    thread.refresh_from_db()
    cursor = thread.messages_cursor
    remote._request("DELETE", f"/threads/{thread.remote_id}/messages/{cursor}")
    # The emulator, like a service may, answers an empty page after a deleted message: the run's steps name the
    # message it wrote, which the listing did not bring, so the thread is listed again from the start.
    run = services.run_create(thread=thread, assistant_id=assistant["id"],
                              additional_messages=[{"role": "user", "content": "three"}])
    run = wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).status in TERMINAL and r)
    assert Message.objects.filter(run=run, role="assistant").exists()
    assert [t for _, t in texts(thread)][-2] == "three"


def test_import_brings_the_whole_conversation(mirror_settings, assistant, remote):
    outside = remote.create_thread(messages=[{"role": "user", "content": "from elsewhere"}])
    made = remote.create_run(outside["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(outside["id"], made["id"])["status"] == "completed")
    remote.create_message(outside["id"], content="a follow-up nobody answered yet")
    thread = services.thread_import(thread_id=outside["id"])
    assert texts(thread) == remote_texts(remote, outside["id"])
    assert [role for role, _ in texts(thread)] == ["user", "assistant", "user"]


def test_runs_sync_messages_completes_an_old_mirror(mirror_settings, assistant, remote, capsys):
    thread = services.thread_create(messages=[{"role": "user", "content": "the prompt"}])
    run = services.run_create(thread=thread, assistant_id=assistant["id"])
    wait_for(lambda: services.run_poll(run=Run.objects.get(pk=run.pk)).status == "completed")
    # A mirror from before whole conversations: only the run's answer, no cursor.
    Message.objects.filter(thread=thread, role="user").delete()
    Thread.objects.filter(pk=thread.pk).update(messages_cursor="")
    call_command("runs_sync_messages")
    assert texts(thread) == remote_texts(remote, thread.remote_id)
    assert f"{thread.remote_id}: 1 new message" in capsys.readouterr().out
    with pytest.raises(CommandError, match="1 thread could not be synced"):
        call_command("runs_sync_messages", "thread_unknown")


# --- the API --------------------------------------------------------------------------------------------------

def test_api_adds_a_message_audited_and_reads_it_back(mirror_settings, api, operator, remote):
    thread = services.thread_create()
    body = {"role": "user", "content": [{"type": "text", "text": "hello"},
                                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
            "metadata": {"ticket": "42"}}
    response = api.post(f"/api/threads/{thread.remote_id}/messages/", body, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["object"] == "thread.message" and created["role"] == "user"
    assert created["content"][0]["text"]["value"] == "hello" and created["metadata"]["ticket"] == "42"
    [on_service] = list(remote.iter_messages(thread.remote_id))
    assert on_service["id"] == created["id"]
    action = OperatorAction.objects.get(action="create_message", user=operator)
    assert action.succeeded and action.thread == thread and action.sent["content"][0]["text"] == "hello"
    detail = api.get(f"/api/threads/{thread.remote_id}/messages/{created['id']}/")
    assert detail.status_code == 200 and detail.json()["id"] == created["id"]
    assert api.get(f"/api/threads/{thread.remote_id}/messages/msg_unknown/").status_code == 404


def test_api_lists_messages_by_run_role_and_order(mirror_settings, api, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "hi"}])
    run = services.run_create(thread=thread, assistant_id=assistant["id"])
    wait_for(lambda: services.run_poll(run=Run.objects.get(pk=run.pk)).status == "completed")
    url = f"/api/threads/{thread.remote_id}/messages/"
    everything = api.get(url).json()["data"]
    assert [m["role"] for m in everything] == ["user", "assistant"]
    assert [m["role"] for m in api.get(url, {"order": "desc"}).json()["data"]] == ["assistant", "user"]
    assert [m["run_id"] for m in api.get(url, {"run_id": run.remote_id}).json()["data"]] == [run.remote_id]
    assert [m["role"] for m in api.get(url, {"role": "user"}).json()["data"]] == ["user"]
    for query, param in [({"order": "sideways"}, "order"), ({"role": "system"}, "role")]:
        response = api.get(url, query)
        assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"role": "user", "content": ""}, "content"),
    ({"role": "user", "content": " \n\t "}, "content"),
    ({"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "  "}]}, "content[1].text"),
    ({"role": "user", "content": []}, "content"),
    ({"role": "user", "content": [{"type": "video", "video": {}}]}, "content[0].type"),
    ({"role": "user", "content": [{"type": "image_file", "image_file": {}}]}, "content[0].image_file.file_id"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
     "content[0].image_url.url"),
    ({"role": "user", "content": "x" * 256_001}, "content"),
    ({"role": "user", "content": [{"type": "text", "text": "y" * 200_000}, {"type": "text", "text": "z" * 60_000}]},
     "content"),
    ({"role": "system", "content": "hi"}, "role"),
    ({"content": "hi"}, "role"),
    ({"role": "user"}, "content"),
    ({"role": "user", "content": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"role": "user", "content": "hi", "metadata": {"k" * 65: "v"}}, "metadata"),
    ({"role": "user", "content": "hi", "metadata": {"k": "v" * 513}}, "metadata"),
    ({"role": "user", "content": "hi", "metadata": {"k": 1}}, "metadata.k"),
    ({"role": "user", "content": "hi", "attachments": [{"tools": []}]}, "attachments[0].file_id"),
    ({"role": "user", "content": "hi", "attachments": [{"file_id": "f", "tools": [{"type": "browser"}]}]},
     "attachments[0].tools[0].type"),
    ({"role": "user", "content": "hi", "name": "bob"}, "name"),
])
def test_api_refuses_a_bad_message_naming_the_field_and_sends_nothing(mirror_settings, api, remote, body, param,
                                                                      counted):
    thread = services.thread_create()
    counted.clear()
    started = time.monotonic()
    response = api.post(f"/api/threads/{thread.remote_id}/messages/", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param, response.json()
    assert time.monotonic() - started < 2
    assert counted == [] and list(remote.iter_messages(thread.remote_id)) == []
    assert not Message.objects.filter(thread=thread).exists()


def test_adding_a_message_needs_its_own_permission(mirror_settings, django_user_model, remote):
    thread = services.thread_create()
    client = api_client(staff_user(django_user_model, "runner", permissions=["add_run", "add_thread"]))
    response = client.post(f"/api/threads/{thread.remote_id}/messages/", {"role": "user", "content": "hi"},
                           format="json")
    assert response.status_code == 403 and "runs_app.add_message" in response.json()["error"]["message"]
    assert list(remote.iter_messages(thread.remote_id)) == []


def test_message_endpoints_are_in_the_schema(mirror_settings, api):
    schema = api.get("/api/schema/?format=json").json()
    messages = schema["paths"]["/api/threads/{thread_id}/messages/"]
    assert {"get", "post"} <= set(messages)
    assert {p["name"] for p in messages["get"]["parameters"]} >= {"thread_id", "order", "run_id", "role"}
    assert "/api/threads/{thread_id}/messages/{message_id}/" in schema["paths"]


# --- no orphan messages ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_run_start_through_the_api_leaves_no_message(mirror_settings, api, remote, assistant, stream):
    thread = services.thread_create()
    body = {"assistant_id": "asst_unknown", "stream": stream,
            "additional_messages": [{"role": "user", "content": "never sent alone"}]}
    response = api.post(f"/api/threads/{thread.remote_id}/runs/", body, format="json")
    assert response.status_code == 404, response.content
    busy = services.run_create(thread=thread, assistant_id=assistant["id"],
                               additional_messages=[{"role": "user", "content": "hold on [slow:30]"}])
    body["assistant_id"] = assistant["id"]
    response = api.post(f"/api/threads/{thread.remote_id}/runs/", body, format="json")
    assert response.status_code == 409 and busy.remote_id in response.json()["error"]["message"]
    assert "never sent alone" not in [t for _, t in remote_texts(remote, thread.remote_id)]
    services.run_cancel(run=busy)


def test_a_bad_additional_message_is_refused_before_the_service(mirror_settings, api, assistant, counted):
    thread = services.thread_create()
    counted.clear()
    response = api.post(f"/api/threads/{thread.remote_id}/runs/", {
        "assistant_id": assistant["id"], "additional_messages": [{"role": "user", "content": "   "}]}, format="json")
    assert response.status_code == 400 and response.json()["error"]["param"] == "additional_messages[0].content"
    assert counted == []


# --- thread discovery -----------------------------------------------------------------------------------------

def discovering(settings, emulator, mirror_settings, **extra):
    connection = {"KIND": "foundry_agents", "ENDPOINT": emulator.foundry_endpoint("demo"), "AUTH": "api_key",
                  "API_KEY": emulator.api_key, **extra}
    settings.RUNS_APP = {**mirror_settings, "CONNECTIONS": {"default": connection}}
    return AssistantsClient("default")


def test_discovery_follows_new_threads_with_their_messages_and_one_request_when_none(
        settings, emulator, mirror_settings, counted):
    client = discovering(settings, emulator, mirror_settings)
    old = client.create_thread(messages=[{"role": "user", "content": "older"}])
    assert poller.discover_new_threads() == 1  # the first listing takes what is within DISCOVER_THREADS_SINCE
    made = [client.create_thread(messages=[{"role": "user", "content": f"hello {i}"}]) for i in range(3)]
    ConnectionState.objects.update(next_thread_discovery_at=None)
    counted.clear()
    assert poller.discover_new_threads() == 3
    for payload in [old, *made]:
        thread = Thread.objects.get(remote_id=payload["id"])
        assert thread.tracked and texts(thread)[0][0] == "user"
    assert counted.count(("GET", "/threads")) == 1 and len(counted) == 4  # one listing, one per thread's messages
    ConnectionState.objects.update(next_thread_discovery_at=None)
    counted.clear()
    assert poller.discover_new_threads() == 0
    assert counted == [("GET", "/threads")]
    state = ConnectionState.objects.get(connection="default")
    assert state.threads_discovered == 4 and state.discovery_requests == 1 + 1 + 4 + 1
    reported = sync_status()["connections"][0]
    assert reported["discover_threads"] and reported["discovery_requests"] == state.discovery_requests


@pytest.mark.slow  # waits 2 real seconds: the service dates threads to the second
def test_discovery_waits_for_its_interval_and_skips_old_threads(settings, emulator, mirror_settings, counted):
    client = discovering(settings, emulator, mirror_settings, DISCOVER_THREADS_SINCE=1)
    client.create_thread()
    time.sleep(2.1)  # the service's created_at has one-second resolution: the thread must be older than SINCE
    assert poller.discover_new_threads() == 0
    counted.clear()
    assert poller.discover_new_threads() == 0 and counted == []  # not due again before DISCOVERY_INTERVAL


def test_discovery_is_off_by_default_on_azure(mirror_settings, remote, counted):
    remote.create_thread()
    assert poller.discover_new_threads() == 0 and counted == []


def test_a_thread_created_elsewhere_is_tracked_within_the_discovery_interval(q_cluster, settings, emulator,
                                                                             mirror_settings, assistant):
    interval = 1.0
    client = discovering(settings, emulator, mirror_settings)
    settings.RUNS_APP = {**settings.RUNS_APP, "DISCOVERY_INTERVAL": interval}
    q_cluster(**settings.RUNS_APP)
    wait_for(lambda: ConnectionState.objects.filter(next_thread_discovery_at__isnull=False).exists(), timeout=30)
    outside = client.create_thread(messages=[{"role": "user", "content": "made by another app"}])
    created = time.monotonic()
    thread = wait_for(lambda: Thread.objects.filter(remote_id=outside["id"], tracked=True).first(), timeout=20)
    took = time.monotonic() - created
    assert took <= interval + 2, f"tracked after {took:.2f} s"
    wait_for(lambda: texts(thread) == [("user", "made by another app")], timeout=5)
    run = client.create_run(outside["id"], assistant_id=client.create_assistant(model="gpt-4o")["id"])
    mirrored = wait_for(lambda: Run.objects.filter(remote_id=run["id"]).first(), timeout=20)
    assert finished_by_the_poller(mirrored).status == "completed"
    wait_for(lambda: [r for r, _ in texts(thread)] == ["user", "assistant"], timeout=20)


def test_an_answer_relayed_before_the_prompt_was_listed_still_follows_it(mirror_settings, assistant, remote):
    from runs_app.models import Source

    outside = remote.create_thread(messages=[{"role": "user", "content": "the prompt"}])
    made = remote.create_run(outside["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(outside["id"], made["id"])["status"] == "completed")
    [answer] = [m for m in remote.iter_messages(outside["id"]) if m["role"] == "assistant"]
    # A relay applies the answer from the stream first; the listing brings the prompt later, in the same second.
    upsert.apply_message(answer, connection="default", seen=ordering.Observation.now(Source.STREAM))
    services.thread_messages_sync(thread=Thread.objects.get(remote_id=outside["id"]))
    assert [r for r, _ in texts(Thread.objects.get(remote_id=outside["id"]))] == ["user", "assistant"]

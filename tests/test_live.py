"""The live pages' server side against the emulator: access (anonymous, non-staff, missing permission), CSRF,
the SSE response headers (no gzip), starting a run with a new message, tool outputs, cancel, errors with the
field or the service's request id, the mirror feed of a run, and escaping of model output in the pages."""

import json
import re

import pytest
from django.test import Client

from runs_app import services
from runs_app.models import Message, OperatorAction, PollerLane, Run
from runs_app.web.feed import MirrorFeed
from tests.client_helpers import wait_for
from tests.factories import VIEW_PERMISSIONS, non_staff_user, staff_user, superuser

pytestmark = pytest.mark.django_db

FRAME = re.compile(rb"event: ([^\n]+)\ndata: ([^\n]*)\n\n")
HTML = "<img src=x onerror=alert(1)>"


def frames(body: bytes):
    return [(name.decode(), data.decode()) for name, data in FRAME.findall(body)]


@pytest.fixture
def csrf_client(operator):
    """A test client that enforces CSRF as a browser does, logged in as the operator."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    return client


def csrf_of(client, thread):
    page = client.get(f"/threads/{thread.remote_id}/live/")
    assert page.status_code == 200
    return client.cookies["csrftoken"].value


def completed_run(assistant, text="hello"):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": text}]})
    return wait_for(lambda: (r := services.run_refresh(run=Run.objects.get(pk=run.pk))).is_terminal and r)


# --- access ---------------------------------------------------------------------------------------------------

def test_pages_and_endpoints_refuse_anonymous_and_non_staff(mirror_settings, assistant, django_user_model):
    run = completed_run(assistant)
    thread_id, run_id = run.thread.remote_id, run.remote_id
    pages = [f"/threads/{thread_id}/live/", f"/runs/{run_id}/live/"]
    endpoints = [("get", f"/runs/{run_id}/events/"), ("post", f"/threads/{thread_id}/live/runs/"),
                 ("post", f"/runs/{run_id}/live/tool-outputs/"), ("post", f"/runs/{run_id}/live/cancel/")]
    clerk = non_staff_user(django_user_model, "clerk")
    for who in (None, clerk):
        client = Client()
        if who:
            client.force_login(who)
        for url in pages:
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], url
        for method, url in endpoints:
            response = getattr(client, method)(url)
            assert response.status_code == 403, (who, url)
            assert response.json()["error"]["code"] == "forbidden"
    assert not OperatorAction.objects.filter(action__in=["create_run", "cancel_run"]).exists()


def test_each_action_needs_its_permission(mirror_settings, assistant, django_user_model):
    run = completed_run(assistant)
    viewer = staff_user(django_user_model, "viewer", permissions=VIEW_PERMISSIONS)
    client = Client()
    client.force_login(viewer)
    assert client.get(f"/threads/{run.thread.remote_id}/live/").status_code == 200
    for url, perm in [(f"/threads/{run.thread.remote_id}/live/runs/", "runs_app.add_run"),
                      (f"/runs/{run.remote_id}/live/tool-outputs/", "runs_app.submit_tool_outputs"),
                      (f"/runs/{run.remote_id}/live/cancel/", "runs_app.cancel_run")]:
        response = client.post(url)
        assert response.status_code == 403 and perm in response.json()["error"]["message"], url
    page = client.get(f"/threads/{run.thread.remote_id}/live/").content.decode()
    assert 'id="start-run"' not in page  # no form for someone who may not start runs


def test_every_post_needs_the_csrf_token(mirror_settings, assistant, csrf_client):
    run = completed_run(assistant)
    for url in [f"/threads/{run.thread.remote_id}/live/runs/", f"/runs/{run.remote_id}/live/tool-outputs/",
                f"/runs/{run.remote_id}/live/cancel/"]:
        response = csrf_client.post(url, {"assistant_id": assistant["id"], "content": "hi"})
        assert response.status_code == 403 and b"CSRF" in response.content, url
    assert Run.objects.count() == 1 and not OperatorAction.objects.filter(action="create_message").exists()


# --- starting a run, tool outputs, cancel -------------------------------------------------------------------------

def test_start_a_run_streams_it_with_sse_headers_and_no_gzip(mirror_settings, assistant, csrf_client, operator):
    thread = services.thread_create()
    token = csrf_of(csrf_client, thread)
    response = csrf_client.post(f"/threads/{thread.remote_id}/live/runs/",
                                {"assistant_id": assistant["id"], "content": "Say hello [words:12]"},
                                HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT_ENCODING="gzip, deflate, br")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-store" and response["X-Accel-Buffering"] == "no"
    assert not response.has_header("Content-Encoding")
    events = frames(b"".join(response.streaming_content))
    names = [n for n, _ in events]
    assert names[0] == "thread.run.created" and names[-2:] == ["thread.run.completed", "done"]
    deltas = "".join(json.loads(d)["delta"]["content"][0]["text"]["value"]
                     for n, d in events if n == "thread.message.delta")
    assert len(deltas.split()) == 12
    # The prompt went inside the create-run request and reached the mirror by the thread's listing, before the answer.
    user_message, answer = Message.objects.filter(thread=thread).order_by(*Message.THREAD_ORDER)
    assert user_message.role == "user" and user_message.text == "Say hello [words:12]"
    run = Run.objects.get(thread=thread)
    assert run.status == "completed"
    assert answer.run == run and answer.role == "assistant" and answer.text == deltas
    actions = set(OperatorAction.objects.filter(user=operator).values_list("action", flat=True))
    assert "create_run" in actions and "create_message" not in actions
    # The HTML page itself is still compressed.
    page = csrf_client.get(f"/threads/{thread.remote_id}/live/", HTTP_ACCEPT_ENCODING="gzip")
    assert page["Content-Encoding"] == "gzip"


def test_start_errors_name_the_field_or_carry_the_service_request_id(mirror_settings, assistant, csrf_client):
    thread = services.thread_create()
    token = csrf_of(csrf_client, thread)
    url = f"/threads/{thread.remote_id}/live/runs/"
    response = csrf_client.post(url, {"assistant_id": "", "content": "hi"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 400 and response.json()["error"]["param"] == "assistant_id"
    response = csrf_client.post(url, {"assistant_id": assistant["id"], "content": "  "}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 400 and response.json()["error"]["param"] == "content"
    response = csrf_client.post(url, {"assistant_id": "asst_missing", "content": "hi"}, HTTP_X_CSRFTOKEN=token)
    error = response.json()["error"]
    assert response.status_code == 404 and error["request_id"] and "asst_missing" in error["message"]
    assert not Run.objects.filter(thread=thread).exists()
    response = csrf_client.post("/threads/thread_unknown/live/runs/", {"assistant_id": assistant["id"], "content": "x"},
                                HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 404 and response.json()["error"]["param"] == "thread_id"


def test_a_second_run_on_a_busy_thread_is_refused_before_the_service(mirror_settings, assistant, csrf_client, remote):
    thread = services.thread_create(messages=[{"role": "user", "content": "wait [slow:30]"}])
    busy = services.run_create(thread=thread, assistant_id=assistant["id"])
    token = csrf_of(csrf_client, thread)
    response = csrf_client.post(f"/threads/{thread.remote_id}/live/runs/",
                                {"assistant_id": assistant["id"], "content": "hi"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 409 and busy.remote_id in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "thread_id"
    # The refused message was added neither on the service nor in the mirror (which holds the thread's prompt).
    assert [m["role"] for m in remote.iter_messages(thread.remote_id) if m["role"] == "user"] == ["user"]
    assert list(Message.objects.filter(thread=thread, role="user").values_list("role", flat=True)) == ["user"]
    services.run_cancel(run=busy)


def test_tool_outputs_continue_the_stream_and_cancel_answers_json(mirror_settings, assistant, csrf_client):
    thread = services.thread_create()
    token = csrf_of(csrf_client, thread)
    body = b"".join(csrf_client.post(f"/threads/{thread.remote_id}/live/runs/",
                                     {"assistant_id": assistant["id"], "content": "call get_weather for Oslo"},
                                     HTTP_X_CSRFTOKEN=token).streaming_content)
    waiting = json.loads(dict(frames(body))["thread.run.requires_action"])
    run_id = waiting["id"]
    call = waiting["required_action"]["submit_tool_outputs"]["tool_calls"][0]
    url = f"/runs/{run_id}/live/tool-outputs/"
    wrong = csrf_client.post(url, json.dumps({"tool_outputs": [{"tool_call_id": "call_nope", "output": "x"}]}),
                             content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "tool_outputs"
    response = csrf_client.post(url, {call["id"]: "rainy, 9 C"}, HTTP_X_CSRFTOKEN=token)  # the plain form shape
    names = [n for n, _ in frames(b"".join(response.streaming_content))]
    assert names[-2:] == ["thread.run.completed", "done"]
    run = Run.objects.get(remote_id=run_id)
    assert run.status == "completed" and call["id"] in run.answered_call_ids
    response = csrf_client.post(f"/runs/{run_id}/live/cancel/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 409 and response.json()["error"]["param"] == "run_id"

    services.message_create(thread=thread, content="take a while [slow:30]")
    slow = services.run_create(thread=thread, assistant_id=assistant["id"])
    response = csrf_client.post(f"/runs/{slow.remote_id}/live/cancel/", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["status"] in ("cancelling", "cancelled")
    assert OperatorAction.objects.filter(action="cancel_run", target=slow.remote_id, succeeded=True).exists()


# --- the mirror feed --------------------------------------------------------------------------------------------

def test_feed_of_a_finished_run_sends_its_state_then_done(mirror_settings, assistant, csrf_client):
    run = completed_run(assistant, "say something [words:5]")
    response = csrf_client.get(f"/runs/{run.remote_id}/events/")
    assert response["Content-Type"] == "text/event-stream" and response["X-Accel-Buffering"] == "no"
    events = frames(b"".join(response.streaming_content))
    names = [n for n, _ in events]
    assert names[-2:] == ["thread.run.completed", "done"]
    assert "thread.run.step.completed" in names
    message = json.loads(dict(events)["thread.message.completed"])
    assert message["content"][0]["text"]["value"] == Message.objects.get(run=run, role="assistant").text
    assert len(message["content"][0]["text"]["value"].split()) == 5


def test_feed_follows_a_run_the_poller_updates(mirror_settings, assistant, q_cluster):
    q_cluster()
    wait_for(lambda: PollerLane.objects.filter(cycles__gt=0).exists(), timeout=60)  # the poller is running
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "take your time [slow:4]"}]})
    feed = MirrorFeed(Run.objects.get(pk=run.pk), tick=0.05)
    events = frames(b"".join(feed))
    statuses = [n for n, _ in events if n.startswith("thread.run.") and not n.startswith("thread.run.step.")]
    assert statuses[0] in ("thread.run.queued", "thread.run.in_progress")
    assert statuses[-1] == "thread.run.completed" and events[-1][0] == "done"
    assert statuses.count("thread.run.completed") == 1
    assert "thread.run.in_progress" in statuses  # seen while it ran, not only at the end
    assert any(n == "thread.message.completed" for n, _ in events)


def test_feed_of_an_unknown_run_is_a_404_json(csrf_client):
    response = csrf_client.get("/runs/run_nope/events/")
    assert response.status_code == 404 and response.json()["error"]["param"] == "run_id"


# --- model output is text ------------------------------------------------------------------------------------------

def test_pages_escape_model_output(mirror_settings, assistant, csrf_client):
    run = completed_run(assistant, "answer with markup [html]")
    answer = Message.objects.get(run=run, role="assistant").text
    assert HTML in answer
    for url in (f"/threads/{run.thread.remote_id}/live/", f"/runs/{run.remote_id}/live/"):
        page = csrf_client.get(url).content.decode()
        assert HTML not in page and "<script>alert(1)</script>" not in page, url
        if "thread" in url:
            assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_admin_and_the_live_pages_link_to_each_other(mirror_settings, assistant, django_user_model):
    run = completed_run(assistant)
    boss = superuser(django_user_model, "boss")
    client = Client()
    client.force_login(boss)
    run_admin = client.get(f"/admin/runs_app/run/{run.pk}/change/").content.decode()
    assert f'href="/runs/{run.remote_id}/live/"' in run_admin
    thread_admin = client.get(f"/admin/runs_app/thread/{run.thread.pk}/change/").content.decode()
    assert f'href="/threads/{run.thread.remote_id}/live/"' in thread_admin
    live = client.get(f"/runs/{run.remote_id}/live/").content.decode()
    assert f'href="/admin/runs_app/run/{run.pk}/change/"' in live
    assert f'href="/admin/runs_app/thread/{run.thread.pk}/change/"' in client.get(
        f"/threads/{run.thread.remote_id}/live/").content.decode()

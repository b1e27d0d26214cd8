"""One error body and one representation for every door: the same service error, refusal or lookup answers the same
status and body through the API and the live pages, and a run is the same JSON through both."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from runs_app import services
from runs_app.models import Run, Thread
from tests import factories
from tests.client_helpers import wait_for

pytestmark = pytest.mark.django_db

PERMISSIONS = ["add_thread", "add_run", "cancel_run", "view_run", "view_thread", "submit_tool_outputs"]


@pytest.fixture
def doors(django_user_model):
    """The API and the live pages' endpoints, as the same operator (the live pages need a session and CSRF)."""
    user = factories.staff_user(django_user_model, "operator", permissions=PERMISSIONS)
    api = APIClient()
    api.force_authenticate(user)
    live = Client(enforce_csrf_checks=True)
    live.force_login(user)
    return api, live


def live_post(live, path, data=None):
    live.get("/admin/")  # a page of the site sets the CSRF cookie
    token = live.cookies["csrftoken"].value if "csrftoken" in live.cookies else None
    if token is None:
        from django.middleware.csrf import _get_new_csrf_string

        token = _get_new_csrf_string()
        live.cookies["csrftoken"] = token
    return live.post(path, data or {}, HTTP_X_CSRFTOKEN=token)


def without_request_id(body):
    """The body with the service's request id (different for each request) taken out of it."""
    request_id = body["error"]["request_id"]
    message = body["error"]["message"].replace(request_id, "ID") if request_id else body["error"]["message"]
    return {**body, "error": {**body["error"], "message": message, "request_id": bool(request_id)}}


def finished_run(assistant):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "hi"}]})
    return wait_for(lambda: (r := services.run_poll(run=Run.objects.get(pk=run.pk))).is_terminal and r)


def test_a_run_not_in_the_state_the_action_needs_is_the_same_409_at_both_doors(mirror_settings, assistant, doors):
    api, live = doors
    run = finished_run(assistant)
    through_api = api.post(f"/api/runs/{run.remote_id}/cancel/")
    through_live = live_post(live, f"/runs/{run.remote_id}/live/cancel/")
    assert through_api.status_code == through_live.status_code == 409
    assert through_api.json() == through_live.json()
    assert through_api.json()["error"]["code"] == "run_state_conflict"
    assert through_api.json()["error"]["param"] == "run_id"


@pytest.mark.parametrize(("faults", "status"), [({"5xx": 1.0}, 502), ({"429": 1.0}, 429)])
def test_the_services_failure_is_the_same_answer_at_both_doors(mirror_settings, settings, emulator, assistant, doors,
                                                                 faults, status):
    api, live = doors
    slow = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "wait [slow:30]"}]})
    settings.RUNS_APP = {**mirror_settings, "MAX_RETRIES": 0, "RETRY_AFTER_CAP": 30.0}
    emulator.set_faults({**faults, "match": "/cancel$"})  # the same seeded dice for each door
    through_api = api.post(f"/api/runs/{slow.remote_id}/cancel/")
    emulator.set_faults({**faults, "match": "/cancel$"})
    through_live = live_post(live, f"/runs/{slow.remote_id}/live/cancel/")
    assert through_api.status_code == through_live.status_code == status
    assert without_request_id(through_api.json()) == without_request_id(through_live.json())
    assert through_api.json()["error"]["request_id"] and through_live.json()["error"]["request_id"]
    assert through_api.get("Retry-After") == through_live.get("Retry-After")
    emulator.set_faults(None)
    services.run_cancel(run=Run.objects.get(pk=slow.pk))


def test_an_id_held_on_two_connections_is_the_same_400_at_both_doors(mirror_settings, doors):
    api, live = doors
    for name in ("default", "east"):
        thread = Thread.objects.create(connection=name, remote_id="thread_same")
        Run.objects.create(connection=name, remote_id="run_same", thread=thread, status="completed")
    through_api = api.post("/api/runs/run_same/cancel/")
    through_live = live_post(live, "/runs/run_same/live/cancel/")
    assert through_api.status_code == through_live.status_code == 400
    assert through_api.json() == through_live.json()
    assert through_api.json()["error"]["param"] == "connection"
    assert api.get("/api/runs/run_same/?connection=east").json()["mirror"]["connection"] == "east"


def test_cancel_answers_the_same_run_object_at_both_doors(mirror_settings, assistant, doors):
    api, live = doors
    runs = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "wait [slow:30]"}]}) for _ in range(2)]
    through_api = api.post(f"/api/runs/{runs[0].remote_id}/cancel/").json()
    through_live = live_post(live, f"/runs/{runs[1].remote_id}/live/cancel/").json()
    assert set(through_api) == set(through_live)
    assert set(through_api["mirror"]) == set(through_live["mirror"])
    assert through_live == {**api.get(f"/api/runs/{runs[1].remote_id}/").json(), "mirror": through_live["mirror"]}

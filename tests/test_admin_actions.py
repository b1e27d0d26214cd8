"""Admin actions through the services: success, permission denied, invalid input, wrong state, service errors."""

import pytest
from django.urls import reverse

from runs_app.models import OperatorAction, Run, Thread
from tests.client_helpers import wait_for
from tests.factories import settled, staff_user, start_run, waiting_run

pytestmark = pytest.mark.django_db


def messages_of(response) -> list[str]:
    """The messages the admin shows after an action (django.contrib.messages)."""
    return [str(m) for m in response.context["messages"]] if response.context else []


def change_url(run):
    return reverse("admin:runs_app_run_change", args=[run.pk])


def url(name, run):
    return reverse(f"admin:runs_app_run_{name}", args=[run.pk])


def audit_rows(action=None):
    rows = OperatorAction.objects.all()
    if action:
        rows = rows.filter(action=action)
    return list(rows.order_by("id").values_list("action", "target", "succeeded"))


# --- cancel ------------------------------------------------------------------------------------------------

def test_cancel_one_run_confirms_then_cancels(mirror_settings, assistant, admin_client, remote):
    run = start_run(assistant, "take your time [slow:30]")
    page = admin_client.get(url("cancel", run))
    assert page.status_code == 200 and run.remote_id in page.content.decode()
    assert Run.objects.get(pk=run.pk).status == "queued"  # the confirmation page sends nothing
    response = admin_client.post(url("cancel", run), {"confirm": "yes"}, follow=True)
    assert any(f"Cancel requested for 1 run(s): {run.remote_id} (cancelling)" in m for m in messages_of(response))
    assert Run.objects.get(pk=run.pk).status == "cancelling"
    assert audit_rows("cancel_run") == [("cancel_run", run.remote_id, True)]
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] in ("cancelling", "cancelled")


def test_cancel_many_reports_runs_that_can_no_longer_be_cancelled(mirror_settings, assistant, admin_client):
    active = start_run(assistant, "slowly [slow:30]")
    finished = settled(start_run(assistant, "quick"))
    assert finished.status == "completed"
    changelist = reverse("admin:runs_app_run_changelist")
    selection = {"action": "cancel_runs", "_selected_action": [active.pk, finished.pk]}
    confirm = admin_client.post(changelist, selection)
    body = confirm.content.decode()
    assert confirm.status_code == 200 and "can no longer be cancelled" in body
    assert active.remote_id in body and finished.remote_id in body
    assert not OperatorAction.objects.filter(action="cancel_run").exists()
    response = admin_client.post(changelist, {**selection, "confirm": "yes"}, follow=True)
    shown = messages_of(response)
    assert f"Run {finished.remote_id} is already completed; it cannot be cancelled." in shown
    assert any(active.remote_id in m and "Cancel requested for 1 run(s)" in m for m in shown)
    assert audit_rows("cancel_run") == [("cancel_run", active.remote_id, True)]
    assert Run.objects.get(pk=finished.pk).status == "completed"


def test_cancel_without_permission_is_refused_and_sends_nothing(mirror_settings, assistant, client,
                                                                 viewer):
    client.force_login(viewer)
    run = start_run(assistant, "slowly [slow:30]")
    assert client.get(url("cancel", run)).status_code == 403
    assert client.post(url("cancel", run), {"confirm": "yes"}).status_code == 403
    response = client.post(reverse("admin:runs_app_run_changelist"),
                           {"action": "cancel_runs", "_selected_action": [run.pk], "confirm": "yes"}, follow=True)
    assert response.status_code == 200
    assert not OperatorAction.objects.filter(action="cancel_run").exists()
    assert Run.objects.get(pk=run.pk).status == "queued"
    change = client.get(change_url(run)).content.decode()
    assert 'id="action-cancel"' not in change


def test_cancel_rejected_by_the_service_shows_its_message_and_request_id(mirror_settings, assistant, admin_client,
                                                                         remote):
    run = start_run(assistant, "quick")
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    response = admin_client.post(url("cancel", run), {"confirm": "yes"}, follow=True)
    audit = OperatorAction.objects.get(action="cancel_run")
    assert not audit.succeeded and audit.request_id
    [shown] = [m for m in messages_of(response) if "Could not cancel" in m]
    assert "Cannot cancel run with status 'completed'" in shown and audit.request_id in shown
    assert Run.objects.get(pk=run.pk).status == "queued"  # the mirror is not touched by a refused cancel


# --- refresh -----------------------------------------------------------------------------------------------

def test_refresh_action_fetches_runs(mirror_settings, assistant, admin_client, remote):
    run = start_run(assistant, "quick")
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    response = admin_client.post(reverse("admin:runs_app_run_changelist"),
                                 {"action": "refresh_runs", "_selected_action": [run.pk]}, follow=True)
    assert f"Refreshed 1 run(s): {run.remote_id} (completed)." in messages_of(response)
    assert Run.objects.get(pk=run.pk).status == "completed"
    assert audit_rows("refresh_run") == [("refresh_run", run.remote_id, True)]


def test_refresh_button_reports_a_remote_error(mirror_settings, assistant, admin_client, emulator):
    run = start_run(assistant, "quick")
    emulator.reset()  # the service forgot the run: 404
    response = admin_client.post(url("refresh", run), follow=True)
    [shown] = [m for m in messages_of(response) if "Could not refresh" in m]
    audit = OperatorAction.objects.get(action="refresh_run")
    assert not audit.succeeded and audit.request_id and audit.request_id in shown
    assert Run.objects.get(pk=run.pk).status == "queued"


def test_refresh_without_permission_is_refused_and_not_audited(mirror_settings, assistant, client, viewer):
    client.force_login(viewer)
    run = start_run(assistant, "quick")
    assert client.post(url("refresh", run)).status_code == 403
    client.post(reverse("admin:runs_app_run_changelist"), {"action": "refresh_runs", "_selected_action": [run.pk]})
    assert not OperatorAction.objects.filter(action="refresh_run").exists()


# --- metadata ----------------------------------------------------------------------------------------------

def metadata_post(pairs: list[tuple[str, str]], total: int | None = None) -> dict:
    total = max(total or 0, len(pairs))
    data = {"metadata-TOTAL_FORMS": str(total), "metadata-INITIAL_FORMS": "0", "metadata-MIN_NUM_FORMS": "0",
            "metadata-MAX_NUM_FORMS": "100"}
    for i in range(total):
        key, value = pairs[i] if i < len(pairs) else ("", "")
        data[f"metadata-{i}-key"] = key
        data[f"metadata-{i}-value"] = value
    return data


def test_modify_metadata_replaces_it(mirror_settings, assistant, admin_client, remote):
    run = start_run(assistant, "slowly [slow:30]", metadata={"old": "1"})
    page = admin_client.get(url("metadata", run))
    assert page.status_code == 200 and 'value="old"' in page.content.decode()
    response = admin_client.post(url("metadata", run), metadata_post([("owner", "ops"), ("ticket", "=42")], 5),
                                 follow=True)
    assert f"Metadata of run {run.remote_id} saved (2 keys)." in messages_of(response)
    assert Run.objects.get(pk=run.pk).metadata == {"owner": "ops", "ticket": "=42"}
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["metadata"] == {"owner": "ops", "ticket": "=42"}
    assert audit_rows("modify_metadata") == [("modify_metadata", run.remote_id, True)]


@pytest.mark.parametrize(("pairs", "error"), [
    ([("k" * 65, "v")], "Keys are limited to 64 characters; this one has 65."),
    ([("k", "v" * 513)], "Values are limited to 512 characters; this one has 513."),
    ([(f"k{i}", "v") for i in range(17)], "At most 16 keys are allowed; you gave 17."),
    ([("same", "a"), ("same", "b")], "The key &#x27;same&#x27; appears more than once."),
    ([("", "orphan value")], "Give a key for this value"),
])
def test_metadata_limits_are_field_errors_and_nothing_is_sent(mirror_settings, assistant, admin_client, remote,
                                                              pairs, error):
    run = start_run(assistant, "slowly [slow:30]", metadata={"old": "1"})
    before = run.metadata  # {"old": "1"} and the client's runs_app_request_id
    assert before["old"] == "1"
    response = admin_client.post(url("metadata", run), metadata_post(pairs))
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not OperatorAction.objects.filter(action="modify_metadata").exists()
    assert Run.objects.get(pk=run.pk).metadata == before
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["metadata"] == before


def test_metadata_field_error_is_on_the_key(mirror_settings, assistant, admin_client):
    run = start_run(assistant, "slowly [slow:30]")
    response = admin_client.post(url("metadata", run), metadata_post([("k" * 65, "v")]))
    formset = response.context["formset"]
    assert formset.forms[0].errors == {"key": ["Keys are limited to 64 characters; this one has 65."]}


def test_metadata_without_permission_is_refused_and_changes_nothing(mirror_settings, assistant, client, viewer):
    client.force_login(viewer)
    run = start_run(assistant, "slowly [slow:30]")
    assert client.get(url("metadata", run)).status_code == 403
    assert client.post(url("metadata", run), metadata_post([("a", "b")])).status_code == 403
    assert Run.objects.get(pk=run.pk).metadata == run.metadata
    assert not OperatorAction.objects.filter(action="modify_metadata").exists()


def test_metadata_service_error_is_shown_with_request_id(mirror_settings, assistant, admin_client, emulator):
    run = start_run(assistant, "slowly [slow:30]")
    emulator.reset()
    response = admin_client.post(url("metadata", run), metadata_post([("a", "b")]))
    assert response.status_code == 200
    audit = OperatorAction.objects.get(action="modify_metadata")
    assert not audit.succeeded and audit.request_id
    [shown] = [m for m in messages_of(response) if "Could not modify the metadata" in m]
    assert audit.request_id in shown
    assert Run.objects.get(pk=run.pk).metadata == run.metadata


def test_metadata_permission_only_for_that_action(mirror_settings, assistant, client, django_user_model, remote):
    client.force_login(staff_user(django_user_model, "editor", permissions=("view_run", "change_run_metadata")))
    run = start_run(assistant, "slowly [slow:30]")
    client.post(url("metadata", run), metadata_post([("a", "b")]))
    assert Run.objects.get(pk=run.pk).metadata == {"a": "b"}
    assert client.post(url("cancel", run), {"confirm": "yes"}).status_code == 403


# --- tool outputs -----------------------------------------------------------------------------------------

def test_tool_outputs_form_shows_each_call_and_submits(mirror_settings, assistant, admin_client, remote):
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    page = admin_client.get(url("tool_outputs", run)).content.decode()
    assert f"get_weather ({call['id']})" in page and "&quot;city&quot;" in page
    response = admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "sunny, 21 °C"}, follow=True)
    assert any("Tool outputs sent" in m for m in messages_of(response))
    assert Run.objects.get(pk=run.pk).status == "queued"
    assert audit_rows("submit_tool_outputs") == [("submit_tool_outputs", run.remote_id, True)]
    final = settled(run)
    assert final.status == "completed"
    page = admin_client.get(change_url(final)).content.decode()
    assert "sunny, 21 °C" in page


def test_tool_outputs_all_calls_must_be_answered(mirror_settings, assistant, admin_client, remote):
    run = waiting_run(assistant)
    response = admin_client.post(url("tool_outputs", run), {})
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not OperatorAction.objects.filter(action="submit_tool_outputs").exists()
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "requires_action"


def test_tool_outputs_for_an_unknown_call_are_named(mirror_settings, assistant, admin_client, remote):
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    response = admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "x", "output__call_nope": "y"})
    assert response.status_code == 200
    assert "Not pending on this run: call_nope." in response.content.decode()
    assert any("The tool outputs were not sent" in m for m in messages_of(response))
    assert not OperatorAction.objects.filter(action="submit_tool_outputs").exists()
    assert Run.objects.get(pk=run.pk).status == "requires_action"
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "requires_action"


def test_tool_outputs_after_the_run_moved_on_remotely_refreshes_it(mirror_settings, assistant, admin_client,
                                                                   remote):
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    remote.cancel_run(run.thread.remote_id, run.remote_id)  # someone else acted; the mirror still waits
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "cancelled")
    response = admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "late"}, follow=True)
    shown = messages_of(response)
    [refused] = [m for m in shown if "refused the tool outputs" in m]
    assert 'Runs in status "cancelled" do not accept tool outputs' in refused
    assert "Request id:" in refused
    assert f"Refreshed run {run.remote_id} from the service: it is cancelled." in shown
    assert Run.objects.get(pk=run.pk).status == "cancelled"
    assert audit_rows()[-2:] == [("submit_tool_outputs", run.remote_id, False), ("refresh_run", run.remote_id, True)]


def test_tool_outputs_when_the_mirror_already_moved_on(mirror_settings, assistant, admin_client):
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "sunny"})
    settled(run)  # completed now
    response = admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "again"}, follow=True)
    shown = messages_of(response)
    assert any("no longer waits for tool outputs. Nothing was sent." in m for m in shown)
    assert any("it is completed" in m for m in shown)
    assert audit_rows("submit_tool_outputs") == [("submit_tool_outputs", run.remote_id, True)]


def test_tool_outputs_without_permission(mirror_settings, assistant, client, viewer, remote):
    client.force_login(viewer)
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    assert client.get(url("tool_outputs", run)).status_code == 403
    assert client.post(url("tool_outputs", run), {f"output__{call['id']}": "x"}).status_code == 403
    assert not OperatorAction.objects.filter(action="submit_tool_outputs").exists()
    assert remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "requires_action"


def test_tool_outputs_service_error_keeps_the_form(mirror_settings, assistant, admin_client, emulator):
    run = waiting_run(assistant)
    call = run.pending_tool_calls[0]
    emulator.reset()
    response = admin_client.post(url("tool_outputs", run), {f"output__{call['id']}": "sunny"})
    assert response.status_code == 200 and "sunny" in response.content.decode()
    [shown] = [m for m in messages_of(response) if "were not accepted" in m]
    assert "Request id:" in shown
    assert Run.objects.get(pk=run.pk).status == "requires_action"


# --- threads: import and start a run ------------------------------------------------------------------------

def test_import_thread_by_id(mirror_settings, assistant, admin_client, remote):
    thread = remote.create_thread(messages=[{"role": "user", "content": "hello"}])
    run = remote.create_run(thread["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(thread["id"], run["id"])["status"] == "completed")
    import_url = reverse("admin:runs_app_thread_import")
    assert admin_client.get(import_url).status_code == 200
    response = admin_client.post(import_url, {"thread_id": thread["id"], "connection": "default"}, follow=True)
    assert f"Imported thread {thread['id']}: 1 run(s), 2 message(s); it is now followed." in messages_of(response)
    assert Run.objects.get(remote_id=run["id"]).status == "completed"
    assert audit_rows("import_thread") == [("import_thread", thread["id"], True)]


def test_import_thread_shows_a_bad_id_or_the_services_404_and_imports_nothing(mirror_settings, admin_client):
    import_url = reverse("admin:runs_app_thread_import")
    response = admin_client.post(import_url, {"thread_id": "../etc", "connection": "default"})
    assert "Give a thread id such as thread_abc123." in response.content.decode()
    response = admin_client.post(import_url, {"thread_id": "thread_missing", "connection": "default"})
    [shown] = [m for m in messages_of(response) if "Could not import thread thread_missing" in m]
    assert "Request id:" in shown
    assert not Thread.objects.exists()


def test_import_thread_needs_permission(mirror_settings, client, viewer):
    client.force_login(viewer)
    assert client.post(reverse("admin:runs_app_thread_import"), {"thread_id": "thread_x"}).status_code == 403
    assert not OperatorAction.objects.exists()


def test_start_run_on_a_thread(mirror_settings, assistant, admin_client, remote):
    thread = settled(start_run(assistant, "quick")).thread
    start_url = reverse("admin:runs_app_thread_start_run", args=[thread.pk])
    page = admin_client.get(start_url)
    assert page.status_code == 200 and assistant["id"] in page.content.decode()  # prefilled from the last run
    response = admin_client.post(start_url, {"assistant_id": assistant["id"], "instructions": "Be brief.",
                                              "metadata": "ticket=42\nowner = ops"}, follow=True)
    run = thread.runs.order_by("-created_at", "-id").first()
    assert any(f"Started run {run.remote_id}" in m for m in messages_of(response))
    remote_run = remote.retrieve_run(thread.remote_id, run.remote_id)
    assert remote_run["instructions"] == "Be brief."
    assert remote_run["metadata"]["ticket"] == "42" and remote_run["metadata"]["owner"] == "ops"


def test_start_run_invalid_metadata_and_permission(mirror_settings, assistant, admin_client, client,
                                                  viewer):
    thread = settled(start_run(assistant, "quick")).thread
    start_url = reverse("admin:runs_app_thread_start_run", args=[thread.pk])
    response = admin_client.post(start_url, {"assistant_id": assistant["id"], "metadata": "k" * 65 + "=v"})
    assert "the limit is 64" in response.content.decode()
    response = admin_client.post(start_url, {"assistant_id": assistant["id"], "metadata": "no equals sign"})
    assert "Line 1: write key=value." in response.content.decode()
    response = admin_client.post(start_url, {"assistant_id": "asst_unknown"})
    assert any("Could not start a run" in m and "Request id:" in m for m in messages_of(response))
    assert thread.runs.count() == 1
    client.force_login(viewer)
    assert client.post(start_url, {"assistant_id": assistant["id"]}).status_code == 403
    assert thread.runs.count() == 1


def test_tool_outputs_form_has_one_field_per_parallel_call(mirror_settings, remote, admin_client):
    tools = [{"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
        for name in ("get_weather", "get_time")]
    two_tools = remote._request("POST", "/assistants", json={"model": "gpt-4o", "tools": tools})
    run = settled(start_run(two_tools, "get_weather and get_time for Oslo"))
    calls = run.pending_tool_calls
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    page = admin_client.get(url("tool_outputs", run)).content.decode()
    for call in calls:
        assert f'name="output__{call["id"]}"' in page and f"{call['function']['name']} ({call['id']})" in page
    response = admin_client.post(url("tool_outputs", run), {f"output__{calls[0]['id']}": "sunny"})
    assert response.context["form"].errors == {f"output__{calls[1]['id']}": ["This field is required."]}
    assert not OperatorAction.objects.filter(action="submit_tool_outputs").exists()
    response = admin_client.post(url("tool_outputs", run), {f"output__{calls[0]['id']}": "sunny",
                                                             f"output__{calls[1]['id']}": "noon"}, follow=True)
    assert any("Tool outputs sent" in m for m in messages_of(response))
    assert settled(run).status == "completed"

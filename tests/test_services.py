"""Services: validation before any remote call, the remote answer through the upsert, every action audited."""

import pytest
from django.core.exceptions import ValidationError

from runs_app import services
from runs_app.assistants import BadRequest
from runs_app.models import Message, OperatorAction, Run, RunEvent, RunStep
from tests.client_helpers import wait_for
from tests.factories import settled, waiting_run

pytestmark = pytest.mark.django_db


def test_thread_create_and_run_create_are_audited(mirror_settings, assistant, operator):
    thread = services.thread_create(messages=[{"role": "user", "content": "hi"}], metadata={"team": "ops"},
                                    user=operator)
    run = services.run_create(thread=thread, assistant_id=assistant["id"], metadata={"ticket": "1"}, user=operator)
    assert run.status == "queued" and run.thread == thread and run.metadata["ticket"] == "1"
    actions = list(OperatorAction.objects.order_by("at").values_list("action", "target", "succeeded", "user__username"))
    assert actions == [("create_thread", thread.remote_id, True, "operator"),
                       ("create_run", run.remote_id, True, "operator")]
    timeline = [(e.kind, e.to_status, e.source) for e in run.events.all()]
    assert ("status", "queued", "action") in timeline and ("action", "", "action") in timeline


@pytest.mark.parametrize(("metadata", "reason"), [
    ({f"k{i}": "v" for i in range(17)}, "At most 16 keys"),
    ({"k" * 65: "v"}, "the limit is 64"),
    ({"k": "v" * 513}, "the limit is 512"),
    ({"k": 5}, "must be a string"),
])
def test_metadata_limits_are_field_errors_before_any_remote_call(mirror_settings, assistant, metadata, reason):
    thread = services.thread_create()
    with pytest.raises(ValidationError) as caught:
        services.run_create(thread=thread, assistant_id=assistant["id"], metadata=metadata)
    assert reason in " ".join(caught.value.message_dict["metadata"])
    assert not Run.objects.exists()
    assert not OperatorAction.objects.filter(action="create_run").exists()


def test_submit_tool_outputs_validates_all_and_only_the_pending_calls(mirror_settings, assistant, operator):
    run = waiting_run(assistant, user=operator)
    call_id = run.pending_tool_calls[0]["id"]
    for outputs, reason in [
        ([], "one output per pending"),
        ([{"tool_call_id": "call_nope", "output": "x"}], "Not pending on this run: call_nope"),
        ([{"tool_call_id": call_id, "output": "a"}, {"tool_call_id": call_id, "output": "b"}], "more than once"),
        ([{"tool_call_id": call_id, "output": 3}], "must be a string"),
    ]:
        with pytest.raises(ValidationError) as caught:
            services.run_submit_tool_outputs(run=run, tool_outputs=outputs, user=operator)
        assert reason in " ".join(caught.value.message_dict["tool_outputs"])
    run = services.run_submit_tool_outputs(run=run, tool_outputs=[{"tool_call_id": call_id, "output": "sunny"}],
                                           user=operator)
    assert run.status == "queued" and call_id in run.answered_call_ids
    final = settled(run)
    assert final.status == "completed"
    assert "sunny" in Message.objects.filter(run=final, role="assistant").get().text
    step = RunStep.objects.get(run=final, type="tool_calls")
    assert step.tool_calls[0]["function"]["output"] == "sunny"
    with pytest.raises(services.RunStateConflict, match="only a run in requires_action"):
        services.run_submit_tool_outputs(run=final, tool_outputs=[{"tool_call_id": call_id, "output": "x"}])


def test_cancel_and_modify_metadata(mirror_settings, assistant, operator):
    run = services.thread_and_run_create(assistant_id=assistant["id"], user=operator,
                                         thread={"messages": [{"role": "user", "content": "slowly [slow:30]"}]})
    run = services.run_modify_metadata(run=run, metadata={"owner": "ops"}, user=operator)
    assert run.metadata == {"owner": "ops"}
    run = services.run_cancel(run=run, user=operator)
    assert run.status == "cancelling"
    assert settled(run).status == "cancelled"
    with pytest.raises(services.RunStateConflict, match="already cancelled"):
        services.run_cancel(run=Run.objects.get(pk=run.pk))


def test_remote_error_is_audited_with_message_and_request_id(mirror_settings, assistant, operator, remote):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "quick"}]})
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    with pytest.raises(BadRequest, match="Cannot cancel run with status 'completed'"):
        services.run_cancel(run=run, user=operator)  # the mirror still says queued; the service knows better
    audit = OperatorAction.objects.get(action="cancel_run")
    assert not audit.succeeded and audit.request_id and "Cannot cancel run" in audit.error
    assert audit.answer["status"] == 400
    assert RunEvent.objects.filter(run=run, kind="action", operator_action=audit).exists()


def test_thread_import_fetches_every_page(mirror_settings, assistant, remote, operator):
    thread = remote.create_thread()
    for i in range(104):
        remote.create_message(thread["id"], content=f"note {i}")
    runs = []
    for _ in range(3):
        run = remote.create_run(thread["id"], assistant_id=assistant["id"])
        wait_for(lambda r=run: remote.retrieve_run(thread["id"], r["id"])["status"] == "completed")
        runs.append(run["id"])
    imported = services.thread_import(thread_id=thread["id"], user=operator)
    assert set(imported.runs.values_list("remote_id", flat=True)) == set(runs)
    assert imported.messages.count() == 104 + 3
    assert all(r.steps.exists() for r in imported.runs.all())
    audit = OperatorAction.objects.get(action="import_thread")
    assert audit.succeeded and audit.answer["runs"] == 3 and audit.answer["messages"] == 107


def test_thread_import_refuses_a_malformed_id(mirror_settings):
    with pytest.raises(ValidationError) as caught:
        services.thread_import(thread_id="../../etc")
    assert "thread_id" in caught.value.message_dict


def test_refresh_fetches_run_steps_and_messages(mirror_settings, assistant, remote, operator):
    thread = remote.create_thread(messages=[{"role": "user", "content": "hi"}])
    run_payload = remote.create_run(thread["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(thread["id"], run_payload["id"])["status"] == "completed")
    services.thread_import(thread_id=thread["id"])
    run = Run.objects.get(remote_id=run_payload["id"])
    refreshed = services.run_refresh(run=run, user=operator)
    assert refreshed.status == "completed" and refreshed.steps.count() == 1
    assert OperatorAction.objects.filter(action="refresh_run", succeeded=True).exists()


def test_redact_hides_secret_looking_values():
    assert services.redact({"api_key": "k", "nested": [{"Authorization": "Bearer x", "output": "ok"}]}) == {
        "api_key": "***", "nested": [{"Authorization": "***", "output": "ok"}]}


def test_nul_characters_in_input_are_audited_and_mirrored(mirror_settings, assistant, operator):
    thread = services.thread_create(messages=[{"role": "user", "content": "hi\x00there"}], user=operator)
    run = services.run_create(thread=thread, assistant_id=assistant["id"], instructions="x\x00y", user=operator)
    assert Run.objects.get(pk=run.pk).instructions == "x\ufffdy"
    assert OperatorAction.objects.get(action="create_run").sent["instructions"] == "x\ufffdy"

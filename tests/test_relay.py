"""The relay: service events re-emitted unchanged, each applied to the mirror, failures handed to the poller."""

import re

import pytest
from django.core.exceptions import ValidationError

from runs_app import services
from runs_app.models import Message, OperatorAction, Run
from runs_app.web import relay

pytestmark = pytest.mark.django_db

FRAME = re.compile(rb"event: ([^\n]+)\ndata: ([^\n]*)\n\n")


def frames(chunks):
    body = b"".join(chunks)
    return [(name.decode(), data.decode()) for name, data in FRAME.findall(body)], body


def test_relay_re_emits_events_and_mirrors_them(mirror_settings, assistant, operator=None):
    stream = relay.Relay(services.thread_and_run_create_stream(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "get_weather in Oslo"}]}))
    events, body = frames(stream)
    names = [n for n, _ in events]
    assert names[:2] == ["thread.created", "thread.run.created"]
    assert names[-2:] == ["thread.run.requires_action", "done"] and events[-1][1] == "[DONE]"
    assert body.endswith(b"event: done\ndata: [DONE]\n\n")
    run = Run.objects.get(remote_id=stream.run_remote_id)
    assert run.status == "requires_action" and run.steps.filter(type="tool_calls").exists()
    assert OperatorAction.objects.get(action="create_thread_and_run").run == run
    call = run.pending_tool_calls[0]
    follow = relay.Relay(services.run_submit_tool_outputs_stream(run=run, tool_outputs=[{"tool_call_id": call["id"],
                                                                          "output": "sunny"}]))
    events, _ = frames(follow)
    assert [n for n, _ in events][-2:] == ["thread.run.completed", "done"]
    run.refresh_from_db()
    assert run.status == "completed"
    answer = Message.objects.get(run=run, role="assistant")
    assert "sunny" in answer.text and answer.status == "completed"


def test_relay_validates_before_the_first_byte(mirror_settings, assistant):
    thread = services.thread_create()
    with pytest.raises(ValidationError):
        relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"], metadata={"k" * 65: "v"}))
    assert not Run.objects.exists()


def test_cut_upstream_gives_an_error_event_and_the_poller_takes_over(mirror_settings, emulator, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "long [words:30]"}])
    emulator.set_faults({"cut": {"p": 1.0, "after": 4}, "times": 1})
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    events, _ = frames(stream)
    assert [n for n, _ in events][:4] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress",
                                          "thread.run.step.created"]
    assert events[-1][0] == "error" and "stream_interrupted" in events[-1][1]
    run = Run.objects.get(remote_id=stream.run_remote_id)
    assert run.next_poll_at is not None and not stream.finished


def test_client_going_away_hands_the_run_to_the_poller(mirror_settings, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "slow [slow:30]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    iterator = iter(stream)
    first = next(iterator)
    assert first.startswith(b"event: thread.run.created")
    iterator.close()  # what Django does when the browser disconnects
    run = Run.objects.get(remote_id=stream.run_remote_id)
    assert run.status == "queued" and run.next_poll_at is not None


def test_heartbeat_while_the_service_is_silent(mirror_settings, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "think [slow:30]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    stream._heartbeat = 0.05
    iterator = iter(stream)
    chunks = [next(iterator) for _ in range(12)]
    iterator.close()
    assert b": heartbeat\n\n" in chunks


def test_the_sse_response_is_an_event_stream_never_cached_or_buffered(mirror_settings, assistant):
    thread = services.thread_create()
    response = relay.sse_response(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-store" and response["X-Accel-Buffering"] == "no"
    b"".join(response.streaming_content)


def test_a_response_closed_before_its_first_byte_closes_the_service_stream(mirror_settings, assistant):
    """The relay reads from construction on; if the response never starts (an error after the view), Django's
    close() must still stop the reader and close the service's stream."""
    thread = services.thread_create(messages=[{"role": "user", "content": "slow [slow:30]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    response = relay.event_stream_response(stream)
    assert stream.close in response._resource_closers  # what response.close() calls (it also ends the request)
    stream.close()
    assert stream._stream._closed and stream._stop.is_set()
    assert stream.events_relayed == 0


def test_django_closing_a_started_response_ends_the_relay_and_hands_over(mirror_settings, assistant):
    thread = services.thread_create(messages=[{"role": "user", "content": "slow [slow:30]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    response = relay.event_stream_response(stream)
    first = next(iter(response.streaming_content))
    assert first.startswith(b"event: thread.run.created")
    assert stream.close in response._resource_closers
    stream.close()  # what response.close() calls when the WSGI server closes it (the browser disconnected)
    assert stream._stream._closed
    run = Run.objects.get(remote_id=stream.run_remote_id)
    assert run.status == "queued" and run.next_poll_at is not None


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_mirror_is_written_by_the_applier_thread(mirror_settings, assistant):
    """The production path: events go out without waiting for the database; consecutive text deltas are folded
    into fewer writes; the mirror is complete when the response ends."""
    thread = services.thread_create(messages=[{"role": "user", "content": "a long one [words:300]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    events, _ = frames(stream)
    text = "".join(__import__("json").loads(d)["delta"]["content"][0]["text"]["value"]
                   for n, d in events if n == "thread.message.delta")
    assert len(text.split()) == 300 and events[-1][0] == "done"
    run = Run.objects.get(remote_id=stream.run_remote_id)  # committed by the applier before the response ended
    assert run.status == "completed" and Message.objects.get(run=run, role="assistant").text == text
    assert stream.writes < stream.events_relayed - 1 and not stream.apply_failed


def test_coalesce_folds_consecutive_deltas_of_one_message_only():
    from runs_app.assistants.streaming import Event

    def delta(mid, value, index=0):
        return Event("thread.message.delta", {"id": mid, "object": "thread.message.delta", "delta": {
            "content": [{"index": index, "type": "text", "text": {"value": value}}]}}, "")

    step = Event("thread.run.step.completed", {"id": "step_1"}, "")
    items = [(delta("m1", "Hel"), 1), (delta("m1", "lo"), 2), (delta("m1", "!", 1), 3), (step, 4),
             (delta("m1", " again"), 5), (delta("m2", "x"), 6)]
    out = relay.coalesce(items)
    assert [e.name for e, _ in out] == ["thread.message.delta", "thread.run.step.completed", "thread.message.delta",
                                        "thread.message.delta"]
    first, received = out[0]
    assert received == 3  # the folded text is the state as of the last delta's arrival
    assert first.data["delta"]["content"] == [{"index": 0, "type": "text", "text": {"value": "Hello"}},
                                              {"index": 1, "type": "text", "text": {"value": "!"}}]
    assert out[2][0].data["delta"]["content"][0]["text"]["value"] == " again" and out[3][0].data["id"] == "m2"

"""The one upsert: idempotent, ordered, never reverting a terminal run, folding stream deltas."""

import copy
import datetime as dt
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs_app import signals
from runs_app.mirror import ordering, upsert
from runs_app.mirror.ordering import Observation
from runs_app.models import Message, Run, RunEvent, RunStep, Thread
from tests.factories import WEATHER_TOOL, remote_client
from tests.run_sequences import ALL_SHAPES, load_sequences, record_sequences

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float, until: float | None = None, source="poll") -> Observation:
    return Observation(source, T0 + dt.timedelta(seconds=seconds), T0 + dt.timedelta(seconds=until or seconds))


@pytest.fixture(scope="module")
def sequences():
    """The frozen run payload sequences (fixtures/run_sequences/), by shape."""
    return load_sequences()


def fresh(sequence):
    """The same payloads under new ids, so many examples can share one database."""
    run_id, thread_id = f"run_{uuid.uuid4().hex[:20]}", f"thread_{uuid.uuid4().hex[:20]}"
    out = copy.deepcopy(sequence)
    for payload in out:
        payload["id"], payload["thread_id"] = run_id, thread_id
    return out


def apply(payload, seen):
    return upsert.apply_run(payload, connection="default", seen=seen)


pytestmark = pytest.mark.django_db


def test_the_frozen_sequences_are_whole_runs_of_one_id(sequences):
    assert set(sequences) == set(ALL_SHAPES)
    assert [p["status"] for p in sequences["completed"]] == ["queued", "queued", "in_progress", "completed"]
    statuses = [p["status"] for p in sequences["tool_round_trip"]]
    waiting = statuses.index("requires_action")
    assert statuses[waiting:] == ["requires_action", "queued", "in_progress", "completed"]
    for shape, payloads in sequences.items():
        assert len({(p["id"], p["thread_id"]) for p in payloads}) == 1, shape
        assert payloads[-1]["status"] == shape.replace("tool_round_trip", "completed"), shape


def test_the_frozen_sequences_still_match_what_the_emulator_sends(emulator, sequences):
    """Drift: recorded afresh, every shape has the frozen statuses in the frozen order and the same fields.
    When the emulator changes on purpose, re-record: `.venv/bin/python -m tests.run_sequences`."""
    fresh_recording = record_sequences(emulator)
    for shape in ALL_SHAPES:
        assert [p["status"] for p in fresh_recording[shape]] == [p["status"] for p in sequences[shape]], shape
        assert [sorted(p) for p in fresh_recording[shape]] == [sorted(p) for p in sequences[shape]], shape


def test_fields_are_mapped_and_raw_is_kept(sequences):
    payload = copy.deepcopy(fresh(sequences["completed"])[-1])
    payload["brand_new_field"] = {"kept": True}
    run = apply(payload, at(1)).row
    run.refresh_from_db()
    assert run.status == "completed" and run.completed_at.tzinfo is not None
    assert run.total_tokens == payload["usage"]["total_tokens"] > 0
    assert run.prompt_tokens + run.completion_tokens == run.total_tokens
    assert run.expires_at is None  # null once terminal
    assert run.raw["brand_new_field"] == {"kept": True}
    assert run.thread.remote_id == payload["thread_id"]
    assert run.temperature == payload["temperature"] and run.truncation_strategy == payload["truncation_strategy"]


def test_duplicates_are_idempotent(sequences):
    payload = fresh(sequences["completed"])[2]
    first = apply(payload, at(1))
    second = apply(payload, at(2))
    assert first.created and second.applied and not second.status_changed
    assert RunEvent.objects.filter(run=first.row).count() == 1


def test_terminal_run_never_reverts(sequences):
    seq = fresh(sequences["completed"])
    apply(seq[-1], at(10))
    result = apply(seq[2], at(20))  # an in_progress payload arriving later, even "newer" by timing
    assert not result.applied
    assert Run.objects.get(remote_id=seq[0]["id"]).status == "completed"


def test_stale_payload_is_ignored(sequences):
    seq = fresh(sequences["completed"])
    apply(seq[2], at(10, 11))  # in_progress seen with a request sent at 10
    result = apply(seq[0], at(5, 9))  # a queued answer that arrived before that request was sent
    assert not result.applied
    assert Run.objects.get(remote_id=seq[0]["id"]).status == "in_progress"


def test_concurrent_lower_rank_is_ignored(sequences):
    seq = fresh(sequences["completed"])
    apply(seq[2], at(10, 12))
    assert not apply(seq[0], at(11, 13)).applied  # overlapping windows: rank decides


def test_tool_outputs_cycle_requires_action_then_queued_then_in_progress(sequences):
    seq = fresh(sequences["tool_round_trip"])
    statuses = [p["status"] for p in seq]
    waiting_index = statuses.index("requires_action")
    for i, payload in enumerate(seq[: waiting_index + 1]):
        apply(payload, at(i))
    run = Run.objects.get(remote_id=seq[0]["id"])
    assert run.status == "requires_action" and run.pending_tool_calls
    # After outputs the run goes back to queued: accepted because it was observed later.
    after = seq[waiting_index + 1:]
    for j, payload in enumerate(after):
        apply(payload, at(100 + j))
    run.refresh_from_db()
    assert run.status == "completed"
    assert set(run.answered_call_ids) == {c["id"] for c in seq[waiting_index]["required_action"][
        "submit_tool_outputs"]["tool_calls"]}
    history = list(run.events.values_list("to_status", flat=True))
    assert history[history.index("requires_action") + 1] == "queued"
    # A late copy of the requires_action payload, concurrent with the last poll, is stale.
    assert not apply(seq[waiting_index], at(100 + len(after) - 1, 200)).applied


def test_in_progress_overlapping_requires_action_is_stale_until_outputs_are_answered(sequences):
    seq = fresh(sequences["tool_round_trip"])
    statuses = [p["status"] for p in seq]
    waiting = statuses.index("requires_action")
    before, after = seq[statuses.index("in_progress")], seq[waiting + 2]
    apply(seq[waiting], at(10, 12))
    assert not apply(before, at(11, 13)).applied  # concurrent, and nobody answered the calls
    run = Run.objects.get(remote_id=seq[0]["id"])
    run.answered_call_ids = sorted(ordering.call_ids(seq[waiting]["required_action"]))
    run.save()
    assert apply(after, at(11, 13)).applied  # the calls were answered: in_progress is the run moving on


def test_status_change_is_timelined_with_its_source_and_signalled_on_commit(
    sequences, django_capture_on_commit_callbacks
):
    seq = fresh(sequences["requires_action"])
    received = []
    handler = lambda sender, **kw: received.append((kw["old_status"], kw["new_status"], kw["source"]))  # noqa: E731
    action = []
    on_action = lambda sender, run, **kw: action.append(run.remote_id)  # noqa: E731
    signals.run_status_changed.connect(handler)
    signals.run_requires_action.connect(on_action)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            apply(seq[0], at(1, source="stream"))
            apply(seq[-1], at(2, source="poll"))
    finally:
        signals.run_status_changed.disconnect(handler)
        signals.run_requires_action.disconnect(on_action)
    assert received == [(None, "queued", "stream"), ("queued", "requires_action", "poll")]
    assert action == [seq[0]["id"]]
    events = RunEvent.objects.filter(run__remote_id=seq[0]["id"])
    assert [(e.from_status, e.to_status, e.source) for e in events] == [
        ("", "queued", "stream"), ("queued", "requires_action", "poll")]


def test_stream_events_fold_message_and_step_deltas(emulator):
    client = remote_client(emulator, "openai")
    assistant = client.create_assistant(model="gpt-4o", tools=[WEATHER_TOOL])
    stream = client.create_thread_and_run_stream(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "Hello ünïcode 【4:0†source】 [words:12]"}]})
    started = T0
    for event in stream:
        if event.name == "thread.message.completed":
            continue  # stop short of the final snapshot: the deltas alone must carry the text
        upsert.apply_event(event.name, event.data, connection="default", seen=Observation("stream", started, T0))
    message = Message.objects.get(role="assistant")
    streamed = client.list_messages(message.thread.remote_id)["data"][0]["content"][0]["text"]["value"]
    assert message.text == streamed and len(streamed.split()) == 12
    assert Thread.objects.count() == 1 and Run.objects.get().status == "completed"

    stream = client.create_thread_and_run_stream(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "get_weather for Paris"}]})
    for event in stream:
        if event.name != "thread.run.requires_action":
            upsert.apply_event(event.name, event.data, connection="default", seen=Observation("stream", T0, T0))
    step = RunStep.objects.get(type="tool_calls")
    call = step.tool_calls[0]
    assert call["function"]["name"] == "get_weather" and '"city"' in call["function"]["arguments"]


def test_merge_delta_like_the_sdks():
    snapshot = {"content": [{"type": "text", "text": {"value": "Hel", "annotations": []}}]}
    delta = {"content": [{"index": 0, "type": "text", "text": {"value": "lo"}}, {"index": 1, "type": "text",
                                                                                 "text": {"value": "!"}}]}
    merged = ordering.merge_delta(snapshot, delta)
    assert merged["content"][0] == {"type": "text", "text": {"value": "Hello", "annotations": []}}
    assert merged["content"][1]["text"]["value"] == "!"


# --- hypothesis: interleavings and duplicates always end in the true final state ----------------------

observation = st.tuples(st.integers(min_value=0, max_value=50), st.floats(0, 0.999), st.floats(0, 3), st.floats(0, 3))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(shape=st.sampled_from(["completed", "failed", "incomplete", "requires_action", "tool_round_trip"]),
       observations=st.lists(observation, min_size=1, max_size=25), data=st.data())
def test_random_interleavings_and_duplicates_end_in_the_true_final_state(sequences, shape, observations, data):
    """Payload i is the truth during [i, i+1). Each observation of it is generated at some g in that window,
    seen by a request sent up to 3 s before g and answered up to 3 s after; observations are applied in a
    random order, with duplicates. The last payload is always observed; a run that is not terminal is
    polled once more afterwards (as the poller does). The mirror must end in the last payload's state
    and must never leave a terminal status."""
    seq = fresh(sequences[shape])
    n = len(seq)
    obs = [(i % n, i % n + g, d1, d2) for i, g, d1, d2 in observations]
    obs.append((n - 1, n - 1 + 0.5, 0.1, 0.1))
    order = data.draw(st.permutations(obs))
    for index, g, d1, d2 in order:
        apply(seq[index], at(g - d1, g + d2))
    final = seq[-1]
    if final["status"] not in ("completed", "failed", "incomplete", "cancelled", "expired"):
        latest = max(g + d2 for _, g, _, d2 in obs)
        apply(final, at(latest + 1, latest + 1.1))
    run = Run.objects.get(remote_id=final["id"])
    assert run.status == final["status"]
    assert run.raw == final
    history = list(run.events.filter(kind="status").values_list("from_status", "to_status"))
    terminal = {"completed", "failed", "incomplete", "cancelled", "expired"}
    assert not any(a in terminal for a, _ in history)


def test_nul_characters_from_the_service_are_stored_not_crashed_on(sequences):
    """PostgreSQL cannot store U+0000 in text or jsonb; model output may carry one anyway."""
    payload = copy.deepcopy(fresh(sequences["completed"])[-1])
    payload["instructions"] = "before\x00after"
    payload["metadata"] = {"note\x00": "v\x00"}
    run = apply(payload, at(1)).row
    run.refresh_from_db()
    assert run.instructions == "before\ufffdafter"
    assert run.metadata == {"note\ufffd": "v\ufffd"} and run.raw["instructions"] == "before\ufffdafter"

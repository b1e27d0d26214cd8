"""The client under the emulator's fault injection: retries, delays, resets, cut streams, lost responses."""

import time

import pytest

from assistants_emulator import serve_in_thread
from assistants_emulator.pytest_plugin import TEST_API_KEY
from runs_app.assistants import AssistantsClient, errors
from runs_app.assistants.client import REQUEST_TAG
from tests.client_helpers import connection_settings, wait_for

TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


def make_client(emulator, *, sleeps=None, kind="azure_openai", real_sleep=False, **kwargs):
    """A client whose backoff sleeps are recorded (and only really slept with ``real_sleep``)."""

    def sleep(seconds):
        if sleeps is not None:
            sleeps.append(seconds)
        if real_sleep:
            time.sleep(seconds)

    return AssistantsClient("faulty", settings=connection_settings(kind, emulator), sleep=sleep,
                            rng=lambda: 0.0, **kwargs)


@pytest.fixture
def real_time_emulator():
    """An emulator at speed 1, whose 429s ask for retry-after-ms 1000 (the session one scales time)."""
    _, handle = serve_in_thread(api_key=TEST_API_KEY, speed=1, control=True)
    with handle:
        yield handle


def test_429_retry_after_is_honoured(real_time_emulator):
    client = make_client(real_time_emulator, sleeps=(sleeps := []), real_sleep=True)
    thread = client.create_thread()
    real_time_emulator.set_faults({"429": 1.0, "times": 1})
    started = time.monotonic()
    assert client.retrieve_thread(thread["id"])["id"] == thread["id"]
    elapsed = time.monotonic() - started
    assert sleeps == [1.0]  # the emulator's retry-after-ms, not the 0.5 s backoff
    assert 1.0 <= elapsed < 3.0


def test_persistent_429_surfaces_as_rate_limited_after_the_retries(emulator):
    client = make_client(emulator, sleeps=(sleeps := []))
    emulator.set_faults({"429": 1.0})
    with pytest.raises(errors.RateLimited) as caught:
        client.retrieve_thread("thread_any")
    assert len(sleeps) == client.max_retries
    assert sleeps == [caught.value.retry_after] * client.max_retries  # the server's delay, every time
    assert caught.value.request_id


def test_5xx_is_retried_then_surfaced(emulator):
    client = make_client(emulator, sleeps=(sleeps := []))
    thread = client.create_thread()
    emulator.set_faults({"5xx": 1.0, "times": 2})
    assert client.retrieve_thread(thread["id"])["id"] == thread["id"]
    assert len(sleeps) == 2
    emulator.set_faults({"5xx": 1.0})
    with pytest.raises(errors.ServerError) as caught:
        client.retrieve_thread(thread["id"])
    assert caught.value.status in (500, 503) and caught.value.request_id in str(caught.value)


def test_reset_connections_are_retried_for_reads(emulator):
    client = make_client(emulator, sleeps=(sleeps := []))
    thread = client.create_thread()
    emulator.set_faults({"reset": 1.0, "times": 1})
    assert client.retrieve_thread(thread["id"])["id"] == thread["id"]
    assert len(sleeps) == 1
    emulator.set_faults({"reset": 1.0})
    with pytest.raises(errors.ConnectionError) as caught:
        client.retrieve_thread(thread["id"])
    assert "failed before an answer" in str(caught.value)


def test_reset_create_run_is_settled_then_resent_once(emulator, assistant):
    """A reset before the service acted: the guard finds no tagged run, so the create is resent."""
    client = make_client(emulator)
    thread = client.create_thread()
    emulator.set_faults({"reset": 1.0, "times": 1, "match": r"^POST /threads/[^/]+/runs$"})
    run = client.create_run(thread["id"], assistant_id=assistant["id"])
    runs = client.list_runs(thread["id"])["data"]
    assert [r["id"] for r in runs] == [run["id"]]


@pytest.mark.parametrize("fault", ["drop", "malformed"])
def test_lost_create_response_never_duplicates_the_run(emulator, assistant, fault):
    """The emulator creates the run, then the response is lost: exactly one run exists afterwards."""
    client = make_client(emulator)
    thread = client.create_thread()
    emulator.set_faults({fault: 1.0, "times": 1, "match": r"^POST /threads/[^/]+/runs$"})
    run = client.create_run(thread["id"], assistant_id=assistant["id"], metadata={"who": "guard-test"})
    runs = client.list_runs(thread["id"])["data"]
    assert len(runs) == 1
    assert runs[0]["id"] == run["id"] and runs[0]["metadata"][REQUEST_TAG] == run["metadata"][REQUEST_TAG]


def test_lost_create_thread_and_run_response_never_duplicates_the_thread_or_the_run(emulator, assistant):
    """One POST /threads/runs; after a lost response the thread is found among the newest (GET /threads) by the
    request tag it carries, and its run by the same tag: nothing is sent twice."""
    client = make_client(emulator)
    before = {t["id"] for t in client.list_threads(limit=100)["data"]}
    emulator.set_faults({"drop": 1.0, "times": 1, "match": r"^POST /threads/runs$"})
    run = client.create_thread_and_run(assistant_id=assistant["id"],
                                       thread={"messages": [{"role": "user", "content": "hi"}]})
    assert emulator.faults_injected() == {"drop": 1}  # the response was lost
    new_threads = [t for t in client.list_threads(limit=100)["data"] if t["id"] not in before]
    assert [t["id"] for t in new_threads] == [run["thread_id"]]
    assert new_threads[0]["metadata"][REQUEST_TAG] == run["metadata"][REQUEST_TAG]
    assert [r["id"] for r in client.list_runs(run["thread_id"])["data"]] == [run["id"]]


def test_a_lost_create_thread_and_run_is_not_resent_where_threads_cannot_be_listed(emulator, assistant):
    """api.openai.com has no GET /threads: the lost create cannot be looked for, so it is reported, not resent."""
    client = make_client(emulator, kind="openai")
    threads_before = len(emulator.state.threads)
    emulator.set_faults({"drop": 1.0, "times": 1, "match": r"^POST /threads/runs$"})
    with pytest.raises(errors.AssistantsError):
        client.create_thread_and_run(assistant_id=assistant["id"])
    assert emulator.faults_injected() == {"drop": 1}
    assert len(emulator.state.threads) == threads_before + 1  # the one request took effect, once


def test_lost_submit_tool_outputs_response_is_settled(emulator, remote):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    asst = remote.create_assistant(model="gpt-4o", tools=[tool])
    client = make_client(emulator)
    run = client.create_thread_and_run(assistant_id=asst["id"],
                                       thread={"messages": [{"role": "user", "content": "please lookup"}]})
    waiting = wait_for(lambda: (r := client.retrieve_run(run["thread_id"], run["id"]))["status"] == "requires_action"
                       and r)
    call_id = waiting["required_action"]["submit_tool_outputs"]["tool_calls"][0]["id"]
    emulator.set_faults({"drop": 1.0, "times": 1, "match": "submit_tool_outputs"})
    after = client.submit_tool_outputs(run["thread_id"], run["id"],
                                       tool_outputs=[{"tool_call_id": call_id, "output": "42"}])
    assert after["status"] != "requires_action"
    final = wait_for(lambda: (r := client.retrieve_run(run["thread_id"], run["id"]))["status"] in TERMINAL and r)
    assert final["status"] == "completed"


def test_cut_stream_is_reported_and_the_run_goes_on(emulator, assistant):
    client = make_client(emulator)
    thread = client.create_thread(messages=[{"role": "user", "content": "a long answer [words:40]"}])
    emulator.set_faults({"cut": {"p": 1.0, "after": 3}, "times": 1})
    stream = client.create_run_stream(thread["id"], assistant_id=assistant["id"])
    names = []
    with pytest.raises(errors.StreamInterrupted, match="poll the run") as caught:
        for event in stream:
            names.append(event.name)
    assert names == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert caught.value.maybe_applied and not stream.finished
    run_id = client.list_runs(thread["id"])["data"][0]["id"]
    final = wait_for(lambda: (r := client.retrieve_run(thread["id"], run_id))["status"] in TERMINAL and r)
    assert final["status"] == "completed"


def test_idle_stream_raises_timeout(emulator, assistant, settings):
    settings.RUNS_APP = {**settings.RUNS_APP, "STREAM_IDLE_TIMEOUT": 0.3}
    client = make_client(emulator)
    thread = client.create_thread(messages=[{"role": "user", "content": "think hard [slow:60]"}])
    with pytest.raises(errors.Timeout, match="idle"):
        list(client.create_run_stream(thread["id"], assistant_id=assistant["id"]))


def test_malformed_json_body_is_a_clear_error(emulator):
    client = make_client(emulator)
    thread = client.create_thread()
    emulator.set_faults({"malformed": 1.0})
    with pytest.raises(errors.MalformedResponse) as caught:
        client.retrieve_thread(thread["id"])
    assert "not JSON" in str(caught.value) and caught.value.status == 200 and caught.value.request_id


def test_connect_failure_is_retried_and_reported(emulator):
    conf = {**connection_settings("azure_openai", emulator), "ENDPOINT": "http://127.0.0.1:9"}
    sleeps = []
    client = AssistantsClient("closed", settings=conf, sleep=sleeps.append, rng=lambda: 0.0)
    with pytest.raises(errors.ConnectionError, match="Could not connect") as caught:
        client.create_run("thread_x", assistant_id="asst_x")
    assert sleeps == [0.5, 1.0]  # a create that never left is safe to resend
    assert not caught.value.maybe_applied

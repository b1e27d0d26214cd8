"""Management commands against the emulator: runs_import_thread, runs_refresh, runs_sync_status."""

import datetime as dt
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from runs_app import services
from runs_app.models import ConnectionState, PollerLane, Run, Thread
from tests.client_helpers import wait_for

pytestmark = pytest.mark.django_db

TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


def run_command(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def remote_status(remote, run, statuses):
    """Wait until the service shows the run in one of ``statuses``."""
    return wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] in statuses)


# --- runs_import_thread ------------------------------------------------------------------------------

def test_import_thread_mirrors_runs_and_messages_and_prints_counts(mirror_settings, remote, assistant):
    thread = remote.create_thread(messages=[{"role": "user", "content": "Hello there"}])
    run = remote.create_run(thread["id"], assistant_id=assistant["id"])
    wait_for(lambda: remote.retrieve_run(thread["id"], run["id"])["status"] == "completed")

    out, _ = run_command("runs_import_thread", thread["id"])

    assert f"Imported thread {thread['id']}" in out and "1 run, 2 messages" in out
    mirrored = Thread.objects.get(remote_id=thread["id"])
    assert mirrored.runs.get().status == "completed"
    assert mirrored.messages.count() == 2


def test_import_unknown_thread_is_a_clear_error_with_the_request_id(mirror_settings):
    with pytest.raises(CommandError) as raised:
        run_command("runs_import_thread", "thread_doesnotexist")
    message = str(raised.value)
    assert "thread_doesnotexist" in message and "404" in message and "Request id:" in message
    assert mirror_settings["CONNECTIONS"]["default"]["API_KEY"] not in message
    assert not Thread.objects.exists()


def test_import_rejects_a_malformed_thread_id_before_calling_the_service(mirror_settings):
    with pytest.raises(CommandError, match="Give a thread id"):
        run_command("runs_import_thread", "not a thread id!")


def test_import_names_the_configured_connections_when_given_an_unknown_one(mirror_settings):
    with pytest.raises(CommandError, match="Unknown connection 'nope'.*default"):
        run_command("runs_import_thread", "thread_x", "--connection", "nope")


# --- runs_refresh ------------------------------------------------------------------------------------

def mirrored_run(assistant, text="Hello"):
    thread = services.thread_create(messages=[{"role": "user", "content": text}])
    return services.run_create(thread=thread, assistant_id=assistant["id"])


def test_refresh_brings_the_mirror_up_to_the_service(mirror_settings, remote, assistant):
    run = mirrored_run(assistant)
    assert run.status == "queued"
    remote_status(remote, run, {"completed"})

    out, _ = run_command("runs_refresh", run.remote_id)

    assert out.strip() == f"{run.remote_id}: completed"
    run.refresh_from_db()
    assert run.status == "completed" and run.messages.filter(role="assistant").exists()


def test_refresh_reports_each_failure_and_goes_on(mirror_settings, remote, assistant):
    gone, alive = mirrored_run(assistant), mirrored_run(assistant)
    remote_status(remote, gone, TERMINAL)
    remote_status(remote, alive, TERMINAL)
    # The service forgets one thread (deleted elsewhere): its run's refresh fails with the service's 404.
    remote._request("DELETE", f"/threads/{gone.thread.remote_id}")

    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="2 of 3 runs could not be refreshed"):
        call_command("runs_refresh", gone.remote_id, "run_notmirrored", alive.remote_id, stdout=out, stderr=err)

    assert f"{alive.remote_id}: completed" in out.getvalue()
    errors = err.getvalue()
    assert f"{gone.remote_id}: refresh failed: The service answered 404" in errors and "Request id:" in errors
    assert "run_notmirrored: not in the mirror; import its thread first" in errors


def test_refresh_all_active_refreshes_every_run_not_yet_terminal(mirror_settings, remote, assistant):
    slow = mirrored_run(assistant, "[slow:600] a long answer")
    done = mirrored_run(assistant, "quick")
    remote_status(remote, done, {"completed"})
    remote_status(remote, slow, {"in_progress"})

    out, _ = run_command("runs_refresh", "--all-active")

    assert out.splitlines() == [f"{slow.remote_id}: in_progress", f"{done.remote_id}: completed"]
    out, _ = run_command("runs_refresh", "--all-active")  # the completed run is no longer active
    assert out.splitlines() == [f"{slow.remote_id}: in_progress"]


def test_refresh_needs_run_ids_or_all_active(mirror_settings):
    with pytest.raises(CommandError, match="--all-active"):
        run_command("runs_refresh")
    out, _ = run_command("runs_refresh", "--all-active")
    assert out.strip() == "No active runs to refresh."


# --- runs_sync_status --------------------------------------------------------------------------------

@pytest.fixture
def engine_state(mirror_settings, assistant):
    """Two active runs (one claimed), a paused connection and two lanes, one of them stale."""
    slow = mirrored_run(assistant, "[slow:600] a long answer")
    waiting = mirrored_run(assistant, "[slow:600] another")
    now = timezone.now()
    Run.objects.filter(pk=slow.pk).update(synced_at=now - dt.timedelta(seconds=30), next_poll_at=now)
    Run.objects.filter(pk=waiting.pk).update(synced_at=now - dt.timedelta(seconds=10),
                                             claimed_by="lane", claimed_until=now + dt.timedelta(seconds=20))
    ConnectionState.objects.create(connection="default", requests=42, rate_limited=3,
                                   paused_until=now + dt.timedelta(seconds=50), pause_reason="429 from the service")
    PollerLane.objects.create(lane=0, token="t0", heartbeat_at=now - dt.timedelta(seconds=2), cycles=7, runs_polled=9)
    PollerLane.objects.create(lane=1, token="t1", heartbeat_at=now - dt.timedelta(hours=1), cycles=1, runs_polled=0)
    return slow, waiting


def test_sync_status_json_shows_what_is_polled(engine_state):
    out, _ = run_command("runs_sync_status", "--json")
    status = json.loads(out)

    active = status["active_runs"]
    assert active["total"] == 2 and active["by_connection"] == {"default": {"queued": 2}}
    assert active["due_now"] == 1 and active["claimed"] == 1 and active["never_synced"] == 0
    assert 30 <= status["lag_seconds"]["max"] < 40 and 20 <= status["lag_seconds"]["p50"] < 30
    [conn] = status["connections"]
    assert conn["connection"] == "default" and conn["requests"] == 42 and conn["rate_limited"] == 3
    assert conn["paused"] and conn["pause_reason"] == "429 from the service"
    lanes = {lane["lane"]: lane for lane in status["lanes"]}
    assert lanes[0]["alive"] and lanes[0]["cycles"] == 7 and lanes[0]["runs_polled"] == 9
    assert not lanes[1]["alive"] and lanes[1]["heartbeat_age"] >= 3600
    assert status["stuck"] == 0 and status["expiring"] == 0


def test_sync_status_prints_tables_by_default(engine_state):
    out, _ = run_command("runs_sync_status")
    assert "Active runs: 2  due now: 1  claimed: 1" in out
    assert "Lag (now - synced_at): max 3" in out
    rows = [line.split()[:3] for line in out.splitlines()]
    assert ["default", "queued", "2"] in rows  # active runs by connection and status
    assert ["default", "42", "3"] in rows  # requests and rate limits of the connection
    assert ["0", "yes", "2.0"] in rows and ["1", "no", "3600.0"] in rows  # lanes: alive, heartbeat age


def test_sync_status_on_an_empty_mirror(mirror_settings):
    out, _ = run_command("runs_sync_status")
    assert "Active runs: 0" in out and "max -" in out and "(none)" in out
    assert json.loads(run_command("runs_sync_status", "--json")[0])["lag_seconds"] == {"max": None, "p50": None}

"""The poller: adaptive schedule, claims that never overlap, pauses on 429, watchdogs, and real q clusters."""

import datetime as dt
import re
import threading

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone

from assistants_emulator import serve_in_thread
from runs_app import poller, services, signals
from runs_app.assistants import AssistantsError
from runs_app.models import ConnectionState, PollerLane, Run, Thread
from tests.client_helpers import wait_for
from tests.conftest import FAST_POLLER, QCluster, emulator_connection
from tests.factories import finished_by_the_poller, remote_client, weather_assistant


def make_run(thread, status="in_progress", **fields):
    return Run.objects.create(thread=thread, remote_id=f"run_{Run.objects.count()}_{id(fields)}", status=status,
                              next_poll_at=timezone.now() - dt.timedelta(seconds=1), **fields)


# --- schedule -----------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_next_poll_delay_looks_where_a_change_is_likely(settings):
    settings.RUNS_APP = {**settings.RUNS_APP, **FAST_POLLER, "POLL_FAST": 1.0, "POLL_INTERVAL": 2.0,
                         "POLL_SLOW": 15.0, "ACTIVE_WINDOW": 15.0, "POLL_WAITING": 5.0}
    now = timezone.now()
    run = Run(status="queued", status_changed_at=now - dt.timedelta(seconds=0.2))
    assert poller.next_poll_delay(run, now, lengths=None) == 1.0  # it starts within about a second
    run.status = "in_progress"
    run.status_changed_at = now - dt.timedelta(seconds=3)
    assert poller.next_poll_delay(run, now, lengths=None) == 2.0
    run.status_changed_at = now - dt.timedelta(seconds=75)
    assert poller.next_poll_delay(run, now, lengths=None) == 8.0
    run.status_changed_at = now - dt.timedelta(hours=1)
    assert poller.next_poll_delay(run, now, lengths=None) == 15.0
    run.status = "requires_action"
    run.expires_at = now + dt.timedelta(minutes=10)
    assert poller.next_poll_delay(run, now, lengths=None) == 5.0
    run.expires_at = now + dt.timedelta(seconds=2)
    assert poller.next_poll_delay(run, now, lengths=None) == 3.0  # on time for the expiry
    run.status = "completed"
    assert poller.next_poll_delay(run, now, lengths=None) is None


@pytest.mark.django_db
def test_no_look_before_the_quickest_run_of_the_assistant_could_have_ended(settings):
    from runs_app.poller.schedule import LEARN_AFTER_RUNS, LENGTH_MARGIN, RunLengths

    settings.RUNS_APP = {**settings.RUNS_APP, **FAST_POLLER, "POLL_INTERVAL": 2.0, "ACTIVE_WINDOW": 300.0}
    now = timezone.now()
    thread = Thread.objects.create(remote_id="thread_lengths")
    for i in range(LEARN_AFTER_RUNS):  # this assistant's runs took 20 to 39 s
        Run.objects.create(thread=thread, remote_id=f"run_done_{i}", assistant_id="asst_slow", status="completed",
                           started_at=now - dt.timedelta(seconds=100), completed_at=now - dt.timedelta(seconds=80 - i))
    lengths = RunLengths()
    assert lengths.shortest("default", "asst_slow") == 20.0 and lengths.shortest("default", "asst_new") is None
    young = Run(status="in_progress", assistant_id="asst_slow", connection="default", status_changed_at=now,
                started_at=now - dt.timedelta(seconds=4))
    assert poller.next_poll_delay(young, now, lengths=lengths) == pytest.approx(20 - LENGTH_MARGIN - 4)
    young.started_at = now - dt.timedelta(seconds=19)
    assert poller.next_poll_delay(young, now, lengths=lengths) == 2.0  # now it may end any time
    young.assistant_id = "asst_new"  # nothing learned yet: every POLL_INTERVAL from the start
    young.started_at = now
    assert poller.next_poll_delay(young, now, lengths=lengths) == 2.0


# --- claims -------------------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_concurrent_lanes_never_claim_the_same_run(settings):
    settings.RUNS_APP = {**settings.RUNS_APP, "CLAIM_BATCH": 7}
    thread = Thread.objects.create(remote_id="thread_claims")
    for _ in range(60):
        make_run(thread)
    claims, barrier = {}, threading.Barrier(4)

    def lane(name):
        try:
            barrier.wait()
            got = []
            for _ in range(60):  # bounded: a broken claim would otherwise loop forever
                batch = poller.claim_due_runs(name)
                if not batch:
                    break
                got += [r.pk for r in batch]
            claims[name] = got
        finally:
            close_old_connections()
            connection.close()

    workers = [threading.Thread(target=lane, args=(f"lane{i}",)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    everything = [pk for got in claims.values() for pk in got]
    assert len(everything) == len(set(everything)) == 60
    assert sum(1 for got in claims.values() if got) >= 1


@pytest.mark.django_db
def test_a_lapsed_claim_is_taken_over():
    thread = Thread.objects.create(remote_id="thread_lease")
    run = make_run(thread, claimed_by="dead-lane", claimed_until=timezone.now() - dt.timedelta(seconds=1))
    held = make_run(thread, claimed_by="live-lane", claimed_until=timezone.now() + dt.timedelta(seconds=30))
    claimed = poller.claim_due_runs("new-lane")
    assert [r.pk for r in claimed] == [run.pk]
    assert Run.objects.get(pk=held.pk).claimed_by == "live-lane"


@pytest.mark.django_db
def test_a_retry_after_beyond_the_cap_pauses_the_whole_connection(mirror_settings, settings, emulator, assistant):
    run = services.thread_and_run_create(assistant_id=assistant["id"])
    other = services.thread_and_run_create(assistant_id=assistant["id"])
    # The emulator (speed 50) asks for 20 ms: beyond this cap, a quota spent for long (a shorter one only throttles).
    settings.RUNS_APP = {**mirror_settings, "RETRY_AFTER_CAP": 0.01}
    emulator.set_faults({"429": 1.0})
    claimed = poller.claim_due_runs("lane-a", now=timezone.now() + dt.timedelta(seconds=1))
    before = timezone.now()
    outcome = poller.poll_claimed([r for r in claimed if r.pk == run.pk][0], "lane-a")
    assert outcome == "paused"
    state = ConnectionState.objects.get(connection="default")
    # The emulator (speed 50) asks for 20 ms: compare with the poll's start, and claim "during" the pause.
    assert state.paused_until > before and state.rate_limited == 1 and "Rate limit" in state.pause_reason
    Run.objects.filter(pk=other.pk).update(claimed_by="", claimed_until=None)
    during = state.paused_until - dt.timedelta(milliseconds=1)
    assert poller.claim_due_runs("lane-b", now=during) == []  # every run of the connection waits
    after = max(state.paused_until, Run.objects.get(pk=other.pk).next_poll_at) + dt.timedelta(milliseconds=1)
    assert other.pk in [r.pk for r in poller.claim_due_runs("lane-b", now=after)]  # ... until the pause ends


@pytest.mark.django_db
def test_a_terminal_run_whose_steps_could_not_be_fetched_is_polled_until_they_are(mirror_settings, emulator,
                                                                                   assistant, remote):
    """The soak once ended with a completed run and no steps or text: the poll that saw it completed failed to
    fetch its steps, the next poll found the same run object and released it as terminal. Never again."""
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "answer [words:4]"}]})
    thread_id = run.thread.remote_id
    wait_for(lambda: remote.retrieve_run(thread_id, run.remote_id)["status"] == "completed")
    emulator.set_faults({"5xx": 1.0, "match": r"GET /threads/[^/]+/runs/[^/]+/steps"})
    [claimed] = poller.claim_due_runs("lane-a", now=timezone.now() + dt.timedelta(seconds=1))
    assert poller.poll_claimed(claimed, "lane-a") == "error"
    run.refresh_from_db()
    assert run.status == "completed" and run.steps.count() == 0 and run.next_poll_at is not None
    assert services.details_owed(run)

    # Every later poll sees the same run object; it must still fetch what is owed.
    emulator.set_faults({})
    later = run.next_poll_at + dt.timedelta(milliseconds=1)
    [claimed] = poller.claim_due_runs("lane-b", now=later)
    assert poller.poll_claimed(claimed, "lane-b") == "changed"
    run.refresh_from_db()
    remote_steps = list(remote.iter_run_steps(thread_id, run.remote_id))
    assert remote_steps and {s.remote_id for s in run.steps.all()} == {s["id"] for s in remote_steps}
    [message] = [m for m in remote.iter_messages(thread_id, run_id=run.remote_id) if m["role"] == "assistant"]
    assert run.messages.get(role="assistant").text == message["content"][0]["text"]["value"]
    assert run.next_poll_at is None and not services.details_owed(run)
    assert poller.claim_due_runs("lane-c", now=later + dt.timedelta(hours=1)) == []  # owed nothing: never due


@pytest.mark.django_db
def test_a_failed_refresh_leaves_the_run_owed_its_steps(mirror_settings, emulator, assistant, remote):
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "answer [words:4]"}]})
    wait_for(lambda: remote.retrieve_run(run.thread.remote_id, run.remote_id)["status"] == "completed")
    Run.objects.filter(pk=run.pk).update(next_poll_at=None)  # as if nobody meant to poll it
    emulator.set_faults({"5xx": 1.0, "match": r"GET /threads/[^/]+/messages"})
    with pytest.raises(AssistantsError):
        services.run_refresh(run=run)
    run.refresh_from_db()
    assert run.status == "completed" and run.next_poll_at is not None
    assert run.pk in [r.pk for r in poller.claim_due_runs("lane-a", now=run.next_poll_at)]


@pytest.mark.django_db
def test_stuck_and_expiring_runs_are_flagged_and_signalled_once(settings):
    settings.RUNS_APP = {**settings.RUNS_APP, "STUCK_AFTER": {"queued": 60}, "EXPIRING_WITHIN": 120}
    thread = Thread.objects.create(remote_id="thread_watch")
    now = timezone.now()
    stuck = make_run(thread, status="queued", status_changed_at=now - dt.timedelta(minutes=5))
    fresh = make_run(thread, status="queued", status_changed_at=now)
    expiring = make_run(thread, status="requires_action", expires_at=now + dt.timedelta(seconds=30))
    later = make_run(thread, status="requires_action", expires_at=now + dt.timedelta(minutes=9))
    seen = []
    on_stuck = lambda sender, run, **kw: seen.append(("stuck", run.pk))  # noqa: E731
    on_expiring = lambda sender, run, **kw: seen.append(("expiring", run.pk))  # noqa: E731
    signals.run_stuck.connect(on_stuck)
    signals.run_expiring.connect(on_expiring)
    try:
        assert poller.flag_stuck_and_expiring() == {"stuck": 1, "expiring": 1}
        assert poller.flag_stuck_and_expiring() == {"stuck": 0, "expiring": 0}
    finally:
        signals.run_stuck.disconnect(on_stuck)
        signals.run_expiring.disconnect(on_expiring)
    assert seen == [("stuck", stuck.pk), ("expiring", expiring.pk)]
    assert set(Run.objects.stuck().values_list("pk", flat=True)) == {stuck.pk}
    assert set(Run.objects.expiring_soon().values_list("pk", flat=True)) == {expiring.pk}
    assert fresh.pk and later.pk


@pytest.mark.django_db
def test_watchdog_schedule_exists_after_migrate():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="runs_app.tasks.poller_watchdog")
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1


# --- with real q clusters --------------------------------------------------------------------------------

def test_every_status_path_ends_right_with_steps_and_text(q_cluster, assistant, remote):
    q_cluster()
    texts = {
        "completed": "tell me a story",
        "failed": "break [fail:server_error]",
        "incomplete": "short [incomplete]",
        "cancelled": "slow one [slow:60]",
        "tools": "get_weather in Lima",
    }
    runs = {k: services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": v}]}) for k, v in texts.items()}
    wait_for(lambda: Run.objects.get(pk=runs["cancelled"].pk).status == "in_progress")
    services.run_cancel(run=Run.objects.get(pk=runs["cancelled"].pk))
    waiting = wait_for(lambda: (r := Run.objects.get(pk=runs["tools"].pk)).status == "requires_action" and r)
    services.run_submit_tool_outputs(run=waiting, tool_outputs=[
        {"tool_call_id": c["id"], "output": "cloudy"} for c in waiting.pending_tool_calls])
    for key, expected in [("completed", "completed"), ("failed", "failed"), ("incomplete", "incomplete"),
                          ("cancelled", "cancelled"), ("tools", "completed")]:
        run = finished_by_the_poller(runs[key])
        truth = remote.retrieve_run(run.thread.remote_id, run.remote_id)
        assert run.status == truth["status"] == expected, key
        remote_steps = list(remote.iter_run_steps(run.thread.remote_id, run.remote_id))
        assert {s.remote_id: s.status for s in run.steps.all()} == {s["id"]: s["status"] for s in remote_steps}
        remote_messages = list(remote.iter_messages(run.thread.remote_id, run_id=run.remote_id))
        mirrored = {m.remote_id: m.text for m in run.messages.all()}
        assert mirrored == {m["id"]: "\n".join(b["text"]["value"] for b in m["content"]) for m in remote_messages}
    assert "cloudy" in Run.objects.get(pk=runs["tools"].pk).messages.get(role="assistant").text
    history = list(Run.objects.get(pk=runs["tools"].pk).events.filter(kind="status").values_list("to_status",
                                                                                                 flat=True))
    assert history[-1] == "completed" and "requires_action" in history


@pytest.mark.slow  # its own QCluster, on an emulator whose runs expire in 2 s
def test_a_run_left_waiting_for_tool_outputs_expires_and_its_steps_expire_with_it(transactional_db, settings):
    _, short = serve_in_thread(api_key="k-expiry-cnry7-0001", speed=50, expire_after=2, control=True)
    with short:
        settings.RUNS_APP = {"CONNECTIONS": {"default": emulator_connection(short)}, **FAST_POLLER}
        asst = weather_assistant(remote_client(short))
        cluster = QCluster(settings.RUNS_APP)
        try:
            # The run expires 2 s after it is created: start it only once the poller runs (a slow machine
            # takes longer than that to start a q cluster), so the mirror sees it wait before it expires.
            wait_for(lambda: PollerLane.objects.filter(cycles__gt=0).exists(), timeout=60)
            run = services.thread_and_run_create(assistant_id=asst["id"], thread={"messages": [
                {"role": "user", "content": "get_weather please"}]})
            wait_for(lambda: Run.objects.get(pk=run.pk).status == "requires_action", timeout=20)
            run = finished_by_the_poller(run)
            assert run.status == "expired" and run.expires_at is None
            assert [(s.type, s.status) for s in run.steps.all()] == [("tool_calls", "expired")]
        finally:
            PollerLane.objects.update(token="")
            cluster.stop()


def test_run_created_elsewhere_on_a_tracked_thread_appears(q_cluster, assistant, remote):
    thread = services.thread_create()
    q_cluster()
    outside = remote.create_run(thread.remote_id, assistant_id=assistant["id"])  # not through runs_app
    run = wait_for(lambda: Run.objects.filter(remote_id=outside["id"]).first(), timeout=20)
    assert finished_by_the_poller(run).status == "completed"
    assert run.events.first().source == "list"


def test_faults_delay_but_never_corrupt_the_mirror(q_cluster, emulator, assistant, remote):
    q_cluster()
    runs = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": f"run {i} [words:{5 + i}]"}]}) for i in range(8)]
    emulator.set_faults({"429": 0.1, "5xx": 0.05, "reset": 0.05})
    mirrored = [finished_by_the_poller(run, timeout=60) for run in runs]
    emulator.set_faults({})  # the truth is read without faults, so the check itself cannot flake
    for i, run in enumerate(mirrored):
        truth = remote.retrieve_run(run.thread.remote_id, run.remote_id)
        assert run.status == truth["status"] == "completed"
        assert run.total_tokens == truth["usage"]["total_tokens"]
        assert len(run.messages.get(role="assistant").text.split()) == 5 + i


def test_killing_a_worker_mid_cycle_loses_nothing(q_cluster, assistant, remote, settings):
    """The killed cluster's lane is started again by the new cluster's lane watcher once it has been silent
    for LANE_STALE_AFTER: no per-minute watchdog (removed here) and no new run needed."""
    from django_q.models import Schedule

    from runs_app.apps import WATCHDOG_FUNC

    Schedule.objects.filter(func=WATCHDOG_FUNC).delete()
    settings.RUNS_APP = {**settings.RUNS_APP, "LANE_STALE_AFTER": 3.0}
    first = q_cluster(LANE_STALE_AFTER=3.0)
    slow = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": f"slow {i} [slow:2]"}]}) for i in range(4)]
    wait_for(lambda: PollerLane.objects.filter(heartbeat_at__isnull=False, cycles__gt=2).exists(), timeout=20)
    first.kill()
    dead_token = PollerLane.objects.get(lane=0).token
    q_cluster(LANE_STALE_AFTER=3.0)
    wait_for(lambda: PollerLane.objects.get(lane=0).token != dead_token, timeout=20)
    for run in slow:
        assert finished_by_the_poller(run, timeout=40).status == "completed"


def test_a_silent_lane_is_started_again_within_lane_stale_after(q_cluster, assistant, settings):
    """A lane whose task is gone (its worker killed) is started again by the q workers' lane watcher, without
    waiting for the per-minute watchdog (removed here) or a new run."""
    from django_q.models import Schedule

    from runs_app.apps import WATCHDOG_FUNC

    Schedule.objects.filter(func=WATCHDOG_FUNC).delete()
    lanes = {"POLLER_LANES": 2, "LANE_STALE_AFTER": 2.0}
    settings.RUNS_APP = {**settings.RUNS_APP, **lanes}  # this process starts both lanes when the run is created
    q_cluster(**lanes)
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": "keep the lanes busy [slow:30]"}]})
    wait_for(lambda: PollerLane.objects.filter(cycles__gt=1).count() == 2, timeout=30)
    # Lane 1's task sees its token gone and stops without a successor: as if its worker had been killed.
    PollerLane.objects.filter(lane=1).update(token="dead", heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    wait_for(lambda: PollerLane.objects.get(lane=1).token != "dead", timeout=10, interval=0.1)
    restarted = PollerLane.objects.get(lane=1)
    wait_for(lambda: PollerLane.objects.get(lane=1).cycles > restarted.cycles, timeout=10)  # and it runs
    services.run_cancel(run=Run.objects.get(pk=run.pk))


def test_a_slow_pass_keeps_beating(q_cluster, emulator, assistant):
    """Each request takes 1.5 s here, longer than LANE_STALE_AFTER: the heartbeat thread keeps the lane alive,
    so no other task takes it over mid-pass."""
    cluster = q_cluster(LANE_STALE_AFTER=1.0, POLL_THREADS=1)
    runs = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": f"slow {i} [slow:20]"}]}) for i in range(3)]
    wait_for(lambda: PollerLane.objects.filter(cycles__gt=1).exists(), timeout=30)
    emulator.set_faults({"latency": [1.5, 1.5]})
    try:
        ages = []
        deadline = timezone.now() + dt.timedelta(seconds=6)
        while timezone.now() < deadline:
            lane = PollerLane.objects.get(lane=0)
            ages.append((timezone.now() - lane.heartbeat_at).total_seconds())
            threading.Event().wait(0.1)
        polled = PollerLane.objects.get(lane=0).runs_polled
    finally:
        emulator.set_faults({})
    assert max(ages) < 1.0, f"the heartbeat went {max(ages):.2f} s old during slow passes"
    assert polled > 0 and "taken over" not in cluster.output()
    for run in runs:
        services.run_cancel(run=Run.objects.get(pk=run.pk))


def test_two_clusters_never_poll_the_same_run_in_one_cycle(q_cluster, assistant, settings):
    lanes = {"POLLER_LANES": 2, "CLAIM_BATCH": 3}
    settings.RUNS_APP = {**settings.RUNS_APP, **lanes}
    debug = {"RUNS_APP_POLLER_LOG_LEVEL": "DEBUG"}
    a = q_cluster(env=debug, **lanes)
    b = q_cluster(env=debug, **lanes)
    runs = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": f"r{i} [slow:1]"}]}) for i in range(12)]
    for run in runs:
        assert finished_by_the_poller(run, timeout=40).status == "completed"
    PollerLane.objects.update(token="")
    logs = a.stop() + b.stop()
    events = []
    for line in logs.splitlines():
        match = re.match(r"^(\S+ \S+) DEBUG runs_app\.poller (claim|release) ([0-9a-f]{32}) (.+)$", line)
        if match:
            stamp, kind, token, ids = match.groups()
            events.append((stamp, kind == "claim", token, ids.split()))
    events.sort(key=lambda e: (e[0], e[1]))  # the two clusters' logs merged in time; releases first on a tie
    assert len({token for _, is_claim, token, _ in events if is_claim}) == 2, "both lanes took part"
    holders: dict[str, str] = {}
    for _, is_claim, token, ids in events:
        for run_id in ids:
            if is_claim:
                assert holders.get(run_id) is None, f"{run_id} claimed by two lanes at once"
                holders[run_id] = token
            else:
                assert holders.pop(run_id, None) == token
    assert holders == {}

"""Lanes: self-re-enqueuing django-q2 tasks that loop claim → poll → sleep for ``CYCLE_SECONDS``, their heartbeats,
the watcher in every q worker that starts silent lanes again, and waking them when a run needs polling."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from django.db import close_old_connections, connection, transaction
from django.db.models import F, Min, Q
from django.utils import timezone
from django_q.tasks import async_task

from runs_app.assistants import AssistantsClient
from runs_app.conf import app_settings
from runs_app.models import ConnectionState, PollerLane, Run, Thread
from runs_app.poller.budget import Budget
from runs_app.poller.budget import take as budget_take
from runs_app.poller.claims import claim_due_runs
from runs_app.poller.discovery import discover_due_threads, discover_new_threads
from runs_app.poller.polling import (
    ConnectionCounters,
    apply_changes,
    fetch_owed_details,
    poll_claimed,
    release_changed,
    release_unchanged,
)
from runs_app.poller.watchdogs import probe_idle_connections

logger = logging.getLogger("runs_app.poller")

POLL_TASK = "runs_app.tasks.poll_lane"


def run_lane(lane: int, token: str, *, seconds: float | None = None) -> dict:
    """One lane's cycle: poll due runs until ``seconds`` pass. Exits early if another cycle took the lane."""
    seconds = app_settings.CYCLE_SECONDS if seconds is None else float(seconds)
    deadline = time.monotonic() + seconds
    stats = {"polled": 0, "cycles": 0, "discovered": 0}
    threads = max(1, app_settings.POLL_THREADS)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"runs-poll-{lane}") if threads > 1 else None
    beat = None if connection.in_atomic_block else _Heartbeat(lane, token)  # (a test's transaction: no thread)
    if beat is not None:
        beat.start()
    try:
        # Few writes a pass, none while idle but the lane's own row: on SQLite every write waits its turn for the
        # one writer (and a waiting writer backs off), so a pass's bookkeeping shares statements.
        while time.monotonic() < deadline:
            if beat is not None and beat.lost.is_set():
                return _stopped(lane, stats)
            with transaction.atomic():  # one turn at the writer: the budget and the claims
                runs, clients, budgets = claim_within_budgets(token)
            counters, unchanged, changed, applied, failed = ConnectionCounters(), [], [], [], set()
            deferred: list = []  # (run, next poll) of the runs a 429 put off
            each = map if pool is None else partial(_each_in_pool, pool)
            if runs:
                jobs = [(run, token, counters, unchanged, changed, clients[run.connection], deferred) for run in runs]
                list(each(lambda job: _poll(*job), jobs))  # requests only
                with transaction.atomic():  # one turn: what the pass saw
                    changed += release_unchanged(unchanged, token)
                    applied = apply_changes(changed)
                failed = fetch_owed_details(changed, applied, each)  # requests (and their own writes)
            with transaction.atomic():  # one turn: releases and the pass's bookkeeping
                release_changed(applied, failed, token, deferred=deferred)
                counters.flush(unused_budget={b.connection: b.unused() for b in budgets})
                stats["polled"] += len(runs)
                if not PollerLane.objects.filter(lane=lane, token=token).update(
                        heartbeat_at=timezone.now(), cycles=F("cycles") + 1,
                        runs_polled=F("runs_polled") + len(runs)):
                    return _stopped(lane, stats)
            stats["threads_discovered"] = stats.get("threads_discovered", 0) + discover_new_threads()
            stats["discovered"] += discover_due_threads()
            probe_idle_connections()
            stats["cycles"] += 1
            if len(runs) < app_settings.CLAIM_BATCH:
                _sleep_until_next_due(deadline)
    finally:
        if beat is not None:
            beat.done.set()
            beat.join(timeout=10)
        if pool is not None:
            _close_pool_connections(pool, threads)
            pool.shutdown()
    return stats


def _beat_every() -> float:
    return max(0.2, app_settings.LANE_STALE_AFTER / 5)


class _Heartbeat(threading.Thread):
    """Beats for a lane while its task lives (a pass may take longer than LANE_STALE_AFTER when the service is
    slow); notices when another task took the lane over."""

    def __init__(self, lane: int, token: str):
        super().__init__(name=f"runs-lane-{lane}-heartbeat", daemon=True)
        self.lane, self.token = lane, token
        self.done = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.wait(_beat_every()):
                try:
                    if not PollerLane.objects.filter(lane=self.lane, token=self.token).update(
                            heartbeat_at=timezone.now()):
                        self.lost.set()
                        return
                except Exception as exc:  # the database may be briefly away: the next beat tries again
                    logger.warning("lane %s: heartbeat failed: %s", self.lane, exc)
        finally:
            connection.close()


def _stopped(lane: int, stats: dict) -> dict:
    logger.info("lane %s: taken over by another cycle; stopping", lane)
    stats["stopped"] = True
    return stats


def _poll(run, token, counters, unchanged, changed, client, deferred):
    return poll_claimed(run, token, counters, unchanged=unchanged, changed=changed, client=client, deferred=deferred)


def _each_in_pool(pool: ThreadPoolExecutor, fn, items) -> list:
    """``fn`` over ``items`` on the lane's threads (each closes the database connection it opened)."""
    return list(pool.map(_in_thread, [fn] * len(items), items))


def claim_within_budgets(token: str) -> tuple[list[Run], dict[str, AssistantsClient], list[Budget]]:
    """This pass's runs: per connection, as many due runs as its request budget grants now (most overdue first),
    and a client paced by the same budget for every further request of the pass (retries, steps, messages)."""
    runs, clients, budgets = [], {}, []
    now = timezone.now()
    due = set(Run.objects.due_for_poll(now).exclude(connection__in=ConnectionState.objects.paused(now))
              .values_list("connection", flat=True).distinct())
    for name in [name for name in app_settings.CONNECTIONS if name in due]:
        budget = Budget(name)
        granted = budget_take(name, app_settings.CLAIM_BATCH)
        claimed = claim_due_runs(token, limit=granted, connection_name=name) if granted else []
        budget.deposit(granted)
        budgets.append(budget)
        if claimed:
            runs += claimed
            # A 429 is not waited out inside the pass (its other runs would wait with it): the run is released
            # to be polled after the Retry-After, with the pass's other releases.
            clients[name] = AssistantsClient(name, budget=budget, wait_on_rate_limit=False)
    return runs, clients, budgets


def _in_thread(func, *args):
    try:
        return func(*args)
    finally:
        close_old_connections()


def _close_pool_connections(pool: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection each pool thread opened: a barrier makes every thread take one task."""
    barrier = threading.Barrier(threads)

    def close():
        barrier.wait(timeout=10)
        connection.close()

    list(pool.map(lambda _: close(), range(threads)))


def _sleep_until_next_due(deadline: float) -> None:
    """Wait for the next due run (or thread), at most until the lane's deadline, in short steps."""
    now = timezone.now()
    next_due = Run.objects.filter(next_poll_at__isnull=False).aggregate(m=Min("next_poll_at"))["m"]
    next_thread = Thread.objects.filter(tracked=True).aggregate(m=Min("next_discovery_at"))["m"]
    candidates = [t for t in (next_due, next_thread) if t is not None]
    if app_settings.connections_discovering_threads():
        candidates.append(ConnectionState.objects.filter(
            connection__in=app_settings.connections_discovering_threads()).aggregate(
            m=Min("next_thread_discovery_at"))["m"] or now)
    wait = min([(t - now).total_seconds() for t in candidates], default=1.0)
    wait = max(0.05, min(wait, 0.5, deadline - time.monotonic()))
    if wait > 0:
        time.sleep(wait)


_last_wake = 0.0


def wake(*, throttle: bool = True) -> None:
    """Make sure the lanes run: called when a new active run enters the mirror by any path, so it is
    polled at once rather than at the next watchdog. With ``throttle``, at most one check per process every
    few seconds. Never raises: if the broker is down, the per-minute watchdog starts the lanes later."""
    global _last_wake
    if throttle and time.monotonic() - _last_wake < 5:
        return
    _last_wake = time.monotonic()
    try:
        ensure_running()
    except Exception as exc:  # the broker may be down; the per-minute watchdog will start the lanes
        logger.warning("could not start the poll lanes: %s", exc)


def on_polling_needed(sender=None, *, urgent: bool = False, **kwargs) -> None:
    """Receiver of ``signals.polling_needed`` (connected in ``RunsAppConfig.ready``): a run needs polling."""
    wake(throttle=not urgent)


def lane_stale_before() -> dt.datetime:
    """A lane whose last heartbeat is older than this is dead (silent for ``LANE_STALE_AFTER``)."""
    return timezone.now() - dt.timedelta(seconds=app_settings.LANE_STALE_AFTER)


def lanes_need_starting() -> bool:
    """One cheap query: is any lane missing, or silent for ``LANE_STALE_AFTER``?"""
    lanes = app_settings.POLLER_LANES
    return PollerLane.objects.filter(lane__lt=lanes, heartbeat_at__gte=lane_stale_before()).count() < lanes


_watcher_lock = threading.Lock()


_watcher: threading.Thread | None = None


def start_lane_watcher(**_signal_kwargs) -> None:
    """Start this process's lane watcher (once; connected to django-q2's ``post_spawn`` in every q worker)."""
    global _watcher
    if not app_settings.POLLER_AUTOSTART:
        return
    with _watcher_lock:
        if _watcher is None or not _watcher.is_alive():
            _watcher = threading.Thread(target=_watch_lanes, name="runs-lane-watcher", daemon=True)
            _watcher.start()


def _watch_lanes() -> None:
    while True:
        time.sleep(_beat_every())
        try:
            if lanes_need_starting():
                started = ensure_running()
                if started:
                    logger.warning("lanes %s were silent for %s s: started again", started,
                                   app_settings.LANE_STALE_AFTER)
        except Exception as exc:  # the database or the broker may be away: look again next time
            logger.warning("lane watcher: %s", exc)
        finally:
            connection.close()


def ensure_running(*, force: bool = False) -> list[int]:
    """Start every lane whose heartbeat is stale (silent for ``LANE_STALE_AFTER``, or missing). Returns the lanes
    started."""
    started = []
    stale_before = lane_stale_before()
    for lane in range(app_settings.POLLER_LANES):
        row, _ = PollerLane.objects.get_or_create(lane=lane)
        token = uuid.uuid4().hex
        taken = PollerLane.objects.filter(pk=row.pk).filter(
            Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale_before) if not force else Q()
        ).update(token=token, heartbeat_at=timezone.now())
        if taken:
            async_task(POLL_TASK, lane, token, task_name=f"runs_app poll lane {lane} {token[:8]}",
                       group="runs_app.poller")
            started.append(lane)
    return started

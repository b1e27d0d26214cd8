"""The poller: keeps every non-terminal run fresh on an adaptive schedule.

django-q2 schedules run at most once a minute, so polling is a *lane*: a task that loops for
``CYCLE_SECONDS`` (claim due runs → poll them → sleep until the next is due), then enqueues its own
successor. A per-minute watchdog schedule (``runs_app.tasks.poller_watchdog``) restarts any lane whose
heartbeat went stale (a killed worker), and checks for stuck and expiring runs. ``POLLER_LANES`` lanes
can run at once, on one cluster or many: runs are *claimed* with a lease, with
``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL and a compare-and-set UPDATE elsewhere (SQLite), so
no two lanes poll the same run in one cycle; a crashed lane's claims lapse after ``CLAIM_LEASE``.
A 429 pauses the whole connection until its ``Retry-After``.

While a lane task lives, a heartbeat thread beats every fifth of ``LANE_STALE_AFTER``, however long a pass
takes; a lane silent for ``LANE_STALE_AFTER`` is dead (its worker was killed) and is started again by whoever
looks first: a new run (``wake``), the per-minute watchdog, or the *lane watcher*, a thread in every q worker
process (started on django-q2's ``post_spawn``) that looks every fifth of ``LANE_STALE_AFTER`` — so lanes come
back within about ``LANE_STALE_AFTER`` as long as any q cluster lives.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections, connection, transaction
from django.db.models import Case, F, Min, Q, Value, When
from django.utils import timezone

from runs_app import services, signals, sync
from runs_app.assistants import AssistantsError, NotFound, RateLimited
from runs_app.conf import app_settings
from runs_app.models import (
    ConnectionState,
    PollerLane,
    Run,
    RunStatus,
    Source,
    Thread,
)
from runs_app.sync import Observation

logger = logging.getLogger("runs_app.poller")

POLL_TASK = "runs_app.tasks.poll_lane"


# --- schedule ---------------------------------------------------------------------------------------

def next_poll_delay(run: Run, now: dt.datetime) -> float | None:
    """Seconds until the run should be polled again (None: never, it is terminal).

    Fast while queued/in_progress/cancelling and recently changed, slowing down the longer it stays
    unchanged; slow while waiting in requires_action, but on time for its expiry.
    """
    if run.is_terminal:
        return None
    fast, slow = float(app_settings.POLL_FAST), float(app_settings.POLL_SLOW)
    unchanged_for = (now - (run.status_changed_at or now)).total_seconds()
    if run.status == RunStatus.REQUIRES_ACTION:
        delay = float(app_settings.POLL_WAITING)
        if run.expires_at is not None:
            until_expiry = (run.expires_at - now).total_seconds()
            delay = min(delay, max(fast, until_expiry + 1))
        return delay
    window = float(app_settings.ACTIVE_WINDOW)
    if unchanged_for <= window:
        return fast
    return min(slow, fast + (unchanged_for - window) / 10)


# --- claims -----------------------------------------------------------------------------------------

def paused_connections(now: dt.datetime) -> list[str]:
    return list(ConnectionState.objects.filter(paused_until__gt=now).values_list("connection", flat=True))


def claim_due_runs(token: str, *, limit: int | None = None, now: dt.datetime | None = None) -> list[Run]:
    """Claim up to ``limit`` due runs for this lane; no other lane gets them until released or lapsed."""
    now = now or timezone.now()
    limit = limit or int(app_settings.CLAIM_BATCH)
    lease_until = now + dt.timedelta(seconds=float(app_settings.CLAIM_LEASE))
    due = Run.objects.due_for_poll(now).exclude(connection__in=paused_connections(now)).order_by("next_poll_at")
    if connection.features.has_select_for_update_skip_locked:
        with transaction.atomic():
            ids = list(due.select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True)[:limit])
            Run.objects.filter(pk__in=ids).update(claimed_by=token, claimed_until=lease_until)
    else:
        # Compare-and-set: the UPDATE re-checks that nobody claimed the row meanwhile.
        candidates = list(due.values_list("pk", flat=True)[:limit])
        Run.objects.filter(pk__in=candidates).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)).update(
            claimed_by=token, claimed_until=lease_until)
        ids = candidates
    claimed = list(Run.objects.select_related("thread").filter(pk__in=ids, claimed_by=token, claimed_until=lease_until))
    if claimed:
        logger.debug("claim %s %s", token, " ".join(r.remote_id for r in claimed))
    return claimed


def release(run: Run, token: str, *, next_poll_at: dt.datetime | None) -> None:
    # Logged before the update, so in a merged log a release always precedes the next claim of the run.
    logger.debug("release %s %s", token, run.remote_id)
    Run.objects.filter(pk=run.pk, claimed_by=token).update(
        claimed_by="", claimed_until=None, next_poll_at=next_poll_at, polls=F("polls") + 1
    )


# --- polling one run --------------------------------------------------------------------------------

def poll_claimed(run: Run, token: str, counters: ConnectionCounters | None = None) -> str:
    """Poll one claimed run and release it; returns the outcome ('same', 'changed', 'paused', 'gone', 'error').

    Most polls find nothing new: then one UPDATE records the observation, releases the claim and sets
    the next poll. Only a changed run goes through the upsert (and, if needed, a fetch of its steps and
    messages)."""
    counters = counters if counters is not None else ConnectionCounters()
    started = timezone.now()
    try:
        payload = services.get_client(run.connection).retrieve_run(run.thread.remote_id, run.remote_id)
    except RateLimited as exc:
        pause_connection(run.connection, exc.retry_after, str(exc))
        release(run, token, next_poll_at=started + dt.timedelta(seconds=exc.retry_after or 1))
        return "paused"
    except NotFound as exc:
        # The run or its thread is gone from the service (deleted, or past retention): stop polling it.
        logger.warning("%s: %s; no longer polled", run.remote_id, exc)
        counters.succeeded(run.connection)  # the service answered: the connection itself is fine
        release(run, token, next_poll_at=None)
        return "gone"
    except AssistantsError as exc:
        # The client already retried; try again a little later.
        logger.warning("%s: poll failed: %s", run.remote_id, exc)
        counters.failed(run.connection, str(exc))
        release(run, token, next_poll_at=started + dt.timedelta(seconds=2 * float(app_settings.POLL_SLOW)))
        return "error"
    counters.succeeded(run.connection)
    received = timezone.now()
    # The shortcut only when nothing is owed: a run whose steps and messages were not fetched for its status
    # (an earlier fetch failed) goes through the upsert, which fetches them, even if the run object is the same.
    if payload == run.raw and not services.details_owed(run) and _release_unchanged(run, token, started, received):
        return "same"
    try:
        run = services.run_apply_polled(run=run, payload=payload, seen=Observation(Source.POLL, started, received))
    except AssistantsError as exc:  # fetching the changed run's steps or messages failed: poll again soon
        logger.warning("%s: details failed: %s", run.remote_id, exc)
        release(run, token, next_poll_at=timezone.now() + dt.timedelta(seconds=float(app_settings.POLL_FAST)))
        return "error"
    delay = next_poll_delay(run, timezone.now())
    release(run, token, next_poll_at=None if delay is None else timezone.now() + dt.timedelta(seconds=delay))
    return "changed"


def _release_unchanged(run: Run, token: str, started: dt.datetime, received: dt.datetime) -> bool:
    """The poll saw the stored state again: record the observation and release, in one UPDATE. False if the
    row moved meanwhile (another source changed it, or the claim lapsed): then the upsert decides."""
    delay = next_poll_delay(run, received)
    newer = Q(observed_to__isnull=True) | Q(observed_to__lt=started)
    logger.debug("release %s %s", token, run.remote_id)
    return bool(Run.objects.filter(pk=run.pk, claimed_by=token, status=run.status).update(
        claimed_by="", claimed_until=None, polls=F("polls") + 1, synced_at=received,
        next_poll_at=None if delay is None else received + dt.timedelta(seconds=delay),
        observed_from=Case(When(newer, then=Value(started)), default=F("observed_from")),
        observed_to=Case(When(newer, then=Value(received)), default=F("observed_to")),
    ))


class ConnectionCounters:
    """Per-connection request outcomes of one lane pass, written to ConnectionState once per pass."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ok: dict[str, int] = {}
        self._errors: dict[str, tuple[int, str]] = {}

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._ok[name] = self._ok.get(name, 0) + 1

    def failed(self, name: str, error: str) -> None:
        with self._lock:
            count, _ = self._errors.get(name, (0, ""))
            self._errors[name] = (count + 1, error)

    def flush(self) -> None:
        with self._lock:
            ok, errors, self._ok, self._errors = self._ok, self._errors, {}, {}
        now = timezone.now()
        for name in set(ok) | set(errors):
            state, _ = ConnectionState.objects.get_or_create(connection=name)
            changes = {"requests": F("requests") + ok.get(name, 0) + errors.get(name, (0, ""))[0]}
            if name in ok:
                changes["last_success_at"] = now
            if name in errors:
                changes.update(last_error_at=now, last_error=errors[name][1][:500],
                               failed_requests=F("failed_requests") + errors[name][0])
            ConnectionState.objects.filter(pk=state.pk).update(**changes)


def pause_connection(name: str, seconds: float | None, reason: str) -> None:
    until = timezone.now() + dt.timedelta(seconds=seconds if seconds is not None else 5)
    state, _ = ConnectionState.objects.get_or_create(connection=name)
    ConnectionState.objects.filter(pk=state.pk).update(
        paused_until=until, pause_reason=reason[:300], rate_limited=F("rate_limited") + 1,
        last_error_at=timezone.now(), last_error=reason[:500], requests=F("requests") + 1,
    )
    logger.warning("connection %s paused until %s: %s", name, until.isoformat(), reason)


def _record(name: str, *, ok: bool = False, error: str = "") -> None:
    state, _ = ConnectionState.objects.get_or_create(connection=name)
    if ok:
        ConnectionState.objects.filter(pk=state.pk).update(last_success_at=timezone.now(),
                                                           requests=F("requests") + 1)
    else:
        ConnectionState.objects.filter(pk=state.pk).update(last_error_at=timezone.now(), last_error=error[:500],
                                                           requests=F("requests") + 1,
                                                           failed_requests=F("failed_requests") + 1)


# --- discovery --------------------------------------------------------------------------------------

def discover_due_threads(*, limit: int = 20) -> int:
    """List the runs of tracked threads whose discovery is due (one request covers up to 100 runs), so
    runs created outside this app appear. Each thread is taken with a compare-and-set on its due time."""
    now = timezone.now()
    interval = dt.timedelta(seconds=float(app_settings.DISCOVERY_INTERVAL))
    paused = paused_connections(now)
    found = 0
    for thread in Thread.objects.filter(tracked=True, next_discovery_at__lte=now).exclude(
            connection__in=paused).order_by("next_discovery_at")[:limit]:
        if Run.objects.filter(thread=thread).active().exists():
            # One active run per thread: nothing new can start there while the poller follows this one.
            Thread.objects.filter(pk=thread.pk).update(next_discovery_at=now + interval)
            continue
        taken = Thread.objects.filter(pk=thread.pk, next_discovery_at=thread.next_discovery_at).update(
            next_discovery_at=now + dt.timedelta(seconds=thread.discovery_interval or interval.total_seconds()))
        if not taken:
            continue
        try:
            started = timezone.now()
            page = services.get_client(thread.connection).list_runs(thread.remote_id, limit=100, order="desc")
            _record(thread.connection, ok=True)
        except RateLimited as exc:
            pause_connection(thread.connection, exc.retry_after, str(exc))
            continue
        except AssistantsError as exc:
            logger.warning("discovery on %s failed: %s", thread.remote_id, exc)
            continue
        new = 0
        client = services.get_client(thread.connection)
        for payload in page.get("data", []):
            applied = services.sync.apply_run(payload, connection=thread.connection,
                                              seen=Observation.now(Source.LIST, started))
            new += int(applied.created)
            run = applied.row
            if run.is_terminal and services.details_marker(run) != run.steps_synced_for:
                # Finished before the poller ever saw it: fetch its steps and messages now.
                try:
                    services.run_details_sync(run=run, client=client, source=Source.LIST)
                except AssistantsError as exc:
                    logger.warning("details of %s failed: %s", run.remote_id, exc)
        # Idle threads are listed less and less often (up to DISCOVERY_MAX_INTERVAL); activity resets that.
        base, ceiling = interval.total_seconds(), float(app_settings.DISCOVERY_MAX_INTERVAL)
        next_interval = base if new else min(ceiling, max(base, (thread.discovery_interval or base) * 2))
        Thread.objects.filter(pk=thread.pk).update(discovery_interval=next_interval)
        found += new
    return found


def discover_new_threads(*, now: dt.datetime | None = None) -> int:
    """For each connection with ``DISCOVER_THREADS``, every ``DISCOVERY_INTERVAL``: list the service's threads
    newest first, down to the newest one seen before (or to ``DISCOVER_THREADS_SINCE`` ago), and follow each new
    one — its messages now, its runs by the usual discovery. One request when nothing is new. Each connection is
    taken with a compare-and-set on its due time, so one lane lists it. Returns the threads found."""
    now = now or timezone.now()
    found = 0
    paused = set(paused_connections(now))
    for name in app_settings.connections_discovering_threads():
        if name in paused:
            continue
        state, _ = ConnectionState.objects.get_or_create(connection=name)
        due = state.next_thread_discovery_at
        if due is not None and due > now:
            continue
        next_at = now + dt.timedelta(seconds=float(app_settings.DISCOVERY_INTERVAL))
        if not ConnectionState.objects.filter(pk=state.pk, next_thread_discovery_at=due).update(
                next_thread_discovery_at=next_at):
            continue  # another lane took it
        found += _discover_threads_of(name, state.newest_thread_id, now)
    return found


def _discover_threads_of(name: str, newest_known: str, now: dt.datetime) -> int:
    conf = app_settings.connection(name)
    since = now - dt.timedelta(seconds=float(conf["DISCOVER_THREADS_SINCE"]))
    client = services.get_client(name)
    requests, new_threads, newest = 0, [], None
    after = None
    try:
        while True:
            started = timezone.now()
            page = client.list_threads(limit=100, order="desc", after=after)
            requests += 1
            data = page.get("data") or []
            newest = newest or (data[0]["id"] if data else None)
            done = not page.get("has_more") or not data
            for payload in data:
                created = sync.ts(payload.get("created_at"))
                if payload.get("id") == newest_known or (created is not None and created < since):
                    done = True
                    break
                new_threads.append((payload, Observation.now(Source.LIST, started)))
            if done:
                break
            after = data[-1]["id"]
    except RateLimited as exc:
        pause_connection(name, exc.retry_after, str(exc))
        return 0
    except AssistantsError as exc:
        logger.warning("thread discovery on %s failed: %s", name, exc)
        _record(name, error=str(exc))
        ConnectionState.objects.filter(connection=name).update(
            discovery_requests=F("discovery_requests") + requests + 1)
        return 0
    found = 0
    for payload, seen in reversed(new_threads):  # oldest first
        if Thread.objects.filter(connection=name, remote_id=payload["id"]).exists():
            continue
        thread = sync.apply_thread(payload, connection=name, seen=seen).row
        Thread.objects.filter(pk=thread.pk).update(tracked=True, next_discovery_at=timezone.now())
        found += 1
        try:
            services.thread_messages_sync(thread=thread, client=client, source=Source.LIST)
            requests += 1
        except AssistantsError as exc:  # its runs' ends bring them
            requests += 1
            logger.warning("messages of discovered thread %s: %s", thread.remote_id, exc)
    changes = {"discovery_requests": F("discovery_requests") + requests,
               "threads_discovered": F("threads_discovered") + found,
               "requests": F("requests") + requests, "last_success_at": timezone.now()}
    if newest:
        changes["newest_thread_id"] = newest
    ConnectionState.objects.filter(connection=name).update(**changes)
    if found:
        logger.info("thread discovery on %s: %d new thread(s) followed", name, found)
    return found


# --- lanes ------------------------------------------------------------------------------------------

def run_lane(lane: int, token: str, *, seconds: float | None = None) -> dict:
    """One lane's cycle: poll due runs until ``seconds`` pass. Exits early if another cycle took the lane."""
    seconds = float(app_settings.CYCLE_SECONDS if seconds is None else seconds)
    deadline = time.monotonic() + seconds
    stats = {"polled": 0, "cycles": 0, "discovered": 0}
    threads = max(1, int(app_settings.POLL_THREADS))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"runs-poll-{lane}") if threads > 1 else None
    beat = None if connection.in_atomic_block else _Heartbeat(lane, token)  # (a test's transaction: no thread)
    if beat is not None:
        beat.start()
    try:
        while time.monotonic() < deadline:
            if (beat is not None and beat.lost.is_set()) or not PollerLane.objects.filter(
                    lane=lane, token=token).update(heartbeat_at=timezone.now(), cycles=F("cycles") + 1):
                logger.info("lane %s: taken over by another cycle; stopping", lane)
                stats["stopped"] = True
                return stats
            runs = claim_due_runs(token)
            if runs:
                counters = ConnectionCounters()
                if pool is None:
                    for run in runs:
                        poll_claimed(run, token, counters)
                else:
                    list(pool.map(_in_thread, [poll_claimed] * len(runs), runs, [token] * len(runs),
                                  [counters] * len(runs)))
                counters.flush()
                stats["polled"] += len(runs)
                PollerLane.objects.filter(lane=lane).update(runs_polled=F("runs_polled") + len(runs))
            stats["threads_discovered"] = stats.get("threads_discovered", 0) + discover_new_threads()
            stats["discovered"] += discover_due_threads()
            stats["cycles"] += 1
            if len(runs) < int(app_settings.CLAIM_BATCH):
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
    return max(0.2, float(app_settings.LANE_STALE_AFTER) / 5)


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


def lane_stale_before() -> dt.datetime:
    """A lane whose last heartbeat is older than this is dead (silent for ``LANE_STALE_AFTER``)."""
    return timezone.now() - dt.timedelta(seconds=float(app_settings.LANE_STALE_AFTER))


def lanes_need_starting() -> bool:
    """One cheap query: is any lane missing, or silent for ``LANE_STALE_AFTER``?"""
    lanes = int(app_settings.POLLER_LANES)
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
    from django_q.tasks import async_task

    started = []
    stale_before = lane_stale_before()
    for lane in range(int(app_settings.POLLER_LANES)):
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


# --- watchdogs --------------------------------------------------------------------------------------

def flag_stuck_and_expiring(now: dt.datetime | None = None) -> dict:
    """Flag runs stuck past ``STUCK_AFTER`` and requires_action runs expiring within ``EXPIRING_WITHIN``;
    each is signalled once per episode."""
    now = now or timezone.now()
    stuck = 0
    for status, seconds in (app_settings.STUCK_AFTER or {}).items():
        limit = now - dt.timedelta(seconds=float(seconds))
        for run in Run.objects.filter(status=status, stuck_since__isnull=True, status_changed_at__lt=limit):
            if Run.objects.filter(pk=run.pk, stuck_since__isnull=True).update(stuck_since=run.status_changed_at):
                stuck += 1
                signals.run_stuck.send(sender=Run, run=run, status=status, since=run.status_changed_at)
    expiring = 0
    horizon = now + dt.timedelta(seconds=float(app_settings.EXPIRING_WITHIN))
    for run in Run.objects.filter(status=RunStatus.REQUIRES_ACTION, expiring_flagged_at__isnull=True,
                                  expires_at__isnull=False, expires_at__lte=horizon):
        if Run.objects.filter(pk=run.pk, expiring_flagged_at__isnull=True).update(expiring_flagged_at=now):
            expiring += 1
            signals.run_expiring.send(sender=Run, run=run, expires_at=run.expires_at)
    return {"stuck": stuck, "expiring": expiring}

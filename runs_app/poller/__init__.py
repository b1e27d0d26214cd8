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

Modules: ``schedule`` (when next), ``claims`` (who polls what), ``polling`` (one poll), ``discovery`` (runs and
threads created elsewhere), ``lanes`` (the loops, heartbeats, the watcher), ``watchdogs`` (stuck, expiring, idle
connections probed). May use: the services and everything below them. Listens to ``signals.polling_needed``.
"""

from runs_app.poller.claims import claim_due_runs, release
from runs_app.poller.discovery import discover_due_threads, discover_new_threads
from runs_app.poller.lanes import (
    POLL_TASK,
    ensure_running,
    lane_stale_before,
    lanes_need_starting,
    on_polling_needed,
    run_lane,
    start_lane_watcher,
    wake,
)
from runs_app.poller.polling import ConnectionCounters, pause_connection, poll_claimed
from runs_app.poller.schedule import next_poll_delay
from runs_app.poller.watchdogs import flag_stuck_and_expiring, probe_idle_connections

__all__ = [
    "POLL_TASK", "ConnectionCounters", "claim_due_runs", "discover_due_threads", "discover_new_threads",
    "ensure_running", "flag_stuck_and_expiring", "lane_stale_before", "lanes_need_starting", "next_poll_delay",
    "on_polling_needed", "pause_connection", "poll_claimed", "probe_idle_connections", "release", "run_lane",
    "start_lane_watcher", "wake",
]

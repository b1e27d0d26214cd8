"""django-q2 tasks: thin, take ids, call one service, safe to run twice.

- ``poll_lane(lane, token)``: one poll loop cycle, then its successor (runs_app/poller/lanes.py).
- ``poller_watchdog()``: every minute (a django-q2 schedule): restarts stale lanes, flags stuck and
  expiring runs.
"""

from __future__ import annotations

import logging

from django.utils import timezone
from django_q.tasks import async_task

from runs_app import poller
from runs_app.models import PollerLane

logger = logging.getLogger("runs_app.tasks")


def poll_lane(lane: int, token: str) -> dict:
    stats = poller.run_lane(lane, token)
    # The successor waits in the broker until a worker takes it: the beat here covers that wait.
    if not stats.get("stopped") and PollerLane.objects.filter(lane=lane, token=token).update(
            heartbeat_at=timezone.now()):
        async_task(poller.POLL_TASK, lane, token, task_name=f"runs_app poll lane {lane} {token[:8]}",
                   group="runs_app.poller")
    return stats


def poller_watchdog() -> dict:
    started = poller.ensure_running()
    flags = poller.flag_stuck_and_expiring()
    return {"lanes_started": started, **flags}

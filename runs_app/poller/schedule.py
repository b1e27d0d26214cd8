"""When a run is polled next: fast while it changes, slower the longer it stays the same, on time for its expiry."""

from __future__ import annotations

import datetime as dt

from runs_app.conf import app_settings
from runs_app.models import Run, RunStatus


def next_poll_delay(run: Run, now: dt.datetime) -> float | None:
    """Seconds until the run should be polled again (None: never, it is terminal).

    Fast while queued/in_progress/cancelling and recently changed, slowing down the longer it stays
    unchanged; slow while waiting in requires_action, but on time for its expiry.
    """
    if run.is_terminal:
        return None
    fast, slow = app_settings.POLL_FAST, app_settings.POLL_SLOW
    unchanged_for = (now - (run.status_changed_at or now)).total_seconds()
    if run.status == RunStatus.REQUIRES_ACTION:
        delay = app_settings.POLL_WAITING
        if run.expires_at is not None:
            until_expiry = (run.expires_at - now).total_seconds()
            delay = min(delay, max(fast, until_expiry + 1))
        return delay
    window = app_settings.ACTIVE_WINDOW
    if unchanged_for <= window:
        return fast
    return min(slow, fast + (unchanged_for - window) / 10)

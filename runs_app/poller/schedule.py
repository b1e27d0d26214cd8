"""When a run is polled next: where a change is likely, soon; where none can come yet, not at all.

- A run just created, or just changed by an action or a stream (queued), is looked at after ``POLL_FAST``: it
  starts within about a second.
- An active run whose change may come any time is looked at every ``POLL_INTERVAL``: the longest the mirror may
  lag behind it. While it runs for less time than any run of its assistant ever took (learned from the mirror's
  recent runs, ``RunLengths``), it cannot have ended: its next look waits until then.
- A run unchanged for ``ACTIVE_WINDOW`` is looked at less and less often, up to ``POLL_SLOW``.
- A run waiting for tool outputs is looked at every ``POLL_WAITING``, on time for its expiry.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from django.db.models import Count, DurationField, ExpressionWrapper, F, Min
from django.utils import timezone

from runs_app.conf import app_settings
from runs_app.models import Run, RunStatus

#: Runs of an assistant seen before its shortest length is trusted; the seconds a learned length is widened by
#: (the protocol's timestamps have one-second resolution).
LEARN_AFTER_RUNS = 20
LENGTH_MARGIN = 1.5


class RunLengths:
    """How long each assistant's runs stay in_progress, from the mirror's completed runs of the last day: one query
    every ``refresh`` seconds per process."""

    def __init__(self, refresh: float = 10.0):
        self.refresh = refresh
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._shortest: dict[tuple[str, str], float] = {}

    def shortest(self, connection: str, assistant_id: str) -> float | None:
        """Seconds the quickest of the assistant's recent runs spent in_progress (None until learned)."""
        with self._lock:
            if time.monotonic() - self._loaded_at >= self.refresh:
                self._shortest = self._load()
                self._loaded_at = time.monotonic()
            return self._shortest.get((connection, assistant_id))

    def forget(self) -> None:
        with self._lock:
            self._loaded_at, self._shortest = -1e9, {}

    @staticmethod
    def _load() -> dict[tuple[str, str], float]:
        length = ExpressionWrapper(F("completed_at") - F("started_at"), output_field=DurationField())
        rows = (Run.objects.filter(status=RunStatus.COMPLETED, started_at__isnull=False, completed_at__isnull=False,
                                   completed_at__gte=timezone.now() - dt.timedelta(days=1))
                .values("connection", "assistant_id").annotate(n=Count("id"), shortest=Min(length)))
        return {(r["connection"], r["assistant_id"]): r["shortest"].total_seconds()
                for r in rows if r["n"] >= LEARN_AFTER_RUNS and r["shortest"] is not None}


run_lengths = RunLengths()


def next_poll_delay(run: Run, now: dt.datetime, lengths: RunLengths | None = run_lengths) -> float | None:
    """Seconds until the run should be polled again (None: never, it is terminal)."""
    if run.is_terminal:
        return None
    if run.status == RunStatus.REQUIRES_ACTION:
        delay = app_settings.POLL_WAITING
        if run.expires_at is not None:
            until_expiry = (run.expires_at - now).total_seconds()
            delay = min(delay, max(app_settings.POLL_FAST, until_expiry + 1))
        return delay
    unchanged_for = (now - (run.status_changed_at or now)).total_seconds()
    if run.status == RunStatus.QUEUED and unchanged_for <= app_settings.ACTIVE_WINDOW:
        return app_settings.POLL_FAST
    delay = app_settings.POLL_INTERVAL
    if run.status == RunStatus.IN_PROGRESS and lengths is not None and run.started_at is not None:
        shortest = lengths.shortest(run.connection, run.assistant_id)
        if shortest is not None:
            # No run of this assistant ended sooner: nothing to see before then.
            quiet = shortest - LENGTH_MARGIN - (now - run.started_at).total_seconds()
            delay = max(delay, quiet)
    if unchanged_for > app_settings.ACTIVE_WINDOW:
        delay = max(delay, min(app_settings.POLL_SLOW,
                               app_settings.POLL_INTERVAL + (unchanged_for - app_settings.ACTIVE_WINDOW) / 10))
    return delay

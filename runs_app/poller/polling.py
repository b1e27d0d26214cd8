"""Polling one claimed run: retrieve it, record what was seen (one UPDATE when nothing changed), apply a change
through the services, release the claim with the next poll's time; and the request outcomes of a pass."""

from __future__ import annotations

import datetime as dt
import logging
import threading

from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from runs_app import services
from runs_app.assistants import AssistantsError, NotFound, RateLimited
from runs_app.conf import app_settings
from runs_app.mirror.ordering import Observation
from runs_app.models import ConnectionState, Run, Source
from runs_app.poller.claims import release
from runs_app.poller.schedule import next_poll_delay

logger = logging.getLogger("runs_app.poller")

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
        release(run, token, next_poll_at=started + dt.timedelta(seconds=2 * app_settings.POLL_SLOW))
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
        release(run, token, next_poll_at=timezone.now() + dt.timedelta(seconds=app_settings.POLL_FAST))
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
        for name in set(ok) | set(errors):
            failed, error = errors.get(name, (0, ""))
            ConnectionState.objects.record(name, ok=ok.get(name, 0), failed=failed, error=error)


def pause_connection(name: str, seconds: float | None, reason: str) -> None:
    until = ConnectionState.objects.pause(name, seconds, reason)
    logger.warning("connection %s paused until %s: %s", name, until.isoformat(), reason)

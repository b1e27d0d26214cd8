"""Polling one claimed run: retrieve it, record what was seen (one UPDATE when nothing changed), apply a change
through the services, release the claim with the next poll's time; and the request outcomes of a pass."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from runs_app import services
from runs_app.assistants import AssistantsClient, AssistantsError, NotFound, RateLimited
from runs_app.conf import app_settings
from runs_app.mirror.ordering import Observation
from runs_app.models import ConnectionState, Run, Source
from runs_app.poller.claims import release
from runs_app.poller.schedule import next_poll_delay

logger = logging.getLogger("runs_app.poller")

@dataclass
class Polled:
    """One run's poll in a pass: what came back and when, waiting to be recorded with the rest of the pass."""

    run: Run
    payload: dict
    started: dt.datetime
    received: dt.datetime
    client: AssistantsClient | None = None

    @property
    def seen(self) -> Observation:
        return Observation(Source.POLL, self.started, self.received)


Unchanged = Polled  # (the name the pass's first list goes by)


def poll_claimed(run: Run, token: str, counters: ConnectionCounters | None = None, *,
                 unchanged: list[Polled] | None = None, changed: list[Polled] | None = None,
                 client: AssistantsClient | None = None, deferred: list | None = None) -> str:
    """Poll one claimed run; returns the outcome ('same', 'changed', 'paused', 'throttled', 'gone', 'error').

    Within a lane's pass (``unchanged`` and ``changed`` given) a poll only notes what it saw: the pass records all
    its unchanged polls in one statement (``release_unchanged``) and applies all its changes in one transaction
    (``apply_changed``). Alone, a poll is recorded at once. Failures release the run at once either way."""
    counters = counters if counters is not None else ConnectionCounters()
    client = client or services.get_client(run.connection)
    started = timezone.now()
    try:
        payload = client.retrieve_run(run.thread.remote_id, run.remote_id)
    except RateLimited as exc:
        next_poll_at = started + dt.timedelta(seconds=exc.retry_after or 1)
        if deferred is not None:
            deferred.append((run, next_poll_at))  # released with the pass's others (``release_changed``)
        else:
            release(run, token, next_poll_at=next_poll_at)
        if rate_limited(run.connection, exc):
            return "paused"
        return "throttled"
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
    polled = Polled(run, payload, started, timezone.now(), client)
    # The shortcut only when nothing is owed: a run whose steps and messages were not fetched for its status
    # (an earlier fetch failed) goes through the upsert, which fetches them, even if the run object is the same.
    if payload == run.raw and not services.details_owed(run):
        if unchanged is not None:
            unchanged.append(polled)
            return "same"
        if not release_unchanged([polled], token):
            return "same"
    if changed is not None:
        changed.append(polled)
        return "changed"
    return apply_changed([polled], token)[0]


def apply_changed(polls: list[Polled], token: str, map_each=None) -> list[str]:
    """A pass's polls that brought news (or whose row moved while they were out): applied through the upsert in ONE
    transaction, then the steps and messages fetched of those that stopped (``map_each(fn, items)`` runs the fetches,
    e.g. on the lane's threads), then all released in ONE statement. Returns each poll's outcome."""
    runs = apply_changes(polls)
    failed = fetch_owed_details(polls, runs, map_each)
    release_changed(runs, failed, token)
    return ["error" if run.pk in failed else "changed" for run in runs]


def apply_changes(polls: list[Polled]) -> list[Run]:
    """The changed runs of a pass through the upsert, in one transaction (no request made)."""
    if not polls:
        return []
    return services.runs_apply_polled(polls=[(p.run, p.payload, p.seen) for p in polls])


def fetch_owed_details(polls: list[Polled], runs: list[Run], map_each=None) -> set[int]:
    """Fetch the steps and messages of the runs that stopped (outside any transaction: these are requests). Returns
    the runs whose fetch failed: they stay owed them, and are polled again soon."""
    owed = [(p, run) for p, run in zip(polls, runs, strict=True) if services.details_owed(run)]
    failed: set[int] = set()

    def fetch_details(item) -> None:
        polled, run = item
        try:
            services.run_details_sync(run=run, client=polled.client, source=Source.POLL)
        except AssistantsError as exc:  # poll again soon: the run stays owed its details
            logger.warning("%s: details failed: %s", run.remote_id, exc)
            failed.add(run.pk)

    list((map_each or map)(fetch_details, owed))
    return failed


def release_changed(runs: list[Run], failed: set[int], token: str, *, deferred=()) -> None:
    """Release the pass's changed runs, each with its next poll (soon, for one whose details failed), and the runs a
    429 put off (``deferred``: (run, next poll) pairs)."""
    now = timezone.now()
    releases = list(deferred)
    for run in runs:
        delay = app_settings.POLL_FAST if run.pk in failed else next_poll_delay(run, now)
        releases.append((run, None if delay is None else now + dt.timedelta(seconds=delay)))
    release_many(releases, token)


def _typed_param(field: str) -> str:
    """A placeholder for a value of ``Run.<field>``: typed on PostgreSQL, where a CASE of NULLs alone is text."""
    if connection.vendor == "postgresql":
        return f"%s::{Run._meta.get_field(field).db_type(connection)}"
    return "%s"


def release_many(releases: list[tuple[Run, dt.datetime | None]], token: str) -> None:
    """Release claimed runs, each with its next poll, in ONE statement."""
    if not releases:
        return
    ops, quote = connection.ops, connection.ops.quote_name
    column = {f: quote(Run._meta.get_field(f).column) for f in (
        "id", "claimed_by", "claimed_until", "polls", "next_poll_at")}
    whens, params = [], []
    stamp = _typed_param("next_poll_at")
    for run, next_poll_at in releases:
        whens.append(f"WHEN %s THEN {stamp}")
        params += [run.pk, None if next_poll_at is None else ops.adapt_datetimefield_value(next_poll_at)]
    ids = ", ".join(["%s"] * len(releases))
    table = quote(Run._meta.db_table)
    # Quoted column names and placeholders only are interpolated; every value is a parameter.
    sql = (f"UPDATE {table} SET {column['claimed_by']} = '', {column['claimed_until']} = NULL, "  # noqa: S608
           f"{column['polls']} = {column['polls']} + 1, "
           f"{column['next_poll_at']} = CASE {column['id']} {' '.join(whens)} END "
           f"WHERE {column['claimed_by']} = %s AND {column['id']} IN ({ids})")
    logger.debug("release %s %s", token, " ".join(run.remote_id for run, _ in releases))
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, token, *[run.pk for run, _ in releases]])


def release_unchanged(polls: list[Polled], token: str) -> list[Polled]:
    """Record a pass's unchanged polls — each run's observation, next poll and release — in ONE statement. Returns
    the polls whose row moved meanwhile (another source changed it, or the claim lapsed): the upsert decides those.

    Written as SQL: the ORM's CASE expressions for a pass of runs cost more CPU to build than the polls themselves
    (measured by bench/lane_throughput.py --profile)."""
    if not polls:
        return []
    by_pk = {p.run.pk: p for p in polls}
    ops, quote = connection.ops, connection.ops.quote_name
    column = {f: quote(Run._meta.get_field(f).column) for f in (
        "id", "status", "claimed_by", "claimed_until", "polls", "next_poll_at", "synced_at", "observed_from",
        "observed_to")}
    stamp = ops.adapt_datetimefield_value
    when = f"WHEN %s THEN {_typed_param('next_poll_at')}"
    next_poll, synced, obs_from, obs_to, still = [], [], [], [], []
    p_next, p_synced, p_from, p_to, p_still = [], [], [], [], []
    for pk, p in by_pk.items():
        delay = next_poll_delay(p.run, p.received)
        next_poll.append(when)
        p_next += [pk, None if delay is None else stamp(p.received + dt.timedelta(seconds=delay))]
        synced.append(when)
        p_synced += [pk, stamp(p.received)]
        # Happens-before: the observation moves only if this request was sent after the stored one was answered.
        newer = f"{column['id']} = %s AND ({column['observed_to']} IS NULL OR {column['observed_to']} < %s)"
        obs_from.append(f"WHEN {newer} THEN {_typed_param('observed_from')}")
        p_from += [pk, stamp(p.started), stamp(p.started)]
        obs_to.append(f"WHEN {newer} THEN {_typed_param('observed_to')}")
        p_to += [pk, stamp(p.started), stamp(p.received)]
        still.append(f"({column['id']} = %s AND {column['status']} = %s)")
        p_still += [pk, p.run.status]
    table = quote(Run._meta.db_table)
    # Quoted column names and placeholders only are interpolated; every value is a parameter.
    sql = (f"UPDATE {table} SET {column['claimed_by']} = '', {column['claimed_until']} = NULL, "  # noqa: S608
           f"{column['polls']} = {column['polls']} + 1, "
           f"{column['next_poll_at']} = CASE {column['id']} {' '.join(next_poll)} END, "
           f"{column['synced_at']} = CASE {column['id']} {' '.join(synced)} END, "
           f"{column['observed_from']} = CASE {' '.join(obs_from)} ELSE {column['observed_from']} END, "
           f"{column['observed_to']} = CASE {' '.join(obs_to)} ELSE {column['observed_to']} END "
           f"WHERE {column['claimed_by']} = %s AND ({' OR '.join(still)})")
    logger.debug("release %s %s", token, " ".join(p.run.remote_id for p in polls))
    with connection.cursor() as cursor:
        # Only column names (quoted) and placeholders are interpolated; every value is a parameter.
        cursor.execute(sql, [*p_next, *p_synced, *p_from, *p_to, token, *p_still])
        done = cursor.rowcount
    if done == len(by_pk):
        return []
    moved = set(Run.objects.filter(pk__in=list(by_pk), claimed_by=token).values_list("pk", flat=True))
    return [by_pk[pk] for pk in moved]


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

    def flush(self, unused_budget: dict[str, int] | None = None) -> None:
        """One statement per connection: the pass's outcomes, and the budget it took but did not spend."""
        unused_budget = unused_budget or {}
        with self._lock:
            ok, errors, self._ok, self._errors = self._ok, self._errors, {}, {}
        for name in set(ok) | set(errors) | {n for n, unused in unused_budget.items() if unused}:
            failed, error = errors.get(name, (0, ""))
            ConnectionState.objects.record(name, ok=ok.get(name, 0), failed=failed, error=error,
                                           budget_unused=unused_budget.get(name, 0))


def rate_limited(name: str, exc: RateLimited) -> bool:
    """A 429 the client did not wait out. A Retry-After beyond RETRY_AFTER_CAP (a quota spent for long) pauses the
    connection (True); a shorter one only delays this request: the budget has already slowed the connection."""
    if exc.retry_after is not None and exc.retry_after > app_settings.RETRY_AFTER_CAP:
        pause_connection(name, exc.retry_after, str(exc))
        return True
    return False


def pause_connection(name: str, seconds: float | None, reason: str) -> None:
    until = ConnectionState.objects.pause(name, seconds, reason)
    logger.warning("connection %s paused until %s: %s", name, until.isoformat(), reason)

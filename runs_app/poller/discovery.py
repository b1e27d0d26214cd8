"""Discovery: runs created elsewhere on tracked threads (listing each thread's runs now and then), and new threads
of a connection (``DISCOVER_THREADS``: listing the service's threads)."""

from __future__ import annotations

import datetime as dt
import logging

from django.db.models import Exists, OuterRef
from django.utils import timezone

from runs_app import services
from runs_app.assistants import AssistantsClient, AssistantsError, RateLimited
from runs_app.conf import app_settings
from runs_app.mirror import upsert
from runs_app.mirror.ordering import Observation, ts
from runs_app.models import ConnectionState, Run, Source, Thread
from runs_app.poller.budget import Budget
from runs_app.poller.polling import rate_limited

logger = logging.getLogger("runs_app.poller")

def discover_due_threads(*, limit: int = 20) -> int:
    """List the runs of tracked threads whose discovery is due (one request covers up to 100 runs), so
    runs created outside this app appear. Each thread is taken with a compare-and-set on its due time."""
    now = timezone.now()
    interval = dt.timedelta(seconds=app_settings.DISCOVERY_INTERVAL)
    paused = ConnectionState.objects.paused(now)
    due = Thread.objects.filter(tracked=True, next_discovery_at__lte=now).exclude(connection__in=paused)
    # One active run per thread: nothing new can start on a thread while the poller follows its run. Such threads
    # are not listed (their run's end puts their next listing DISCOVERY_INTERVAL later), in one statement.
    followed = Run.objects.filter(thread=OuterRef("pk")).active()
    skipped = list(due.filter(Exists(followed)).values_list("pk", flat=True)[:1000])  # (read first: writes wait)
    if skipped:
        Thread.objects.filter(pk__in=skipped).update(next_discovery_at=now + interval)
    found, budgets = 0, {}
    for thread in due.exclude(Exists(followed)).order_by("next_discovery_at")[:limit]:
        taken = Thread.objects.filter(pk=thread.pk, next_discovery_at=thread.next_discovery_at).update(
            next_discovery_at=now + dt.timedelta(seconds=thread.discovery_interval or interval.total_seconds()))
        if not taken:
            continue
        budget = budgets.setdefault(thread.connection, Budget(thread.connection))
        # A 429 is not waited out here: the lane's next pass would wait with it (listings run one after the other).
        client = AssistantsClient(thread.connection, budget=budget, wait_on_rate_limit=False)
        started = timezone.now()
        try:
            page = client.list_runs(thread.remote_id, limit=100, order="desc")
            ConnectionState.objects.record(thread.connection, ok=1)
        except RateLimited as exc:
            if not rate_limited(thread.connection, exc):  # listed again after the Retry-After
                Thread.objects.filter(pk=thread.pk).update(
                    next_discovery_at=started + dt.timedelta(seconds=exc.retry_after or 1))
            continue
        except AssistantsError as exc:
            logger.warning("discovery on %s failed: %s", thread.remote_id, exc)
            continue
        new = 0
        for payload in page.get("data", []):
            applied = upsert.apply_run(payload, connection=thread.connection,
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
        base, ceiling = interval.total_seconds(), app_settings.DISCOVERY_MAX_INTERVAL
        next_interval = base if new else min(ceiling, max(base, (thread.discovery_interval or base) * 2))
        Thread.objects.filter(pk=thread.pk).update(discovery_interval=next_interval)
        found += new
    for budget in budgets.values():
        budget.settle()
    return found


def discover_new_threads(*, now: dt.datetime | None = None) -> int:
    """For each connection with ``DISCOVER_THREADS``, every ``DISCOVERY_INTERVAL``: list the service's threads
    newest first, down to the newest one seen before (or to ``DISCOVER_THREADS_SINCE`` ago), and follow each new
    one — its messages now, its runs by the usual discovery. One request when nothing is new. Each connection is
    taken with a compare-and-set on its due time, so one lane lists it. Returns the threads found."""
    now = now or timezone.now()
    found = 0
    paused = set(ConnectionState.objects.paused(now))
    for name in app_settings.connections_discovering_threads():
        if name in paused:
            continue
        next_at = now + dt.timedelta(seconds=app_settings.DISCOVERY_INTERVAL)
        state = ConnectionState.objects.take_thread_discovery(name, now, next_at)
        if state is None:
            continue  # not due, or another lane took it
        found += _discover_threads_of(name, state.newest_thread_id, now)
    return found


def _discover_threads_of(name: str, newest_known: str, now: dt.datetime) -> int:
    conf = app_settings.connection(name)
    since = now - dt.timedelta(seconds=conf["DISCOVER_THREADS_SINCE"])
    budget = Budget(name)
    try:
        return _list_new_threads(name, newest_known, since,
                                 AssistantsClient(name, budget=budget, wait_on_rate_limit=False))
    finally:
        budget.settle()


def _list_new_threads(name: str, newest_known: str, since: dt.datetime, client: AssistantsClient) -> int:
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
                created = ts(payload.get("created_at"))
                if payload.get("id") == newest_known or (created is not None and created < since):
                    done = True
                    break
                new_threads.append((payload, Observation.now(Source.LIST, started)))
            if done:
                break
            after = data[-1]["id"]
    except RateLimited as exc:
        rate_limited(name, exc)
        return 0
    except AssistantsError as exc:
        logger.warning("thread discovery on %s failed: %s", name, exc)
        ConnectionState.objects.record(name, ok=requests, failed=1, error=str(exc), discovery=requests + 1)
        return 0
    found, failed, error = 0, 0, ""
    for payload, seen in reversed(new_threads):  # oldest first
        if Thread.objects.filter(connection=name, remote_id=payload["id"]).exists():
            continue
        thread = upsert.apply_thread(payload, connection=name, seen=seen).row
        Thread.objects.filter(pk=thread.pk).update(tracked=True, next_discovery_at=timezone.now())
        found += 1
        try:
            services.thread_messages_sync(thread=thread, client=client, source=Source.LIST)
            requests += 1
        except AssistantsError as exc:  # its runs' ends bring them
            failed, error = failed + 1, str(exc)
            logger.warning("messages of discovered thread %s: %s", thread.remote_id, exc)
    ConnectionState.objects.record(name, ok=requests, failed=failed, error=error, discovery=requests + failed,
                                   threads_discovered=found, newest_thread_id=newest)
    if found:
        logger.info("thread discovery on %s: %d new thread(s) followed", name, found)
    return found

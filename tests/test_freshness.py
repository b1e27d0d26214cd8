"""Freshness at scale: the poller's pass costs (one statement for all unchanged polls), its request budget shared by
every process, 429s that slow a connection instead of stopping it, and discovery that skips what is followed."""

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs_app import poller, services
from runs_app.models import Run
from runs_app.poller.polling import release_unchanged
from tests.client_helpers import wait_for

pytestmark = pytest.mark.django_db


def active_runs(assistant, n, text="take your time [slow:30]"):
    runs = [services.thread_and_run_create(assistant_id=assistant["id"], thread={"messages": [
        {"role": "user", "content": text}]}) for _ in range(n)]
    return [wait_for(lambda r=r: (x := services.run_poll(run=Run.objects.get(pk=r.pk))).status == "in_progress"
                     and x) for r in runs]


def test_a_pass_of_unchanged_polls_is_written_in_one_statement(mirror_settings, assistant):
    runs = active_runs(assistant, 12)
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(next_poll_at=timezone.now() - dt.timedelta(seconds=1))
    claimed = poller.claim_due_runs("lane-a")
    assert len(claimed) == 12
    unchanged = []
    for run in claimed:
        assert poller.poll_claimed(run, "lane-a", unchanged=unchanged) == "same"
    with CaptureQueriesContext(connection) as queries:
        moved = release_unchanged(unchanged, "lane-a")
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert moved == [] and len(writes) == 1 and len(queries.captured_queries) == 1
    after = {r.pk: r for r in Run.objects.filter(pk__in=[r.pk for r in runs])}
    for seen in unchanged:
        row = after[seen.run.pk]
        assert row.claimed_by == "" and row.polls == seen.run.polls + 1
        assert row.observed_from == seen.started and row.observed_to == seen.received == row.synced_at
        assert seen.received < row.next_poll_at <= seen.received + dt.timedelta(seconds=mirror_settings["POLL_SLOW"])
    for run in runs:
        services.run_cancel(run=Run.objects.get(pk=run.pk))


def test_a_row_that_moved_during_the_pass_is_left_to_the_upsert(mirror_settings, assistant):
    [run] = active_runs(assistant, 1)
    Run.objects.filter(pk=run.pk).update(next_poll_at=timezone.now() - dt.timedelta(seconds=1))
    [claimed] = poller.claim_due_runs("lane-a")
    unchanged = []
    poller.poll_claimed(claimed, "lane-a", unchanged=unchanged)
    Run.objects.filter(pk=run.pk).update(status="cancelling")  # another source wrote meanwhile
    [moved] = release_unchanged(unchanged, "lane-a")
    assert moved.run.pk == run.pk and Run.objects.get(pk=run.pk).claimed_by == "lane-a"

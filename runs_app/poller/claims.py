"""Claims: a lane takes due runs with a lease, so no two lanes poll the same run at once (``SELECT … FOR UPDATE SKIP
LOCKED`` on PostgreSQL, a compare-and-set UPDATE elsewhere); a crashed lane's claims lapse after ``CLAIM_LEASE``."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction
from django.db.models import Case, F, IntegerField, Q, Value, When
from django.utils import timezone

from runs_app.conf import app_settings
from runs_app.models import ConnectionState, Run, RunStatus

logger = logging.getLogger("runs_app.poller")

def claim_due_runs(token: str, *, limit: int | None = None, now: dt.datetime | None = None,
                   connection_name: str | None = None) -> list[Run]:
    """Claim up to ``limit`` due runs (of one connection, if named), those about to start first, then the most overdue,
    for this lane; no other lane gets them until released or lapsed."""
    now = now or timezone.now()
    limit = app_settings.CLAIM_BATCH if limit is None else limit
    if limit <= 0:
        return []
    lease_until = now + dt.timedelta(seconds=app_settings.CLAIM_LEASE)
    paused = ConnectionState.objects.paused(now)
    # Most likely to have changed first: a queued run starts within about a second (just created, or just given
    # its tool outputs); then the most overdue. When the lane falls behind, this is where a change is waiting.
    starting = Case(When(status=RunStatus.QUEUED, then=Value(0)), default=Value(1), output_field=IntegerField())
    due = Run.objects.due_for_poll(now).exclude(connection__in=paused).order_by(starting, "next_poll_at")
    if connection_name is not None:
        due = due.filter(connection=connection_name)
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

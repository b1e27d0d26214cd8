"""Watchdogs: runs stuck past ``STUCK_AFTER`` and runs about to expire are flagged and signalled; connections silent
for ``HEALTH_PROBE_AFTER`` are probed, so ``/healthz`` reads a recent verdict without calling out itself."""

from __future__ import annotations

import datetime as dt
import logging

from django.utils import timezone

from runs_app import signals
from runs_app.assistants import AssistantsClient, AssistantsError
from runs_app.conf import app_settings
from runs_app.models import ConnectionState, Run, RunStatus
from runs_app.poller.budget import Budget

logger = logging.getLogger("runs_app.poller")

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
    horizon = now + dt.timedelta(seconds=app_settings.EXPIRING_WITHIN)
    for run in Run.objects.filter(status=RunStatus.REQUIRES_ACTION, expiring_flagged_at__isnull=True,
                                  expires_at__isnull=False, expires_at__lte=horizon):
        if Run.objects.filter(pk=run.pk, expiring_flagged_at__isnull=True).update(expiring_flagged_at=now):
            expiring += 1
            signals.run_expiring.send(sender=Run, run=run, expires_at=run.expires_at)
    return {"stuck": stuck, "expiring": expiring}


def probe_idle_connections(now: dt.datetime | None = None) -> list[str]:
    """One cheap call (list one assistant, no retry, short timeouts) to each connection that made no call for
    ``HEALTH_PROBE_AFTER`` seconds, recorded like every call: ``/healthz`` reads the verdict. Each probe is taken
    with a compare-and-set, so one lane probes. Returns the connections probed."""
    now = now or timezone.now()
    probed = []
    for name in app_settings.CONNECTIONS:
        if not ConnectionState.objects.take_probe(name, now, app_settings.HEALTH_PROBE_AFTER):
            continue
        probed.append(name)
        budget = Budget(name)
        try:
            client = AssistantsClient(name, max_retries=0, connect_timeout=2.0, read_timeout=5.0, budget=budget)
            client.list_assistants(limit=1)
            ConnectionState.objects.record(name, ok=1)
        except AssistantsError as exc:
            ConnectionState.objects.record(name, failed=1, error=str(exc))
        except Exception as exc:  # a bug in the probe must not stop the lane
            logger.warning("health probe of %s failed: %s", name, exc)
            ConnectionState.objects.record(name, failed=1, error=f"{type(exc).__name__}: {exc}")
        finally:
            budget.settle()
    return probed

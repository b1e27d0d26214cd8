"""``GET /healthz``: is this site able to do its job right now?

Checks, each ``ok`` or not, with the HTTP status 200 when all are ok and 503 otherwise:

- ``database``: one query.
- ``broker``: the django-q2 broker answers a ping (Redis, or the ORM broker's database).
- ``connections``: for each configured connection, its last successful and last failed call, as recorded by the
  poller. A connection is failing when its last call failed. One that made no call for ``HEALTH_PROBE_AFTER``
  seconds (nothing to poll) is probed by the poll lanes (one cheap call, no retries, short timeouts), so a dead
  service is noticed even when idle — and this page never calls the service itself.
- ``poller``: the poll lanes' heartbeats; stalled when runs are active and no lane beat within
  ``2 × LANE_STALE_AFTER`` s (a live lane beats every fifth of ``LANE_STALE_AFTER``, and the lane watcher
  starts a lane silent for ``LANE_STALE_AFTER`` again: silence for twice that means nothing restarted it).

Anonymous callers (load balancers) get each check's status; staff users also get the error texts.
"""

from __future__ import annotations

import datetime as dt

from django.db import connection as db
from django.db.models import Max
from django.utils import timezone
from django_q.brokers import get_broker

from runs_app.conf import app_settings
from runs_app.models import ConnectionState, PollerLane, Run


def _iso(value):
    return value.isoformat() if value else None


def check_database() -> dict:
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return {"ok": True, "vendor": db.vendor}
    except Exception as exc:  # reported, never raised
        return {"ok": False, "vendor": db.vendor, "error": f"{type(exc).__name__}: {exc}"}


def check_broker() -> dict:
    try:
        broker = get_broker()
        ok = bool(broker.ping())
        return {"ok": ok, "broker": type(broker).__name__} | ({} if ok else {"error": "the broker did not answer"})
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def check_connections(database_ok: bool) -> dict:
    """Each connection's last call, as the poller recorded it (an idle connection is probed by the lanes every
    ``HEALTH_PROBE_AFTER`` seconds): failing when its last call failed, unknown — and not ok — before any call."""
    out = {}
    now = timezone.now()
    names = list(app_settings.CONNECTIONS)
    states = {s.connection: s for s in ConnectionState.objects.filter(connection__in=names)} if database_ok else {}
    for name in app_settings.CONNECTIONS:
        state = states.get(name)
        success = state.last_success_at if state else None
        failure = state.last_error_at if state else None
        failing = failure is not None and (success is None or failure > success)
        error = state.last_error if state and failing else ""
        if success is None and failure is None:
            error = "no call recorded yet: the poll lanes probe an idle connection every HEALTH_PROBE_AFTER seconds"
        out[name] = {"ok": database_ok and not failing and success is not None,
                     "last_success_at": _iso(success), "last_error_at": _iso(failure),
                     "paused_until": _iso(state.paused_until if state and state.paused_until
                                          and state.paused_until > now else None),
                     "error": error}
    return out


def check_poller(database_ok: bool) -> dict:
    if not database_ok:
        return {"ok": False, "error": "the database is unavailable"}
    active = Run.objects.active().count()
    beat = PollerLane.objects.aggregate(m=Max("heartbeat_at"))["m"]
    limit = 2 * app_settings.LANE_STALE_AFTER
    stalled = active > 0 and (beat is None or (timezone.now() - beat) > dt.timedelta(seconds=limit))
    return {"ok": not stalled, "active_runs": active, "last_heartbeat_at": _iso(beat)} | (
        {"error": f"{active} active runs and no poll lane beat within {limit:g} s"} if stalled else {})


def report(*, details: bool) -> tuple[dict, int]:
    database = check_database()
    checks = {"database": database, "broker": check_broker(),
              "connections": check_connections(database["ok"]), "poller": check_poller(database["ok"])}
    ok = (database["ok"] and checks["broker"]["ok"] and checks["poller"]["ok"]
          and all(c["ok"] for c in checks["connections"].values()))
    if not details:
        for check in [checks["database"], checks["broker"], checks["poller"], *checks["connections"].values()]:
            check.pop("error", None)
    return {"status": "ok" if ok else "failing", "checks": checks, "time": _iso(timezone.now())}, (200 if ok else 503)

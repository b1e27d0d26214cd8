"""What the sync engine is doing right now, read from the mirror (``manage.py runs_sync_status``).

Read-only: active runs by connection and status, how many are due or claimed, how far behind the
mirror is (now − ``synced_at`` over active runs), each connection's request counters and pause, what its
thread discovery costs and found, each poll lane's heartbeat, and the stuck/expiring flags.
"""

from __future__ import annotations

import datetime as dt
import statistics

from django.db.models import Count
from django.utils import timezone

from runs_app.conf import app_settings
from runs_app.models import ConnectionState, PollerLane, Run


def sync_status(*, now: dt.datetime | None = None) -> dict:
    """A JSON-ready snapshot; times are ISO 8601, ages and lags are seconds."""
    now = now or timezone.now()
    active = Run.objects.active()
    by_connection: dict[str, dict[str, int]] = {}
    for row in active.values("connection", "status").annotate(n=Count("id")).order_by("connection", "status"):
        by_connection.setdefault(row["connection"], {})[row["status"]] = row["n"]
    lags = sorted((now - synced).total_seconds() for synced in
                  active.filter(synced_at__isnull=False).values_list("synced_at", flat=True))
    # A lane whose heartbeat is older than this is dead, and started again (poller.lane_stale_before).
    stale_after = app_settings.LANE_STALE_AFTER
    discovering = set(app_settings.connections_discovering_threads())
    return {
        "now": now.isoformat(),
        "active_runs": {
            "total": sum(sum(statuses.values()) for statuses in by_connection.values()),
            "by_connection": by_connection,
            "due_now": Run.objects.due_for_poll(now).count(),
            "claimed": active.filter(claimed_until__gt=now).count(),
            "never_synced": active.filter(synced_at__isnull=True).count(),
        },
        "lag_seconds": {
            "max": round(lags[-1], 3) if lags else None,
            "p50": round(statistics.median(lags), 3) if lags else None,
        },
        "stuck": Run.objects.stuck().count(),
        "expiring": Run.objects.expiring_soon().count(),
        "connections": [
            {
                "connection": state.connection,
                "requests": state.requests,
                "rate_limited": state.rate_limited,
                "paused": bool(state.paused_until and state.paused_until > now),
                "paused_until": _iso(state.paused_until) if state.paused_until and state.paused_until > now else None,
                "pause_reason": state.pause_reason if state.paused_until and state.paused_until > now else "",
                "last_success_at": _iso(state.last_success_at),
                "last_error_at": _iso(state.last_error_at),
                "last_error": state.last_error,
                "max_requests_per_second": _budget_rate(state.connection),
                "throttle": round(state.throttle_at(now), 3),
                "budget_granted": state.budget_granted,
                "discover_threads": state.connection in discovering,
                "discovery_requests": state.discovery_requests,
                "threads_discovered": state.threads_discovered,
                "next_thread_discovery_at": _iso(state.next_thread_discovery_at),
            }
            for state in ConnectionState.objects.order_by("connection")
        ],
        "lanes": [
            {
                "lane": lane.lane,
                "heartbeat_at": _iso(lane.heartbeat_at),
                "heartbeat_age": round((now - lane.heartbeat_at).total_seconds(), 3) if lane.heartbeat_at else None,
                "alive": bool(lane.token and lane.heartbeat_at
                              and (now - lane.heartbeat_at).total_seconds() <= stale_after),
                "cycles": lane.cycles,
                "runs_polled": lane.runs_polled,
            }
            for lane in PollerLane.objects.order_by("lane")
        ],
    }


def _budget_rate(name: str) -> float | None:
    """The connection's MAX_REQUESTS_PER_SECOND (None for a connection no longer configured)."""
    if name not in app_settings.CONNECTIONS:
        return None
    return app_settings.connection(name)["MAX_REQUESTS_PER_SECOND"]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None

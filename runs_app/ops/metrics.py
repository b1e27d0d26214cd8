"""Prometheus metrics (``prometheus_client``), served at ``GET /metrics``.

Read from the database at scrape time, so every web process answers for the whole deployment (all q
clusters, all machines):

- ``runs_app_runs{status}`` — runs in the mirror by status (gauge);
- ``runs_app_runs_needing_action``, ``runs_app_runs_stuck``, ``runs_app_runs_expiring`` (gauges);
- ``runs_app_remote_requests_total{connection,outcome}`` — the poller's calls to the service, ``outcome`` one
  of ``ok``, ``error``, ``rate_limited`` (counter);
- ``runs_app_rate_limited_total{connection}`` — 429s seen by the poller (counter);
- ``runs_app_connection_paused{connection}`` — 1 while polling of the connection is paused after a 429;
- ``runs_app_connection_last_success_timestamp_seconds{connection}``;
- ``runs_app_request_budget_per_second{connection}``, ``runs_app_connection_throttle{connection}`` and
  ``runs_app_request_budget_granted_total{connection}`` — the poller's request budget in use, the share of it a 429
  left, and what it granted;
- ``runs_app_thread_discovery_requests_total{connection}`` and ``runs_app_threads_discovered_total{connection}`` —
  what listing the service's threads (``DISCOVER_THREADS``) cost and found (counters);
- ``runs_app_polls_total{lane}`` and ``runs_app_poll_cycles_total{lane}`` — runs polled and cycles per lane;
- ``runs_app_poller_heartbeat_age_seconds{lane}``;
- ``runs_app_sync_lag_seconds`` — a gauge histogram of the active runs' lag (now − the last time their state
  was observed).

Kept in each web process (with ``PROMETHEUS_MULTIPROC_DIR`` set, summed over gunicorn's workers by
prometheus_client's multiprocess mode):

- ``runs_app_relay_streams_open`` — relayed streams and mirror feeds open now (gauge).
- ``runs_app_relay_events_total`` — events relayed to browsers (counter).
"""

from __future__ import annotations

import os

from django.db.models import Count
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily

from runs_app.conf import app_settings
from runs_app.models import ConnectionState, PollerLane, Run, RunStatus

LAG_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)

STREAMS_OPEN = Gauge("runs_app_relay_streams_open", "Relayed streams and mirror feeds open now.",
                     multiprocess_mode="livesum")
EVENTS_RELAYED = Counter("runs_app_relay_events", "Events relayed to browsers.")


class MirrorCollector:
    """Collects from the database on each scrape."""

    def collect(self):
        now = timezone.now()
        runs = GaugeMetricFamily("runs_app_runs", "Runs in the mirror by status.", labels=["status"])
        counts = dict(Run.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        for status in RunStatus.values:
            runs.add_metric([status], counts.get(status, 0))
        yield runs
        yield GaugeMetricFamily("runs_app_runs_needing_action", "Runs waiting in requires_action.",
                                value=Run.objects.needing_action().count())
        yield GaugeMetricFamily("runs_app_runs_stuck", "Active runs flagged stuck.", value=Run.objects.stuck().count())
        yield GaugeMetricFamily("runs_app_runs_expiring", "Runs in requires_action close to expires_at.",
                                value=Run.objects.expiring_soon().count())

        requests = CounterMetricFamily("runs_app_remote_requests", "The poller's calls to the service by outcome.",
                                       labels=["connection", "outcome"])
        limited = CounterMetricFamily("runs_app_rate_limited", "429s seen by the poller.", labels=["connection"])
        paused = GaugeMetricFamily("runs_app_connection_paused", "1 while the connection's polling is paused.",
                                   labels=["connection"])
        success = GaugeMetricFamily("runs_app_connection_last_success_timestamp_seconds",
                                    "When the connection last answered a call.", labels=["connection"])
        budget = GaugeMetricFamily("runs_app_request_budget_per_second",
                                   "The poller's request budget in use: MAX_REQUESTS_PER_SECOND times the throttle.",
                                   labels=["connection"])
        throttle = GaugeMetricFamily("runs_app_connection_throttle",
                                     "The share of the request budget in use (429s lower it; it climbs back).",
                                     labels=["connection"])
        granted = CounterMetricFamily("runs_app_request_budget_granted",
                                      "Requests the budget granted the poller.", labels=["connection"])
        discovery = CounterMetricFamily("runs_app_thread_discovery_requests",
                                        "Requests made by thread discovery (DISCOVER_THREADS).", labels=["connection"])
        discovered = CounterMetricFamily("runs_app_threads_discovered", "Threads found by thread discovery.",
                                         labels=["connection"])
        for state in ConnectionState.objects.all():
            share = state.throttle_at(now)
            throttle.add_metric([state.connection], share)
            granted.add_metric([state.connection], state.budget_granted)
            if state.connection in app_settings.CONNECTIONS:
                rate = app_settings.connection(state.connection)["MAX_REQUESTS_PER_SECOND"]
                budget.add_metric([state.connection], rate * share)
            discovery.add_metric([state.connection], state.discovery_requests)
            discovered.add_metric([state.connection], state.threads_discovered)
            failed = state.failed_requests
            requests.add_metric([state.connection, "ok"], max(0, state.requests - failed - state.rate_limited))
            requests.add_metric([state.connection, "error"], failed)
            requests.add_metric([state.connection, "rate_limited"], state.rate_limited)
            limited.add_metric([state.connection], state.rate_limited)
            paused.add_metric([state.connection], 1 if state.paused_until and state.paused_until > now else 0)
            if state.last_success_at:
                success.add_metric([state.connection], state.last_success_at.timestamp())
        yield from (requests, limited, paused, success, budget, throttle, granted, discovery, discovered)

        polls = CounterMetricFamily("runs_app_polls", "Runs polled, per poll lane.", labels=["lane"])
        cycles = CounterMetricFamily("runs_app_poll_cycles", "Poll cycles run, per lane.", labels=["lane"])
        age = GaugeMetricFamily("runs_app_poller_heartbeat_age_seconds", "Seconds since the lane's heartbeat.",
                                labels=["lane"])
        for lane in PollerLane.objects.all():
            polls.add_metric([str(lane.lane)], lane.runs_polled)
            cycles.add_metric([str(lane.lane)], lane.cycles)
            if lane.heartbeat_at:
                age.add_metric([str(lane.lane)], max(0.0, (now - lane.heartbeat_at).total_seconds()))
        yield from (polls, cycles, age)

        lags = []
        for observed, synced in Run.objects.active().values_list("observed_to", "synced_at"):
            seen = observed or synced
            if seen:
                lags.append(max(0.0, (now - seen).total_seconds()))
        buckets, total = [], 0
        for bound in LAG_BUCKETS:
            total = sum(1 for lag in lags if lag <= bound)
            buckets.append((str(bound), total))
        buckets.append(("+Inf", len(lags)))
        yield GaugeHistogramMetricFamily("runs_app_sync_lag_seconds",
                                         "Active runs by how long ago their state was observed.",
                                         buckets=buckets, gsum_value=sum(lags))


def render() -> bytes:
    registry = CollectorRegistry()
    registry.register(MirrorCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(STREAMS_OPEN)
        registry.register(EVENTS_RELAYED)
    return generate_latest(registry)

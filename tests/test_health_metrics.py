"""/healthz (database, broker, each connection's last call, the poller) and /metrics (Prometheus)."""

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from assistants_emulator import serve_in_thread
from runs_app import poller, services
from runs_app.models import ConnectionState, PollerLane
from runs_app.web import relay
from tests.client_helpers import wait_for
from tests.conftest import FAST_POLLER

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(viewer):
    """A test client logged in as staff (who may see /healthz's details and /metrics)."""
    client = Client()
    client.force_login(viewer)
    return client


def test_healthz_turns_503_when_the_service_stops_and_200_when_it_returns(q_cluster, settings, staff):
    url, handle = serve_in_thread(api_key="k-health-cnry7-1", speed=50)
    port = handle.url.rsplit(":", 1)[1]
    runs_app = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": url, "API_KEY": "k-health-cnry7-1"}},
                **FAST_POLLER, "HEALTH_PROBE_AFTER": 0.3, "LANE_STALE_AFTER": 2.0}
    settings.RUNS_APP = runs_app
    # Nothing to poll: the lanes of a real q cluster probe the idle connection; /healthz only reads what they saw.
    q_cluster(**runs_app)
    anonymous = Client()
    try:
        response = wait_for(lambda: (r := anonymous.get("/healthz")).status_code == 200 and r, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "ok", body
        assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
        assert body["checks"]["connections"]["default"]["last_success_at"]
        handle.stop()
        response = wait_for(lambda: (r := anonymous.get("/healthz")).status_code == 503 and r, timeout=20)
        body = response.json()
        assert body["status"] == "failing" and not body["checks"]["connections"]["default"]["ok"]
        assert "error" not in body["checks"]["connections"]["default"]  # anonymous callers get no error text
        detail = staff.get("/healthz").json()["checks"]["connections"]["default"]
        assert detail["error"] and "k-health-cnry7-1" not in detail["error"]
    finally:
        handle.stop()
    _, handle = serve_in_thread(port=int(port), api_key="k-health-cnry7-1", speed=50)
    try:
        wait_for(lambda: anonymous.get("/healthz").status_code == 200, timeout=20)
    finally:
        handle.stop()


def test_healthz_flags_a_stalled_poller(mirror_settings, assistant, settings):
    settings.RUNS_APP = {**mirror_settings, "CYCLE_SECONDS": 0.1}
    run = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "wait [slow:30]"}]})
    body = Client().get("/healthz").json()  # no q cluster: nothing beats
    assert body["checks"]["poller"]["ok"] is False and body["checks"]["poller"]["active_runs"] == 1
    settings.RUNS_APP = {**mirror_settings, "LANE_STALE_AFTER": 10.0}
    lane = PollerLane.objects.create(lane=0, heartbeat_at=timezone.now() - dt.timedelta(seconds=21))
    body = Client().get("/healthz").json()  # a beat older than 2 × LANE_STALE_AFTER: nothing restarted the lane
    assert body["checks"]["poller"]["ok"] is False
    PollerLane.objects.filter(pk=lane.pk).update(heartbeat_at=timezone.now() - dt.timedelta(seconds=19))
    assert Client().get("/healthz").json()["checks"]["poller"]["ok"] is True
    services.run_cancel(run=run)


def test_metrics_need_staff_or_the_bearer_token(settings, mirror_settings, staff):
    assert Client().get("/metrics").status_code == 403
    settings.RUNS_APP = {**mirror_settings, "METRICS_TOKEN": "prom-secret-cnry7-1"}
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer prom-secret-cnry7-1").status_code == 200
    assert staff.get("/metrics").status_code == 200


@pytest.mark.slow  # a stream that lasts 3 real seconds ([slow:3])
def test_metrics_report_runs_requests_lag_and_open_streams(mirror_settings, assistant, staff):
    done = services.thread_and_run_create(assistant_id=assistant["id"], thread={
        "messages": [{"role": "user", "content": "hi"}]})
    wait_for(lambda: services.run_refresh(run=done).is_terminal)
    ConnectionState.objects.record("default", ok=2)
    ConnectionState.objects.record("default", failed=1, error="HTTP 500")
    poller.pause_connection("default", 5, "429")
    thread = services.thread_create(messages=[{"role": "user", "content": "stream it [words:50] [slow:3]"}])
    stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant["id"]))
    chunks = iter(stream)
    next(chunks), next(chunks)  # one stream open (in a test transaction each event is applied after it was sent)
    text = staff.get("/metrics").content.decode()
    assert 'runs_app_runs{status="completed"} 1.0' in text
    assert 'runs_app_remote_requests_total{connection="default",outcome="ok"} 2.0' in text
    assert 'runs_app_remote_requests_total{connection="default",outcome="error"} 1.0' in text
    assert 'runs_app_rate_limited_total{connection="default"} 1.0' in text
    assert 'runs_app_connection_paused{connection="default"} 1.0' in text
    assert "runs_app_relay_streams_open 1.0" in text
    assert 'runs_app_sync_lag_seconds_bucket{le="+Inf"} 1.0' in text  # the streamed run is active
    for _ in chunks:  # to its end
        pass
    text = staff.get("/metrics").content.decode()
    assert "runs_app_relay_streams_open 0.0" in text and 'runs_app_runs{status="completed"} 2.0' in text
    assert ConnectionState.objects.get(connection="default").failed_requests == 1

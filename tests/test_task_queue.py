"""A real django-q2 cluster runs tasks through the configured broker (ORM broker, or Redis with REDIS_URL)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django_q.brokers import get_broker
from django_q.tasks import async_task, result

from tests.conftest import IN_CI, database_url_of_this_test_database, require

ROOT = Path(__file__).resolve().parent.parent


def test_ci_leg_runs_on_the_configured_database_and_broker():
    leg = os.environ.get("RUNS_APP_CI_LEG")
    if leg is None:
        require("a CI leg", not IN_CI, "RUNS_APP_CI_LEG is not set by .ci/run")
        pytest.skip("not a CI leg")
    if leg == "postgres":
        assert connection.vendor == "postgresql"
        assert "redis" in settings.Q_CLUSTER
    else:
        assert connection.vendor == "sqlite"
        assert settings.Q_CLUSTER.get("orm") == "default"


@pytest.mark.django_db
def test_broker_is_reachable():
    broker = get_broker()
    try:
        reachable = broker.ping()
        reason = ""
    except Exception as exc:  # the broker's own connection error, whatever library raised it
        reachable, reason = False, f"{type(exc).__name__}: {exc}"
    require(f"the {type(broker).__name__} broker", reachable, reason)


@pytest.mark.slow  # a manage.py qcluster subprocess of its own
@pytest.mark.django_db(transaction=True)
def test_q_cluster_runs_a_task_through_the_configured_broker():
    env = {**os.environ, "DATABASE_URL": database_url_of_this_test_database(),
           "DJANGO_SETTINGS_MODULE": "tests.settings"}
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        task_id = async_task("math.floor", 2.5)
        deadline = time.monotonic() + 60
        outcome = None
        # result() waits on the task's row; stop early if the cluster died.
        while outcome is None and cluster.poll() is None and time.monotonic() < deadline:
            outcome = result(task_id, wait=500)
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()
    assert outcome == 2, cluster.stdout.read()[-3000:]

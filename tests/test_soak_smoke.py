"""The fault soak (bench/soak.py) at a small size: every shape of run under faults, two q clusters on
PostgreSQL with Redis, one SIGKILLed midway. Full size is run by hand (bench/RESULTS.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _pg_and_redis():
    import socket

    for port in (5432, 6379):
        with socket.socket() as s:
            s.settimeout(2)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return False, f"nothing listens on 127.0.0.1:{port}"
    return True, ""


@pytest.mark.skipif(os.environ.get("RUNS_APP_CI_LEG") == "sqlite", reason="runs on the PostgreSQL + Redis leg")
def test_a_small_soak_under_faults_and_a_killed_cluster_mirrors_every_run_once_and_right():
    ok, why = _pg_and_redis()
    require("PostgreSQL and Redis", ok, why)
    out = subprocess.run([sys.executable, "bench/soak.py", "--runs", "14", "--concurrency", "4", "--timeout", "240"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[-1])
    log_dir = os.environ.get("RUNS_APP_TEST_LOG_DIR")
    if log_dir:  # the whole reading and the soak's stderr, kept with CI's logs
        Path(log_dir, "soak_small.json").write_text(json.dumps(result, default=str, indent=1) + "\n")
        Path(log_dir, "soak_small.stderr.log").write_text(out.stderr)
    # The verdict's inputs first (pytest truncates a long message): which check failed is then readable.
    verdict = {k: result.get(k) for k in (
        "passed", "created", "checked", "mismatches", "mismatch_samples", "duplicates", "still_active",
        "lane_heartbeat_age_s", "driver_errors", "driver_error_samples", "failed_q_tasks", "seconds", "error")}
    assert out.returncode == 0 and result["passed"], f"{verdict}\n--- stderr tail ---\n{out.stderr[-2000:]}"
    assert result["created"] == result["checked"] == 14
    assert result["mismatches"] == 0 and result["duplicates"] == 0 and result["still_active"] == 0
    assert result["killed_at_s"] is not None

"""Run bench/mirror_lag.py at a tiny size on SQLite so the benchmark script cannot rot (numbers not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "bench" / "mirror_lag.py"


def test_mirror_lag_bench_runs_at_small_size():
    cmd = [sys.executable, str(BENCH), "--runs", "5", "--slow-min", "1", "--slow-max", "2", "--tool-share", "0.4",
           "--tool-delay-min", "0.3", "--tool-delay-max", "0.6", "--set", "CYCLE_SECONDS=3"]
    # The bench picks its own SQLite file, emulator port and q cluster name; it must not use this run's database.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "RUNS_APP_TEST_SETTINGS", "RUNS_APP_TEST_Q_NAME")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("SUMMARY mirror p50/p90/p99/max") for line in lines), proc.stdout[-3000:]
    results = json.loads(lines[-1])
    for mode in ("mirror", "baseline"):
        assert results[mode]["runs"] == 5
        assert results[mode]["lag"]["missed"] == 0, results[mode]["lag"]
        assert results[mode]["lag"]["p99"] is not None
        assert results[mode]["gets"] > 0

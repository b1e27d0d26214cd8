"""Run bench/emulator_throughput.py at a tiny size so the benchmark script cannot rot (numbers not asserted)."""

import json
import subprocess
import sys

import pytest

from assistants_emulator.tests.schema import REPO_ROOT

pytestmark = pytest.mark.slow

BENCH = REPO_ROOT / "bench" / "emulator_throughput.py"


def test_bench_script_runs_at_small_size():
    cmd = [sys.executable, str(BENCH), "--loader", "python", "--gets", "200", "--clients", "2"]
    cmd += ["--streams", "5", "--slow", "0.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["gets"]["requests"] == 200 and results["gets"]["errors"] == 0
    assert results["gets"]["per_second"] > 0
    assert results["streams"]["completed_with_done"] == 5, results["streams"]
    assert results["machine"]["nproc"] >= 1

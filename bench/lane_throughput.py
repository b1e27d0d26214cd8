"""Lane throughput: how many runs one poll lane polls per second, in this process and inside a real q cluster.

Starts a counting emulator (bench/mirror_lag.py's), creates --runs runs that stay `in_progress` for an hour
(`[slow:3600]`) and registers them in a fresh mirror database, with a poller configured so every run is always due
(POLL_FAST = ACTIVE_WINDOW-long 0.05 s). Then, for --seconds each:

A. in-process: `runs_app.poller.run_lane` called here (optionally under cProfile: --profile prints the top lines);
B. in-cluster: `manage.py qcluster` subprocess(es) (--clusters, Q_WORKERS) running the lane(s) (--lanes).

Both count polls from the lanes' own counters (`PollerLane.runs_polled`) and the GETs the emulator served, and
report polls per second and the ratio B / A. Every poll in this workload finds the run unchanged: it measures the
poller's steady state, where almost all of its work is.

    .venv/bin/python bench/lane_throughput.py --runs 500 --seconds 20
    .venv/bin/python bench/lane_throughput.py --runs 500 --seconds 20 --profile          # cProfile of A
    .venv/bin/python bench/lane_throughput.py --database postgres --lanes 2 --clusters 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.emulator_throughput import free_port, machine  # noqa: E402
from bench.mirror_lag import API_KEY, API_VERSION, Cleanup, Emulator, gets, request_delta, start_emulator  # noqa: E402

PG_URL = "postgres://postgres@127.0.0.1:5432/runs_app_bench_lanes"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--lanes", type=int, default=1)
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="q workers per cluster")
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process lane; print the top")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RUNS_APP key (JSON)")
    parser.add_argument("--record", type=Path, help="append a markdown summary to this file")
    args = parser.parse_args(argv)

    cleanup = Cleanup()
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    try:
        port = free_port()
        cleanup.add(start_emulator(port))
        emu = Emulator(port)
        runs_app = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": emu.url,
                                                "API_VERSION": API_VERSION, "API_KEY": API_KEY}},
                    "POLL_FAST": 0.05, "POLL_INTERVAL": 0.05, "ACTIVE_WINDOW": 7200.0, "POLLER_LANES": args.lanes,
                    "DISCOVERY_INTERVAL": 3600.0, "HEALTH_PROBE_AFTER": 3600.0}
        for item in args.set:
            key, _, value = item.partition("=")
            runs_app[key] = json.loads(value)
        if args.database == "postgres":
            database = PG_URL
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            "DROP DATABASE IF EXISTS runs_app_bench_lanes"], check=True)
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            "CREATE DATABASE runs_app_bench_lanes"], check=True)
        else:
            path = Path(tempfile.gettempdir()) / f"bench-lanes-{os.getpid()}.sqlite3"
            cleanup.files.append(path)
            database = f"sqlite:///{path}"
        os.environ.update({"DATABASE_URL": database, "DJANGO_SETTINGS_MODULE": "tests.settings",
                           "RUNS_APP_TEST_SETTINGS": json.dumps(runs_app), "Q_WORKERS": str(args.workers),
                           "RUNS_APP_TEST_Q_NAME": f"bench_lanes_{os.getpid()}"})
        if args.database == "postgres":
            os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/0"
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO_ROOT, check=True,
                       env={**os.environ})
        import django

        django.setup()
        from django.utils import timezone

        from runs_app import poller
        from runs_app.mirror.ordering import Observation
        from runs_app.mirror.upsert import apply_run
        from runs_app.models import PollerLane, Run, Source

        assistant_id = emu.call("POST", "/assistants", {"model": "gpt-4o"})["id"]

        def create(i):
            body = {"assistant_id": assistant_id, "thread": {"messages": [
                {"role": "user", "content": f"lane bench {i} [slow:3600]"}]}}
            return emu.call("POST", "/threads/runs", body)

        with ThreadPoolExecutor(16) as pool:
            for payload in pool.map(create, range(args.runs)):
                apply_run(payload, connection="default", seen=Observation.now(Source.ACTION, timezone.now()))
        # Everything in_progress in the mirror first (one pass), so the measured polls all find the same state.
        deadline = time.monotonic() + 60
        while Run.objects.exclude(status="in_progress").exists() and time.monotonic() < deadline:
            for run in Run.objects.exclude(status="in_progress").select_related("thread")[:200]:
                poller.poll_claimed(run, "warmup")
        results["runs"] = Run.objects.active().count()

        def measure(label: str, body) -> dict:
            PollerLane.objects.update(runs_polled=0, cycles=0)
            before = emu.requests_served()
            started = time.monotonic()
            body()
            took = time.monotonic() - started
            polled = sum(PollerLane.objects.values_list("runs_polled", flat=True))
            served = gets(request_delta(before, emu.requests_served()))
            out = {"seconds": round(took, 2), "polls": polled, "polls_per_second": round(polled / took, 1),
                   "gets_served": served}
            print(f"{label}: {out}", flush=True)
            return out

        if not args.skip_in_process:
            def in_process():
                token = uuid.uuid4().hex
                PollerLane.objects.update_or_create(lane=0, defaults={"token": token, "heartbeat_at": timezone.now()})
                if args.profile:
                    profiler = cProfile.Profile()
                    profiler.enable()
                poller.run_lane(0, token, seconds=args.seconds)
                if args.profile:
                    profiler.disable()
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
                    results["profile_tottime"] = text.getvalue()
                    print(text.getvalue(), flush=True)
                PollerLane.objects.update(token="")

            results["in_process"] = measure("in-process", in_process)
        for _ in range(args.clusters):
            log = tempfile.NamedTemporaryFile("w+", prefix="bench-lanes-q-", suffix=".log", delete=False)  # noqa: SIM115
            cleanup.files.append(Path(log.name))
            cleanup.add(subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=REPO_ROOT, env={**os.environ},
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        poller.ensure_running(force=True)
        deadline = time.monotonic() + 60
        while PollerLane.objects.filter(cycles__gt=0).count() < args.lanes and time.monotonic() < deadline:
            time.sleep(0.1)
        # The clusters' start-up is not measured: the window opens once every lane runs.
        PollerLane.objects.update(runs_polled=0)
        before = emu.requests_served()
        time.sleep(args.seconds)
        polled = sum(PollerLane.objects.values_list("runs_polled", flat=True))
        served = gets(request_delta(before, emu.requests_served()))
        results["in_cluster"] = {"seconds": args.seconds, "polls": polled,
                                 "polls_per_second": round(polled / args.seconds, 1), "gets_served": served}
        print(f"in-cluster: {results['in_cluster']}", flush=True)
        PollerLane.objects.update(token="")
        if "in_process" in results:
            results["cluster_over_in_process"] = round(
                results["in_cluster"]["polls_per_second"] / max(0.1, results["in_process"]["polls_per_second"]), 2)
        results["settings"] = {k: v for k, v in runs_app.items() if k != "CONNECTIONS"}
        results["database"] = args.database
        results["clusters"], results["workers"] = args.clusters, args.workers
    finally:
        cleanup.close()
    print("SUMMARY " + json.dumps({k: results.get(k) for k in ("runs", "in_process", "in_cluster",
                                                              "cluster_over_in_process", "database")}))
    if args.record:
        record(args.record, "python bench/lane_throughput.py " + " ".join(argv or sys.argv[1:]), results)
    return 0


def record(path: Path, command: str, results: dict) -> None:
    box = results["machine"]
    lines = ["", f"### Lane throughput — {results['date']}", "",
             f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}",
             f"- Command: `{command}`",
             f"- {results['runs']} runs always due and unchanged; {results['database']}; "
             f"{results['clusters']} cluster(s) × {results['workers']} workers; "
             f"settings {json.dumps(results['settings'])}",
             "", "| where | polls/s | polls | seconds |", "|---|---|---|---|"]
    for key in ("in_process", "in_cluster"):
        if key in results:
            r = results[key]
            lines.append(f"| {key.replace('_', ' ')} | {r['polls_per_second']} | {r['polls']} | {r['seconds']} |")
    if "cluster_over_in_process" in results:
        lines += ["", f"In-cluster / in-process: {results['cluster_over_in_process']}."]
    if "profile_tottime" in results:
        lines += ["", "In-process profile (cProfile, top by own time):", "", "```",
                  *results["profile_tottime"].strip().splitlines()[:40], "```"]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())

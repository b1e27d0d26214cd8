"""Fault soak: many runs of every shape under injected faults, two q clusters, one killed and restarted.

Starts the emulator (`--speed 5 --control --expire-after 20`, with the mirror_lag bench's request counter), a
fresh PostgreSQL database `soak_<pid>` (migrated), Redis as the broker (a queue name of its own), and two
`manage.py qcluster` processes on them. Then, from this process, through `runs_app.services` and
`runs_app.web.relay` (as the admin, the API and the live page do), with the faults switched on:

- N runs, each on a new thread, shapes in turn: plain text, streamed through the relay (`cut` faults break
  some streams; the poller finishes those), a function tool answered once the mirror shows
  `requires_action`, `[fail:server_error]`, `[incomplete]`, cancelled while in progress, `[expire]`;
- faults on every API request: `--faults` (default 10% 429, 5% 5xx, 2% resets, 1% dropped responses after
  the service acted, 10% of streams cut after 5 events);
- midway, cluster 1 gets SIGKILL (its whole process group) and is started again after `--down` seconds.

When every run is terminal in the mirror (or `--timeout`), faults go off and each run is compared with the
emulator's truth: status, its steps (id, type, status) and its assistant messages' text. Duplicates: each
thread must hold exactly one run on the service. Exit 0 only with 0 mismatches, 0 duplicates, every run
terminal, and the poll lanes still beating at the end.

    .venv/bin/python bench/soak.py --runs 500 --record bench/RESULTS.md     # full size, by hand
    .venv/bin/python bench/soak.py --runs 14                                # CI size (tests/test_soak_smoke.py)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.emulator_throughput import free_port, machine  # noqa: E402
from bench.mirror_lag import API_KEY, WEATHER_TOOL, Emulator, lags  # noqa: E402

SHAPES = ["plain", "stream", "tool", "fail", "incomplete", "cancel", "expire"]
TEXT = {
    "plain": "soak {i}: answer [words:12] [slow:{slow}]",
    "stream": "soak {i}: a streamed answer [words:30] [slow:{slow}]",
    "tool": "soak {i}: call get_weather for Oslo",
    "fail": "soak {i}: [fail:server_error] [slow:{slow}]",
    "incomplete": "soak {i}: [incomplete]",
    "cancel": "soak {i}: long [slow:30]",
    "expire": "soak {i}: [expire]",
}
FAULTS = "429=0.1,5xx=0.05,reset=0.02,drop=0.01,cut=0.1@5"


def start_emulator(port: int, expire_after: float) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "mirror_lag.py"), "_serve_emulator", "--port", str(port),
           "--api-key", API_KEY, "--speed", "5", "--control", "--expire-after", str(expire_after),
           "--seed", str(int(time.time()) % 100000)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
                            start_new_session=True)
    emu = Emulator(port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            emu._session().get(f"{emu.url}/_emulator/health", timeout=2)
            return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the emulator did not start")


class Cluster:
    def __init__(self, env: dict, name: str):
        self.env, self.name = env, name
        self.log = Path(tempfile.gettempdir()) / f"soak-{os.getpid()}-{name}.log"
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=REPO_ROOT, env=self.env,
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def with_retries(func, *args, attempts=8, **kwargs):
    """The driver's own retry of a refused call (as an operator would click again)."""
    from runs_app.assistants import AssistantsError

    for attempt in range(attempts):
        try:
            return func(*args, **kwargs)
        except AssistantsError:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.2 * 2 ** attempt, 3))
    return None


def drive(args, assistant_id: str, kill_cluster) -> dict:
    """Create and steer the runs; returns what the driver did."""
    from django.db import close_old_connections

    from runs_app import services
    from runs_app.assistants import AssistantsError
    from runs_app.models import Run, Thread
    from runs_app.web import relay

    rng = random.Random(args.seed)
    jobs = [{"i": i, "shape": SHAPES[i % len(SHAPES)], "slow": round(rng.uniform(1, 6), 1)} for i in range(args.runs)]
    created: dict[int, str] = {}
    shape_of: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def create(job):
        try:
            thread = with_retries(services.thread_create)
            text = TEXT[job["shape"]].format(**job)
            with_retries(services.message_create, thread=thread, content=text)
            if job["shape"] == "stream":
                for _attempt in range(3):  # as a user would: if the service refused it, start it again
                    try:
                        stream = relay.Relay(services.run_create_stream(thread=thread, assistant_id=assistant_id))
                        for _ in stream:
                            pass
                        break
                    except AssistantsError as exc:
                        errors.append(f"stream {job['i']}: {exc}")
                        # Did it happen? Look at the thread on the service before trying again (no duplicates).
                        with_retries(services.thread_import, thread_id=thread.remote_id)
                        if Run.objects.filter(thread=thread).exists():
                            break
            else:
                try:
                    services.run_create(thread=thread, assistant_id=assistant_id)
                except AssistantsError:
                    # Did it happen? Look at the thread on the service before trying again (no duplicates).
                    with_retries(services.thread_import, thread_id=thread.remote_id)
                    if not Run.objects.filter(thread=thread).exists():
                        with_retries(services.run_create, thread=thread, assistant_id=assistant_id)
            run = Run.objects.filter(thread=Thread.objects.get(pk=thread.pk)).first()
            if run is None:
                with_retries(services.thread_import, thread_id=thread.remote_id)
                run = Run.objects.filter(thread=thread).first()
            with lock:
                created[job["i"]] = run.remote_id if run else ""
                if run:
                    shape_of[run.remote_id] = job["shape"]
        except Exception as exc:  # noqa: BLE001 - counted
            errors.append(f"create {job['i']}: {exc!r}")
        finally:
            close_old_connections()

    answered: set[str] = set()
    cancelled: set[str] = set()
    stop = threading.Event()

    def steer():
        """Answer tool calls and cancel the runs meant to be cancelled, from what the mirror shows."""
        try:
            while not stop.is_set():
                for run in Run.objects.filter(status__in=["requires_action", "in_progress", "queued"]):
                    shape = shape_of.get(run.remote_id)
                    try:
                        if shape == "tool" and run.status == "requires_action" and run.remote_id not in answered:
                            calls = run.pending_tool_calls
                            with_retries(services.run_submit_tool_outputs, run=run, tool_outputs=[
                                {"tool_call_id": c["id"], "output": "rainy, 9 C"} for c in calls], attempts=3)
                            answered.add(run.remote_id)
                        elif shape == "cancel" and run.status == "in_progress" and run.remote_id not in cancelled:
                            with_retries(services.run_cancel, run=run, attempts=3)
                            cancelled.add(run.remote_id)
                    except Exception as exc:  # noqa: BLE001 - retried on the next look
                        errors.append(f"steer {run.remote_id}: {exc!r}")
                time.sleep(0.3)
        finally:
            close_old_connections()

    steerer = threading.Thread(target=steer, daemon=True)
    steerer.start()
    half = len(jobs) // 2
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(create, jobs[:half]))
        kill_cluster()  # midway: SIGKILL, restarted after --down seconds
        list(pool.map(create, jobs[half:]))
    deadline = time.monotonic() + args.timeout
    while Run.objects.active().exists() and time.monotonic() < deadline:
        time.sleep(1)
    stop.set()
    steerer.join(timeout=10)
    return {"jobs": jobs, "created": created, "errors": errors, "shape_of": shape_of}


def compare(created: dict[int, str], remote) -> dict:
    """Each mirrored run against the emulator's truth (faults off)."""
    from runs_app.models import Message, Run

    mismatches, duplicates, checked = [], 0, 0
    for i, run_id in created.items():
        run = Run.objects.select_related("thread").filter(remote_id=run_id).first()
        if run is None:
            mismatches.append(f"{i}: run {run_id!r} not in the mirror")
            continue
        checked += 1
        thread_id = run.thread.remote_id
        truth = remote.retrieve_run(thread_id, run_id)
        runs_on_thread = remote.list_runs(thread_id, limit=100)["data"]
        if len(runs_on_thread) != 1:
            duplicates += len(runs_on_thread) - 1
        steps = [(s["id"], s["type"], s["status"])
                 for s in remote.list_run_steps(thread_id, run_id, order="asc")["data"]]
        mine = [(s.remote_id, s.type, s.status) for s in run.steps.order_by("created_at", "id")]
        texts = ["".join(b.get("text", {}).get("value", "") for b in m["content"] if b.get("type") == "text")
                 for m in remote.list_messages(thread_id, run_id=run_id, order="asc")["data"]
                 if m["role"] == "assistant"]
        my_texts = [m.text for m in Message.objects.filter(run_remote_id=run_id, role="assistant")
                    .order_by("created_at", "id")]
        if run.status != truth["status"]:
            mismatches.append(f"{run_id}: status {run.status} != {truth['status']}")
        if sorted(mine) != sorted(steps):
            mismatches.append(f"{run_id}: steps {mine} != {steps}")
        if my_texts != texts:
            mismatches.append(f"{run_id}: text {my_texts!r:.80} != {texts!r:.80}")
    return {"checked": checked, "mismatches": mismatches, "duplicates": duplicates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16, help="runs being created at once")
    parser.add_argument("--faults", default=FAULTS)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the killed cluster stays down")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--record", type=Path)
    args = parser.parse_args(argv)

    import psycopg

    started = time.time()
    port = free_port()
    emulator = start_emulator(port, expire_after=20)
    emu = Emulator(port)
    db_name = f"soak_{os.getpid()}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name}")
        conn.execute(f"CREATE DATABASE {db_name}")
    runs_app = {"CONNECTIONS": {"default": {"KIND": "azure_openai", "ENDPOINT": emu.url, "API_KEY": API_KEY,
                                            "API_VERSION": "2024-08-01-preview"}},
                "POLL_FAST": 0.5, "POLL_SLOW": 3, "POLL_WAITING": 1, "CLAIM_LEASE": 15, "CYCLE_SECONDS": 15,
                "POLLER_LANES": 2, "DISCOVERY_INTERVAL": 5, "MAX_RETRIES": 2, "RETRY_AFTER_CAP": 5}
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db_name}", "REDIS_URL": args.redis,
           "DJANGO_SETTINGS_MODULE": "tests.settings", "RUNS_APP_TEST_SETTINGS": json.dumps(runs_app),
           "RUNS_APP_TEST_Q_NAME": f"soak_{os.getpid()}", "Q_WORKERS": "3"}
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE",
                                           "RUNS_APP_TEST_SETTINGS", "RUNS_APP_TEST_Q_NAME")})
    clusters: list[Cluster] = []
    result: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                    "runs": args.runs, "faults": args.faults}
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO_ROOT, env=env, check=True)
        import django

        django.setup()
        from runs_app import poller
        from runs_app.assistants import AssistantsClient
        from runs_app.models import PollerLane, RunEvent

        clusters = [Cluster(env, "1"), Cluster(env, "2")]
        poller.ensure_running(force=True)
        deadline = time.monotonic() + 60
        while not PollerLane.objects.filter(cycles__gt=0).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the poll lanes did not start: " + clusters[0].log.read_text()[-2000:])
            time.sleep(0.2)
        assistant_id = emu.call("POST", "/assistants", {"model": "gpt-4o", "tools": [WEATHER_TOOL]})["id"]
        emu._session().put(f"{emu.url}/_emulator/faults", json={"spec": args.faults}, timeout=10).raise_for_status()
        before = emu.requests_served()

        def kill_cluster():
            clusters[0].kill()
            result["killed_at_s"] = round(time.time() - started, 1)
            threading.Timer(args.down, clusters[0].start).start()

        driven = drive(args, assistant_id, kill_cluster)
        after = emu.requests_served()
        faults_seen = emu._session().get(f"{emu.url}/_emulator/faults", timeout=10).json()
        emu._session().put(f"{emu.url}/_emulator/faults", json={}, timeout=10).raise_for_status()
        remote = AssistantsClient("truth", settings=runs_app["CONNECTIONS"]["default"])
        checked = compare(driven["created"], remote)
        from runs_app.models import Run

        observed: dict = {}
        for remote_id, to_status, at in RunEvent.objects.filter(kind="status").exclude(from_status="").order_by(
                "observed_at", "id").values_list("run__remote_id", "to_status", "observed_at"):
            observed.setdefault(remote_id, []).append((to_status, at.timestamp()))
        handover = {rid: 0.0 for rid in driven["created"].values() if rid}
        lag = lags(emu.events(), observed, handover)
        beat = PollerLane.objects.order_by("-heartbeat_at").values_list("heartbeat_at", flat=True).first()
        from django.utils import timezone
        from django_q.models import Failure

        result.update({
            "created": sum(1 for r in driven["created"].values() if r), "driver_errors": len(driven["errors"]),
            "driver_error_samples": driven["errors"][:5], "still_active": Run.objects.active().count(),
            "checked": checked["checked"], "mismatches": len(checked["mismatches"]),
            "mismatch_samples": checked["mismatches"][:5], "duplicates": checked["duplicates"],
            "lag": {k: lag[k] for k in ("changes", "missed", "p50", "p90", "p99", "max", "by_status")},
            # Keys starting with "_" are the counter's breakdowns (e.g. by second), not request kinds.
            "remote_requests": {k: after.get(k, 0) - before.get(k, 0) for k in after if not k.startswith("_")},
            "faults_config": faults_seen, "failed_q_tasks": Failure.objects.count(),
            "lane_heartbeat_age_s": round((timezone.now() - beat).total_seconds(), 1) if beat else None,
            "seconds": round(time.time() - started, 1),
        })
    finally:
        for cluster in clusters:
            cluster.stop()
        emulator.terminate()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001, S110 - django may not be set up
            pass
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
    ok = (result.get("mismatches") == 0 and result.get("duplicates") == 0 and result.get("still_active") == 0
          and result.get("created") == args.runs and result.get("lane_heartbeat_age_s") is not None
          and result["lane_heartbeat_age_s"] < 60)  # (an age of 0.0 s is a pass: it once read as "no lane")
    result["passed"] = ok
    print(json.dumps(result, default=str))
    if args.record:
        record(args.record, "python bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]), result)
    return 0 if ok else 1


def record(path: Path, command: str, r: dict) -> None:
    box, lag = r["machine"], r.get("lag", {})
    lines = [
        "", f"### Soak — {r['date']}", "",
        f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}; {box['os']}",
        f"- Command: `{command}`",
        f"- {r['runs']} runs ({', '.join(SHAPES)} in turn), faults `{r['faults']}` on every API request; "
        f"two q clusters (3 workers each, 2 poll lanes) on PostgreSQL with the Redis broker; cluster 1 SIGKILLed at "
        f"{r.get('killed_at_s')} s and restarted 5 s later; {r.get('seconds')} s in all",
        f"- Runs created {r.get('created')}, checked {r.get('checked')}: **mismatches {r.get('mismatches')}, "
        f"duplicates {r.get('duplicates')}**, still active {r.get('still_active')}; driver call errors after its "
        f"retries {r.get('driver_errors')}; django-q failures {r.get('failed_q_tasks')}; lanes' last heartbeat "
        f"{r.get('lane_heartbeat_age_s')} s before the end",
        f"- Lag behind the emulator's status changes ({lag.get('changes')} changes): p50 {lag.get('p50')} s, "
        f"p90 {lag.get('p90')} s, p99 {lag.get('p99')} s, max {lag.get('max')} s",
        f"- Faults injected (emulator's count, by kind): {json.dumps((r.get('faults_config') or {}).get('injected'))}",
        f"- Remote requests: {json.dumps(r.get('remote_requests'))}",
        f"- Verdict: {'PASSED' if r.get('passed') else 'FAILED'}"
        + (f"; samples {r.get('mismatch_samples')}" if r.get("mismatches") else ""), "",
    ]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

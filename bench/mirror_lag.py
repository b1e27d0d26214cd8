"""Mirror lag: how soon the mirror shows each status change of many concurrent runs, and at what request cost,
against the baseline a user would otherwise write (one thread per run polling with the openai SDK).

Starts a standalone emulator (`python -m assistants_emulator --speed 1 --control`, wrapped so that it also counts the
requests it serves), then runs the same seeded workload twice:

A. the mirror: a fresh SQLite database (migrated), ONE `manage.py qcluster` (Q_CLUSTER workers=2, the demo
   default) with RUNS_APP pointing at the emulator. The runs are created on the emulator directly and
   registered in the mirror with `runs_app.sync.apply_run` (the create answer, so the poller follows them);
   the q cluster's poll lane does the rest.
B. the baseline: one Python thread per run calling the openai SDK's `client.beta.threads.runs.poll(...)`
   (AzureOpenAI client) at its default interval (the emulator's `openai-poll-after-ms` header), then
   `submit_tool_outputs_and_poll` for runs that wait for a tool output.

Workload: N runs, each a new thread whose user message carries `[slow:S]` with S uniform in
[--slow-min, --slow-max] (seeded); a share of them (--tool-share) also name a function tool, so they wait in
requires_action until the bench submits an output a seeded delay (--tool-delay-min/max) after the mode saw
requires_action: the baseline after its poll saw it; the mirror after the mirror showed it, through
`runs_app.services.run_submit_tool_outputs` (`--answer-from truth`: after the emulator entered it, directly).

Lag of one true status change (from the emulator's own record, `GET /_emulator/events`) = when the mode first
saw that status (mirror: `RunEvent.observed_at`; baseline: the time an SDK response carrying it arrived)
− the emulator's wall time of the change. A status the mode skipped over (e.g. completed seen without
in_progress) counts as seen when the next status was. A change that happened before the mode was even
told about the run (registration in the mirror, thread start in the baseline) is measured from that moment.

Requests: every GET the emulator served for the mode (runs, steps, messages, run lists) per second of active
run (sum over runs of creation → terminal, emulator times). The bench's own requests (creation, the mirror
mode's tool-output submissions) are not counted.

    .venv/bin/python bench/mirror_lag.py --runs 1000                       # both modes, ~5 minutes
    .venv/bin/python bench/mirror_lag.py --runs 1000 --record bench/RESULTS.md
    .venv/bin/python bench/mirror_lag.py --runs 1000 --mode mirror --set POLL_SLOW=2 --set POLL_THREADS=8
    .venv/bin/python bench/mirror_lag.py --runs 5 --slow-min 1 --slow-max 3 --tool-delay-max 1   # smoke size

By hand only; tests/test_bench_mirror_smoke.py runs it at a tiny size.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.emulator_throughput import free_port, machine  # noqa: E402

API_VERSION = "2024-08-01-preview"
API_KEY = "bench-key"
UNTRACKED = "x-bench-untracked"  # requests carrying this header are not counted (the bench's own)
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}
BURST_SHARE = 0.1  # the budget's bucket holds a tenth of a second's requests (runs_app/poller/budget.py)
CONNECTION_KEYS = {"MAX_REQUESTS_PER_SECOND", "DISCOVER_THREADS", "DISCOVER_THREADS_SINCE"}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


# ------------------------------------------------------------------------------------------ counting emulator


def serve_counting_emulator(argv: list[str]) -> int:
    """`python -m assistants_emulator` plus a request counter at GET /_emulator/bench-requests (this process only)."""
    import re

    from assistants_emulator import __main__ as emulator_main
    from assistants_emulator import server

    counts: dict[str, int] = {}
    per_second: dict[int, int] = {}  # counted requests by wall-clock second (the budget check)
    lock = threading.Lock()
    patterns = [("run", re.compile(r"^/openai/threads/[^/]+/runs/[^/]+$")),
                ("steps", re.compile(r"^/openai/threads/[^/]+/runs/[^/]+/steps")),
                ("messages", re.compile(r"^/openai/threads/[^/]+/messages")),
                ("runs_list", re.compile(r"^/openai/threads/[^/]+/runs$"))]
    process, control = server.Handler._process, server.Handler._control

    def counting_process(self, method, target, headers, body):
        path = target.partition("?")[0]
        if not path.startswith("/_emulator") and not headers.get(UNTRACKED):
            key = next((name for name, rx in patterns if rx.match(path)), "other") if method == "GET" else method
            second = int(time.time())
            with lock:
                counts[key] = counts.get(key, 0) + 1
                per_second[second] = per_second.get(second, 0) + 1
        return process(self, method, target, headers, body)

    def counting_control(self, method, path, qs, body):
        if path.rstrip("/") == "/_emulator/bench-requests":
            with lock:
                data = json.dumps({**counts, "_per_second": per_second}).encode()
            return self._send(200, data, self._base_headers(None))
        return control(self, method, path, qs, body)

    server.Handler._process, server.Handler._control = counting_process, counting_control
    return emulator_main.main(argv)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its living descendants, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def start_emulator(port: int) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_serve_emulator", "--port", str(port), "--api-key",
           API_KEY, "--speed", "1", "--control", "--seed", str(int(time.time()) % 100000)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                            start_new_session=True)
    deadline = time.monotonic() + 20
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "listening" in line.lower():
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    proc.kill()
    raise RuntimeError(f"emulator did not report 'listening': {''.join(seen)[-2000:]}")


class Emulator:
    def __init__(self, port: int, pid: int = 0):
        self.pid = pid
        import requests

        self.url = f"http://127.0.0.1:{port}"
        self.session = requests.Session()
        self.local = threading.local()

    def _session(self):
        import requests

        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def call(self, method: str, path: str, body=None, *, untracked: bool = True) -> dict:
        headers = {"api-key": API_KEY, **({UNTRACKED: "1"} if untracked else {})}
        resp = self._session().request(method, f"{self.url}/openai{path}", params={"api-version": API_VERSION},
                                       json=body, headers=headers, timeout=60)
        if resp.status_code != 200:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def set_faults(self, spec: str | None) -> None:
        """Faults on the GETs the modes are measured by (the bench's own creates and submits are spared)."""
        body = json.dumps({"spec": f"{spec},match=^GET " if spec else ""})
        self._session().put(f"{self.url}/_emulator/faults", data=body, timeout=30).raise_for_status()

    def requests_served(self) -> dict:
        return self._session().get(f"{self.url}/_emulator/bench-requests", timeout=30).json()

    def events(self) -> list[dict]:
        out, since = [], 0
        while True:
            page = self._session().get(f"{self.url}/_emulator/events", params={"since": since, "limit": 5000},
                                       timeout=60).json()
            out.extend(page["data"])
            if not page["data"]:
                return out
            since = page["last_seq"]


# ------------------------------------------------------------------------------------------ workload


def workload(args) -> list[dict]:
    rng = random.Random(args.seed)
    jobs = []
    for i in range(args.runs):
        slow = round(rng.uniform(args.slow_min, args.slow_max), 1)
        tool = rng.random() < args.tool_share
        delay = round(rng.uniform(args.tool_delay_min, args.tool_delay_max), 1) if tool else None
        text = f"run {i}: call get_weather for Seattle [slow:{slow}]" if tool else f"run {i}: answer [slow:{slow}]"
        jobs.append({"i": i, "slow": slow, "tool": tool, "tool_delay": delay, "text": text})
    return jobs


def create_runs(emu: Emulator, assistant_id: str, jobs: list[dict], on_created) -> None:
    """Create every run on the emulator (16 threads); ``on_created(job, payload)`` in this thread, as they land."""
    def create(job):
        body = {"assistant_id": assistant_id, "thread": {"messages": [{"role": "user", "content": job["text"]}]}}
        return job, emu.call("POST", "/threads/runs", body)

    with ThreadPoolExecutor(16) as pool:
        for fut in as_completed([pool.submit(create, job) for job in jobs]):
            on_created(*fut.result())


class ToolSubmitter:
    """Mirror mode: answers each run's tool call ``tool_delay`` seconds after the emulator entered requires_action
    (as the user's own code would, outside the mirror; these requests are not counted)."""

    def __init__(self, emu: Emulator, delays: dict[str, float]):
        self.emu, self.delays, self.stop = emu, delays, threading.Event()
        self.since = emu._session().get(f"{emu.url}/_emulator/health", timeout=30).json()["events"]
        self.heap: list = []
        self.early: list[dict] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._watch, daemon=True),
                        threading.Thread(target=self._submit, daemon=True)]
        for t in self.threads:
            t.start()

    def _watch(self):
        since = self.since
        while not self.stop.is_set():
            try:
                page = self.emu._session().get(f"{self.emu.url}/_emulator/events",
                                               params={"since": since, "wait": 1}, timeout=30).json()
            except Exception as exc:  # noqa: BLE001 - reported at the end
                self.errors.append(repr(exc))
                time.sleep(0.5)
                continue
            # A run may wait before the bench has registered it (its delay is not known yet): keep it for later.
            self.early.extend(ev for ev in page["data"]
                              if ev["object"] == "thread.run" and ev["to"] == "requires_action")
            early, self.early = self.early, []
            for ev in early:
                if ev["id"] in self.delays:
                    heapq.heappush(self.heap, (ev["wall"] + self.delays[ev["id"]], ev["thread_id"], ev["id"]))
                else:
                    self.early.append(ev)
            since = page["last_seq"]

    def _submit(self):
        while not self.stop.is_set():
            if not self.heap or self.heap[0][0] > time.time():
                time.sleep(0.05)
                continue
            _, thread_id, run_id = heapq.heappop(self.heap)
            try:
                run = self.emu.call("GET", f"/threads/{thread_id}/runs/{run_id}")
                calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
                self.emu.call("POST", f"/threads/{thread_id}/runs/{run_id}/submit_tool_outputs",
                              {"tool_outputs": [{"tool_call_id": c["id"], "output": "sunny, 21 C"} for c in calls]})
            except Exception as exc:  # noqa: BLE001 - reported at the end
                self.errors.append(repr(exc))

    def close(self):
        self.stop.set()


class MirrorToolAnswerer:
    """Mirror mode, ``--answer-from mirror`` (the default): answers each run's tool call ``tool_delay`` seconds
    after the MIRROR showed it in requires_action, through ``runs_app.services.run_submit_tool_outputs`` — the way
    an embedding site, an operator in the admin or an API client answers it — just as the baseline answers after
    its own poll saw requires_action. The submission's answer (``queued``) is applied to the mirror by the service.
    The POSTs are the bench's own and not counted."""

    def __init__(self, delays: dict[str, float]):
        self.delays, self.stop = delays, threading.Event()
        self.errors: list[str] = []
        self.scheduled: set[str] = set()
        self.heap: list = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        from django.db import close_old_connections

        from runs_app import services
        from runs_app.models import Run

        try:
            while not self.stop.is_set():
                waiting = Run.objects.filter(status="requires_action").values_list("remote_id", "status_changed_at")
                for remote_id, seen_at in waiting:
                    if remote_id in self.delays and remote_id not in self.scheduled:
                        self.scheduled.add(remote_id)
                        heapq.heappush(self.heap, (seen_at.timestamp() + self.delays[remote_id], remote_id))
                while self.heap and self.heap[0][0] <= time.time():
                    _, remote_id = heapq.heappop(self.heap)
                    try:
                        run = Run.objects.get(remote_id=remote_id)
                        calls = run.required_action["submit_tool_outputs"]["tool_calls"]
                        services.run_submit_tool_outputs(
                            run=run, tool_outputs=[{"tool_call_id": c["id"], "output": "sunny, 21 C"} for c in calls])
                    except Exception as exc:  # noqa: BLE001 - reported at the end
                        self.errors.append(f"{remote_id}: {exc!r}")
                time.sleep(0.1)
        finally:
            close_old_connections()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)


# ------------------------------------------------------------------------------------------ lag


def lags(events: list[dict], observed: dict[str, list[tuple[str, float]]], handover: dict[str, float]) -> dict:
    """Match every true run status change in the emulator's record with the first observation of it (or of a
    later status) in ``observed[run_id]`` (ordered (status, time) changes)."""
    changes: dict[str, list[tuple[str, float]]] = {}
    for ev in events:
        if ev["object"] == "thread.run" and ev["id"] in handover and ev["from"] is not None:
            changes.setdefault(ev["id"], []).append((ev["to"], ev["wall"]))
    values, missed, clamped, by_status = [], 0, 0, {}
    for run_id, seq in changes.items():
        # Assign each observation to the earliest matching emulator change after the previous assignment.
        seen_at: list[float | None] = [None] * len(seq)
        pointer = -1
        for status, when in observed.get(run_id, []):
            k = next((k for k in range(pointer + 1, len(seq)) if seq[k][0] == status), None)
            if k is None:
                continue
            seen_at[k] = when
            pointer = k
        later = None
        for k in range(len(seq) - 1, -1, -1):  # a skipped status counts as seen when a later one was
            if seen_at[k] is not None:
                later = seen_at[k]
            seen_at[k] = later
        for (status, wall), when in zip(seq, seen_at, strict=True):
            if when is None:
                missed += 1
                continue
            start = wall
            if handover[run_id] > wall:
                start, clamped = handover[run_id], clamped + 1
            lag = max(0.0, when - start)
            values.append(lag)
            by_status.setdefault(status, []).append(lag)
    return {"changes": len(values) + missed, "missed": missed, "measured_from_handover": clamped,
            **percentiles(values), "by_status": {s: percentiles(v) for s, v in sorted(by_status.items())}}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)

    def pick(q):
        return round(v[min(len(v) - 1, int(q * len(v)))], 3)

    return {"n": len(v), "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": round(v[-1], 3)}


def active_run_seconds(events: list[dict], run_ids: set[str]) -> float:
    start, end = {}, {}
    for ev in events:
        if ev["object"] == "thread.run" and ev["id"] in run_ids:
            if ev["from"] is None:
                start[ev["id"]] = ev["wall"]
            if ev["to"] in TERMINAL:
                end[ev["id"]] = ev["wall"]
    return sum(end[r] - start[r] for r in end if r in start)


def request_delta(before: dict, after: dict) -> dict:
    keys = (set(after) | set(before)) - {"_per_second"}
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def busiest_second(before: dict, after: dict) -> int:
    """The most requests the mode sent in one wall-clock second (the budget check)."""
    old, new = before.get("_per_second", {}), after.get("_per_second", {})
    return max([n - old.get(second, 0) for second, n in new.items()], default=0)


def gets(delta: dict) -> int:
    return sum(v for k, v in delta.items() if k in ("run", "steps", "messages", "runs_list", "other"))


# ------------------------------------------------------------------------------------------ mode A: the mirror


class Cleanup:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.files: list[Path] = []

    def add(self, proc):
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 30) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self):
        for proc in reversed(self.procs):
            self.stop(proc)
        for path in self.files:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)


PG_URL = "postgres://postgres@127.0.0.1:5432/runs_app_bench_lag"
REDIS_URL = "redis://127.0.0.1:6379/0"


def mirror_mode(args, emu: Emulator, assistant_id: str, jobs: list[dict], cleanup: Cleanup) -> dict:
    connection = {"KIND": "azure_openai", "ENDPOINT": emu.url, "API_VERSION": API_VERSION, "API_KEY": API_KEY,
                  **args.connection_settings}
    runs_app = {"CONNECTIONS": {"default": connection}, **args.settings}
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "RUNS_APP_TEST_SETTINGS": json.dumps(runs_app),
           "RUNS_APP_TEST_Q_NAME": f"bench_mirror_lag_{os.getpid()}", "Q_WORKERS": str(args.workers)}
    if args.database == "postgres":
        for sql in ("DROP DATABASE IF EXISTS runs_app_bench_lag", "CREATE DATABASE runs_app_bench_lag"):
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True)
        env.update(DATABASE_URL=PG_URL, REDIS_URL=REDIS_URL)
    else:
        db = Path(tempfile.gettempdir()) / f"bench-mirror-lag-{os.getpid()}.sqlite3"
        cleanup.files.append(db)
        env["DATABASE_URL"] = f"sqlite:///{db}"
        os.environ.pop("REDIS_URL", None)
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO_ROOT, check=True,
                   env={**os.environ})
    import django

    django.setup()
    import datetime as dt

    from django.utils import timezone

    from runs_app import poller
    from runs_app.mirror.ordering import Observation
    from runs_app.mirror.upsert import apply_run
    from runs_app.models import ConnectionState, PollerLane, Run, RunEvent, Source

    clusters = []
    for _ in range(args.clusters):
        log = tempfile.NamedTemporaryFile("w+", prefix="bench-qcluster-", suffix=".log", delete=False)  # noqa: SIM115
        cleanup.files.append(Path(log.name))
        clusters.append((cleanup.add(subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=REPO_ROOT, env={**os.environ}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)), log.name))
    poller.ensure_running(force=True)
    deadline = time.monotonic() + 30
    lanes_wanted = runs_app.get("POLLER_LANES", 1)
    while PollerLane.objects.filter(cycles__gt=0).count() < lanes_wanted:
        if time.monotonic() > deadline or any(c.poll() is not None for c, _ in clusters):
            raise RuntimeError(f"the poll lanes did not start:\n{Path(clusters[0][1]).read_text()[-3000:]}")
        time.sleep(0.2)
    emu.set_faults(args.faults)

    before = emu.requests_served()
    cpu_before = {"emulator": cpu_seconds(emu.pid), "bench": sum(os.times()[:2]),
                  "q_clusters": sum(cpu_seconds(c.pid) for c, _ in clusters)}
    handover: dict[str, float] = {}
    delays: dict[str, float] = {}
    submitter = ToolSubmitter(emu, delays) if args.answer_from == "truth" else MirrorToolAnswerer(delays)
    started = time.time()

    timeline: list[dict] = []
    sampling = threading.Event()

    def sample():
        """Every second: active runs, how many are overdue (due more than a second ago), polls so far."""
        from django.db import close_old_connections

        t0 = time.monotonic()
        try:
            while not sampling.wait(1.0):
                now = timezone.now()
                timeline.append({"t": round(time.monotonic() - t0, 1), "active": Run.objects.active().count(),
                                 "overdue": Run.objects.filter(next_poll_at__lt=now - dt.timedelta(seconds=1)).count(),
                                 "polled": sum(PollerLane.objects.values_list("runs_polled", flat=True)),
                                 "throttle": round(min(ConnectionState.objects.values_list("throttle", flat=True),
                                                       default=1.0), 3)})
        finally:
            close_old_connections()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def register(job, payload):
        if job["tool"]:
            delays[payload["id"]] = job["tool_delay"]
        apply_run(payload, connection="default", seen=Observation.now(Source.ACTION, timezone.now()))
        handover[payload["id"]] = time.time()

    try:
        create_runs(emu, assistant_id, jobs, register)
        created_in = time.time() - started
        deadline = time.monotonic() + args.slow_max + args.tool_delay_max + 180
        while Run.objects.active().exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        after = emu.requests_served()
        caught_up = time.time() - started
        cpu = {"emulator": cpu_seconds(emu.pid), "bench": sum(os.times()[:2]),
               "q_clusters": sum(cpu_seconds(c.pid) for c, _ in clusters)}
        cpu = {k: round(v - cpu_before[k], 1) for k, v in cpu.items()}
    finally:
        sampling.set()
        emu.set_faults(None)
        submitter.close()
        PollerLane.objects.update(token="")
        for cluster, _ in clusters:
            cleanup.stop(cluster)
    observed: dict[str, list[tuple[str, float]]] = {}
    for remote_id, to_status, at in RunEvent.objects.filter(kind="status").exclude(from_status="").order_by(
            "observed_at", "id").values_list("run__remote_id", "to_status", "observed_at"):
        observed.setdefault(remote_id, []).append((to_status, at.timestamp()))
    events = emu.events()
    delta = request_delta(before, after)
    active = active_run_seconds(events, set(handover))
    state = ConnectionState.objects.filter(connection="default").values("requests", "rate_limited").first() or {}
    lag_result = lags(events, observed, handover)
    lanes = list(PollerLane.objects.values("lane", "cycles", "runs_polled"))
    return {
        "mode": "mirror", "runs": len(handover), "created_in_s": round(created_in, 2),
        "all_terminal_in_mirror_after_s": round(caught_up, 2),
        "still_active_in_mirror": Run.objects.active().count(),
        "lag": lag_result, "requests": delta, "gets": gets(delta),
        "active_run_seconds": round(active, 1),
        "gets_per_active_run_second": round(gets(delta) / active, 3) if active else None,
        "p99_over_poll_interval": round(lag_result["p99"] / runs_app.get("POLL_INTERVAL", 2.0), 2)
        if lag_result["p99"] is not None else None,
        "connection_state_requests": state.get("requests"), "lanes": lanes, "tool_submit_errors": submitter.errors[:5],
        "busiest_second": busiest_second(before, after), "rate_limited": state.get("rate_limited"),
        "cpu_seconds": cpu, "timeline": timeline,
        "max_requests_per_second": connection.get("MAX_REQUESTS_PER_SECOND", 1000.0),
        "poll_interval": runs_app.get("POLL_INTERVAL", 2.0), "database": args.database, "clusters": args.clusters,
        "runs_app": {k: v for k, v in runs_app.items() if k != "CONNECTIONS"},
    }


# ------------------------------------------------------------------------------------------ mode B: the baseline


def baseline_mode(args, emu: Emulator, assistant_id: str, jobs: list[dict]) -> dict:
    import warnings

    import openai

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=__name__)
    observed: dict[str, list[tuple[str, float]]] = {}
    poll_after: dict[str, int] = {}
    lock = threading.Lock()

    def on_response(response):
        path = response.request.url.path
        if "/runs/" not in path or response.status_code != 200:
            return
        response.read()
        when = time.time()
        data = response.json()
        if data.get("object") != "thread.run":
            return
        header = response.headers.get("openai-poll-after-ms")
        with lock:
            poll_after[header] = poll_after.get(header, 0) + 1
            seen = observed.setdefault(data["id"], [])
            if not seen or seen[-1][0] != data["status"]:
                seen.append((data["status"], when))

    http_client = openai.DefaultHttpxClient(event_hooks={"response": [on_response]})
    client = openai.AzureOpenAI(azure_endpoint=emu.url, api_key=API_KEY, api_version=API_VERSION,
                                http_client=http_client)
    handover: dict[str, float] = {}
    errors: list[str] = []

    def follow(job, payload):
        try:
            run = client.beta.threads.runs.poll(payload["id"], thread_id=payload["thread_id"])
            while run.status == "requires_action":
                time.sleep(job["tool_delay"])
                outputs = [{"tool_call_id": c.id, "output": "sunny, 21 C"}
                           for c in run.required_action.submit_tool_outputs.tool_calls]
                run = client.beta.threads.runs.submit_tool_outputs_and_poll(
                    run_id=run.id, thread_id=run.thread_id, tool_outputs=outputs)
        except Exception as exc:  # noqa: BLE001 - reported at the end
            errors.append(repr(exc))

    threads: list[threading.Thread] = []

    def start(job, payload):
        with lock:  # the create answer is this user's first observation (queued)
            observed.setdefault(payload["id"], []).append((payload["status"], time.time()))
        handover[payload["id"]] = time.time()
        t = threading.Thread(target=follow, args=(job, payload), daemon=True)
        threads.append(t)
        t.start()

    before = emu.requests_served()
    cpu_before = {"emulator": cpu_seconds(emu.pid), "bench": sum(os.times()[:2])}
    emu.set_faults(args.faults)
    started = time.time()
    create_runs(emu, assistant_id, jobs, start)
    created_in = time.time() - started
    deadline = time.monotonic() + args.slow_max + args.tool_delay_max + 180
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    after = emu.requests_served()
    cpu = {"emulator": round(cpu_seconds(emu.pid) - cpu_before["emulator"], 1),
           "bench": round(sum(os.times()[:2]) - cpu_before["bench"], 1)}
    emu.set_faults(None)
    finished = time.time() - started
    http_client.close()
    events = emu.events()
    delta = request_delta(before, after)
    active = active_run_seconds(events, set(handover))
    for run_id in observed:  # drop the create answer's queued: lags() only matches changes after creation
        if observed[run_id] and observed[run_id][0][0] == "queued":
            observed[run_id] = observed[run_id][1:]
    return {
        "mode": "baseline", "runs": len(handover), "created_in_s": round(created_in, 2),
        "all_threads_done_after_s": round(finished, 2), "threads_still_running": sum(t.is_alive() for t in threads),
        "lag": lags(events, observed, handover), "requests": delta, "gets": gets(delta),
        "active_run_seconds": round(active, 1),
        "gets_per_active_run_second": round(gets(delta) / active, 3) if active else None,
        "openai_poll_after_ms_seen": poll_after, "errors": errors[:5], "openai_version": openai.__version__,
        "busiest_second": busiest_second(before, after), "cpu_seconds": cpu,
    }


# ------------------------------------------------------------------------------------------ reporting


def line(result: dict) -> str:
    lag = result["lag"]
    return (f"{result['mode']:>8}: lag p50 {lag['p50']} s, p90 {lag['p90']} s, p99 {lag['p99']} s, max {lag['max']} s "
            f"over {lag['changes']} changes ({lag['missed']} never seen); "
            f"{result['gets_per_active_run_second']} GETs per active run per second "
            f"({result['gets']:,} GETs / {result['active_run_seconds']:,.0f} active run-seconds); "
            f"CPU seconds {json.dumps(result.get('cpu_seconds'))}")


def verdict(results: dict) -> dict:
    """The targets, as ratios to the baseline measured in the same invocation: the mirror's p99 lag at most half the
    baseline's, at no more GETs per active run-second; and never more requests in a second than its budget."""
    out = {}
    mirror, base = results.get("mirror"), results.get("baseline")
    if mirror and base and mirror["lag"]["p99"] is not None and base["lag"]["p99"]:
        out["mirror_p99_le_half_baseline"] = mirror["lag"]["p99"] <= base["lag"]["p99"] / 2
        out["p99_ratio"] = round(mirror["lag"]["p99"] / base["lag"]["p99"], 3)
    if mirror and base and base["gets_per_active_run_second"]:
        out["mirror_gets_le_baseline"] = mirror["gets_per_active_run_second"] <= base["gets_per_active_run_second"]
    if mirror:
        out["no_change_missed"] = mirror["lag"]["missed"] == 0
        out["budget_kept"] = mirror["busiest_second"] <= mirror["max_requests_per_second"] * (1 + BURST_SHARE)
    return out


def record(path: Path, command: str, results: dict, args) -> None:
    box = results["machine"]
    rows = []
    for key in ("mirror", "baseline"):
        r = results.get(key)
        if r:
            lag = r["lag"]
            rows.append(f"| {key} | {lag['p50']} | {lag['p90']} | {lag['p99']} | {lag['max']} | {lag['changes']:,} "
                        f"({lag['missed']} never seen) | {r['gets_per_active_run_second']} | {r['gets']:,} |")
    v = results["verdict"]
    lines = [
        "",
        f"### Mirror lag — {results['date']}",
        "",
        f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}; {box['os']}",
        f"- Command: `{command}`",
        f"- Workload: {args.runs} runs (one thread each), `[slow:S]` S uniform {args.slow_min}–{args.slow_max} s "
        f"(seed {args.seed}), {args.tool_share:.0%} with a `get_weather` call answered after "
        f"{args.tool_delay_min}–{args.tool_delay_max} s after the mode saw requires_action"
        + (" (mirror mode: after the emulator entered it, directly on the emulator)" if args.answer_from == "truth"
           else " (mirror mode: through `services.run_submit_tool_outputs`)")
        + "; emulator `--speed 1 --control`",
    ]
    if "mirror" in results:
        m = results["mirror"]
        broker = "Redis broker, PostgreSQL" if m["database"] == "postgres" else "ORM broker, SQLite"
        lines.append(f"- Mirror: {m['clusters']} q cluster(s) (workers={args.workers}, {broker}), RUNS_APP "
                     f"{json.dumps(m['runs_app'])}; all runs terminal in the mirror "
                     f"{m['all_terminal_in_mirror_after_s']} s after the first create; requests "
                     f"{json.dumps(m['requests'])}; busiest second "
                     f"{m['busiest_second']} requests (budget {m['max_requests_per_second']}/s); p99 / POLL_INTERVAL "
                     f"= {m['p99_over_poll_interval']}")
    if "baseline" in results:
        b = results["baseline"]
        lines.append(f"- Baseline: openai {b['openai_version']} `AzureOpenAI.beta.threads.runs.poll` per thread, "
                     f"default interval = `openai-poll-after-ms` {json.dumps(b['openai_poll_after_ms_seen'])}; "
                     f"requests {json.dumps(b['requests'])}"
                     + (f"; errors {b['errors']}" if b["errors"] else ""))
    lines += [
        "",
        "| mode | lag p50 (s) | p90 | p99 | max | status changes | GETs / active run / s | GETs |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Targets: mirror p99 ≤ 0.5 × the baseline's: " + _met(v, "mirror_p99_le_half_baseline")
        + f" (ratio {v.get('p99_ratio')}); mirror GETs per active run-second ≤ the baseline's: "
        + _met(v, "mirror_gets_le_baseline") + "; no status change missed: " + _met(v, "no_change_missed")
        + "; budget kept: " + _met(v, "budget_kept") + "."
        + (f" Faults on GETs: `{args.faults}`." if args.faults else ""),
        "",
    ]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def _met(v: dict, key: str) -> str:
    return "met" if v.get(key) else "MISSED" if key in v else "n/a"


def parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def scaling(argv: list[str], sizes: list[int]) -> int:
    """Each size in a process of its own (a fresh emulator and mirror), then one table of how lag and requests grow."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--runs":
            skip = True
        elif not arg.startswith("--runs="):
            rest.append(arg)
    rows = []
    for size in sizes:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--runs", str(size), *rest],
                             cwd=REPO_ROOT, capture_output=True, text=True)
        result = next((json.loads(line) for line in reversed(out.stdout.splitlines()) if line.startswith("{")), None)
        if result is None:
            print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        print(next(line for line in out.stdout.splitlines() if line.startswith("SUMMARY")), flush=True)
        rows.append((size, result))
    print("\n| runs | mode | lag p50 | p99 | GETs / active run / s | busiest second |\n|---|---|---|---|---|---|")
    for size, result in rows:
        for key in ("mirror", "baseline"):
            r = result.get(key)
            if r:
                print(f"| {size} | {key} | {r['lag']['p50']} | {r['lag']['p99']} | {r['gets_per_active_run_second']} | "
                      f"{r['busiest_second']} |")
    return 0


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_serve_emulator"]:
        return serve_counting_emulator(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="1000", help="active runs; a comma list (250,500,1000,2000) runs each size "
                        "in turn, each in a process of its own, and prints how lag and requests grow")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="mirror mode: SQLite with the ORM broker, or PostgreSQL with the Redis broker")
    parser.add_argument("--clusters", type=int, default=1, help="mirror mode: q clusters")
    parser.add_argument("--workers", type=int, default=2, help="mirror mode: q workers per cluster")
    parser.add_argument("--faults", default="", help="emulator faults on GETs for both modes, e.g. 429=0.1")
    parser.add_argument("--mode", choices=["both", "mirror", "baseline"], default="both")
    parser.add_argument("--slow-min", type=float, default=5.0)
    parser.add_argument("--slow-max", type=float, default=60.0)
    parser.add_argument("--tool-share", type=float, default=0.2, help="share of runs that call a function tool")
    parser.add_argument("--tool-delay-min", type=float, default=2.0)
    parser.add_argument("--tool-delay-max", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--answer-from", choices=["mirror", "truth"], default="mirror",
                        help="mirror mode: answer tool calls after the mirror saw requires_action, through the "
                             "services (default), or after the emulator entered it, directly on the emulator")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a RUNS_APP key for the mirror (JSON value), e.g. --set POLL_SLOW=2")
    parser.add_argument("--record", type=Path, help="append a markdown summary to this file")
    args = parser.parse_args(argv)
    pairs = [parse_setting(s) for s in args.set]
    args.settings = {k: v for k, v in pairs if k not in CONNECTION_KEYS}
    args.connection_settings = {k: v for k, v in pairs if k in CONNECTION_KEYS}
    sizes = [int(n) for n in str(args.runs).split(",")]
    if len(sizes) > 1:
        return scaling(argv, sizes)
    args.runs = sizes[0]

    signal.signal(signal.SIGTERM, _interrupt)
    cleanup = Cleanup()
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    try:
        port = free_port()
        emu = Emulator(port, cleanup.add(start_emulator(port)).pid)
        assistant_id = emu.call("POST", "/assistants", {"model": "gpt-4o", "tools": [WEATHER_TOOL]})["id"]
        jobs = workload(args)
        if args.mode in ("both", "baseline"):
            results["baseline"] = baseline_mode(args, emu, assistant_id, jobs)
            print(line(results["baseline"]), flush=True)
        if args.mode in ("both", "mirror"):
            results["mirror"] = mirror_mode(args, emu, assistant_id, jobs, cleanup)
            print(line(results["mirror"]), flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopping the emulator and the q cluster", file=sys.stderr)
        return 130
    finally:
        cleanup.close()
    results["verdict"] = verdict(results)
    m, b = results.get("mirror"), results.get("baseline")
    print("SUMMARY " + " | ".join(
        f"{r['mode']} p50/p90/p99/max {r['lag']['p50']}/{r['lag']['p90']}/{r['lag']['p99']}/{r['lag']['max']} s, "
        f"{r['gets_per_active_run_second']} GETs/run/s" for r in (m, b) if r) + f" | {json.dumps(results['verdict'])}")
    print(json.dumps(results))
    if args.record:
        record(args.record, "python bench/mirror_lag.py " + " ".join(argv), results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

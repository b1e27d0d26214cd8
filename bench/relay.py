"""The live relay under gunicorn: (a) the latency it adds per event over reading the emulator's stream directly,
(b) many concurrent relayed streams with no event lost or reordered.

Starts a standalone emulator (`python -m assistants_emulator --speed 1`), a fresh database (SQLite file by default,
`--database postgres` for a fresh PostgreSQL database on 127.0.0.1), and the demo site under
gunicorn with its production config (`project/gunicorn.conf.py`: gthread; `--workers`, `--threads`).
Between the site and the emulator sits a TCP tap in this
process: it forwards bytes both ways and notes the time each upstream SSE event (de-chunked) passes it.

(a) Latency: `--latency-runs` runs, one after the other, each `stream: true` through the site's API
    (`POST /api/threads/{id}/runs/` on a thread created just before) with `[words:N] [slow:S]`, so events
    arrive spaced out. For each event: added = (arrival at this client through the relay) − (passage through
    the tap, i.e. when a client reading the emulator directly would have had it), same clock, same process.
    In between: the relay's reader thread, its re-emission, gunicorn's write (the mirror write is off this
    path, on the relay's applier thread).
(b) Concurrency: `--streams` clients at once, each relaying one run of `[words:N] [slow:S]`. A stream passes
    when its event names follow the protocol's order for a streamed run (created, queued, in_progress, step
    created/in_progress, message created/in_progress, N message deltas, message completed, step completed,
    run completed, done), every event the tap saw upstream for it reached the client, in the same order and
    byte-identical, and the mirror holds the final text.

    .venv/bin/python bench/relay.py                                   # defaults: 300 latency events, 100 streams
    .venv/bin/python bench/relay.py --database postgres --record bench/RESULTS.md
    .venv/bin/python bench/relay.py --streams 5 --latency-runs 1 --words 20   # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
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

API_KEY = "bench-relay-key"
PASSWORD = "bench-relay-pass"
LATENCY_TARGET_P99_MS = 5.0
FRAME = re.compile(rb"event: ([^\n]+)\ndata: ([^\n]*)\n\n")


# ------------------------------------------------------------------------------------------ the tap


class Tap:
    """A TCP forwarder: site → tap → emulator. Records, per upstream connection, each SSE frame of the
    response body and the time its last byte passed."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(512)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.streams: list[list[tuple[bytes, float]]] = []  # per SSE response: (frame bytes, passed at)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket):
        upstream = socket.create_connection(self.upstream)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        parser = _ResponseParser(self)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    now = time.perf_counter()
                    key.data.sendall(data)
                    if key.fileobj is upstream:
                        parser.feed(data, now)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def new_stream(self) -> list:
        with self.lock:
            frames: list = []
            self.streams.append(frames)
            return frames

    def close(self):
        self.server.close()


class _ResponseParser:
    """Follows one keep-alive connection's responses; for text/event-stream ones (chunked), de-chunks the body
    and records each complete SSE frame with the time its last byte arrived."""

    def __init__(self, tap: Tap):
        self.tap = tap
        self.buf = b""
        self.state = "head"
        self.frames: list | None = None
        self.body = b""
        self.remaining = 0
        self.chunked = False

    def feed(self, data: bytes, now: float):
        self.buf += data
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buf = self.buf[:end].decode("latin-1").lower(), self.buf[end + 4:]
                sse = "content-type: text/event-stream" in head
                self.chunked = "transfer-encoding: chunked" in head
                length = re.search(r"content-length: (\d+)", head)
                self.frames = self.tap.new_stream() if sse else None
                self.body = b""
                if self.chunked:
                    self.state = "size"
                else:
                    self.remaining = int(length.group(1)) if length else 0
                    self.state = "fixed"
            elif self.state == "fixed":
                take = min(self.remaining, len(self.buf))
                self.buf, self.remaining = self.buf[take:], self.remaining - take
                if self.remaining:
                    return
                self.state = "head"
            elif self.state == "size":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.buf[:end].split(b";")[0], 16)
                self.buf = self.buf[end + 2:]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining, self.state = size, "chunk"
            elif self.state == "chunk":
                take = min(self.remaining, len(self.buf))
                self._body(self.buf[:take], now)
                self.buf, self.remaining = self.buf[take:], self.remaining - take
                if self.remaining:
                    return
                self.state = "chunk-end"
            elif self.state == "chunk-end":
                if len(self.buf) < 2:
                    return
                self.buf, self.state = self.buf[2:], "size"
            elif self.state == "trailer":
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                if not line:
                    self.state = "head"

    def _body(self, data: bytes, now: float):
        if self.frames is None:
            return
        self.body += data
        while True:
            end = self.body.find(b"\n\n")
            if end < 0:
                return
            frame, self.body = self.body[:end + 2], self.body[end + 2:]
            if frame.startswith(b"event:"):
                self.frames.append((frame, now))


# ------------------------------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, args):
        self.procs: list[subprocess.Popen] = []
        self.files: list[Path] = []
        self.logs: dict[str, Path] = {}
        self.args = args

    def start(self):
        emu_port = free_port()
        self._spawn([sys.executable, "-m", "assistants_emulator", "--port", str(emu_port), "--api-key", API_KEY,
                     "--speed", "1"], "emulator", ready=lambda: _port_open(emu_port))
        self.tap = Tap(emu_port)
        self.emulator_url = f"http://127.0.0.1:{emu_port}"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_DEBUG": "0",
               "DJANGO_SECRET_KEY": "bench-relay-" + "x" * 50, "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
               "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{self.tap.port}", "AZURE_OPENAI_API_KEY": API_KEY,
               "DJANGO_SECURE_SSL_REDIRECT": "0", "DJANGO_LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        if self.args.database == "postgres":
            import psycopg

            name = f"bench_relay_{os.getpid()}"
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name}")
                conn.execute(f"CREATE DATABASE {name}")
            self.pg_name = name
            env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{name}"
        else:
            db = Path(tempfile.gettempdir()) / f"bench-relay-{os.getpid()}.sqlite3"
            self.files.append(db)
            env["DATABASE_URL"] = f"sqlite:///{db}"
        self.env = env
        subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO_ROOT, env=env, check=True)
        subprocess.run([sys.executable, "manage.py", "shell", "-c",
                        "from django.contrib.auth import get_user_model; "
                        f"get_user_model().objects.create_superuser('bench', 'b@example.com', '{PASSWORD}')"],
                       cwd=REPO_ROOT, env=env, check=True)
        # A DRF token, as an API client would use: HTTP Basic would hash the password (PBKDF2) on every request.
        out = subprocess.run([sys.executable, "manage.py", "drf_create_token", "bench"], cwd=REPO_ROOT, env=env,
                             check=True, capture_output=True, text=True).stdout
        self.token = out.split()[2]
        web_port = free_port()
        self.web_url = f"http://127.0.0.1:{web_port}"
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self._spawn([str(gunicorn), "-c", "project/gunicorn.conf.py", "project.wsgi", "-b", f"127.0.0.1:{web_port}",
                     "--workers", str(self.args.workers), "--threads", str(self.args.threads),
                     "--log-level", "warning", "--access-logfile", "/dev/null"], "gunicorn", env=env,
                    ready=lambda: _port_open(web_port))
        return self

    def _spawn(self, cmd, name, *, env=None, ready):
        log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-relay-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.files.append(Path(log.name))
        self.logs[name] = Path(log.name)
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env or {**os.environ}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.1)

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        for f in self.files:
            f.unlink(missing_ok=True)
        if getattr(self, "pg_name", None):
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------------------ a relayed stream


def relayed_stream(stack: Stack, assistant_id: str, text: str) -> tuple[list[tuple[bytes, float]], dict]:
    """Create a thread, then POST a streamed run on it through the site (the service's stream relayed as is);
    returns each frame with its arrival time."""
    import requests

    frames: list[tuple[bytes, float]] = []
    session = requests.Session()
    session.headers["Authorization"] = f"Token {stack.token}"
    thread = session.post(f"{stack.web_url}/api/threads/", timeout=120,
                          json={"messages": [{"role": "user", "content": text}]})
    if thread.status_code != 201:
        raise RuntimeError(f"creating the thread answered {thread.status_code}: {thread.text[:300]}")
    with session.post(f"{stack.web_url}/api/threads/{thread.json()['id']}/runs/", stream=True, timeout=120,
                      json={"assistant_id": assistant_id, "stream": True}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"relay answered {resp.status_code}: {resp.text[:300]}")
        buf = b""
        for chunk in resp.raw.stream(65536, decode_content=False):
            now = time.perf_counter()
            buf += chunk
            while (end := buf.find(b"\n\n")) >= 0:
                frame, buf = buf[:end + 2], buf[end + 2:]
                if frame.startswith(b"event:"):
                    frames.append((frame, now))
    return frames, {"content_encoding": resp.headers.get("Content-Encoding")}


def upstream_for(stack: Stack, frames: list[tuple[bytes, float]]) -> list[tuple[bytes, float]] | None:
    """The tap's record of the upstream stream these relayed frames came from (matched by the run id)."""
    run_created = next((f for f, _ in frames if f.startswith(b"event: thread.run.created")), None)
    if run_created is None:
        return None
    with stack.tap.lock:
        return next((s for s in stack.tap.streams if any(f == run_created for f, _ in s[:3])), None)


EXPECTED = re.compile(
    r"thread\.run\.created thread\.run\.queued thread\.run\.in_progress "
    r"thread\.run\.step\.created thread\.run\.step\.in_progress thread\.message\.created thread\.message\.in_progress "
    r"(thread\.message\.delta ){N}thread\.message\.completed thread\.run\.step\.completed thread\.run\.completed done")


def check_stream(frames, upstream, words: int) -> list[str]:
    problems = []
    names = " ".join(FRAME.match(f).group(1).decode() for f, _ in frames)
    if not re.fullmatch(EXPECTED.pattern.replace("{N}", "{" + str(words) + "}"), names):
        problems.append(f"unexpected event order: {names[:300]}")
    if upstream is None:
        problems.append("no upstream record")
    else:
        up, down = [f for f, _ in upstream], [f for f, _ in frames]
        if up != down:
            at = next((i for i, (a, b) in enumerate(zip(up, down, strict=False)) if a != b), min(len(up), len(down)))
            problems.append(f"relayed frames differ from upstream ({len(down)} vs {len(up)}), first at {at}: "
                            f"{down[at:at + 1]!r} vs {up[at:at + 1]!r}"[:600])
    return problems


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--slow", type=float, default=10.0)
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which the concurrent clients start")
    parser.add_argument("--record", type=Path)
    args = parser.parse_args(argv)

    import requests

    stack = Stack(args)
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        stack.start()
        assistant_id = requests.post(f"{stack.emulator_url}/openai/assistants?api-version=2024-08-01-preview",
                                     headers={"api-key": API_KEY}, json={"model": "gpt-4o"}, timeout=30).json()["id"]
        text = f"relay bench [words:{args.words}] [slow:{args.slow}]"

        # (a) latency, one stream at a time
        added, problems, named = [], [], []
        for _ in range(args.latency_runs):
            frames, info = relayed_stream(stack, assistant_id, text)
            upstream = upstream_for(stack, frames)
            problems += check_stream(frames, upstream, args.words)
            if upstream:
                for index, ((_, passed), (frame, arrived)) in enumerate(zip(upstream, frames, strict=False)):
                    added.append((arrived - passed) * 1000)
                    named.append((added[-1], index, frame.split(b"\n", 1)[0][7:].decode()))
        results["latency"] = {"events": len(added), "p50_ms": round(pct(added, 0.5), 3),
                              "p90_ms": round(pct(added, 0.9), 3), "p99_ms": round(pct(added, 0.99), 3),
                              "max_ms": round(max(added), 3), "problems": problems[:5],
                              "content_encoding": info["content_encoding"],
                              # where the tail is: the slowest events (ms, index in its stream, name)
                              "slowest": [[round(ms, 3), i, name] for ms, i, name in sorted(named, reverse=True)[:6]]}
        print("latency", json.dumps(results["latency"]), flush=True)

        # (b) concurrent streams
        started = time.perf_counter()
        spans: list[tuple[float, float]] = []

        def one(i):
            time.sleep(args.ramp * i / max(1, args.streams))  # clients arrive over --ramp seconds
            outcome = _safe(relayed_stream, stack, assistant_id, text)
            if not isinstance(outcome, Exception) and outcome[0]:
                spans.append((outcome[0][0][1], outcome[0][-1][1]))  # first and last event's arrival
            return outcome

        with ThreadPoolExecutor(args.streams) as pool:
            outcomes = list(pool.map(one, range(args.streams)))
        elapsed = time.perf_counter() - started
        edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
        open_now = peak = 0
        for _, step in edges:
            open_now += step
            peak = max(peak, open_now)
        failures, ok, events = [], 0, 0
        texts: dict[str, str] = {}
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                failures.append(repr(outcome))
                continue
            frames, _ = outcome
            events += len(frames)
            found = check_stream(frames, upstream_for(stack, frames), args.words)
            if found:
                failures += found
                continue
            completed = json.loads(next(FRAME.match(f).group(2) for f, _ in frames
                                        if f.startswith(b"event: thread.message.completed")))
            texts[completed["id"]] = completed["content"][0]["text"]["value"]
            ok += 1
        mismatched = mirror_mismatches(stack, texts)
        results["concurrency"] = {"streams": args.streams, "passed": ok, "events": events, "peak_open": peak,
                                  "seconds": round(elapsed, 2), "failures": failures[:5],
                                  "mirror_text_mismatches": mismatched}
        print("concurrency", json.dumps(results["concurrency"]), flush=True)
        if failures:
            print("--- the site's log (tail) ---\n" + stack.logs["gunicorn"].read_text()[-6000:], file=sys.stderr)
    finally:
        stack.close()
    lat, con = results.get("latency", {}), results.get("concurrency", {})
    results["verdict"] = {"latency_p99_under_5ms": bool(lat) and lat["p99_ms"] < LATENCY_TARGET_P99_MS,
                          "all_streams_intact": bool(con) and con["passed"] == con["streams"]
                          and con["mirror_text_mismatches"] == 0}
    print(json.dumps(results))
    if args.record:
        record(args.record, "python bench/relay.py " + " ".join(argv if argv is not None else sys.argv[1:]), results)
    return 0 if all(results["verdict"].values()) else 1


def _safe(func, *args):
    try:
        return func(*args)
    except Exception as exc:  # noqa: BLE001 - counted as a failed stream
        return exc


def mirror_mismatches(stack: Stack, texts: dict[str, str]) -> int:
    """Relayed completed messages whose text in the mirror differs (or is missing)."""
    script = ("import json, sys; from runs_app.models import Message; texts = json.load(sys.stdin); "
              "found = dict(Message.objects.filter(remote_id__in=list(texts)).values_list('remote_id', 'content')); "
              "from runs_app.models import Message as M; "
              "print(sum(1 for k, v in texts.items() if k not in found or M(content=found[k]).text != v))")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], input=json.dumps(texts),
                         cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def record(path: Path, command: str, results: dict) -> None:
    box, lat, con, a = results["machine"], results["latency"], results["concurrency"], results["args"]
    lines = [
        "",
        f"### Relay — {results['date']}",
        "",
        f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}; {box['os']}",
        f"- Command: `{command}`",
        f"- Stack: gunicorn gthread, {a['workers']} workers × {a['threads']} threads, DEBUG off, "
        f"{a['database']} database; emulator `--speed 1`; each run `[words:{a['words']}] [slow:{a['slow']}]`",
        f"- (a) added latency per event, {lat['events']} events over {a['latency_runs']} sequential streams: "
        f"**p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms**, max {lat['max_ms']} ms "
        f"(target p99 < {LATENCY_TARGET_P99_MS} ms: "
        f"{'met' if results['verdict']['latency_p99_under_5ms'] else 'MISSED'}); slowest (ms, index, event): "
        + ", ".join(f"{ms} #{i} {name}" for ms, i, name in lat.get("slowest", [])),
        f"- (b) {con['streams']} relayed streams started over {a['ramp']} s, at most {con['peak_open']} open at once: "
        f"**{con['passed']}/{con['streams']} intact** (order, "
        f"byte-identical to upstream, nothing lost), {con['events']:,} events in {con['seconds']} s, mirror text "
        f"mismatches {con['mirror_text_mismatches']}" + (f"; failures {con['failures']}" if con["failures"] else ""),
        "",
    ]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

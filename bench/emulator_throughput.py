"""Emulator throughput: keep-alive GETs per second, and many concurrent open SSE streams.

Starts a standalone emulator (`python -m assistants_emulator --port N --api-key K`) as a subprocess, waits for its
"listening" line, then measures

(a) GET /openai/threads/{id}/runs/{run_id}?api-version=2024-08-01-preview per second over keep-alive
    connections, with `wrk` when it is installed (`--loader wrk`) or a multiprocessing http.client load
    generator (`--loader python`);
(b) N concurrent `stream: true` runs held open by a `[slow:S]` trigger, each read to `event: done`.

    python bench/emulator_throughput.py                        # full run: 20 s of GETs, 200 streams
    python bench/emulator_throughput.py --record bench/RESULTS.md
    python bench/emulator_throughput.py --gets 200 --streams 5 --slow 0.2 --loader python   # smoke size

Exit status is non-zero when any GET fails or any stream does not end with `done` (and, with --check,
when a target is missed). By hand only; assistants_emulator/tests/test_bench_smoke.py runs it at a tiny size.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
API_VERSION = "2024-08-01-preview"
GET_TARGET = 1500.0


# ------------------------------------------------------------------------------------------ the emulator process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(port: int, api_key: str, speed: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "assistants_emulator", "--port", str(port), "--api-key", api_key,
           "--speed", str(speed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 15
    seen = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "listening" in line.lower():
            # Keep draining output so the emulator never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    proc.kill()
    raise RuntimeError(f"emulator did not report 'listening': {''.join(seen)[-2000:]}")


def request_json(conn: http.client.HTTPConnection, method: str, path: str, key: str, body=None) -> dict:
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"api-key": key, "Content-Type": "application/json"}
    conn.request(method, f"{path}?api-version={API_VERSION}", body=payload, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
    return json.loads(data)


def completed_run_path(port: int, key: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    asst = request_json(conn, "POST", "/openai/assistants", key, {"model": "gpt-4o"})
    thread = request_json(conn, "POST", "/openai/threads", key, {"messages": [{"role": "user", "content": "hi"}]})
    run = request_json(conn, "POST", f"/openai/threads/{thread['id']}/runs", key, {"assistant_id": asst["id"]})
    path = f"/openai/threads/{thread['id']}/runs/{run['id']}"
    deadline = time.monotonic() + 30
    while request_json(conn, "GET", path, key)["status"] != "completed":
        if time.monotonic() > deadline:
            raise RuntimeError("setup run did not complete")
        time.sleep(0.05)
    conn.close()
    return path


# ------------------------------------------------------------------------------------------ (a) GETs per second


def _get_worker(args: tuple) -> dict:
    port, key, path, count, start_at = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    url = f"{path}?api-version={API_VERSION}"
    headers = {"api-key": key}
    while time.time() < start_at:  # start together, after every process is up
        time.sleep(0.001)
    ok = errors = 0
    began = time.time()
    for _ in range(count):
        try:
            conn.request("GET", url, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                ok += 1
            else:
                errors += 1
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ended = time.time()
    conn.close()
    return {"ok": ok, "errors": errors, "began": began, "ended": ended}


def gets_python(port: int, key: str, path: str, total: int, clients: int) -> dict:
    per = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    start_at = time.time() + 0.5
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        parts = pool.map(_get_worker, [(port, key, path, n, start_at) for n in per])
    ok = sum(p["ok"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    wall = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
    return {
        "loader": f"python multiprocessing, {clients} processes, http.client keep-alive",
        "requests": ok + errors,
        "errors": errors,
        "seconds": round(wall, 3),
        "per_second": round(ok / wall, 1) if wall > 0 else 0.0,
    }


def gets_wrk(port: int, key: str, path: str, duration: float, connections: int, threads: int) -> dict:
    url = f"http://127.0.0.1:{port}{path}?api-version={API_VERSION}"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-H", f"api-key: {key}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errors = re.search(r"Socket errors: (.*)", out)
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.MULTILINE))
    return {
        "loader": f"wrk -t{threads} -c{connections} -d{int(duration)}s (keep-alive)",
        "requests": total,
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sock_errors.group(1).strip() if sock_errors else "",
        "seconds": duration,
        "per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "latency_p50_p90_p99": [latency.get("50"), latency.get("90"), latency.get("99")],
    }


# ------------------------------------------------------------------------------------------ (b) open streams


def _stream_one(port: int, key: str, assistant_id: str, thread_id: str, barrier: threading.Barrier, out: dict) -> None:
    result = {"done": False, "events": 0, "error": None}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        body = json.dumps({"assistant_id": assistant_id, "stream": True}).encode()
        barrier.wait(timeout=60)
        began = time.monotonic()
        conn.request(
            "POST",
            f"/openai/threads/{thread_id}/runs?api-version={API_VERSION}",
            body=body,
            headers={"api-key": key, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {resp.read()[:200]!r}")
        first = None
        last_event = None
        while True:
            line = resp.readline()
            if not line:
                break
            if first is None:
                first = time.monotonic() - began
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith("event: "):
                last_event = text[len("event: ") :]
                result["events"] += 1
            elif text == "data: [DONE]" and last_event == "done":
                result["done"] = True
                break
        result["first_byte_s"] = first
        result["seconds"] = time.monotonic() - began
        conn.close()
    except Exception as exc:  # recorded and reported, never raised in a worker thread
        result["error"] = repr(exc)
    out[thread_id] = result


def open_streams(port: int, key: str, count: int, slow: float) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    asst = request_json(conn, "POST", "/openai/assistants", key, {"model": "gpt-4o"})
    message = {"role": "user", "content": f"[slow:{slow}] keep this stream open"}
    threads = [request_json(conn, "POST", "/openai/threads", key, {"messages": [message]})["id"] for _ in range(count)]
    conn.close()
    barrier = threading.Barrier(count)
    results: dict = {}
    workers = [
        threading.Thread(target=_stream_one, args=(port, key, asst["id"], tid, barrier, results), daemon=True)
        for tid in threads
    ]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=slow + 120)
    wall = time.monotonic() - began
    done = [r for r in results.values() if r["done"]]
    errors = sorted({r["error"] for r in results.values() if r["error"]})
    first = sorted(r["first_byte_s"] for r in done if r.get("first_byte_s") is not None)
    return {
        "streams": count,
        "slow_seconds": slow,
        "completed_with_done": len(done),
        "errors": errors[:5],
        "wall_seconds": round(wall, 2),
        "events_per_stream_min_max": [
            min((r["events"] for r in done), default=0),
            max((r["events"] for r in done), default=0),
        ],
        "first_byte_p50_max_s": [round(first[len(first) // 2], 3), round(first[-1], 3)] if first else None,
    }


# ------------------------------------------------------------------------------------------ reporting


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(), "os": platform.platform()}


def record(path: Path, command: str, results: dict) -> None:
    gets, streams, box = results["gets"], results["streams"], results["machine"]
    lines = [
        "",
        f"### Emulator throughput — {results['date']}",
        "",
        f"- Machine: {box['nproc']} CPUs, {box['cpu']}; Python {box['python']}; {box['os']}",
        f"- Command: `{command}`",
        f"- (a) `GET /openai/threads/{{id}}/runs/{{run_id}}?api-version={API_VERSION}`: "
        f"**{gets['per_second']:,.0f} GETs/s** ({gets['requests']:,} requests, {gets['errors']} errors, "
        f"{gets['seconds']} s; {gets['loader']}"
        + (
            f"; latency p50/p90/p99 {'/'.join(map(str, gets['latency_p50_p90_p99']))}"
            if "latency_p50_p90_p99" in gets
            else ""
        )
        + f"); target ≥ {GET_TARGET:,.0f}/s: {'met' if gets['per_second'] >= GET_TARGET else 'MISSED'}",
        f"- (b) {streams['streams']} concurrent `stream: true` runs held open by `[slow:{streams['slow_seconds']}]`: "
        f"**{streams['completed_with_done']}/{streams['streams']} ended with `done`** in {streams['wall_seconds']} s "
        f"(events per stream {streams['events_per_stream_min_max'][0]}–{streams['events_per_stream_min_max'][1]}, "
        f"first byte p50/max {streams['first_byte_p50_max_s']} s)"
        + (f"; errors: {streams['errors']}" if streams["errors"] else ""),
        "",
    ]
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--duration", type=float, default=20.0, help="wrk: seconds of load")
    parser.add_argument("--gets", type=int, default=40000, help="python loader: total GETs")
    parser.add_argument("--clients", type=int, default=2, help="python processes / wrk threads")
    parser.add_argument("--connections", type=int, default=16, help="wrk: keep-alive connections")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--slow", type=float, default=5.0, help="seconds each stream stays open ([slow:N])")
    parser.add_argument("--speed", type=float, default=50.0, help="emulator --speed (model delays)")
    parser.add_argument("--record", type=Path, help="append a markdown summary to this file")
    parser.add_argument("--check", action="store_true", help=f"also fail below {GET_TARGET:.0f} GETs/s")
    args = parser.parse_args(argv)

    loader = args.loader
    if loader == "auto":
        loader = "wrk" if shutil.which("wrk") else "python"
    key = "bench-key"
    port = free_port()
    proc = start_emulator(port, key, args.speed)
    try:
        path = completed_run_path(port, key)
        if loader == "wrk":
            gets = gets_wrk(port, key, path, args.duration, args.connections, args.clients)
        else:
            gets = gets_python(port, key, path, args.gets, args.clients)
        print(f"(a) GETs: {gets['per_second']:,.1f}/s  ({gets['requests']:,} requests, {gets['errors']} errors)")
        print(f"    loader: {gets['loader']}")
        streams = open_streams(port, key, args.streams, args.slow)
        print(
            f"(b) streams: {streams['completed_with_done']}/{streams['streams']} ended with done "
            f"in {streams['wall_seconds']} s; first byte p50/max {streams['first_byte_p50_max_s']} s"
        )
        if streams["errors"]:
            print(f"    stream errors: {streams['errors']}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "gets": gets,
        "streams": streams,
    }
    print(json.dumps(results))
    if args.record:
        record(
            args.record,
            "python bench/emulator_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            results,
        )
    failed = gets["errors"] > 0 or gets["requests"] == 0 or streams["completed_with_done"] != streams["streams"]
    if args.check and gets["per_second"] < GET_TARGET:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

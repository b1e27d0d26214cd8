"""The HTTP layer: a lean stdlib HTTP/1.1 server (keep-alive, chunked SSE) in front of ``api.dispatch``.

We parse requests ourselves instead of using ``http.server`` because its e-mail header parser
dominates the cost of small requests; everything else is plain ``socketserver``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import uuid
from email.utils import formatdate
from urllib.parse import parse_qs, unquote

from . import api
from .engine import STREAM_END_EVENTS, Store
from .errors import (
    INVALID_JSON_MESSAGE,
    ApiError,
    RawError,
    azure_401,
    azure_resource_not_found,
    foundry_401,
    invalid_beta,
    openai_401,
)
from .faults import FaultInjector, describe

AZURE_API_VERSIONS = frozenset({
    "2024-02-15-preview", "2024-03-01-preview", "2024-04-01-preview", "2024-05-01-preview", "2024-07-01-preview",
    "2024-08-01-preview", "2024-09-01-preview", "2024-10-01-preview", "2024-12-01-preview", "2025-01-01-preview",
    "2025-02-01-preview", "2025-03-01-preview", "2025-04-01-preview",
})
FOUNDRY_API_VERSIONS = frozenset({"2025-05-01", "2025-05-15-preview", "v1"})
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}
RATE_LIMIT = 10000        # advertised requests per minute (x-ratelimit-limit-requests)
MAX_BODY = 32 * 1024 * 1024
FOUNDRY_RATE_POLICY = "rate-limit-by-key"   # the policy-id header of the Foundry gateway's 429


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_BAD_JSON = object()


class _Abort(Exception):
    """Close the connection without (finishing) a response."""


class EmulatorHTTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address, *, store: Store, faults: FaultInjector, api_key: str | None, control: bool):
        self.store = store
        self.faults = faults
        self.api_key = api_key
        self.control = control
        self.stopping = False
        self.started = time.time()
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._rate_window = 0
        self._rate_count = 0
        self._date = ("", 0)
        super().__init__(address, Handler)

    def track(self, sock, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def rate_remaining(self) -> int:
        window = int(time.monotonic() // 60)
        with self._rate_lock:
            if window != self._rate_window:
                self._rate_window, self._rate_count = window, 0
            self._rate_count += 1
            return max(0, RATE_LIMIT - self._rate_count)

    def http_date(self) -> str:
        now = int(time.time())
        if self._date[1] != now:
            self._date = (formatdate(now, usegmt=True), now)
        return self._date[0]


class Handler(socketserver.StreamRequestHandler):
    timeout = 300
    server: EmulatorHTTPServer

    def setup(self):
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self):
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self):
        try:
            while not self.server.stopping and self._handle_one():
                pass
        except _Abort:
            self._abort()
        except (OSError, ValueError):
            pass

    def _abort(self):
        # SO_LINGER 0 makes close() send a RST: the client sees a connection reset.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    # ------------------------------------------------------------------ request parsing
    def _handle_one(self) -> bool:
        line = self.rfile.readline(65537)
        if not line:
            return False
        line = line.rstrip(b"\r\n")
        if not line:
            return True
        try:
            method, target, version = line.decode("latin-1").split(" ")
        except ValueError:
            self.keep_alive = False
            self._send(400, b'{"error":{"code":"400","message":"Bad Request"}}', [])
            return False
        headers = {}
        while True:
            h = self.rfile.readline(65537)
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                return False
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        conn = headers.get("connection", "").lower()
        self.keep_alive = (conn != "close") if version == "HTTP/1.1" else (conn == "keep-alive")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            length = int(headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.keep_alive = False
                self._send(413, b'{"error":{"code":"413","message":"Request entity too large"}}', [])
                return False
            body = self.rfile.read(length) if length else b""
        self.method = method
        self.headers = headers
        self._process(method, target, headers, body)
        return self.keep_alive

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.rfile.readline(65537)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(65537)

    # ------------------------------------------------------------------ responses
    def _base_headers(self, backend: str | None, extra=(), gateway: bool = False) -> list:
        rid = str(uuid.uuid4())
        h = [("Date", self.server.http_date()), ("x-request-id", rid), ("apim-request-id", rid)]
        if not gateway:
            h += [("x-ratelimit-limit-requests", str(RATE_LIMIT)),
                  ("x-ratelimit-remaining-requests", str(self.server.rate_remaining()))]
        if backend in ("azure", "foundry"):
            h.append(("x-ms-region", "Emulator Central"))
            client_rid = self.headers.get("x-ms-client-request-id") if hasattr(self, "headers") else None
            if client_rid:
                h.append(("x-ms-client-request-id", client_rid))
        elif backend == "openai" and not gateway:
            h.append(("openai-version", "2020-10-01"))
        h.extend(extra)
        return h

    def _send(self, status: int, body: bytes, headers: list, content_type: str = "application/json") -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if not self.keep_alive:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _send_error(self, exc, backend: str | None) -> None:
        extra = list(getattr(exc, "headers", {}).items())
        self._send(exc.status, dumps(exc.body()), self._base_headers(backend, extra, getattr(exc, "gateway", False)))

    # ------------------------------------------------------------------ routing, auth, faults
    def _process(self, method: str, target: str, headers: dict, body: bytes) -> None:
        path, _, qs = target.partition("?")
        if path.startswith("/_emulator/") or path == "/_emulator":
            return self._control(method, path, qs, body)
        backend = None
        try:
            if path.startswith("/v1/"):
                backend, rest = "openai", path[4:]
            elif path.startswith("/openai/"):
                backend, rest = "azure", path[8:]
            elif path.startswith("/api/projects/"):
                backend = "foundry"
                rest = path[len("/api/projects/"):].partition("/")[2]
            else:
                raise azure_resource_not_found()
            query = parse_qs(qs, keep_blank_values=True) if qs else {}
            version = (query.get("api-version") or [None])[-1]
            if backend == "azure":
                # Assistants are not deployment-scoped; unknown api-versions are Azure's routing 404.
                if rest.startswith("deployments/") or version not in AZURE_API_VERSIONS:
                    raise azure_resource_not_found()
            elif backend == "foundry" and version not in FOUNDRY_API_VERSIONS:
                raise azure_resource_not_found()
            self._authenticate(backend, headers)
            flavor = _flavor(backend, version)
            payload = None
            if body:
                try:
                    payload = json.loads(body)
                    # A lone surrogate escaped in the JSON ("\ud800") decodes, but is no text: refused as the
                    # service refuses a body it cannot read (it would fail later, when the object is written out).
                    dumps(payload)
                except (ValueError, UnicodeEncodeError):
                    payload = _BAD_JSON
            faults = self.server.faults
            decision = None
            if faults.active:
                streaming = isinstance(payload, dict) and payload.get("stream") is True
                decision = faults.decide(method, "/" + rest.strip("/"), streaming)
            if decision is not None:
                if decision.latency:
                    time.sleep(decision.latency)
                if decision.kind == "reset":
                    raise _Abort()
                if decision.kind:
                    raise _fault_error(decision.kind, backend, self.server.store.speed)
            if payload is _BAD_JSON:
                raise ApiError(400, INVALID_JSON_MESSAGE, param=None, code=None)
            parts = [unquote(p) for p in rest.split("/") if p]
            store = self.server.store
            with store.lock:
                result = api.dispatch(store, flavor, method, parts, query, payload)
        except _Abort:
            raise
        except (ApiError, RawError) as exc:
            return self._send_error(exc, backend)
        except api.RouteNotFound:
            if backend == "openai":
                exc = ApiError(404, f"Invalid URL ({method} {path})", code=None)
            else:
                exc = azure_resource_not_found()
            return self._send_error(exc, backend)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            exc = ApiError(500, "The server had an error while processing your request. Sorry about that!",
                           type="server_error")
            return self._send_error(exc, backend)
        if decision is not None and decision.drop:
            self.keep_alive = False
            raise _Abort()   # fault "drop": the request was applied, the response is lost
        if isinstance(result, api.StreamPlan):
            return self._stream(result, flavor, backend, decision)
        data = dumps(api.render(result.payload, flavor, result.include_content))
        if decision is not None and decision.malformed:
            data = data[: max(1, len(data) // 2)]   # applied after the request: state did change
        extra = [("openai-poll-after-ms", str(max(5, int(500 / self.server.store.speed))))] if result.poll_hint else []
        self._send(result.status, data, self._base_headers(backend, extra))

    def _authenticate(self, backend: str, headers: dict) -> None:
        key = self.server.api_key
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if backend == "azure":
            cred = headers.get("api-key") or bearer
            if not cred or (key is not None and cred != key):
                raise azure_401()
        elif backend == "foundry":
            # Foundry classic agents accept Entra ID bearer tokens only; an api-key header is refused.
            if "api-key" in headers or not bearer or (key is not None and bearer != key):
                raise foundry_401()
        else:
            if not bearer or (key is not None and bearer != key):
                raise openai_401(bearer)
            if "assistants=v2" not in headers.get("openai-beta", ""):
                raise invalid_beta()

    # ------------------------------------------------------------------ SSE
    def _stream(self, plan: api.StreamPlan, flavor, backend: str, decision) -> None:
        store = self.server.store
        headers = self._base_headers(backend, [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream; charset=utf-8", "Transfer-Encoding: chunked"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if not self.keep_alive:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        cut_after = decision.cut_after if decision is not None else None
        rt = plan.rt
        idx = plan.start
        pending = list(plan.prefix)
        sent = 0
        finished = False
        include = plan.include_content
        write = self.wfile.write
        while True:
            if not pending:
                with store.lock:
                    while idx >= len(rt.log) and not rt.dead and not self.server.stopping:
                        rt.cond.wait(1.0)
                    pending = rt.log[idx:]
                    idx += len(pending)
                if not pending:
                    break   # run deleted / server reset or stopping: end the stream cleanly
            out = []
            finished = False
            for name, obj in pending:
                if cut_after is not None and sent >= cut_after:
                    if out:
                        chunk = b"".join(out)
                        write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.keep_alive = False
                    raise _Abort()   # fault "cut": the stream stops mid-way, the run goes on
                out.append(b"event: " + name.encode() + b"\ndata: " + dumps(api.render(obj, flavor, include, True))
                           + b"\n\n")
                sent += 1
                if name in STREAM_END_EVENTS:
                    finished = True
                    break
            pending = []
            if finished:
                out.append(b"event: done\ndata: [DONE]\n\n")
            chunk = b"".join(out)
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if finished:
                break
        if not finished:
            chunk = b"event: done\ndata: [DONE]\n\n"
            write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        write(b"0\r\n\r\n")

    # ------------------------------------------------------------------ control endpoint
    def _control(self, method: str, path: str, qs: str, body: bytes) -> None:
        server = self.server
        if not server.control:
            return self._send_error(azure_resource_not_found(), None)
        query = parse_qs(qs) if qs else {}
        name = path[len("/_emulator/"):].strip("/")
        try:
            if name == "health" and method == "GET":
                with server.store.lock:
                    counts = {"assistants": len(server.store.assistants), "threads": len(server.store.threads),
                              "runs": len(server.store.runs), "events": server.store.seq}
                payload = {"status": "ok", "uptime": round(time.time() - server.started, 3),
                           "speed": server.store.speed, "expire_after": server.store.expire_after, **counts}
            elif name == "events" and method == "GET":
                since = int((query.get("since") or ["0"])[-1])
                limit = query.get("limit")
                wait = min(60.0, float((query.get("wait") or ["0"])[-1]))
                data = server.store.events_since(since, int(limit[-1]) if limit else None, wait)
                payload = {"object": "list", "data": data, "last_seq": data[-1]["seq"] if data else since}
            elif name == "faults" and method == "GET":
                payload = {**describe(server.faults.config), "injected": dict(server.faults.injected)}
            elif name == "faults" and method in ("PUT", "POST"):
                spec = json.loads(body) if body else {}
                if isinstance(spec, dict) and "spec" in spec and len(spec) == 1:
                    spec = spec["spec"]
                payload = describe(server.faults.set(spec))
            elif name == "reset" and method == "POST":
                server.store.reset()
                server.faults.reset()
                payload = {"status": "reset"}
            else:
                return self._send_error(RawError(404, {"error": {"code": "404", "message": "Resource not found"}}),
                                        None)
        except (ValueError, TypeError) as exc:
            return self._send_error(RawError(400, {"error": {"code": "400", "message": str(exc)}}), None)
        self._send(200, dumps(payload), self._base_headers(None))


_FLAVORS: dict = {}


def _flavor(backend: str, version: str | None) -> api.Flavor:
    key = (backend, version)
    f = _FLAVORS.get(key)
    if f is None:
        f = _FLAVORS[key] = api.Flavor.make(backend, version)
    return f


def _fault_error(kind: str, backend: str, speed: float) -> RawError:
    retry_ms = str(max(1, int(1000 / speed)))
    if kind == "429":
        if backend == "foundry":
            # The Foundry gateway's own 429 (protocol.md §10): Retry-After in seconds and the APIM policy that
            # fired; no retry-after-ms and none of the service's x-ratelimit-* / openai-* headers.
            body = {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}}
            return RawError(429, body, {"Retry-After": "1", "policy-id": FOUNDRY_RATE_POLICY}, gateway=True)
        headers = {"retry-after": "1", "retry-after-ms": retry_ms}
        if backend == "openai":
            body = {"error": {"message": "Rate limit reached for requests. Please try again in 1s.",
                              "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        else:
            body = {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}}
        return RawError(429, body, headers)
    if kind == "503":
        if backend == "openai":
            body = {"error": {"message": "The engine is currently overloaded, please try again later.",
                              "type": "server_error", "param": None, "code": None}}
        else:
            body = {"error": {"code": "503", "message": "Service Unavailable"}}
        return RawError(503, body, {"retry-after": "1", "retry-after-ms": retry_ms})
    if backend == "openai":
        body = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                          "type": "server_error", "param": None, "code": None}}
    else:
        body = {"error": {"code": "InternalServerError", "message": "The service encountered an internal error. "
                                                                    "Please retry."}}
    return RawError(500, body)

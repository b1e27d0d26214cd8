"""The clients of long responses: whether one has left, and how many feeds each user holds.

A WSGI server learns that a client left only when a write fails, and the first write after the client closed
usually succeeds (the bytes reach the kernel; the peer answers with a reset). A feed that writes only a heartbeat
every 15 s would hold its server thread 15–40 s after the client left. So a feed looks at the client's socket every
tick where the server exposes it (gunicorn: ``gunicorn.socket``; runserver and wsgiref: the socket under
``wsgi.input``): a socket that is readable with nothing to read is a closed connection. Elsewhere (other servers,
TLS sockets) it sends a second, empty comment one tick after each heartbeat, whose write fails once the reset came
back — so a gone client is noticed within one heartbeat either way.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from collections import Counter


def client_socket(environ: dict) -> socket.socket | None:
    """The request's plain TCP socket, when the WSGI server lets it be found; None otherwise."""
    candidate = environ.get("gunicorn.socket")
    if candidate is None:
        candidate = environ.get("wsgi.input")
        for _ in range(5):  # Django's LimitedStream → BufferedReader → SocketIO → socket
            if isinstance(candidate, socket.socket) or candidate is None:
                break
            candidate = _wrapped(candidate)
    if isinstance(candidate, socket.socket) and not isinstance(candidate, ssl.SSLSocket):
        return candidate
    return None


def _wrapped(stream):
    """The stream a file-like object reads from, by the attributes the standard library and Django use."""
    for name in ("raw", "_sock", "stream"):
        inner = getattr(stream, name, None)
        if inner is not None:
            return inner
    read = getattr(stream, "_read", None)  # Django's LimitedStream keeps only the bound read method
    return getattr(read, "__self__", None)


def has_left(sock: socket.socket) -> bool:
    """True when the peer closed the connection (the socket reads as end-of-file, or fails)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class TooManyFeeds(Exception):
    def __init__(self, limit: int):
        super().__init__(f"You have {limit} live feeds open, the most one user may hold "
                         f"(RUNS_APP['LIVE_MAX_FEEDS_PER_USER']); close a live page and try again.")
        self.limit = limit


class FeedSlots:
    """Open feeds per user, in this process — where the server threads they hold are."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: Counter = Counter()

    def take(self, user_id, limit: int) -> FeedSlot:
        with self._lock:
            if self._open[user_id] >= limit:
                raise TooManyFeeds(limit)
            self._open[user_id] += 1
        return FeedSlot(self, user_id)

    def give_back(self, user_id) -> None:
        with self._lock:
            self._open[user_id] -= 1
            if self._open[user_id] <= 0:
                del self._open[user_id]

    def held(self, user_id) -> int:
        with self._lock:
            return self._open[user_id]


class FeedSlot:
    def __init__(self, slots: FeedSlots, user_id):
        self._slots, self._user_id, self._held = slots, user_id, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back(self._user_id)


feed_slots = FeedSlots()

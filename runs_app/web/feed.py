"""A run's mirror, as a server-sent event stream: watch any run, including ones this site did not start.

``MirrorFeed(run)`` is an iterator of SSE bytes for a ``StreamingHttpResponse``. It reads the mirror (not the
service) every ``tick`` seconds and sends what changed since the last look, under the protocol's own event
names so one renderer serves both this feed and a relayed stream:

- ``thread.run.<status>`` — the run object (the mirror's columns over its raw object) when its status or any
  synced field changed;
- ``thread.run.step.<status>`` — a step that is new or changed;
- ``thread.message.<status>`` — a message of the run that is new or whose text grew (the whole text so far:
  a relay folds deltas into the mirror, the poller writes whole messages);
- ``done`` (``[DONE]``) once the run is terminal and its steps and messages were fetched for that state
  (or ``SETTLE_SECONDS`` after it became terminal);
- ``error`` if the run disappears from the mirror; ``: heartbeat`` comments after ``heartbeat`` seconds of
  silence (``RUNS_APP["LIVE_HEARTBEAT"]``).

A feed stops within one tick of its client leaving where the server exposes the client's socket, within one
heartbeat elsewhere (``runs_app.web.clients``), and gives back its slot of ``LIVE_MAX_FEEDS_PER_USER``.

Opening the feed asks the poller to poll an active run now, so a watched run is fresh from the first second.
The feed holds one database connection while it is open.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator

from django.db.models import Q
from django.utils import timezone

from runs_app import poller
from runs_app.conf import app_settings
from runs_app.mirror.representation import message_object, run_object, step_object
from runs_app.models import Message, Run, RunStep
from runs_app.ops.metrics import STREAMS_OPEN
from runs_app.services import details_marker
from runs_app.web.clients import FeedSlot, has_left

logger = logging.getLogger("runs_app.web.feed")

TICK_SECONDS = 0.25
SETTLE_SECONDS = 10.0


def sse(name: str, data) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


class MirrorFeed:
    def __init__(self, run: Run, *, tick: float = TICK_SECONDS, heartbeat: float | None = None,
                 settle: float = SETTLE_SECONDS, client: socket.socket | None = None, slot: FeedSlot | None = None):
        self.run_pk = run.pk
        self.remote_id = run.remote_id
        self.tick, self.settle = tick, settle
        self.heartbeat = app_settings.LIVE_HEARTBEAT if heartbeat is None else heartbeat
        self.client, self.slot = client, slot
        self.client_left = False
        self._run_seen: bytes | None = None
        self._steps_seen: dict[int, bytes] = {}
        self._messages_seen: dict[int, bytes] = {}
        self.events_sent = 0

    def __iter__(self) -> Iterator[bytes]:
        # The database connection is closed by Django when the response closes (request_finished).
        self._hurry_poller()
        STREAMS_OPEN.inc()
        try:
            yield from self._feed()
        finally:
            STREAMS_OPEN.dec()
            self.close()

    def close(self) -> None:
        """Give back the user's feed slot (the response calls this when it closes, even if never read)."""
        if self.slot is not None:
            self.slot.release()

    def _feed(self) -> Iterator[bytes]:
        yield b"retry: 2000\n\n"
        last_sent = time.monotonic()
        terminal_since: float | None = None
        probe = False
        while True:
            if self.client is not None and has_left(self.client):
                self.client_left = True
                return
            if probe:  # fails to write if the heartbeat came back as a reset: the client left
                probe = False
                yield b":\n\n"
            run = Run.objects.select_related("thread").filter(pk=self.run_pk).first()
            if run is None:
                yield sse("error", {"error": {"message": f"Run {self.remote_id} is no longer in the mirror.",
                                              "code": "run_gone", "param": None, "request_id": None}})
                return
            chunks = self._changes(run)
            for chunk in chunks:
                self.events_sent += 1
                yield chunk
            now = time.monotonic()
            if chunks:
                last_sent = now
            elif now - last_sent >= self.heartbeat:
                last_sent = now
                probe = self.client is None
                yield b": heartbeat\n\n"
            if run.is_terminal:
                terminal_since = terminal_since or now
                if run.steps_synced_for == details_marker(run) or now - terminal_since >= self.settle:
                    # One more look, in case the last details landed after this tick's reads.
                    yield from self._changes(Run.objects.select_related("thread").get(pk=self.run_pk))
                    yield sse("done", "[DONE]")
                    return
            time.sleep(self.tick)

    def _hurry_poller(self) -> None:
        """A watched run is polled now, not at its (possibly slow) next turn."""
        updated = Run.objects.active().filter(pk=self.run_pk).update(next_poll_at=timezone.now())
        if updated:
            try:
                poller.wake()
            except Exception as exc:  # a feed must open even if the broker is down
                logger.warning("could not wake the poller: %s", exc)

    def _changes(self, run: Run) -> list[bytes]:
        """Events for what differs from what this feed already sent (compared by content: a poll that found
        nothing new rewrites timestamps, not the objects)."""
        out: list[bytes] = []
        run_event = sse(f"thread.run.{run.status}", run_object(run, mirror=False))
        if run_event == self._run_seen:
            run_event = None
        else:
            self._run_seen = run_event
        if run_event and not run.is_terminal:
            out.append(run_event)  # the new status first, then what came with it
        for step in RunStep.objects.filter(run_id=run.pk).order_by("created_at", "id"):
            step.run = run
            event = sse(f"thread.run.step.{step.status}", step_object(step, mirror=False))
            if self._steps_seen.get(step.pk) != event:
                self._steps_seen[step.pk] = event
                out.append(event)
        messages = Message.objects.filter(Q(run_id=run.pk) | Q(run_remote_id=run.remote_id, connection=run.connection))
        for message in messages.select_related("thread").order_by(*Message.THREAD_ORDER):
            event = sse(f"thread.message.{message.status or 'completed'}", message_object(message, mirror=False))
            if self._messages_seen.get(message.pk) != event:
                self._messages_seen[message.pk] = event
                out.append(event)
        if run_event and run.is_terminal:
            out.append(run_event)  # a terminal status last, after the final text
        return out

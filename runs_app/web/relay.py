"""Relay a run's event stream: re-emit every service event unchanged and apply each to the mirror as it passes.

The three entry points validate and open the service's stream *before* returning (so bad input is a
``ValidationError`` and a refusal by the service an ``AssistantsError``, both before the first byte),
then return a ``Relay``: an iterator of SSE bytes for a ``StreamingHttpResponse`` (``sse_response``).

- Each event goes out as ``event: NAME\\ndata: DATA\\n\\n`` with DATA exactly as received, ending with
  ``event: done`` / ``data: [DONE]``.
- Each event is applied through the one upsert (message and step deltas folded), so the mirror holds the
  text so far even if the stream drops.
- A comment line (``: heartbeat``) goes out after ``HEARTBEAT_SECONDS`` of silence.
- If the upstream stream breaks, the client gets an ``error`` event saying so, and the run is handed to
  the poller; if the client goes away, the run is handed to the poller too. The upstream response is
  closed whatever happens.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator

from django.http import StreamingHttpResponse
from django.utils import timezone

from runs_app import poller, services
from runs_app.assistants import AssistantsError
from runs_app.mirror import ordering, upsert
from runs_app.mirror.ordering import Observation
from runs_app.models import Run, Source
from runs_app.ops.metrics import EVENTS_RELAYED, STREAMS_OPEN
from runs_app.services import OpenedStream

logger = logging.getLogger("runs_app.web.relay")

HEARTBEAT_SECONDS = 15.0
_END = object()


class Relay:
    """Iterate to get SSE bytes.

    Three parts, so that the browser never waits for the database: a reader thread reads the service's stream
    and hands each event (with its arrival time) to the iterating thread, which re-emits it at once, and to
    the *applier*, which applies the events to the mirror in order (consecutive text deltas of one message
    folded into one write). When the stream ends (done, broken, or the client gone) the iterating thread
    waits for the applier to finish, so the mirror is complete when the response closes.

    The applier is a thread of its own, with its own database connection, unless the response is iterated
    inside a transaction (``atomic``), whose uncommitted rows only that connection sees: then each event is
    applied on the iterating thread right after it was sent. While streaming, the iterating thread holds no
    connection; the applier holds one, and with a connection pool (``OPTIONS["pool"]``, PostgreSQL) gives it
    back after each batch of events.
    """

    def __init__(self, opened: OpenedStream, *, heartbeat: float = HEARTBEAT_SECONDS):
        self._opened = opened
        self._stream = opened.events
        self._connection = opened.connection
        self._heartbeat = heartbeat
        self._started = timezone.now()
        self._events: queue.Queue = queue.Queue(maxsize=1000)
        self._to_apply: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.run_remote_id: str | None = opened.run_remote_id
        self.finished = False
        self.apply_failed = False
        self._details_for: Run | None = None
        self.events_relayed = 0
        self.writes = 0
        self._generator: Iterator[bytes] | None = None
        self._relaying = False
        # Reading starts now, not when the response starts: the first events often arrive with the service's
        # response headers, and are parsed and waiting while Django still returns the response.
        threading.Thread(target=self._read, name="runs-relay-reader", daemon=True).start()

    def close(self) -> None:
        """Called by Django when the response is closed (the WSGI server's ``close()``): ends the iteration,
        which closes the service's stream; a relay whose response never started (an error between the view and
        the first byte) stops its reader and closes the service's stream here."""
        if self._generator is not None:
            self._generator.close()  # runs the relay's cleanup if it started; nothing if not
        if not self._relaying:
            self._stop.set()
            self._stream.close()

    def __iter__(self) -> Iterator[bytes]:
        if self._generator is None:
            self._generator = self._relay()
        return self._generator

    def _relay(self) -> Iterator[bytes]:
        from django.db import connection as db

        self._relaying = True
        STREAMS_OPEN.inc()
        inline = db.in_atomic_block
        applier = None
        try:
            while True:
                try:
                    item = self._events.get(timeout=self._heartbeat)
                except queue.Empty:
                    yield b": heartbeat\n\n"
                    continue
                if item is _END:
                    break
                if isinstance(item, Exception):
                    yield self._error_event(item)
                    break
                event, _ = item
                self.events_relayed += 1
                EVENTS_RELAYED.inc()
                try:
                    yield f"event: {event.name}\ndata: {event.raw}\n\n".encode()
                finally:  # applied even if the client went away at this very event
                    if event.name != "done":
                        self._to_apply.put(item)
                        if inline:
                            self._apply_pending()
                        elif applier is None and self._events.empty():
                            # Started once an event went out and none waits to be sent (the first events come
                            # in bursts): starting a thread and connecting must not hold back an event.
                            applier = threading.Thread(target=self._apply_loop, name="runs-relay-applier",
                                                       daemon=True)
                            applier.start()
                            db.close()  # this thread needs no connection while it streams
                if event.name == "done":
                    self.finished = True
                    break
        finally:
            STREAMS_OPEN.dec()
            self._stop.set()
            self._stream.close()
            self._to_apply.put(_END)
            if applier is not None:
                applier.join(timeout=120)
            else:
                self._apply_pending()
            if not self.finished or self.apply_failed:
                self._hand_to_poller()

    def _read(self) -> None:
        """Reads the upstream stream on its own thread, so heartbeats can go out while it is silent."""
        try:
            for event in self._stream:
                if self._stop.is_set() or not self._hand((event, timezone.now())):
                    return
            self._hand(_END)
        except Exception as exc:  # handed to the iterating thread, which reports it to the client
            self._hand(exc)

    def _hand(self, item) -> bool:
        """Queue an item for the iterating thread; False if the relay stopped meanwhile (nobody will take it)."""
        while not self._stop.is_set():
            try:
                self._events.put(item, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def _apply_loop(self) -> None:
        from django.db import connection as db

        pooled = bool((db.settings_dict.get("OPTIONS") or {}).get("pool"))
        try:
            while not self._apply_pending(block=True):
                if pooled:
                    db.close()  # back to the pool after each batch: many open streams share a few connections
        finally:
            db.close()

    def _apply_pending(self, block: bool = False) -> bool:
        """Apply what is queued (waiting for the first item if ``block``). True once the end was reached."""
        batch = []
        try:
            batch.append(self._to_apply.get(block=block))
            while True:
                batch.append(self._to_apply.get_nowait())
        except queue.Empty:
            pass
        ended = bool(batch) and batch[-1] is _END
        for event, received in coalesce([item for item in batch if item is not _END]):
            try:
                self._apply(event, received)
            except Exception:  # the stream goes on; the poller repairs the mirror afterwards
                self.apply_failed = True
                logger.exception("applying %s of %s to the mirror failed", event.name, self.run_remote_id)
        if ended and self._details_for is not None:
            self._sync_details(self._details_for)
        return ended

    def _apply(self, event, received) -> None:
        self.writes += 1
        seen = Observation(Source.STREAM, self._started, received)
        row = upsert.apply_event(event.name, event.data, connection=self._connection, seen=seen)
        if isinstance(row, Run):
            self.run_remote_id = self.run_remote_id or row.remote_id
            self._opened.run_seen(row)
        if event.name == "thread.run.requires_action" or (
                event.name.startswith("thread.run.") and isinstance(row, Run) and row.is_terminal):
            self._details_for = row  # fetched once the stream has ended (its last events are not held back)

    def _sync_details(self, run: Run) -> None:
        try:
            services.run_details_sync(run=run, source=Source.STREAM)
        except AssistantsError as exc:
            logger.warning("details of %s after its stream: %s", run.remote_id, exc)

    def _error_event(self, exc: Exception) -> bytes:
        logger.warning("relay of %s broke: %s", self.run_remote_id or "a new run", exc)
        message = str(exc) if isinstance(exc, AssistantsError) else "The relay failed."
        body = {"error": {"message": f"The service's stream broke: {message} The run is followed by polling.",
                          "code": "stream_interrupted", "param": None,
                          "request_id": getattr(exc, "request_id", None)}}
        return f"event: error\ndata: {json.dumps(body)}\n\n".encode()

    def _hand_to_poller(self) -> None:
        """The stream ended early (client gone or upstream broken): the poller finishes the mirror."""
        if self.run_remote_id:
            Run.objects.filter(connection=self._connection, remote_id=self.run_remote_id).exclude(
                status__in=("completed", "failed", "cancelled", "expired", "incomplete")
            ).update(next_poll_at=timezone.now())
        try:
            poller.ensure_running()
        except Exception as exc:  # never let the hand-over break the response's cleanup
            logger.warning("could not wake the poller: %s", exc)


def coalesce(items: list) -> list:
    """Consecutive ``thread.message.delta`` events of one message folded into one (text concatenated per
    content index), so a fast stream costs one mirror write per batch, not one per token."""
    out: list = []
    for event, received in items:
        if (event.name == "thread.message.delta" and out and out[-1][0].name == "thread.message.delta"
                and isinstance(event.data, dict) and isinstance(out[-1][0].data, dict)
                and event.data.get("id") == out[-1][0].data.get("id")):
            previous = out[-1][0]
            merged = dict(previous.data, delta={"content": _merge_parts(
                (previous.data.get("delta") or {}).get("content") or [],
                (event.data.get("delta") or {}).get("content") or [])})
            out[-1] = (type(event)(event.name, merged, event.raw), received)
        else:
            out.append((event, received))
    return out


def _merge_parts(parts: list, more: list) -> list:
    merged = [dict(p) for p in parts]
    for part in more:
        index = part.get("index")
        target = next((m for m in merged if index is not None and m.get("index") == index), None)
        if target is None:
            merged.append(dict(part))
        else:
            combined = ordering.merge_delta({k: v for k, v in target.items() if k != "index"},
                                        {k: v for k, v in part.items() if k != "index"})
            target.clear()
            target.update(combined, index=index)
    return merged


def event_stream_response(events: Iterator[bytes]) -> StreamingHttpResponse:
    """Server-sent events as a response that proxies and browsers do not buffer (closing it closes the events)."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-store"  # live state: never kept by a browser or a proxy
    response["X-Accel-Buffering"] = "no"
    return response


def sse_response(opened: OpenedStream) -> StreamingHttpResponse:
    """Relay a stream a service opened (``Relay.close()`` runs when the response closes)."""
    return event_stream_response(Relay(opened))

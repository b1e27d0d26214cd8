"""Server-sent event streams of runs, read with sseclient-py.

A stream yields ``Event(name, data, raw)``. ``done`` ends it (its ``[DONE]`` is not JSON); an ``error``
event raises ``StreamError`` with the service's message; an idle stream raises ``Timeout``; a stream that
ends without ``done`` raises ``StreamInterrupted``. The HTTP response is closed whatever happens.
Streams cannot be resumed (no event ids): after an interruption the caller polls the run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import sseclient
import urllib3

from runs_app.assistants import errors

_EVENT_END = re.compile(rb"\r\r|\n\n|\r\n\r\n")


@dataclass(frozen=True)
class Event:
    """One event: its name (``thread.run.created`` …), its data parsed from JSON (None for ``done``) and
    the data exactly as received."""

    name: str
    data: Any
    raw: str

    @property
    def is_done(self) -> bool:
        return self.name == "done"


class EventStream:
    """Iterate over a run's events; also a context manager. Closes the response when done or abandoned."""

    def __init__(self, response: requests.Response, *, context: dict, on_close: Callable[[], None] | None = None):
        self._response = response
        self._context = context  # connection, method, path, request_id: for errors
        self._on_close = on_close
        self._closed = False
        self.request_id = context.get("request_id")
        self.events_seen = 0
        self.finished = False  # True once ``done`` arrived

    def __iter__(self) -> Iterator[Event]:
        try:
            yield from self._events()
        finally:
            self.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()
            if self._on_close:
                self._on_close()

    def _events(self) -> Iterator[Event]:
        source = _CompleteEvents(self._response)
        try:
            for sse in sseclient.SSEClient(source).events():
                event = self._parse(sse.event or "message", sse.data)
                self.events_seen += 1
                if event.name == "error":
                    self._raise_error_event(event)
                yield event
                if event.is_done:
                    self.finished = True
                    return
        except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError, OSError) as exc:
            if _is_timeout(exc):
                raise errors.Timeout(
                    f"The stream was idle longer than its timeout after {self.events_seen} events",
                    maybe_applied=True, **self._context,
                ) from exc
            raise errors.StreamInterrupted(
                f"The stream was cut after {self.events_seen} events ({type(exc).__name__}); poll the run instead",
                maybe_applied=True, **self._context,
            ) from exc
        raise errors.StreamInterrupted(
            f"The stream ended after {self.events_seen} events without its 'done' event"
            + (" (the last event was cut in half)" if source.truncated else "")
            + "; poll the run instead",
            maybe_applied=True, **self._context,
        )

    def _parse(self, name: str, raw: str) -> Event:
        if name == "done":
            return Event(name, None, raw)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise errors.MalformedResponse(
                f"The {name!r} event's data is not JSON", body_excerpt=raw[:200], **self._context
            ) from exc
        return Event(name, data, raw)

    def _raise_error_event(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        message, code, _param, _type = errors.parse_error_body(data)
        raise errors.StreamError(
            f"The service sent an error event: {message or event.raw}", code=code, data=data, **self._context
        )


class _CompleteEvents:
    """Feeds sseclient whole events only, as bytes arrive, and notes a trailing half event at EOF
    (sseclient would otherwise hand a cut-off event over as if it were complete)."""

    def __init__(self, response: requests.Response):
        self._response = response
        self.truncated = False

    def __iter__(self) -> Iterator[bytes]:
        pending = b""
        for chunk in _arriving_chunks(self._response):
            pending += chunk
            ends = [m.end() for m in _EVENT_END.finditer(pending)]
            if ends:
                yield pending[: ends[-1]]
                pending = pending[ends[-1]:]
        self.truncated = bool(pending.strip())


def _arriving_chunks(response: requests.Response) -> Iterator[bytes]:
    """Bytes as they arrive: per HTTP chunk when chunked, else whatever one read returns (never waiting to
    fill a fixed-size buffer, which would hold events back)."""
    raw = response.raw
    if getattr(raw, "chunked", False) and raw.supports_chunked_reads():
        yield from raw.read_chunked(decode_content=True)
        return
    while True:
        data = raw.read1(65536, decode_content=True)
        if not data:
            return
        yield data


def _is_timeout(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0],
                                                                                        BaseException) else None)
    return False

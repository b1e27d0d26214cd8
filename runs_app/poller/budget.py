"""The poller's request budget per connection (``MAX_REQUESTS_PER_SECOND``), shared by every lane of every process.

A token bucket lives in the connection's ``ConnectionState`` row: refilled at the rate times the *throttle*, holding
at most a tenth of a second's worth (so in any T seconds the poller sends at most rate × T + rate / 10 requests).
A lane takes tokens for the runs it claims in a pass; every further request of the pass (a retry, a run's steps and
messages) takes one before it is sent, waiting for the bucket if it is empty. Unused tokens go back.

A 429 does not stop the connection: it lowers the throttle by ``THROTTLE_STEP`` divided by the rate in use, so the
rate falls in proportion to the share of requests refused (a few refusals in many barely slow it; a gateway refusing
a third of them brings the rate down to what it accepts), and the throttle climbs back by ``THROTTLE_RECOVERY`` per
second. Only a Retry-After longer than ``RETRY_AFTER_CAP`` (a quota exhausted for hours) pauses the connection.
"""

from __future__ import annotations

import threading
import time

from runs_app.conf import app_settings
from runs_app.models import ConnectionState

THROTTLE_RECOVERY = ConnectionState.THROTTLE_RECOVERY
#: How much one 429 lowers the throttle, times one over the requests per second in use.
THROTTLE_STEP = 1.5
THROTTLE_FLOOR = 0.05
#: The bucket holds this many seconds of requests at most.
BURST_SECONDS = 0.1


def rate_of(connection: str) -> float:
    return app_settings.connection(connection)["MAX_REQUESTS_PER_SECOND"]


def burst_of(rate: float) -> float:
    return max(1.0, rate * BURST_SECONDS)


def take(connection: str, want: int) -> int:
    """Up to ``want`` tokens from the connection's shared bucket, at once (maybe fewer, maybe 0)."""
    rate = rate_of(connection)
    return ConnectionState.objects.take_budget(connection, want, rate=rate, burst=burst_of(rate),
                                               recovery=THROTTLE_RECOVERY)


class Budget:
    """One lane pass's share of a connection's budget: tokens taken for its claims, more taken as requests need them
    (the client calls ``acquire`` before each attempt), the rest given back by ``settle``. Thread-safe: the pass's
    poll threads share it."""

    def __init__(self, connection: str, *, sleep=time.sleep):
        self.connection = connection
        self._lock = threading.Lock()
        self._reserve = 0
        self._sleep = sleep
        self.waited = 0.0

    def deposit(self, tokens: int) -> None:
        with self._lock:
            self._reserve += tokens

    def acquire(self) -> None:
        """One request's token: from this pass's reserve, else from the shared bucket, waiting while it is empty."""
        with self._lock:
            if self._reserve > 0:
                self._reserve -= 1
                return
        rate = rate_of(self.connection)
        while True:
            granted = take(self.connection, int(burst_of(rate)))
            if granted:
                with self._lock:
                    self._reserve += granted - 1
                return
            pause = 1.0 / rate
            self.waited += pause
            self._sleep(pause)

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429 came back: slow the whole connection a little (see the module's docstring)."""
        rate = rate_of(self.connection)
        state = ConnectionState.objects.for_connection(self.connection)
        in_use = max(1.0, rate * state.throttle)
        ConnectionState.objects.throttle_down(self.connection, THROTTLE_STEP / in_use, floor=THROTTLE_FLOOR,
                                              recovery=THROTTLE_RECOVERY)

    def unused(self) -> int:
        """The pass's tokens not spent, handed back (the caller returns them to the bucket)."""
        with self._lock:
            unused, self._reserve = self._reserve, 0
        return unused

    def settle(self) -> None:
        ConnectionState.objects.give_back_budget(self.connection, self.unused())

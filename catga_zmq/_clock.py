"""How late this node reads a peer's frames, without comparing clocks across hosts.

A request carries its caller's budget (relative, like gRPC's ``grpc-timeout``), and the
budget counts from when this node reads the request. A node that was frozen (SIGSTOP,
a long GC pause, a swapped-out host) reads late: without more, it would start work its
caller gave up on long ago. So frames carry their sender's monotonic clock
(``Header.sent_ms``), and for each peer this node keeps the least difference it has seen
between its own monotonic clock at reading and the sender's at sending, over the
peer's recent heartbeats. That least difference is the clocks' offset plus the fastest
delivery seen; a request's own difference, less it, is how much later than the fastest
delivery it was read: the time it waited in queues while this node did not read.

Neither clock's absolute value matters, and neither jumps (both are monotonic); what
remains is their drift over a window (ppm of ``WINDOW`` heartbeat intervals) and the
fastest delivery itself, by which the wait is underestimated, never overestimated: a
request is never refused for a stall that did not happen.
"""

from __future__ import annotations

import math
import time
from typing import Final

#: Heartbeats per window. The estimate is the least of the current and the previous
#: window, so it follows a drift within two windows, and a single slow heartbeat never
#: raises it.
WINDOW: Final = 64


def now_ms() -> int:
    """This process's monotonic clock in ms: what ``Header.sent_ms`` carries."""
    return int(time.monotonic() * 1000)


class ClockOffset:
    """The least (read time here - send time there), in ms, over the last windows;
    ``inf`` until the first sample (then no wait is ever estimated)."""

    __slots__ = ("_count", "_current", "_previous", "value")

    def __init__(self) -> None:
        self.value = math.inf
        self._current = math.inf
        self._previous = math.inf
        self._count = 0

    def sample(self, difference: float) -> None:
        if difference < self._current:
            self._current = difference
        self._count += 1
        value = min(self._current, self._previous)
        if self._count >= WINDOW:
            self._previous, self._current, self._count = self._current, math.inf, 0
        self.value = value

    def wait(self, read_ms: float, sent_ms: int) -> float:
        """How long (ms) a frame sent at ``sent_ms`` (the peer's clock) and read at
        ``read_ms`` (this node's) waited beyond the fastest delivery seen; 0 if none."""
        waited = read_ms - sent_ms - self.value
        return waited if waited > 0.0 else 0.0

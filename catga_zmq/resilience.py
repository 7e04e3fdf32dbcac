"""Failure handling: the per-node circuit breaker and the phi-accrual failure detector.

Failover itself (which failures may go to another node) lives in ``Node.send``: a
request that was not executed there (not delivered, ``OVERLOADED``, no handler) goes to
another node at once; one that was delivered but not answered goes elsewhere only when
its type is idempotent. Every retry stays within the caller's deadline.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from enum import StrEnum
from typing import Final

log = logging.getLogger("catga_zmq.resilience")


class CircuitState(StrEnum):
    CLOSED = "closed"  # requests flow
    OPEN = "open"  # isolated: no new requests until the cool-down ends
    HALF_OPEN = "half_open"  # one probe request decides: closed again, or open again


class CircuitBreaker:
    """Isolates a node after ``threshold`` consecutive failures; probes it after ``cooldown`` s.

    Failures are what says the node, not the request, is in trouble: not delivered,
    timed out, lost in flight. A handler's own exception is an answer, hence a success.
    """

    __slots__ = ("cooldown", "failures", "name", "opened_at", "probing", "state", "threshold")

    def __init__(self, name: str, threshold: int, cooldown: float) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False

    def allow(self, now: float) -> bool:
        """May a request go to this node now? In HALF_OPEN only one probe at a time."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if now - self.opened_at < self.cooldown:
                return False
            self._move(CircuitState.HALF_OPEN)
        if self.probing:
            return False
        self.probing = True
        return True

    def release(self) -> None:
        """The request allowed through ended without a verdict (it was cancelled)."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state is not CircuitState.CLOSED:
            self._move(CircuitState.CLOSED)

    def failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self.failures >= self.threshold
        ):
            self.opened_at = now
            self._move(CircuitState.OPEN)

    def _move(self, state: CircuitState) -> None:
        level = logging.WARNING if state is CircuitState.OPEN else logging.INFO
        log.log(
            level,
            "circuit of node %s: %s -> %s (%d consecutive failures)",
            self.name,
            self.state.value,
            state.value,
            self.failures,
        )
        self.state = state


#: Heartbeat gaps remembered per peer for the detector's mean and deviation.
PHI_WINDOW: Final = 100


class PhiAccrual:
    """Phi-accrual failure detector (Hayashibara et al., as in Akka and Cassandra).

    phi = -log10(P(a heartbeat arrives later than now)), with arrival gaps modelled as a
    normal distribution of the observed mean and deviation. ``acceptable_pause`` is added
    to the mean so that a pause that long (a GC, a blocked event loop) is not a death,
    and ``min_std`` keeps a very regular peer from being declared dead on a small jitter.
    """

    __slots__ = ("_floor", "_gaps", "_last", "_sum", "_sum_sq", "acceptable_pause", "min_std")

    def __init__(self, first_gap: float, acceptable_pause: float, min_std: float) -> None:
        self.acceptable_pause = acceptable_pause
        self.min_std = min_std
        self._gaps: deque[float] = deque(maxlen=PHI_WINDOW)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last: float | None = None
        # Heartbeats closer than this came in a batch (one side was stalled): they say
        # nothing about the peer's rhythm and would shrink the mean and swell the spread.
        self._floor = first_gap / 4
        # Seed with the announced interval so the first gaps are judged sensibly.
        self._add(first_gap)

    def _add(self, gap: float) -> None:
        if len(self._gaps) == self._gaps.maxlen:
            old = self._gaps[0]
            self._sum -= old
            self._sum_sq -= old * old
        self._gaps.append(gap)
        self._sum += gap
        self._sum_sq += gap * gap

    def heartbeat(self, now: float) -> None:
        if self._last is not None and now - self._last >= self._floor:
            self._add(now - self._last)
        self._last = now

    def forget_last(self) -> None:
        """The next gap is not the peer's doing (this node stalled): do not learn from it."""
        self._last = None

    def phi(self, elapsed: float) -> float:
        """Suspicion after ``elapsed`` s of silence: 1 = 10%, 8 = 1e-8 chance it is alive."""
        n = len(self._gaps)
        mean = self._sum / n
        variance = max(0.0, self._sum_sq / n - mean * mean)
        std = max(math.sqrt(variance), self.min_std)
        # Clamped: past +-8 deviations phi is 0 or over 20 either way, and exp() would
        # overflow (or log10 meet a zero) further out.
        y = min(8.0, max(-8.0, (elapsed - mean - self.acceptable_pause) / std))
        # Logistic approximation of the normal CDF (as in Akka's detector).
        e = math.exp(-y * (1.5976 + 0.070566 * y * y))
        if y > 0:
            return -math.log10(e / (1.0 + e))
        return -math.log10(1.0 - 1.0 / (1.0 + e))

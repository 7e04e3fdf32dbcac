"""Requests awaiting their replies: request id -> future, with one timer for all deadlines."""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import TypeAlias

import msgspec

from .errors import CatgaError, RequestTimeout, TransportFailed

#: (kind, payload, source node id, its handler's time in µs or 0) of a reply or error frame.
Reply: TypeAlias = tuple[int, "bytes | msgspec.Raw", str, int]


class Incident:
    """One event that failed the requests in flight to a node at once (its connection
    dropped, it went silent, it left): it is one failure of that node, however many
    requests it failed, so only the first of them to reach the node's circuit breaker
    gives it a verdict."""

    __slots__ = ("judged",)

    def __init__(self) -> None:
        self.judged = False


class PendingMap:
    """Request id -> future of its reply; every way out of a wait removes the entry.

    Each entry also names the node the request went to and whether it is idempotent,
    so that when that node is lost its requests can be failed over at once.

    Deadlines share one timer over a heap instead of one timer per request (a timer
    costs more than the rest of the bookkeeping). Entries answered in time stay in the
    heap until it is compacted, which happens once it holds twice what is pending.

    ``clock`` is the time base of the deadlines (the loop's by default); a test may
    pass its own.
    """

    __slots__ = (
        "_clock",
        "_entries",
        "_heap",
        "_loop",
        "_next_id",
        "_timer",
        "_timer_at",
        "late_replies",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] | None = None
    ) -> None:
        self._loop = loop
        self._clock = clock or loop.time
        #: rid -> (future, node id, idempotent, type name, endpoint it went to)
        self._entries: dict[int, tuple[asyncio.Future[Reply], str, bool, str, str]] = {}
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._next_id = 0
        self.late_replies = 0

    def __len__(self) -> int:
        return len(self._entries)

    def open(
        self, node_id: str, idempotent: bool, deadline: float, type_name: str, endpoint: str
    ) -> tuple[int, asyncio.Future[Reply]]:
        self._next_id = rid = self._next_id + 1
        fut: asyncio.Future[Reply] = self._loop.create_future()
        self._entries[rid] = (fut, node_id, idempotent, type_name, endpoint)
        heap = self._heap
        if len(heap) > 2 * len(self._entries) + 1024:
            self._compact()
        heapq.heappush(heap, (deadline, rid))
        if deadline < self._timer_at:
            self._arm(deadline)
        return rid, fut

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - self._clock()), self._expire)

    def _compact(self) -> None:
        entries = self._entries
        self._heap = [item for item in self._heap if item[1] in entries]
        heapq.heapify(self._heap)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, entries = self._heap, self._entries
        now = self._clock()
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            entry = entries.pop(rid, None)
            if entry is not None and not entry[0].done():
                node_id = entry[1]
                entry[0].set_exception(
                    RequestTimeout(
                        f"no reply to {entry[3]} from {node_id} before its deadline",
                        node=node_id,
                        retryable=entry[2],  # sent again, a non-idempotent one may run twice
                    )
                )
        if heap:
            self._arm(heap[0][0])

    def resolve(self, request_id: int, reply: Reply, endpoint: str) -> bool | None:
        """Hand ``reply``, read on the DEALER to ``endpoint``, to its waiter.

        True when it names the node the request went to (``reply[2]``): the only reply
        that proves that node alive. None when the request did not go to ``endpoint``:
        whoever answers there is not the node asked (request ids are guessable), and
        the entry stays for the real answer.
        """
        entries = self._entries
        entry = entries.get(request_id)
        if entry is None:
            self.late_replies += 1  # after its timeout or cancellation: nobody waits
            return False
        if entry[4] != endpoint:
            return None
        del entries[request_id]
        if entry[0].done():
            self.late_replies += 1
        else:
            entry[0].set_result(reply)
        return entry[1] == reply[2]

    def fail(self, request_id: int, exc: CatgaError, endpoint: str | None = None) -> None:
        """Fail a request; with ``endpoint``, only if it went there (see ``resolve``)."""
        entry = self._entries.get(request_id)
        if entry is None or (endpoint is not None and entry[4] != endpoint):
            return
        del self._entries[request_id]
        if not entry[0].done():
            entry[0].set_exception(exc)

    def forget(self, request_id: int) -> None:
        """Drop an entry nobody will wait for (its request was never sent)."""
        entry = self._entries.pop(request_id, None)
        if entry is not None:
            entry[0].cancel()

    def fail_unsent(self, request_ids: list[int], why: str) -> None:
        """Requests of a batch that could not be sent: never delivered, safe elsewhere."""
        for rid in request_ids:
            entry = self._entries.pop(rid, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(TransportFailed(why, node=entry[1], retryable=True))

    def fail_node(self, node_id: str, what: str, *, idempotent_only: bool) -> int:
        """Fail the requests in flight to ``node_id``; returns how many. ``what`` says
        what happened, as the start of their error's message; their errors share one
        ``Incident``."""
        lost = [
            rid
            for rid, (_, target, idempotent, _, _) in self._entries.items()
            if target == node_id and (idempotent or not idempotent_only)
        ]
        incident = Incident()
        for rid in lost:
            fut, _, idempotent, _, _ = self._entries.pop(rid)
            if not fut.done():
                exc = TransportFailed(
                    what
                    + (
                        "; it may go to another node"
                        if idempotent
                        else "; it may or may not have run"
                    ),
                    node=node_id,
                    retryable=idempotent,
                    delivered=True,
                )
                exc._incident = incident
                fut.set_exception(exc)
        return len(lost)

    def close(self, request_id: int) -> None:
        """Forget a request whose wait ended, however it ended."""
        self._entries.pop(request_id, None)

    def fail_all(self, exc_factory: Callable[[], CatgaError]) -> None:
        entries, self._entries = self._entries, {}
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        for fut, _, _, _, _ in entries.values():
            if not fut.done():
                fut.set_exception(exc_factory())

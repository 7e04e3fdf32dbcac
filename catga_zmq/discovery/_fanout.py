"""Fan-out of discovery changes to any number of ``watch()`` iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from .base import DiscoveryChange


class Fanout:
    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[DiscoveryChange | None]] = []
        self.closed = False

    def publish(self, change: DiscoveryChange) -> None:
        for q in self._queues:
            q.put_nowait(change)

    async def watch(
        self, initial: Iterable[DiscoveryChange] = ()
    ) -> AsyncIterator[DiscoveryChange]:
        if self.closed:
            return
        q: asyncio.Queue[DiscoveryChange | None] = asyncio.Queue()
        for first in initial:
            q.put_nowait(first)
        self._queues.append(q)
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            self._queues.remove(q)

    def close(self) -> None:
        self.closed = True
        for q in self._queues:
            q.put_nowait(None)

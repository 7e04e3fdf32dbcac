"""Fan-out of discovery changes to any number of ``watch()`` iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from .base import DiscoveryChange


class Fanout:
    """Copies each published change to every open ``watch()`` iterator."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[DiscoveryChange | None]] = []
        self.closed = False

    def publish(self, change: DiscoveryChange) -> None:
        """Queue ``change`` for every iterator open now. Never blocks."""
        for q in self._queues:
            q.put_nowait(change)

    def watch(self, initial: Iterable[DiscoveryChange] = ()) -> AsyncIterator[DiscoveryChange]:
        """A new iterator: ``initial`` first, then what is published, until ``close``."""
        # Subscribe now, not at the first iteration, so that no change made between
        # calling watch() and iterating it is lost.
        q: asyncio.Queue[DiscoveryChange | None] = asyncio.Queue()
        for first in initial:
            q.put_nowait(first)
        if self.closed:
            q.put_nowait(None)
        else:
            self._queues.append(q)
        return self._iterate(q)

    async def _iterate(
        self, q: asyncio.Queue[DiscoveryChange | None]
    ) -> AsyncIterator[DiscoveryChange]:
        try:
            while (item := await q.get()) is not None:
                yield item
        finally:
            if q in self._queues:
                self._queues.remove(q)

    def close(self) -> None:
        """End every iterator once it has read what is queued; later ones end at once."""
        self.closed = True
        for q in self._queues:
            q.put_nowait(None)

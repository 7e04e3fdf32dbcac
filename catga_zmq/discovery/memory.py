"""In-memory discovery: many nodes in one process find each other through a hub.

A product feature, not a test double: nodes still talk over real ZeroMQ sockets; only
the finding is in memory. Nodes share the process-wide default hub unless given one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange


class MemoryHub:
    """The shared directory. One per group of nodes that should see each other."""

    def __init__(self) -> None:
        self.entries: dict[str, Candidate] = {}
        self.members: list[MemoryDiscovery] = []

    def _announce(self, change: DiscoveryChange, origin: MemoryDiscovery) -> None:
        for member in self.members:
            if member is not origin:
                member._fanout.publish(change)


default_hub = MemoryHub()


class MemoryDiscovery(Discovery):
    name = "memory"

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = default_hub if hub is None else hub
        self._me: Candidate | None = None
        self._fanout = Fanout()
        self.hub.members.append(self)

    async def register(self, me: Candidate) -> None:
        self._me = me
        self.hub.entries[me.endpoint] = me
        self.hub._announce(DiscoveryChange(ChangeKind.ADDED, me), self)

    async def unregister(self) -> None:
        me, self._me = self._me, None
        if me is not None and self.hub.entries.get(me.endpoint) is me:
            del self.hub.entries[me.endpoint]
            self.hub._announce(DiscoveryChange(ChangeKind.REMOVED, me), self)

    def candidates(self) -> list[Candidate]:
        return [c for c in self.hub.entries.values() if c is not self._me]

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        initial = [DiscoveryChange(ChangeKind.ADDED, c) for c in self.candidates()]
        return self._fanout.watch(initial)

    async def aclose(self) -> None:
        await self.unregister()
        self._fanout.close()
        if self in self.hub.members:
            self.hub.members.remove(self)

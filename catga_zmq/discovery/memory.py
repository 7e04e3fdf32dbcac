"""In-memory discovery: many nodes in one process find each other through a hub.

A product feature, not a test double: nodes still talk over real ZeroMQ sockets; only
the finding is in memory. Nodes share the process-wide default hub unless given one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange


class MemoryHub:
    """The directory that ``MemoryDiscovery`` backends share, by endpoint.

    Nodes whose backends share a hub find each other; give each group that must not
    (each test, say) a hub of its own: ``MemoryDiscovery(hub)``.
    """

    def __init__(self) -> None:
        self.entries: dict[str, Candidate] = {}
        self.members: list[MemoryDiscovery] = []

    def _announce(self, change: DiscoveryChange, origin: MemoryDiscovery) -> None:
        for member in self.members:
            if member is not origin:
                member._fanout.publish(change)


default_hub = MemoryHub()


class MemoryDiscovery(Discovery):
    """Discovery for nodes in one process, through a ``MemoryHub``.

    ``hub`` defaults to the process-wide hub, which every ``discovery="memory"`` node
    shares. Changes reach the other backends of the hub at once; ``watch()`` first
    yields the candidates already there.
    """

    name = "memory"

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = default_hub if hub is None else hub
        self._me: Candidate | None = None
        self._fanout = Fanout()
        self.hub.members.append(self)

    async def register(self, me: Candidate) -> None:
        """Put this node in the hub; the other backends see it ADDED at once."""
        self._me = me
        self.hub.entries[me.endpoint] = me
        self.hub._announce(DiscoveryChange(ChangeKind.ADDED, me), self)

    async def unregister(self) -> None:
        """Take this node out of the hub; the other backends see it REMOVED at once."""
        me, self._me = self._me, None
        if me is not None and self.hub.entries.get(me.endpoint) is me:
            del self.hub.entries[me.endpoint]
            self.hub._announce(DiscoveryChange(ChangeKind.REMOVED, me), self)

    def candidates(self) -> list[Candidate]:
        """Every node registered in the hub but this one."""
        return [c for c in self.hub.entries.values() if c is not self._me]

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """The hub's candidates as ADDED, then other nodes' registrations as they happen."""
        initial = [DiscoveryChange(ChangeKind.ADDED, c) for c in self.candidates()]
        return self._fanout.watch(initial)

    async def aclose(self) -> None:
        """Unregister, end every ``watch()`` iterator and leave the hub. Idempotent."""
        await self.unregister()
        self._fanout.close()
        if self in self.hub.members:
            self.hub.members.remove(self)

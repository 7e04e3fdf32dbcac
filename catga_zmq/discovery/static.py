"""Static seeds: a fixed list of ROUTER endpoints.

A seed tells only where a node listens. The node greets each seed with the built-in
``Info`` request, which carries its own address both ways, and learns the rest of the
cluster from the answer (Zyre-style gossip), so every node needs only one live seed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from ..config import parse_endpoint
from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange


class StaticDiscovery(Discovery):
    name = "static"

    def __init__(self, seeds: Iterable[str]) -> None:
        self.seeds = [s.strip() for s in seeds]
        for seed in self.seeds:
            parse_endpoint(seed)  # ConfigError now rather than a silent never-joining node
        self._me: Candidate | None = None
        self._fanout = Fanout()

    async def register(self, me: Candidate) -> None:
        self._me = me

    async def unregister(self) -> None:
        self._me = None

    def candidates(self) -> list[Candidate]:
        own = self._me.endpoint if self._me else None
        return [Candidate(endpoint=s) for s in self.seeds if s != own]

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        return self._fanout.watch(DiscoveryChange(ChangeKind.ADDED, c) for c in self.candidates())

    async def aclose(self) -> None:
        await self.unregister()
        self._fanout.close()

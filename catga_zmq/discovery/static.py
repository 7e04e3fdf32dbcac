"""Static seeds: a fixed list of ROUTER endpoints.

A seed tells only where a node listens. The node greets each seed with the built-in
``Info`` request, which carries its own address both ways, and learns the rest of the
cluster from the answer (Zyre-style gossip), so every node needs only one live seed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from ..config import parse_endpoint, split_seed
from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange


class StaticDiscovery(Discovery):
    """A fixed list of seed endpoints (``tcp://host:port``), checked when built.

    Each seed is a candidate that knows only its endpoint; the node greets it to learn
    the rest, and the cluster from its answer. Nothing is announced anywhere: other
    nodes find this one when it greets them, or through a seed that knows it. A
    ``ConfigError`` names a seed that is not a usable endpoint.
    """

    name = "static"

    def __init__(self, seeds: Iterable[str]) -> None:
        self.seeds = [s.strip() for s in seeds]
        #: (endpoint, what names its CURVE key: see ``split_seed``) of each seed
        self._split = [split_seed(s) for s in self.seeds]
        for endpoint, _ in self._split:
            parse_endpoint(endpoint)  # ConfigError now rather than a silent never-joining node
        self._me: Candidate | None = None
        self._fanout = Fanout()

    async def register(self, me: Candidate) -> None:
        """Remember this node's address, so that a seed naming it is skipped."""
        self._me = me

    async def unregister(self) -> None:
        """Forget this node's address; there is nothing to withdraw."""
        self._me = None

    def candidates(self) -> list[Candidate]:
        """One candidate per seed, this node's own endpoint left out."""
        own = self._me.endpoint if self._me else None
        return [
            Candidate(endpoint=endpoint, public_key=key or None)
            for endpoint, key in self._split
            if endpoint != own
        ]

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """Each seed as ADDED; the list does not change, so nothing follows until ``aclose``."""
        return self._fanout.watch(DiscoveryChange(ChangeKind.ADDED, c) for c in self.candidates())

    async def aclose(self) -> None:
        """End every ``watch()`` iterator. Idempotent."""
        await self.unregister()
        self._fanout.close()

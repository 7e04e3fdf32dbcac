"""Consistent hashing: the same key goes to the same node, in every process.

A ring of ``vnodes`` points per node, hashed with BLAKE2b (stable across processes and
runs, unlike Python's salted ``hash()``). When a node joins, only the keys that now fall
on its points move, about 1/N of them, and only to it. The ring is built once per
candidate set (membership changes), not per request. A request without a key goes round
robin.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Any, Final

from ..membership import Peer
from .base import Router
from .round_robin import RoundRobinRouter

DEFAULT_VNODES: Final = 160


def stable_hash(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    __slots__ = ("nodes", "points", "positions")

    def __init__(self, nodes: Sequence[Peer], vnodes: int) -> None:
        ring = sorted(
            (stable_hash(f"{peer.node_id}#{i}"), peer.node_id, peer)
            for peer in nodes
            for i in range(vnodes)
        )
        self.positions = [h for h, _, _ in ring]
        self.points = [peer for _, _, peer in ring]
        self.nodes = tuple(nodes)

    def lookup(self, key: str) -> Peer:
        i = bisect.bisect_right(self.positions, stable_hash(key))
        return self.points[i % len(self.points)]


class ConsistentHashRouter(Router):
    name = "consistent_hash"

    def __init__(self, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        self._rings: dict[tuple[str, ...], HashRing] = {}
        self._last: tuple[Sequence[Peer], HashRing] | None = None
        self._fallback = RoundRobinRouter()

    def ring(self, candidates: Sequence[Peer]) -> HashRing:
        # Membership hands out the same tuple until it changes: most calls stop here.
        last = self._last
        if last is not None and last[0] is candidates:
            return last[1]
        ids = tuple(p.node_id for p in candidates)
        ring = self._rings.get(ids)
        if ring is None or ring.nodes != tuple(candidates):
            if len(self._rings) >= 64:
                self._rings.clear()  # membership churned: old candidate sets are gone
            ring = self._rings[ids] = HashRing(candidates, self.vnodes)
        self._last = (candidates, ring)
        return ring

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        if key is None:
            return self._fallback.select(candidates, message, key)
        return self.ring(candidates).lookup(key)

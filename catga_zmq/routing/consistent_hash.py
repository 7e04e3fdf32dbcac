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
    """A 64-bit hash of ``data``, the same in every process and run (BLAKE2b).

    Any str hashes, a lone surrogate too: a key is never sent, only hashed, and
    "surrogatepass" still gives each str its own bytes (and a valid one its UTF-8).
    """
    raw = data.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


class HashRing:
    """``vnodes`` points per node on a ring of 64-bit hashes; a key goes to the next point."""

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
        """The node whose point follows ``key``'s hash on the ring."""
        i = bisect.bisect_right(self.positions, stable_hash(key))
        return self.points[i % len(self.points)]


class ConsistentHashRouter(Router):
    """The same key to the same node, while the candidates stay the same.

    The key is ``send(key=...)``, or the value of the message's ``__routing_key__``
    field; a request with neither goes round robin. ``vnodes`` points per node even
    out the share of keys each node gets.
    """

    name = "consistent_hash"

    def __init__(self, vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        self.vnodes = vnodes
        self._rings: dict[tuple[str, ...], HashRing] = {}
        self._last: tuple[Sequence[Peer], HashRing] | None = None
        self._fallback = RoundRobinRouter()

    def ring(self, candidates: Sequence[Peer]) -> HashRing:
        """The ring of ``candidates``, built once per candidate set."""
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
        """The node ``key`` falls on; without a key, round robin."""
        if key is None:
            return self._fallback.select(candidates, message, key)
        return self.ring(candidates).lookup(key)

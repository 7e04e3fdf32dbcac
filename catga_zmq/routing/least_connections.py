"""Least connections: the node with the fewest of this caller's requests in flight.

``Peer.outstanding`` is this node's own count per peer, raised when a request is sent
and lowered on every outcome (reply, error, timeout, cancellation). Ties go round robin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..membership import Peer
from .base import Router


class LeastConnectionsRouter(Router):
    """The candidate with the fewest of this node's requests in flight to it.

    Counts only this caller's requests (``ClusterNode.outstanding``), which it knows
    exactly and at once, not the node's total load, which heartbeats report late.
    """

    name = "least_connections"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        """The least busy candidate; among equals, each in turn."""
        self._turn += 1
        n = len(candidates)
        start = self._turn % n
        best = candidates[start]
        for i in range(1, n):
            peer = candidates[(start + i) % n]
            if peer.outstanding < best.outstanding:
                best = peer
        return best

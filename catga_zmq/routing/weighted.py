"""Smooth weighted round robin (nginx's): weights 5:3:1 give a,b,a,c,a,b,a,b,a, not bursts.

A node's effective weight is its configured weight scaled down by the load it reports:
``weight / (1 + cpu + in_flight / IN_FLIGHT_SCALE)``. With no load the split is exact
(5:3:1 over 900 requests is 500/300/100); a node at weight 0 gets nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..membership import Peer
from .base import Router

#: In-flight requests reported by a node that count as much as one busy core.
IN_FLIGHT_SCALE: Final = 64.0


def effective_weight(peer: Peer) -> float:
    """``peer``'s configured weight scaled down by the load it reports (0: none)."""
    if peer.weight <= 0:
        return 0.0
    return peer.weight / (1.0 + peer.load + peer.in_flight / IN_FLIGHT_SCALE)


class WeightedRouter(Router):
    """Smooth weighted round robin over each candidate's ``effective_weight``.

    The weight is the node's ``weight`` setting, lowered while it reports CPU load or
    handlers in flight, so a busy node gets less until it catches up.
    """

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        """The candidate with the most credit; every candidate at weight 0: the first."""
        current = self._current
        if len(current) > 4 * len(candidates) + 64:
            # Forget nodes that left; the survivors' running credit is kept.
            ids = {p.node_id for p in candidates}
            self._current = current = {k: v for k, v in current.items() if k in ids}
        best: Peer | None = None
        best_value = 0.0
        total = 0.0
        for peer in candidates:
            w = effective_weight(peer)
            if w <= 0.0:
                continue
            value = current.get(peer.node_id, 0.0) + w
            current[peer.node_id] = value
            total += w
            if best is None or value > best_value:
                best, best_value = peer, value
        if best is None:
            # Every candidate is at weight 0: the caller asked for nobody, but a request
            # must go somewhere rather than fail while nodes are up.
            return candidates[0]
        current[best.node_id] = best_value - total
        return best

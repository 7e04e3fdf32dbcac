"""Local first: this node when it handles the type, otherwise round robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..membership import Peer
from .base import Router
from .round_robin import RoundRobinRouter


class LocalFirstRouter(Router):
    """This node whenever it handles the type (no network round trip); else ``fallback``.

    ``fallback`` chooses among the other candidates; round robin if not given.
    """

    name = "local_first"

    def __init__(self, fallback: Router | None = None) -> None:
        self._fallback = fallback or RoundRobinRouter()

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        """This node if it is a candidate, else the fallback's choice."""
        for peer in candidates:
            if peer.local:
                return peer
        return self._fallback.select(candidates, message, key)

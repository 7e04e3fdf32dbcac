"""Local first: this node when it handles the type, otherwise round robin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..membership import Peer
from .base import Router
from .round_robin import RoundRobinRouter


class LocalFirstRouter(Router):
    name = "local_first"

    def __init__(self, fallback: Router | None = None) -> None:
        self._fallback = fallback or RoundRobinRouter()

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        for peer in candidates:
            if peer.local:
                return peer
        return self._fallback.select(candidates, message, key)

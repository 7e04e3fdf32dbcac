"""Round robin: each candidate in turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..membership import Peer
from .base import Router


class RoundRobinRouter(Router):
    """Each candidate in turn: over 3N requests to N nodes, exactly 3 each."""

    name = "round_robin"

    def __init__(self) -> None:
        self._counter = 0

    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        """The next candidate after the last one chosen; ``key`` is not used."""
        self._counter += 1
        return candidates[self._counter % len(candidates)]

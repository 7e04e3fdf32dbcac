"""The router interface: a pure, synchronous choice among candidates."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from ..membership import Peer


class Router(abc.ABC):
    """Picks one node among ``candidates`` (routable nodes that handle the type).

    ``candidates`` is never empty when ``select`` is called. ``key`` is the routing key
    (``send(key=...)`` or the message's key field), or None. A router is pure and
    synchronous: no I/O, no awaiting; it may keep state between calls (a counter, the
    weighted credits), and a node keeps one router per message type.
    """

    #: The ``routing`` setting that chooses this strategy.
    name: str = "router"

    @abc.abstractmethod
    def select(self, candidates: Sequence[Peer], message: Any, key: str | None) -> Peer:
        """The node to send ``message`` to: one of ``candidates``."""

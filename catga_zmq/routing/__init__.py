"""Routing strategies. ``make_router(name)`` builds one by its setting name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Router
from .consistent_hash import ConsistentHashRouter, HashRing, stable_hash
from .least_connections import LeastConnectionsRouter
from .local_first import LocalFirstRouter
from .round_robin import RoundRobinRouter
from .weighted import WeightedRouter

#: Every routing strategy, by its setting name.
ROUTERS: dict[str, type[Router]] = {
    r.name: r
    for r in (
        RoundRobinRouter,
        LocalFirstRouter,
        WeightedRouter,
        ConsistentHashRouter,
        LeastConnectionsRouter,
    )
}


def make_router(name: str) -> Router:
    """A new router for the ``routing`` setting ``name``; a ``ConfigError`` lists the valid ones."""
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ConfigError(
            f"routing {name!r} is not known; choose one of {', '.join(sorted(ROUTERS))}"
        ) from None


__all__ = [
    "ROUTERS",
    "ConsistentHashRouter",
    "HashRing",
    "LeastConnectionsRouter",
    "LocalFirstRouter",
    "RoundRobinRouter",
    "Router",
    "WeightedRouter",
    "make_router",
    "stable_hash",
]

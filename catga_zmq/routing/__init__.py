"""Routing strategies. ``make_router(name)`` builds one by its setting name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Router
from .local_first import LocalFirstRouter
from .round_robin import RoundRobinRouter

ROUTERS: dict[str, type[Router]] = {
    RoundRobinRouter.name: RoundRobinRouter,
    LocalFirstRouter.name: LocalFirstRouter,
}


def make_router(name: str) -> Router:
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ConfigError(
            f"routing {name!r} is not known; choose one of {', '.join(sorted(ROUTERS))}"
        ) from None


__all__ = ["ROUTERS", "LocalFirstRouter", "RoundRobinRouter", "Router", "make_router"]

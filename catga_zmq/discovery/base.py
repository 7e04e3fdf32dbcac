"""The discovery interface every backend implements.

Discovery only yields *candidates*: places where a node may be listening. Whether a
candidate is a live member is decided by heartbeats (see ``membership.py``), never by
discovery, so a stale mDNS cache or a dead seed can never route a request.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class Candidate:
    """A place where a node may be listening.

    ``endpoint`` (the node's ROUTER, ``tcp://host:port``) is always known. Backends
    that carry more (mDNS TXT, Redis hashes) fill in the rest; a static seed knows only
    its endpoint, and the node asks it for the rest with the built-in ``Info`` request.
    """

    endpoint: str
    node_id: str | None = None
    pub_endpoint: str | None = None
    cluster: str | None = None
    version: int | None = None
    public_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class ChangeKind(Enum):
    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DiscoveryChange:
    kind: ChangeKind
    candidate: Candidate


class Discovery(abc.ABC):
    """``register / unregister / candidates / watch``, plus ``aclose``.

    ``register`` announces this node (``me``); ``candidates`` returns what is known now
    (without ``me``); ``watch`` yields changes until ``aclose`` is called, then ends.
    """

    name: str = "discovery"

    @abc.abstractmethod
    async def register(self, me: Candidate) -> None: ...

    @abc.abstractmethod
    async def unregister(self) -> None: ...

    @abc.abstractmethod
    def candidates(self) -> list[Candidate]: ...

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[DiscoveryChange]: ...

    async def aclose(self) -> None:
        await self.unregister()

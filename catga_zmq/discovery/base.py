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
    None means "not known".

    - ``endpoint``: where it takes requests (its ROUTER socket).
    - ``node_id``: its node id.
    - ``pub_endpoint``: where its heartbeats and events come from (its PUB socket).
    - ``cluster``: its cluster name; a node ignores candidates of another cluster.
    - ``version``: the wire protocol version it speaks; a node refuses, and logs,
      candidates of another version.
    - ``public_key``: its CURVE public key as text, for clusters that use CURVE.
    - ``metadata``: its ``NodeOptions.metadata``; not part of equality, so a change
      of metadata alone is the same candidate.
    """

    endpoint: str
    node_id: str | None = None
    pub_endpoint: str | None = None
    cluster: str | None = None
    version: int | None = None
    public_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


class ChangeKind(Enum):
    """What happened to a candidate: ADDED (new, or updated) or REMOVED (withdrawn)."""

    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class DiscoveryChange:
    """One item of ``Discovery.watch()``: ``candidate`` was ADDED or REMOVED."""

    kind: ChangeKind
    candidate: Candidate


class Discovery(abc.ABC):
    """How nodes find each other: ``register / unregister / candidates / watch``, plus ``aclose``.

    A node calls ``register`` with its own address when it starts (a client calls
    ``start`` instead), reads ``watch()`` while it runs, and calls ``aclose()`` when it
    closes; a backend object serves one node. Pass one to ``Node(discovery=...)`` to
    use a backend of your own.
    """

    #: The backend's setting name (``"mdns"``, ``"static"``, ``"memory"``).
    name: str = "discovery"

    async def start(self, bind_host: str = "127.0.0.1") -> None:  # noqa: B027 - optional
        """Begin finding others without announcing this node: what a client (a node of
        role ``client``) calls instead of ``register``. ``bind_host`` is its bind
        setting. Backends that find others without being started do nothing here."""

    @abc.abstractmethod
    async def register(self, me: Candidate) -> None:
        """Announce this node (``me``) to the others, until ``unregister``."""

    @abc.abstractmethod
    async def unregister(self) -> None:
        """Withdraw this node's record; others see it REMOVED. A no-op if not registered."""

    @abc.abstractmethod
    def candidates(self) -> list[Candidate]:
        """The candidates known now, without this node's own record."""

    @abc.abstractmethod
    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """Changes from now on: every current candidate as ADDED first, then each change.

        Subscribed when called, not at the first iteration, so nothing in between is
        lost. Ends after ``aclose()``. Each call returns an iterator of its own.
        """

    async def aclose(self) -> None:
        """Unregister and release what the backend holds; every ``watch()`` iterator ends.

        Safe to call twice. This default only unregisters: a backend with watchers,
        sockets or tasks extends it.
        """
        await self.unregister()

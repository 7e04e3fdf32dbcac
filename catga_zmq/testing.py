"""Test your service against a real cluster in one process: nodes, fast timings, cleanup.

What FastStream's ``TestBroker`` and Nameko's ``worker_factory`` give their users: a
``LocalCluster`` starts N nodes of your service in the test's own event loop, each on
real loopback ZeroMQ sockets (nothing is mocked), found through one fresh
``MemoryHub`` under a cluster name of their own, so that tests running side by side
never see each other. It waits until every node sees every other ALIVE and closes
them all, last made first, however the test ends::

    from catga_zmq import Node, Request
    from catga_zmq.testing import LocalCluster

    class Add(Request[int]):
        a: int
        b: int

    async def add(req: Add) -> int:
        return req.a + req.b

    def serve(node: Node) -> None:          # runs for each node, before it starts
        node.handler(add)

    async def test_add() -> None:
        async with LocalCluster(["server", "client"], setup=serve) as cluster:
            assert await cluster["client"].send(Add(a=2, b=3), node="server") == 5

Nodes can also be made one by one, each with its own handlers and settings, and
started together::

    cluster = LocalCluster()
    server = cluster.node("server", max_concurrency=4)
    server.handler(add)
    client = cluster.node("client")
    async with cluster:                      # starts both, waits until they meet
        assert await client.send(Add(a=1, b=1)) == 2

Timings are ``FAST_TIMINGS`` unless a test says otherwise (``timings={}`` gives the
library's defaults), so that a stopped peer is found out in well under a second.

pytest fixtures (``catga_cluster``, ``catga_node_factory``) come with
``pytest_plugins = ["catga_zmq.testing"]`` in your top-level ``conftest.py``; they live
in ``catga_zmq.pytest_plugin``, which this module names as a plugin it requires. That
keeps ``import catga_zmq.testing`` free of pytest (the core install has none), and
nothing is registered by an entry point: a project that merely depends on catga-zmq
gets no fixtures, and no fixture names, it did not ask for. The fixtures need
pytest-asyncio.

Only the public API is used here (``from catga_zmq import ...``): what works in these
helpers works in your code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol

from catga_zmq import MemoryDiscovery, MemoryHub, Node, RequestTimeout

__all__ = [
    "CONNECT_TIMEOUT",
    "FAST_TIMINGS",
    "ClusterFactory",
    "LocalCluster",
    "NodeFactory",
    "Setup",
]

#: Timings that find a stopped peer out in well under a second (s): heartbeats every
#: 0.1 s, SUSPECT after 0.3 s of silence, FAULTED after 0.6 s; a drain waits 0.5 s.
FAST_TIMINGS: Final[Mapping[str, float]] = MappingProxyType(
    {
        "heartbeat_interval": 0.1,
        "suspect_after": 0.3,
        "faulted_after": 0.6,
        "drain_timeout": 0.5,
    }
)

#: Seconds ``LocalCluster.start()`` waits for every node to see every other ALIVE; with
#: ``FAST_TIMINGS`` they meet in a few heartbeats, the rest is for a loaded machine.
CONNECT_TIMEOUT: Final = 10.0

#: When ``pytest`` loads this module as a plugin it loads the fixtures too.
pytest_plugins = ["catga_zmq.pytest_plugin"]

#: Called with each node a ``LocalCluster`` makes, before it starts: register handlers,
#: subscribers, routes and behaviours there.
Setup = Callable[[Node], object]


class LocalCluster:
    """Nodes in this process on real loopback sockets, found through one ``MemoryHub``.

    ``nodes`` is a count (ids ``n1``, ``n2``, ...) or the node ids; more can be added
    with ``node()`` before ``start()``. ``settings`` (any ``NodeOptions`` keyword) apply
    to every node, over ``timings``; ``setup(node)`` runs for every node made here,
    before it starts. ``name`` is the cluster name (default: ``test-`` and a random
    suffix); ``hub`` the ``MemoryHub`` (default: a new one).

    ``async with`` starts every node, waits until each sees every other ALIVE, and on
    exit closes them all, last made first, even when the body raised. A cluster is
    indexed by node id (``cluster["n1"]``) and iterates over its nodes in the order
    they were made (``a, b, c = cluster``).
    """

    def __init__(
        self,
        nodes: int | Iterable[str] = 0,
        *,
        setup: Setup | None = None,
        name: str | None = None,
        hub: MemoryHub | None = None,
        timings: Mapping[str, Any] = FAST_TIMINGS,
        connect_timeout: float = CONNECT_TIMEOUT,
        **settings: Any,
    ) -> None:
        self.name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.hub = hub if hub is not None else MemoryHub()
        self.connect_timeout = connect_timeout
        self._setup = setup
        self._settings = {**timings, **settings}
        self._nodes: dict[str, Node] = {}
        self._started: set[str] = set()
        ids = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        for node_id in ids:
            self.node(node_id)

    # making nodes ----------------------------------------------------------------------

    def node(self, node_id: str, **settings: Any) -> Node:
        """Make an unstarted node of this cluster; ``settings`` override the cluster's.

        The node finds the others through the cluster's hub, unless ``discovery=`` is
        given (``None``, ``StaticDiscovery([...])``, another ``MemoryDiscovery``). It
        starts with the others at ``start()``, or when its own ``start()`` is called;
        it is closed with the cluster either way.
        """
        if node_id in self._nodes:
            raise ValueError(f"cluster {self.name} already has a node {node_id!r}")
        merged = {**self._settings, **settings}
        discovery = merged.pop("discovery") if "discovery" in merged else MemoryDiscovery(self.hub)
        node = Node(node_id, cluster=self.name, discovery=discovery, **merged)
        self._nodes[node_id] = node
        if self._setup is not None:
            self._setup(node)
        return node

    # the view --------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        """Every node made here, in the order it was made."""
        return list(self._nodes.values())

    def __getitem__(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"LocalCluster({self.name!r}, nodes={list(self._nodes)})"

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every node not started here yet, then ``wait_until_connected()``."""
        for node_id, node in self._nodes.items():
            if node_id not in self._started:
                self._started.add(node_id)  # first: a failed start is not tried again
                await node.start()
        await self.wait_until_connected()

    async def wait_until_connected(self, timeout: float | None = None) -> None:
        """Wait until every node sees every other ALIVE (``connect_timeout`` s at most).

        Raises ``RequestTimeout`` naming the first node that does not, and what it sees.
        """
        limit = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        others = len(self._nodes) - 1
        for node in self._nodes.values():
            try:
                await node.wait_for_peers(others, timeout=max(0.0, deadline - time.monotonic()))
            except RequestTimeout as exc:
                seen = {m.node_id: m.status.value for m in node.members()}
                raise RequestTimeout(
                    f"cluster {self.name}: node {node.node_id} does not see all {others} "
                    f"others ALIVE within {limit} s ({exc.message}); it sees {seen}",
                    node=node.node_id,
                ) from None

    async def aclose(self) -> None:
        """Close every node, last made first; safe to call more than once.

        Each node is closed even when closing another fails or this call is cancelled
        part way; the first such error is raised once all are closed.
        """
        errors: list[BaseException] = []
        for node in reversed(self._nodes.values()):
            try:
                await node.aclose()
            except BaseException as exc:  # the others are closed all the same
                errors.append(exc)
        if errors:
            raise errors[0]

    async def __aenter__(self) -> LocalCluster:
        try:
            await self.start()
        except BaseException:
            await self.aclose()  # __aexit__ does not run when __aenter__ raised
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class ClusterFactory(Protocol):
    """The ``catga_cluster`` fixture: ``await catga_cluster(3, setup=serve)``.

    Takes ``LocalCluster``'s arguments; returns the cluster started and connected.
    """

    def __call__(
        self, nodes: int | Iterable[str] = ..., **kwargs: Any
    ) -> Awaitable[LocalCluster]: ...


class NodeFactory(Protocol):
    """The ``catga_node_factory`` fixture: ``catga_node_factory("a", **settings)``.

    Returns an unstarted node (see ``LocalCluster.node``); the test starts it.
    """

    def __call__(self, node_id: str, **settings: Any) -> Node: ...

"""pytest fixtures for services built on catga_zmq; they need pytest-asyncio.

Enable them in your top-level ``conftest.py`` with either name::

    pytest_plugins = ["catga_zmq.testing"]        # or "catga_zmq.pytest_plugin"

Then, in a test (``@pytest.mark.asyncio`` unless ``asyncio_mode = "auto"``)::

    async def test_add(catga_cluster: ClusterFactory) -> None:
        cluster = await catga_cluster(["server", "client"], setup=serve)
        assert await cluster["client"].send(Add(a=2, b=3), node="server") == 5

    async def test_one_by_one(catga_node_factory: NodeFactory) -> None:
        server = catga_node_factory("server")
        server.handler(add)
        await server.start()

Every cluster and node a fixture made is closed when the test ends, pass or fail.
No entry point registers this module: only projects that ask for it get it (see
``catga_zmq.testing``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest_asyncio

from catga_zmq.testing import ClusterFactory, LocalCluster, NodeFactory

__all__ = ["catga_cluster", "catga_node_factory"]


@pytest_asyncio.fixture
async def catga_cluster() -> AsyncIterator[ClusterFactory]:
    """``await catga_cluster(3, setup=serve, **settings)``: a started ``LocalCluster``.

    Takes ``LocalCluster``'s arguments and returns once every node sees every other
    ALIVE. Each cluster made is closed after the test, the last made first.
    """
    made: list[LocalCluster] = []

    async def make(nodes: int | Iterable[str] = 3, **kwargs: Any) -> LocalCluster:
        cluster = LocalCluster(nodes, **kwargs)
        made.append(cluster)  # first: one whose start failed is closed too
        await cluster.start()
        return cluster

    yield make
    await _close_all(made)


@pytest_asyncio.fixture
async def catga_node_factory() -> AsyncIterator[NodeFactory]:
    """``catga_node_factory("a", **settings)``: an unstarted node; the test starts it.

    All nodes of one test share one ``LocalCluster`` (one hub, one cluster name, fast
    timings); they are closed after the test, the last made first.
    """
    cluster = LocalCluster()
    yield cluster.node
    await cluster.aclose()


async def _close_all(clusters: list[LocalCluster]) -> None:
    """Close every cluster, last made first, even if closing one fails; raise the first error."""
    errors: list[BaseException] = []
    for cluster in reversed(clusters):
        try:
            await cluster.aclose()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]

"""Shared fixtures: fast in-process nodes on real loopback sockets, a fresh hub per test."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import zmq

from catga_zmq import ClusterNode, MemoryHub, Node
from catga_zmq.protocol import raw_batch_decoder
from catga_zmq.testing import FAST_TIMINGS, LocalCluster, NodeFactory

#: The type of the ``make_node`` fixture.
MakeNode = NodeFactory

#: ``FAST_TIMINGS`` for tests that must ride out a loaded 2-core machine (s): a 0.2 s
#: pause is no death and FAULTED comes after 1 s of silence, not 0.6 s.
PATIENT: dict[str, Any] = {**FAST_TIMINGS, "acceptable_pause": 0.2, "faulted_after": 1.0}


def unbatch(frames: list[bytes]) -> list[list[bytes]]:
    """A reply message read from a raw DEALER as ``[header, body]`` records.

    A node sends several replies to one caller in one loop iteration as one batch
    frame; a single reply is ``[header, body]``.
    """
    if len(frames) != 1:
        return [frames]
    return [[bytes(h), bytes(b)] for h, b in raw_batch_decoder.decode(frames[0])]


def member(node: Node, node_id: str) -> ClusterNode:
    """``node``'s view of ``node_id`` now (KeyError when it knows no such node)."""
    return {m.node_id: m for m in node.members()}[node_id]


def parts(node: Node) -> Any:
    """The parts of a started node, for the few tests of a part's own state that no
    public call shows (sockets held, addresses kept)."""
    assert node._parts is not None, "the node has not started"
    return node._parts


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms; fail the test if it is not true within ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling state no event announces
            await asyncio.sleep(0.01)


def catga_tasks() -> list[str]:
    """Names of the node tasks still running (a node names each of its tasks ``catga-*``)."""
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task() and t.get_name().startswith("catga-") and not t.done()
    ]


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def dealer_to(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> Iterator[Callable[[Node], zmq.Socket[bytes]]]:
    made: list[zmq.Socket[bytes]] = []  # held until closed: an unclosed socket blocks term()

    def connect(node: Node) -> zmq.Socket[bytes]:
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(node.endpoint)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close(0)


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
async def make_node(hub: MemoryHub) -> AsyncIterator[MakeNode]:
    """``make_node("a", **settings)``: an unstarted node on the test's hub, closed afterwards.

    ``LocalCluster.node`` of one cluster per test: ``FAST_TIMINGS`` under ``settings``;
    ``discovery=`` may be passed to replace the hub's ``MemoryDiscovery``.
    """
    cluster = LocalCluster(hub=hub)
    yield cluster.node
    # An unclosed ZeroMQ socket makes its context's term() block; under filterwarnings=error
    # the socket's __del__ raises its ResourceWarning before closing it. Record instead, so
    # that a leak fails the test here rather than hanging it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()  # finalizers of this test's garbage run now, not inside a later test
        async with asyncio.timeout(15):
            await cluster.aclose()
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, f"resources left open: {unclosed}"
    # Nothing of a closed node may keep running (STYLE: fixtures fail a test that leaks).
    await asyncio.sleep(0)
    leaked = catga_tasks()
    assert not leaked, f"tasks left running after aclose(): {leaked}"

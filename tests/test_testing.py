"""``catga_zmq.testing``: a local cluster that starts, meets, serves and closes; its fixtures."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from _procs import python, run
from conftest import catga_tasks, wait_until

from catga_zmq import (
    CatgaError,
    HandlerError,
    MemoryDiscovery,
    Node,
    NodeOptions,
    NodeStatus,
    Request,
    RequestTimeout,
)
from catga_zmq.testing import FAST_TIMINGS, LocalCluster

pytest_plugins = ["pytester"]


class WhoAnswers(Request[str]):
    """Answered with the id of the node that handled it."""

    __wire_name__ = "testing_test.WhoAnswers"


class Fail(Request[str]):
    __wire_name__ = "testing_test.Fail"


def serve(node: Node) -> None:
    @node.handler
    async def who(req: WhoAnswers) -> str:
        return node.node_id

    @node.handler
    async def fail(req: Fail) -> str:
        raise ValueError(f"failed on {node.node_id}")


def alive_peers(node: Node) -> set[str]:
    return {
        m.node_id
        for m in node.members()
        if m.node_id != node.node_id and m.status is NodeStatus.ALIVE
    }


async def assert_closed(node: Node) -> None:
    """A closed node refuses to send, and nothing of it runs any more."""
    with pytest.raises(CatgaError):
        await node.send(WhoAnswers(), timeout=1.0)
    await asyncio.sleep(0)
    assert not [t for t in catga_tasks() if t.startswith(f"catga-{node.node_id}-")]


async def test_three_nodes_start_and_see_each_other() -> None:
    async with LocalCluster(3) as cluster:
        assert [n.node_id for n in cluster] == ["n1", "n2", "n3"]
        for node in cluster:
            assert alive_peers(node) == {"n1", "n2", "n3"} - {node.node_id}
            assert node.options.cluster == cluster.name
            for name, value in FAST_TIMINGS.items():
                assert getattr(node.options, name) == value
    for node in cluster:
        await assert_closed(node)


async def test_each_cluster_has_its_own_name_and_hub() -> None:
    async with LocalCluster(2) as first, LocalCluster(2) as second:
        assert first.name != second.name
        assert first.hub is not second.hub
        # Same node ids, but neither cluster sees a node of the other.
        for node in [*first, *second]:
            assert len(node.members()) == 2


async def test_a_request_between_two_nodes() -> None:
    async with LocalCluster(["server", "client"], setup=serve) as cluster:
        client = cluster["client"]
        assert await client.send(WhoAnswers(), node="server", timeout=5.0) == "server"
        with pytest.raises(HandlerError) as caught:
            await client.send(Fail(), node="server", timeout=5.0)
        assert caught.value.message == "failed on server"
        assert caught.value.node == "server"


async def test_nodes_made_one_by_one_with_their_own_settings() -> None:
    cluster = LocalCluster(max_concurrency=7)
    a = cluster.node("a")
    b = cluster.node("b", max_concurrency=3, heartbeat_interval=0.05)

    @b.handler
    async def who(req: WhoAnswers) -> str:
        return "b"

    with pytest.raises(ValueError, match="already has a node 'a'"):
        cluster.node("a")
    assert len(cluster) == 2
    async with cluster:
        assert a.options.max_concurrency == 7
        assert b.options.max_concurrency == 3
        assert b.options.heartbeat_interval == 0.05
        assert b.options.suspect_after == FAST_TIMINGS["suspect_after"]
        assert await a.send(WhoAnswers(), timeout=5.0) == "b"
    await assert_closed(a)
    await assert_closed(b)


async def test_the_library_defaults_on_request() -> None:
    cluster = LocalCluster(timings={})
    node = cluster.node("a")
    try:
        assert node.options.heartbeat_interval == NodeOptions().heartbeat_interval
        assert node.options.heartbeat_interval != FAST_TIMINGS["heartbeat_interval"]
    finally:
        await cluster.aclose()


async def test_all_nodes_close_when_the_body_raises() -> None:
    cluster = LocalCluster(3)
    # A node outside the cluster, on its hub, watches them go.
    observer = Node(
        "observer", cluster=cluster.name, discovery=MemoryDiscovery(cluster.hub), **FAST_TIMINGS
    )
    async with observer:
        with pytest.raises(RuntimeError, match="the test failed"):
            async with cluster:
                await observer.wait_for_peers(3, timeout=10.0)
                raise RuntimeError("the test failed")
        for node in cluster:
            await assert_closed(node)

        # Each said goodbye: LEFT, not FAULTED after a silence.
        def states() -> dict[str, NodeStatus]:
            return {m.node_id: m.status for m in observer.members() if m.node_id != "observer"}

        gone = {"n1": NodeStatus.LEFT, "n2": NodeStatus.LEFT, "n3": NodeStatus.LEFT}
        await wait_until(lambda: states() == gone, timeout=5.0)


async def test_a_failed_start_closes_the_nodes_already_started() -> None:
    with socket.socket() as taken:  # a port in use for as long as the test runs
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = LocalCluster(["first"])
        cluster.node("second", port=port)
        # A CatgaError: TransportFailed today, a ConfigError once a port in use is one.
        with pytest.raises(CatgaError, match=str(port)):
            async with cluster:
                pytest.fail("the body must not run")
    await assert_closed(cluster["first"])


async def test_a_node_that_meets_nobody_fails_the_start_saying_so() -> None:
    cluster = LocalCluster(["a"], connect_timeout=0.5)
    cluster.node("loner", discovery=None)  # found by no one, finds no one
    start = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        async with cluster:
            pytest.fail("the body must not run")
    assert time.monotonic() - start < 5.0
    assert caught.value.node == "a"
    assert "does not see all 1 others ALIVE within 0.5 s" in caught.value.message
    for node in cluster:
        await assert_closed(node)


async def test_aclose_twice_is_harmless() -> None:
    cluster = LocalCluster(2)
    await cluster.start()
    await cluster.aclose()
    await cluster.aclose()
    for node in cluster:
        await assert_closed(node)


def test_importing_it_needs_no_pytest() -> None:
    # pytest blocked: importing it would raise ImportError.
    code = (
        "import sys; sys.modules['pytest'] = sys.modules['_pytest'] = None; "
        "import catga_zmq.testing as t; print(sorted(t.FAST_TIMINGS))"
    )
    result = run(python("-c", code), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "heartbeat_interval" in result.stdout


#: A user's project: the plugin enabled in its top-level conftest.py, and its tests.
USER_CONFTEST = 'pytest_plugins = ["catga_zmq.testing"]\n'
USER_TESTS = """
import pytest
from catga_zmq import CatgaError, Node, Request
from catga_zmq.testing import ClusterFactory, NodeFactory

class Add(Request[int]):
    __wire_name__ = "user.Add"
    a: int
    b: int

def serve(node: Node) -> None:
    @node.handler
    async def add(req: Add) -> int:
        return req.a + req.b

made: list[Node] = []

@pytest.mark.asyncio
async def test_cluster(catga_cluster: ClusterFactory) -> None:
    cluster = await catga_cluster(["server", "client"], setup=serve)
    assert await cluster["client"].send(Add(a=2, b=3), node="server", timeout=5) == 5
    made.extend(cluster)

@pytest.mark.asyncio
async def test_node_factory(catga_node_factory: NodeFactory) -> None:
    server, client = catga_node_factory("server"), catga_node_factory("client")
    serve(server)
    await server.start()
    await client.start()
    await client.wait_for_peers(1, timeout=10, handles=Add)
    assert await client.send(Add(a=1, b=1), timeout=5) == 2
    made.extend([server, client])

@pytest.mark.asyncio
async def test_the_fixtures_closed_their_nodes() -> None:
    assert len(made) == 4
    for node in made:
        with pytest.raises(CatgaError):
            await node.send(Add(a=0, b=0), timeout=1)
"""


def test_the_pytest_fixtures_work_in_a_users_project(pytester: pytest.Pytester) -> None:
    # Its own project (no ini: pytest-asyncio in strict mode), run in a new process with
    # every warning an error.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=90)
    result.assert_outcomes(passed=3)

"""A cluster of real node processes on loopback, found by mDNS, driven by a client node.

Each node is ``python -m catga_zmq.node --app tests.apps.cluster_app:node``; the test
process joins the cluster as a client ``Node`` to send requests and watch membership.
Every test uses its own cluster name, so runs on one machine do not see each other.
Every process a test starts is stopped by its PID (SIGTERM, wait, SIGKILL) even when the
test fails. Timings are the defaults unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
from _net import loopback_multicast_problem
from _procs import Proc, child_env, python, run, stop_all

from catga_zmq import (
    HandlerError,
    HandlerNotFound,
    Info,
    MembershipEvent,
    Node,
    NodeFaulted,
    NodeLeft,
    NodeStatus,
    NoNodes,
    Request,
    Stats,
)
from tests.apps.cluster_app import Boom, Emit, Notice, Relay, Seen, Where

APP = "tests.apps.cluster_app:node"
IDS = ("n1", "n2", "n3")

READY_TIMEOUT = 20.0  # s for a node process to print its ready line
DISCOVERY_TIMEOUT = 15.0  # s for mDNS and heartbeats to make everyone ALIVE
CHANGE_TIMEOUT = 15.0  # s for a membership change to show
EXIT_TIMEOUT = 15.0  # s for a node to drain and exit after SIGTERM / SIGINT
FAULT_BOUND = 6.0  # s; with default timings FAULTED comes in about 3 s
POLL = 0.05  # s between two looks at the cluster


_problem = loopback_multicast_problem()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(_problem is not None, reason=_problem or ""),
]


class Unhandled(Request[str]):
    """A request type no node of the cluster handles."""

    __wire_name__ = "cluster_test.Unhandled"


# processes -----------------------------------------------------------------------------


def _cluster_name() -> str:
    return f"ct-{uuid.uuid4().hex[:12]}"


def spawn(node_id: str, cluster: str, logs: Path, *extra: str, **env: str) -> Proc:
    """Start a node process (not waiting for it); its output goes to files in ``logs``."""
    n = len(list(logs.glob(f"{node_id}.*.err")))  # a restarted node gets new files
    cmd = python("-m", "catga_zmq.node", "--app", APP, "--id", node_id, "--cluster", cluster)
    cmd += ["--discovery", "mdns", "--bind", "127.0.0.1", *extra]
    return Proc.start(node_id, cmd, logs / f"{node_id}.{n}", env=child_env(**env))


@dataclass
class Cluster:
    """Node processes of one cluster; ``stop_all`` stops every one ever started here."""

    name: str
    logs: Path
    nodes: dict[str, Proc] = field(default_factory=dict)  # the latest process per id
    started: list[Proc] = field(default_factory=list)

    def start(self, node_id: str, *extra: str) -> Proc:
        proc = spawn(node_id, self.name, self.logs, *extra)
        self.started.append(proc)
        self.nodes[node_id] = proc
        return proc

    def stop_all(self) -> None:
        stop_all(self.started, EXIT_TIMEOUT)


@contextlib.contextmanager
def running_cluster(logs: Path) -> Iterator[Cluster]:
    """n1, n2 and n3 in a cluster of their own, ready; stopped afterwards, whatever happened."""
    cluster = Cluster(_cluster_name(), logs)
    try:
        for node_id in IDS:
            cluster.start(node_id)
        for proc in cluster.started:
            proc.wait_ready(READY_TIMEOUT)
        yield cluster
    finally:
        cluster.stop_all()


# the client --------------------------------------------------------------------------


@dataclass
class Client:
    node: Node
    cluster: str
    notices: list[str] = field(default_factory=list)
    found_after: float = 0.0  # s from start() until n1-n3 were ALIVE and handling Where


@contextlib.asynccontextmanager
async def client_node(cluster: str) -> AsyncIterator[Client]:
    """The test process as a member of ``cluster``: mDNS, default timings."""
    node = Node(node_id=f"client-{uuid.uuid4().hex[:6]}", cluster=cluster, discovery="mdns")
    client = Client(node, cluster)

    @node.subscribe
    async def on_notice(evt: Notice) -> None:
        client.notices.append(evt.token)

    start = time.monotonic()
    async with node:
        await node.wait_for_peers(len(IDS), timeout=DISCOVERY_TIMEOUT, handles=Where)
        client.found_after = time.monotonic() - start
        yield client


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate``; the seconds it took, or fail saying ``what`` did not happen."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(POLL)
    return time.monotonic() - start


async def all_see_each_other(client: Client) -> None:
    """Wait until every node has the other two and the client ALIVE (events need that)."""
    want = len(IDS)  # the two other nodes and the client
    deadline = time.monotonic() + DISCOVERY_TIMEOUT
    for node_id in IDS:
        while True:
            stats = await client.node.send(Stats(), node=node_id, timeout=2.0)
            if stats.members.get("alive", 0) >= want:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{node_id} sees {stats.members}, want {want} alive")
            await asyncio.sleep(POLL)


async def next_change(
    changes: AsyncIterator[MembershipEvent],
    kind: type[MembershipEvent],
    node_id: str,
    timeout: float = CHANGE_TIMEOUT,
) -> MembershipEvent:
    """The next ``kind`` event about ``node_id`` from a ``watch()``, within ``timeout``."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            async for change in changes:
                seen.append(f"{type(change).__name__}({change.node.node_id})")
                if isinstance(change, kind) and change.node.node_id == node_id:
                    return change
    except TimeoutError:
        pass
    raise AssertionError(f"no {kind.__name__} for {node_id} within {timeout} s; saw {seen}")


def member(client: Client, node_id: str) -> NodeStatus | None:
    for m in client.node.members():
        if m.node_id == node_id:
            return m.status
    return None


# one cluster shared by the tests that do not change it -----------------------------------


@pytest.fixture(scope="class")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("shared")) as cluster:
        yield cluster


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def shared(shared_cluster: Cluster) -> AsyncIterator[tuple[Client, dict[str, Proc]]]:
    # The loop of this class runs only while one of its tests (or fixtures) does; the
    # tests follow each other closely, far inside the 1.25 s before a silent peer is
    # SUSPECT, so the client's view stays true between them.
    async with client_node(shared_cluster.name) as client:
        yield client, shared_cluster.nodes


@pytest.mark.asyncio(loop_scope="class")
class TestSharedCluster:
    async def test_three_processes_find_each_other(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, nodes = shared
        # The fixture's wait_for_peers(3, handles=Where) passed: each node is ALIVE here.
        print(
            f"mDNS + heartbeats: n1-n3 ALIVE at the client {client.found_after:.2f} s after start"
        )
        alive = {m.node_id: m for m in client.node.members() if m.status is NodeStatus.ALIVE}
        assert set(IDS) <= set(alive)
        for node_id in IDS:
            assert "cluster.Where" in alive[node_id].handles
            assert alive[node_id].endpoint == nodes[node_id].ready["endpoint"]
            info = await client.node.send(Info(), node=node_id, timeout=5.0)
            assert info.node_id == node_id
            assert info.cluster == client.cluster
            assert info.status == "alive"
            assert info.endpoint == nodes[node_id].ready["endpoint"]
            assert info.pub_endpoint == nodes[node_id].ready["pub"]
            assert {"cluster.Where", "cluster.Relay", "cluster.Boom"} <= set(info.handles)
            assert "cluster.Notice" in info.subscribes
            assert nodes[node_id].ready["cluster"] == client.cluster

    async def test_operator_nodes_command_lists_them(
        self, shared: tuple[Client, dict[str, Proc]], tmp_path: Path
    ) -> None:
        client, _ = shared
        # Run it without blocking the loop: the client must keep its heartbeats going.
        cmd = python("-m", "catga_zmq", "nodes", "--cluster", client.cluster, "--json")
        proc = Proc.start("nodes", [*cmd, "--wait", "3"], tmp_path / "nodes")
        try:
            code = await proc.await_exit(30)
        finally:
            proc.stop()
        out, err = proc.stdout(), proc.stderr()
        assert code == 0, err
        rows = msgspec.json.decode(out)
        by_id = {row["node"]: row for row in rows}
        for node_id in IDS:
            assert by_id[node_id]["status"] == "alive", rows
            assert "cluster.Where" in by_id[node_id]["handles"]
        assert not any(row["node"].startswith("ops-") for row in rows)  # the client is no member

    async def test_request_from_one_node_handled_on_another(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, _ = shared
        for node_id in IDS:
            assert await client.node.send(Where(), node=node_id, timeout=5.0) == node_id
        assert await client.node.send(Relay(to="n2"), node="n1", timeout=5.0) == "n1->n2"
        assert await client.node.send(Relay(to="n3"), node="n2", timeout=5.0) == "n2->n3"
        assert await client.node.send(Relay(to="n1"), node="n3", timeout=5.0) == "n3->n1"

    async def test_event_reaches_every_subscriber(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, _ = shared
        await all_see_each_other(client)
        token = uuid.uuid4().hex
        assert await client.node.send(Emit(token=token), node="n1", timeout=5.0) == 0
        for node_id in IDS:
            deadline = time.monotonic() + 10.0
            while True:
                seen = await client.node.send(Seen(), node=node_id, timeout=5.0)
                if token in seen:
                    break
                assert time.monotonic() < deadline, f"{node_id} never saw {token}: {seen}"
                await asyncio.sleep(POLL)
        await until(lambda: token in client.notices, 10.0, "the client's subscriber")
        assert client.notices.count(token) == 1

    async def test_handler_exception_arrives_as_handler_error(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, _ = shared
        with pytest.raises(HandlerError) as caught:
            await client.node.send(Boom(text="on n2"), node="n2", timeout=5.0)
        err = caught.value
        assert err.code == "HANDLER_FAILED"
        assert err.error_type == "ValueError"
        assert err.message == "boom: on n2"
        assert err.node == "n2"
        assert err.retryable is False

    async def test_unknown_type_to_a_node_is_handler_not_found(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, _ = shared
        start = time.monotonic()
        with pytest.raises(HandlerNotFound) as caught:
            await client.node.send(Unhandled(), node="n1", timeout=5.0)
        elapsed = time.monotonic() - start
        assert caught.value.code == "HANDLER_NOT_FOUND"
        assert caught.value.node == "n1"
        assert "cluster_test.Unhandled" in caught.value.message
        assert elapsed < 2.0, f"HANDLER_NOT_FOUND took {elapsed:.3f} s"

    async def test_unknown_type_routed_is_no_nodes_at_once(
        self, shared: tuple[Client, dict[str, Proc]]
    ) -> None:
        client, _ = shared
        start = time.monotonic()
        with pytest.raises(NoNodes) as caught:
            await client.node.send(Unhandled(), timeout=5.0)
        elapsed = time.monotonic() - start
        print(f"NO_NODES after {elapsed * 1e3:.2f} ms")
        assert caught.value.code == "NO_NODES"
        assert elapsed < 0.5, f"NO_NODES took {elapsed:.3f} s of a 5 s timeout"


# tests that change the cluster: one cluster each ------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path) as cluster:
        yield cluster


async def test_sigterm_node_leaves(cluster: Cluster) -> None:
    procs = cluster.nodes
    n3 = procs["n3"]
    async with client_node(cluster.name) as client:
        await all_see_each_other(client)
        changes = client.node.watch()
        n3.send_signal(signal.SIGTERM)
        assert await n3.await_exit(EXIT_TIMEOUT) == 0, n3.stderr()
        left = await next_change(changes, NodeLeft, "n3")
        assert left.node.status is NodeStatus.LEFT
        assert member(client, "n3") is NodeStatus.LEFT
        for node_id in ("n1", "n2"):
            await procs[node_id].await_log("node n3 left", CHANGE_TIMEOUT)
        assert "draining n3" in n3.stderr()
        assert "node n3 closed" in n3.stderr()
        # Out of routing at once: only n1 and n2 answer, n3 is no target.
        answers = {await client.node.send(Where(), timeout=5.0) for _ in range(6)}
        assert answers == {"n1", "n2"}
        with pytest.raises(NoNodes):
            await client.node.send(Where(), node="n3", timeout=5.0)


async def test_sigkill_node_is_faulted(cluster: Cluster) -> None:
    procs = cluster.nodes
    n3 = procs["n3"]
    async with client_node(cluster.name) as client:
        await all_see_each_other(client)
        changes = client.node.watch()
        start = time.monotonic()
        n3.send_signal(signal.SIGKILL)
        faulted = await next_change(changes, NodeFaulted, "n3")
        took = time.monotonic() - start
        print(f"n3 FAULTED at the client {took:.2f} s after SIGKILL")
        assert faulted.node.status is NodeStatus.FAULTED
        assert member(client, "n3") is NodeStatus.FAULTED
        assert await n3.await_exit(EXIT_TIMEOUT) == -signal.SIGKILL
        for node_id in ("n1", "n2"):
            # n1 and n2 run the same detector: they get there about as fast.
            await procs[node_id].await_log("node n3 is faulted", FAULT_BOUND)
        assert took < FAULT_BOUND, f"FAULTED after {took:.2f} s"
        answers = {await client.node.send(Where(), timeout=5.0) for _ in range(6)}
        assert answers == {"n1", "n2"}


async def test_restarted_node_is_seen_again(cluster: Cluster) -> None:
    old = cluster.nodes["n3"]
    async with client_node(cluster.name) as client:
        await all_see_each_other(client)
        before = {m.node_id: m for m in client.node.members()}["n3"].incarnation
        old.send_signal(signal.SIGKILL)
        assert await old.await_exit(EXIT_TIMEOUT) == -signal.SIGKILL
        new = cluster.start("n3")  # same --id, same cluster
        await new.await_ready(READY_TIMEOUT)

        def back() -> bool:
            m = {m.node_id: m for m in client.node.members()}.get("n3")
            return m is not None and m.status is NodeStatus.ALIVE and m.incarnation != before

        took = await until(back, CHANGE_TIMEOUT, "restarted n3 ALIVE at the client")
        print(f"restarted n3 ALIVE at the client {took:.2f} s after its ready line")
        assert [m.node_id for m in client.node.members()].count("n3") == 1
        assert {m.node_id: m for m in client.node.members()}["n3"].endpoint == new.ready["endpoint"]
        assert await client.node.send(Where(), node="n3", timeout=5.0) == "n3"
        # The other nodes route to the new n3 too.
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while True:
            try:
                answer = await client.node.send(Relay(to="n3"), node="n1", timeout=5.0)
            except NoNodes:
                answer = ""  # n1 has not heard the new n3 yet: ask again
            if answer == "n1->n3":
                break
            assert time.monotonic() < deadline, f"n1 does not reach the new n3: {answer!r}"
            await asyncio.sleep(POLL)


# command lines ---------------------------------------------------------------------------


def _run_node(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return run(python("-m", "catga_zmq.node", *args), timeout=timeout)


def _assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert "error" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert "ready " not in result.stdout


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--seeds", "localhost:5"], ["localhost:5"]),
        (["--app", "nonexistent_mod:node"], ["nonexistent_mod"]),
        (["--heartbeat-interval", "0"], ["--heartbeat-interval", "0.01 to 3600"]),
    ],
    ids=["seeds", "app", "heartbeat-interval"],
)
def test_bad_command_line_exits_2_with_one_line(flags: list[str], words: list[str]) -> None:
    # A later --app overrides the first: argparse keeps the last value.
    args = ["--app", APP, "--id", "bad", "--cluster", _cluster_name(), "--bind", "127.0.0.1"]
    result = _run_node(*args, "--discovery", "mdns", *flags)
    _assert_usage_error(result, *words)


def test_port_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    cluster = _cluster_name()
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = spawn("p1", cluster, tmp_path, "--port", str(port))
    try:
        first.wait_ready(READY_TIMEOUT)
        assert first.ready["endpoint"] == f"tcp://127.0.0.1:{port}"
        result = _run_node(
            "--app", APP, "--id", "p2", "--cluster", cluster, "--discovery", "mdns",
            "--bind", "127.0.0.1", "--port", str(port), timeout=15.0,
        )  # fmt: skip
        _assert_usage_error(result, str(port), "in use")
        assert first.returncode is None, "the first node must not be disturbed"
    finally:
        first.stop()
    assert first.returncode == 0, first.stderr()


def test_sigint_drains_and_exits_0(tmp_path: Path) -> None:
    node = spawn("i1", _cluster_name(), tmp_path)
    try:
        node.wait_ready(READY_TIMEOUT)
        node.send_signal(signal.SIGINT)
        code = node.popen.wait(timeout=EXIT_TIMEOUT)
    finally:
        node.stop()
    assert code == 0, node.stderr()
    log = node.stderr()
    assert "draining i1" in log
    assert "node i1 closed" in log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log

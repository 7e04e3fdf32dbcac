"""A node's lifecycle at its edges: a close cut short or started from a handler, a
deadline that outlives its caller, a failed start, a discovery that fails to close, a
background loop that dies, and two nodes with one id.

Real ZeroMQ sockets on loopback throughout: in-process nodes from ``make_node``, and
for the duplicate id two node processes, each stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _procs import Proc, python, stop_all
from conftest import MakeNode, wait_until

from catga_zmq import (
    Cancelled,
    CatgaError,
    MemoryDiscovery,
    MemoryHub,
    Node,
    NodeClosed,
    Request,
    RequestTimeout,
)
from catga_zmq.discovery.base import DiscoveryChange

#: How long a napping handler sleeps unless cancelled (s): long enough to outlive a
#: cut-short close, short enough that a test can watch it not wake up.
NAP = 2.0
#: A caller whose handler was cancelled hears it within this (s); a lost answer would
#: instead wait for the failure detector or the request's timeout.
PROMPTLY = 1.5
#: Generous bounds for a loaded 2-core machine (s).
PEERS_TIMEOUT = 10.0
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 20.0


class Nap(Request[str]):
    """Sleeps ``seconds``, then answers the id of the node that slept."""

    __wire_name__ = "lifecycle_test.Nap"
    seconds: float


class Echo(Request[str]):
    """Answers ``text`` at once."""

    __wire_name__ = "lifecycle_test.Echo"
    text: str


class CloseYourself(Request[str]):
    """Its handler closes its own node, then answers."""

    __wire_name__ = "lifecycle_test.CloseYourself"


@dataclass
class Napping:
    """How far the ``Nap`` handler of one node got."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    finished: bool = False


def serve_naps(node: Node) -> Napping:
    """Give ``node`` a ``Nap`` and an ``Echo`` handler; what the ``Nap`` one did."""
    napping = Napping()

    @node.handler
    async def nap(req: Nap) -> str:
        napping.started.set()
        try:
            await asyncio.sleep(req.seconds)
        except asyncio.CancelledError:
            napping.cancelled = True
            raise
        napping.finished = True
        return node.node_id

    @node.handler
    async def echo(req: Echo) -> str:
        return req.text

    return napping


def tasks_of(node: Node) -> list[str]:
    """The tasks of ``node`` still running (a node names each ``catga-<id>-*``)."""
    prefix = f"catga-{node.node_id}-"
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(prefix) and not t.done()
    ]


async def started(*nodes: Node) -> None:
    """Start ``nodes`` one after the other."""
    for node in nodes:
        await node.start()


# 1. a close cut short ------------------------------------------------------------------------


async def test_a_cut_short_close_cancels_the_handlers_and_nothing_of_the_node_runs_on(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="catga_zmq")
    server = make_node("server", drain_timeout=5.0)  # the cut, not the drain, must cancel
    napping = serve_naps(server)
    caller = make_node("caller")
    await started(server, caller)
    await caller.wait_for_peers(1, timeout=PEERS_TIMEOUT, handles=Nap)
    call = asyncio.create_task(caller.send(Nap(seconds=NAP), node="server", timeout=30))
    async with asyncio.timeout(10):
        await napping.started.wait()
    napped_at = time.monotonic()

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.aclose(), 0.2)
    closed_at = len(caplog.records)

    assert server.state == "closed"
    assert tasks_of(server) == []
    done, _ = await asyncio.wait([call], timeout=PROMPTLY)
    assert call in done, f"the caller still waits {PROMPTLY} s after the close"
    with pytest.raises(Cancelled):
        call.result()
    # Past the end of the handler's nap, and a second more: it never woke up.
    await asyncio.sleep(max(0.0, napped_at + NAP + 1.0 - time.monotonic()))
    assert napping.cancelled and not napping.finished
    assert tasks_of(server) == []
    late = [r.getMessage() for r in caplog.records[closed_at:] if "not delivered" in r.getMessage()]
    assert late == [], "a handler of the closed node answered into its closed socket"


# 2. the caller's deadline, enforced where the handler runs -----------------------------------


async def test_a_remote_handler_is_cancelled_at_the_deadline_its_caller_sent(
    make_node: MakeNode,
) -> None:
    server = make_node("server", max_concurrency=1)
    napping = serve_naps(server)
    caller = make_node("caller")
    await started(server, caller)
    await caller.wait_for_peers(1, timeout=PEERS_TIMEOUT, handles=Nap)
    sent_at = time.monotonic()
    with pytest.raises(RequestTimeout):
        await caller.send(Nap(seconds=3.0), node="server", timeout=0.2)
    assert napping.started.is_set()

    # Its one concurrency slot is free again well before the 3 s nap would end ...
    await wait_until(lambda: server.stats().running == 0, timeout=1.5)
    # ... so the next request is served, not refused as OVERLOADED.
    assert await caller.send(Echo(text="next"), node="server", timeout=5) == "next"
    await asyncio.sleep(max(0.0, sent_at + 3.5 - time.monotonic()))
    assert napping.cancelled and not napping.finished


# 3. a handler that closes its own node ----------------------------------------------------


async def test_a_handler_closing_its_own_node_answers_and_the_close_does_not_wait_for_it(
    make_node: MakeNode,
) -> None:
    server = make_node("server", drain_timeout=3.0)
    outcome: list[str] = []

    @server.handler
    async def close_yourself(req: CloseYourself) -> str:
        try:
            await server.aclose()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("returned")
        return "closing"

    caller = make_node("caller")
    await started(server, caller)
    await caller.wait_for_peers(1, timeout=PEERS_TIMEOUT, handles=CloseYourself)
    sent_at = time.monotonic()
    assert await caller.send(CloseYourself(), node="server", timeout=10) == "closing"
    await wait_until(lambda: server.state == "closed", timeout=5.0)
    took = time.monotonic() - sent_at
    assert took < 1.5, f"the close took {took:.2f} s: it waited for its own handler"
    assert outcome == ["returned"]


# 4. a failed start ------------------------------------------------------------------------


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it, for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_queries_answer(node: Node) -> None:
    """Every query of ``node`` answers, whatever its state."""
    assert isinstance(node.members(), list)
    assert node.stats().node_id == node.node_id
    problems = node.problems()
    assert isinstance(problems, list)
    assert node.healthy is (not problems)
    assert isinstance(node.endpoint, str) and isinstance(node.pub_endpoint, str)


async def test_a_failed_start_leaves_no_half_built_node_and_every_query_works_in_every_state(
    make_node: MakeNode,
) -> None:
    failed = make_node("failed")
    with busy_port() as port:
        failed.configure(port=port)
        with pytest.raises(CatgaError, match="in use"):
            await failed.start()
    assert failed.members() == []
    assert failed.stats().running == 0
    assert failed.healthy is False
    assert failed.problems()
    with pytest.raises(NodeClosed):
        await failed.send(Echo(text="anyone?"), timeout=1)
    assert_queries_answer(failed)

    node = make_node("node")
    serve_naps(node)
    assert node.state == "new"
    assert_queries_answer(node)
    assert node.members() == [] and not node.healthy and node.endpoint == ""

    await node.start()
    assert node.state == "running"
    assert_queries_answer(node)
    assert [m.node_id for m in node.members()] == ["node"]
    assert node.healthy and node.problems() == []
    assert node.endpoint.startswith("tcp://127.0.0.1:")

    await node.aclose()
    assert node.state == "closed"
    assert_queries_answer(node)
    assert not node.healthy and node.problems()


# 5. a discovery that fails to close ---------------------------------------------------------


class DirectoryGone(Exception):
    """What ``CloseFails.aclose`` raises."""


class CloseFails(MemoryDiscovery):
    """In-memory discovery whose goodbye fails, after it has let go of everything."""

    name = "flaky-directory"

    async def aclose(self) -> None:
        await super().aclose()
        raise DirectoryGone("the directory did not take the goodbye")


def discovery_errors(caplog: pytest.LogCaptureFixture, since: int) -> list[logging.LogRecord]:
    """ERROR records since record ``since`` that name the flaky discovery and its error."""
    return [
        r
        for r in caplog.records[since:]
        if r.levelno >= logging.ERROR
        and CloseFails.name in r.getMessage()
        and r.exc_info is not None
        and isinstance(r.exc_info[1], DirectoryGone)
    ]


async def test_a_discovery_that_fails_to_close_is_logged_and_the_node_still_closes(
    make_node: MakeNode, hub: MemoryHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="catga_zmq")
    calm = make_node("calm", discovery=CloseFails(hub))
    hasty = make_node("hasty", discovery=CloseFails(hub), drain_timeout=5.0)
    napping = serve_naps(hasty)
    caller = make_node("caller")
    await started(calm, hasty, caller)
    await caller.wait_for_peers(2, timeout=PEERS_TIMEOUT)

    # A close that drains ...
    mark = len(caplog.records)
    await calm.aclose()
    assert calm.state == "closed"
    assert len(discovery_errors(caplog, mark)) == 1

    # ... and one cut short while a handler runs.
    call = asyncio.create_task(caller.send(Nap(seconds=NAP), node="hasty", timeout=30))
    async with asyncio.timeout(10):
        await napping.started.wait()
    mark = len(caplog.records)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hasty.aclose(), 0.2)
    assert hasty.state == "closed"
    assert len(discovery_errors(caplog, mark)) == 1
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, CatgaError):
        await call


# 6. background loops are supervised ---------------------------------------------------------


class WatchBreaks(MemoryDiscovery):
    """In-memory discovery whose ``watch()`` iterator fails after its first item, for
    its first ``failures`` calls."""

    def __init__(self, hub: MemoryHub, failures: int) -> None:
        super().__init__(hub)
        self.failures = failures
        self.watch_calls = 0

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        self.watch_calls += 1
        return self._watch(super().watch(), breaks=self.watch_calls <= self.failures)

    async def _watch(
        self, changes: AsyncIterator[DiscoveryChange], *, breaks: bool
    ) -> AsyncIterator[DiscoveryChange]:
        async with contextlib.aclosing(changes):  # type: ignore[type-var]
            async for change in changes:
                yield change
                if breaks:
                    raise ConnectionError("the directory went away")


async def test_a_failed_background_loop_is_logged_restarted_and_closes_the_node_if_it_keeps_failing(
    make_node: MakeNode, hub: MemoryHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="catga_zmq")
    peer = make_node("peer")
    await peer.start()  # the first item every watch() of the others yields

    once = WatchBreaks(hub, failures=1)
    node = make_node("node", discovery=once)
    await node.start()
    # While the loop is down the node says so, and names the loop ...
    await wait_until(lambda: not node.healthy, timeout=10)
    assert node.state == "running"
    assert any("discovery" in p for p in node.problems()), node.problems()
    failed = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and "discovery" in r.getMessage()
        and r.exc_info is not None
        and isinstance(r.exc_info[1], ConnectionError)
    ]
    assert failed, "the failed loop was not logged at ERROR"
    # ... then it is started again, and the node is healthy again.
    # (healthy turns true when the new task exists; it calls watch() on its first step)
    await wait_until(lambda: node.healthy and once.watch_calls == 2, timeout=10)
    assert once.watch_calls == 2
    assert node.problems() == []

    # A loop that keeps failing closes its node, which says why.
    from catga_zmq._supervisor import MAX_RESTARTS, RESTART_WINDOW

    always = WatchBreaks(hub, failures=1_000)
    doomed = make_node("doomed", discovery=always)
    await doomed.start()
    await wait_until(lambda: doomed.state == "closed", timeout=RESTART_WINDOW / 2)
    assert always.watch_calls == MAX_RESTARTS + 1
    assert isinstance(doomed.failure, CatgaError)
    assert "discovery" in doomed.failure.message
    assert node.failure is None and node.healthy


# 7. two nodes with one id -------------------------------------------------------------------


def node_command(node_id: str, cluster: str, *flags: str) -> list[str]:
    return python(
        "-m",
        "catga_zmq.node",
        "--id",
        node_id,
        "--cluster",
        cluster,
        "--bind",
        "127.0.0.1",
        "--heartbeat-interval",
        "0.2",
        *flags,
    )


@pytest.mark.cluster
async def test_the_younger_of_two_nodes_with_one_id_exits_2_and_the_older_runs_on(
    tmp_path: Path,
) -> None:
    cluster = f"dup-{uuid.uuid4().hex[:12]}"
    older = Proc.start(
        "older", node_command("dup", cluster, "--discovery", "none"), tmp_path / "older"
    )
    procs = [older]
    try:
        older_endpoint = (await older.await_ready(READY_TIMEOUT))["endpoint"]
        younger = Proc.start(
            "younger",
            node_command("dup", cluster, "--discovery", "static", "--seeds", older_endpoint),
            tmp_path / "younger",
        )
        procs.append(younger)
        younger_endpoint = (await younger.await_ready(READY_TIMEOUT))["endpoint"]

        assert await younger.await_exit(EXIT_TIMEOUT) == 2, younger.stderr()
        said = [line for line in younger.stderr().splitlines() if line.startswith("catga-node:")]
        assert len(said) == 1, younger.stderr()
        assert said[0].startswith("catga-node: error:") and "'dup'" in said[0], said
        assert younger_endpoint in said[0] and older_endpoint in said[0], said

        def names_both(line: str) -> bool:
            return (
                "ERROR" in line
                and "'dup'" in line
                and all(endpoint in line for endpoint in (older_endpoint, younger_endpoint))
            )

        deadline = time.monotonic() + EXIT_TIMEOUT
        while not any(names_both(line) for line in older.stderr().splitlines()):
            assert time.monotonic() < deadline, older.fail("no ERROR naming both endpoints")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # it has heard the younger; it runs on regardless
        assert older.returncode is None, older.fail("the older node stopped")
        assert older.stop() == 0, older.stderr()
    finally:
        stop_all(procs)

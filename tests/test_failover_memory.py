"""Failover with nodes in one process over real loopback sockets: overload, crash, drain.

A crash is simulated in process: the node's background tasks are cancelled and its
sockets closed at once (LINGER 0), with no DRAINING heartbeat and no BYE, so its peers
see what they would see of a killed process: the TCP connections drop and the
heartbeats stop. (A subprocess killed with SIGKILL is exercised too, once.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _procs import Proc, python
from conftest import PATIENT, MakeNode, member, parts, wait_until

from catga_zmq import (
    CatgaError,
    Node,
    NodeStatus,
    Request,
    RequestTimeout,
    StaticDiscovery,
    TransportFailed,
)
from catga_zmq._node import State

#: ``PATIENT``, with time to drain under load (s).
TIMING: dict[str, Any] = {**PATIENT, "drain_timeout": 5.0}


class Served(msgspec.Struct):
    by: str
    n: int


class Slow(Request[Served]):
    """Not idempotent (the default): delivered but unanswered, it is not sent again."""

    n: int
    seconds: float


class SlowIdempotent(Request[Served]):
    __idempotent__ = True
    n: int
    seconds: float


class Tracker:
    """Serves both request types on ``node``, recording what it started and finished."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started: list[int] = []
        self.finished: list[int] = []

        async def handle(req: Any) -> Served:
            self.started.append(req.n)
            await asyncio.sleep(req.seconds)
            self.finished.append(req.n)
            return Served(node.node_id, req.n)

        node.handler(handle, message_type=Slow)
        node.handler(handle, message_type=SlowIdempotent)


def crash(node: Node) -> None:
    """Kill ``node`` as a crash would: no DRAINING, no BYE, sockets gone at once."""
    for task in list(node._supervisor.tasks):  # heartbeats, failure detector, discovery
        task.cancel()
    parts(node).transport.close()
    for task in list(parts(node).server._serving):  # handlers die with the process
        task.cancel()
    node.state = State.CLOSED  # the fixture's aclose() has nothing left to do


async def start(*nodes: Node) -> None:
    for node in nodes:
        await node.start()


def outcome(result: object) -> str:
    if isinstance(result, Served):
        return f"ok:{result.by}"
    return type(result).__name__


async def test_overloaded_server_sheds_to_the_other(make_node: MakeNode) -> None:
    narrow = make_node("narrow", max_concurrency=1, **TIMING)
    wide = make_node("wide", **TIMING)
    narrow_t, wide_t = Tracker(narrow), Tracker(wide)
    caller = make_node("c", **TIMING)
    await start(narrow, wide, caller)
    await caller.wait_for_peers(2, handles=Slow)

    async with asyncio.timeout(20):
        results = await asyncio.gather(
            *(caller.send(Slow(n=i, seconds=0.2), timeout=5) for i in range(40)),
            return_exceptions=True,
        )
    assert all(isinstance(r, Served) for r in results), Counter(map(outcome, results))
    assert sorted(r.n for r in results if isinstance(r, Served)) == list(range(40))
    by = Counter(r.by for r in results if isinstance(r, Served))
    assert by["narrow"] >= 1 and by["wide"] >= 20, by
    # Each ran exactly once, on the node that answered it.
    assert sorted(narrow_t.finished + wide_t.finished) == list(range(40))
    assert caller.stats().pending == 0
    assert all(m.outstanding == 0 for m in caller.members())


async def test_crash_fails_idempotent_requests_over_to_the_other_node(
    make_node: MakeNode,
) -> None:
    doomed, survivor = make_node("doomed", **TIMING), make_node("survivor", **TIMING)
    doomed_t, survivor_t = Tracker(doomed), Tracker(survivor)
    caller = make_node("c", **TIMING)
    await start(doomed, survivor, caller)
    await caller.wait_for_peers(2, handles=SlowIdempotent)

    timeout = 3.0
    loop = asyncio.get_running_loop()

    async def timed(i: int) -> tuple[Served, float]:
        t0 = loop.time()
        reply = await caller.send(SlowIdempotent(n=i, seconds=0.4), timeout=timeout)
        return reply, loop.time() - t0

    tasks = [asyncio.create_task(timed(i)) for i in range(20)]
    await wait_until(lambda: len(doomed_t.started) >= 5 and len(survivor_t.started) >= 5)
    on_doomed = set(doomed_t.started)
    crash(doomed)

    async with asyncio.timeout(timeout + 2):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, tuple)]
    assert not failures, failures
    replies = [r for r in results if isinstance(r, tuple)]
    assert sorted(reply.n for reply, _ in replies) == list(range(20))
    for reply, took in replies:
        assert reply.by == "survivor"  # the crashed node answered none of them
        assert took < timeout
    # Those in flight on the crashed node ran again on the survivor.
    assert on_doomed <= set(survivor_t.finished)
    await wait_until(lambda: member(caller, "doomed").status is NodeStatus.FAULTED)
    assert caller.stats().pending == 0
    assert member(caller, "doomed").outstanding == 0


async def test_crash_with_non_idempotent_requests_in_flight_never_hangs(
    make_node: MakeNode,
) -> None:
    doomed, survivor = make_node("doomed", **TIMING), make_node("survivor", **TIMING)
    doomed_t, survivor_t = Tracker(doomed), Tracker(survivor)
    caller = make_node("c", **TIMING)
    await start(doomed, survivor, caller)
    await caller.wait_for_peers(2, handles=Slow)

    timeout = 3.0
    tasks = [
        asyncio.create_task(caller.send(Slow(n=i, seconds=0.4), timeout=timeout)) for i in range(20)
    ]
    await wait_until(lambda: len(doomed_t.started) >= 5 and len(survivor_t.started) >= 5)
    on_doomed = set(doomed_t.started)
    crash(doomed)

    t0 = time.monotonic()
    async with asyncio.timeout(timeout + 2):  # none hangs
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert time.monotonic() - t0 < timeout + 0.5
    for i, r in enumerate(results):
        if isinstance(r, Served):
            assert r.by == "survivor", r
        else:
            assert isinstance(r, RequestTimeout | TransportFailed), repr(r)
            assert i in on_doomed, (i, r)  # only those the crash caught may fail
            if isinstance(r, TransportFailed):
                assert r.node == "doomed"
    # Not run twice: what the crashed node had started is not re-sent elsewhere.
    assert not on_doomed & set(survivor_t.started)
    assert caller.stats().pending == 0
    assert member(caller, "doomed").outstanding == 0


async def test_requests_after_a_crash_go_to_the_survivor(make_node: MakeNode) -> None:
    doomed, survivor = make_node("doomed", **TIMING), make_node("survivor", **TIMING)
    Tracker(doomed)
    Tracker(survivor)
    caller = make_node("c", **TIMING)
    await start(doomed, survivor, caller)
    await caller.wait_for_peers(2, handles=Slow)
    crash(doomed)
    # Straight after the crash (before the detector has noticed): not one failure.
    async with asyncio.timeout(20):
        for i in range(30):
            reply = await caller.send(Slow(n=i, seconds=0.0), timeout=3)
            assert reply.by == "survivor"
            await asyncio.sleep(0.01)
    assert caller.stats().pending == 0


async def test_drain_finishes_in_flight_and_sends_new_work_elsewhere(
    make_node: MakeNode,
) -> None:
    leaving, staying = make_node("leaving", **TIMING), make_node("staying", **TIMING)
    leaving_t, staying_t = Tracker(leaving), Tracker(staying)
    caller = make_node("c", **TIMING)
    await start(leaving, staying, caller)
    await caller.wait_for_peers(2, handles=Slow)

    first = [asyncio.create_task(caller.send(Slow(n=i, seconds=0.5), timeout=5)) for i in range(20)]
    await wait_until(lambda: len(leaving_t.started) >= 5)
    in_flight = set(leaving_t.started)
    closing = asyncio.create_task(leaving.aclose())
    await wait_until(lambda: leaving.state is not State.RUNNING)

    # New work while it drains: none of it goes to the draining node.
    later: list[Served] = []
    async with asyncio.timeout(20):
        for i in range(100, 130):
            later.append(await caller.send(Slow(n=i, seconds=0.0), timeout=5))
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*first, return_exceptions=True)
        await closing
    failures = [r for r in results if not isinstance(r, Served)]
    assert not failures, failures  # zero failures
    assert {r.n for r in results if isinstance(r, Served) and r.by == "leaving"} == in_flight
    assert {r.by for r in later} == {"staying"}
    assert set(leaving_t.finished) == in_flight  # it finished what it had, nothing more
    assert not set(range(100, 130)) & set(leaving_t.started)
    assert len(staying_t.finished) >= 30
    await wait_until(lambda: member(caller, "leaving").status is NodeStatus.LEFT)
    assert caller.stats().pending == 0


async def test_drain_under_steady_load_has_zero_failures(make_node: MakeNode) -> None:
    leaving, staying = make_node("leaving", **TIMING), make_node("staying", **TIMING)
    Tracker(leaving)
    Tracker(staying)
    caller = make_node("c", **TIMING)
    await start(leaving, staying, caller)
    await caller.wait_for_peers(2, handles=Slow)

    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                reply = await caller.send(Slow(n=w * 10_000 + i, seconds=0.02), timeout=5)
            except CatgaError as exc:
                errors.append(exc)
            else:
                outcomes[reply.by] += 1

    async with asyncio.timeout(30):
        workers = [asyncio.create_task(worker(w)) for w in range(8)]
        await asyncio.sleep(0.3)
        await leaving.aclose()
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
    assert not errors, errors
    assert outcomes["leaving"] > 0 and outcomes["staying"] > 0, outcomes
    assert caller.stats().pending == 0


# a real process, killed -------------------------------------------------------------------

_KILLED_SERVER = """
import asyncio, json, sys
from catga_zmq import Node, Request, StaticDiscovery
import msgspec

class Served(msgspec.Struct):
    by: str
    n: int

class KilledIdempotent(Request[Served]):
    __wire_name__ = "failover.KilledIdempotent"
    __idempotent__ = True
    n: int
    seconds: float

async def main() -> None:
    seed, cluster, timings = sys.argv[1:]
    node = Node(
        "victim", cluster=cluster, discovery=StaticDiscovery([seed]), **json.loads(timings)
    )

    @node.handler
    async def handle(req: KilledIdempotent) -> Served:
        print("started", req.n, flush=True)
        await asyncio.sleep(req.seconds)
        return Served("victim", req.n)

    async with node:
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


class KilledIdempotent(Request[Served]):
    __wire_name__ = "failover.KilledIdempotent"
    __idempotent__ = True
    n: int
    seconds: float


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_sigkilled_process_fails_idempotent_requests_over(
    make_node: MakeNode, tmp_path: Path
) -> None:
    # The caller is the seed the others greet (static discovery), as in a real deployment.
    caller = make_node("c", discovery=None, **TIMING)
    await caller.start()
    seed = caller.endpoint
    survivor = make_node("survivor", discovery=StaticDiscovery([seed]), **TIMING)

    @survivor.handler
    async def handle(req: KilledIdempotent) -> Served:
        await asyncio.sleep(req.seconds)
        return Served("survivor", req.n)

    await survivor.start()
    timings = json.dumps(PATIENT)
    cmd = python("-c", _KILLED_SERVER, seed, caller.options.cluster, timings)
    proc = Proc.start("victim", cmd, tmp_path / "victim")
    try:
        await caller.wait_for_peers(2, timeout=30, handles=KilledIdempotent)
        timeout = 3.0
        tasks = [
            asyncio.create_task(caller.send(KilledIdempotent(n=i, seconds=0.5), timeout=timeout))
            for i in range(10)
        ]
        await proc.await_line("^started", timeout=10, count=3)
        proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(timeout + 2):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, Served) and r.by == "survivor" for r in results), results
        # The caller greets a node when it first hears it (an Info request, 1 s
        # deadline); one to the victim may still be waiting for its timeout.
        await wait_until(lambda: caller.stats().pending == 0, timeout=3)
    finally:
        proc.stop()

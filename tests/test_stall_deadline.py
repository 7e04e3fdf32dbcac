"""A node frozen past its callers' deadlines does not start their requests when it thaws.

The budget a request carries is relative (it survives clocks that disagree), so on its
own it would count from when the node reads the request: a node frozen by SIGSTOP reads
late, and would start work its callers gave up on. Frames carry their sender's
monotonic clock, and heartbeats tell each node how late it reads a given peer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import msgspec
import pytest
from _procs import Proc, python
from conftest import PATIENT, MakeNode

from catga_zmq import CatgaError, Request, Stats
from catga_zmq._clock import WINDOW, ClockOffset

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP")

_FROZEN_SERVER = """
import asyncio, json, sys
from catga_zmq import Node, Request, StaticDiscovery
import msgspec

class Done(msgspec.Struct):
    n: int

class Write(Request[Done]):
    __wire_name__ = "stall.Write"
    n: int

async def main() -> None:
    seed, cluster, timings = sys.argv[1:]
    node = Node(
        "frozen", cluster=cluster, discovery=StaticDiscovery([seed]), **json.loads(timings)
    )

    @node.handler
    async def handle(req: Write) -> Done:
        print("started", req.n, flush=True)
        return Done(req.n)

    async with node:
        await node.wait_for_peers(1, timeout=30)
        await asyncio.sleep(1.0)  # a few of the caller's heartbeats: the clock offset
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


class Done(msgspec.Struct):
    n: int


class Write(Request[Done]):
    __wire_name__ = "stall.Write"
    n: int


async def test_requests_read_after_their_deadline_are_not_started(
    make_node: MakeNode, tmp_path: Path
) -> None:
    caller = make_node("c", discovery=None, **PATIENT)
    await caller.start()
    cmd = python("-c", _FROZEN_SERVER, caller.endpoint, caller.options.cluster, json.dumps(PATIENT))
    proc = Proc.start("frozen", cmd, tmp_path / "frozen")
    try:
        await caller.wait_for_peers(1, timeout=30, handles=Write)
        await proc.await_line("^ready", timeout=30)
        # A control: a request read in time is started.
        assert await caller.send(Write(n=0), node="frozen", timeout=10) == Done(0)
        proc.send_signal(signal.SIGSTOP)
        try:
            tasks = [
                asyncio.create_task(caller.send(Write(n=i), node="frozen", timeout=0.5))
                for i in range(1, 11)
            ]
            # Every caller has given up (a timeout, or the node was lost) long before
            # the node reads again.
            async with asyncio.timeout(20):
                results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, CatgaError) for r in results), results
            await asyncio.sleep(2.0)
        finally:
            proc.send_signal(signal.SIGCONT)
        await caller.wait_for_peers(1, timeout=30, handles=Write)
        stats = await caller.send(Stats(), node="frozen", timeout=10)
        # Each was answered TIMEOUT without running: refused as read past its deadline
        # (requests_expired), or, read a little before it on a loaded machine, stopped
        # by the deadline check in front of the handler (requests_failed).
        assert stats.requests_expired + stats.requests_failed == 10, stats
        # Nothing but the control was started.
        assert await caller.send(Write(n=99), node="frozen", timeout=10) == Done(99)
        await proc.await_line("^started 99", timeout=10)
        started = [line for line in proc.stdout().splitlines() if line.startswith("started")]
        assert started == ["started 0", "started 99"], started
    finally:
        proc.stop()


def test_the_offset_is_the_least_difference_of_the_last_two_windows() -> None:
    clock = ClockOffset()
    assert clock.wait(1_000.0, 900) == 0.0  # no heartbeat yet: no wait estimated
    clock.sample(50.0)
    clock.sample(40.0)  # the fastest delivery seen
    clock.sample(400.0)  # a heartbeat read late: it does not raise the estimate
    assert clock.value == 40.0
    assert clock.wait(1_000.0, 900) == 60.0
    assert clock.wait(1_000.0, 990) == 0.0  # read faster than ever before: no wait
    # The clocks drift apart: the old least difference leaves within two windows.
    for _ in range(2 * WINDOW):
        clock.sample(45.0)
    assert clock.value == 45.0

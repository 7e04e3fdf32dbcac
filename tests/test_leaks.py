"""The pending map does not leak: 100,000 requests that time out leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec
from conftest import wait_until

from catga_zmq import Node, Request, RequestTimeout

MakeNode = Callable[..., Node]

TOTAL = 100_000
BATCH = 5_000
#: s. The handler answers after three of it, so every request times out. Long enough
#: that a request is read and its handler started well before its deadline, even on a
#: loaded machine: with 10 ms the server refused most of them unstarted instead, and
#: whether such a refusal reached the client before or after the client's own timer
#: fired depended on the Python version (3.12 starts handlers eagerly, inside the read).
TIMEOUT = 0.25


class Late(msgspec.Struct):
    n: int


class Tardy(Request[Late]):
    __wire_name__ = "leaks.Tardy"
    n: int


async def test_100k_timed_out_requests_leave_the_pending_map_empty(make_node: MakeNode) -> None:
    server = make_node("server", max_concurrency=TOTAL)
    # Timeouts are failures to the circuit breaker; here they are the point, not a sick node.
    client = make_node("client", breaker_threshold=10**9)

    @server.handler
    async def tardy(req: Tardy) -> Late:
        await asyncio.sleep(TIMEOUT * 3)
        return Late(req.n)

    await server.start()
    await client.start()
    await client.wait_for_peers(1, handles=Tardy)

    timed_out = 0
    async with asyncio.timeout(120):
        for start in range(0, TOTAL, BATCH):
            results = await asyncio.gather(
                *(client.send(Tardy(n=i), timeout=TIMEOUT) for i in range(start, start + BATCH)),
                return_exceptions=True,
            )
            timed_out += sum(isinstance(r, RequestTimeout) for r in results)
            assert len(client.pending) == 0
    assert timed_out >= TOTAL * 0.99  # a few may be answered in time on a fast run
    assert len(client.pending) == 0
    stats = server.stats
    with contextlib.suppress(TimeoutError):  # the last handlers sleep on
        await wait_until(lambda: stats["requests_handled"] + stats["requests_failed"] >= TOTAL, 30)
    # The handlers ran (the premise: work that outlives its caller's deadline)...
    handled = stats["requests_handled"]
    assert handled >= TOTAL // 2
    # ...and each of their answers, coming after its caller gave up, is counted as late
    # and dropped, never matched: the pending map stays empty.
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: client.pending.late_replies >= handled, timeout=30)
    assert client.pending.late_replies >= handled
    assert len(client.pending) == 0
    # The deadline heap is compacted as it goes: it never holds more than a few batches.
    assert len(client.pending._heap) <= 2 * BATCH + 1024

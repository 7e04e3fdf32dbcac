"""The pending map does not leak: 100,000 requests that time out leave nothing behind."""

from __future__ import annotations

import asyncio

import msgspec
from conftest import MakeNode, parts, wait_until

from catga_zmq import Request, RequestTimeout

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
    client = make_node("client", breaker_threshold=1_000_000)  # its highest: never opens here

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
            assert client.stats().pending == 0
    assert timed_out >= TOTAL * 0.99  # a few may be answered in time on a fast run
    # The server cancels each handler at the deadline its caller sent, and answers
    # TIMEOUT: an answer that comes after the caller gave up is counted and dropped.
    await wait_until(lambda: server.stats().running == 0, timeout=30)
    await asyncio.sleep(0.2)
    assert client.stats().pending == 0
    # Failed at the deadline, or (read after it, on a loaded loop) expired unstarted.
    stats = server.stats()
    assert stats.requests_failed + stats.requests_expired >= timed_out * 0.99
    assert server.stats().requests_handled <= TOTAL - timed_out
    # The deadline heap is compacted as it goes: it never holds more than a few batches.
    assert len(parts(client).requester.pending._heap) <= 2 * BATCH + 1024

"""Edge cases of send() and aclose() that once went wrong."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from conftest import MakeNode, member, wait_until

from catga_zmq import HandlerError, Node, NodeStatus, Request, ValidationFailed
from catga_zmq._node import State


class Ran(msgspec.Struct):
    by: str


class Nested(Request[Ran]):
    """Not idempotent; its handler sends to a node that does not exist."""

    __wire_name__ = "edge.Nested"


class TypeA(Request[Ran]):
    __wire_name__ = "edge.TypeA"


class TypeB(Request[Ran]):
    __wire_name__ = "edge.TypeB"


class Quit(Request[str]):
    __wire_name__ = "edge.Quit"


async def test_a_handler_failing_on_a_nested_send_does_not_run_twice(make_node: MakeNode) -> None:
    runs: list[str] = []
    servers = [make_node(f"s{i}") for i in range(2)]
    for server in servers:
        server.handler(_nested_on(server, runs), message_type=Nested)
    caller = make_node("c")
    for node in (*servers, caller):
        await node.start()
    await caller.wait_for_peers(2, handles=Nested)
    with pytest.raises(HandlerError) as info:
        await caller.send(Nested(), timeout=3)
    assert info.value.error_type == "NoNodes"
    assert len(runs) == 1, runs  # ran once; its failure is the handler's, not "not run"


def _nested_on(server: Node, runs: list[str]) -> Callable[[Nested], Awaitable[Ran]]:
    async def handle(req: Nested) -> Ran:
        runs.append(server.node_id)
        # Fails with NoNodes: a "not run" error, but of the handler's own send.
        await server.send(TypeA(), node="nowhere", timeout=0.5)
        return Ran(server.node_id)

    return handle


async def test_each_type_has_its_own_round_robin(make_node: MakeNode) -> None:
    servers = [make_node(f"s{i}") for i in range(2)]
    for server in servers:
        server.handler(_answer_as(server.node_id), message_type=TypeA)
        server.handler(_answer_as(server.node_id), message_type=TypeB)
    caller = make_node("c")
    for node in (*servers, caller):
        await node.start()
    await caller.wait_for_peers(2, handles=TypeB)
    spread: Counter[tuple[str, str]] = Counter()
    for _ in range(50):  # alternating types must not each stick to one node
        spread["A", (await caller.send(TypeA())).by] += 1
        spread["B", (await caller.send(TypeB())).by] += 1
    assert spread == {("A", "s0"): 25, ("A", "s1"): 25, ("B", "s0"): 25, ("B", "s1"): 25}


def _answer_as(node_id: str) -> Callable[[Request[Ran]], Ran]:
    def answer(req: Request[Ran]) -> Ran:
        return Ran(node_id)

    return answer


@pytest.mark.parametrize("timeout", [math.inf, math.nan, 0.0, -1.0, 1e12])
async def test_unusable_timeouts_are_refused_and_leave_nothing_pending(
    make_node: MakeNode, timeout: float
) -> None:
    a = make_node("a")
    await a.start()
    with pytest.raises(ValidationFailed, match="timeout"):
        await a.send(TypeA(), timeout=timeout)
    assert a.stats().pending == 0


async def test_a_handler_may_close_its_own_node(make_node: MakeNode) -> None:
    server, caller = make_node("s"), make_node("c")
    closing: list[asyncio.Task[None]] = []

    @server.handler
    async def quit_(req: Quit) -> str:
        closing.append(asyncio.get_running_loop().create_task(server.aclose()))
        await asyncio.sleep(0)
        return "bye"

    await server.start()
    await caller.start()
    await caller.wait_for_peers(1, handles=Quit)
    assert await caller.send(Quit(), timeout=3) == "bye"
    async with asyncio.timeout(10):
        await closing[0]
    assert server.state is State.CLOSED
    await wait_until(lambda: member(caller, "s").status is NodeStatus.LEFT)


async def test_a_cancelled_aclose_still_closes_the_node(make_node: MakeNode) -> None:
    server = make_node("s", drain_timeout=5.0)

    @server.handler
    async def slow(req: TypeA) -> Ran:
        await asyncio.sleep(3)
        return Ran("s")

    caller = make_node("c")
    await server.start()
    await caller.start()
    await caller.wait_for_peers(1, handles=TypeA)
    in_flight = asyncio.create_task(caller.send(TypeA(), timeout=5))
    await wait_until(lambda: server.stats().running == 1)
    closing = asyncio.create_task(server.aclose())
    await asyncio.sleep(0.1)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert server.state is State.CLOSED
    async with asyncio.timeout(5):
        await server.aclose()  # idempotent, returns at once
    in_flight.cancel()

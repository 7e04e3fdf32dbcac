"""What send() and publish() accept: a bad argument fails at the call, typed, and costs
no node anything (nothing is sent, its circuit stays closed)."""

from __future__ import annotations

import asyncio
import contextvars
import re

import pytest
from conftest import MakeNode, member, wait_until

from catga_zmq import (
    Event,
    Node,
    Request,
    SerializationFailed,
    ValidationFailed,
)
from catga_zmq._node import current_trace
from catga_zmq.resilience import CircuitState

#: More bad calls than breaker_threshold (5): had they counted, the circuit would open.
CALLS = 6


class Echo(Request[str]):
    """Answered with the name of the node that ran it."""

    __wire_name__ = "args.Echo"
    text: str = ""
    number: int = 0


class Keyed(Request[str]):
    __wire_name__ = "args.Keyed"
    __routing_key__ = "user"
    user: str = ""


class Said(Event):
    __wire_name__ = "args.Said"
    text: str = ""
    number: int = 0


def _answer_as(node: Node) -> None:
    async def echo(req: Echo) -> str:
        return node.node_id

    async def keyed(req: Keyed) -> str:
        return node.node_id

    node.handler(echo, message_type=Echo)
    node.handler(keyed, message_type=Keyed)


async def _servers(make_node: MakeNode, n: int = 1) -> tuple[Node, list[Node]]:
    """A caller routing by consistent hash, and ``n`` nodes that answer Echo and Keyed."""
    servers = [make_node(f"s{i}") for i in range(n)]
    for server in servers:
        _answer_as(server)
    caller = make_node("c", routing="consistent_hash")
    for node in (*servers, caller):
        await node.start()
    await caller.wait_for_peers(n, handles=Keyed)
    return caller, servers


async def _assert_untouched(caller: Node, server: Node) -> None:
    """``server`` got nothing from the bad calls and ``caller`` holds nothing against it.

    A good request after them is answered, and one connection keeps its order: a frame
    sent by a bad call would have arrived (and been rejected or run) before it.
    """
    assert await caller.send(Echo(), node=server.node_id, timeout=10) == server.node_id
    stats = server.stats()
    assert (stats.frames_rejected, stats.requests_handled) == (0, 1)
    assert member(caller, server.node_id).circuit is CircuitState.CLOSED
    assert caller.stats().requests_sent == 1


# the message --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Echo(text="\ud800"), "text"),
        (Echo(number=2**64), "number"),
        (Echo(number=-(2**63) - 1), "number"),
    ],
)
async def test_a_message_field_msgpack_cannot_hold_is_a_serialization_failure(
    make_node: MakeNode, message: Request[str], field: str
) -> None:
    caller, (server,) = await _servers(make_node)
    name = type(message).__wire_name__
    for _ in range(CALLS):
        with pytest.raises(
            SerializationFailed, match=re.escape(f"{name} could not be encoded: field '{field}'")
        ):
            await caller.send(message, timeout=2)
    await _assert_untouched(caller, server)


async def test_a_message_for_a_local_handler_is_checked_as_for_a_remote_one(
    make_node: MakeNode,
) -> None:
    caller = make_node("c")
    _answer_as(caller)
    await caller.start()
    with pytest.raises(SerializationFailed, match=r"args\.Echo could not be encoded"):
        await caller.send(Echo(text="\ud800"), node="c", timeout=2)
    with pytest.raises(SerializationFailed, match=r"args\.Echo could not be encoded"):
        await caller.send(Echo(number=2**64), node="c", timeout=2)
    assert caller.stats().requests_handled == 0


# publish ------------------------------------------------------------------------------


async def _subscribed(make_node: MakeNode) -> tuple[Node, Node, list[Said]]:
    """A publisher and a subscriber that has had its first event from it."""
    publisher, subscriber = make_node("p"), make_node("sub")
    got: list[Said] = []

    @subscriber.subscribe
    async def on(evt: Said) -> None:
        got.append(evt)

    await publisher.start()
    await subscriber.start()
    await publisher.wait_for_peers(1)
    async with asyncio.timeout(10):
        for _ in range(100):  # until the SUB's topic reached the PUB
            await publisher.publish(Said("warm-up"))
            await asyncio.sleep(0.05)
            if got:
                break
    assert got, "no event reached the subscriber"
    return publisher, subscriber, got


async def _assert_nothing_lost(publisher: Node, subscriber: Node, got: list[Said]) -> None:
    """The next good event arrives, with no gap counted and nothing bad before it."""
    await publisher.publish(Said("after"))
    await wait_until(lambda: any(e.text == "after" for e in got), timeout=10)
    assert {e.text for e in got} == {"warm-up", "after"}
    stats = subscriber.stats()
    assert (stats.events_lost, stats.frames_rejected) == (0, 0)


@pytest.mark.parametrize(
    ("event", "field"), [(Said(text="\ud800"), "text"), (Said(number=2**64), "number")]
)
async def test_publishing_a_field_msgpack_cannot_hold_is_a_serialization_failure(
    make_node: MakeNode, event: Said, field: str
) -> None:
    publisher, subscriber, got = await _subscribed(make_node)
    published = publisher.stats().events_published
    with pytest.raises(
        SerializationFailed, match=re.escape(f"args.Said could not be encoded: field '{field}'")
    ):
        await publisher.publish(event)
    assert publisher.stats().events_published == published
    await _assert_nothing_lost(publisher, subscriber, got)


@pytest.mark.parametrize(("trace", "named"), [("\ud800", "trace_id"), (123, "current_trace")])
async def test_publishing_under_a_bad_current_trace_is_refused_without_a_gap(
    make_node: MakeNode, trace: object, named: str
) -> None:
    publisher, subscriber, got = await _subscribed(make_node)

    async def bad_publish() -> None:
        current_trace.set(trace)  # type: ignore[arg-type]
        with pytest.raises(ValidationFailed, match=named):
            await publisher.publish(Said("bad"))

    await asyncio.create_task(bad_publish(), context=contextvars.copy_context())
    await _assert_nothing_lost(publisher, subscriber, got)

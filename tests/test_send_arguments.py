"""What send() and publish() accept: a bad argument fails at the call, typed, and costs
no node anything (nothing is sent, its circuit stays closed)."""

from __future__ import annotations

import asyncio
import contextvars
import re
from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import MakeNode, member, wait_until

from catga_zmq import (
    Context,
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


class Traced(Request[str]):
    """Answered with the trace id its handler saw."""

    __wire_name__ = "args.Traced"


class BadReply(Request[str]):
    """Answered with a str msgpack cannot hold."""

    __wire_name__ = "args.BadReply"


class Said(Event):
    __wire_name__ = "args.Said"
    text: str = ""
    number: int = 0


def _answer_as(node: Node) -> None:
    async def echo(req: Echo) -> str:
        return node.node_id

    async def keyed(req: Keyed) -> str:
        return node.node_id

    async def traced(req: Traced, ctx: Context) -> str:
        return ctx.trace_id

    node.handler(echo, message_type=Echo)
    node.handler(keyed, message_type=Keyed)

    async def bad_reply(req: BadReply) -> str:
        return "\ud800"

    node.handler(traced, message_type=Traced)
    node.handler(bad_reply, message_type=BadReply)


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


async def _assert_untouched(caller: Node, server: Node, handled: int = 0) -> None:
    """``server`` got nothing from the bad calls (but ``handled`` good ones) and
    ``caller`` holds nothing against it.

    A good request after them is answered, and one connection keeps its order: a frame
    sent by a bad call would have arrived (and been rejected or run) before it.
    """
    assert await caller.send(Echo(), node=server.node_id, timeout=10) == server.node_id
    stats = server.stats()
    assert (stats.frames_rejected, stats.requests_handled) == (0, handled + 1)
    assert member(caller, server.node_id).circuit is CircuitState.CLOSED
    assert caller.stats().requests_sent == handled + 1


# trace ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("trace_id", [123, b"00-abc-01", ["x"]])
async def test_a_trace_id_that_is_not_a_str_is_refused(
    make_node: MakeNode, trace_id: object
) -> None:
    caller, (server,) = await _servers(make_node)
    for _ in range(CALLS):
        with pytest.raises(ValidationFailed, match="trace_id"):
            await caller.send(Echo(), trace_id=trace_id, timeout=2)  # type: ignore[arg-type]
    await _assert_untouched(caller, server)


async def test_a_trace_id_with_a_lone_surrogate_is_refused(make_node: MakeNode) -> None:
    caller, (server,) = await _servers(make_node)
    for _ in range(CALLS):
        with pytest.raises(ValidationFailed, match="trace_id"):
            await caller.send(Echo(), trace_id="00-\ud800-01", timeout=2)
    await _assert_untouched(caller, server)


@pytest.mark.parametrize("length", [55, 128, 129, 4096, 100_000])
async def test_a_trace_id_send_takes_is_one_the_receiver_takes(
    make_node: MakeNode, length: int
) -> None:
    # The sender's bound is the receiver's Header's (protocol.header_max_length): a trace
    # id fails at the call or arrives whole, never is a header dropped unanswered there.
    caller, (server,) = await _servers(make_node)
    trace = "t" * length
    answered = 0
    for _ in range(CALLS):
        try:
            got = await caller.send(Traced(), trace_id=trace, timeout=5)
        except ValidationFailed as exc:
            assert "trace_id" in str(exc)
        else:
            assert got == trace
            answered += 1
    assert answered in (0, CALLS)
    await _assert_untouched(caller, server, handled=answered)


async def test_a_current_trace_that_is_not_a_str_is_refused(make_node: MakeNode) -> None:
    caller, (server,) = await _servers(make_node)

    async def bad_calls() -> None:
        current_trace.set(123)  # type: ignore[arg-type]
        for _ in range(CALLS):
            with pytest.raises(ValidationFailed, match="current_trace"):
                await caller.send(Echo(), timeout=2)

    # In a context of its own: the test's context keeps its trace.
    await asyncio.create_task(bad_calls(), context=contextvars.copy_context())
    await _assert_untouched(caller, server)


# keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"user-7", ("user", 7), 7.0, True])
async def test_a_key_of_another_type_than_str_or_int_is_refused(
    make_node: MakeNode, key: object
) -> None:
    caller, (server,) = await _servers(make_node)
    for _ in range(CALLS):
        with pytest.raises(ValidationFailed, match="key must be a str or an int"):
            await caller.send(Echo(), key=key, timeout=2)  # type: ignore[arg-type]
    await _assert_untouched(caller, server)


async def test_an_int_key_routes_as_its_decimal_string(make_node: MakeNode) -> None:
    caller, _ = await _servers(make_node, 3)
    spread: set[str] = set()
    for i in range(30):
        by_int = await caller.send(Echo(), key=i, timeout=10)  # type: ignore[arg-type]
        assert by_int == await caller.send(Echo(), key=str(i), timeout=10)
        assert by_int == await caller.send(Keyed(user=str(i)), timeout=10)
        spread.add(by_int)
    assert len(spread) > 1  # the int did hash: not every key on one node


async def test_a_key_with_a_lone_surrogate_is_hashed_like_any_str(make_node: MakeNode) -> None:
    # A key is only hashed, never sent: any str has its place on the ring.
    caller, _ = await _servers(make_node, 3)
    keys = [f"user-\udc80{i}" for i in range(20)]
    first = [await caller.send(Echo(), key=key, timeout=10) for key in keys]
    again = [await caller.send(Echo(), key=key, timeout=10) for key in keys]
    assert first == again
    assert len(set(first)) > 1


# other arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["5", Decimal("5"), True, [1]])
async def test_a_timeout_that_is_not_a_number_is_refused(
    make_node: MakeNode, timeout: object
) -> None:
    caller, (server,) = await _servers(make_node)
    for _ in range(CALLS):
        with pytest.raises(ValidationFailed, match="timeout must be a number of seconds"):
            await caller.send(Echo(), timeout=timeout)  # type: ignore[arg-type]
    await _assert_untouched(caller, server)


async def test_a_timeout_of_any_real_number_is_taken(make_node: MakeNode) -> None:
    caller, (server,) = await _servers(make_node)
    assert await caller.send(Echo(), timeout=Fraction(10)) == server.node_id  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed, match="timeout must be a number of seconds"):
        await caller.send(Echo(), timeout=Fraction(10**400))  # type: ignore[arg-type]


@pytest.mark.parametrize("node", [0, b"s0"])
async def test_a_node_that_is_not_a_str_is_refused(make_node: MakeNode, node: object) -> None:
    caller, (server,) = await _servers(make_node)
    for _ in range(CALLS):
        with pytest.raises(ValidationFailed, match="node must be a node id"):
            await caller.send(Echo(), node=node, timeout=2)  # type: ignore[arg-type]
    await _assert_untouched(caller, server)


# the message --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (Echo(text="\ud800"), "text"),
        (Echo(number=2**64), "number"),
        (Echo(number=-(2**63) - 1), "number"),
        (Keyed(user="\ud800"), "user"),  # its routing key too
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


async def test_a_reply_msgpack_cannot_hold_is_a_serialization_failure(
    make_node: MakeNode,
) -> None:
    caller, (server,) = await _servers(make_node)
    _answer_as(caller)  # after start: only for the local call below
    for target in (server.node_id, "c"):
        with pytest.raises(SerializationFailed, match=r"the reply to args\.BadReply"):
            await caller.send(BadReply(), node=target, timeout=5)
    assert server.stats().requests_failed == 1
    assert member(caller, server.node_id).circuit is CircuitState.CLOSED


# publish ------------------------------------------------------------------------------


async def _subscribed(
    make_node: MakeNode, traces: list[str] | None = None
) -> tuple[Node, Node, list[Said]]:
    """A publisher and a subscriber that has had its first event from it (and puts the
    trace id of each in ``traces``)."""
    publisher, subscriber = make_node("p"), make_node("sub")
    got: list[Said] = []

    @subscriber.subscribe
    async def on(evt: Said, ctx: Context) -> None:
        got.append(evt)
        if traces is not None:
            traces.append(ctx.trace_id)

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


@pytest.mark.parametrize("length", [55, 128, 129, 4096, 100_000])
async def test_a_current_trace_publish_takes_is_one_the_receiver_takes(
    make_node: MakeNode, length: int
) -> None:
    traces: list[str] = []
    publisher, subscriber, got = await _subscribed(make_node, traces)
    trace = "t" * length

    async def publish() -> bool:
        current_trace.set(trace)
        try:
            await publisher.publish(Said("traced"))
        except ValidationFailed as exc:
            assert "current_trace" in str(exc)
            return False
        return True

    if await asyncio.create_task(publish(), context=contextvars.copy_context()):
        await wait_until(lambda: any(e.text == "traced" for e in got), timeout=10)
        assert traces[-1] == trace
    else:
        await _assert_nothing_lost(publisher, subscriber, got)
    assert subscriber.stats().frames_rejected == 0

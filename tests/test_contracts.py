"""Contracts that once had holes, end to end on real loopback sockets.

Membership is decided by heartbeats, not by discovery records; a draining peer stays
draining until it says otherwise; a local call keeps the contract of a remote one; the
caller's own ``max_in_flight`` is no node's overload; an explicit ``node=`` send leaves
the circuit breaker alone; a request over its target's ``max_message_size`` is refused
before it is sent; and the errors of a timeout and of a node not running have names.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import msgspec
import pytest
import zmq
from conftest import PATIENT, MakeNode, member, wait_until

from catga_zmq import (
    MemoryDiscovery,
    MemoryHub,
    Node,
    NodeClosed,
    NodeNotStarted,
    NodeStatus,
    NoNodes,
    Overloaded,
    Request,
    RequestTimeout,
    SerializationFailed,
    ValidationFailed,
)
from catga_zmq.protocol import HEARTBEAT_TOPIC, HeartbeatBody, decode_heartbeat
from catga_zmq.resilience import CircuitState

MIB = 1024 * 1024
#: The longest a held request waits for the test to let go of it (s): a test that fails
#: half way must not leave handlers running past the fixture's close.
HOLD_LIMIT = 10.0


class User(msgspec.Struct):
    id: str
    name: str


class GetUser(Request[User]):
    id: str
    tags: list[str] = msgspec.field(default_factory=list)


class Count(Request[int]):
    n: Annotated[int, msgspec.Meta(ge=0)]


class Hold(Request[str]):
    """Answered with ``str(which)`` once the test lets go of ``which``; 0 at once."""

    which: int = 0


class Blob(Request[int]):
    """Answered with the size of ``data`` after ``pause`` s."""

    data: bytes = b""
    pause: float = 0.0


class Holds:
    """``node``'s handler of ``Hold``: which requests started, and letting them go."""

    def __init__(self, node: Node) -> None:
        self.started: set[int] = set()
        self._go: dict[int, asyncio.Event] = {}

        @node.handler
        async def hold(req: Hold) -> str:
            self.started.add(req.which)
            if req.which:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event(req.which).wait(), HOLD_LIMIT)
            return str(req.which)

    def _event(self, which: int) -> asyncio.Event:
        return self._go.setdefault(which, asyncio.Event())

    def release(self, *which: int) -> None:
        for w in which:
            self._event(w).set()

    def release_all(self) -> None:
        self.release(*self.started)


def circuit_of(caller: Node, node_id: str) -> CircuitState:
    return member(caller, node_id).circuit


# membership by heartbeats ---------------------------------------------------------------------


async def test_a_withdrawn_discovery_record_leaves_a_heartbeating_peer_alive(
    make_node: MakeNode, hub: MemoryHub
) -> None:
    """A removed record only stops greetings: with 1 s heartbeats the peer is neither
    marked LEFT nor cut off (its SUB socket kept), and it still serves."""
    slow = {"heartbeat_interval": 1.0, "suspect_after": 3.5, "faulted_after": 8.0}
    records = MemoryDiscovery(hub)
    b = make_node("b", discovery=records, **slow)
    Holds(b)
    c = make_node("c", **slow)
    await b.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Hold)

    await records.unregister()  # b's record is withdrawn; b runs on
    assert all(entry.node_id != "b" for entry in hub.entries.values())
    heard = member(c, "b").last_heartbeat
    loop = asyncio.get_running_loop()
    seen: set[NodeStatus] = set()
    end = loop.time() + 3.5  # three heartbeats and more
    while loop.time() < end:
        seen.add(member(c, "b").status)
        await asyncio.sleep(0.05)
    assert seen == {NodeStatus.ALIVE}
    # Its heartbeats still arrive: the subscription to it was kept.
    assert member(c, "b").last_heartbeat >= heard + 2.0
    assert await c.send(Hold(), timeout=5) == "0"


# a draining peer's status ---------------------------------------------------------------------


async def test_a_draining_peer_heard_from_after_silence_is_draining_not_alive(
    make_node: MakeNode,
) -> None:
    b = make_node("b", drain_timeout=30.0)  # the drain waits for the held handlers
    held = Holds(b)
    # SUSPECT after 0.5 s of silence, and no FAULTED (which would end the requests to
    # it) within the test.
    c = make_node("c", suspect_after=0.5, faulted_after=30.0, acceptable_pause=5.0)
    await b.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Hold)
    first = asyncio.create_task(c.send(Hold(which=1), timeout=30))
    second = asyncio.create_task(c.send(Hold(which=2), timeout=30))
    closing: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: held.started == {1, 2})
        closing = asyncio.create_task(b.aclose())  # announces DRAINING, waits for both
        await wait_until(lambda: member(c, "b").status is NodeStatus.DRAINING)

        # b falls silent while draining: its heartbeat loop stops (no public call does
        # that; its own drain stops it only once its handlers are done).
        beat = [t for t in asyncio.all_tasks() if t.get_name() == "catga-b-heartbeat"]
        assert len(beat) == 1
        beat[0].cancel()
        await wait_until(lambda: member(c, "b").status is NodeStatus.SUSPECT, timeout=10)

        held.release(1)
        assert await first == "1"  # one frame from b: the reply, no heartbeat
        assert member(c, "b").status is NodeStatus.DRAINING
        with pytest.raises(NoNodes):  # routing does not choose it
            await c.send(Hold(), timeout=5)

        held.release(2)
        assert await second == "2"
        await closing
    finally:
        held.release_all()
        await asyncio.gather(first, second, return_exceptions=True)
        if closing is not None:
            await closing


# one contract for local and remote calls ------------------------------------------------------


async def test_a_local_call_keeps_the_contract_of_a_remote_one(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")
    received: list[GetUser] = []

    @a.handler
    async def get_user(req: GetUser) -> User:
        received.append(req)
        req.tags.append("seen by the handler")
        if req.id == "wrong":
            return {"id": req.id}  # type: ignore[return-value]  # not a User
        return User(id=req.id, name="Ada")

    @a.handler
    async def count(req: Count) -> int:
        return req.n

    await a.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=GetUser)

    # A reply of the wrong type fails the same way on both paths.
    with pytest.raises(SerializationFailed) as remote:
        await c.send(GetUser(id="wrong"), timeout=5)
    assert remote.value.node == "a"
    before = a.stats()
    with pytest.raises(SerializationFailed) as local:
        await a.send(GetUser(id="wrong"), timeout=5)
    assert local.value.node == "a"

    # The handler receives its own copy, as a remote handler its decoded one.
    original = GetUser(id="7", tags=["from the caller"])
    assert await a.send(original, timeout=5) == User(id="7", name="Ada")
    assert received[-1] is not original
    assert original.tags == ["from the caller"]
    assert received[-1].tags == ["from the caller", "seen by the handler"]

    # Local calls count in the handler node's stats, as remote ones: the handler's side
    # answered both (the wrong type is found by the caller, on either path).
    after = a.stats()
    assert after.requests_handled == before.requests_handled + 2
    assert after.requests_failed == before.requests_failed

    # A field constraint the caller broke is caught on both paths (a Struct does not
    # check constraints when it is made, only when it is decoded).
    for caller in (c, a):
        with pytest.raises(ValidationFailed) as invalid:
            await caller.send(Count(n=-1), timeout=5)
        assert invalid.value.node == "a"
        assert ">= 0" in invalid.value.message


# the caller's own limit -----------------------------------------------------------------------


async def test_the_callers_own_max_in_flight_fails_at_once(make_node: MakeNode) -> None:
    a = make_node("a")
    held = Holds(a)
    c = make_node("c", max_in_flight=2, request_timeout=5.0)
    await a.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Hold)
    waiting = [asyncio.create_task(c.send(Hold(which=w))) for w in (1, 2)]
    try:
        await wait_until(lambda: held.started == {1, 2})
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(Overloaded) as refused:
            await c.send(Hold(which=3))
        took = loop.time() - began
        # Not retried nor backed off: no other node would do better.
        assert took < 0.1, f"took {took:.3f} s"
        assert "max_in_flight" in refused.value.message
        assert not refused.value.retryable
        assert refused.value.node == "c"  # the caller's limit, not a's
        assert held.started == {1, 2}  # a got nothing more
        assert circuit_of(c, "a") is CircuitState.CLOSED
        held.release(1, 2)
        assert await asyncio.gather(*waiting) == ["1", "2"]
    finally:
        held.release_all()
        await asyncio.gather(*waiting, return_exceptions=True)


# explicit sends and the breaker ---------------------------------------------------------------


async def test_an_explicit_send_gives_the_breaker_no_verdict(make_node: MakeNode) -> None:
    a = make_node("a", **PATIENT)
    held = Holds(a)
    c = make_node("c", breaker_threshold=2, breaker_cooldown=0.5, **PATIENT)
    await a.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Hold)
    probe: asyncio.Task[str] | None = None
    try:
        for w in (11, 12):  # two timeouts open the circuit
            with pytest.raises(RequestTimeout):
                await c.send(Hold(which=w), timeout=0.2)
        assert circuit_of(c, "a") is CircuitState.OPEN
        await asyncio.sleep(0.6)  # the cooldown ends: the next routed request is the probe

        probe = asyncio.create_task(c.send(Hold(which=1), timeout=1.0))
        await wait_until(lambda: 1 in held.started)
        assert circuit_of(c, "a") is CircuitState.HALF_OPEN

        assert await c.send(Hold(), node="a", timeout=5) == "0"  # past the breaker
        assert circuit_of(c, "a") is CircuitState.HALF_OPEN  # and no verdict on it
        with pytest.raises(NoNodes):  # the probe's slot is still taken
            await c.send(Hold(), timeout=1)

        # The probe decides: it times out, and the circuit opens again.
        with pytest.raises(RequestTimeout):
            await probe
        assert circuit_of(c, "a") is CircuitState.OPEN
    finally:
        held.release_all()
        if probe is not None:
            await asyncio.gather(probe, return_exceptions=True)


# the target's message size limit --------------------------------------------------------------


async def next_heartbeat(
    sub: zmq.Socket[bytes], node_id: str, timeout: float = 5.0
) -> HeartbeatBody:
    """``node_id``'s next heartbeat read from ``sub`` (polled: the nodes of this test
    share the event loop)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.01)
                continue
            beat = decode_heartbeat(frames[2])
            if beat.node_id == node_id:
                return beat


async def test_a_request_over_the_targets_limit_is_refused_before_it_is_sent(
    make_node: MakeNode, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    a = make_node("a", max_message_size=MIB, **PATIENT)
    sizes: list[int] = []

    @a.handler
    async def blob(req: Blob) -> int:
        sizes.append(len(req.data))
        await asyncio.sleep(req.pause)
        return len(req.data)

    c = make_node("c", max_message_size=32 * MIB, **PATIENT)
    await a.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Blob)
    small = [
        asyncio.create_task(c.send(Blob(data=b"x" * 100, pause=0.3), timeout=5)) for _ in range(4)
    ]
    try:
        await wait_until(lambda: len(sizes) == 4)
        with pytest.raises(SerializationFailed) as refused:
            await c.send(Blob(data=bytes(2 * MIB)), timeout=5)
        assert refused.value.node == "a"
        assert f"max_message_size {MIB}" in refused.value.message
        # The connection to a survived: what was in flight on it is answered.
        assert await asyncio.gather(*small) == [100] * 4
    finally:
        await asyncio.gather(*small, return_exceptions=True)
    assert sizes == [100] * 4  # the large one never reached a
    assert circuit_of(c, "a") is CircuitState.CLOSED
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await c.send(Blob(data=b"y"), timeout=5) == 1
    assert loop.time() - began < 1.0

    # Each node advertises its limit in its heartbeats.
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
    sub.connect(a.pub_endpoint)
    try:
        assert (await next_heartbeat(sub, "a")).max_message_size == MIB
    finally:
        sub.close(0)


# named errors ---------------------------------------------------------------------------------


async def test_a_timeout_is_a_timeout_error_and_a_node_not_running_says_why(
    make_node: MakeNode,
) -> None:
    a = make_node("a")
    held = Holds(a)
    c = make_node("c")
    fresh = make_node("fresh")
    await a.start()
    await c.start()
    await c.wait_for_peers(1, timeout=10, handles=Hold)
    try:
        for caller, which in ((c, 1), (a, 2)):  # remote, then local
            with pytest.raises(TimeoutError) as timed_out:  # as `except TimeoutError:` does
                await caller.send(Hold(which=which), timeout=0.2)
            assert isinstance(timed_out.value, RequestTimeout)
    finally:
        held.release_all()

    with pytest.raises(NodeNotStarted):
        await fresh.send(Hold(), timeout=1)
    await c.aclose()
    with pytest.raises(NodeClosed):
        await c.send(Hold(), timeout=1)

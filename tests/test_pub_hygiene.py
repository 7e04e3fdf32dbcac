"""Who may speak for a node on PUB/SUB, in plaintext too: a node is heard only on the PUB
it announced. Each PUB has its own SUB in a node, so a frame's publisher is known.

The forger is a raw PUB socket the node subscribes to (announced through the test's
MemoryHub, see ``_forge.py``); the members it forges for are real nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import MakeNode, member, parts, wait_until

from catga_zmq import Event, MemoryDiscovery, MemoryHub, Node, NodeStatus, Ping, TransportFailed
from catga_zmq.protocol import HEARTBEAT_TOPIC, PROTOCOL_VERSION, Header, Kind
from catga_zmq.testing import FAST_TIMINGS
from catga_zmq.transport import LOOP_MESSAGES, Transport

_enc = msgspec.msgpack.encode

#: The members under attack must stay ALIVE on their own heartbeats while the forger
#: works, on a loaded 2-core machine too: a second of silence before SUSPECT.
STEADY: dict[str, Any] = {"suspect_after": 1.0, "faulted_after": 2.0}


class Noted(Event):
    __wire_name__ = "hygiene.Noted"
    n: int


NOTED_TOPIC = Noted.__wire_name__.encode() + b"\x00"


def header(kind: Kind, source: str, rid: int = 1, type_name: str = "") -> bytes:
    return _enc(Header(PROTOCOL_VERSION, int(kind), rid, type_name, source, 2000))


forger = raw_peer_fixture(RawPeer)


async def heard(node: Node, f: RawPeer) -> None:
    """Until ``node`` has the forger as a member: its SUB to the forger's PUB reads."""
    await f.announce()
    frame = [HEARTBEAT_TOPIC, header(Kind.HB, f.node_id), _enc(f.heartbeat_body())]
    await f.publish_until(lambda: f.node_id in {m.node_id for m in node.members()}, [frame])


async def publish_for(f: RawPeer, frames: list[list[bytes]], rounds: int = 25) -> None:
    """Publish ``frames`` ``rounds`` times, 20 ms apart (the forger's SUB is live)."""
    for _ in range(rounds):
        for frame in frames:
            f.pub.send_multipart(frame)
        await asyncio.sleep(0.02)


async def two_nodes(make_node: MakeNode, **settings: Any) -> tuple[Node, Node]:
    a, b = make_node("a", **settings), make_node("b")
    await a.start()
    await b.start()
    await wait_until(lambda: _is(a, "b", NodeStatus.ALIVE), timeout=10)
    return a, b


def _is(node: Node, node_id: str, status: NodeStatus) -> bool:
    return any(m.node_id == node_id and m.status is status for m in node.members())


def silence(node: Node) -> None:
    """Stop ``node``'s heartbeats (and its BYE): it goes on running, publishing included."""
    parts(node).heartbeats.send = lambda kind=Kind.HB: None


# heartbeats and BYEs ------------------------------------------------------------------


async def test_a_forged_heartbeat_for_a_live_member_does_not_replace_it(
    make_node: MakeNode, forger: Callable[[Node], RawPeer]
) -> None:
    a, b = await two_nodes(make_node, **STEADY)
    f = forger(a)
    await heard(a, f)
    later = member(a, "b").incarnation + 10**12  # a "restart" of b, at the forger's
    own_pub = f.heartbeat_body(node_id="b", incarnation=later, endpoint=f.endpoint)
    # Consistent with where it is read (it names the forger's PUB), or naming b's PUB.
    copied_pub = f.heartbeat_body(
        node_id="b", incarnation=later, endpoint=f.endpoint, pub_endpoint=b.pub_endpoint
    )
    rejected = a.stats().frames_rejected
    await publish_for(
        f, [[HEARTBEAT_TOPIC, header(Kind.HB, "b"), _enc(body)] for body in (own_pub, copied_pub)]
    )
    seen = member(a, "b")
    assert (seen.endpoint, seen.pub_endpoint, seen.status) == (
        b.endpoint,
        b.pub_endpoint,
        NodeStatus.ALIVE,
    )
    assert seen.incarnation < later
    assert a.stats().frames_rejected >= rejected + 10  # each forged heartbeat counted
    assert (await a.send(Ping(), node="b", timeout=5)).node_id == "b"


async def test_a_forged_bye_for_a_live_member_does_not_mark_it_left(
    make_node: MakeNode, forger: Callable[[Node], RawPeer]
) -> None:
    a, b = await two_nodes(make_node, **STEADY)
    f = forger(a)
    await heard(a, f)
    incarnation = member(a, "b").incarnation
    byes = [
        [HEARTBEAT_TOPIC, header(Kind.BYE, "b"), _enc(body)]
        for body in (
            f.heartbeat_body(node_id="b", incarnation=incarnation, status="left"),
            f.heartbeat_body(
                node_id="b",
                incarnation=incarnation,
                status="left",
                endpoint=b.endpoint,
                pub_endpoint=b.pub_endpoint,
            ),
        )
    ]
    rejected = a.stats().frames_rejected
    await publish_for(f, byes)
    assert member(a, "b").status is NodeStatus.ALIVE
    assert a.stats().frames_rejected >= rejected + 10


async def test_a_new_node_is_taken_only_from_the_pub_it_names(
    make_node: MakeNode, forger: Callable[[Node], RawPeer]
) -> None:
    a, b = await two_nodes(make_node)
    f = forger(a)
    await heard(a, f)
    # A node announces its own PUB: one that names b's, read from the forger's, is not.
    body = f.heartbeat_body(node_id="stray", pub_endpoint=b.pub_endpoint)
    rejected = a.stats().frames_rejected
    await publish_for(f, [[HEARTBEAT_TOPIC, header(Kind.HB, "stray"), _enc(body)]])
    assert "stray" not in {m.node_id for m in a.members()}
    assert a.stats().frames_rejected >= rejected + 10


async def test_a_node_restarted_at_new_ports_replaces_its_silent_old_entry(
    make_node: MakeNode, hub: MemoryHub
) -> None:
    # Not a forgery: its old life's entry is live a little longer (no BYE came), then
    # the new life, heard on the PUB it names, takes its place.
    a, b = await two_nodes(make_node)
    silence(b)  # dies without a BYE
    await b.aclose()
    b2 = Node("b", cluster=a.options.cluster, discovery=MemoryDiscovery(hub), **FAST_TIMINGS)
    try:
        await b2.start()
        assert b2.pub_endpoint != b.pub_endpoint
        await wait_until(
            lambda: _is(a, "b", NodeStatus.ALIVE) and member(a, "b").endpoint == b2.endpoint,
            timeout=10,
        )
        assert member(a, "b").pub_endpoint == b2.pub_endpoint
    finally:
        await b2.aclose()


# events as proof of life -----------------------------------------------------------------


async def test_events_prove_a_member_alive_only_from_its_own_pub(
    make_node: MakeNode, forger: Callable[[Node], RawPeer]
) -> None:
    a = make_node("a", **STEADY)
    got: list[int] = []

    @a.subscribe
    async def on_noted(event: Noted) -> None:
        got.append(event.n)

    b = make_node("b")
    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=10)
    f = forger(a)
    await heard(a, f)
    silence(b)
    # The forger's PUB publishes events that name b as their source: b goes SUSPECT.
    n = 0
    async with asyncio.timeout(20):
        while member(a, "b").status is NodeStatus.ALIVE:
            n += 1
            f.pub.send_multipart(
                [NOTED_TOPIC, header(Kind.EVT, "b", n, Noted.__wire_name__), _enc(Noted(n))]
            )
            await asyncio.sleep(0.02)
    assert member(a, "b").status in (NodeStatus.SUSPECT, NodeStatus.FAULTED)
    assert got == []  # they name a member but are not from its PUB: dropped
    # b's own events, from its own PUB, bring it back and keep it ALIVE (no heartbeat).
    async with asyncio.timeout(10):
        while member(a, "b").status is not NodeStatus.ALIVE:
            await b.publish(Noted(-1))
            await asyncio.sleep(0.02)
    stop = time.monotonic() + 3.0  # past suspect_after and faulted_after
    while time.monotonic() < stop:
        await b.publish(Noted(-2))
        await asyncio.sleep(0.02)
        assert member(a, "b").status is NodeStatus.ALIVE
    assert -2 in got


# the SUB sockets' bound ----------------------------------------------------------------


async def test_sub_sockets_are_bounded_by_max_peers_and_max_addresses(
    make_node: MakeNode,
) -> None:
    # One SUB a publisher: past max_peers + max_addresses of them, subscribe_to says
    # so, and the sockets the DEALERs need are still there.
    a = make_node("a", max_peers=1, max_addresses=2, discovery=None)
    await a.start()
    transport = parts(a).transport
    pubs = [f"tcp://127.0.0.1:{port}" for port in range(40301, 40304)]
    for pub in pubs:
        transport.subscribe_to(pub)
    with pytest.raises(TransportFailed) as info:
        transport.subscribe_to("tcp://127.0.0.1:40304")
    assert "max_addresses" in info.value.message
    assert set(transport.subscribed) == set(pubs)
    transport.unsubscribe_from(pubs[0])
    assert pubs[0] not in transport.subscribed
    transport.subscribe_to("tcp://127.0.0.1:40304")  # room again
    assert (await a.send(Ping(), node="a", timeout=5)).node_id == "a"


# the loop's budget --------------------------------------------------------------------

PUBLISHERS = 16  # each reader reads up to READ_BATCH a callback: 16 of them, 4x the budget
FLOOD_EACH = 2_000  # messages each publisher floods
FLOOD_TIMEOUT = 60.0  # s for the whole flood to be read (a loaded machine)


async def test_the_sub_sockets_share_one_loop_budget(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """A flood from several publishers, all queued before reading starts: a 0 s timer
    still ticks between every ``LOOP_MESSAGES`` or so messages, not between every
    ``LOOP_MESSAGES`` a SUB (one budget for all readers, SUBs included)."""
    loop = asyncio.get_running_loop()
    transport = Transport("t", max_message_size=1 << 20, hwm=10 * FLOOD_EACH)
    read: dict[str, int] = {}
    transport.on_broadcast = lambda frames, pub: read.__setitem__(pub, read.get(pub, 0) + 1)
    pubs: list[zmq.Socket[bytes]] = []
    try:
        transport.bind("127.0.0.1", 0, 0, "")
        transport.set_topics({b""}, set())
        for _ in range(PUBLISHERS):
            pub = zctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, 0)
            pubs.append(pub)
            transport.subscribe_to(f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}")
        async with asyncio.timeout(10):  # every SUB connected: a probe of each is read
            while len(read) < PUBLISHERS:
                for pub in pubs:
                    pub.send(b"probe")
                await asyncio.sleep(0.02)
        read.clear()
        for pub in pubs:
            for i in range(FLOOD_EACH):
                pub.send(i.to_bytes(4, "little"))
        # The loop held on purpose: libzmq's I/O thread queues the flood meanwhile.
        time.sleep(1.0)  # noqa: ASYNC251
        total = PUBLISHERS * FLOOD_EACH
        ticks: list[int] = []
        done = loop.create_future()
        deadline = time.monotonic() + FLOOD_TIMEOUT

        def tick() -> None:
            ticks.append(sum(read.values()))
            if ticks[-1] >= total or time.monotonic() > deadline:
                done.set_result(None)
            else:
                loop.call_soon(tick)

        loop.call_soon(tick)
        await asyncio.wait_for(done, FLOOD_TIMEOUT)
    finally:
        for pub in pubs:
            pub.close(0)
        transport.close()
    assert sum(read.values()) == total, f"only {read} of {FLOOD_EACH} each were read"
    most = max(b - a for a, b in itertools.pairwise(ticks))
    # One budget per iteration; a tick may also see what an iteration left over of the
    # previous one's budget, hence up to two.
    assert most <= 2 * LOOP_MESSAGES, f"{most} messages read between two ticks"

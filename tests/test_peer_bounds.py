"""Sockets and membership under invented peers: bounded, expiring, never passed on.

Heartbeats are forged on a raw PUB socket that the node subscribes to (announced through
the test's MemoryHub), greetings (``Info`` with a ``caller``) on a raw DEALER. Nothing
listens at the invented endpoints: the node's DEALERs to them never connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import MakeNode, member, parts, unbatch, wait_until

from catga_zmq import (
    Info,
    MemoryHub,
    Node,
    NodeStatus,
    Ping,
    Request,
    TransportFailed,
)
from catga_zmq.membership import Membership, Peer
from catga_zmq.protocol import (
    HEARTBEAT_TOPIC,
    PROTOCOL_VERSION,
    Header,
    Kind,
    decode_header,
    encode_batch,
)
from catga_zmq.system import NodeInfo, PeerAddress

_enc = msgspec.msgpack.encode


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nowhere() -> str:
    return f"tcp://127.0.0.1:{closed_port()}"


def header(kind: Kind, source: str, rid: int = 1, type_name: str = "", version: int = 0) -> bytes:
    return _enc(Header(version or PROTOCOL_VERSION, int(kind), rid, type_name, source, 2000))


class Forger(RawPeer):
    """A raw peer 'forger' that publishes heartbeats of nodes it invents."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], hub: MemoryHub, cluster: str) -> None:
        super().__init__(zctx, hub, cluster, node_id="forger")

    def heartbeat(self, node_id: str, endpoint: str) -> list[bytes]:
        body = self.heartbeat_body(node_id=node_id, endpoint=endpoint)
        return [HEARTBEAT_TOPIC, header(Kind.HB, node_id), _enc(body)]


forger = raw_peer_fixture(Forger)


async def join_invented(node: Node, forger: Forger, node_id: str) -> str:
    """Forge heartbeats of ``node_id`` until ``node`` has it as a member; its endpoint."""
    endpoint = nowhere()
    async with asyncio.timeout(10):
        while node_id not in {m.node_id for m in node.members()}:
            forger.pub.send_multipart(forger.heartbeat(node_id, endpoint))
            await asyncio.sleep(0.02)
    return endpoint


@contextlib.asynccontextmanager
async def invented_router(
    node: Node, forger: Forger, zctx: zmq.Context[zmq.Socket[bytes]], node_id: str
) -> AsyncIterator[tuple[zmq.Socket[bytes], bytes]]:
    """An invented member ``node_id`` whose ROUTER is real, so that what it sends
    reaches ``node``'s DEALER: the ROUTER and the identity of that DEALER."""
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    call: asyncio.Task[Any] | None = None
    try:
        async with asyncio.timeout(10):
            while node_id not in {m.node_id for m in node.members()}:
                forger.pub.send_multipart(forger.heartbeat(node_id, endpoint))
                await asyncio.sleep(0.02)
        # One request of the node's tells the ROUTER the identity of its DEALER.
        call = asyncio.create_task(node.send(Ping(), node=node_id, timeout=20))
        async with asyncio.timeout(10):
            while not router.poll(0):
                forger.pub.send_multipart(forger.heartbeat(node_id, endpoint))
                await asyncio.sleep(0.02)
        yield router, router.recv_multipart()[0]
    finally:
        if call is not None:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        router.close(0)


def greeting(rid: int, caller: PeerAddress | None) -> list[bytes]:
    return [header(Kind.REQ, "raw", rid, Info.__wire_name__), _enc(Info(caller=caller))]


def invented_address(node: Node, node_id: str) -> PeerAddress:
    return PeerAddress(node_id, nowhere(), nowhere(), node.options.cluster, PROTOCOL_VERSION)


async def answers(sock: zmq.Socket[bytes], count: int, timeout: float = 10.0) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            if sock.poll(0):
                got.extend(unbatch(sock.recv_multipart()))
            else:
                await asyncio.sleep(0.005)
    return got


async def info_of(node: Node, sock: zmq.Socket[bytes], rid: int) -> NodeInfo:
    sock.send_multipart(greeting(rid, None))
    [[raw_header, body]] = await answers(sock, 1)
    assert decode_header(raw_header).kind == int(Kind.REP)
    return msgspec.msgpack.decode(body, type=NodeInfo)


# bounds --------------------------------------------------------------------------------


async def test_heartbeats_of_new_nodes_past_max_peers_are_dropped_and_counted(
    make_node: MakeNode, forger: Callable[[Node], Forger]
) -> None:
    a = make_node("a", max_peers=4)
    await a.start()
    f = forger(a)
    await f.announce()
    await join_invented(a, f, "n0")  # the node hears the forger: the control
    frames = [f.heartbeat(f"n{i}", nowhere()) for i in range(1, 20)]
    rejected = a.stats().frames_rejected
    async with asyncio.timeout(10):
        while a.stats().frames_rejected < rejected + 15:
            for frame in frames:
                f.pub.send_multipart(frame)
            await asyncio.sleep(0.02)
    others = [m for m in a.members() if not m.local]
    assert len(others) == 4, [m.node_id for m in others]
    # One DEALER per member and per address not yet joined (the forger's): no more.
    assert len(parts(a).transport.dealers) <= 2 * 4
    assert a.healthy


async def test_greetings_past_max_addresses_are_not_kept_and_info_still_answers(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a = make_node("a", max_peers=3, max_addresses=5)
    await a.start()
    sock = dealer_to(a)
    for rid in range(1, 31):
        # Distinct endpoints (a closed port picked twice would be one address claimed
        # twice, not two): nothing listens on them, loopback only.
        address = PeerAddress(
            f"x{rid}",
            f"tcp://127.0.0.1:{40100 + rid}",
            f"tcp://127.0.0.1:{40200 + rid}",
            a.options.cluster,
            PROTOCOL_VERSION,
        )
        sock.send_multipart(greeting(rid, address))
    got = await answers(sock, 30)
    assert [decode_header(h).kind for h, _ in got] == [int(Kind.REP)] * 30
    gossip = parts(a).gossip
    assert len(gossip.addresses) <= 5
    assert len(parts(a).transport.dealers) <= 3
    assert len(parts(a).transport.subscribed) <= 5
    assert a.stats().frames_rejected >= 25  # each address refused is counted


async def test_a_known_address_greeting_with_new_pub_endpoints_keeps_one_subscription(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    # The same endpoint, claimed again and again with another PUB endpoint each time:
    # the old subscription goes when the new one comes, or each greeting adds one more.
    a = make_node("a", max_peers=3, max_addresses=5)
    await a.start()
    sock = dealer_to(a)
    before = set(parts(a).transport.subscribed)
    endpoint = nowhere()
    pubs = [f"tcp://127.0.0.1:{port}" for port in range(40001, 40031)]
    for rid, pub in enumerate(pubs, start=1):
        address = PeerAddress("x", endpoint, pub, a.options.cluster, PROTOCOL_VERSION)
        sock.send_multipart(greeting(rid, address))
    await answers(sock, len(pubs))
    assert parts(a).transport.subscribed - before == {pubs[-1]}
    assert parts(a).gossip.addresses[endpoint].pub_endpoint == pubs[-1]


async def test_running_out_of_sockets_is_transport_failed_and_info_still_answers(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    # The context takes 2 * 1 * 3 + (1 + 1) + 64 sockets (DEALERs with their monitors,
    # SUBs, the node's own); fill them past the bound.
    a = make_node("a", max_peers=1, max_addresses=1, discovery=None)
    await a.start()
    transport = parts(a).transport
    with pytest.raises(TransportFailed) as info:
        for _ in range(100):
            transport.dealer(nowhere())
    assert "too many sockets" in info.value.message
    assert "max_peers" in info.value.message
    with pytest.raises(TransportFailed):
        transport.dealer(nowhere())  # and again: never a raw zmq.ZMQError
    # A greeting whose caller needs a socket that cannot be had is still answered.
    sock = dealer_to(a)
    sock.send_multipart(greeting(1, invented_address(a, "late")))
    [[raw_header, body]] = await answers(sock, 1)
    assert decode_header(raw_header).kind == int(Kind.REP), body
    assert (await a.send(Ping(), node="a", timeout=2)).node_id == "a"


async def test_a_faulted_member_gives_way_to_a_new_node_when_the_table_is_full(
    make_node: MakeNode, forger: Callable[[Node], Forger]
) -> None:
    a = make_node("a", max_peers=2)
    await a.start()
    parts(a).membership.forget_after = 1000.0  # s: not forgotten meanwhile by age
    f = forger(a)
    await f.announce()
    await join_invented(a, f, "n0")
    await join_invented(a, f, "n1")
    await wait_until(
        lambda: all(m.status is NodeStatus.FAULTED for m in a.members() if not m.local),
        timeout=10,
    )
    await join_invented(a, f, "n2")
    assert len([m for m in a.members() if not m.local]) == 2
    assert member(a, "n2").status is NodeStatus.ALIVE


async def test_a_discovered_node_takes_the_place_of_a_claimed_address_when_the_book_is_full(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a = make_node("a", max_addresses=3)
    await a.start()
    sock = dealer_to(a)
    for rid in range(1, 6):
        sock.send_multipart(greeting(rid, invented_address(a, f"x{rid}")))
    await answers(sock, 5)
    assert len(parts(a).gossip.addresses) == 3
    b = make_node("b")
    await b.start()
    await wait_until(lambda: "b" in {m.node_id for m in a.members()}, timeout=10)
    assert b.endpoint in parts(a).gossip.addresses
    assert len(parts(a).gossip.addresses) <= 3


# expiry ---------------------------------------------------------------------------------


async def test_a_greeted_address_that_never_heartbeats_is_forgotten(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a = make_node("a", discovery=None)
    await a.start()
    parts(a).gossip.proof_time = 0.5  # s; 30 s by default
    caller = invented_address(a, "ghost")
    sock = dealer_to(a)
    sock.send_multipart(greeting(1, caller))
    await answers(sock, 1)
    assert caller.endpoint in parts(a).gossip.addresses  # kept on probation
    assert caller.pub_endpoint in parts(a).transport.subscribed
    await wait_until(lambda: caller.endpoint not in parts(a).gossip.addresses, timeout=10)
    assert caller.endpoint not in parts(a).transport.dealers
    assert caller.pub_endpoint not in parts(a).transport.subscribed


async def test_a_greeted_address_whose_node_heartbeats_stays(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
) -> None:
    """The control of the test above: a node that proves itself is kept."""
    a = make_node("a")
    await a.start()
    parts(a).gossip.proof_time = 0.5
    f = forger(a)
    await f.announce()
    endpoint = await join_invented(a, f, "real")
    sock = dealer_to(a)
    sock.send_multipart(
        greeting(
            1, PeerAddress("real", endpoint, f.pub_endpoint, a.options.cluster, PROTOCOL_VERSION)
        )
    )
    await answers(sock, 1)
    async with asyncio.timeout(5):
        for _ in range(20):  # keep it ALIVE past its probation
            f.pub.send_multipart(f.heartbeat("real", endpoint))
            await asyncio.sleep(0.05)
    assert endpoint in parts(a).gossip.addresses
    assert endpoint in parts(a).transport.dealers


async def test_an_invented_member_that_goes_silent_is_forgotten_soon(
    make_node: MakeNode, forger: Callable[[Node], Forger]
) -> None:
    a = make_node("a")  # faulted_after 0.6 s: forgotten after 12 times that, 7.2 s
    await a.start()
    f = forger(a)
    await f.announce()
    endpoint = await join_invented(a, f, "fake")
    assert endpoint in parts(a).transport.dealers
    await wait_until(lambda: "fake" not in {m.node_id for m in a.members()}, timeout=30)
    assert endpoint not in parts(a).transport.dealers


def test_members_are_forgotten_after_a_minute_by_default() -> None:
    me = Peer("me", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 1, local=True)
    assert Membership(me, suspect_after=1.25, faulted_after=5.0).forget_after == 60.0


# gossip ---------------------------------------------------------------------------------


async def test_info_passes_on_only_members_and_addresses_that_answered(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a, b = make_node("a"), make_node("b")
    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=5)
    sock = dealer_to(a)
    claimed = invented_address(a, "claimed")
    sock.send_multipart(greeting(1, claimed))
    await answers(sock, 1)
    assert claimed.endpoint in parts(a).gossip.addresses  # heard of, and connected to
    passed_on = {p.endpoint: p.node_id for p in (await info_of(a, sock, 2)).peers}
    assert passed_on == {b.endpoint: "b"}


# proof of life --------------------------------------------------------------------------


async def test_rejected_frames_naming_a_silent_member_do_not_keep_it_alive(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
) -> None:
    a = make_node("a")
    await a.start()
    f = forger(a)
    await f.announce()
    await join_invented(a, f, "victim")
    sock = dealer_to(a)
    wrong_version = [header(Kind.REQ, "victim", 1, Ping.__wire_name__, version=99), b"\x80"]
    wrong_kind = [header(Kind.HB, "victim"), b"\x80"]
    batch: list[tuple[Any, Any]] = [
        (msgspec.Raw(header(Kind.REP, "victim", 3)), msgspec.Raw(b"\x80")),
    ]
    # Its heartbeats stop; frames that fail their checks keep naming it (SUSPECT after
    # 0.3 s of silence, FAULTED after 0.6 s).
    async with asyncio.timeout(15):
        while member(a, "victim").status is NodeStatus.ALIVE:
            sock.send_multipart(wrong_version)
            sock.send_multipart(wrong_kind)
            sock.send_multipart([encode_batch(batch)])
            await asyncio.sleep(0.02)
    assert member(a, "victim").status in (NodeStatus.SUSPECT, NodeStatus.FAULTED)
    assert a.stats().frames_rejected >= 3


async def test_replies_to_no_request_sent_to_it_do_not_keep_a_silent_member_alive(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    a = make_node("a")
    await a.start()
    f = forger(a)
    await f.announce()
    async with invented_router(a, f, zctx, "victim") as (router, ident):
        # Its heartbeats stop; replies naming it keep coming, to no request of a's.
        async with asyncio.timeout(15):
            while member(a, "victim").status is NodeStatus.ALIVE:
                router.send_multipart([ident, header(Kind.REP, "victim", 10**9), b"\xc0"])
                await asyncio.sleep(0.02)
        assert member(a, "victim").status in (NodeStatus.SUSPECT, NodeStatus.FAULTED)


async def test_well_formed_requests_naming_a_silent_member_do_not_keep_it_alive(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
) -> None:
    # Anyone can connect to a ROUTER and name any node as its source: a frozen node's
    # name on well-formed requests from elsewhere must not keep it ALIVE.
    a = make_node("a")
    await a.start()
    f = forger(a)
    await f.announce()
    await join_invented(a, f, "victim")
    sock = dealer_to(a)
    ping = [header(Kind.REQ, "victim", 1, Ping.__wire_name__), _enc(Ping())]
    async with asyncio.timeout(15):
        while member(a, "victim").status is NodeStatus.ALIVE:
            sock.send_multipart(ping)
            await asyncio.sleep(0.02)
            while sock.poll(0):
                sock.recv_multipart()  # answered all the same: the request was valid
    assert member(a, "victim").status in (NodeStatus.SUSPECT, NodeStatus.FAULTED)


class Slow(Request["Served"]):
    __wire_name__ = "bounds.Slow"
    seconds: float


class Served(msgspec.Struct):
    by: str


async def test_replies_read_on_another_connection_answer_nothing(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # A peer that a node has a DEALER to (an invented member here) sprays replies that
    # name the real server, for every request id: none may answer the request that went
    # to the real server, which must get the real server's reply.
    a = make_node("a")
    b = make_node("b")

    @b.handler
    async def slow(req: Slow) -> Served:
        await asyncio.sleep(req.seconds)
        return Served("b")

    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=10, handles=Slow)
    f = forger(a)
    await f.announce()
    async with invented_router(a, f, zctx, "liar") as (router, ident):
        call = asyncio.create_task(a.send(Slow(seconds=1.0), node="b", timeout=10))
        await asyncio.sleep(0.2)  # the request to b is in flight
        forged = _enc(Served("liar"))
        for rid in range(1, 501):
            router.send_multipart([ident, header(Kind.REP, "b", rid), forged])
        assert await call == Served("b")
        assert a.stats().frames_rejected >= 1  # the forged answer to it, at least

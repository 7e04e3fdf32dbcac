"""Frames over a node's ``max_message_size`` on real sockets.

libzmq drops the connection of a peer that sends one (and every request on it); the
receiver counts the drop, and a caller whose connection drops does not blame the node
once per request it had in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import MakeNode, member, parts, wait_until

from catga_zmq import CatgaError, Node, NodeStatus, Request, SerializationFailed, TransportFailed
from catga_zmq.config import DEFAULT_MAX_MESSAGE_SIZE
from catga_zmq.protocol import HEARTBEAT_TOPIC, Kind, encode_header
from catga_zmq.resilience import CircuitState
from catga_zmq.transport import send_frames

MIB = 1024 * 1024
_enc = msgspec.msgpack.encode


class OEcho(msgspec.Struct):
    text: str


class OSay(Request[OEcho]):
    text: str


def _request(text: str, rid: int) -> list[bytes]:
    header = encode_header(int(Kind.REQ), rid, OSay.__wire_name__, "raw", 5000)
    return [header, msgspec.msgpack.encode(OSay(text))]


async def _echo_node(make_node: MakeNode, node_id: str, **settings: object) -> Node:
    node = make_node(node_id, **settings)

    @node.handler
    async def say(req: OSay) -> OEcho:
        return OEcho(req.text)

    await node.start()
    return node


async def test_a_frame_over_the_limit_is_counted_and_the_node_serves_on(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="catga_zmq.transport")
    server = await _echo_node(make_node, "server", max_message_size=MIB)
    before = server.stats().connections_dropped
    raw = dealer_to(server)
    raw.send_multipart(_request("x" * (2 * MIB), 1))
    await wait_until(lambda: server.stats().connections_dropped > before, timeout=10)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("max_message_size=1048576" in m for m in warned), warned

    # Other callers are served as before.
    client = await _echo_node(make_node, "client")
    await wait_until(lambda: "server" in {m.node_id for m in client.members()})
    assert await client.send(OSay("still here"), node="server") == OEcho("still here")
    assert server.stats().connections_dropped == before + 1


class OHold(Request[OEcho]):
    """Answered once the test lets the server go on."""

    text: str


async def test_a_dropped_connection_is_one_strike_against_the_node_not_one_per_request(
    make_node: MakeNode,
) -> None:
    server = make_node("server", max_message_size=MIB)
    go_on = asyncio.Event()

    @server.handler
    async def hold(req: OHold) -> OEcho:
        await go_on.wait()
        return OEcho(req.text)

    @server.handler
    async def say(req: OSay) -> OEcho:
        return OEcho(req.text)

    await server.start()
    client = make_node("client", max_message_size=64 * MIB)
    await client.start()
    await wait_until(lambda: "server" in {m.node_id for m in client.members()})
    assert await client.send(OSay("first")) == OEcho("first")

    in_flight = [asyncio.ensure_future(client.send(OHold(str(i)), timeout=30)) for i in range(32)]
    try:
        await wait_until(lambda: server.stats().running == 32, timeout=10)
        dropped = server.stats().connections_dropped
        # A frame the caller's own checks did not stop (they refuse one over the
        # server's advertised limit): written on the client's DEALER as it is.
        sock = parts(client).transport.dealers[server.endpoint].sock
        header = encode_header(int(Kind.REQ), 10**6, OSay.__wire_name__, "client", 5000)
        send_frames(sock, (header, msgspec.msgpack.encode(OSay("x" * (2 * MIB)))))
        results = await asyncio.wait_for(
            asyncio.gather(*in_flight, return_exceptions=True), timeout=10
        )
    finally:
        go_on.set()
        for fut in in_flight:
            fut.cancel()
    assert all(isinstance(r, TransportFailed) and r.delivered for r in results), results
    message = str(results[0])
    assert "the connection to server dropped with this request in flight" in message
    assert "max_message_size=1048576" in message
    assert f"a reply over its own, {64 * MIB}" in message
    assert server.stats().connections_dropped == dropped + 1

    # One strike, not 32: the circuit to the healthy server stays closed.
    assert member(client, "server").circuit is CircuitState.CLOSED
    # The DEALER reconnects on its own (libzmq, 100 ms on); an explicit node= gives no
    # verdict to the breaker while it does.
    async with asyncio.timeout(10):
        while True:
            try:
                await client.send(OSay("back"), node="server", timeout=1)
                break
            except TransportFailed:
                await asyncio.sleep(0.05)
    assert await client.send(OSay("again")) == OEcho("again")
    assert member(client, "server").circuit is CircuitState.CLOSED


raw_peer = raw_peer_fixture(RawPeer)


async def test_a_peer_that_has_not_advertised_its_limit_is_assumed_to_take_the_default(
    make_node: MakeNode, raw_peer: Callable[[Node], RawPeer]
) -> None:
    # A member whose heartbeats carry no max_message_size (an older version): a caller
    # with a larger limit refuses, at the call, what the default limit would drop.
    client = make_node("client", max_message_size=64 * MIB)
    await client.start()
    peer = raw_peer(client)
    await peer.announce()
    body = peer.heartbeat_body(handles=[OSay.__wire_name__])
    assert body.max_message_size == 0
    beat = [HEARTBEAT_TOPIC, encode_header(int(Kind.HB), 0, "", peer.node_id), _enc(body)]
    await peer.publish_until(lambda: peer.node_id in {m.node_id for m in client.members()}, [beat])
    big = OSay("x" * (DEFAULT_MAX_MESSAGE_SIZE + 1))
    with pytest.raises(SerializationFailed, match="default max_message_size 16777216 assumed"):
        await client.send(big, timeout=5)
    assert client.stats().requests_sent == 0
    # What the default takes goes out as before (to a node that never answers).
    with pytest.raises(CatgaError) as caught:
        await client.send(OSay("small"), timeout=0.5)
    assert not isinstance(caught.value, SerializationFailed)


async def test_a_reply_over_the_callers_limit_does_not_cut_it_off_from_the_node(
    make_node: MakeNode,
) -> None:
    # The server takes larger messages than the client: its reply is over the client's
    # limit, and the client's libzmq drops the connection it came on (and, left alone,
    # never connects again: every later request would time out).
    server = make_node("server", max_message_size=64 * MIB)

    @server.handler
    async def say(req: OSay) -> OEcho:
        return OEcho(req.text * (2 * MIB) if req.text == "big" else req.text)

    await server.start()
    client = make_node("client", max_message_size=MIB)
    await client.start()
    await wait_until(lambda: "server" in {m.node_id for m in client.members()})
    with pytest.raises(TransportFailed, match="a reply over its own, 1048576"):
        await client.send(OSay("big"), timeout=5)
    async with asyncio.timeout(10):
        while True:
            try:
                assert await client.send(OSay("back"), node="server", timeout=1) == OEcho("back")
                break
            except (TransportFailed, TimeoutError):
                await asyncio.sleep(0.05)
    assert await client.send(OSay("again"), timeout=5) == OEcho("again")
    assert member(client, "server").circuit is CircuitState.CLOSED


async def test_a_publisher_whose_sub_connection_dropped_is_heard_again(
    make_node: MakeNode, raw_peer: Callable[[Node], RawPeer]
) -> None:
    # One event over the subscriber's limit: libzmq drops the SUB's connection and,
    # after a protocol error, never connects it again. The member's heartbeats stop
    # arriving; once it is SUSPECT the node opens a new SUB to it, and hears it again.
    node = make_node("node", max_message_size=MIB)
    await node.start()
    peer = raw_peer(node)
    await peer.announce()
    beat = [
        HEARTBEAT_TOPIC,
        encode_header(int(Kind.HB), 0, "", peer.node_id),
        _enc(peer.heartbeat_body()),
    ]
    await peer.publish_until(lambda: peer.node_id in {m.node_id for m in node.members()}, [beat])
    assert member(node, peer.node_id).status is NodeStatus.ALIVE
    peer.pub.send_multipart([HEARTBEAT_TOPIC, b"x", b"\x00" * (2 * MIB)])  # over the limit
    went_silent = False
    async with asyncio.timeout(20):
        while True:
            found = [m.status for m in node.members() if m.node_id == peer.node_id]
            status = found[0] if found else None
            went_silent = went_silent or status is not NodeStatus.ALIVE
            if went_silent and status is NodeStatus.ALIVE:
                break
            peer.pub.send_multipart(beat)
            await asyncio.sleep(0.02)
    assert went_silent  # the drop was real: its heartbeats stopped arriving

"""Batching: several requests (or replies) to one peer in one loop iteration share a frame.

Real sockets throughout. What must hold: every request gets its own answer, a bad
record in a batch costs only itself, a batch never exceeds ``max_message_size`` (the
receiver's ZeroMQ would drop the connection), and requests of a batch that could not
be sent fail as "not delivered" so they may go elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import zmq
from conftest import MakeNode, unbatch

from catga_zmq import Node, Request, TransportFailed
from catga_zmq._pending import PendingMap
from catga_zmq.membership import Peer
from catga_zmq.protocol import (
    Kind,
    decode_error,
    decode_header,
    encode_batch,
    encode_header,
)
from catga_zmq.transport import BATCH_RECORDS, Transport


class Doubled(msgspec.Struct):
    n: int
    by: str


class Double(Request[Doubled]):
    n: int
    pad: bytes = b""


def serve_double(node: Node) -> None:
    @node.handler
    async def double(req: Double) -> Doubled:
        return Doubled(req.n * 2, node.node_id)


async def meet(caller: Node, *servers: Node) -> None:
    for node in (caller, *servers):
        await node.start()
    await caller.wait_for_peers(len(servers), handles=Double, timeout=5)


async def test_concurrent_requests_travel_in_batches_and_each_gets_its_own_reply(
    make_node: MakeNode,
) -> None:
    a, c = make_node("a"), make_node("c")
    serve_double(a)
    await meet(c, a)
    before_c, before_a = c.stats().batches_sent, a.stats().batches_sent

    replies = await asyncio.gather(*(c.send(Double(i)) for i in range(500)))

    assert [r.n for r in replies] == [2 * i for i in range(500)]
    assert {r.by for r in replies} == {"a"}
    # 500 sends in one iteration: one goes at once, the rest in full batches.
    assert c.stats().batches_sent - before_c >= 499 // BATCH_RECORDS
    assert a.stats().batches_sent > before_a  # replies were batched too
    assert c.stats().pending == 0
    assert a.stats().requests_handled >= 500


async def test_a_lone_request_is_sent_at_once_not_batched(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")
    serve_double(a)
    await meet(c, a)
    await c.send(Double(0))  # connections up, greetings done
    before_c, before_a = c.stats().batches_sent, a.stats().batches_sent

    for i in range(20):
        assert (await c.send(Double(i))).n == 2 * i

    # One at a time: each request and each reply went alone, without waiting for the
    # end of a loop iteration.
    assert c.stats().batches_sent == before_c
    assert a.stats().batches_sent == before_a


async def test_batches_stay_under_max_message_size(make_node: MakeNode) -> None:
    # Each request is about 1 KiB; a batch of 16 would be 16 KiB, over the 4 KiB limit.
    # A batch over the limit would make the receiver's ZeroMQ drop the connection.
    a, c = make_node("a", max_message_size=4096), make_node("c", max_message_size=4096)
    serve_double(a)
    await meet(c, a)

    replies = await asyncio.gather(*(c.send(Double(i, b"x" * 1000), timeout=5) for i in range(64)))

    assert [r.n for r in replies] == [2 * i for i in range(64)]
    assert c.stats().batches_sent > 0


async def read_replies(sock: zmq.Socket[bytes], count: int) -> dict[int, tuple[int, bytes]]:
    got: dict[int, tuple[int, bytes]] = {}
    async with asyncio.timeout(5):
        while len(got) < count:
            if sock.poll(0):
                for raw_header, body in unbatch(sock.recv_multipart()):
                    header = decode_header(raw_header)
                    got[header.request_id] = (header.kind, body)
            else:
                await asyncio.sleep(0.005)
    return got


def record(rid: int, type_name: str, payload: bytes) -> tuple[msgspec.Raw, msgspec.Raw]:
    header = encode_header(int(Kind.REQ), rid, type_name, "raw", 5000)
    return msgspec.Raw(header), msgspec.Raw(payload)


async def test_a_bad_record_in_a_batch_costs_only_itself(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a = make_node("a")
    serve_double(a)
    await a.start()
    sock = dealer_to(a)
    enc = msgspec.msgpack.encode
    name = Double.__wire_name__
    rejected = a.stats().frames_rejected
    batch = encode_batch(
        [
            record(1, name, enc(Double(21))),
            (msgspec.Raw(enc(["not", "a", "header"])), msgspec.Raw(enc(Double(1)))),
            record(3, "nobody.Handles", enc(Double(1))),
            record(4, name, enc({"n": "not an int"})),
            record(5, name, enc(Double(50))),
        ]
    )
    sock.send_multipart([batch])

    got = await read_replies(sock, 4)

    assert got[1][0] == Kind.REP and msgspec.msgpack.decode(got[1][1], type=Doubled).n == 42
    assert got[3][0] == Kind.ERR and decode_error(got[3][1]).code == "HANDLER_NOT_FOUND"
    assert got[4][0] == Kind.ERR and decode_error(got[4][1]).code == "VALIDATION_FAILED"
    assert got[5][0] == Kind.REP and msgspec.msgpack.decode(got[5][1], type=Doubled).n == 100
    assert a.stats().frames_rejected >= rejected + 2  # the bad header and the bad payload


async def test_a_batch_that_does_not_decode_is_rejected_and_the_node_serves_on(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a, c = make_node("a"), make_node("c")
    serve_double(a)
    await meet(c, a)
    sock = dealer_to(a)
    rejected = a.stats().frames_rejected

    for junk in (b"", b"\xc1", b"\x92\x01", msgspec.msgpack.encode([[1, 2, 3]])):
        sock.send_multipart([junk])

    await asyncio.sleep(0.2)
    assert a.stats().frames_rejected >= rejected + 4
    assert not sock.poll(0)  # nothing to answer: no request id could be read
    assert (await c.send(Double(4))).n == 8


@dataclass
class Wired:
    """A bare ``Transport`` with a DEALER connected to a raw ROUTER ``server``."""

    transport: Transport
    pending: PendingMap
    server: zmq.Socket[bytes]
    endpoint: str
    peer: Peer
    disconnected: list[str]

    def open(self, count: int) -> list[tuple[int, asyncio.Future[Any]]]:
        """``count`` pending requests to ``peer``: (request id, future of the reply)."""
        deadline = asyncio.get_running_loop().time() + 5
        return [
            self.pending.open(self.peer.node_id, False, deadline, "t.Req", self.peer.endpoint)
            for _ in range(count)
        ]


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    pending = PendingMap(asyncio.get_running_loop())
    disconnected: list[str] = []
    transport = Transport("t", max_message_size=1 << 20, hwm=1000)
    transport.on_reply = lambda frames, endpoint: None
    transport.on_disconnect = disconnected.append
    transport.on_unsent = pending.fail_unsent
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
    try:
        transport.dealer(endpoint)
        async with asyncio.timeout(5):
            while not server.poll(0):  # connected once a probe gets through (IMMEDIATE)
                with contextlib.suppress(TransportFailed):
                    transport.send_request(endpoint, b"probe", b"", 0)
                await asyncio.sleep(0.01)  # also a new loop iteration: the batch is flushed
        while server.poll(0):
            server.recv_multipart()
        yield Wired(
            transport, pending, server, endpoint, Peer("srv", endpoint, "", 1), disconnected
        )
    finally:
        transport.close()
        server.close(0)
        ctx.term()


def assert_not_delivered(futures: list[asyncio.Future[Any]]) -> list[TransportFailed]:
    errors = []
    for fut in futures:
        exc = fut.exception()
        assert isinstance(exc, TransportFailed)
        assert exc.delivered is False and exc.retryable is True and exc.node == "srv"
        errors.append(exc)
    return errors


async def test_requests_of_a_batch_that_cannot_be_sent_fail_as_not_delivered(
    wired: Wired,
) -> None:
    opened = wired.open(4)
    for i, (rid, _) in enumerate(opened):
        wired.transport.send_request(wired.endpoint, b"h", b"p", rid, now=i == 0)
    futures = [fut for _, fut in opened]
    # The first (alone in flight) went at once; the other three wait for the end of the
    # iteration. Their DEALER goes away first (as when the peer is dropped).
    wired.transport.dealers[wired.endpoint].close()
    wired.transport.flush()

    assert not futures[0].done()
    assert_not_delivered(futures[1:])
    assert len(wired.pending) == 1


async def test_requests_still_in_the_outbox_when_the_connection_drops_are_not_delivered(
    wired: Wired,
) -> None:
    opened = wired.open(3)
    for rid, _ in opened:
        wired.transport.send_request(wired.endpoint, b"h", b"p", rid, now=False)
    futures = [fut for _, fut in opened]
    # What the connection monitor reports when the peer's process dies.
    event = struct.pack("<HI", int(zmq.EVENT_DISCONNECTED), 0)
    wired.transport.dealers[wired.endpoint]._on_monitor([event, wired.endpoint.encode()])

    assert wired.disconnected == [wired.endpoint]
    errors = assert_not_delivered(futures)
    assert all("before they were sent" in e.message for e in errors)
    assert len(wired.pending) == 0
    wired.transport.flush()  # nothing left to send, nothing fails twice

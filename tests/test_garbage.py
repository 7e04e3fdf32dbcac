"""Malformed frames on real sockets: counted, answered or dropped, and the node keeps serving.

A raw DEALER talks to a node's ROUTER; a raw PUB, announced through the test's
MemoryHub, talks to its SUB. Random input comes from ``random.Random`` with a fixed seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import MakeNode, parts, unbatch, wait_until

from catga_zmq import (
    CatgaError,
    Event,
    Node,
    NodeStatus,
    Ping,
    Request,
    TransportFailed,
)
from catga_zmq.protocol import (
    HEARTBEAT_TOPIC,
    PROTOCOL_VERSION,
    Header,
    HeartbeatBody,
    Kind,
    decode_error,
    decode_header,
    topic_for,
)

SEED = 20240607

_enc = msgspec.msgpack.encode


class GEcho(msgspec.Struct):
    text: str
    by: str


class GSay(Request[GEcho]):
    text: str


class GHappened(Event):
    n: int


def raw_header(
    version: int = PROTOCOL_VERSION,
    kind: int = int(Kind.REQ),
    rid: int = 1,
    type_name: str = "",
    source: str = "raw",
) -> bytes:
    return _enc(Header(version, kind, rid, type_name, source, 2000))


async def server_and_client(make_node: MakeNode) -> tuple[Node, Node, list[int]]:
    a, c = make_node("a"), make_node("c")
    got: list[int] = []

    @a.handler
    async def say(req: GSay) -> GEcho:
        return GEcho(req.text, by="a")

    @a.subscribe
    async def on(evt: GHappened) -> None:
        got.append(evt.n)

    await a.start()
    await c.start()
    await c.wait_for_peers(1, handles=GSay, timeout=5)
    return a, c, got


async def still_serves(a: Node, c: Node) -> None:
    async with asyncio.timeout(5):
        reply = await c.send(GSay("still there?"), timeout=2)
    assert reply == GEcho("still there?", by="a")
    assert a.state == "running"
    assert {m.node_id: m.status for m in c.members()}["a"] is NodeStatus.ALIVE


@pytest.fixture
async def loop_errors(make_node: MakeNode) -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (it should be nothing).

    Depends on ``make_node`` so that it is torn down first: the contexts it keeps may
    hold sockets that must be collected before the nodes' ZeroMQ contexts terminate.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)
    errors.clear()
    with warnings.catch_warnings():
        # Sockets a test left behind are closed by the collector here.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def describe(errors: list[dict[str, Any]]) -> list[str]:
    return [f"{e.get('message')}: {e.get('exception')!r}" for e in errors]


async def replies(sock: zmq.Socket[bytes], count: int, timeout: float = 3.0) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            if sock.poll(0):
                got.extend(unbatch(sock.recv_multipart()))
            else:
                await asyncio.sleep(0.005)
    return got


async def no_more_replies(sock: zmq.Socket[bytes], wait: float = 0.2) -> None:
    await asyncio.sleep(wait)
    assert not sock.poll(0), f"unexpected reply: {sock.recv_multipart()!r}"


# ROUTER ---------------------------------------------------------------------------------


async def test_router_drops_malformed_frames_and_counts_each(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    a, c, _ = await server_and_client(make_node)
    rnd = random.Random(SEED)

    def noise(lo: int = 1, hi: int = 64) -> bytes:
        return rnd.randbytes(rnd.randint(lo, hi))

    good_payload = _enc(GSay("x"))
    dropped: list[list[bytes]] = [
        [noise()],  # 1 frame (2 with the identity)
        [noise(), noise()],  # a header that is not one
        [noise() for _ in range(5)],  # 5 frames
        [b""],
        [b"", b""],
        [b"", b"", b""],
        [raw_header(kind=99, type_name=GSay.__wire_name__), good_payload],  # unknown kind
        [raw_header(kind=int(Kind.REP)), good_payload],  # a reply sent to a ROUTER
        [raw_header(kind=int(Kind.HB)), b""],
        [raw_header(type_name=GSay.__wire_name__), good_payload, b"extra"],  # valid + a frame
        [raw_header(type_name=GSay.__wire_name__)],  # a REQ without payload
        [_enc([1, 1]), good_payload],  # a header too short
        [raw_header()[:-2], good_payload],  # a truncated header
    ]
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    for frames in dropped:
        dealer.send_multipart(frames)
    await wait_until(lambda: a.stats().frames_rejected >= before + len(dropped), timeout=5)
    await no_more_replies(dealer)  # dropped, not answered
    assert a.stats().frames_rejected == before + len(dropped)
    assert a.stats().requests_handled == 0
    await still_serves(a, c)
    assert describe(loop_errors) == []


async def test_router_answers_a_wrong_version_request(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    a, c, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    dealer.send_multipart(
        [
            raw_header(
                version=PROTOCOL_VERSION + 1, rid=41, type_name=GSay.__wire_name__, source="future"
            ),
            _enc(GSay("x")),
        ]
    )
    (reply,) = await replies(dealer, 1)
    assert len(reply) == 2
    header = decode_header(reply[0])
    assert header.kind == Kind.ERR and header.request_id == 41 and header.source == "a"
    err = decode_error(reply[1])
    assert err.code == "PROTOCOL_ERROR"
    assert f"version {PROTOCOL_VERSION + 1}" in err.message
    assert a.stats().frames_rejected == before + 1
    await still_serves(a, c)
    assert describe(loop_errors) == []


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xc1", "SERIALIZATION_FAILED"),  # not msgpack at all
        (b"\x81\xa4text", "SERIALIZATION_FAILED"),  # truncated msgpack
        (_enc({"text": 5}), "VALIDATION_FAILED"),  # msgpack of the wrong type
        (_enc({"other": "x"}), "VALIDATION_FAILED"),  # a required field missing
        (_enc([1, 2, 3]), "VALIDATION_FAILED"),  # an array, not a map
    ],
    ids=["not-msgpack", "truncated", "wrong-type", "missing-field", "array"],
)
async def test_router_answers_an_undecodable_payload(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
    payload: bytes,
    code: str,
) -> None:
    a, c, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    dealer.send_multipart([raw_header(rid=7, type_name=GSay.__wire_name__), payload])
    (reply,) = await replies(dealer, 1)
    header = decode_header(reply[0])
    assert header.kind == Kind.ERR and header.request_id == 7
    err = decode_error(reply[1])
    assert err.code == code
    assert GSay.__wire_name__ in err.message
    assert a.stats().requests_handled == 0
    await still_serves(a, c)
    assert describe(loop_errors) == []


async def test_router_answers_an_unknown_type(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    a, c, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    dealer.send_multipart([raw_header(rid=9, type_name="os.system"), _enc(["rm -rf /"])])
    (reply,) = await replies(dealer, 1)
    assert decode_header(reply[0]).request_id == 9
    assert decode_error(reply[1]).code == "HANDLER_NOT_FOUND"
    await still_serves(a, c)
    assert describe(loop_errors) == []


async def test_router_survives_random_multipart_noise(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    a, c, _ = await server_and_client(make_node)
    rnd = random.Random(SEED)
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    header = raw_header(type_name=GSay.__wire_name__)
    sent = 0
    for _ in range(500):
        kind = rnd.random()
        if kind < 0.4:  # pure noise, 1-6 frames, some empty
            frames = [rnd.randbytes(rnd.choice([0, 1, 8, 100])) for _ in range(rnd.randint(1, 6))]
        elif kind < 0.7:  # a valid header with one byte flipped
            mangled = bytearray(header)
            mangled[rnd.randrange(len(mangled))] ^= 1 << rnd.randrange(8)
            frames = [bytes(mangled), rnd.randbytes(rnd.randint(0, 32))]
        else:  # a valid header cut short
            frames = [header[: rnd.randrange(len(header))], b""]
        dealer.send_multipart(frames)
        sent += 1
    # Everything is rejected or answered; give the node time to read it all.
    await asyncio.sleep(0.3)
    while dealer.poll(0):
        dealer.recv_multipart()
    assert a.stats().frames_rejected > before + sent // 2
    await still_serves(a, c)
    assert describe(loop_errors) == []


#: [1, REQ, 5, <0x80>, "raw", 2000]: well-formed msgpack with an invalid UTF-8 type name.
BAD_UTF8_REQ_HEADER = b"\x96\x01\x01\x05\xa1\x80\xa3raw\xcd\x07\xd0"


async def test_router_rejects_invalid_utf8_in_the_header(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    assert msgspec.msgpack.decode(BAD_UTF8_REQ_HEADER.replace(b"\x80", b"t")) == [
        1,
        1,
        5,
        "t",
        "raw",
        2000,
    ]
    a, c, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    dealer.send_multipart([BAD_UTF8_REQ_HEADER, _enc(GSay("x"))])
    await asyncio.sleep(0.2)
    await still_serves(a, c)
    errors = describe(loop_errors)
    assert errors == []
    assert a.stats().frames_rejected == before + 1


async def test_router_invalid_utf8_in_the_payload_is_answered(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    loop_errors: list[dict[str, Any]],
) -> None:
    a, _c, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    dealer.send_multipart(
        [raw_header(rid=3, type_name=GSay.__wire_name__), b"\x81\xa4text\xa1\x80"]
    )
    try:
        (reply,) = await replies(dealer, 1, timeout=1.0)
    finally:
        errors = describe(loop_errors)
    assert errors == []
    assert decode_error(reply[1]).code in ("SERIALIZATION_FAILED", "VALIDATION_FAILED")


async def test_router_counts_an_undecodable_payload(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    a, _, _ = await server_and_client(make_node)
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    dealer.send_multipart([raw_header(rid=7, type_name=GSay.__wire_name__), b"\xc1"])
    await replies(dealer, 1)
    assert a.stats().frames_rejected == before + 1


# SUB -----------------------------------------------------------------------------------


class EvilPeer(RawPeer):
    """A raw peer 'evil' that says it handles ``GSay``."""

    def heartbeat(self, **changes: Any) -> HeartbeatBody:
        return self.heartbeat_body(**{"handles": [GSay.__wire_name__], **changes})

    async def flood(
        self, node: Node, frames: list[list[bytes]], at_least: int, timeout: float = 5.0
    ) -> None:
        """Publish ``frames`` over and over until ``node`` has rejected ``at_least`` more."""
        target = node.stats().frames_rejected + at_least
        await self.publish_until(lambda: node.stats().frames_rejected >= target, frames, timeout)


evil = raw_peer_fixture(EvilPeer)


async def test_sub_rejects_garbage_broadcasts(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer], loop_errors: list[dict[str, Any]]
) -> None:
    a, c, got = await server_and_client(make_node)
    peer = evil(a)
    await peer.announce()
    rnd = random.Random(SEED)
    hb_body = _enc(peer.heartbeat())
    evt = topic_for(GHappened.__wire_name__)
    frames: list[list[bytes]] = [
        [HEARTBEAT_TOPIC],  # 1 frame
        [HEARTBEAT_TOPIC, rnd.randbytes(20)],  # 2 frames
        [HEARTBEAT_TOPIC, rnd.randbytes(20), rnd.randbytes(20)],  # header is noise
        [HEARTBEAT_TOPIC, *(rnd.randbytes(8) for _ in range(4))],  # 5 frames
        [HEARTBEAT_TOPIC, b"", b""],
        [
            HEARTBEAT_TOPIC,
            raw_header(version=PROTOCOL_VERSION + 1, kind=int(Kind.HB), source="evil"),
            hb_body,
        ],
        [HEARTBEAT_TOPIC, raw_header(kind=99, source="evil"), hb_body],  # unknown kind
        [HEARTBEAT_TOPIC, raw_header(kind=int(Kind.REQ), source="evil"), hb_body],  # REQ on PUB
        [
            HEARTBEAT_TOPIC,
            raw_header(kind=int(Kind.HB), source="evil"),
            rnd.randbytes(30),
        ],  # bad body
        [
            HEARTBEAT_TOPIC,
            raw_header(kind=int(Kind.HB), source="evil"),
            _enc(peer.heartbeat(cluster="other")),
        ],
        [
            evt,
            raw_header(kind=int(Kind.EVT), type_name=GHappened.__wire_name__, source="evil"),
            b"\xc1",
        ],
        [
            evt,
            raw_header(kind=int(Kind.EVT), type_name=GHappened.__wire_name__, source="evil"),
            _enc({"n": "x"}),
        ],
    ]
    await peer.flood(a, frames, at_least=10 * len(frames))
    await still_serves(a, c)
    assert "evil" not in {m.node_id for m in a.members()}  # nothing valid came from it
    assert got == []  # no event was delivered from garbage
    assert a.stats().events_received == 0
    assert describe(loop_errors) == []


async def test_sub_random_noise_on_the_heartbeat_topic(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer], loop_errors: list[dict[str, Any]]
) -> None:
    a, c, _ = await server_and_client(make_node)
    peer = evil(a)
    await peer.announce()
    rnd = random.Random(SEED + 1)
    header = raw_header(kind=int(Kind.HB), source="evil")
    frames = []
    for _ in range(200):
        if rnd.random() < 0.5:
            frames.append(
                [
                    HEARTBEAT_TOPIC,
                    *(rnd.randbytes(rnd.randint(0, 40)) for _ in range(rnd.randint(0, 4))),
                ]
            )
        else:
            frames.append([HEARTBEAT_TOPIC, header, rnd.randbytes(rnd.randint(0, 60))])
    await peer.flood(a, frames, at_least=400)
    await still_serves(a, c)
    assert describe(loop_errors) == []


async def test_sub_valid_heartbeat_from_the_raw_peer_joins_it(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer]
) -> None:
    """The raw PUB is a faithful peer when it speaks the protocol: the garbage tests' control."""
    a, _, _ = await server_and_client(make_node)
    peer = evil(a)
    await peer.announce()
    body = _enc(peer.heartbeat(handles=[]))
    async with asyncio.timeout(5):
        while "evil" not in {m.node_id for m in a.members()}:
            peer.pub.send_multipart(
                [HEARTBEAT_TOPIC, raw_header(kind=int(Kind.HB), source="evil"), body]
            )
            await asyncio.sleep(0.02)
    assert {m.node_id: m.status for m in a.members()}["evil"] is NodeStatus.ALIVE


async def test_send_to_an_unreachable_peer_is_transport_failed(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer]
) -> None:
    _a, c, _ = await server_and_client(make_node)
    peer = evil(c)
    await peer.announce()
    body = _enc(peer.heartbeat())
    async with asyncio.timeout(5):
        while "evil" not in {m.node_id for m in c.members()}:
            peer.pub.send_multipart(
                [HEARTBEAT_TOPIC, raw_header(kind=int(Kind.HB), source="evil"), body]
            )
            await asyncio.sleep(0.02)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(TransportFailed) as info:
            await c.send(GSay("x"), node="evil", timeout=2)
        elapsed = asyncio.get_running_loop().time() - t0
    assert info.value.node == "evil"
    assert info.value.retryable
    # It backs off and retries while the deadline allows, then says why: not a TIMEOUT.
    assert elapsed < 2.0, elapsed
    assert c.stats().pending == 0


async def test_send_to_an_unreachable_peer_leaves_no_unretrieved_future(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer], loop_errors: list[dict[str, Any]]
) -> None:
    _a, c, _ = await server_and_client(make_node)
    peer = evil(c)
    await peer.announce()
    body = _enc(peer.heartbeat())
    async with asyncio.timeout(5):
        while "evil" not in {m.node_id for m in c.members()}:
            peer.pub.send_multipart(
                [HEARTBEAT_TOPIC, raw_header(kind=int(Kind.HB), source="evil"), body]
            )
            await asyncio.sleep(0.02)
        try:
            await c.send(GSay("x"), node="evil", timeout=2)
        except TransportFailed:
            failed = True  # the exception (and the frames it holds) goes at the block's end
    assert failed
    gc.collect()
    assert [e["message"] for e in loop_errors] == []


def reap_leaked_sockets(node: Node) -> int:
    """Close the sockets of ``node``'s ZeroMQ context that its transport no longer knows.

    The bug below leaves a half-built DEALER (and its monitor, still registered with the
    loop) behind; left open, they make ``aclose()`` block for ever in ``ctx.term()``.
    """
    t = parts(node).transport
    known = {id(s) for s in (t.router, t.pub) if s is not None}
    if t._router_monitor is not None:
        known.add(id(t._router_monitor.sock))
    for d in [*t.dealers.values(), *t.subscribers.values()]:
        for s in (getattr(d, "sock", None), getattr(getattr(d, "monitor", None), "sock", None)):
            if s is not None:
                known.add(id(s))
    reaped = 0
    for s in list(t.ctx._sockets):
        if id(s) not in known and not s.closed:
            with contextlib.suppress(Exception):
                node.loop.remove_reader(s.FD)
            s.close(0)
            reaped += 1
    return reaped


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # what leaks must still close
async def test_heartbeat_with_an_unusable_endpoint_is_rejected(
    make_node: MakeNode, evil: Callable[[Node], EvilPeer], loop_errors: list[dict[str, Any]]
) -> None:
    a, c, _ = await server_and_client(make_node)
    peer = evil(c)
    await peer.announce()
    # It handles nothing, so only the explicit send below is routed to it.
    body = _enc(peer.heartbeat(endpoint="not-an-endpoint", handles=[]))
    outcome = "not sent"
    try:
        async with asyncio.timeout(5):
            while not loop_errors and c.stats().frames_rejected == 0:
                peer.pub.send_multipart(
                    [HEARTBEAT_TOPIC, raw_header(kind=int(Kind.HB), source="evil"), body]
                )
                await asyncio.sleep(0.02)
            try:
                await c.send(Ping(), node="evil", timeout=1)
                outcome = "answered"
            except CatgaError as exc:
                outcome = type(exc).__name__
            except zmq.ZMQError as exc:
                outcome = f"raw {exc!r}"
        errors = describe(loop_errors)
        pending = c.stats().pending
        await still_serves(a, c)
    finally:
        loop_errors.clear()
        gc.collect()
        leaked = reap_leaked_sockets(c) + reap_leaked_sockets(a)  # both heard the heartbeat
    assert errors == []
    assert outcome in ("NoNodes", "TransportFailed"), outcome
    assert pending == 0
    assert leaked == 0
    assert c.stats().frames_rejected >= 1

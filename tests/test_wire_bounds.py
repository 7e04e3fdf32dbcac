"""Hostile input on real sockets is counted and bounded: deep nesting, long strings and
forged sequence numbers cost a counted rejection, never a traceback, memory or a lie in
the stats.

A raw DEALER talks to a node's ROUTER; a raw PUB, announced through the test's
MemoryHub, talks to its SUB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import PATIENT, MakeNode, parts, unbatch, wait_until

from catga_zmq import Event, Node, Request
from catga_zmq import _inbound as inbound
from catga_zmq.protocol import (
    HEARTBEAT_TOPIC,
    Kind,
    encode_header,
    topic_for,
)

_enc = msgspec.msgpack.encode

#: Deeper than the interpreter's recursion limit (about 1,000), as one-byte arrays.
DEEP = b"\x91" * 5000 + b"\xc0"


class WEcho(msgspec.Struct):
    text: str


class WSay(Request[WEcho]):
    text: str


async def echo_node(make_node: MakeNode, node_id: str = "a") -> Node:
    a = make_node(node_id)

    @a.handler
    async def say(req: WSay) -> WEcho:
        return WEcho(req.text)

    await a.start()
    return a


def request(text: str, rid: int = 1, source: str = "raw") -> list[bytes]:
    return [encode_header(int(Kind.REQ), rid, WSay.__wire_name__, source, 5000), _enc(WSay(text))]


async def answer(sock: zmq.Socket[bytes], rid: int, timeout: float = 5.0) -> WEcho:
    """The reply to request ``rid`` on a raw DEALER (other replies are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            if sock.poll(0):
                for header, body in unbatch(sock.recv_multipart()):
                    if msgspec.msgpack.decode(header)[2] == rid:
                        return msgspec.msgpack.decode(body, type=WEcho)
            else:
                await asyncio.sleep(0.005)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# Deep nesting ---------------------------------------------------------------------------


async def test_deeply_nested_frames_are_counted_rejections(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await echo_node(make_node)
    dealer = dealer_to(a)
    header = encode_header(int(Kind.REQ), 1, WSay.__wire_name__, "raw", 5000)
    deep_batch = _enc([(msgspec.Raw(header), msgspec.Raw(DEEP))])
    # A valid WSay with one unknown field: decoding skips it, and skipping recurses too.
    deep_payload = b"\x82\xa4text\xa1x\xa4junk" + DEEP

    def dealt_with() -> int:
        # Rejected, counted; or, where msgspec decodes the depth (Python 3.13 gives C
        # code a deeper stack), served: either way no traceback, and the node serves on.
        stats = a.stats()
        return stats.frames_rejected + stats.requests_handled

    before = dealt_with()
    dealer.send(deep_batch)
    dealer.send_multipart([header, deep_payload])
    await wait_until(lambda: dealt_with() >= before + 2, timeout=10)
    dealer.send_multipart(request("after", rid=9))
    assert await answer(dealer, 9) == WEcho("after")
    assert tracebacks(caplog) == []


# Long strings ---------------------------------------------------------------------------

#: Far over every bound, well under max_message_size.
LONG = "x" * (1 << 20)


def longest_line(caplog: pytest.LogCaptureFixture) -> int:
    return max((len(r.getMessage()) for r in caplog.records), default=0)


async def test_oversized_header_strings_are_counted_rejections(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await echo_node(make_node)
    dealer = dealer_to(a)
    payload = _enc(WSay("x"))
    name = WSay.__wire_name__
    headers = [
        encode_header(int(Kind.REQ), 1, name, LONG, 5000),  # source
        encode_header(int(Kind.REQ), 2, name, "raw", 5000, 0, LONG),  # trace id
        encode_header(int(Kind.REQ), 3, name + LONG, "raw", 5000),  # type name
        encode_header(int(Kind.REQ), 4, name, "raw", 5000, 0, "", 0, 0, LONG),  # traceparent
        encode_header(int(Kind.REQ), 5, name, "raw", 5000, 0, "", 0, 0, "", LONG),  # tracestate
    ]
    before = a.stats().frames_rejected
    for header in headers:
        dealer.send_multipart([header, payload])
        dealer.send(_enc([(msgspec.Raw(header), msgspec.Raw(payload))]))
    await wait_until(lambda: a.stats().frames_rejected >= before + 2 * len(headers), timeout=10)
    dealer.send_multipart(request("after", rid=9))
    assert await answer(dealer, 9) == WEcho("after")
    assert a.stats().frames_rejected == before + 2 * len(headers)
    assert longest_line(caplog) < 1000


class RawPub(RawPeer):
    """A raw peer 'evil' whose heartbeats are ready to send."""

    def heartbeat(self, **changes: Any) -> bytes:
        return _enc(self.heartbeat_body(**changes))

    async def until(
        self, done: Callable[[], bool], frames: list[list[bytes]], timeout: float = 10.0
    ) -> None:
        await self.publish_until(done, frames, timeout)


raw_pub = raw_peer_fixture(RawPub)


def hb_header(source: str = "evil", kind: Kind = Kind.HB) -> bytes:
    return encode_header(int(kind), 0, "", source)


async def test_oversized_heartbeat_strings_are_counted_and_logged_short(
    make_node: MakeNode, raw_pub: Callable[[Node], RawPub], caplog: pytest.LogCaptureFixture
) -> None:
    a = await echo_node(make_node)
    peer = raw_pub(a)
    await peer.announce()
    before = a.stats().frames_rejected
    frames = [
        # Of another cluster, with a long node id and cluster name: both were logged whole.
        [HEARTBEAT_TOPIC, hb_header(), peer.heartbeat(node_id=LONG, cluster=LONG)],
        [HEARTBEAT_TOPIC, hb_header(), peer.heartbeat(endpoint="tcp://" + LONG + ":1")],
    ]
    await peer.until(lambda: a.stats().frames_rejected >= before + 20, frames)
    assert "evil" not in {m.node_id for m in a.members()}
    assert longest_line(caplog) < 1000


def test_log_once_table_is_bounded_and_logs_real_problems_after_a_flood(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The table itself (no socket shows it): 6,000 invented 1 KiB peers, then a real one."""
    now = [0.0]
    stats = {"frames_rejected": 0}
    reject = inbound.Rejections(stats, clock=lambda: now[0])
    big = "p" * 1024
    with caplog.at_level(logging.WARNING, logger="catga_zmq.node"):
        for i in range(6000):
            reject(f"{i}{big}", f"problem{big}", f"detail {big}")
        flood_lines = len(caplog.records)
        now[0] += inbound.LOG_WINDOW + 1  # the flood is over
        reject("b", "version", "protocol version 9")
    assert stats["frames_rejected"] == 6001
    assert flood_lines <= inbound.LOG_BURST
    table = reject._logged
    assert len(table) <= inbound.LOG_ONCE_LIMIT
    assert sum(len(p) + len(q) for p, q in table) <= len(table) * (
        inbound.MAX_PEER + inbound.MAX_PROBLEM
    )
    lines = [r.getMessage() for r in caplog.records[flood_lines:]]
    assert any("rejected 5900 more frames" in line for line in lines), lines
    assert any("from b: protocol version 9" in line for line in lines), lines
    assert longest_line(caplog) < 1000


# Event sequence numbers -----------------------------------------------------------------


class WHappened(Event):
    n: int


def event(n: int, seq: int, source: str = "evil") -> list[bytes]:
    name = WHappened.__wire_name__
    return [topic_for(name), encode_header(int(Kind.EVT), seq, name, source), _enc(WHappened(n))]


async def subscriber_with_member(
    make_node: MakeNode, raw_pub: Callable[[Node], RawPub]
) -> tuple[Node, RawPub, list[int]]:
    """Node 'a' subscribed to WHappened, and a raw PUB whose frames 'a' reads: the
    member 'evil' (it heartbeats), whose events may name any sequence numbers and, as
    anyone on PUB/SUB can, any source that is no member."""
    a = make_node("a", **PATIENT)
    got: list[int] = []

    @a.subscribe
    async def on(evt: WHappened) -> None:
        got.append(evt.n)

    await a.start()
    peer = raw_pub(a)
    await peer.announce()
    beat = [HEARTBEAT_TOPIC, hb_header(), peer.heartbeat()]
    await peer.until(lambda: "evil" in {m.node_id for m in a.members()}, [beat])
    # PUB drops what it sends before the SUB has connected: wait for one to arrive.
    await peer.until(lambda: got == [0], [event(0, seq=1)])
    got.clear()
    return a, peer, got


async def test_a_sequence_jump_beyond_reason_is_a_rejection_not_a_loss(
    make_node: MakeNode, raw_pub: Callable[[Node], RawPub]
) -> None:
    a, peer, got = await subscriber_with_member(make_node, raw_pub)  # seq 1 seen
    before = a.stats().frames_rejected
    peer.pub.send_multipart(event(2, seq=2**62))
    await wait_until(lambda: a.stats().frames_rejected > before, timeout=10)
    peer.pub.send_multipart(event(3, seq=3))  # the event of seq 2 was lost
    await wait_until(lambda: 3 in got, timeout=10)
    assert got == [3]
    assert a.stats().events_lost == 1
    assert a.stats().frames_rejected == before + 1


async def test_event_sequences_are_kept_for_members_only(
    make_node: MakeNode, raw_pub: Callable[[Node], RawPub]
) -> None:
    a, peer, got = await subscriber_with_member(make_node, raw_pub)
    forged = [f"forged-{i}" for i in range(2000)]
    # Each invented source: seq 1, then seq 10, which was a gap of 8 for each of them.
    frames = [event(0, seq, source) for source in forged for seq in (1, 10)]
    for f in frames:
        peer.pub.send_multipart(f)
    marker = [event(99, seq=2)]  # as from the member, after the forged ones
    await peer.until(lambda: 99 in got, marker)
    assert a.stats().events_lost == 0
    sources = {source for source, _ in parts(a).events._seen}
    assert sources == {"evil"}

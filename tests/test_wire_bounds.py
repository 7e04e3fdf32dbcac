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

import msgspec
import pytest
import zmq
from conftest import MakeNode, unbatch, wait_until

from catga_zmq import Node, Request
from catga_zmq.protocol import Kind, encode_header

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
    before = a.stats().frames_rejected
    dealer.send(deep_batch)
    dealer.send_multipart([header, deep_payload])
    await wait_until(lambda: a.stats().frames_rejected >= before + 2, timeout=10)
    dealer.send_multipart(request("after", rid=9))
    assert await answer(dealer, 9) == WEcho("after")
    assert tracebacks(caplog) == []

"""Frames over a node's ``max_message_size`` on real sockets.

libzmq drops the connection of a peer that sends one (and every request on it); the
receiver counts the drop, and a caller whose connection drops does not blame the node
once per request it had in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import pytest
import zmq
from conftest import MakeNode, wait_until

from catga_zmq import Node, Request
from catga_zmq.protocol import Kind, encode_header

MIB = 1024 * 1024


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
    server = await _echo_node(make_node, "server", max_message_size=MIB)
    before = server.stats().connections_dropped
    raw = dealer_to(server)
    raw.send_multipart(_request("x" * (2 * MIB), 1))
    await wait_until(lambda: server.stats().connections_dropped > before, timeout=10)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("max_message_size=1048576" in m for m in warned), warned

    # Other callers are served as before.
    client = await _echo_node(make_node, "client")
    await wait_until(lambda: "server" in {m.node_id for m in client.members()})
    assert await client.send(OSay("still here"), node="server") == OEcho("still here")
    assert server.stats().connections_dropped == before + 1

"""The strings and tables of the wire's bodies are bounded: an ERR reply's error, a
heartbeat's metadata and handles, a greeting's address. A frame over a bound is a
counted rejection, never stored; an ERR reply over it still ends its caller's request;
and a node never sends what its peers would refuse (a long exception message is cut).

Raw sockets on loopback play the hostile peers: a PUB announced through the test's
MemoryHub (tests/_forge.py) for heartbeats, a ROUTER behind it for replies, a DEALER
for requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.inspect
import pytest
import zmq
from _forge import RawPeer, raw_peer_fixture
from conftest import PATIENT, MakeNode, member, parts, unbatch

from catga_zmq import ConfigError, HandlerError, Node, ProtocolError, Request
from catga_zmq.protocol import (
    HEARTBEAT_TOPIC,
    MAX_ERROR_MESSAGE,
    MAX_HANDLES,
    PROTOCOL_VERSION,
    TRUNCATED,
    ErrorBody,
    HeartbeatBody,
    Kind,
    encode_header,
    raw_batch_decoder,
)
from catga_zmq.system import Info, NodeInfo, NodeStats, PeerAddress, Pong

_enc = msgspec.msgpack.encode

#: Far over every bound, well under max_message_size.
MIB = 1 << 20


class SEcho(msgspec.Struct):
    text: str


class SSay(Request[SEcho]):
    text: str


def longest_line(caplog: pytest.LogCaptureFixture) -> int:
    return max((len(r.getMessage()) for r in caplog.records), default=0)


# every body decoded from the network is bounded ------------------------------------------

#: Each struct a node decodes from bytes another node (or anyone) sent.
WIRE_STRUCTS = [ErrorBody, HeartbeatBody, PeerAddress, Info, NodeInfo, Pong, NodeStats]


def _unbounded(tp: msgspec.inspect.Type, where: str, seen: set[type]) -> list[str]:
    """The strings, lists and tables in ``tp`` without a max_length."""
    if isinstance(tp, msgspec.inspect.StructType):
        if tp.cls in seen:
            return []
        seen.add(tp.cls)
        return [found for f in tp.fields for found in _unbounded(f.type, f"{where}.{f.name}", seen)]
    if isinstance(tp, msgspec.inspect.UnionType):
        return [found for t in tp.types for found in _unbounded(t, where, seen)]
    if isinstance(tp, msgspec.inspect.StrType):
        return [] if tp.max_length is not None else [where]
    if isinstance(tp, msgspec.inspect.ListType):
        own = [] if tp.max_length is not None else [where]
        return own + _unbounded(tp.item_type, f"{where}[]", seen)
    if isinstance(tp, msgspec.inspect.DictType):
        own = [] if tp.max_length is not None else [where]
        return (
            own
            + _unbounded(tp.key_type, f"{where}.key", seen)
            + _unbounded(tp.value_type, f"{where}[]", seen)
        )
    return []


@pytest.mark.parametrize("cls", WIRE_STRUCTS, ids=lambda c: c.__name__)
def test_every_string_list_and_table_off_the_wire_has_a_bound(cls: type) -> None:
    assert _unbounded(msgspec.inspect.type_info(cls), cls.__name__, set()) == []


# heartbeats ----------------------------------------------------------------------------


class Forger(RawPeer):
    """A raw peer 'evil' that publishes heartbeats, and answers requests on a ROUTER of
    its own (``endpoint``), so that a node can route to it."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], *args: Any) -> None:
        super().__init__(zctx, *args)
        self.router = zctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def beat(self, **changes: Any) -> list[bytes]:
        body = _enc(self.heartbeat_body(**changes))
        return [HEARTBEAT_TOPIC, encode_header(int(Kind.HB), 0, "", self.node_id), body]

    async def aclose(self) -> None:
        self.router.close(0)
        await super().aclose()


forger = raw_peer_fixture(Forger)

#: Heartbeats over each bound (all in one frame well under max_message_size).
BAD_HEARTBEATS: dict[str, dict[str, Any]] = {
    "100k metadata entries": {"metadata": {f"k{i}": "v" for i in range(100_000)}},
    "a 1 MiB metadata key": {"metadata": {"k" * MIB: "v"}},
    "a 1 MiB metadata value": {"metadata": {"zone": "v" * MIB}},
    "a metadata key with a newline": {"metadata": {"zone\n": "a"}},
    "100k handles": {"handles": [f"mod.T{i}" for i in range(100_000)]},
    "a 1 MiB handle name": {"handles": ["h" * MIB]},
    "100k subscriptions": {"subscribes": [f"mod.E{i}" for i in range(100_000)]},
}


@pytest.mark.parametrize("changes", BAD_HEARTBEATS.values(), ids=BAD_HEARTBEATS.keys())
async def test_heartbeat_over_a_bound_is_a_counted_rejection_never_stored(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, Any],
) -> None:
    a = make_node("a")
    await a.start()
    peer = forger(a)
    await peer.announce()
    before = a.stats().frames_rejected
    await peer.publish_until(lambda: a.stats().frames_rejected > before, [peer.beat(**changes)])
    assert "evil" not in {m.node_id for m in a.members()}
    assert longest_line(caplog) < 1000
    # The peer is not shut out for good: its next valid heartbeat is taken.
    await peer.publish_until(lambda: "evil" in {m.node_id for m in a.members()}, [peer.beat()])
    assert member(a, "evil").metadata == {}


# error replies -------------------------------------------------------------------------


async def serve_one_request(router: zmq.Socket[bytes], timeout: float = 20.0) -> tuple[bytes, int]:
    """The caller's identity and request id of the next request the raw ROUTER reads."""
    async with asyncio.timeout(timeout):
        while not router.poll(0):  # noqa: ASYNC110 - a raw socket, polled
            await asyncio.sleep(0.005)
    frames = router.recv_multipart()
    ident = frames[0]
    if len(frames) == 2:  # a batch frame
        header = raw_batch_decoder.decode(frames[1])[0][0]
    else:
        header = msgspec.Raw(frames[1])
    return ident, msgspec.msgpack.decode(header)[2]


async def routed_to_forger(
    make_node: MakeNode, forger: Callable[[Node], Forger]
) -> tuple[Node, Forger]:
    """Node 'a' with the forger 'evil' ALIVE in its view and handling SSay."""
    a = make_node("a", **PATIENT)
    await a.start()
    peer = forger(a)
    await peer.announce()
    await peer.publish_until(
        lambda: "evil" in {m.node_id for m in a.members() if SSay.__wire_name__ in m.handles},
        [peer.beat(handles=[SSay.__wire_name__])],
        timeout=20.0,
    )
    return a, peer


async def keep_beating(peer: Forger) -> None:
    """Heartbeats of 'evil' every 20 ms: it stays ALIVE while the test runs."""
    frame = peer.beat(handles=[SSay.__wire_name__])
    while True:
        peer.pub.send_multipart(frame)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "body",
    [
        ErrorBody("HANDLER_FAILED", "m" * MIB, "ValueError"),
        ErrorBody("HANDLER_FAILED", "boom", "E" * MIB),
        ErrorBody("C" * MIB, "boom"),
    ],
    ids=["message", "error_type", "code"],
)
async def test_error_reply_over_a_bound_ends_the_request_with_a_protocol_error(
    make_node: MakeNode,
    forger: Callable[[Node], Forger],
    caplog: pytest.LogCaptureFixture,
    body: ErrorBody,
) -> None:
    a, peer = await routed_to_forger(make_node, forger)
    beating = asyncio.create_task(keep_beating(peer))
    try:
        before = a.stats().frames_rejected
        call = asyncio.create_task(a.send(SSay("hi"), node="evil", timeout=60.0))
        ident, rid = await serve_one_request(peer.router)
        header = encode_header(int(Kind.ERR), rid, "", "evil")
        peer.router.send_multipart([ident, header, _enc(body)])
        # Long before the 60 s deadline: the answer came, it is only not valid.
        with pytest.raises(ProtocolError) as info:
            await asyncio.wait_for(call, 20.0)
    finally:
        beating.cancel()
    assert info.value.node == "evil"
    assert "the error answer to" in info.value.message
    assert len(info.value.message) < 1000
    assert a.stats().frames_rejected == before + 1
    assert longest_line(caplog) < 1000


class Fails(Request[SEcho]):
    size: int


async def test_a_long_exception_message_is_cut_to_what_the_caller_takes(
    make_node: MakeNode,
) -> None:
    a, b = make_node("a", **PATIENT), make_node("b", **PATIENT)

    @a.handler
    async def fail(req: Fails) -> SEcho:
        raise ValueError("start " + "x" * req.size)

    await a.start()
    await b.start()
    await b.wait_for_peers(1, handles=Fails)
    with pytest.raises(HandlerError) as info:
        await b.send(Fails(MIB), node="a")
    message = info.value.message
    assert info.value.error_type == "ValueError"
    assert len(message) == MAX_ERROR_MESSAGE
    assert message.startswith("start xxx") and message.endswith(TRUNCATED)
    # A message within the bound comes whole.
    with pytest.raises(HandlerError) as info:
        await b.send(Fails(100), node="a")
    assert info.value.message == "start " + "x" * 100
    assert b.stats().frames_rejected == 0


# greetings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["node_id", "endpoint", "pub_endpoint", "cluster"],
)
async def test_a_greeting_with_an_oversized_address_is_refused_and_not_kept(
    make_node: MakeNode,
    dealer_to: Callable[[Node], zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
    field: str,
) -> None:
    a = make_node("a")
    await a.start()
    fields = {
        "node_id": "greeter",
        "endpoint": "tcp://127.0.0.1:9",
        "pub_endpoint": "tcp://127.0.0.1:10",
        "cluster": a.options.cluster,
        "version": PROTOCOL_VERSION,
    }
    fields[field] = "tcp://127.0.0.1:" + "1" * MIB if "endpoint" in field else "g" * MIB
    greeting = Info(caller=PeerAddress(**fields))
    dealer = dealer_to(a)
    before = a.stats().frames_rejected
    header = encode_header(int(Kind.REQ), 7, Info.__wire_name__, "greeter", 5000)
    dealer.send_multipart([header, _enc(greeting)])
    async with asyncio.timeout(10):
        while not dealer.poll(0):  # noqa: ASYNC110 - a raw socket, polled
            await asyncio.sleep(0.005)
    [(reply_header, _)] = unbatch(dealer.recv_multipart())
    assert msgspec.msgpack.decode(reply_header)[1] == int(Kind.ERR)
    assert a.stats().frames_rejected == before + 1
    assert parts(a).gossip.addresses == {}
    assert longest_line(caplog) < 1000


def test_an_info_answer_passes_on_no_more_addresses_than_a_receiver_takes() -> None:
    info = msgspec.inspect.type_info(NodeInfo)
    assert isinstance(info, msgspec.inspect.StructType)
    peers = next(f.type for f in info.fields if f.name == "peers")
    assert isinstance(peers, msgspec.inspect.ListType)
    # A node keeps at most 8,000 members (max_peers): its answer fits.
    assert peers.max_length is not None and peers.max_length >= 8_000


# what a node handles --------------------------------------------------------------------


class Many(Request[SEcho]):
    """The base of the many request types below."""


def test_a_node_handles_no_more_types_than_a_heartbeat_carries() -> None:
    node = Node("a", discovery=None)
    made = [
        msgspec.defstruct(f"Many{i}", [], bases=(Many,), module="tests.many")
        for i in range(MAX_HANDLES + 1)
    ]

    async def handle(req: Any) -> SEcho:
        return SEcho("x")

    for cls in made[:-1]:
        node.handler(handle, message_type=cls)
    with pytest.raises(ConfigError, match=f"the most a heartbeat carries \\({MAX_HANDLES}\\)"):
        node.handler(handle, message_type=made[-1])
    assert len(node.mediator.handlers) == MAX_HANDLES

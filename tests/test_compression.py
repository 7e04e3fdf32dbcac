"""zstd compression of payloads, on real nodes and real sockets.

Large requests, replies and events travel compressed between nodes that decode zstd
(fewer bytes in the frame, a header flag naming the codec); a node whose heartbeats do
not name zstd is never sent a compressed frame; a decompression bomb or a corrupt
frame is refused and counted, and the node keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import zmq
import zstandard
from _forge import RawPeer, raw_peer_fixture
from conftest import MakeNode, parts, unbatch, wait_until

from catga_zmq import ConfigError, Event, MemoryHub, Node, NodeStatus, Request
from catga_zmq.config import NodeOptions
from catga_zmq.protocol import (
    FLAG_ZSTD,
    HEARTBEAT_TOPIC,
    Header,
    Kind,
    decode_error,
    encode_header,
    header_decoder,
)

_enc = msgspec.msgpack.encode
GIB = 1 << 30


class ZDoc(msgspec.Struct):
    text: str


class ZEcho(Request[ZDoc]):
    __wire_name__ = "zstd.Echo"
    text: str


class ZNews(Event):
    __wire_name__ = "zstd.News"
    text: str


def json_like(size: int) -> str:
    """A JSON document of about ``size`` characters, repetitive as real records are."""
    rows = [
        {"id": i, "name": f"user-{i}", "active": i % 3 == 0, "tags": ["a", "b"]}
        for i in range(size // 60 + 1)
    ]
    return json.dumps(rows)[:size]


async def echo_node(make_node: MakeNode, node_id: str, **settings: object) -> Node:
    node = make_node(node_id, **settings)

    @node.handler
    async def echo(req: ZEcho) -> ZDoc:
        return ZDoc(req.text)

    await node.start()
    return node


def rejected(node: Node, reason: str) -> int:
    return int(parts(node).server.reject.reasons.get(reason, 0))


async def test_large_request_reply_and_event_travel_compressed(make_node: MakeNode) -> None:
    server = await echo_node(make_node, "server", compression="zstd")
    news: list[str] = []

    @server.subscribe
    async def on_news(evt: ZNews) -> None:
        news.append(evt.text)

    client = await echo_node(make_node, "client", compression="zstd")
    await client.wait_for_peers(1, timeout=20, handles=ZEcho)
    await wait_until(lambda: parts(client).membership.peers["server"].zstd, timeout=20)
    await wait_until(lambda: parts(server).membership.peers.get("client") is not None, timeout=20)
    await wait_until(lambda: parts(server).membership.peers["client"].zstd, timeout=20)
    text = json_like(16 * 1024)

    answer = await client.send(ZEcho(text), node="server", timeout=10)

    assert answer.text == text
    sent, replied = client.stats(), server.stats()
    assert sent.payloads_compressed == 1 and replied.payloads_compressed == 1
    # JSON-like text compresses several times over, both ways.
    assert sent.compression_saved > len(text) // 2
    assert replied.compression_saved > len(text) // 2

    await wait_until(
        lambda: "zstd.News" in parts(client).membership.peers["server"].subscribes, timeout=20
    )
    async with asyncio.timeout(20):
        while not news:
            await client.publish(ZNews(text))
            await asyncio.sleep(0.05)
    assert news[0] == text
    assert client.stats().payloads_compressed >= 2


async def test_a_payload_under_the_threshold_goes_as_it_is(make_node: MakeNode) -> None:
    await echo_node(make_node, "server", compression="zstd")
    client = await echo_node(make_node, "client", compression="zstd", compression_threshold=4096)
    await client.wait_for_peers(1, timeout=20, handles=ZEcho)
    await wait_until(lambda: parts(client).membership.peers["server"].zstd, timeout=20)
    text = json_like(4000)

    assert (await client.send(ZEcho(text), node="server", timeout=10)).text == text
    assert client.stats().payloads_compressed == 0


class RawServer(RawPeer):
    """A raw member with a real ROUTER, to read what a node sends it."""

    def __init__(self, zctx: zmq.Context[zmq.Socket[bytes]], hub: MemoryHub, cluster: str) -> None:
        super().__init__(zctx, hub, cluster, router=True)


make_raw_server = raw_peer_fixture(RawServer)


@contextlib.asynccontextmanager
async def beating(peer: RawPeer, codecs: list[str]) -> AsyncIterator[None]:
    """``peer`` heartbeats (handling ``zstd.Echo``, decoding ``codecs``) while inside."""

    async def beat() -> None:
        seq = 0
        while True:
            seq += 1
            body = peer.heartbeat_body(seq=seq, handles=[ZEcho.__wire_name__], codecs=codecs)
            header = encode_header(int(Kind.HB), seq, "", peer.node_id)
            peer.pub.send_multipart([HEARTBEAT_TOPIC, header, _enc(body)])
            await asyncio.sleep(0.05)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def read_request(router: zmq.Socket[bytes]) -> tuple[Header, bytes, bytes]:
    """The next request a raw ROUTER reads: header, payload, the caller's identity."""
    async with asyncio.timeout(20):
        while not router.poll(0):  # noqa: ASYNC110 - a raw socket announces nothing
            await asyncio.sleep(0.01)
    ident, *rest = router.recv_multipart()
    records = unbatch(rest)
    assert len(records) == 1, records
    raw_header, payload = records[0]
    return header_decoder.decode(raw_header), payload, ident


@pytest.mark.parametrize("codecs", [[], ["zstd"]])
async def test_a_peer_is_sent_zstd_only_when_its_heartbeats_name_it(
    make_node: MakeNode, make_raw_server: Callable[[Node], RawPeer], codecs: list[str]
) -> None:
    node = await echo_node(make_node, "caller", compression="zstd")
    peer = make_raw_server(node)
    assert peer.router is not None
    node_router = peer.router
    await peer.announce()
    text = json_like(16 * 1024)
    async with beating(peer, codecs):
        await wait_until(
            lambda: (
                "evil" in parts(node).membership.peers
                and parts(node).membership.peers["evil"].status is NodeStatus.ALIVE
            ),
            timeout=20,
        )
        await wait_until(
            lambda: parts(node).membership.peers["evil"].zstd == bool(codecs), timeout=20
        )
        sent = asyncio.ensure_future(node.send(ZEcho(text), node="evil", timeout=15))
        header, payload, ident = await read_request(node_router)
        # The answer, compressed or not as the request was: the caller decodes both.
        node_router.send_multipart(
            [ident, encode_header(int(Kind.REP), header.request_id, "", "evil"), _enc(ZDoc("ok"))]
        )
        assert (await sent).text == "ok"
    if codecs:
        assert header.flags & FLAG_ZSTD
        assert len(payload) < len(text) // 2
        frame = msgspec.msgpack.decode(payload, type=bytes)
        assert (
            msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(frame), type=ZEcho).text
            == text
        )
    else:
        assert header.flags == 0
        assert msgspec.msgpack.decode(payload, type=ZEcho).text == text


def bomb(content_size: bool) -> bytes:
    """1 GiB of zeros as one zstd frame (about 32 KiB), made 1 MiB at a time."""
    chunk = bytes(1 << 20)
    packer = zstandard.ZstdCompressor(level=1).compressobj(size=GIB if content_size else -1)
    parts_ = [packer.compress(chunk) for _ in range(GIB // len(chunk))]
    parts_.append(packer.flush())
    return b"".join(parts_)


def compressed_request(rid: int, payload: bytes) -> list[bytes]:
    header = encode_header(int(Kind.REQ), rid, ZEcho.__wire_name__, "raw", 10_000, FLAG_ZSTD)
    return [header, payload]


async def answer(sock: zmq.Socket[bytes]) -> tuple[Header, bytes]:
    async with asyncio.timeout(20):
        while not sock.poll(0):  # noqa: ASYNC110 - a raw socket announces nothing
            await asyncio.sleep(0.01)
    records = unbatch(sock.recv_multipart())
    raw_header, body = records[0]
    return header_decoder.decode(raw_header), body


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("content_size", [True, False])
async def test_a_decompression_bomb_is_refused_and_counted(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]], content_size: bool
) -> None:
    node = await echo_node(make_node, "server", compression="zstd")
    payload = _enc(bomb(content_size))
    assert len(payload) < 64 * 1024
    raw = dealer_to(node)
    before_rss = max_rss_mib()

    raw.send_multipart(compressed_request(1, payload))
    header, body = await answer(raw)

    assert header.kind == Kind.ERR
    err = decode_error(body)
    assert err.code == "PROTOCOL_ERROR", err
    assert ("over max_message_size" if content_size else "does not state") in err.message
    assert rejected(node, "decompress") == 1
    assert node.stats().frames_rejected == 1
    # Nothing near the 1 GiB it would decompress to was ever allocated.
    assert max_rss_mib() - before_rss < 256

    # It serves on, compressed requests too.
    text = json_like(16 * 1024)
    good = _enc(zstandard.ZstdCompressor().compress(_enc(ZEcho(text))))
    raw.send_multipart(compressed_request(2, good))
    header, body = await answer(raw)
    assert header.kind == Kind.REP and header.request_id == 2
    assert msgspec.msgpack.decode(body, type=ZDoc).text == text


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01 not a bin",
        _enc(b"not a zstd frame at all"),
        # A real frame with its middle overwritten: the header is good, the data not.
        _enc(
            (lambda f: f[:20] + bytes(len(f) - 40) + f[-20:])(
                zstandard.ZstdCompressor().compress(json_like(8192).encode())
            )
        ),
    ],
    ids=["not-bin", "not-zstd", "corrupt"],
)
async def test_a_corrupt_compressed_payload_is_refused_and_counted(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]], payload: bytes
) -> None:
    node = await echo_node(make_node, "server", compression="zstd")
    raw = dealer_to(node)
    raw.send_multipart(compressed_request(1, payload))
    header, body = await answer(raw)
    assert header.kind == Kind.ERR and decode_error(body).code == "PROTOCOL_ERROR"
    assert rejected(node, "decompress") == 1


async def test_a_node_without_compression_refuses_a_compressed_request(
    make_node: MakeNode, dealer_to: Callable[[Node], zmq.Socket[bytes]]
) -> None:
    node = await echo_node(make_node, "server")
    raw = dealer_to(node)
    good = _enc(zstandard.ZstdCompressor().compress(_enc(ZEcho("hi"))))
    raw.send_multipart(compressed_request(1, good))
    header, body = await answer(raw)
    assert header.kind == Kind.ERR
    assert "does not decode" in decode_error(body).message
    assert rejected(node, "decompress") == 1


def test_compression_without_the_library_is_a_clear_config_error() -> None:
    code = (
        "import sys; sys.modules['zstandard'] = None\n"
        "import asyncio, catga_zmq\n"
        "async def main():\n"
        "    try:\n"
        "        async with catga_zmq.Node('a', discovery=None, compression='zstd'):\n"
        "            pass\n"
        "    except catga_zmq.ConfigError as exc:\n"
        "        print(exc.message)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'catga-zmq[zstd]'" in done.stdout, done.stdout


def test_a_node_that_compresses_imports_zstandard() -> None:
    code = (
        "import asyncio, sys, catga_zmq\n"
        "async def main():\n"
        "    async with catga_zmq.Node('a', discovery=None, compression='zstd'):\n"
        "        print('zstandard' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_compression_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="compression"):
        NodeOptions(node_id="a", compression="lz4").validated()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compression_threshold"):
        NodeOptions(node_id="a", compression_threshold=10).validated()


make_raw_peer = raw_peer_fixture(RawPeer)


async def test_a_compressed_event_bomb_is_refused_and_the_node_hears_on(
    make_node: MakeNode, make_raw_peer: Callable[[Node], RawPeer]
) -> None:
    node = make_node("sub", compression="zstd")
    heard: list[str] = []

    @node.subscribe
    async def on_news(evt: ZNews) -> None:
        heard.append(evt.text)

    await node.start()
    peer = make_raw_peer(node)
    await peer.announce()
    topic = ZNews.__wire_name__.encode() + b"\x00"

    def event(seq: int, payload: bytes, flags: int) -> list[bytes]:
        return [
            topic,
            encode_header(int(Kind.EVT), seq, ZNews.__wire_name__, "evil", 0, flags),
            payload,
        ]

    await peer.publish_until(
        lambda: rejected(node, "decompress") > 0,
        [event(1, _enc(bomb(True)), FLAG_ZSTD)],
        timeout=20,
    )
    assert not heard
    good = _enc(zstandard.ZstdCompressor().compress(_enc(ZNews(json_like(4096)))))
    await peer.publish_until(lambda: bool(heard), [event(2, good, FLAG_ZSTD)], timeout=20)
    assert heard[0] == json_like(4096)


async def test_compressed_payloads_travel_in_batch_frames(make_node: MakeNode) -> None:
    server = await echo_node(make_node, "server", compression="zstd")
    client = await echo_node(make_node, "client", compression="zstd")
    await client.wait_for_peers(1, timeout=20, handles=ZEcho)
    await wait_until(lambda: parts(client).membership.peers["server"].zstd, timeout=20)
    await wait_until(
        lambda: (
            "client" in parts(server).membership.peers
            and parts(server).membership.peers["client"].zstd
        ),
        timeout=20,
    )
    texts = [json_like(2048 + i) for i in range(64)]

    # Sent in one go, they go (and come back) as batch frames of compressed records.
    answers = await asyncio.gather(
        *(client.send(ZEcho(t), node="server", timeout=20) for t in texts)
    )

    assert [a.text for a in answers] == texts
    assert parts(client).transport.batches_sent > 0
    assert client.stats().payloads_compressed == 64
    assert server.stats().payloads_compressed == 64

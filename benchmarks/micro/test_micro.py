"""Micro-benchmarks of the hot-path pieces: header codec, envelope, heartbeat, routers, pending map.

Not part of the test suite (``python -m pytest`` collects ``tests/`` only). Run them with
pytest-benchmark from the repository root:

    python -m pytest benchmarks/micro --benchmark-only
    python -m pytest benchmarks/micro --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
    python -m pytest benchmarks/micro --benchmark-only -k router --benchmark-json=micro.json

Needs ``pip install pytest-benchmark`` (and uvloop, which catga_zmq installs on Linux).
Every benchmark checks what it measured (decoded == original, the router's choice is the
one its strategy promises); a wrong result fails the test instead of giving a figure.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable, Iterator

import msgspec
import pytest

from catga_zmq import Request
from catga_zmq.membership import Peer
from catga_zmq.messages import registry
from catga_zmq.protocol import (
    PROTOCOL_VERSION,
    Codec,
    Header,
    HeartbeatBody,
    Kind,
    batch_decoder,
    decode_header,
    decode_heartbeat,
    encode_batch,
    encode_header,
)
from catga_zmq.routing import (
    ConsistentHashRouter,
    HashRing,
    LeastConnectionsRouter,
    LocalFirstRouter,
    RoundRobinRouter,
    Router,
    WeightedRouter,
)

try:  # the pending map has a module of its own since the Node split
    from catga_zmq._pending import PendingMap
except ImportError:  # a commit before it
    from catga_zmq.transport import PendingMap

pytest.importorskip(
    "pytest_benchmark", reason="needs pytest-benchmark: pip install pytest-benchmark"
)

# --- fixtures of data -------------------------------------------------------------------

SOURCE = "bench-client-1"
TRACE = ""
BUDGET_MS = 5_000
PAYLOAD_SIZE = 100  # bytes of the request's data field


class MicroReply(msgspec.Struct):
    data: bytes


class MicroEcho(Request[MicroReply]):
    """A 100-byte request: the shape ``benchmarks/_echo_app.py`` sends."""

    __wire_name__ = "benchmarks.micro.MicroEcho"
    data: bytes


TYPE_NAME = MicroEcho.__wire_name__
DATA = bytes(i % 251 for i in range(PAYLOAD_SIZE))


def make_peers(n: int) -> tuple[Peer, ...]:
    """``n`` live peers as the routers see them: varied weight, load and outstanding."""
    peers = []
    for i in range(n):
        peer = Peer(
            node_id=f"node-{i:02d}",
            endpoint=f"tcp://127.0.0.1:{20000 + i}",
            pub_endpoint=f"tcp://127.0.0.1:{30000 + i}",
            incarnation=1_700_000_000_000 + i,
        )
        peer.handles = frozenset({TYPE_NAME})
        peer.weight = 1 + i % 3  # 1, 2, 3, 1, 2, 3, ...
        peer.outstanding = (i * 7 + 3) % 11  # some spread, a unique minimum is not needed
        peers.append(peer)
    return tuple(peers)


SIZES = (3, 32)
MESSAGE = MicroEcho(data=DATA)


# --- header -----------------------------------------------------------------------------


def test_header_encode(benchmark) -> None:
    expected = msgspec.msgpack.encode(
        Header(PROTOCOL_VERSION, int(Kind.REQ), 123_456, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE)
    )
    req = int(Kind.REQ)
    raw = benchmark(encode_header, req, 123_456, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE)
    assert raw == expected
    benchmark.extra_info["bytes"] = len(raw)


def test_header_decode(benchmark) -> None:
    raw = encode_header(int(Kind.REQ), 123_456, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE)
    header = benchmark(decode_header, raw)
    assert header == Header(
        PROTOCOL_VERSION, int(Kind.REQ), 123_456, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE
    )
    benchmark.extra_info["bytes"] = len(raw)


# --- envelope ---------------------------------------------------------------------------


def test_envelope_round_trip(benchmark) -> None:
    """Encode header + payload of a 100-byte request, then decode both, typed.

    The decode side does what a receiving node does: check the header, look the wire
    name up in the registry, decode the payload with that type's cached decoder.
    """
    codec = Codec()
    encode_payload = codec.encode
    decoder_for = codec.decoder
    lookup = registry.get
    req = int(Kind.REQ)
    assert lookup(TYPE_NAME) is MicroEcho

    def round_trip(rid: int, message: MicroEcho) -> tuple[Header, MicroEcho]:
        frames = (
            encode_header(req, rid, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE),
            encode_payload(message),
        )
        header = decode_header(frames[0])
        cls = lookup(header.type_name)
        return header, decoder_for(cls).decode(frames[1])

    header, decoded = benchmark(round_trip, 42, MESSAGE)
    assert header.request_id == 42 and header.kind == req and header.type_name == TYPE_NAME
    assert type(decoded) is MicroEcho
    assert decoded == MESSAGE
    benchmark.extra_info["header_bytes"] = len(encode_header(req, 42, TYPE_NAME, SOURCE, BUDGET_MS))
    benchmark.extra_info["payload_bytes"] = len(encode_payload(MESSAGE))


def test_batch_of_16_round_trip(benchmark) -> None:
    """16 requests packed into one batch frame and read back, typed, per batch.

    What a caller under load sends in one ZeroMQ message and a node decodes: headers in
    one call, each payload decoded by its type from a view into the frame.
    """
    codec = Codec()
    encode_payload = codec.encode
    decoder = codec.decoder(MicroEcho)
    req = int(Kind.REQ)
    raw = msgspec.Raw

    def round_trip(first: int) -> list[tuple[Header, MicroEcho]]:
        records = [
            (
                raw(encode_header(req, first + i, TYPE_NAME, SOURCE, BUDGET_MS, 0, TRACE)),
                raw(encode_payload(MESSAGE)),
            )
            for i in range(16)
        ]
        frame = encode_batch(records)
        return [(h, decoder.decode(p)) for h, p in batch_decoder.decode(frame)]

    out = benchmark(round_trip, 100)
    assert [h.request_id for h, _ in out] == list(range(100, 116))
    assert all(m == MESSAGE and h.type_name == TYPE_NAME for h, m in out)


# --- heartbeat --------------------------------------------------------------------------

HEARTBEAT = HeartbeatBody(
    node_id="users-1",
    incarnation=1_700_000_000_123_456_789,
    seq=98_765,
    status="alive",
    cluster="shop",
    endpoint="tcp://127.0.0.1:5555",
    pub_endpoint="tcp://127.0.0.1:5556",
    load=0.375,
    in_flight=12,
    weight=2,
    interval_ms=500,
    handles=sorted(
        ["catga.Ping", "catga.Info", "catga.Stats", TYPE_NAME]
        + [f"shop.orders.Request{i}" for i in range(8)]
    ),
    subscribes=sorted(f"shop.events.Event{i}" for i in range(4)),
    metadata={"zone": "eu-1", "version": "1.2.3"},
)


def test_heartbeat_encode(benchmark) -> None:
    # The node encodes its heartbeat with msgspec.msgpack.encode (Node._send_heartbeat).
    raw = benchmark(msgspec.msgpack.encode, HEARTBEAT)
    assert decode_heartbeat(raw) == HEARTBEAT
    benchmark.extra_info["bytes"] = len(raw)


def test_heartbeat_decode(benchmark) -> None:
    raw = msgspec.msgpack.encode(HEARTBEAT)
    body = benchmark(decode_heartbeat, raw)
    assert body == HEARTBEAT
    benchmark.extra_info["bytes"] = len(raw)


# --- routers ----------------------------------------------------------------------------


def _round_robin_check(router: Router, peers: tuple[Peer, ...], last: Peer) -> None:
    # Any len(peers) consecutive picks visit every peer exactly once.
    assert last in peers
    picks = Counter(router.select(peers, MESSAGE, None).node_id for _ in range(len(peers)))
    assert picks == Counter({p.node_id: 1 for p in peers})


def _weighted_check(router: Router, peers: tuple[Peer, ...], last: Peer) -> None:
    # No load reported: smooth WRR is periodic with period sum(weights), so any window of
    # that length gives each peer exactly its weight (checked on the benchmarked instance,
    # wherever in the cycle the benchmark left it).
    assert last in peers
    total = sum(p.weight for p in peers)
    picks = Counter(router.select(peers, MESSAGE, None).node_id for _ in range(total))
    assert picks == Counter({p.node_id: p.weight for p in peers})


def _least_connections_check(router: Router, peers: tuple[Peer, ...], last: Peer) -> None:
    low = min(p.outstanding for p in peers)
    assert last.outstanding == low
    ties = {p.node_id for p in peers if p.outstanding == low}
    picks = {router.select(peers, MESSAGE, None).node_id for _ in range(4 * len(peers))}
    assert picks == ties  # ties are shared round robin, nobody else is chosen


def _local_first_check(router: Router, peers: tuple[Peer, ...], last: Peer) -> None:
    assert last.local and last is peers[-1]


ROUTER_CASES: dict[str, tuple[Callable[[], Router], Callable[..., None]]] = {
    "round_robin": (RoundRobinRouter, _round_robin_check),
    "local_first": (LocalFirstRouter, _local_first_check),
    "weighted": (WeightedRouter, _weighted_check),
    "least_connections": (LeastConnectionsRouter, _least_connections_check),
}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(ROUTER_CASES))
def test_router_select(benchmark, name: str, n: int) -> None:
    make_router, check = ROUTER_CASES[name]
    peers = make_peers(n)
    if name == "local_first":
        # This node is one of the candidates, listed last: the scan's worst case.
        local = Peer(node_id="me", endpoint="tcp://127.0.0.1:19999", pub_endpoint="", incarnation=1)
        local.local = True
        local.handles = frozenset({TYPE_NAME})
        peers = (*peers[:-1], local)
    router = make_router()
    chosen = benchmark(router.select, peers, MESSAGE, None)
    check(router, peers, chosen)
    benchmark.extra_info["candidates"] = n


KEYS = [f"user-{i}" for i in range(1024)]


@pytest.mark.parametrize("n", SIZES)
def test_router_select_consistent_hash_key(benchmark, n: int) -> None:
    """Lookup by key on the cached ring (the ring is built once per candidate set)."""
    peers = make_peers(n)
    router = ConsistentHashRouter()
    router.select(peers, MESSAGE, "warm")  # build the ring outside the measurement
    keys: Iterator[str] = itertools.cycle(KEYS)
    select = router.select

    def pick() -> Peer:
        return select(peers, MESSAGE, next(keys))

    chosen = benchmark(pick)
    assert chosen in peers
    # Same choice as a freshly built ring for every key, and every node owns some keys.
    reference = HashRing(peers, router.vnodes)
    owners = Counter()
    for key in KEYS:
        got = router.select(peers, MESSAGE, key)
        assert got is reference.lookup(key), key
        owners[got.node_id] += 1
    assert len(owners) == n
    benchmark.extra_info["candidates"] = n
    benchmark.extra_info["vnodes"] = router.vnodes


@pytest.mark.parametrize("n", SIZES)
def test_hash_ring_build(benchmark, n: int) -> None:
    """What a membership change costs consistent hashing: one ring of n * 160 points."""
    peers = make_peers(n)
    ring = benchmark(HashRing, peers, ConsistentHashRouter().vnodes)
    assert len(ring.points) == n * ConsistentHashRouter().vnodes
    assert ring.positions == sorted(ring.positions)


# --- pending map ------------------------------------------------------------------------

REPLY = (int(Kind.REP), b"\x91\xc4\x64" + DATA, "srv")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A uvloop loop (the node's), asyncio's own where uvloop is missing; closed after."""
    try:
        import uvloop

        new_loop = uvloop.new_event_loop()
    except ImportError:
        new_loop = asyncio.new_event_loop()
    try:
        yield new_loop
    finally:
        new_loop.close()


def _close(pending: PendingMap, rid: int) -> None:
    # Node._call_remote forgets the id on every way out; the method's name has changed
    # over time (wait/close), and after resolve() the entry is already gone anyway.
    closer = getattr(pending, "close", None)
    if closer is not None:
        closer(rid)


def test_pending_open_resolve(benchmark, loop: asyncio.AbstractEventLoop) -> None:
    """One open + resolve + result, loop not running (futures and timers still work)."""
    pending = PendingMap(loop)
    target = "node-00"  # the node a request went to: only kept for its error message
    open_, resolve = pending.open, pending.resolve

    def open_resolve() -> tuple[int, bytes, str]:
        rid, fut = open_(target, False, loop.time() + 5.0, TYPE_NAME)
        resolve(rid, REPLY)
        _close(pending, rid)
        return fut.result()

    reply = benchmark(open_resolve)
    assert reply == REPLY
    assert len(pending) == 0
    assert pending.late_replies == 0
    pending.fail_all(lambda: AssertionError("nothing should be pending"))


BATCH = 1_000
WINDOW = 64  # requests in flight at once, as the echo benchmarks run


def test_pending_open_resolve_batch_running_loop(
    benchmark, loop: asyncio.AbstractEventLoop
) -> None:
    """1,000 requests per round inside a running loop, 64 open at a time, awaited.

    Per-request cost = the round's time / 1,000 (``extra_info.per_request_ns``).
    """
    pending = PendingMap(loop)
    target = "node-00"

    async def batch() -> int:
        open_, resolve = pending.open, pending.resolve
        got = 0
        for _ in range(BATCH // WINDOW + 1):
            deadline = loop.time() + 5.0
            window = [open_(target, False, deadline, TYPE_NAME) for _ in range(WINDOW)]
            for rid, _ in window:
                resolve(rid, REPLY)
            for rid, fut in window:
                if await fut == REPLY:
                    got += 1
                _close(pending, rid)
        return got

    got = benchmark(lambda: loop.run_until_complete(batch()))
    expected = (BATCH // WINDOW + 1) * WINDOW
    assert got == expected
    assert len(pending) == 0
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:
        benchmark.extra_info["requests_per_round"] = expected
        benchmark.extra_info["per_request_ns"] = round(stats.median / expected * 1e9, 1)
    pending.fail_all(lambda: AssertionError("nothing should be pending"))

"""Forgeries against real nodes, in plaintext and with CURVE: a trusted but malicious peer
(its key is in the trust directory, under its own node id) or a stranger, built from raw
pyzmq sockets (``_forge.RawPeer``: a PUB and a ROUTER, CURVE servers with its key), tries
to take a node's id, say BYE for it, keep it alive with events, get requests routed to
itself, or answer requests it was not asked. Each forgery fails, and is counted and
logged once per peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from _forge import RawPeer
from conftest import MakeNode, member, parts, unbatch, wait_until
from test_curve import Keys

from catga_zmq import Event, Info, MemoryHub, Node, NodeStatus, Ping, Pong, Request
from catga_zmq.protocol import HEARTBEAT_TOPIC, PROTOCOL_VERSION, Header, Kind, decode_header
from catga_zmq.security import FirstKeySeen
from catga_zmq.system import PeerAddress

_enc = msgspec.msgpack.encode

#: Each forgery is published this many times, 20 ms apart (and logged once).
ROUNDS = 15


class Slow(Request["Served"]):
    __wire_name__ = "forgery.Slow"
    seconds: float


class Served(msgspec.Struct):
    by: str


class Noted(Event):
    __wire_name__ = "forgery.Noted"
    n: int


NOTED_TOPIC = Noted.__wire_name__.encode() + b"\x00"


def header(kind: Kind, source: str, rid: int = 1, type_name: str = "") -> bytes:
    return _enc(Header(PROTOCOL_VERSION, int(kind), rid, type_name, source, 5000))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, ["a", "b", "m", "stranger"], trusted=["a", "b", "m"])


def security(keys: Keys, mode: str, name: str) -> dict[str, Any]:
    """The settings of node ``name`` in ``mode``: plaintext, curve (trust directory) or
    any_key."""
    if mode == "plaintext":
        return {}
    if mode == "curve":
        return keys.settings(name)
    return {"curve_secret_key": keys.secret(name), "curve_any_key": True}


@pytest.fixture
def raw_peer(
    zctx: zmq.Context[zmq.Socket[bytes]], hub: MemoryHub, keys: Keys
) -> Iterator[Callable[..., RawPeer]]:
    """``raw_peer(node, name, curve)``: a raw peer with a real ROUTER, under id ``name``
    (with ``name``'s key pair when ``curve``)."""
    made: list[RawPeer] = []

    def make(node: Node, name: str, curve: bool) -> RawPeer:
        pair = keys.pair(name) if curve else None
        peer = RawPeer(zctx, hub, node.options.cluster, name, router=True, curve=pair)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.pub.close(0)
        if peer.router is not None:
            peer.router.close(0)


async def joined(node: Node, peer: RawPeer) -> None:
    """Until ``node`` has ``peer`` as an ALIVE member (announced, heartbeating)."""
    await peer.announce()
    beat = own_beat(peer)
    await peer.publish_until(
        lambda: any(
            m.node_id == peer.node_id and m.status is NodeStatus.ALIVE for m in node.members()
        ),
        [beat],
        timeout=20,
    )


def own_beat(peer: RawPeer) -> list[bytes]:
    return [HEARTBEAT_TOPIC, header(Kind.HB, peer.node_id), _enc(peer.heartbeat_body())]


async def forge(
    peer: RawPeer, frames: list[list[bytes]], node: Node | None = None, rejected: int = 0
) -> None:
    """Publish ``frames`` ROUNDS times, with the peer's own heartbeat (it stays a member),
    and on until ``node`` has rejected ``rejected`` frames in all (a SUB that is opened
    afresh, as for a member that turned SUSPECT, misses what is sent meanwhile)."""
    for _ in range(ROUNDS):
        for frame in [own_beat(peer), *frames]:
            peer.pub.send_multipart(frame)
        await asyncio.sleep(0.02)
    if node is not None:
        await peer.publish_until(
            lambda: node.stats().frames_rejected >= rejected, [own_beat(peer), *frames]
        )


async def two_nodes(
    make_node: MakeNode, keys: Keys, mode: str, **settings: Any
) -> tuple[Node, Node]:
    a = make_node("a", **security(keys, mode, "a"), **settings)
    b = make_node("b", **security(keys, mode, "b"))
    await a.start()
    await b.start()
    await wait_until(lambda: _status(a, "b") is NodeStatus.ALIVE, timeout=20)
    await wait_until(lambda: _status(b, "a") is NodeStatus.ALIVE, timeout=20)
    return a, b


def _status(node: Node, node_id: str) -> NodeStatus | None:
    return next((m.status for m in node.members() if m.node_id == node_id), None)


def silence(node: Node) -> None:
    """Stop ``node``'s heartbeats (and its BYE); ``speak`` starts them again."""
    parts(node).heartbeats.send = lambda kind=Kind.HB: None


def speak(node: Node) -> None:
    del parts(node).heartbeats.send


def logged(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    """The WARNING lines of rejected frames that contain every one of ``words``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.getMessage().startswith("rejected a frame")
        and all(w in r.getMessage() for w in words)
    ]


def logged_once(
    caplog: pytest.LogCaptureFixture, nodes: list[Node], peer: str, problem: str, *words: str
) -> None:
    """The first of ``nodes`` logged (peer, problem), and each node that did (every node
    here that reads the forger's PUB may), logged it once: one line each."""
    rejected = [n for n in nodes if (peer, problem) in parts(n).heartbeats.reject._logged]
    assert rejected[:1] == nodes[:1], f"{nodes[0].node_id} did not log {problem} of {peer}"
    assert len(logged(caplog, f"from {peer}:", *words)) == len(rejected)


@pytest.fixture(autouse=True)
def _log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="catga_zmq.node")


async def silent(a: Node, b: Node, m: RawPeer) -> int:
    """Silence ``b`` until ``a`` has it SUSPECT or FAULTED (``m`` heartbeats meanwhile);
    its incarnation there."""
    incarnation = member(a, "b").incarnation
    silence(b)
    await m.publish_until(
        lambda: _status(a, "b") in (NodeStatus.SUSPECT, NodeStatus.FAULTED), [own_beat(m)], 20
    )
    return incarnation


async def back(a: Node, b: Node) -> None:
    """``b`` heartbeats again: ``a`` has it ALIVE at its own endpoints, and it answers."""
    speak(b)
    await wait_until(lambda: _status(a, "b") is NodeStatus.ALIVE, timeout=20)
    seen = member(a, "b")
    assert (seen.endpoint, seen.pub_endpoint) == (b.endpoint, b.pub_endpoint)
    assert (await a.send(Ping(), node="b", timeout=10)).node_id == "b"


# node-id hijack ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["curve", "any_key"])
@pytest.mark.parametrize("claimed", ["own-key", "copied-key"])
async def test_a_peer_cannot_take_a_silent_members_id_with_curve(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    claimed: str,
) -> None:
    # In plaintext a silent node's id may be taken from another PUB with a newer
    # incarnation (a restart at new ports looks the same); with CURVE, only with its key.
    a, b = await two_nodes(make_node, keys, mode)
    m = raw_peer(a, "m" if mode == "curve" else "stranger", True)
    await joined(a, m)
    incarnation = await silent(a, b, m)
    key = m.public_key if claimed == "own-key" else keys.pair("b")[0].decode()
    body = m.heartbeat_body(node_id="b", incarnation=incarnation + 10**12, public_key=key)
    rejected = a.stats().frames_rejected
    await forge(m, [[HEARTBEAT_TOPIC, header(Kind.HB, "b"), _enc(body)]], a, rejected + ROUNDS)
    seen = member(a, "b")
    assert (seen.endpoint, seen.incarnation) == (b.endpoint, incarnation)
    assert seen.status is not NodeStatus.ALIVE
    logged_once(caplog, [a, b], "b", "untrusted-key", "not trusted for that node id")
    await back(a, b)


@pytest.mark.parametrize("mode", ["plaintext", "curve"])
async def test_a_peer_cannot_take_a_live_members_id(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    a, b = await two_nodes(make_node, keys, mode, suspect_after=1.0, faulted_after=2.0)
    m = raw_peer(a, "m", mode != "plaintext")
    await joined(a, m)
    later = member(a, "b").incarnation + 10**12
    b_key = keys.pair("b")[0].decode() if mode != "plaintext" else ""
    body = m.heartbeat_body(node_id="b", incarnation=later, public_key=b_key)
    rejected = a.stats().frames_rejected
    await forge(m, [[HEARTBEAT_TOPIC, header(Kind.HB, "b"), _enc(body)]], a, rejected + ROUNDS)
    seen = member(a, "b")
    assert (seen.endpoint, seen.status) == (b.endpoint, NodeStatus.ALIVE)
    assert seen.incarnation < later
    logged_once(
        caplog, [a, b], "b", "heartbeat-connection", f"read from the PUB at {m.pub_endpoint}"
    )
    assert (await a.send(Ping(), node="b", timeout=10)).node_id == "b"


@pytest.mark.parametrize("mode", ["curve", "any_key"])
async def test_a_peer_cannot_make_a_curve_node_stop_by_claiming_its_id(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    # Two nodes with one id: the younger stops. A heartbeat of an "older a" from
    # another key's PUB must not make a stop (in plaintext nothing tells them apart).
    a, b = await two_nodes(make_node, keys, mode)
    m = raw_peer(a, "m" if mode == "curve" else "stranger", True)
    await joined(a, m)
    a_key = keys.pair("a")[0].decode()
    frames = [
        [HEARTBEAT_TOPIC, header(Kind.HB, "a"), _enc(m.heartbeat_body(node_id="a", public_key=k))]
        for k in (m.public_key, a_key)
    ]
    rejected = a.stats().frames_rejected
    await forge(m, frames, a, rejected + 2 * ROUNDS)
    assert a.failure is None and a.healthy
    logged_once(caplog, [a, b], "a", "untrusted-key", "not trusted for that node id")
    assert (await a.send(Ping(), node="b", timeout=10)).node_id == "b"


async def test_greetings_cannot_change_the_key_an_open_connection_proved(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # m greets a with made-up addresses: "b is at m's endpoints" (so that m's PUB would
    # pass for b's) and "m is at b's endpoints" (so that b's heartbeats would fail the
    # key check). Neither may change the key of a connection a has open.
    a, b = await two_nodes(make_node, keys, "curve")
    m = raw_peer(a, "m", True)
    await joined(a, m)
    b_key, m_key = keys.pair("b")[0].decode(), m.public_key
    cluster = a.options.cluster
    lies = [
        PeerAddress("b", m.endpoint, m.pub_endpoint, cluster, PROTOCOL_VERSION, b_key),
        PeerAddress("m", b.endpoint, b.pub_endpoint, cluster, PROTOCOL_VERSION, m_key),
    ]
    dealer = zctx.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.curve_publickey, dealer.curve_secretkey = keys.pair("m")
        dealer.curve_serverkey = keys.pair("a")[0]
        dealer.connect(a.endpoint)
        for rid, lie in enumerate(lies, 1):
            dealer.send_multipart([header(Kind.REQ, "m", rid, Info.__wire_name__), _enc(Info(lie))])
        answered: list[list[bytes]] = []
        async with asyncio.timeout(10):  # both greetings answered: a took them in
            while len(answered) < len(lies):
                if dealer.poll(0):
                    answered += unbatch(dealer.recv_multipart())
                else:
                    await asyncio.sleep(0.01)
    finally:
        dealer.close(0)
    assert {decode_header(h).kind for h, _ in answered} == {int(Kind.REP)}
    # b's own heartbeats still pass: a stays with b for longer than it takes to suspect.
    until = time.monotonic() + 4 * a.options.suspect_after
    await m.publish_until(lambda: time.monotonic() > until, [own_beat(m)])
    assert _status(a, "b") is NodeStatus.ALIVE
    incarnation = await silent(a, b, m)
    body = m.heartbeat_body(node_id="b", incarnation=incarnation + 10**12, public_key=b_key)
    rejected = a.stats().frames_rejected
    await forge(m, [[HEARTBEAT_TOPIC, header(Kind.HB, "b"), _enc(body)]], a, rejected + ROUNDS)
    assert member(a, "b").endpoint == b.endpoint
    logged_once(caplog, [a, b], "b", "untrusted-key", "not trusted for that node id")
    await back(a, b)


# forged BYE ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plaintext", "curve"])
@pytest.mark.parametrize("member_is", ["live", "silent"])
async def test_a_forged_bye_does_not_mark_a_member_left(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    member_is: str,
) -> None:
    a, b = await two_nodes(make_node, keys, mode, suspect_after=1.0, faulted_after=2.0)
    m = raw_peer(a, "m", mode != "plaintext")
    await joined(a, m)
    incarnation = member(a, "b").incarnation
    if member_is == "silent":
        await silent(a, b, m)
    b_key = keys.pair("b")[0].decode() if mode != "plaintext" else ""
    byes = [
        [HEARTBEAT_TOPIC, header(Kind.BYE, "b"), _enc(body)]
        for body in (
            m.heartbeat_body(node_id="b", incarnation=incarnation, status="left"),
            # A "newer life" of b that leaves at once, from m's PUB.
            m.heartbeat_body(
                node_id="b", incarnation=incarnation + 10**12, status="left", public_key=b_key
            ),
        )
    ]
    rejected = a.stats().frames_rejected
    await forge(m, byes, a, rejected + 2 * ROUNDS)
    assert _status(a, "b") is not NodeStatus.LEFT
    assert member(a, "b").incarnation == incarnation
    logged_once(
        caplog, [a, b], "b", "heartbeat-connection", f"read from the PUB at {m.pub_endpoint}"
    )
    if member_is == "silent":
        await back(a, b)
    else:
        assert (await a.send(Ping(), node="b", timeout=10)).node_id == "b"


# forged event sources --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plaintext", "curve"])
async def test_forged_events_do_not_keep_a_silent_member_alive_and_are_dropped(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    a = make_node("a", **security(keys, mode, "a"))
    got: list[int] = []

    @a.subscribe
    async def on_noted(event: Noted) -> None:
        got.append(event.n)

    b = make_node("b", **security(keys, mode, "b"))
    await a.start()
    await b.start()
    await wait_until(lambda: _status(a, "b") is NodeStatus.ALIVE, timeout=20)
    m = raw_peer(a, "m", mode != "plaintext")
    await joined(a, m)
    silence(b)
    rejected = a.stats().frames_rejected
    # m's events name b as their source while b is silent: b goes SUSPECT all the same.
    n = 0
    async with asyncio.timeout(20):
        while _status(a, "b") is NodeStatus.ALIVE:
            n += 1
            m.pub.send_multipart(own_beat(m))
            m.pub.send_multipart(
                [NOTED_TOPIC, header(Kind.EVT, "b", n, Noted.__wire_name__), _enc(Noted(n))]
            )
            await asyncio.sleep(0.02)
    await forge(
        m,
        [[NOTED_TOPIC, header(Kind.EVT, "b", n + 1, Noted.__wire_name__), _enc(Noted(n + 1))]],
        a,
        rejected + ROUNDS,
    )
    assert _status(a, "b") in (NodeStatus.SUSPECT, NodeStatus.FAULTED)
    assert got == []  # not b's: dropped, not delivered as b's
    logged_once(caplog, [a, b], "b", "event-connection", "which is not that member's")
    # m's events under its own id are delivered: the control.
    await m.publish_until(
        lambda: -1 in got,
        [
            own_beat(m),
            [NOTED_TOPIC, header(Kind.EVT, "m", 1, Noted.__wire_name__), _enc(Noted(-1))],
        ],
    )
    await back(a, b)


# sprayed replies ----------------------------------------------------------------------------


async def ident_of(a: Node, m: RawPeer) -> bytes:
    """The identity of ``a``'s DEALER at ``m``'s ROUTER: ``a`` pings ``m``, ``m`` answers."""
    assert m.router is not None
    call = asyncio.create_task(a.send(Ping(), node=m.node_id, timeout=20))
    await wait_until(lambda: bool(m.router is not None and m.router.poll(0)), timeout=20)
    ident, raw_header, _ = m.router.recv_multipart()
    rid = decode_header(raw_header).request_id
    m.router.send_multipart([ident, header(Kind.REP, m.node_id, rid), _enc(Pong(m.node_id, 0.0))])
    assert (await call).node_id == m.node_id
    return ident


@pytest.mark.parametrize("mode", ["plaintext", "curve"])
async def test_sprayed_replies_answer_nothing_and_are_counted(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    a = make_node("a", **security(keys, mode, "a"))
    b = make_node("b", **security(keys, mode, "b"))

    release = asyncio.Event()

    @b.handler
    async def slow(req: Slow) -> Served:
        async with asyncio.timeout(20):
            await release.wait()
        return Served("b")

    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Slow)
    m = raw_peer(a, "m", mode != "plaintext")
    await joined(a, m)
    ident = await ident_of(a, m)
    assert m.router is not None
    call = asyncio.create_task(a.send(Slow(seconds=1.0), node="b", timeout=20))
    await wait_until(lambda: a.stats().pending == 1, timeout=10)
    rejected, late = a.stats().frames_rejected, a.stats().late_replies
    forged = _enc(Served("m"))
    sprayed = 200
    for _ in range(2):
        for rid in range(1, sprayed + 1):  # every request id a has used, and more
            m.router.send_multipart([ident, header(Kind.REP, "b", rid), forged])
    # The ones to the request in flight to b are rejected; the rest answer nothing.
    await wait_until(lambda: a.stats().late_replies == late + 2 * (sprayed - 1), timeout=10)
    assert a.stats().frames_rejected == rejected + 2
    assert not call.done()
    release.set()
    assert await call == Served("b")
    logged_once(caplog, [a, b], m.endpoint, "reply-connection", "where that request did not go")


# handlers offered by a stranger ---------------------------------------------------------------


@pytest.mark.parametrize("claimed", ["own-key", "b-key"])
async def test_a_stranger_cannot_offer_handlers_to_a_curve_cluster(
    make_node: MakeNode, keys: Keys, raw_peer: Callable[..., RawPeer], claimed: str
) -> None:
    # The only way to offer handlers is a heartbeat that lists them: a stranger's key
    # never gets its PUB read, so no request goes to it.
    a = make_node("a", **keys.settings("a"))
    b = make_node("b", **keys.settings("b"))

    @b.handler
    async def slow(req: Slow) -> Served:
        return Served("b")

    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Slow)
    s = raw_peer(a, "stranger", True)
    if claimed == "b-key":  # announced with b's key: a's SUB cannot finish its handshake
        s.public_key = keys.pair("b")[0].decode()
    rejected = a.stats().frames_rejected
    await s.announce()
    offer = s.heartbeat_body(handles=[Slow.__wire_name__], public_key=s.public_key)
    await forge(s, [[HEARTBEAT_TOPIC, header(Kind.HB, "stranger"), _enc(offer)]])
    assert _status(a, "stranger") is None
    assert s.pub_endpoint not in parts(a).transport.subscribed  # never read
    # Its announcement, refused.
    await wait_until(lambda: a.stats().frames_rejected >= rejected + 1, timeout=10)
    assert s.router is not None and not s.router.poll(0)
    served = {(await a.send(Slow(seconds=0.0), timeout=10)).by for _ in range(10)}
    assert served == {"b"}


# any key: bindings --------------------------------------------------------------------------


async def test_any_key_bindings_stay_within_max_peers_and_keep_known_nodes(
    make_node: MakeNode,
    keys: Keys,
    raw_peer: Callable[..., RawPeer],
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    a, _ = await two_nodes(make_node, keys, "any_key", max_peers=4)
    trust = parts(a).heartbeats.trust
    assert isinstance(trust, FirstKeySeen) and trust.limit == 4 + 1  # and a's own id
    s = raw_peer(a, "stranger", True)
    await joined(a, s)
    # A flood of new ids: heartbeats from the stranger's PUB, and requests on a raw
    # CURVE DEALER, each naming an id of its own.
    sock = zctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey = keys.pair("stranger")
        sock.curve_serverkey = keys.pair("a")[0]
        sock.connect(a.endpoint)
        beats = [
            [
                HEARTBEAT_TOPIC,
                header(Kind.HB, f"x{i}"),
                _enc(s.heartbeat_body(node_id=f"x{i}", endpoint=f"tcp://127.0.0.1:{20000 + i}")),
            ]
            for i in range(50)
        ]
        for i in range(200):
            sock.send_multipart(
                [header(Kind.REQ, f"y{i}", i + 1, Ping.__wire_name__), _enc(Ping())]
            )
        answered: list[list[bytes]] = []
        async with asyncio.timeout(10):  # each answered (an id of its own is anyone's)
            while len(answered) < 200:
                if sock.poll(0):
                    answered += unbatch(sock.recv_multipart())
                else:
                    await asyncio.sleep(0.01)
        assert {decode_header(h).kind for h, _ in answered} == {int(Kind.REP)}
        await forge(s, beats)
        await wait_until(lambda: a.stats().frames_rejected >= 40, timeout=10)
        # Requests bind nothing, heartbeats only as many ids as the peer table holds.
        assert len(trust) <= 5 and trust.key_of("a") == keys.pair("a")[0]
        assert not any(trust.key_of(f"y{i}") for i in range(200))
        assert trust.key_of("b") == keys.pair("b")[0]
        # b, known before the flood, is still b: its key only.
        assert not trust.identity_ok("b", keys.pair("stranger")[0])
        assert (await a.send(Ping(), node="b", timeout=10)).node_id == "b"
        rejected = a.stats().frames_rejected
        sock.send_multipart([header(Kind.REQ, "b", 999, Ping.__wire_name__), _enc(Ping())])
        await wait_until(lambda: a.stats().frames_rejected > rejected, timeout=10)
    finally:
        sock.close(0)
    # The invented members fall silent and give way to a new id: the one forgotten is
    # unbound with it, so the bound holds; b, live, is never the one to go.
    invented = {m.node_id for m in a.members()} - {"a", "b", "stranger"}
    assert len(invented) == 2
    fresh = [
        HEARTBEAT_TOPIC,
        header(Kind.HB, "z"),
        _enc(s.heartbeat_body(node_id="z", endpoint="tcp://127.0.0.1:20999")),
    ]
    await s.publish_until(lambda: _status(a, "z") is not None, [own_beat(s), fresh])
    gone = invented - {m.node_id for m in a.members()}
    assert len(gone) == 1 and trust.key_of(gone.pop()) is None
    assert trust.key_of("z") == keys.pair("stranger")[0] and len(trust) <= 5
    assert trust.key_of("b") == keys.pair("b")[0] and _status(a, "b") is NodeStatus.ALIVE

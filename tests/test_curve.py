"""CURVE: encrypted, authenticated nodes; strangers get nowhere, members cannot pose.

Keys are made with the library's own ``security.generate`` (what ``keygen`` writes);
every node and every stranger here is a real ZeroMQ socket on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from _procs import Proc, python
from conftest import MakeNode, wait_until

from catga_zmq import CatgaError, Event, Node, Request, TransportFailed
from catga_zmq.protocol import PROTOCOL_VERSION, Header, Kind
from catga_zmq.security import RELOAD_INTERVAL, generate, load_secret
from catga_zmq.transport import Curve, Transport

_enc = msgspec.msgpack.encode


class Echo(Request[str]):
    __wire_name__ = "curve.Echo"
    text: str


class Noted(Event):
    __wire_name__ = "curve.Noted"
    n: int


class Keys:
    """Key pairs in ``tmp``: ``secret(name)``; the trust directory holds ``trusted``."""

    def __init__(self, tmp: Path, names: list[str], trusted: list[str]) -> None:
        self.dir = tmp / "keys"
        self.trust = tmp / "trust"
        self.trust.mkdir()
        self.dir.mkdir()
        for name in names:
            public, _ = generate(name, self.dir)
            if name in trusted:
                shutil.copy(public, self.trust / public.name)

    def secret(self, name: str) -> str:
        return str(self.dir / f"{name}.key_secret")

    def pair(self, name: str) -> tuple[bytes, bytes]:
        keys = load_secret(self.secret(name))
        return keys.public, keys.secret

    def settings(self, name: str) -> dict[str, object]:
        return {"curve_secret_key": self.secret(name), "curve_trust_dir": str(self.trust)}


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, ["a", "b", "stranger"], trusted=["a", "b"])


def echo_server(node: Node) -> None:
    @node.handler
    async def echo(req: Echo) -> str:
        return f"echo {req.text}"


def request(source: str, rid: int, text: str) -> list[bytes]:
    header = Header(PROTOCOL_VERSION, int(Kind.REQ), rid, Echo.__wire_name__, source, 5000)
    return [_enc(header), _enc(Echo(text=text))]


Connect = Callable[[tuple[bytes, bytes], bytes, str], zmq.Socket[bytes]]


@pytest.fixture
def curve_dealer(zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Connect]:
    """``curve_dealer((public, secret), server_key, endpoint)``: a raw CURVE DEALER."""
    made: list[zmq.Socket[bytes]] = []

    def connect(pair: tuple[bytes, bytes], server_key: bytes, endpoint: str) -> zmq.Socket[bytes]:
        sock = zctx.socket(zmq.DEALER)
        made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey = pair
        sock.curve_serverkey = server_key
        sock.connect(endpoint)
        return sock

    yield connect
    for sock in made:
        sock.close(0)


async def answers(sock: zmq.Socket[bytes], seconds: float) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while sock.poll(0):
            got.append(sock.recv_multipart())
        await asyncio.sleep(0.02)
    return got


async def test_curve_nodes_serve_requests_and_events(make_node: MakeNode, keys: Keys) -> None:
    a = make_node("a", **keys.settings("a"))
    b = make_node("b", **keys.settings("b"))
    echo_server(b)
    got: list[int] = []

    @a.subscribe
    async def on_noted(event: Noted) -> None:
        got.append(event.n)

    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Echo)
    await b.wait_for_peers(1, timeout=20)
    assert await a.send(Echo(text="x"), timeout=10) == "echo x"
    async with asyncio.timeout(20):
        while not got:
            await b.publish(Noted(n=1))
            await asyncio.sleep(0.05)
    assert a.stats().frames_rejected == 0 and b.stats().frames_rejected == 0


async def test_a_stranger_key_gets_no_answer_and_is_counted(
    make_node: MakeNode, keys: Keys, curve_dealer: Connect
) -> None:
    b = make_node("b", **keys.settings("b"))
    echo_server(b)
    await b.start()
    b_key = keys.pair("b")[0]
    sock = curve_dealer(keys.pair("stranger"), b_key, b.endpoint)
    for rid in range(1, 4):
        sock.send_multipart(request("stranger", rid, "let me in"), zmq.NOBLOCK)
    assert await answers(sock, 1.5) == []
    await wait_until(lambda: b.stats().connections_refused >= 1, timeout=10)
    # The control: a trusted key on the same path is answered.
    friend = curve_dealer(keys.pair("a"), b_key, b.endpoint)
    friend.send_multipart(request("a", 1, "hello"))
    got = await answers(friend, 1.5)
    assert got and msgspec.msgpack.decode(got[-1][-1]) == "echo hello"


async def test_a_trusted_key_cannot_speak_for_another_node(
    make_node: MakeNode, keys: Keys, curve_dealer: Connect
) -> None:
    b = make_node("b", **keys.settings("b"))
    echo_server(b)
    await b.start()
    sock = curve_dealer(keys.pair("a"), keys.pair("b")[0], b.endpoint)
    rejected = b.stats().frames_rejected
    sock.send_multipart(request("b", 1, "i am b"))  # a's key, b's name
    assert await answers(sock, 1.5) == []
    assert b.stats().frames_rejected == rejected + 1
    sock.send_multipart(request("a", 2, "i am a"))  # its own name: answered
    got = await answers(sock, 1.5)
    assert got and msgspec.msgpack.decode(got[-1][-1]) == "echo i am a"


async def test_any_key_mode_lets_a_new_key_in_but_not_under_a_taken_node_id(
    make_node: MakeNode, keys: Keys, curve_dealer: Connect
) -> None:
    any_key = {"curve_any_key": True}
    a = make_node("a", curve_secret_key=keys.secret("a"), **any_key)
    b = make_node("b", curve_secret_key=keys.secret("b"), **any_key)
    echo_server(b)
    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Echo)
    await b.wait_for_peers(1, timeout=20)  # a's heartbeats bound "a" to a's key at b
    assert await a.send(Echo(text="x"), timeout=10) == "echo x"
    sock = curve_dealer(keys.pair("stranger"), keys.pair("b")[0], b.endpoint)
    sock.send_multipart(request("stranger", 1, "new here"))
    got = await answers(sock, 1.5)
    assert got and msgspec.msgpack.decode(got[-1][-1]) == "echo new here"
    rejected = b.stats().frames_rejected
    sock.send_multipart(request("a", 2, "i am a"))  # a node id bound to another key
    assert await answers(sock, 1.5) == []
    assert b.stats().frames_rejected == rejected + 1


# what goes over the wire -----------------------------------------------------------------


def tcpdump() -> str:
    found = shutil.which("tcpdump")
    if found is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI installs tcpdump and runs as root: the capture must run")
        pytest.skip("needs tcpdump and root")
    return found


async def capture_of(tmp: Path, port: int, send: Callable[[], object], name: str) -> bytes:
    """The raw packets on loopback to and from ``port`` while ``send()`` runs."""
    pcap = tmp / f"{name}.pcap"
    cmd = [
        tcpdump(),
        "-i",
        "lo",
        "-U",
        "--immediate-mode",
        "-w",
        str(pcap),
        "-s",
        "0",
        f"tcp port {port}",
    ]
    proc = Proc.start("tcpdump", cmd, tmp / name)
    try:
        # tcpdump says so on stderr once it listens on the interface.
        async with asyncio.timeout(15):
            while "listening on" not in proc.stderr():
                if proc.returncode is not None:
                    raise proc.fail("tcpdump ended")
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # it says so a moment before its filter is in place
        result = send()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(0.5)  # the packets are written (-U: per packet)
    finally:
        proc.stop()
    return pcap.read_bytes()


MARKER = "marker-7f3a9c-in-the-payload"


@pytest.mark.skipif(sys.platform != "linux", reason="tcpdump on lo")
@pytest.mark.parametrize("curve", [False, True], ids=["plaintext", "curve"])
async def test_a_capture_shows_the_payload_only_in_plaintext(
    make_node: MakeNode, keys: Keys, tmp_path: Path, curve: bool
) -> None:
    settings = (lambda n: keys.settings(n)) if curve else (lambda n: {})
    a = make_node("a", **settings("a"))
    b = make_node("b", **settings("b"))
    echo_server(b)
    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Echo)
    port = int(b.endpoint.rsplit(":", 1)[1])

    async def send() -> None:
        assert await a.send(Echo(text=MARKER), timeout=10) == f"echo {MARKER}"

    packets = await capture_of(tmp_path, port, send, "curve" if curve else "plain")
    assert len(packets) > 200  # the request and its reply were captured
    assert (MARKER.encode() in packets) is not curve


# operator commands -------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "stranger"])
async def test_nodes_command_lists_a_curve_cluster_only_with_a_trusted_key(
    make_node: MakeNode, tmp_path: Path, trusted: bool
) -> None:
    keys = Keys(tmp_path, ["a", "ops"], trusted=["a", "ops"] if trusted else ["a"])
    a = make_node("a", **keys.settings("a"))
    await a.start()
    cmd = python(
        "-m",
        "catga_zmq",
        "nodes",
        "--cluster",
        a.options.cluster,
        "--discovery",
        "static",
        "--seeds",
        f"{a.endpoint};a",  # the seed's key: the trust directory's certificate "a"
        "--node-id",
        "ops",
        "--curve-secret-key",
        keys.secret("ops"),
        "--curve-trust-dir",
        str(keys.trust),
        "--wait",
        "2",
        "--json",
    )
    proc = Proc.start("ops", cmd, tmp_path / "ops")
    try:
        code = await proc.await_exit(timeout=60)
    finally:
        proc.stop()
    assert code == (0 if trusted else 1), proc.stderr()  # 1: it found no nodes
    listed = [row["node"] for row in json.loads(proc.stdout())]
    assert listed == (["a"] if trusted else [])
    if not trusted:
        assert a.stats().connections_refused >= 1


# trust without a restart -------------------------------------------------------------------


async def test_a_key_removed_from_the_trust_directory_is_refused_within_the_bound(
    make_node: MakeNode, tmp_path: Path
) -> None:
    keys = Keys(tmp_path, ["a", "b"], trusted=["a", "b"])
    own = tmp_path / "trust-of-a"  # a's own trust directory, changed under it
    shutil.copytree(keys.trust, own)
    a = make_node("a", curve_secret_key=keys.secret("a"), curve_trust_dir=str(own))
    b = make_node("b", **keys.settings("b"))
    echo_server(a)
    await a.start()
    await b.start()
    await b.wait_for_peers(1, timeout=20, handles=Echo)
    assert await b.send(Echo(text="before"), node="a", timeout=10) == "echo before"
    (own / "b.key").unlink()
    removed = time.monotonic()
    # RELOAD_INTERVAL (2 s), then b's next frame on its open connection is refused.
    async with asyncio.timeout(RELOAD_INTERVAL + 10):
        while True:
            try:
                await b.send(Echo(text="after"), node="a", timeout=0.5)
            except CatgaError:
                break
            await asyncio.sleep(0.1)
    assert time.monotonic() - removed < RELOAD_INTERVAL + 10
    rejected = a.stats().frames_rejected
    await wait_until(lambda: a.stats().frames_rejected > rejected, timeout=10)


# fail closed, and what a stranger's SUB gets -------------------------------------------------


async def test_a_curve_transport_does_not_bind_without_its_zap_handler() -> None:
    transport = Transport(
        "x", max_message_size=1 << 20, hwm=1000, curve=Curve(*zmq.curve_keypair())
    )
    try:
        with pytest.raises(TransportFailed, match="ZAP handler"):
            transport.bind("127.0.0.1", 0, 0, "")
        assert transport.router is None and transport.pub is None  # nothing bound
    finally:
        transport.close()


async def test_a_stranger_key_receives_no_events(
    make_node: MakeNode, keys: Keys, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    b = make_node("b", **keys.settings("b"))
    await b.start()
    b_key = keys.pair("b")[0]
    subs: dict[str, zmq.Socket[bytes]] = {}
    try:
        for name in ("stranger", "a"):  # "a" is trusted: the control
            sock = zctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_publickey, sock.curve_secretkey = keys.pair(name)
            sock.curve_serverkey = b_key
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(b.pub_endpoint)
            subs[name] = sock
        got: dict[str, int] = {"stranger": 0, "a": 0}
        async with asyncio.timeout(20):
            while not got["a"]:
                await b.publish(Noted(n=1))
                await asyncio.sleep(0.05)
                for name, sock in subs.items():
                    while sock.poll(0):
                        sock.recv_multipart()
                        got[name] += 1
        assert got["stranger"] == 0
        assert b.stats().connections_refused >= 1
    finally:
        for sock in subs.values():
            sock.close(0)

"""Handshakes that fail where no key was announced: said once each way, counted, and
retried at a bounded pace.

A CURVE node that holds a key for a peer running in plaintext, a plaintext node seeded
with a CURVE node's address, a peer that refuses a key: only libzmq sees these, as a
failed handshake; the socket monitors turn them into one WARNING per endpoint and
``NodeStats.handshakes_failed``. Real sockets on loopback throughout.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest
import zmq
from conftest import MakeNode, wait_until
from test_curve import Echo, Keys, echo_server

from catga_zmq import CatgaError
from catga_zmq._handshake import RETRY_FIRST, RETRY_MAX, retry_delay, stop_reconnect_option

SECURITY = "catga_zmq.security"


def inbound_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the ROUTER side said: a mechanism mismatch, or (as libzmq may report the
    same client, depending on timing) a connection closed during the handshake."""
    return [
        m
        for m in warnings_with(caplog, "")
        if m.startswith(("refused a client", "a client closed its connection"))
    ]


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SECURITY and r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    # "p" has a certificate in the trust directory, but runs in plaintext.
    return Keys(tmp_path, ["a", "b", "p", "stranger"], trusted=["a", "b", "p"])


async def test_a_curve_node_that_meets_a_plaintext_peer_says_so_once_per_endpoint(
    make_node: MakeNode, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, SECURITY)
    # p announces no key (plaintext), but a's trust directory has one for "p": a
    # connects with CURVE, and only the handshake can tell.
    p = make_node("p")
    a = make_node("a", **keys.settings("a"))
    await p.start()
    await a.start()
    ends = {p.endpoint, p.pub_endpoint}
    # Retries: the first at once, the next RETRY_FIRST s later, each endpoint.
    await wait_until(lambda: a.stats().handshakes_failed >= 2 * len(ends), timeout=20)
    for end in ends:
        # "does not speak CURVE", or (when the peer's reset beats its greeting, as
        # libzmq may report it) a failure that names plaintext among its causes.
        said = warnings_with(caplog, f"{end} ")
        assert len(said) == 1, said
        assert "plaintext" in said[0] and "--curve-secret-key" in said[0], said
    # p's ROUTER refused a's CURVE DEALER: counted, and said once a kind.
    await wait_until(lambda: p.stats().handshakes_failed >= 3, timeout=20)
    said = inbound_warnings(caplog)
    assert 1 <= len(said) <= 2 and len(set(said)) == len(said), said
    assert all("(1 so far)" in m and "CURVE" in m for m in said), said
    assert p.stats().connections_dropped == 0  # never up, so never dropped
    assert [m.node_id for m in a.members() if not m.local] == []


async def test_a_plaintext_node_seeded_with_a_curve_node_gets_nowhere_and_says_why(
    make_node: MakeNode, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, SECURITY)
    a = make_node("a", **keys.settings("a"))
    echo_server(a)
    await a.start()
    # A seed without ";KEY": nothing tells p that a uses CURVE but the handshake.
    p = make_node("p", discovery="static", seeds=[a.endpoint])
    await p.start()
    await wait_until(lambda: p.stats().handshakes_failed >= 2, timeout=20)
    said = warnings_with(caplog, f"{a.endpoint} ")  # "uses CURVE", or a reset (see above)
    assert len(said) == 1, said
    assert "uses CURVE" in said[0] and "curve_secret_key" in said[0], said
    await wait_until(lambda: a.stats().handshakes_failed >= 3, timeout=20)
    said = inbound_warnings(caplog)
    assert 1 <= len(said) <= 2 and len(set(said)) == len(said), said
    assert all("(1 so far)" in m and "plaintext node" in m for m in said), said
    assert a.stats().connections_dropped == 0
    assert a.stats().connections_refused == 0  # no key to refuse: not ZAP's count
    with pytest.raises(CatgaError):
        await p.send(Echo(text="x"), timeout=1)


async def test_curve_nodes_that_trust_each_other_fail_no_handshake(
    make_node: MakeNode, keys: Keys
) -> None:
    a = make_node("a", **keys.settings("a"))
    b = make_node("b", **keys.settings("b"))
    echo_server(b)
    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Echo)
    assert await a.send(Echo(text="x"), timeout=10) == "echo x"
    assert a.stats().handshakes_failed == 0 and b.stats().handshakes_failed == 0


async def test_a_refused_key_is_said_once_and_let_in_once_trusted(
    make_node: MakeNode, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, SECURITY)
    own = tmp_path / "trust-of-b"  # b does not trust a (yet); a trusts b
    own.mkdir()
    shutil.copy(keys.trust / "b.key", own / "b.key")
    b = make_node("b", curve_secret_key=keys.secret("b"), curve_trust_dir=str(own))
    echo_server(b)
    a = make_node("a", **keys.settings("a"))
    await b.start()
    await a.start()
    await wait_until(lambda: a.stats().handshakes_failed >= 4, timeout=20)
    for end in (b.endpoint, b.pub_endpoint):
        said = warnings_with(caplog, f"peer {end} refused this node's CURVE key")
        assert len(said) == 1, said
        assert "trust directory" in said[0]
    assert b.stats().connections_refused >= 2
    # Trusted now: b reloads within RELOAD_INTERVAL, a connects again within RETRY_MAX.
    shutil.copy(keys.trust / "a.key", own / "a.key")
    await a.wait_for_peers(1, timeout=RETRY_MAX + 20, handles=Echo)
    assert await a.send(Echo(text="in"), timeout=10) == "echo in"


# the pace of retries ----------------------------------------------------------------------


def test_the_retry_delay_doubles_up_to_its_bound() -> None:
    delays = [retry_delay(n) for n in range(1, 10)]
    assert delays[0] == RETRY_FIRST
    assert delays == sorted(delays) and delays[-1] == RETRY_MAX
    assert retry_delay(10_000) == RETRY_MAX


@pytest.mark.skipif(stop_reconnect_option() is None, reason="libzmq < 4.3.5: no RECONNECT_STOP")
@pytest.mark.parametrize("server", ["plaintext", "other-key"])
async def test_a_failed_handshake_is_retried_at_a_bounded_pace(
    make_node: MakeNode,
    keys: Keys,
    zctx: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
    server: str,
) -> None:
    """A raw ROUTER counts a's connection attempts: libzmq alone (other key) or a
    reconnect on every end (plaintext) would make one every 100 ms."""
    caplog.set_level(logging.WARNING, SECURITY)
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    if server == "other-key":  # a CURVE server, but not with the key a holds for "b"
        router.curve_publickey, router.curve_secretkey = keys.pair("stranger")
        router.curve_server = True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    mon = router.get_monitor_socket(zmq.EVENT_ACCEPTED)
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        a = make_node("a", discovery="static", seeds=[f"{endpoint};b"], **keys.settings("a"))
        await a.start()
        accepted: list[float] = []
        window = 3 * RETRY_FIRST + 0.5  # attempts at 0, 1 and 3 s: three
        end = time.monotonic() + window
        while time.monotonic() < end:
            while mon.poll(0):
                mon.recv_multipart()
                accepted.append(time.monotonic())
            await asyncio.sleep(0.02)
        assert 1 <= len(accepted) <= 4, f"{len(accepted)} connections in {window} s"
        assert a.stats().handshakes_failed >= 2
        assert len(warnings_with(caplog, f"{endpoint}")) == 1
    finally:
        router.disable_monitor()
        mon.close(0)
        router.close(0)

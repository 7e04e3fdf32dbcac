"""mDNS discovery on real loopback multicast (224.0.0.251 via 127.0.0.1).

Every test uses its own cluster name, so runs on one machine do not see each other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from _net import loopback_multicast_problem

from catga_zmq.discovery.base import Candidate, ChangeKind, DiscoveryChange
from catga_zmq.discovery.mdns import MdnsDiscovery, interfaces_for_bind
from catga_zmq.errors import ConfigError

WAIT = 10.0  # s; discovery on loopback takes about 1.7 s (probing, then announcing)


_problem = loopback_multicast_problem()
pytestmark = pytest.mark.skipif(_problem is not None, reason=_problem or "")


def _cluster() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def _me(node_id: str, port: int, **extra: str) -> Candidate:
    return Candidate(
        endpoint=f"tcp://127.0.0.1:{port}",
        node_id=node_id,
        pub_endpoint=f"tcp://127.0.0.1:{port + 1}",
        public_key=extra.pop("pk", None),
        metadata=dict(extra),
    )


async def _wait_for(
    changes: AsyncIterator[DiscoveryChange], wanted: Callable[[DiscoveryChange], bool]
) -> DiscoveryChange:
    async with asyncio.timeout(WAIT):
        while True:
            change = await anext(changes)
            if wanted(change):
                return change


def _added(node_id: str) -> Callable[[DiscoveryChange], bool]:
    return lambda c: c.kind is ChangeKind.ADDED and c.candidate.node_id == node_id


async def _drained(changes: AsyncIterator[DiscoveryChange]) -> list[DiscoveryChange]:
    """What is left in a watch() after aclose(); it must end, not hang."""
    async with asyncio.timeout(WAIT):
        return [c async for c in changes]


def test_interfaces_for_bind() -> None:
    assert interfaces_for_bind("127.0.0.1") == ["127.0.0.1"]
    assert interfaces_for_bind("127.0.0.2") == ["127.0.0.1"]
    assert interfaces_for_bind("localhost") == ["127.0.0.1"]
    assert interfaces_for_bind("::1") == ["127.0.0.1"]
    assert interfaces_for_bind("192.0.2.7") == ["192.0.2.7"]
    for wildcard in ("0.0.0.0", "*"):
        everything = interfaces_for_bind(wildcard)
        assert "127.0.0.1" in everything
        assert all(ipaddress.ip_address(a).version == 4 for a in everything)
    with pytest.raises(ConfigError):
        interfaces_for_bind("some-host.example")


async def test_construction_is_cheap_and_close_is_idempotent() -> None:
    d = MdnsDiscovery(_cluster(), ["127.0.0.1"])
    assert d.candidates() == []
    await d.unregister()
    await d.aclose()
    await d.aclose()
    assert await _drained(d.watch()) == []
    with pytest.raises(RuntimeError):
        await d.register(_me("late", 7000))


async def test_two_nodes_see_each_other() -> None:
    cluster = _cluster()
    a = MdnsDiscovery(cluster, ["127.0.0.1"])
    b = MdnsDiscovery(cluster, ["127.0.0.1"], version=3)
    try:
        a_changes, b_changes = a.watch(), b.watch()
        await asyncio.gather(
            a.register(_me("node-a", 7100)),
            b.register(_me("node/b.1", 7200, pk="b" * 40, zone="eu", rack="r7")),
        )

        seen_by_a = (await _wait_for(a_changes, _added("node/b.1"))).candidate
        seen_by_b = (await _wait_for(b_changes, _added("node-a"))).candidate

        assert seen_by_a == Candidate(
            endpoint="tcp://127.0.0.1:7200",
            node_id="node/b.1",
            pub_endpoint="tcp://127.0.0.1:7201",
            cluster=cluster,
            version=3,  # another version is still a candidate: the node decides
            public_key="b" * 40,
        )
        assert seen_by_a.metadata == {"zone": "eu", "rack": "r7"}
        assert seen_by_b.endpoint == "tcp://127.0.0.1:7100"
        assert (seen_by_b.version, seen_by_b.public_key, seen_by_b.metadata) == (1, None, {})
        assert a.candidates() == [seen_by_a]  # never itself
        assert b.candidates() == [seen_by_b]
        # The instance name is a DNS label made from the node id, plus a suffix.
        assert b.service_name is not None
        assert b.service_name.startswith("node-b-1-")
    finally:
        await a.aclose()
        await b.aclose()
    assert all(c.candidate.node_id != "node-a" for c in await _drained(a_changes))
    await _drained(b_changes)


class _Turned(logging.Handler):
    """Sets ``event`` when a node of cluster ``ours`` logs that it ignored one of ``theirs``."""

    def __init__(self, ours: str, theirs: str) -> None:
        super().__init__(logging.DEBUG)
        self.clusters = (theirs, ours)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # The record is "ignoring <name> of cluster <theirs> (ours is <ours>)".
        if isinstance(record.args, tuple) and record.args[1:] == self.clusters:
            self.event.set()


async def test_other_cluster_is_not_seen() -> None:
    cluster, other = _cluster(), _cluster()
    a = MdnsDiscovery(cluster, ["127.0.0.1"])
    b = MdnsDiscovery(cluster, ["127.0.0.1"])
    stranger = MdnsDiscovery(other, ["127.0.0.1"])
    logger = logging.getLogger("catga_zmq.discovery.mdns")
    turned, level = _Turned(cluster, other), logger.level
    logger.addHandler(turned)
    logger.setLevel(logging.DEBUG)
    try:
        a_changes = a.watch()
        await asyncio.gather(
            a.register(_me("a", 7300)),
            b.register(_me("b", 7400)),
            stranger.register(_me("x", 7500)),
        )
        await _wait_for(a_changes, _added("b"))
        # Proof that the stranger was heard and turned away, not merely missed.
        async with asyncio.timeout(WAIT):
            await turned.event.wait()
        assert [c.node_id for c in a.candidates()] == ["b"]
    finally:
        logger.removeHandler(turned)
        logger.setLevel(level)
        for d in (a, b, stranger):
            await d.aclose()
    assert all(c.candidate.node_id == "b" for c in await _drained(a_changes))


async def test_unregister_is_seen_as_removed() -> None:
    cluster = _cluster()
    a = MdnsDiscovery(cluster, ["127.0.0.1"])
    b = MdnsDiscovery(cluster, ["127.0.0.1"])
    try:
        first, second = a.watch(), a.watch()
        await asyncio.gather(a.register(_me("a", 7700)), b.register(_me("b", 7800)))
        added = await _wait_for(first, _added("b"))
        assert await _wait_for(second, _added("b")) == added  # every watcher gets it

        name = b.service_name
        await b.unregister()
        await b.unregister()  # idempotent
        assert b.service_name is None
        for changes in (first, second):
            removed = await _wait_for(changes, lambda c: c.kind is ChangeKind.REMOVED)
            assert removed.candidate == added.candidate
        assert a.candidates() == []

        await b.register(_me("b", 7800))  # back under the same name
        assert (await _wait_for(first, _added("b"))).candidate == added.candidate
        assert b.service_name == name
    finally:
        await a.aclose()
        await b.aclose()
    assert await _drained(first) == []
    assert [c.kind for c in await _drained(second)] == [ChangeKind.ADDED]


async def test_late_watcher_starts_with_current_candidates() -> None:
    cluster = _cluster()
    a = MdnsDiscovery(cluster, ["127.0.0.1"])
    b = MdnsDiscovery(cluster, ["127.0.0.1"])
    try:
        early = a.watch()
        await asyncio.gather(a.register(_me("a", 7900)), b.register(_me("b", 8000)))
        await _wait_for(early, _added("b"))
        late = a.watch()
        assert (await _wait_for(late, _added("b"))).candidate.endpoint == "tcp://127.0.0.1:8000"
    finally:
        await a.aclose()
        await b.aclose()
    await _drained(early)
    await _drained(late)


async def test_wildcard_endpoint_and_update() -> None:
    cluster = _cluster()
    a = MdnsDiscovery(cluster, ["127.0.0.1"])
    b = MdnsDiscovery(cluster, ["127.0.0.1"])  # mDNS stays on lo whatever b binds
    wild = Candidate(
        endpoint="tcp://0.0.0.0:8100", node_id="b", pub_endpoint="tcp://*:8101", metadata={"n": "1"}
    )
    try:
        changes = a.watch()
        await asyncio.gather(a.register(_me("a", 8200)), b.register(wild))
        seen = (await _wait_for(changes, _added("b"))).candidate
        # Nobody can dial 0.0.0.0: the address the service resolved to stands in.
        assert (seen.endpoint, seen.pub_endpoint) == (
            "tcp://127.0.0.1:8100",
            "tcp://127.0.0.1:8101",
        )

        name = b.service_name
        await b.register(Candidate(endpoint=wild.endpoint, node_id="b", metadata={"n": "2"}))
        updated = (await _wait_for(changes, _added("b"))).candidate
        assert (updated.metadata, updated.pub_endpoint) == ({"n": "2"}, None)
        assert b.service_name == name
        assert a.candidates() == [updated]
    finally:
        await a.aclose()
        await b.aclose()
    await _drained(changes)

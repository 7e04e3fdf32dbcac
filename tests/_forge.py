"""A raw PUB socket that a node subscribes to as if it were a peer: the tests' forger.

It is announced through the test's ``MemoryHub`` under a node id, with a ROUTER endpoint
where nobody listens (the node's DEALER to it never connects), so whatever it publishes
(heartbeats, events, garbage) reaches the node's SUB socket like a real peer's frames.
With ``router=True`` its ROUTER is real (what it sends there reaches the node's DEALER);
with ``curve=(public, secret)`` both are CURVE servers with that key, announced with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq

from catga_zmq import Candidate, MemoryDiscovery, MemoryHub, Node
from catga_zmq.protocol import PROTOCOL_VERSION, HeartbeatBody


def unused_endpoint(zctx: zmq.Context[zmq.Socket[bytes]]) -> str:
    """A loopback endpoint nothing listens on (bound by a ROUTER, then released)."""
    dead = zctx.socket(zmq.ROUTER)
    endpoint = f"tcp://127.0.0.1:{dead.bind_to_random_port('tcp://127.0.0.1')}"
    dead.close(0)
    return endpoint


class RawPeer:
    """A raw PUB announced as ``node_id`` through the hub, so the node subscribes to it."""

    def __init__(
        self,
        zctx: zmq.Context[zmq.Socket[bytes]],
        hub: MemoryHub,
        cluster: str,
        node_id: str = "evil",
        *,
        router: bool = False,
        curve: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.public_key = curve[0].decode("ascii") if curve else ""
        self.pub = self._server(zctx, zmq.PUB, curve)
        self.pub_endpoint = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.router: zmq.Socket[bytes] | None = None
        if router:
            self.router = self._server(zctx, zmq.ROUTER, curve)
            port = self.router.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:
            self.endpoint = unused_endpoint(zctx)
        self.node_id = node_id
        self.cluster = cluster
        self.discovery = MemoryDiscovery(hub)

    @staticmethod
    def _server(
        zctx: zmq.Context[zmq.Socket[bytes]], kind: int, curve: tuple[bytes, bytes] | None
    ) -> zmq.Socket[bytes]:
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            # No ZAP handler on the test's context: this server lets every client key in.
            sock.curve_publickey, sock.curve_secretkey = curve
            sock.curve_server = True
        return sock

    async def announce(self) -> None:
        await self.discovery.register(
            Candidate(
                endpoint=self.endpoint,
                node_id=self.node_id,
                pub_endpoint=self.pub_endpoint,
                cluster=self.cluster,
                version=PROTOCOL_VERSION,
                public_key=self.public_key or None,
            )
        )

    def heartbeat_body(self, **changes: Any) -> HeartbeatBody:
        """A heartbeat of this raw peer, with ``changes`` to its fields."""
        fields: dict[str, Any] = {
            "node_id": self.node_id,
            "incarnation": 1,
            "seq": 1,
            "status": "alive",
            "cluster": self.cluster,
            "endpoint": self.endpoint,
            "pub_endpoint": self.pub_endpoint,
            "public_key": self.public_key,
        }
        fields.update(changes)
        return HeartbeatBody(**fields)

    async def publish_until(
        self, done: Callable[[], bool], frames: list[list[bytes]], timeout: float = 10.0
    ) -> None:
        """Publish ``frames`` over and over (the SUB may join late) until ``done()``."""
        async with asyncio.timeout(timeout):
            while not done():
                for f in frames:
                    self.pub.send_multipart(f)
                await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        self.pub.close(0)
        if self.router is not None:
            self.router.close(0)
        await self.discovery.aclose()


def raw_peer_fixture(cls: type[RawPeer]) -> Any:
    """A fixture that makes ``cls(zctx, hub, node's cluster)`` per call, closed after."""

    @pytest.fixture
    async def make_raw_peer(
        zctx: zmq.Context[zmq.Socket[bytes]], hub: MemoryHub, make_node: Any
    ) -> AsyncIterator[Callable[[Node], RawPeer]]:
        # make_node first: the raw peers close before the nodes do.
        made: list[RawPeer] = []

        def make(node: Node) -> RawPeer:
            peer = cls(zctx, hub, node.options.cluster)
            made.append(peer)
            return peer

        yield make
        for peer in made:
            await peer.aclose()

    return make_raw_peer

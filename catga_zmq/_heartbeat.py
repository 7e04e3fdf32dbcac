"""Heartbeats out, heartbeats and BYEs in, and the failure-detector loop.

Who may speak for a node (plaintext too; each PUB has its own SUB here, so a frame's
publisher is known):

- A heartbeat or BYE names the PUB endpoint of its node, and is taken only from that
  PUB: a node announces its own PUB, and one read from another (a forger's) is dropped.
- For a known member that is live (ALIVE or DRAINING), only from the PUB that member
  announced: a heartbeat naming its id from any other PUB, even one with a higher
  incarnation that names the PUB it came from, is dropped, counted (``heartbeat-
  connection``) and logged once per peer. So a forger cannot take a live node's id
  (its requests would go to the forger) nor say BYE for it.
- With CURVE, a heartbeat naming this node's own id is taken (as a duplicate's) only
  with this node's own key: the key of another PUB cannot make it stop.
- A BYE is taken only from the PUB its member was heard on, whatever incarnation it
  names: otherwise a forger could say BYE for a silent node with a "newer" one.
- A member gone silent (SUSPECT, FAULTED) or LEFT may come back from another PUB, with a
  newer incarnation: a node restarted at new ports. Its heartbeat arrives on the SUB that
  discovery or a greeting opened to its new PUB, and names that PUB; it replaces the old
  entry. (A forger can claim the id of a silent node the same way: in plaintext only
  CURVE keys tell the two apart.) A node restarted while its old entry is still live
  joins once that entry turns SUSPECT, ``suspect_after`` at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec

from ._clock import now_ms
from ._inbound import Rejections
from .config import NodeOptions, parse_endpoint
from .errors import ConfigError, ProtocolError
from .membership import Membership, NodeStatus, Peer
from .protocol import HEARTBEAT_TOPIC, Header, HeartbeatBody, Kind, decode_heartbeat, encode_header
from .security import Trust, plaintext_meets_curve
from .transport import Transport

log = logging.getLogger("catga_zmq.node")

_BYE: Final = int(Kind.BYE)
#: Members that speak only from the PUB they announced.
_LIVE: Final = (NodeStatus.ALIVE, NodeStatus.DRAINING)


class Heartbeats:
    """Says this node is alive (and what it handles), and judges whether peers are."""

    def __init__(
        self,
        *,
        me: Peer,
        options: NodeOptions,
        membership: Membership,
        transport: Transport,
        reject: Rejections,
        running: Callable[[], int],
        on_fresh: Callable[[HeartbeatBody], None],
        on_duplicate: Callable[[str], None],
        trust: Trust | None = None,
    ) -> None:
        self.me = me
        self.options = options
        self.membership = membership
        self.transport = transport
        self.reject = reject
        self.running = running
        self.on_fresh = on_fresh
        self.on_duplicate = on_duplicate
        #: CURVE: whose keys to accept (None in plaintext).
        self.trust = trust
        self.loop = asyncio.get_running_loop()
        self._seq = 0
        #: Heartbeats taken from peers (those that passed every check; BYEs not counted).
        self.received = 0
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._duplicates: set[tuple[str, int]] = set()

    # out -----------------------------------------------------------------------------

    def body(self) -> HeartbeatBody:
        me = self.me
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        if now - then >= 0.1:
            me.load = round((cpu - cpu_then) / (now - then), 3)
            self._cpu_mark = (now, cpu)
        me.in_flight = self.running()
        self._seq += 1
        return HeartbeatBody(
            node_id=me.node_id,
            incarnation=me.incarnation,
            seq=self._seq,
            status=me.status.value,
            cluster=self.options.cluster,
            endpoint=me.endpoint,
            pub_endpoint=me.pub_endpoint,
            load=me.load,
            in_flight=me.in_flight,
            weight=self.options.weight,
            interval_ms=int(self.options.heartbeat_interval * 1000),
            handles=sorted(me.handles),
            subscribes=sorted(me.subscribes),
            metadata=me.metadata,
            max_message_size=self.options.max_message_size,
            public_key=me.public_key,
            codecs=["zstd"] if me.zstd else [],
        )

    @property
    def sent(self) -> int:
        """Heartbeats (and the BYE) this node has sent: each takes the next sequence number."""
        return self._seq

    def send(self, kind: Kind = Kind.HB) -> None:
        body = msgspec.msgpack.encode(self.body())
        header = encode_header(int(kind), self._seq, "", self.me.node_id, sent_ms=now_ms())
        self.transport.broadcast(HEARTBEAT_TOPIC, header, body)
        self.me.last_heartbeat = time.time()

    def send_bye(self) -> None:
        self.me.status = NodeStatus.LEFT
        self.send(Kind.BYE)

    async def beat(self) -> None:
        """The heartbeat loop: one heartbeat every ``heartbeat_interval``."""
        interval = self.options.heartbeat_interval
        while True:
            self.send()
            await asyncio.sleep(interval)

    async def detect(self) -> None:
        """The failure-detector loop."""
        # Four checks per heartbeat interval bound the detection lag to a quarter beat.
        interval = self.options.heartbeat_interval / 4
        loop = self.loop
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            late = now - due
            due = now + interval
            if late > self.options.heartbeat_interval:
                # This node itself stalled (a blocked loop, SIGSTOP, no CPU): the silence
                # was its own. Excuse the peers and let the readers take in what queued
                # meanwhile before judging anyone.
                log.warning("event loop of %s stalled for %.2f s", self.me.node_id, late)
                self.membership.excuse(late)
                continue
            self.membership.check(now)

    # in ------------------------------------------------------------------------------

    def on_beat(self, header: Header, payload: bytes, pub_endpoint: str) -> None:
        """A heartbeat or a BYE read from the PUB socket at ``pub_endpoint``."""
        try:
            hb = decode_heartbeat(payload)
        except ProtocolError as exc:
            self.reject(header.source, "heartbeat", str(exc))
            return
        if hb.cluster != self.options.cluster:
            self.reject(
                hb.node_id,
                "cluster",
                f"heartbeat of cluster {hb.cluster!r}, this node is in {self.options.cluster!r}",
            )
            return
        known = self.membership.peers.get(hb.node_id)
        if not self._from_its_pub(hb, known, pub_endpoint, header.kind == _BYE):
            return
        me = self.me
        if hb.node_id == me.node_id:
            # With CURVE only a PUB with this node's own key speaks for its id (the same
            # key files run twice): anyone else's would make this node stop.
            if self.trust is not None and not self._key_ok(hb, pub_endpoint, bind=False):
                return
            if hb.incarnation != me.incarnation or hb.endpoint != me.endpoint:
                self._duplicate(hb)
            return
        if header.kind == _BYE:
            self.membership.on_bye(hb.node_id, hb.incarnation)
            return
        if (
            known is None
            and len(self.membership.peers) >= self.options.max_peers
            and not self.membership.make_room()
        ):
            # Each member holds sockets: a flood of invented nodes must not take them all.
            # (A FAULTED or LEFT member gives way to a new node; a live one does not.)
            self.reject(
                "the peer table",
                "full",
                f"a heartbeat from {hb.node_id!r}, a new node, dropped: this node keeps "
                f"{self.options.max_peers} peers (max_peers)",
            )
            return
        if (
            known is None or known.endpoint != hb.endpoint or known.pub_endpoint != hb.pub_endpoint
        ) and not self._usable(hb.node_id, hb.endpoint, hb.pub_endpoint):
            return
        if self.trust is not None:
            if not self._key_ok(hb, pub_endpoint):
                return
        elif hb.public_key:
            self.reject(
                hb.node_id,
                "curve-peer",
                plaintext_meets_curve(hb.node_id, "its heartbeat has a key"),
            )
            return
        fresh = (
            known is None or known.incarnation != hb.incarnation or known.status is NodeStatus.LEFT
        )
        self.received += 1
        self.membership.on_heartbeat(hb, self.loop.time())
        if header.sent_ms and header.source == hb.node_id:
            peer = self.membership.peers.get(hb.node_id)
            if peer is not None and peer.incarnation == hb.incarnation:
                peer.clock.sample(time.monotonic() * 1000 - header.sent_ms)
        if fresh:
            self.on_fresh(hb)

    def _key_ok(self, hb: HeartbeatBody, pub_endpoint: str, bind: bool = True) -> bool:
        """CURVE: ``hb`` names a key trusted for its node id (or the trust directory
        knows one), and it is the key the PUB it came from proved in its handshake; its
        endpoints are then connected to with that key. ``bind``: a member's heartbeat,
        which binds its id to that key in any-key mode (and its endpoints to it)."""
        trust = self.trust
        assert trust is not None
        key = hb.public_key.encode("ascii", "replace") or trust.key_of(hb.node_id) or b""
        proved = self.transport.keys.get(pub_endpoint)
        allowed = trust.bind if bind else trust.identity_ok
        # The key is checked against the PUB's before it may bind the id (any-key mode).
        if not key or (proved and proved != key) or not allowed(hb.node_id, key):
            self.reject(
                hb.node_id,
                "untrusted-key",
                f"a heartbeat of {hb.node_id!r} with key {key.decode('ascii', 'replace')!r}, "
                "which is not trusted for that node id; dropped",
            )
            return False
        if not bind:
            return True
        self.transport.learn_key(hb.endpoint, key)
        self.transport.learn_key(hb.pub_endpoint, key)
        return True

    def _from_its_pub(
        self, hb: HeartbeatBody, known: Peer | None, pub_endpoint: str, bye: bool
    ) -> bool:
        """Was ``hb`` read from the PUB its node announced (see the module docstring)?
        Rejects the frame if not."""
        announced = hb.pub_endpoint
        if (
            known is not None
            and known.pub_endpoint != pub_endpoint
            and (bye or known.status in _LIVE or hb.incarnation <= known.incarnation)
        ):
            # A BYE, whatever incarnation it names, only from the PUB its member was
            # heard on: a node that moved heartbeats from its new PUB before it leaves.
            announced = known.pub_endpoint  # live, or no newer life: it has not moved
        if announced == pub_endpoint:
            return True
        self.reject(
            hb.node_id,
            "heartbeat-connection",
            f"a heartbeat for {hb.node_id} read from the PUB at {pub_endpoint}, but "
            f"{hb.node_id} announced {announced}; dropped",
        )
        return False

    def _usable(self, who: str, *endpoints: str) -> bool:
        """Are these endpoints something a socket can connect to? Rejects the frame if not."""
        for endpoint in endpoints:
            try:
                parse_endpoint(endpoint)
            except ConfigError as exc:
                self.reject(who, "endpoint", f"{who} announces {exc.message}")
                return False
        return True

    def _duplicate(self, hb: HeartbeatBody) -> None:
        """Another node runs with this node's id: say so once; the younger one gives way."""
        key = (hb.endpoint, hb.incarnation)
        if key in self._duplicates:
            return
        self._duplicates.add(key)
        me = self.me
        younger = me.incarnation > hb.incarnation
        problem = (
            f"two nodes run with node id {me.node_id!r}: this one at {me.endpoint} "
            f"(started {_started(me.incarnation)}) and another at {hb.endpoint} "
            f"(started {_started(hb.incarnation)}); give each node its own --id"
        )
        if younger:
            self.on_duplicate(problem + "; this one, the younger, stops")  # logs it
        else:
            log.error("%s", problem)


def _started(incarnation: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(incarnation / 1e9))

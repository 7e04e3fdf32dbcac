"""The peer table: who is in the cluster, in what state, and what each node handles.

Membership is decided by heartbeats, never by discovery. A candidate becomes ALIVE on
its first heartbeat; silence makes it SUSPECT, then FAULTED (out of routing); a BYE
makes it LEFT at once. A reply counts as proof of life too, when it names the node its
request went to and was read on the connection to that node's endpoint; nothing else
does (anyone can send a request or publish an event naming any node as its source):
a forged frame naming a silent node must not keep it ALIVE.
A heartbeat with a higher incarnation is a restarted node and replaces the old entry.

::

    (first heartbeat) -> ALIVE <-> SUSPECT -> FAULTED -> (any heartbeat) -> ALIVE
                         ALIVE <-> DRAINING (the peer says so)
                         any   -> LEFT (BYE, or a discovery goodbye)
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from ._clock import ClockOffset
from .protocol import HeartbeatBody
from .resilience import CircuitBreaker, CircuitState, PhiAccrual

log = logging.getLogger("catga_zmq.membership")

#: Events a slow ``watch()`` consumer may fall behind before the oldest are dropped.
WATCH_QUEUE_LIMIT = 1000
#: A FAULTED or LEFT member is forgotten after this many ``faulted_after`` of silence:
#: long enough for a restart or a short partition to come back as the same member.
FORGET_FACTOR = 12


class NodeStatus(StrEnum):
    """Where a member stands, as this node sees it. Only ALIVE members are routed to.

    - ``ALIVE``: heard from within ``suspect_after`` s; takes requests.
    - ``SUSPECT``: silent for more than ``suspect_after`` s. Out of routing but not
      given up: any frame from it makes it ALIVE again (``NodeRecovered``).
    - ``DRAINING``: it announced that it is shutting down: it finishes the work it has
      and answers new requests ``OVERLOADED``. Out of routing; ``send(node=...)`` may
      still reach it.
    - ``FAULTED``: silent for more than ``faulted_after`` s, or its heartbeats late
      enough that the phi-accrual detector passed ``phi_threshold``. Out of routing;
      requests in flight to it end (``TransportFailed``; idempotent ones go to another
      node). A heartbeat brings it back.
    - ``LEFT``: it said goodbye (BYE), discovery withdrew it, or it restarted and its
      new run took its place. A LEFT or FAULTED member is forgotten after
      ``FORGET_FACTOR`` times ``faulted_after`` of silence (60 s by default), so
      members invented by forged heartbeats do not hold sockets for long.

    The value (``"alive"``, ...) is what ``NodeInfo``, ``NodeStats`` and the command
    line show.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DRAINING = "draining"
    FAULTED = "faulted"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """A snapshot of one member, as ``node.members()`` and watch events give it.

    Taken when asked for: it does not change afterwards. What the member reports of
    itself (``load``, ``in_flight``, ``handles``, ...) is as of its last heartbeat.

    - ``node_id``: its id; ``endpoint``: its ROUTER, where requests go;
      ``pub_endpoint``: its PUB socket, where its heartbeats and events come from
      (both ``tcp://host:port``).
    - ``status``: its ``NodeStatus``.
    - ``last_heartbeat``: when its last heartbeat arrived here (``time.time()``, s
      since the epoch); 0 if none yet. For this node itself: when it started.
    - ``load``: CPU its process used, in cores (1.0: one core busy all the time).
    - ``in_flight``: its handlers running.
    - ``metadata``: its ``NodeOptions.metadata``.
    - ``handles``, ``subscribes``: wire names of the request types it handles and the
      event types it subscribes to.
    - ``incarnation``: which run of the node this is (``time.time_ns()`` at its
      start); a restarted node has a higher one.
    - ``weight``: its share of traffic under weighted routing (``NodeOptions.weight``).
    - ``local``: True for the node you asked (``node.members()`` includes itself).
    - ``circuit``: this node's circuit breaker for it: CLOSED (in use), OPEN (isolated
      after repeated failures, until ``breaker_cooldown`` ends), HALF_OPEN (one probe
      request decides).
    - ``outstanding``: this node's own requests in flight to it now, which
      least-connections routing compares.
    """

    node_id: str
    endpoint: str
    status: NodeStatus
    last_heartbeat: float  # s since the epoch; 0: none yet
    load: float  # cores
    in_flight: int
    metadata: dict[str, str]
    handles: frozenset[str]
    subscribes: frozenset[str] = frozenset()
    pub_endpoint: str = ""
    incarnation: int = 0
    weight: int = 1
    local: bool = False
    circuit: CircuitState = CircuitState.CLOSED
    outstanding: int = 0


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """A change of membership, as ``node.watch()`` yields it.

    ``node`` is the member as it was right after the change. Match on the subclass:
    ``NodeJoined``, ``NodeLeft``, ``NodeSuspect``, ``NodeFaulted``, ``NodeRecovered``.
    """

    node: ClusterNode


class NodeJoined(MembershipEvent):
    """A node sent its first heartbeat, or a restarted node the first of its new run.

    It is ALIVE (or DRAINING, if it said so) and routable from now on.
    """


class NodeLeft(MembershipEvent):
    """A node is LEFT: it said BYE, discovery withdrew it, or a restart replaced it.

    After a restart, ``NodeLeft`` for the old run comes before ``NodeJoined`` for the
    new one.
    """


class NodeFaulted(MembershipEvent):
    """A node is FAULTED: silent past ``faulted_after`` (or judged so by phi).

    It is out of routing and this node's requests in flight to it end; a heartbeat
    from it brings ``NodeRecovered``.
    """


class NodeSuspect(MembershipEvent):
    """A node is SUSPECT: silent past ``suspect_after``; out of routing, not given up."""


class NodeRecovered(MembershipEvent):
    """A SUSPECT, FAULTED or LEFT node was heard from again; ``node.status`` is its status now."""


@dataclass(slots=True, eq=False)  # identity: a restarted node is another Peer
class Peer:
    """The mutable record behind a ``ClusterNode``."""

    node_id: str
    endpoint: str
    pub_endpoint: str
    incarnation: int
    status: NodeStatus = NodeStatus.ALIVE
    #: What the node last said of itself (ALIVE or DRAINING): silence makes it SUSPECT,
    #: and traffic after the silence restores this, not ALIVE.
    announced: NodeStatus = NodeStatus.ALIVE
    last_seen: float = 0.0  # loop.time() of the last frame from it
    last_heartbeat: float = 0.0  # time.time() of the same
    seq: int = -1
    load: float = 0.0
    in_flight: int = 0
    weight: int = 1
    handles: frozenset[str] = frozenset()
    subscribes: frozenset[str] = frozenset()
    metadata: dict[str, str] = field(default_factory=dict)
    local: bool = False
    outstanding: int = 0  # this node's requests in flight to it (least connections)
    breaker: CircuitBreaker | None = None  # created on the first failure
    detector: PhiAccrual | None = None
    max_message_size: int = 0  # the largest message it takes (0: not advertised)
    public_key: str = ""  # CURVE (Z85), from its heartbeats
    #: Its heartbeats say it decodes zstd: payloads to it may be compressed.
    zstd: bool = False
    #: How late this node reads its frames (from its heartbeats' send times).
    clock: ClockOffset = field(default_factory=ClockOffset)

    def snapshot(self) -> ClusterNode:
        return ClusterNode(
            node_id=self.node_id,
            endpoint=self.endpoint,
            status=self.status,
            last_heartbeat=self.last_heartbeat,
            load=self.load,
            in_flight=self.in_flight,
            metadata=dict(self.metadata),
            handles=self.handles,
            subscribes=self.subscribes,
            pub_endpoint=self.pub_endpoint,
            incarnation=self.incarnation,
            weight=self.weight,
            local=self.local,
            circuit=self.breaker.state if self.breaker else CircuitState.CLOSED,
            outstanding=self.outstanding,
        )


_ROUTABLE = (NodeStatus.ALIVE,)
_SILENT = frozenset((NodeStatus.SUSPECT, NodeStatus.FAULTED))
_GONE = frozenset((NodeStatus.FAULTED, NodeStatus.LEFT))


class Watcher:
    """What ``node.watch()`` returns: an async iterator of ``MembershipEvent``.

    Subscribed when ``watch()`` is called, so no change made before the first
    iteration is lost. Holds at most ``WATCH_QUEUE_LIMIT`` unread events (a slow
    reader loses the oldest: it wants the present state). Ends when the node closes or
    on ``aclose()``; a watcher that is dropped unread unsubscribes itself.
    """

    __slots__ = ("__weakref__", "_closed", "_queue")

    def __init__(self) -> None:
        self._queue: asyncio.Queue[MembershipEvent | None] = asyncio.Queue()
        self._closed = False

    def put(self, event: MembershipEvent | None) -> None:
        """Queue ``event`` for the reader; None ends the iteration. Never blocks."""
        if self._closed:
            return
        q = self._queue
        if event is not None and q.qsize() >= WATCH_QUEUE_LIMIT:
            q.get_nowait()
        q.put_nowait(event)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> MembershipEvent:
        if self._closed:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._closed = True
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop watching; a reader waiting in ``__anext__`` ends too."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)


class Membership:
    """The peer table of one node, with its failure detector and ``watch()`` fan-out."""

    def __init__(
        self,
        me: Peer,
        *,
        suspect_after: float,
        faulted_after: float,
        acceptable_pause: float = 1.5,
        phi_threshold: float = 8.0,
        min_std: float = 0.1,
        forget_after: float | None = None,
        me_member: bool = True,
    ) -> None:
        self.me = me
        #: False for a client: it follows the members but is none of them, so it is
        #: neither listed nor routed to, not even by itself.
        self.me_member = me_member
        self.suspect_after = suspect_after
        self.faulted_after = faulted_after
        self.acceptable_pause = acceptable_pause
        self.phi_threshold = phi_threshold
        self.min_std = min_std
        #: s of silence after which a FAULTED or LEFT member is forgotten.
        self.forget_after = (
            forget_after if forget_after is not None else FORGET_FACTOR * faulted_after
        )
        self.peers: dict[str, Peer] = {}
        # Weakly held: an iterator that is dropped, even unread, unsubscribes itself.
        self._watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        self._routes: dict[str, tuple[Peer, ...]] = {}
        self._all_live: tuple[Peer, ...] = ()
        #: Called with a peer that left or was forgotten, so its sockets can go.
        self.on_gone: Callable[[Peer], None] | None = None
        self.on_change: Callable[[], None] | None = None
        #: Called when a peer turns SUSPECT, FAULTED or LEFT: its requests in flight
        #: may need another node.
        self.on_lost: Callable[[Peer], None] | None = None
        self.rebuild()

    # views ------------------------------------------------------------------------

    def members(self) -> list[ClusterNode]:
        peers = [p.snapshot() for p in self.peers.values()]
        return [self.me.snapshot(), *peers] if self.me_member else peers

    def candidates(self, type_name: str) -> tuple[Peer, ...]:
        """Routable nodes (this one included) that handle ``type_name``."""
        found = self._routes.get(type_name)
        if found is not None:
            return found
        if type_name.startswith("catga."):  # built-ins: every node serves them
            return self._all_live
        return ()

    def subscribers_of(self, type_name: str) -> list[Peer]:
        return [
            p for p in self.peers.values() if p.status in _ROUTABLE and type_name in p.subscribes
        ]

    def live_count(self) -> int:
        return sum(1 for p in self.peers.values() if p.status is NodeStatus.ALIVE)

    def rebuild(self) -> None:
        """Recompute the routing index; called on membership change, never per request."""
        routes: dict[str, list[Peer]] = {}
        live = [self.me] if self.me_member and self.me.status in _ROUTABLE else []
        live += [p for p in self.peers.values() if p.status in _ROUTABLE]
        for peer in live:
            for name in peer.handles:
                routes.setdefault(name, []).append(peer)
        self._routes = {name: tuple(peers) for name, peers in routes.items()}
        self._all_live = tuple(live)
        if self.on_change is not None:
            self.on_change()

    # inputs -----------------------------------------------------------------------

    def on_heartbeat(self, hb: HeartbeatBody, now: float) -> None:
        peer = self.peers.get(hb.node_id)
        if peer is not None and hb.incarnation < peer.incarnation:
            return  # a frame from a previous life of a restarted node
        if peer is not None and hb.incarnation > peer.incarnation:
            # Restarted: the old entry leaves, the new one joins.
            if peer.status is not NodeStatus.LEFT:
                peer.status = NodeStatus.LEFT
                self._emit(NodeLeft(peer.snapshot()))
                if self.on_lost is not None:
                    self.on_lost(peer)  # what the old life had in flight will not come back
            if peer.endpoint != hb.endpoint and self.on_gone is not None:
                self.on_gone(peer)
            peer = None
        changed = False
        if peer is None:
            peer = Peer(hb.node_id, hb.endpoint, hb.pub_endpoint, hb.incarnation)
            peer.detector = PhiAccrual(
                max(hb.interval_ms, 1) / 1000, self.acceptable_pause, self.min_std
            )
            self.peers[hb.node_id] = peer
            changed = True
            event: type[MembershipEvent] | None = NodeJoined
        else:
            event = None
        handles = frozenset(hb.handles)
        subscribes = frozenset(hb.subscribes)
        if handles != peer.handles or subscribes != peer.subscribes:
            peer.handles, peer.subscribes = handles, subscribes
            changed = True
        status = NodeStatus.DRAINING if hb.status == NodeStatus.DRAINING.value else NodeStatus.ALIVE
        previous = peer.status
        peer.endpoint, peer.pub_endpoint = hb.endpoint, hb.pub_endpoint
        peer.seq, peer.load, peer.in_flight = hb.seq, hb.load, hb.in_flight
        peer.weight, peer.metadata = hb.weight, hb.metadata
        peer.announced, peer.max_message_size = status, hb.max_message_size
        peer.public_key = hb.public_key
        peer.zstd = "zstd" in hb.codecs
        peer.last_seen, peer.last_heartbeat = now, time.time()
        if peer.detector is not None:
            peer.detector.heartbeat(now)
        if previous is not status:
            peer.status = status
            changed = True
            if event is None and previous in (
                NodeStatus.SUSPECT,
                NodeStatus.FAULTED,
                NodeStatus.LEFT,
            ):
                event = NodeRecovered
                log.info("node %s is %s again (was %s)", peer.node_id, status.value, previous.value)
        if event is NodeJoined:
            log.info("node %s joined at %s", peer.node_id, peer.endpoint)
        if changed:
            self.rebuild()
        if event is not None:
            self._emit(event(peer.snapshot()))

    def on_traffic(self, node_id: str, now: float) -> None:
        """A checked frame from the peer's own connection proves it alive, heartbeat or not."""
        peer = self.peers.get(node_id)
        if peer is None:
            return
        peer.last_seen = now
        if peer.status in _SILENT:
            previous = peer.status
            peer.status = peer.announced  # a DRAINING node stays out of routing
            log.info("node %s is %s again (was %s)", node_id, peer.status.value, previous.value)
            self.rebuild()
            self._emit(NodeRecovered(peer.snapshot()))

    def on_bye(self, node_id: str, incarnation: int) -> None:
        peer = self.peers.get(node_id)
        if peer is None or incarnation < peer.incarnation or peer.status is NodeStatus.LEFT:
            return
        self.mark_left(peer)

    def mark_left(self, peer: Peer) -> None:
        peer.status = NodeStatus.LEFT
        log.info("node %s left", peer.node_id)
        self.rebuild()
        self._emit(NodeLeft(peer.snapshot()))
        if self.on_lost is not None:
            self.on_lost(peer)
        if self.on_gone is not None:
            self.on_gone(peer)

    def make_room(self) -> bool:
        """Forget the longest-silent FAULTED or LEFT member, to make room for a new one
        when the table is full; False if every member is live."""
        gone = [p for p in self.peers.values() if p.status in _GONE]
        if not gone:
            return False
        peer = min(gone, key=lambda p: p.last_seen)
        del self.peers[peer.node_id]
        if self.on_gone is not None:
            self.on_gone(peer)
        return True

    def excuse(self, stall: float) -> None:
        """This node was stalled for ``stall`` s: that silence was its own, not its peers'.

        Heartbeats that arrived meanwhile are still queued in the socket; judging before
        reading them would fault healthy peers.
        """
        for peer in self.peers.values():
            peer.last_seen += stall
            if peer.detector is not None:
                peer.detector.forget_last()

    def phi(self, peer: Peer, now: float) -> float:
        return peer.detector.phi(now - peer.last_seen) if peer.detector is not None else 0.0

    def check(self, now: float) -> None:
        """The failure detector: run every fraction of a heartbeat interval.

        SUSPECT (out of routing, not yet given up) after ``suspect_after`` s of silence;
        FAULTED when phi reaches ``phi_threshold``, or at the latest after
        ``faulted_after`` s of silence.
        """
        changed = False
        lost: list[Peer] = []
        for peer in list(self.peers.values()):
            silent = now - peer.last_seen
            if (
                peer.status in (NodeStatus.ALIVE, NodeStatus.DRAINING)
                and silent > self.suspect_after
            ):
                peer.status = NodeStatus.SUSPECT
                changed = True
                lost.append(peer)
                log.info("node %s is suspect: silent for %.2f s", peer.node_id, silent)
                self._emit(NodeSuspect(peer.snapshot()))
            if peer.status is NodeStatus.SUSPECT and (
                silent > self.faulted_after or self.phi(peer, now) >= self.phi_threshold
            ):
                peer.status = NodeStatus.FAULTED
                changed = True
                lost.append(peer)
                log.warning(
                    "node %s is faulted: silent for %.2f s (phi %.1f)",
                    peer.node_id,
                    silent,
                    self.phi(peer, now),
                )
                self._emit(NodeFaulted(peer.snapshot()))
            elif (
                peer.status in (NodeStatus.FAULTED, NodeStatus.LEFT) and silent > self.forget_after
            ):
                del self.peers[peer.node_id]
                if self.on_gone is not None:
                    self.on_gone(peer)
        if changed:
            self.rebuild()
        if self.on_lost is not None:
            for peer in lost:
                self.on_lost(peer)

    # watch ------------------------------------------------------------------------

    def _emit(self, event: MembershipEvent) -> None:
        for watcher in self._watchers:
            watcher.put(event)

    def watch(self) -> AsyncIterator[MembershipEvent]:
        # Subscribed now, not at the first iteration: no change is lost in between.
        watcher = Watcher()
        self._watchers.add(watcher)
        return watcher

    def close_watchers(self) -> None:
        for watcher in self._watchers:
            watcher.put(None)

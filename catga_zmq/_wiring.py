"""Building a started node's parts and wiring their callbacks to each other.

``Node.start`` makes one ``Parts`` once its sockets are bound: who calls whom between
the parts is written down here, and only here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._builtins import Builtins
from ._dispatch import broadcast_dispatcher
from ._events import EventBus
from ._gossip import Gossip
from ._heartbeat import Heartbeats
from ._inbound import Rejections
from ._requester import Requester
from ._server import RequestServer
from .config import NodeOptions
from .discovery.base import Discovery
from .mediator import Mediator
from .membership import Membership, NodeStatus, Peer
from .protocol import PROTOCOL_VERSION, Codec
from .routing import Router
from .security import AdminCheck, FirstKeySeen, Trust
from .transport import Transport

if TYPE_CHECKING:
    from ._compression import Zstd
    from .tracing import Spans


class Parts:
    """The parts of a started node, built together and wired to each other."""

    __slots__ = (
        "builtins",
        "events",
        "gossip",
        "heartbeats",
        "me",
        "mediator",
        "membership",
        "requester",
        "server",
        "transport",
    )

    def __init__(
        self,
        *,
        options: NodeOptions,
        mediator: Mediator,
        codec: Codec,
        counters: dict[str, int],
        routers: dict[str, Router],
        transport: Transport,
        handles: frozenset[str],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        on_duplicate: Callable[[str], None],
        on_change: Callable[[], None],
        problems: Callable[[], list[str]],
        drain: Callable[[], None],
        trust: Trust | None = None,
    ) -> None:
        opts = options
        loop = asyncio.get_running_loop()
        self.transport = transport
        self.mediator = mediator
        stats = counters
        reject = Rejections(stats)
        self.me = me = Peer(
            opts.node_id,
            transport.endpoint,
            transport.pub_endpoint,
            time.time_ns(),
            handles=handles,
            subscribes=frozenset(mediator.subscribers),
            metadata=dict(opts.metadata),
            weight=opts.weight,
            local=True,
            last_seen=loop.time(),
            last_heartbeat=time.time(),
            max_message_size=opts.max_message_size,
            public_key=transport.curve.public.decode("ascii") if transport.curve else "",
        )
        self.membership = membership = Membership(
            me,
            suspect_after=opts.suspect_after,
            faulted_after=opts.faulted_after,
            acceptable_pause=opts.acceptable_pause,
            phi_threshold=opts.phi_threshold,
            min_std=opts.heartbeat_interval / 5,
            me_member=opts.role == "member",
        )
        peers = membership.peers

        def on_traffic(node_id: str) -> None:
            # Inlined membership.on_traffic for a known, live peer: this runs per reply.
            peer = peers.get(node_id)
            if peer is not None:
                if peer.status is NodeStatus.ALIVE or peer.status is NodeStatus.DRAINING:
                    peer.last_seen = loop.time()
                else:
                    membership.on_traffic(node_id, loop.time())

        def on_event_traffic(node_id: str, pub_endpoint: str) -> bool:
            # An event shows its source alive only when read from the source's own PUB;
            # one that names a member, read from another PUB, is a forgery (False).
            peer = peers.get(node_id)
            if peer is None:
                return True
            if peer.pub_endpoint != pub_endpoint:
                return False
            if peer.status is NodeStatus.ALIVE or peer.status is NodeStatus.DRAINING:
                peer.last_seen = loop.time()
            else:
                membership.on_traffic(node_id, loop.time())
            return True

        self.server = server = RequestServer(
            node_id=opts.node_id,
            options=opts,
            mediator=mediator,
            codec=codec,
            transport=transport,
            reject=reject,
            stats=stats,
            peers=peers,
            trust=trust,
            admin=AdminCheck(opts, trust),
        )
        self.requester = requester = Requester(
            node_id=opts.node_id,
            options=opts,
            membership=membership,
            transport=transport,
            server=server,
            codec=codec,
            reject=reject,
            stats=stats,
            routers=routers,
            on_traffic=on_traffic,
        )
        self.events = events = EventBus(
            node_id=opts.node_id,
            max_message_size=opts.max_message_size,
            mediator=mediator,
            codec=codec,
            transport=transport,
            reject=reject,
            stats=stats,
            is_member=peers.__contains__,
            on_traffic=on_event_traffic,
        )
        self.gossip = gossip = Gossip(
            me=me,
            options=opts,
            membership=membership,
            transport=transport,
            requester=requester,
            codec=codec,
            reject=reject,
            spawn=spawn,
            forget_source=events.forget_source,
            trust=trust,
        )
        self.heartbeats = heartbeats = Heartbeats(
            me=me,
            options=opts,
            membership=membership,
            transport=transport,
            reject=reject,
            running=lambda: server.running,
            on_fresh=gossip.on_fresh,
            on_duplicate=on_duplicate,
            trust=trust,
        )
        self.builtins = Builtins(
            options=opts,
            membership=membership,
            mediator=mediator,
            server=server,
            requester=requester,
            gossip=gossip,
            events=events,
            transport=transport,
            stats=stats,
            problems=problems,
            drain=drain,
        )
        if isinstance(trust, FirstKeySeen):
            first_key_seen = trust
            if transport.curve is not None:
                # This node's own id is its own key's: nobody else may take it here.
                first_key_seen.bind(opts.node_id, transport.curve.public)

            def on_gone(peer: Peer) -> None:
                gossip.peer_gone(peer)
                if peer.node_id not in peers:  # forgotten, not left or restarted
                    first_key_seen.unbind(peer.node_id)

            membership.on_gone = on_gone
        else:
            membership.on_gone = gossip.peer_gone

        def on_lost(peer: Peer) -> None:
            requester.peer_lost(peer)
            gossip.peer_silent(peer)

        membership.on_lost = on_lost
        membership.on_change = on_change
        transport.on_request = server.on_request
        transport.on_reply = requester.on_reply
        transport.on_broadcast = broadcast_dispatcher(reject, events.on_event, heartbeats.on_beat)
        transport.on_disconnect = requester.on_disconnect
        transport.on_unsent = requester.pending.fail_unsent
        zstd = make_compression(opts, stats)
        if zstd is not None:
            me.zstd = True  # advertised in its heartbeats
            server.compress(zstd)
            requester.compress(zstd)
            events.compress(zstd, lambda: all(peer.zstd for peer in peers.values()))

    def trace(self, spans: Spans) -> None:
        """From now on, sends, publishes, handlers and subscribers make spans."""
        self.requester.spans = spans
        self.events.spans = spans
        self.mediator.trace(spans)


def make_compression(opts: NodeOptions, stats: dict[str, int]) -> Zstd | None:
    """The payload compressor the ``compression`` setting names (None for "none")."""
    if opts.compression == "none":
        return None
    from ._compression import Zstd

    return Zstd(
        threshold=opts.compression_threshold,
        max_size=opts.max_message_size,
        level=opts.compression_level,
        stats=stats,
    )


def make_discovery(opts: NodeOptions) -> Discovery | None:
    """The discovery backend the ``discovery`` setting names (None for "none")."""
    if opts.discovery == "none":
        return None
    if opts.discovery == "static":
        from .discovery.static import StaticDiscovery

        return StaticDiscovery(opts.seeds)
    if opts.discovery == "memory":
        from .discovery.memory import MemoryDiscovery

        return MemoryDiscovery()
    if opts.discovery == "dns":
        from .discovery.dns import DnsDiscovery

        return DnsDiscovery(
            opts.dns_name,
            record=opts.dns_record,
            port=opts.dns_port or opts.port,
            interval=opts.dns_interval,
            resolver=opts.dns_resolver,
        )
    if opts.discovery == "redis":
        from .discovery.redis import RedisDiscovery

        return RedisDiscovery(
            opts.redis_url,
            opts.cluster,
            key_prefix=opts.redis_key_prefix,
            refresh_interval=opts.redis_refresh_interval,
            ttl=opts.redis_ttl,
            limit=opts.max_addresses,
            version=PROTOCOL_VERSION,
        )
    from .discovery.mdns import MdnsDiscovery, interfaces_for_bind

    return MdnsDiscovery(opts.cluster, interfaces_for_bind(opts.bind), version=PROTOCOL_VERSION)

"""The handlers of the built-in requests every node serves: ``Ping``, ``Info``, ``Stats``,
``Deliver``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._events import EventBus
from ._gossip import Gossip
from ._requester import Requester
from ._server import RequestServer
from ._version import __version__
from .config import NodeOptions
from .mediator import Context, Mediator
from .membership import Membership
from .protocol import PROTOCOL_VERSION
from .system import Deliver, HandlerStats, Info, NodeInfo, NodeStats, Ping, Pong, Stats
from .transport import Transport


class Builtins:
    """Answers ``Ping``, ``Info`` (also the greeting of static and gossip discovery),
    ``Stats`` and ``Deliver`` (a client's events) from the parts of a running node."""

    def __init__(
        self,
        *,
        options: NodeOptions,
        membership: Membership,
        mediator: Mediator,
        server: RequestServer,
        requester: Requester,
        gossip: Gossip,
        events: EventBus,
        transport: Transport,
        stats: dict[str, int],
        problems: Callable[[], list[str]],
    ) -> None:
        self.options = options
        self.membership = membership
        self.mediator = mediator
        self.server = server
        self.requester = requester
        self.gossip = gossip
        self.events = events
        self.transport = transport
        self.stats = stats
        self.problems = problems
        self.started_at = time.monotonic()

    def register(self) -> None:
        self.mediator.add_handler(self.ping, Ping)
        self.mediator.add_handler(self.info, Info)
        self.mediator.add_handler(self.node_stats, Stats)
        self.mediator.add_handler(self.deliver, Deliver)

    async def ping(self, req: Ping) -> Pong:
        return Pong(self.membership.me.node_id, time.time())

    async def info(self, req: Info) -> NodeInfo:
        if req.caller is not None:
            self.gossip.on_greeting(req.caller)
        me = self.membership.me
        return NodeInfo(
            node_id=me.node_id,
            cluster=self.options.cluster,
            version=PROTOCOL_VERSION,
            library_version=__version__,
            endpoint=me.endpoint,
            pub_endpoint=me.pub_endpoint,
            incarnation=me.incarnation,
            status=me.status.value,
            handles=sorted(me.handles),
            subscribes=sorted(me.subscribes),
            metadata=dict(self.options.metadata),
            peers=self.gossip.known_addresses(),
            public_key=me.public_key,
        )

    async def node_stats(self, req: Stats) -> NodeStats:
        return self.snapshot()

    async def deliver(self, req: Deliver, ctx: Context) -> int:
        return self.events.on_handed(req.type_name, req.payload, ctx.source, ctx.trace_id)

    def snapshot(self) -> NodeStats:
        counts: dict[str, int] = {}
        for p in self.membership.peers.values():
            counts[p.status.value] = counts.get(p.status.value, 0) + 1
        return stats_of(
            self.membership.me.node_id,
            self.stats,
            self.problems(),
            uptime=time.monotonic() - self.started_at,
            running=self.server.running,
            pending=len(self.requester.pending),
            events_dropped=sum(
                sub.dropped for subs in self.mediator.subscribers.values() for sub in subs
            ),
            replies_dropped=self.transport.dropped_replies,
            late_replies=self.requester.pending.late_replies,
            members=counts,
            batches_sent=self.transport.batches_sent,
            connections_dropped=self.transport.connections_dropped,
            handshakes_failed=self.transport.handshakes.failed,
            handlers={
                name: HandlerStats(entry.handled, entry.errors, entry.busy)
                for name, entry in self.mediator.handlers.items()
                if entry.handled or entry.errors
            },
        )


#: What ``NodeStats`` says of the parts of a node that has none (not started).
_IDLE: dict[str, Any] = {
    "uptime": 0.0,
    "running": 0,
    "pending": 0,
    "events_dropped": 0,
    "replies_dropped": 0,
    "late_replies": 0,
    "batches_sent": 0,
    "connections_dropped": 0,
    "handshakes_failed": 0,
}


def stats_of(node_id: str, counters: dict[str, int], problems: list[str], **live: Any) -> NodeStats:
    """``NodeStats`` from a node's counters (named as its fields) and, when it runs,
    what its parts say (``live``)."""
    fields: dict[str, Any] = {**_IDLE, "members": {}, **counters, **live}
    return NodeStats(node_id=node_id, healthy=not problems, problems=problems, **fields)

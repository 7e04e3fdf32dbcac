"""The handlers of the built-in requests every node serves: ``Ping``, ``Info``,
``Stats``, ``Deliver``, and the admin requests ``Drain`` and ``Configure``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._events import EventBus
from ._gossip import Gossip
from ._inbound import clip
from ._requester import Requester
from ._runtime import LABEL_PREFIX, apply, current, parse_changes
from ._server import RequestServer
from ._version import __version__
from .config import NodeOptions
from .errors import ConfigError, ValidationFailed
from .mediator import Context, Mediator
from .membership import Membership
from .protocol import PROTOCOL_VERSION
from .system import (
    Configure,
    Deliver,
    Drain,
    Draining,
    HandlerStats,
    Info,
    NodeInfo,
    NodeStats,
    Ping,
    Pong,
    RuntimeSettings,
    Stats,
)
from .transport import Transport

log = logging.getLogger("catga_zmq.node")


class Builtins:
    """Answers ``Ping``, ``Info`` (also the greeting of static and gossip discovery),
    ``Stats`` and ``Deliver`` (a client's events) from the parts of a running node;
    ``Drain`` starts its drain (``drain``), ``Configure`` changes its runtime settings
    (``_runtime``). Who may send the last two is the request server's check
    (``security.AdminCheck``)."""

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
        drain: Callable[[], None],
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
        self.drain = drain
        self.started_at = time.monotonic()

    def register(self) -> None:
        self.mediator.add_handler(self.ping, Ping)
        self.mediator.add_handler(self.info, Info)
        self.mediator.add_handler(self.node_stats, Stats)
        self.mediator.add_handler(self.deliver, Deliver)
        self.mediator.add_handler(self.start_drain, Drain)
        self.mediator.add_handler(self.configure, Configure)

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

    async def start_drain(self, req: Drain, ctx: Context) -> Draining:
        # The drain waits for this handler like any other: the answer goes out first.
        running = self.server.running - 1
        log.warning("%s drains: asked by %s", ctx.node_id, ctx.source)
        self.drain()
        return Draining(ctx.node_id, running, self.options.drain_timeout)

    async def configure(self, req: Configure, ctx: Context) -> RuntimeSettings:
        me = self.membership.me
        try:
            changes = parse_changes(req.changes)
            before = {k: _shown(self.options, k) for k in changes.names()}
            apply(changes, self.options, me)
        except ConfigError as exc:
            raise ValidationFailed(exc.message, node=me.node_id) from None
        keys = changes.names()
        shown = [f"{k} {before[k]} -> {_shown(self.options, k)}" for k in keys[:_LOGGED]]
        if len(keys) > _LOGGED:
            shown.append(f"and {len(keys) - _LOGGED} more")
        log.warning("settings of %s changed by %s: %s", me.node_id, ctx.source, ", ".join(shown))
        return current(self.options, keys)

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


#: A log line of a change names at most this many settings, each value cut to fit.
_LOGGED = 16
_SHOWN = 80


def _shown(options: NodeOptions, key: str) -> str:
    """A setting (or ``metadata.KEY``) as a log line shows it."""
    if key.startswith(LABEL_PREFIX):
        label = options.metadata.get(key.removeprefix(LABEL_PREFIX))
        return "(none)" if label is None else clip(repr(label), _SHOWN)
    return clip(repr(getattr(options, key)), _SHOWN)


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

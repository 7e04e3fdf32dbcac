"""``Node``: registration, lifecycle and the public calls; it wires the parts together
and supervises their background loops.

The parts, one job each (built and wired by ``_wiring``; loops run by ``_supervisor``):
``transport`` (sockets), ``_server`` (inbound requests),
``_requester`` (``send()`` and replies), ``_events`` (publish/subscribe),
``_heartbeat`` (heartbeats and the failure detector), ``_gossip`` (discovery and
greetings), ``_builtins`` (``Ping``, ``Info``, ``Stats``), ``membership`` (the peer table).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from ._builtins import stats_of
from ._supervisor import Supervisor
from ._version import __version__
from ._wiring import Parts, make_discovery
from ._zap import Authenticator
from .config import NodeOptions
from .discovery.base import Candidate, Discovery
from .errors import (
    Cancelled,
    CatgaError,
    ConfigError,
    NodeClosed,
    NodeNotStarted,
    NodeStateError,
    RequestTimeout,
)
from .mediator import Behavior, Mediator
from .membership import ClusterNode, MembershipEvent, NodeStatus
from .messages import Event, Message, Request
from .metrics import Metrics, Probes, prometheus, timed_send
from .protocol import PROTOCOL_VERSION, Codec
from .routing import Router, make_router
from .security import RELOAD_INTERVAL, Security, TrustStore, plaintext_warning
from .security import load as load_security
from .system import Deliver, NodeStats
from .tracing import spans_for, wait_for_provider
from .transport import Curve, Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("catga_zmq.node")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: After its BYE a node keeps answering (OVERLOADED) for this long before it closes.
BYE_LINGER: Final = 0.2  # s
#: A drain cut short (``aclose()`` cancelled) lingers this long instead: enough for the
#: I/O thread to put the CANCELLED answers of the handlers it cancelled on the wire.
CUT_SHORT_LINGER: Final = 0.05  # s

current_trace: contextvars.ContextVar[str] = contextvars.ContextVar("catga_trace", default="")


class State(StrEnum):
    """A node's lifecycle: NEW -> RUNNING -> DRAINING -> CLOSED (a node starts once)."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class _DefaultDiscovery:
    """The ``discovery`` argument left out: the ``discovery`` setting decides."""

    def __repr__(self) -> str:
        return "<the discovery setting (mdns by default)>"


_DEFAULT: Any = _DefaultDiscovery()


async def _follow_trust(trust: TrustStore) -> None:
    """Re-read the trust directory when it changes: a key removed is refused on new
    handshakes at once, and on open connections at the next frame (every request and
    heartbeat is checked against it), within ``RELOAD_INTERVAL`` of the change."""
    while True:
        await asyncio.sleep(RELOAD_INTERVAL)
        if trust.changed() and (change := trust.reload()):
            log.info(
                "trust directory reloaded: added %s, removed %s, new keys for %s; "
                "admins added %s, admins removed %s",
                sorted(change.added) or "none",
                sorted(change.removed) or "none",
                sorted(change.rekeyed) or "none",
                sorted(change.admins_added) or "none",
                sorted(change.admins_removed) or "none",
            )


class Node:
    """A member of a catga_zmq cluster: serves handlers, sends requests, publishes events.

    ``Node(node_id="users-1", cluster="shop")``; any ``NodeOptions`` setting may be passed
    as a keyword (``heartbeat_interval=0.25``). ``discovery`` is a backend name
    (``"mdns"``, ``"static"``, ``"memory"``, ``"dns"``, ``"redis"``, ``"none"``), a
    ``Discovery`` object, or None (none). Register handlers and subscribers, then
    ``async with node:`` (or ``await node.start()`` ... ``await node.aclose()``).

    ``metrics_registry``: a prometheus_client ``CollectorRegistry`` of your own that gets
    this node's metrics while it runs (with ``metrics_port`` set, that registry is what
    the port serves); without it, ``metrics_port`` serves a registry of the node's own.

    ``Node(role="client")`` follows the cluster without joining it: it sends requests
    and gets their replies, receives the events it subscribes to and watches
    membership, but binds no socket, sends no heartbeat and registers with no
    discovery, so no member lists it, routes to it or logs its coming and going. It
    serves no requests (handlers are refused when it starts); its ``publish()`` hands
    the event to each subscribing member directly (the built-in ``Deliver``).

    ``tracer_provider`` is the OpenTelemetry tracer provider of its spans (default: the
    global one, if the application set one; see ``catga_zmq.tracing``).
    """

    def __init__(
        self,
        node_id: str | None = None,
        cluster: str | None = None,
        *,
        discovery: Discovery | str | None = _DEFAULT,
        options: NodeOptions | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        **settings: Any,
    ) -> None:
        base = options or NodeOptions()
        if node_id is not None:
            settings["node_id"] = node_id
        if cluster is not None:
            settings["cluster"] = cluster
        self._discovery_obj: Discovery | None = None
        if isinstance(discovery, Discovery):
            self._discovery_obj = discovery
            settings["discovery"] = (
                discovery.name
                if discovery.name in ("mdns", "static", "memory", "dns", "redis")
                else "none"
            )
            seeds = getattr(discovery, "seeds", None)
            if seeds is not None:
                settings["seeds"] = list(seeds)
            own_settings = getattr(discovery, "node_settings", None)
            if callable(own_settings):  # DnsDiscovery: its name, port... as settings
                settings.update(own_settings())
            url = getattr(discovery, "url", None)
            if discovery.name == "redis" and isinstance(url, str):
                settings.setdefault("redis_url", url)
        elif discovery is None:
            settings["discovery"] = "none"
        elif discovery is not _DEFAULT:
            settings["discovery"] = discovery
        unknown = set(settings) - set(NodeOptions.__struct_fields__)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(NodeOptions.__struct_fields__)}"
            )
        self.options = base.merged(settings).validated() if settings else base.validated()
        self.mediator = Mediator(self.options.node_id)
        self.codec = Codec()
        self._tracer_provider = tracer_provider
        #: NEW, RUNNING, DRAINING or CLOSED.
        self.state = State.NEW
        #: One router per message type: a router's state (a round-robin counter, the
        #: weighted credits) shared across types would let alternating types each stick
        #: to one node. Made on a type's first send, or by route().
        self._routers: dict[str, Router] = {}
        #: The counters behind ``stats()``, shared by the parts.
        self._counters = {
            "requests_handled": 0,
            "requests_failed": 0,
            "requests_refused": 0,
            "requests_expired": 0,
            "connections_refused": 0,
            "requests_sent": 0,
            "events_published": 0,
            "events_received": 0,
            "events_lost": 0,
            "frames_rejected": 0,
            "remote_handled": 0,
            "remote_handler_us": 0,
            "payloads_compressed": 0,
            "compression_saved": 0,
        }
        self.discovery: Discovery | None = None
        #: Why the node closed itself, when it did (a duplicate node id, a background
        #: loop that kept failing); None otherwise.
        self.failure: CatgaError | None = None
        self._parts: Parts | None = None
        #: CURVE: this node's key pair and whom it trusts; None: plaintext.
        self._security: Security | None = None
        self._supervisor = Supervisor(self.options.node_id, self._give_up)
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        #: The drain was cut short (aclose() cancelled): skip its waits.
        self._cut_short = False
        self._metrics_registry = metrics_registry
        #: Prometheus metrics, while the node runs with them (None: off).
        self._metrics: Metrics | None = None
        #: start() finished: registered with discovery, heartbeats under way.
        self._joined = False

    # registration ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id, unique in its cluster (``host-pid-random`` when not given)."""
        return self.options.node_id

    @property
    def endpoint(self) -> str:
        """The ROUTER endpoint peers send requests to (``tcp://host:port``); empty
        before the node starts, and for a client. Give it to other nodes as a static seed."""
        return self._parts.me.endpoint if self._parts is not None else ""

    @property
    def pub_endpoint(self) -> str:
        """The PUB endpoint of this node's heartbeats and events; empty before start,
        and for a client."""
        return self._parts.me.pub_endpoint if self._parts is not None else ""

    @overload
    def handler(self, fn: F) -> F: ...
    @overload
    def handler(
        self, fn: None = None, *, message_type: type[Request[Any]] | None = None
    ) -> Callable[[F], F]: ...

    def handler(
        self, fn: F | None = None, *, message_type: type[Request[Any]] | None = None
    ) -> F | Callable[[F], F]:
        """Register the handler of a request type, taken from the first parameter's annotation."""

        def register(f: F) -> F:
            self.mediator.add_handler(f, message_type)
            self._handles_changed()
            return f

        return register(fn) if fn is not None else register

    @overload
    def subscribe(self, fn: F) -> F: ...
    @overload
    def subscribe(
        self, fn: None = None, *, message_type: type[Event] | None = None
    ) -> Callable[[F], F]: ...

    def subscribe(
        self, fn: F | None = None, *, message_type: type[Event] | None = None
    ) -> F | Callable[[F], F]:
        """Register a subscriber of an event type, taken from the first parameter's annotation."""

        def register(f: F) -> F:
            self.mediator.add_subscriber(f, message_type)
            self._handles_changed()
            return f

        return register(fn) if fn is not None else register

    def add_behavior(self, behavior: Behavior) -> None:
        """Add a pipeline behaviour around every handler call; the last added runs innermost."""
        self.mediator.add_behavior(behavior)

    def route(self, message_type: type[Message], routing: str | Router) -> None:
        """Use another routing strategy for one message type."""
        router = make_router(routing) if isinstance(routing, str) else routing
        self._routers[message_type.__wire_name__] = router

    def configure(self, **settings: Any) -> None:
        """Change settings before the node starts (the node command's flags use this)."""
        if self.state is not State.NEW:
            raise ConfigError("settings can only change before the node starts")
        self.options = self.options.merged(settings).validated()
        self.mediator.node_id = self.options.node_id
        make_router(self.options.routing)  # a ConfigError now, not at the first send

    def _handles_changed(self) -> None:
        parts = self._parts
        if parts is not None and self.state is State.RUNNING:
            parts.me.handles = frozenset(self._handled_types())
            parts.me.subscribes = frozenset(self.mediator.subscribers)
            parts.membership.rebuild()
            parts.events.update_topics()

    def _handled_types(self) -> list[str]:
        return [n for n in self.mediator.handlers if not n.startswith("catga.")]

    # lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind the sockets, start heartbeats and discovery, and join the cluster.

        Raises ``ConfigError`` when a port is in use or an address cannot be bound;
        whatever fails, nothing of the node is left open. A node starts once.
        """
        if self.state is not State.NEW:
            raise NodeClosed(f"node {self.node_id} is {self.state.value}; a node starts once")
        opts = self.options
        client = opts.role == "client"
        if client and self._handled_types():
            raise ConfigError(
                f"node {opts.node_id} is a client, which serves no requests, but has "
                f"handlers of {', '.join(sorted(self._handled_types()))}; remove them, or "
                "use role 'member'"
            )
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        if opts.metrics_port or self._metrics_registry is not None:
            prometheus()  # before anything is bound: a missing extra is one clear error
        # The files are read now (settings only name them): a bad key fails the start.
        self._security = security = load_security(opts)
        curve = None if security is None else Curve(security.keys.public, security.keys.secret)
        transport = Transport(
            opts.node_id,
            max_message_size=opts.max_message_size,
            hwm=max(1000, opts.max_in_flight),
            inbound_hwm=opts.inbound_frames(),
            max_peers=opts.max_peers,
            max_addresses=opts.max_addresses,
            curve=curve,
        )
        try:
            if client:
                transport.connect_only(opts.bind)  # no server socket, so no ZAP handler
            else:
                if security is not None:
                    # Before anything binds: no CURVE socket may take a handshake unchecked.
                    authenticator = Authenticator(transport.ctx, security.trust, self._counters)
                    authenticator.attach(transport.open_zap(authenticator.on_request))
                transport.bind(opts.bind, opts.port, opts.pub_port, opts.advertise)
            self._supervisor = supervisor = Supervisor(opts.node_id, self._give_up)
            self._parts = parts = Parts(
                options=opts,
                mediator=self.mediator,
                codec=self.codec,
                counters=self._counters,
                routers=self._routers,
                transport=transport,
                handles=frozenset(self._handled_types()),
                spawn=supervisor.spawn,
                on_duplicate=self._duplicate_id,
                on_change=self._changed.set,
                problems=self.problems,
                drain=self._start_close,
                trust=None if security is None else security.trust,
            )
            if opts.metrics_port or self._metrics_registry is not None:
                await self._start_metrics(parts)
            if not client:
                transport.start_reading()
            parts.builtins.register()
            self.state = State.RUNNING
            supervisor.running = True
            self.discovery = self._discovery_obj or make_discovery(opts)
            if not client:
                supervisor.supervise("heartbeat", parts.heartbeats.beat)
            supervisor.supervise("failure-detector", parts.heartbeats.detect)
            if security is not None and isinstance(security.trust, TrustStore):
                trust = security.trust
                supervisor.supervise("trust-reload", lambda: _follow_trust(trust))
            if self.discovery is not None:
                if client:
                    await self.discovery.start(opts.bind)  # find the members, say nothing
                else:
                    await self.discovery.register(self._candidate())
                discovery = self.discovery
                supervisor.supervise("discovery", lambda: parts.gossip.follow(discovery))
            if opts.tracing:
                self._start_tracing(parts, supervisor)
            if client and parts.gossip.enabled:
                supervisor.supervise("client-refresh", parts.gossip.refresh)
            self._joined = True
        except BaseException:
            self.state = State.DRAINING  # nothing half-started may outlive a failed start
            try:
                await self._teardown()
            finally:  # the teardown too may be cancelled (a wait_for around start())
                if self._parts is None:
                    transport.close()
            raise
        if client:
            log.info(
                "client %s up: cluster %s, discovery %s", opts.node_id, opts.cluster, opts.discovery
            )
            return
        if security is None and (warning := plaintext_warning(opts.bind)) is not None:
            log.warning("%s", warning)
        log.info(
            "node %s up: requests %s, heartbeats %s, cluster %s, discovery %s",
            opts.node_id,
            transport.endpoint,
            transport.pub_endpoint,
            opts.cluster,
            opts.discovery,
        )

    async def _start_metrics(self, parts: Parts) -> None:
        opts = self.options
        self._metrics = metrics = Metrics(
            node_id=opts.node_id,
            cluster=opts.cluster,
            version=__version__,
            parts=parts,
            counters=self._counters,
            probes=Probes(
                state=lambda: self.state.value,
                not_ready=self._not_ready,
                not_live=self._not_live,
                problems=self.problems,
            ),
            registry=self._metrics_registry,
        )
        self.mediator.add_behavior(metrics.handler_timings(), outermost=True)
        if opts.metrics_port:
            await metrics.serve(opts.metrics_bind, opts.metrics_port)

    def _not_ready(self) -> str:
        """Why this node should not be given traffic now ("" when it may: running,
        joined, not draining)."""
        if self.state is not State.RUNNING:
            return f"node {self.node_id} is {self.state.value}"
        if not self._joined or self._parts is None or not self._parts.heartbeats.sent:
            return f"node {self.node_id} has not joined its cluster yet"
        return ""

    def _not_live(self) -> str:
        """Why this node should be restarted ("" while it is fine: its loop answers)."""
        if self.failure is not None:
            return f"node {self.node_id} failed: {self.failure.message}"
        if self.state is State.CLOSED:
            return f"node {self.node_id} is closed"
        return ""

    @property
    def metrics_url(self) -> str:
        """Where this node serves ``/metrics`` (``http://127.0.0.1:9464/metrics``); empty
        without ``metrics_port``, or before the node starts."""
        return self._metrics.url if self._metrics is not None else ""

    def _start_tracing(self, parts: Parts, supervisor: Supervisor) -> None:
        """Trace now if there is a tracer provider, else as soon as one is set."""
        spans = spans_for(self.node_id, self._tracer_provider)
        if spans is not None:
            parts.trace(spans)
        elif self._tracer_provider is None:
            node_id = self.node_id
            supervisor.supervise("tracing", lambda: wait_for_provider(node_id, parts.trace))

    def _candidate(self) -> Candidate:
        assert self._parts is not None
        me = self._parts.me
        return Candidate(
            endpoint=me.endpoint,
            node_id=self.node_id,
            pub_endpoint=me.pub_endpoint,
            cluster=self.options.cluster,
            version=PROTOCOL_VERSION,
            public_key=me.public_key or None,
            metadata=dict(self.options.metadata),
        )

    async def aclose(self) -> None:
        """Drain and leave: announce DRAINING, finish in-flight work, say BYE. Idempotent.

        When it returns, or is cancelled, nothing of the node runs any more: handlers
        still running after ``drain_timeout`` (or when the drain is cut short) are
        cancelled, and their callers get ``Cancelled``.

        Called from one of this node's own handlers (or a task of its subscribers), it
        starts the drain and returns at once: the drain waits for that handler like any
        other, so its caller still gets the answer.
        """
        if self.state is State.NEW or self.state is State.CLOSED:
            self.state = State.CLOSED
            return
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(
                self._close(), name=f"catga-{self.node_id}-close"
            )
        if self._inside_node():
            return
        # Shielded: a caller that gives up (wait_for) must not cut the teardown short;
        # _close() cancels the handlers at once instead, and we wait for that.
        try:
            await asyncio.shield(self._closer)
        except asyncio.CancelledError:
            self._cut_short = True
            if self._parts is not None:
                await self._parts.server.cancel_all()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._closer)
            raise

    def _inside_node(self) -> bool:
        """Is the current task one of this node's handlers or subscribers?"""
        task = asyncio.current_task()
        return task is not None and task.get_name() in (
            f"catga-{self.node_id}-handler",
            f"catga-{self.node_id}-subscriber",
        )

    async def _close(self) -> None:
        parts = self._parts
        assert parts is not None
        self.state = State.DRAINING
        parts.server.accepting = False
        parts.me.status = NodeStatus.DRAINING
        parts.membership.rebuild()
        if self.options.role == "member":
            parts.heartbeats.send()
        try:
            await self._drain(parts)
        finally:
            await self._teardown()

    async def _drain(self, parts: Parts) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.options.drain_timeout
        drain_end = loop.time() + timeout
        await parts.server.finish(0.0 if self._cut_short else timeout, exclude=None)
        pending = parts.requester.pending
        while len(pending) > 0 and loop.time() < drain_end and not self._cut_short:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
        await self.mediator.idle(0.0 if self._cut_short else max(0.0, drain_end - loop.time()))
        # No heartbeat may follow the BYE, or peers would take this node back.
        await self._stop_background()
        if self.options.role == "member":
            parts.heartbeats.send_bye()
        discovery, self.discovery = self.discovery, None
        if discovery is not None:
            await self._close_discovery(discovery)
        # A caller that sent before it saw the BYE still gets an answer (OVERLOADED,
        # so it goes elsewhere) instead of silence until its deadline; the I/O thread
        # also puts the BYE and the last replies on the wire before LINGER=0 drops it.
        # Cut short, the answers still need that moment, or their callers see only the
        # connection drop (TransportFailed) instead of CANCELLED. A client has neither
        # a BYE nor answers to put on the wire.
        if self.options.role == "member":
            await asyncio.sleep(CUT_SHORT_LINGER if self._cut_short else BYE_LINGER)

    async def _close_discovery(self, discovery: Discovery) -> None:
        try:
            await discovery.aclose()
        except Exception:
            log.exception("discovery %s did not close cleanly", discovery.name)

    async def _stop_background(self) -> None:
        await self._supervisor.stop()

    async def _teardown(self) -> None:
        """Close everything, however far start or drain got. Runs once.

        Cancelled or failing in one of its waits, it still releases the rest: a socket
        left open makes the context's ``term()`` wait forever, at the latest when the
        garbage collector or the interpreter's exit gets to it.
        """
        if self.state is State.CLOSED:
            return
        parts = self._parts
        if parts is not None:
            parts.server.accepting = False
            parts.gossip.running = False
            parts.requester.closed = True
        try:
            await self._stop_background()
            if parts is not None:
                await parts.server.cancel_all()
            discovery, self.discovery = self.discovery, None
            if discovery is not None:
                await self._close_discovery(discovery)
            self.mediator.cancel_subscribers()
            await self.mediator.idle(0.0)
            if self._metrics is not None:
                await self._metrics.aclose()
        finally:
            self._release(parts)

    def _release(self, parts: Parts | None) -> None:
        """The end of the teardown, with nothing to wait for, so nothing to cut it short."""
        self.mediator.cancel_subscribers()
        self.state = State.CLOSED
        if self._metrics is not None:
            self._metrics.close()
        if parts is not None:
            parts.membership.close_watchers()
            parts.requester.pending.fail_all(
                lambda: Cancelled(
                    f"node {self.node_id} closed while the request waited", node=self.node_id
                )
            )
            parts.transport.close()
        self._closed.set()
        self._changed.set()
        if parts is not None:  # a start that failed said why already
            log.info("node %s closed", self.node_id)

    # health ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What is wrong with this node now (empty when healthy)."""
        if self.state is not State.RUNNING:
            return [f"node is {self.state.value}"]
        return self._supervisor.problems()

    @property
    def healthy(self) -> bool:
        """Running, with every background loop (heartbeats, failure detector, discovery) up."""
        return not self.problems()

    def _fail(self, failure: CatgaError) -> None:
        """Something the node cannot go on with: log it, remember it, close the node."""
        log.error("%s", failure.message)
        if self.failure is None:
            self.failure = failure
        self._start_close()

    def _start_close(self) -> None:
        """Start the drain (as ``aclose()`` does) without waiting for it: a failure,
        or a ``Drain`` request, whose handler's answer the drain waits for."""
        if self._closer is None and self.state is State.RUNNING:
            self._closer = asyncio.get_running_loop().create_task(
                self._close(), name=f"catga-{self.node_id}-close"
            )

    def _duplicate_id(self, problem: str) -> None:
        self._fail(ConfigError(problem))

    def _give_up(self, problem: str) -> None:
        self._fail(CatgaError(problem))

    async def wait_closed(self) -> None:
        """Wait until the node is closed (by ``aclose()``, a signal, or a failure)."""
        if self.state is State.NEW:
            raise NodeNotStarted(f"node {self.node_id} has not started")
        await self._closed.wait()

    def stats(self) -> NodeStats:
        """This node's counters now: what the built-in ``Stats`` request answers."""
        if self._parts is not None:
            return self._parts.builtins.snapshot()
        return stats_of(self.node_id, self._counters, self.problems())

    # membership view -----------------------------------------------------------------------

    def members(self) -> list[ClusterNode]:
        """This node and every peer it has heard from, with their state (empty before
        the node starts). A client lists only the members: it is none of them."""
        if self._parts is None:
            return []
        return self._parts.membership.members()

    def watch(self) -> AsyncIterator[MembershipEvent]:
        """Membership changes as they happen, until the node closes."""
        return self._running_parts().membership.watch()

    async def wait_for_peers(
        self, count: int, timeout: float = 10.0, *, handles: type[Message] | None = None
    ) -> None:
        """Wait until ``count`` peers are ALIVE (and handle ``handles``, if given).

        Raises ``RequestTimeout`` when they are not within ``timeout`` s.
        """
        membership = self._running_parts().membership
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def have() -> int:
            if handles is not None:
                return sum(1 for p in membership.candidates(handles.__wire_name__) if not p.local)
            return membership.live_count()

        while have() < count:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.state is State.CLOSED:
                what = f"handling {handles.__wire_name__} " if handles is not None else ""
                raise RequestTimeout(f"{have()} of {count} peers {what}alive after {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _running_parts(self, draining_too: bool = False) -> Parts:
        state = self.state
        if state is State.RUNNING or (draining_too and state is State.DRAINING):
            assert self._parts is not None
            return self._parts
        if state is State.NEW:
            raise NodeNotStarted(
                f"node {self.node_id} has not started; use `async with node:` or "
                "`await node.start()` first"
            )
        if state is State.DRAINING:
            raise NodeClosed(f"node {self.node_id} is draining")
        raise NodeClosed(f"node {self.node_id} is closed; a node starts once")

    # sending -----------------------------------------------------------------------------

    def send(
        self,
        message: Request[T],
        *,
        timeout: float | None = None,
        key: str | None = None,
        node: str | None = None,
        trace_id: str | None = None,
    ) -> Coroutine[Any, Any, T]:
        """Send a request to the node chosen by routing and return its typed response.

        ``await node.send(msg)``: it returns the requester's own coroutine, one
        coroutine frame less per request than an ``async def`` around it; every error
        (a node not running included) is raised when it is awaited.

        ``timeout`` (s, a real number, default ``request_timeout``) is a deadline that
        travels with the request: the handler's node does not start it later, and
        cancels it at the deadline. ``node`` (a node id) sends to that node only.
        ``trace_id`` (a str, default ``current_trace``) travels in the header.

        ``key`` is the consistent-hash key: a str, any str (it is hashed here, never
        sent), or an int, which routes as its decimal string, so ``key=7``, ``key="7"``
        and a ``__routing_key__`` field holding 7 go to the same node. Any other type
        is refused: pass ``str(value)`` for a UUID, say. Without ``key``, the value of
        the message's ``__routing_key__`` field as a str is the key.

        Every argument is checked before anything is sent, and a bad one never counts
        against a node: ``ValidationFailed`` names the argument (a ``timeout``,
        ``key``, ``node`` or ``trace_id`` of the wrong type or out of range, a trace id
        that is not valid UTF-8); ``SerializationFailed`` names the field of the message
        that msgspec cannot encode (a str with a lone surrogate, an int outside the
        64-bit range, a type it does not know) or says it is too large.

        Raises (all ``CatgaError``): ``NoNodes`` (no live node handles the type),
        ``RequestTimeout`` (also a ``TimeoutError``), ``HandlerError`` (the handler
        raised), ``HandlerNotFound``, ``Overloaded`` (every node refused it, or this
        node's ``max_in_flight`` is reached), ``TransportFailed`` (delivered but its node
        was lost, for a type that is not idempotent), ``SerializationFailed``,
        ``ValidationFailed``, ``Cancelled``, ``NodeNotStarted``, ``NodeClosed``.
        """
        state = self.state
        # A draining node's handlers may still send.
        if (state is not State.RUNNING and state is not State.DRAINING) or self._parts is None:
            return self._not_running()
        trace = trace_id if trace_id is not None else current_trace.get()
        requester = self._parts.requester
        spans = requester.spans
        if spans is None:
            sent: Coroutine[Any, Any, T] = requester.send(message, timeout, key, node, trace)
        else:
            span = spans.client(getattr(type(message), "__wire_name__", type(message).__qualname__))
            sent = span.run(requester.send(message, timeout, key, node, trace, span))
        if self._metrics is not None:
            timed: Coroutine[Any, Any, T] = timed_send(self._metrics.sent, sent, type(message))
            return timed
        return sent

    async def _not_running(self) -> Any:
        self._running_parts(draining_too=True)  # raises the error that says why

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to every live subscriber in the cluster, local ones included.

        At most once: an event reaches subscribers connected now. It never blocks: a
        subscriber whose queue is full loses events (ZeroMQ's PUB drops them), which
        the subscriber counts as sequence gaps (``events_lost`` in its ``Stats``).
        It yields to the event loop now and then, so a tight publishing loop cannot
        starve heartbeats and requests.

        Checked before anything is sent: ``SerializationFailed`` names the field of the
        event that msgspec cannot encode (a str with a lone surrogate, an int outside
        the 64-bit range) or says it is too large; ``ValidationFailed`` when
        ``current_trace`` holds something other than a valid str.
        """
        parts = self._running_parts(draining_too=True)
        if self.options.role == "client":
            await self.hand_over(event)
            return
        events = parts.events
        spans = events.spans
        if spans is None:
            await events.publish(event, current_trace.get())
            return
        span = spans.producer(getattr(type(event), "__wire_name__", type(event).__qualname__))
        await span.run(events.publish(event, current_trace.get(), span))

    async def hand_over(self, event: Event) -> dict[str, int | CatgaError]:
        """Publish as a client: ``event`` goes to each live member that subscribes to
        its type as a ``Deliver`` request, at once, and to this node's own subscribers.

        What ``publish()`` of a client does; it returns, per member, the subscribers
        that member queued it for, or the ``CatgaError`` that kept it from them. The
        command line's ``publish`` reports this. A member may use it too, to know who
        took an event (at the cost of a request per subscribing node).
        """
        parts = self._running_parts(draining_too=True)
        name = getattr(type(event), "__wire_name__", "")
        targets = [p.node_id for p in parts.membership.subscribers_of(name)]
        requester = parts.requester

        def send(request: Deliver, node: str, trace: str) -> Coroutine[Any, Any, int]:
            return requester.send(request, None, None, node, trace)

        return await parts.events.hand_over(event, current_trace.get(), targets, send)


__all__ = ["Node", "NodeStateError", "State", "current_trace"]

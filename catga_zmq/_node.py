"""``Node``: lifecycle, ``send`` and ``publish``; ties the parts together.

Run one with ``python -m catga_zmq.node`` (see ``main``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any, Final, TypeVar, overload

import msgspec

from . import __version__
from .config import NodeOptions, parse_endpoint
from .discovery.base import Candidate, ChangeKind, Discovery
from .errors import (
    Cancelled,
    CatgaError,
    ConfigError,
    HandlerError,
    HandlerNotFound,
    NoNodes,
    Overloaded,
    ProtocolError,
    RequestTimeout,
    SerializationFailed,
    TransportFailed,
    ValidationFailed,
    error_from_code,
)
from .mediator import Behavior, Context, Mediator
from .membership import ClusterNode, Membership, MembershipEvent, NodeStatus, Peer
from .messages import Event, Message, Request, response_type
from .protocol import (
    DECODE_ERRORS,
    HEARTBEAT_TOPIC,
    PROTOCOL_VERSION,
    Codec,
    Header,
    HeartbeatBody,
    Kind,
    batch_decoder,
    decode_error,
    decode_heartbeat,
    encode_error,
    encode_header,
    header_decoder,
    raw_batch_decoder,
    topic_for,
)
from .resilience import CircuitBreaker
from .routing import Router, make_router
from .system import Info, NodeInfo, NodeStats, PeerAddress, Ping, Pong, Stats
from .transport import PendingMap, Transport

log = logging.getLogger("catga_zmq.node")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: The longest deadline a request may carry (s): it travels as int32 milliseconds.
MAX_TIMEOUT: Final = (2**31 - 1) / 1000
MAX_BUDGET_MS: Final = 2**31 - 1
#: Sends of one request (the first included), always within its deadline. Rounds of
#: backoff when every candidate refused it do not count, but end at the deadline.
MAX_ATTEMPTS: Final = 8
#: First pause before going round the candidates again when all refused; doubles each time.
RETRY_BACKOFF: Final = 0.01  # s
#: How long a greeting (``Info``) to a seed or a gossiped peer waits for its answer.
GREETING_TIMEOUT: Final = 1.0  # s
#: Pause before greeting again an endpoint that has no connection yet.
GREETING_RETRY: Final = 0.05  # s
#: publish() yields to the event loop once per this many events.
PUBLISH_YIELD: Final = 64
#: After its BYE a node keeps answering (OVERLOADED) for this long before it closes.
BYE_LINGER: Final = 0.2  # s
#: A node that said BYE may have replies still on the way: its requests in flight fail
#: over only after this long (its answers overtaken by the BYE arrive well before).
LEFT_GRACE: Final = 0.5  # s
#: Distinct (peer, problem) pairs remembered to log each problem once per peer.
LOG_ONCE_LIMIT: Final = 4096

_REQ: Final = int(Kind.REQ)
_REP: Final = int(Kind.REP)
_ERR: Final = int(Kind.ERR)
_EVT: Final = int(Kind.EVT)
_HB: Final = int(Kind.HB)
_BYE: Final = int(Kind.BYE)


current_trace: contextvars.ContextVar[str] = contextvars.ContextVar("catga_trace", default="")

_DEFAULT: Any = object()

#: asyncio.Task(..., eager_start=True) exists from Python 3.12 on.
_EAGER_TASKS: Final = sys.version_info >= (3, 12)


class State(StrEnum):
    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class Node:
    """A member of a catga_zmq cluster: serves handlers, sends requests, publishes events.

    ``Node(node_id="users-1", cluster="shop")``; any ``NodeOptions`` setting may be passed
    as a keyword (``heartbeat_interval=0.25``). ``discovery`` is a backend name
    (``"mdns"``, ``"static"``, ``"memory"``, ``"none"``), a ``Discovery`` object, or None.
    """

    def __init__(
        self,
        node_id: str | None = None,
        cluster: str | None = None,
        *,
        discovery: Discovery | str | None = _DEFAULT,
        options: NodeOptions | None = None,
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
                discovery.name if discovery.name in ("mdns", "static", "memory") else "none"
            )
            seeds = getattr(discovery, "seeds", None)
            if seeds is not None:
                settings["seeds"] = list(seeds)
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
        self.state = State.NEW
        #: One router per message type: a router's state (a round-robin counter, the
        #: weighted credits) shared across types would let alternating types each stick
        #: to one node. Made on a type's first send, or by route().
        self._routers: dict[str, Router] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: set[asyncio.Task[Any]] = set()
        self._running = 0
        self._event_seq: dict[str, int] = {}
        self._seen_seq: dict[tuple[str, str], int] = {}
        self._logged: set[tuple[str, str]] = set()
        self._greeting: set[str] = set()  # endpoints being greeted now
        self._greeted: set[str] = set()  # endpoints that answered a greeting
        #: Every address heard of (greetings included, before any heartbeat), by
        #: endpoint: what an ``Info`` answer passes on, so a joiner learns of nodes
        #: that joined a moment before it, not only of those already ALIVE here.
        self._addresses: dict[str, PeerAddress] = {}
        self._topics: set[bytes] = set()
        self._changed: asyncio.Event | None = None
        self._started_at = 0.0
        self.stats = {
            "requests_handled": 0,
            "requests_failed": 0,
            "requests_refused": 0,
            "requests_sent": 0,
            "events_published": 0,
            "events_received": 0,
            "events_lost": 0,
            "frames_rejected": 0,
        }
        for builtin, fn in ((Ping, self._ping), (Info, self._info), (Stats, self._stats)):
            self.mediator.add_handler(fn, builtin)

    # registration ------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.options.node_id

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
        if self.state is State.RUNNING:
            self._me.handles = frozenset(self._handled_types())
            self._me.subscribes = frozenset(self.mediator.subscribers)
            self.membership.rebuild()
            self._update_topics()

    def _handled_types(self) -> list[str]:
        return [n for n in self.mediator.handlers if not n.startswith("catga.")]

    # lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self.state is not State.NEW:
            raise CatgaError(f"node {self.node_id} is {self.state.value}; a node starts once")
        opts = self.options
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.pending = PendingMap(self.loop)
        self.transport = Transport(
            opts.node_id,
            max_message_size=opts.max_message_size,
            hwm=max(1000, opts.max_in_flight),
            on_request=self._on_request,
            on_broadcast=self._on_broadcast,
            on_reply=self._on_reply,
            on_disconnect=self._on_disconnect,
            on_unsent=self.pending.fail_unsent,
        )
        try:
            self.transport.bind(opts.bind, opts.port, opts.pub_port, opts.advertise)
        except CatgaError:
            self.transport.close()
            self.state = State.CLOSED
            raise
        self.incarnation = time.time_ns()
        self._me = Peer(
            opts.node_id,
            self.transport.endpoint,
            self.transport.pub_endpoint,
            self.incarnation,
            handles=frozenset(self._handled_types()),
            subscribes=frozenset(self.mediator.subscribers),
            metadata=dict(opts.metadata),
            weight=opts.weight,
            local=True,
            last_seen=self.loop.time(),
            last_heartbeat=time.time(),
        )
        self.membership = Membership(
            self._me,
            suspect_after=opts.suspect_after,
            faulted_after=opts.faulted_after,
            acceptable_pause=opts.acceptable_pause,
            phi_threshold=opts.phi_threshold,
            min_std=opts.heartbeat_interval / 5,
        )
        self.membership.on_gone = self._forget_peer
        self.membership.on_lost = self._peer_lost
        self.membership.on_change = self._changed.set
        self._update_topics()
        self._seq = 0
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._started_at = time.monotonic()
        self.state = State.RUNNING
        self._gossip = opts.discovery in ("static", "none")
        self.discovery = None
        try:
            self.discovery = self._discovery_obj or _make_discovery(opts)
            self._spawn(self._heartbeat_loop(), "heartbeat")
            self._spawn(self._detector_loop(), "failure-detector")
            if self.discovery is not None:
                await self.discovery.register(self._candidate())
                self._spawn(self._discovery_loop(self.discovery), "discovery")
        except BaseException:
            await self._teardown()  # nothing half-started may outlive a failed start
            raise
        log.info(
            "node %s up: requests %s, heartbeats %s, cluster %s, discovery %s",
            opts.node_id,
            self.transport.endpoint,
            self.transport.pub_endpoint,
            opts.cluster,
            opts.discovery,
        )

    def _candidate(self) -> Candidate:
        return Candidate(
            endpoint=self.transport.endpoint,
            node_id=self.node_id,
            pub_endpoint=self.transport.pub_endpoint,
            cluster=self.options.cluster,
            version=PROTOCOL_VERSION,
            metadata=dict(self.options.metadata),
        )

    async def aclose(self) -> None:
        """Drain and leave: announce DRAINING, finish in-flight work, say BYE. Idempotent.

        Safe to call from a handler of this node (it does not wait for itself) and to
        cancel: the node is closed even if the drain is cut short.
        """
        if self.state in (State.CLOSED, State.NEW):
            self.state = State.CLOSED
            return
        if self.state is State.DRAINING:
            await self._closed.wait()
            return
        self.state = State.DRAINING
        self._me.status = NodeStatus.DRAINING
        self.membership.rebuild()
        self._send_heartbeat()
        try:
            await self._drain()
        finally:
            await self._teardown()

    async def _drain(self) -> None:
        me = asyncio.current_task()
        drain_end = self.loop.time() + self.options.drain_timeout
        serving = [t for t in self._serving if t is not me]
        if serving:
            await asyncio.wait(serving, timeout=self.options.drain_timeout)
        left = [t for t in self._serving if t is not me and not t.done()]
        if left:
            log.warning("%d handlers still running after drain_timeout: cancelled", len(left))
            for task in left:
                task.cancel()  # each answers its caller CANCELLED
            await asyncio.gather(*left, return_exceptions=True)
        while len(self.pending) > 0 and self.loop.time() < drain_end:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
        await self.mediator.idle(max(0.0, drain_end - self.loop.time()), exclude=me)
        # No heartbeat may follow the BYE, or peers would take this node back.
        await self._stop_background()
        self._send_bye()
        if self.discovery is not None:
            try:
                await self.discovery.aclose()
            except Exception:
                log.exception("discovery %s did not close cleanly", self.discovery.name)
        # A caller that sent before it saw the BYE still gets an answer (OVERLOADED,
        # so it goes elsewhere) instead of silence until its deadline; the I/O thread
        # also puts the BYE and the last replies on the wire before LINGER=0 drops it.
        await asyncio.sleep(BYE_LINGER)

    async def _stop_background(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _teardown(self) -> None:
        """Close everything, however far start or drain got. Runs once."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        # Cancelled meanwhile: the tasks are cancelled already, and the sockets must close.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._stop_background())
        if self.discovery is not None and self._me.status is not NodeStatus.LEFT:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.discovery.aclose())
        self.mediator.cancel_subscribers()
        self.membership.close_watchers()
        self.pending.fail_all(lambda: Cancelled(f"node {self.node_id} closed", node=self.node_id))
        self.transport.close()
        self._closed.set()
        log.info("node %s closed", self.node_id)

    def _spawn(self, coro: Any, name: str) -> None:
        task = self.loop.create_task(coro, name=f"catga-{self.node_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    # membership view -----------------------------------------------------------------------

    def members(self) -> list[ClusterNode]:
        """This node and every peer it has heard from, with their state."""
        if self.state is State.NEW:
            return []
        return self.membership.members()

    def watch(self) -> AsyncIterator[MembershipEvent]:
        """Membership changes as they happen, until the node closes."""
        self._check_running()
        return self.membership.watch()

    async def wait_for_peers(
        self, count: int, timeout: float = 10.0, *, handles: type[Message] | None = None
    ) -> None:
        """Wait until ``count`` peers are ALIVE (and handle ``handles``, if given)."""
        self._check_running()
        assert self._changed is not None
        deadline = self.loop.time() + timeout

        def enough() -> bool:
            if handles is not None:
                return (
                    sum(1 for p in self.membership.candidates(handles.__wire_name__) if not p.local)
                    >= count
                )
            return self.membership.live_count() >= count

        while not enough():
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                have = (
                    sum(1 for p in self.membership.candidates(handles.__wire_name__) if not p.local)
                    if handles is not None
                    else self.membership.live_count()
                )
                what = f"handling {handles.__wire_name__} " if handles is not None else ""
                raise RequestTimeout(f"{have} of {count} peers {what}alive after {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _check_running(self) -> None:
        if self.state is not State.RUNNING:
            raise CatgaError(
                f"node {self.node_id} is {self.state.value}; use `async with node:` first"
                if self.state is State.NEW
                else f"node {self.node_id} is {self.state.value}"
            )

    # sending -----------------------------------------------------------------------------

    async def send(
        self,
        message: Request[T],
        *,
        timeout: float | None = None,
        key: str | None = None,
        node: str | None = None,
        trace_id: str | None = None,
    ) -> T:
        """Send a request to the node chosen by routing and return its typed response.

        ``timeout`` (s) is a deadline that travels with the request; ``key`` is the
        consistent-hash key; ``node`` sends to that node only. Raises a ``CatgaError``.
        """
        if self.state is not State.RUNNING and self.state is not State.DRAINING:
            self._check_running()  # a draining node's handlers may still send
        cls = type(message)
        name: str = getattr(cls, "__wire_name__", "")
        if not isinstance(message, Request):
            raise ValidationFailed(
                f"send() takes a Request, got {cls.__qualname__}; use publish() for events"
            )
        budget = self.options.request_timeout if timeout is None else timeout
        if not 0 < budget <= MAX_TIMEOUT:
            raise ValidationFailed(
                f"timeout must be > 0 and at most {MAX_TIMEOUT:.0f} s, got {timeout}"
            )
        loop = self.loop
        deadline = loop.time() + budget
        trace = trace_id if trace_id is not None else current_trace.get()
        if key is None and cls.__routing_key__:
            key = str(getattr(message, cls.__routing_key__))
        idempotent = cls.__idempotent__
        payload: bytes | None = None
        tried: list[Peer] = []
        last_error: CatgaError | None = None
        attempts = rounds = 0
        while attempts < MAX_ATTEMPTS:
            target = self._choose(name, message, key, node, tried)
            if target is None:
                if last_error is None:
                    isolated = len(self.membership.candidates(name)) if node is None else 0
                    raise NoNodes(
                        f"node {node} is not a live member handling {name}"
                        if node is not None
                        else f"no live node handles {name}"
                        if not isolated
                        else f"every node that handles {name} ({isolated}) is isolated by "
                        "its circuit breaker after repeated failures; it is probed again "
                        f"after breaker_cooldown ({self.options.breaker_cooldown} s)"
                    )
                # Every candidate refused it without running it (no connection yet,
                # overloaded): back off a little and go round again, within the deadline.
                pause = RETRY_BACKOFF * 2**rounds
                rounds += 1
                if not last_error.retryable or loop.time() + pause >= deadline:
                    raise last_error
                await asyncio.sleep(pause)
                tried.clear()
                continue
            attempts += 1
            try:
                if target.local:
                    return await self._call_local(message, name, deadline, trace)  # type: ignore[no-any-return]
                if payload is None:
                    try:
                        payload = self._encode(message, name)
                    except BaseException:
                        if target.breaker is not None:
                            target.breaker.release()
                        raise
                reply: T = await self._call_remote(
                    target,
                    name,
                    payload,
                    deadline,
                    trace,
                    self.codec.decoder(response_type(cls)),
                    idempotent,
                )
                return reply
            except TransportFailed as exc:
                if exc.delivered and not idempotent:
                    raise  # it may have run there: running it again is not ours to decide
                last_error = exc
            except (Overloaded, HandlerNotFound) as exc:
                last_error = exc  # not run there: another node may take it at once
            tried.append(target)
            if loop.time() >= deadline:
                break
        assert last_error is not None
        try:
            raise last_error
        finally:
            del last_error  # break the frame <-> traceback cycle (see _call_remote)

    def _choose(
        self, name: str, message: Any, key: str | None, node: str | None, tried: list[Peer]
    ) -> Peer | None:
        if node is not None:
            if tried:
                return None
            if node == self.node_id:
                return self._me if name in self.mediator.handlers else None
            peer = self.membership.peers.get(node)
            if peer is None or peer.status not in (
                NodeStatus.ALIVE,
                NodeStatus.DRAINING,
                NodeStatus.SUSPECT,
            ):
                return None
            return peer
        candidates = self.membership.candidates(name)
        if tried:
            candidates = tuple(p for p in candidates if p not in tried)
        router = self._routers.get(name)
        if router is None:
            router = self._routers[name] = make_router(self.options.routing)
        while candidates:
            target = router.select(candidates, message, key)
            breaker = target.breaker
            if breaker is None or breaker.allow(self.loop.time()):
                return target
            # Isolated by its circuit breaker: choose among the others.
            candidates = tuple(p for p in candidates if p is not target)
        return None

    def _encode(self, message: Message, name: str) -> bytes:
        try:
            payload = self.codec.encode(message)
        except (TypeError, msgspec.EncodeError) as exc:
            raise SerializationFailed(f"{name} could not be encoded: {exc}") from None
        if len(payload) > self.options.max_message_size:
            raise SerializationFailed(
                f"{name} is {len(payload)} bytes, over max_message_size "
                f"{self.options.max_message_size}; send less or raise it on every node"
            )
        return payload

    async def _call_remote(
        self,
        target: Peer,
        name: str,
        payload: bytes,
        deadline: float,
        trace: str,
        decoder: msgspec.msgpack.Decoder[Any],
        idempotent: bool = False,
    ) -> Any:
        pending = self.pending
        rid = 0
        target.outstanding += 1
        try:
            if len(pending) >= self.options.max_in_flight:
                raise Overloaded(
                    f"{len(pending)} requests already in flight from this node (max_in_flight)",
                    node=self.node_id,
                )
            budget_ms = min(MAX_BUDGET_MS, max(1, int((deadline - self.loop.time()) * 1000)))
            rid, fut = pending.open(target, idempotent, deadline, name)
            header = encode_header(_REQ, rid, name, self.options.node_id, budget_ms, 0, trace)
            try:
                # Alone in flight to that node: now. Else it joins the node's batch.
                self.transport.send_request(
                    target.endpoint, header, payload, rid, target.outstanding == 1
                )
            except TransportFailed as exc:
                pending.forget(rid)
                exc.node = target.node_id
                raise
            self.stats["requests_sent"] += 1
            kind, body, source = await fut
        except (TransportFailed, RequestTimeout):
            self._record_failure(target)
            raise
        except BaseException:
            if target.breaker is not None:
                target.breaker.release()  # no verdict on the node (cancelled, or never sent)
            raise
        finally:
            target.outstanding -= 1
            if rid:
                pending.close(rid)  # on every way out: reply, error, timeout, cancellation
                # The future holds the exception, whose traceback holds this frame:
                # without this, every timeout leaves a cycle (and the request) to the GC.
                del fut
        if target.breaker is not None:
            target.breaker.success()
        if kind == _REP:
            try:
                return decoder.decode(body)
            except DECODE_ERRORS as exc:
                raise SerializationFailed(
                    f"the reply to {name} from {source} is not a "
                    f"{getattr(decoder.type, '__qualname__', decoder.type)}: {exc}",
                    node=source,
                ) from None
        err = decode_error(body)
        raise error_from_code(
            err.code, err.message, node=source, retryable=err.retryable, error_type=err.error_type
        )

    def _record_failure(self, target: Peer) -> None:
        if self.membership.peers.get(target.node_id) is not target:
            return  # a greeting to a bare address, not a member: nothing to isolate
        if target.breaker is None:
            target.breaker = CircuitBreaker(
                target.node_id, self.options.breaker_threshold, self.options.breaker_cooldown
            )
        before = target.breaker.state
        target.breaker.failure(self.loop.time())
        if target.breaker.state is not before:
            self.membership.rebuild()  # members() shows the circuit; watchers wake

    def _peer_lost(self, peer: Peer) -> None:
        """A peer turned SUSPECT, FAULTED or LEFT: fail over what is in flight to it."""
        if peer.status is NodeStatus.LEFT:
            # It drained before its BYE: its last replies may still be on the way.
            self.loop.call_later(LEFT_GRACE, self._fail_in_flight_if_left, peer)
        elif peer.status is NodeStatus.SUSPECT:
            # Maybe only slow: re-send only what may safely run twice.
            self._fail_in_flight(peer, "went silent", True)
        else:
            self._fail_in_flight(peer, f"is {peer.status.value}", False)

    def _on_disconnect(self, endpoint: str) -> None:
        """The connection to ``endpoint`` dropped: replies to what was sent on it are lost."""
        for peer in list(self.membership.peers.values()):
            if peer.endpoint == endpoint:
                self._fail_in_flight(peer, "dropped the connection", False)

    def _fail_in_flight_if_left(self, peer: Peer) -> None:
        if peer.status is NodeStatus.LEFT:  # not if it came back meanwhile
            self._fail_in_flight(peer, "left", False)

    def _fail_in_flight(self, peer: Peer, why: str, idempotent_only: bool) -> None:
        if self.state is State.CLOSED:
            return
        n = self.pending.fail_node(peer, why, idempotent_only=idempotent_only)
        if n:
            log.info("%d requests in flight to %s failed over (%s)", n, peer.node_id, why)

    async def _call_local(
        self, message: Request[Any], name: str, deadline: float, trace: str
    ) -> Any:
        entry = self.mediator.handlers.get(name)
        if entry is None:
            raise HandlerNotFound(f"no handler for {name} on {self.node_id}", node=self.node_id)
        if self._running >= self.options.max_concurrency:
            raise Overloaded(
                f"{self._running} handlers running on {self.node_id}", node=self.node_id
            )
        ctx = Context(name, self.node_id, self.node_id, 0, trace, deadline)
        self._running += 1
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                return await entry.call(message, ctx)
        except TimeoutError as exc:
            if scope.expired():
                raise RequestTimeout(
                    f"{name} did not finish before its deadline", node=self.node_id
                ) from None
            raise _ran(exc, self.node_id) from exc
        except _NOT_RUN as exc:
            raise _ran(exc, self.node_id) from exc
        except CatgaError:
            raise
        except Exception as exc:
            raise _ran(exc, self.node_id) from exc
        finally:
            self._running -= 1

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to every live subscriber in the cluster, local ones included.

        At most once: an event reaches subscribers connected now. It never blocks: a
        subscriber whose queue is full loses events (ZeroMQ's PUB drops them), which
        the subscriber counts as sequence gaps (``events_lost`` in its ``Stats``).
        Every ``PUBLISH_YIELD`` events it yields to the event loop, so a tight publishing
        loop cannot starve heartbeats and requests.
        """
        if self.state is not State.RUNNING and self.state is not State.DRAINING:
            self._check_running()
        if not isinstance(event, Event):
            raise ValidationFailed(
                f"publish() takes an Event, got {type(event).__qualname__}; use send() for requests"
            )
        name = type(event).__wire_name__
        payload = self._encode(event, name)
        seq = self._event_seq.get(name, 0) + 1
        self._event_seq[name] = seq
        header = encode_header(_EVT, seq, name, self.options.node_id, 0, 0, current_trace.get())
        self.transport.broadcast(topic_for(name), header, payload)
        self.stats["events_published"] += 1
        if name in self.mediator.subscribers:
            self.mediator.deliver(name, event, Context(name, self.node_id, self.node_id, seq))
        if self.stats["events_published"] % PUBLISH_YIELD == 0:
            await asyncio.sleep(0)

    # inbound -----------------------------------------------------------------------------------

    def _reject(self, peer: str, problem: str, detail: str) -> None:
        self.stats["frames_rejected"] += 1
        key = (peer, problem)
        if key not in self._logged and len(self._logged) < LOG_ONCE_LIMIT:
            self._logged.add(key)
            log.warning("rejected a frame from %s: %s (logged once per peer)", peer, detail)

    def _on_request(self, frames: list[bytes]) -> None:
        if len(frames) == 2:
            self._on_request_batch(frames[0], frames[1])
            return
        if len(frames) != 3:
            self._reject(
                frames[0].hex() if frames else "?",
                "frames",
                f"{len(frames)} frames, expected 3 (or 2 for a batch)",
            )
            return
        ident, raw_header, payload = frames
        try:
            header = header_decoder.decode(raw_header)
        except DECODE_ERRORS as exc:
            self._reject(ident.hex(), "header", f"header does not decode: {exc}")
            return
        self.membership.on_traffic(header.source, self.loop.time())
        self._request(ident, header, payload)

    def _on_request_batch(self, ident: bytes, frame: bytes) -> None:
        for header, payload in self._decode_batch(frame, ident.hex(), "request"):
            self._request(ident, header, payload)

    def _decode_batch(self, frame: bytes, peer: str, what: str) -> list[tuple[Header, msgspec.Raw]]:
        """The records of a batch frame, each sender's traffic noted once; a record
        whose header does not decode is rejected, and the others are still served (or
        resolved)."""
        try:
            records = batch_decoder.decode(frame)
        except DECODE_ERRORS:
            records = self._decode_records(frame, peer, what)
        last = ""
        for header, _ in records:
            if header.source != last:  # one proof of life per sender and batch
                last = header.source
                self.membership.on_traffic(last, self.loop.time())
        return records

    def _decode_records(
        self, frame: bytes, peer: str, what: str
    ) -> list[tuple[Header, msgspec.Raw]]:
        try:
            raw_records = raw_batch_decoder.decode(frame)
        except DECODE_ERRORS as exc:
            self._reject(peer, f"{what}-batch", f"a {what} batch does not decode: {exc}")
            return []
        good = []
        for raw_header, payload in raw_records:
            try:
                good.append((header_decoder.decode(raw_header), payload))
            except DECODE_ERRORS as exc:
                self._reject(peer, f"{what}-header", f"a {what} header does not decode: {exc}")
        return good

    def _request(self, ident: bytes, header: Header, payload: bytes | msgspec.Raw) -> None:
        if header.version != PROTOCOL_VERSION or header.kind != _REQ:
            if header.version != PROTOCOL_VERSION:
                problem = (
                    f"protocol version {header.version}, this node speaks {PROTOCOL_VERSION}; "
                    "run the same catga_zmq protocol on every node"
                )
                self._reject(header.source, "version", problem)
                self._answer_error(ident, header, ProtocolError(problem, node=self.node_id))
            else:
                self._reject(header.source, "kind", f"frame kind {header.kind} sent to a ROUTER")
            return
        entry = self.mediator.handlers.get(header.type_name)
        if entry is None:
            self._answer_error(
                ident,
                header,
                HandlerNotFound(
                    f"no handler for {header.type_name} on {self.node_id}", node=self.node_id
                ),
            )
            return
        if self._running >= self.options.max_concurrency or self.state is not State.RUNNING:
            why = (
                "is draining"
                if self.state is not State.RUNNING
                else f"runs {self._running} handlers (max_concurrency)"
            )
            self.stats["requests_refused"] += 1
            self._answer_error(
                ident, header, Overloaded(f"node {self.node_id} {why}", node=self.node_id)
            )
            return
        try:
            message = entry.decoder.decode(payload)
        except DECODE_ERRORS as exc:
            err: CatgaError = (
                ValidationFailed(f"{header.type_name}: {exc}", node=self.node_id)
                if isinstance(exc, msgspec.ValidationError)
                else SerializationFailed(f"{header.type_name}: {exc}", node=self.node_id)
            )
            self._reject(header.source, f"payload:{header.type_name}", err.message)
            self._answer_error(ident, header, err)
            return
        deadline = self.transport.arrival + header.budget_ms / 1000 if header.budget_ms else 0.0
        ctx = Context(
            header.type_name,
            self.node_id,
            header.source,
            header.request_id,
            header.trace_id,
            deadline,
        )
        self._running += 1
        coro = self._serve(entry.call, message, ctx, ident)
        if _EAGER_TASKS:
            # Python 3.12+: the handler runs at once, inside its task (so current_task(),
            # asyncio.timeout() and TaskGroup work); a handler that does not wait is done
            # before the next message is read, and never costs a loop iteration.
            task: asyncio.Task[None] = asyncio.Task(coro, loop=self.loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
            if task.done():
                return
        else:
            task = self.loop.create_task(coro)
        self._serving.add(task)

    async def _serve(
        self, call: Callable[[Message, Context], Any], message: Message, ctx: Context, ident: bytes
    ) -> None:
        if ctx.trace_id:
            current_trace.set(ctx.trace_id)
        rid = ctx.request_id
        try:
            try:
                result = await call(message, ctx)
            except _NOT_RUN as exc:
                # Raised by the handler's own code (a nested send, say): the request
                # did run here, so it must not read as "not run, try another node".
                raise _ran(exc, self.node_id) from exc
            try:
                body = self.codec.encode(result)
            except (TypeError, msgspec.EncodeError) as exc:
                raise SerializationFailed(
                    f"the reply to {ctx.type_name} could not be encoded: {exc}"
                ) from None
            if len(body) > self.options.max_message_size:
                raise SerializationFailed(
                    f"the reply to {ctx.type_name} is {len(body)} bytes, over max_message_size "
                    f"{self.options.max_message_size}"
                )
            self.stats["requests_handled"] += 1
            self.transport.reply(
                ident,
                encode_header(_REP, rid, "", self.options.node_id),
                body,
                self._running == 1,  # the only handler running: now, else batched
            )
        except HandlerError as exc:
            self.stats["requests_failed"] += 1
            self._answer(ident, rid, exc.code, exc.message, exc.error_type, exc.retryable)
        except CatgaError as exc:
            self.stats["requests_failed"] += 1
            self._answer(ident, rid, exc.code, exc.message, "", exc.retryable)
        except asyncio.CancelledError:
            # It may have done part of its work: not retryable.
            why = f"node {self.node_id} shut down before the handler finished"
            self._answer(ident, rid, Cancelled.code, why, "", False)
            raise
        except Exception as exc:
            self.stats["requests_failed"] += 1
            self._answer(ident, rid, HandlerError.code, str(exc), type(exc).__name__, False)
        finally:
            self._running -= 1
            # Cheaper than a done-callback, which costs a loop iteration of its own.
            self._serving.discard(asyncio.current_task())

    def _answer_error(self, ident: bytes, header: Header, exc: CatgaError) -> None:
        self._answer(ident, header.request_id, exc.code, exc.message, "", exc.retryable)

    def _answer(
        self,
        ident: bytes,
        request_id: int,
        code: str,
        message: str,
        error_type: str,
        retryable: bool,
    ) -> None:
        self.transport.reply(
            ident,
            encode_header(_ERR, request_id, "", self.options.node_id),
            encode_error(code, message, error_type, retryable),
            self._running <= 1,
        )

    def _on_reply(self, frames: list[bytes]) -> None:
        if len(frames) == 1:
            self._on_reply_batch(frames[0])
            return
        if len(frames) != 2:
            self._reject("?", "reply-frames", f"a reply of {len(frames)} frames, expected 2")
            return
        try:
            header = header_decoder.decode(frames[0])
        except DECODE_ERRORS as exc:
            self._reject("?", "reply-header", f"reply header does not decode: {exc}")
            return
        self.membership.on_traffic(header.source, self.loop.time())
        self._reply(header, frames[1])

    def _on_reply_batch(self, frame: bytes) -> None:
        for header, body in self._decode_batch(frame, "?", "reply"):
            self._reply(header, body)

    def _reply(self, header: Header, body: bytes | msgspec.Raw) -> None:
        if header.version != PROTOCOL_VERSION:
            problem = f"{header.source} speaks protocol version {header.version}, this node {PROTOCOL_VERSION}"
            self._reject(header.source, "version", problem)
            self.pending.fail(header.request_id, ProtocolError(problem, node=header.source))
            return
        if header.kind != _REP and header.kind != _ERR:
            self._reject(header.source, "kind", f"frame kind {header.kind} as a reply")
            return
        self.pending.resolve(header.request_id, (header.kind, body, header.source))

    def _on_broadcast(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self._reject("?", "pub-frames", f"a broadcast of {len(frames)} frames, expected 3")
            return
        _topic, raw_header, payload = frames
        try:
            header = header_decoder.decode(raw_header)
        except DECODE_ERRORS as exc:
            self._reject("?", "pub-header", f"broadcast header does not decode: {exc}")
            return
        if header.version != PROTOCOL_VERSION:
            self._reject(
                header.source,
                "version",
                f"protocol version {header.version}, this node speaks {PROTOCOL_VERSION}",
            )
            return
        kind = header.kind
        if kind == _EVT:
            self._on_event(header, payload)
        elif kind in (_HB, _BYE):
            try:
                hb = decode_heartbeat(payload)
            except ProtocolError as exc:
                self._reject(header.source, "heartbeat", str(exc))
                return
            if hb.cluster != self.options.cluster:
                self._reject(
                    hb.node_id,
                    "cluster",
                    f"heartbeat of cluster {hb.cluster!r}, this node is in {self.options.cluster!r}",
                )
                return
            if hb.node_id == self.node_id:
                return
            if kind == _BYE:
                self.membership.on_bye(hb.node_id, hb.incarnation)
                return
            known = self.membership.peers.get(hb.node_id)
            if (
                known is None
                or known.endpoint != hb.endpoint
                or known.pub_endpoint != hb.pub_endpoint
            ) and not self._usable(hb.node_id, hb.endpoint, hb.pub_endpoint):
                return
            fresh = (
                known is None
                or known.incarnation != hb.incarnation
                or known.status is NodeStatus.LEFT
            )
            self.membership.on_heartbeat(hb, self.loop.time())
            if fresh:
                self.transport.dealer(hb.endpoint)  # connect now, not on the first request
                if self._gossip:
                    self._greet(hb.endpoint, attempts=3)
        else:
            self._reject(header.source, "kind", f"frame kind {kind} on PUB/SUB")

    def _on_event(self, header: Header, payload: bytes) -> None:
        name = header.type_name
        subs = self.mediator.subscribers.get(name)
        self.membership.on_traffic(header.source, self.loop.time())
        if not subs:
            return
        key = (header.source, name)
        last = self._seen_seq.get(key)
        if last is not None and header.request_id > last + 1:
            self.stats["events_lost"] += header.request_id - last - 1
        self._seen_seq[key] = header.request_id
        try:
            event = self.mediator.decoder(subs[0].message_type).decode(payload)
        except DECODE_ERRORS as exc:
            self._reject(header.source, f"event:{name}", f"event {name} does not decode: {exc}")
            return
        self.stats["events_received"] += 1
        self.mediator.deliver(
            name,
            event,
            Context(name, self.node_id, header.source, header.request_id, header.trace_id),
        )

    # heartbeats and membership ---------------------------------------------------------------------

    def _update_topics(self) -> None:
        topics = {HEARTBEAT_TOPIC} | {topic_for(n) for n in self.mediator.subscribers}
        self.transport.set_topics(topics, self._topics)
        self._topics = topics

    def _heartbeat_body(self) -> HeartbeatBody:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_mark
        if now - then >= 0.1:
            self._me.load = round((cpu - cpu_then) / (now - then), 3)
            self._cpu_mark = (now, cpu)
        self._me.in_flight = self._running
        self._seq += 1
        return HeartbeatBody(
            node_id=self.node_id,
            incarnation=self.incarnation,
            seq=self._seq,
            status=self._me.status.value,
            cluster=self.options.cluster,
            endpoint=self.transport.endpoint,
            pub_endpoint=self.transport.pub_endpoint,
            load=self._me.load,
            in_flight=self._running,
            weight=self.options.weight,
            interval_ms=int(self.options.heartbeat_interval * 1000),
            handles=sorted(self._me.handles),
            subscribes=sorted(self._me.subscribes),
            metadata=self._me.metadata,
        )

    def _send_heartbeat(self, kind: Kind = Kind.HB) -> None:
        body = msgspec.msgpack.encode(self._heartbeat_body())
        header = encode_header(int(kind), self._seq, "", self.node_id)
        self.transport.broadcast(HEARTBEAT_TOPIC, header, body)
        self._me.last_heartbeat = time.time()

    def _send_bye(self) -> None:
        self._me.status = NodeStatus.LEFT
        self._send_heartbeat(Kind.BYE)

    async def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_interval
        while self.state is not State.CLOSED:
            self._send_heartbeat()
            await asyncio.sleep(interval)

    async def _detector_loop(self) -> None:
        # Four checks per heartbeat interval bound the detection lag to a quarter beat.
        interval = self.options.heartbeat_interval / 4
        loop = self.loop
        due = loop.time() + interval
        while self.state is not State.CLOSED:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            late = now - due
            due = now + interval
            if late > self.options.heartbeat_interval:
                # This node itself stalled (a blocked loop, SIGSTOP, no CPU): the silence
                # was its own. Excuse the peers and let the readers take in what queued
                # meanwhile before judging anyone.
                log.warning("event loop of %s stalled for %.2f s", self.node_id, late)
                self.membership.excuse(late)
                continue
            self.membership.check(now)

    def _forget_peer(self, peer: Peer) -> None:
        if peer.status is NodeStatus.LEFT and self.state is not State.CLOSED:
            # Replies overtaken by its BYE are still on the way to its DEALER: keep the
            # sockets until in-flight requests have had their grace.
            self.loop.call_later(2 * LEFT_GRACE, self._drop_sockets_if_left, peer)
        else:
            self._drop_sockets(peer)

    def _drop_sockets_if_left(self, peer: Peer) -> None:
        if peer.status is NodeStatus.LEFT:  # not if it came back meanwhile
            self._drop_sockets(peer)

    def _drop_sockets(self, peer: Peer) -> None:
        if self.state is State.CLOSED:
            return
        for key in [k for k in self._seen_seq if k[0] == peer.node_id]:
            del self._seen_seq[key]
        still_used = any(
            p is not peer and p.endpoint == peer.endpoint and p.status is not NodeStatus.LEFT
            for p in self.membership.peers.values()
        )
        if not still_used:
            self.transport.drop_peer(peer.endpoint, peer.pub_endpoint)
            self._addresses.pop(peer.endpoint, None)
            self._greeted.discard(peer.endpoint)
            if peer.endpoint in self.options.seeds and self._gossip:
                # A seed that comes back at the same address knows nothing of this node.
                self._greet(peer.endpoint, attempts=0)

    async def _discovery_loop(self, discovery: Discovery) -> None:
        async for change in discovery.watch():
            c = change.candidate
            if change.kind is ChangeKind.ADDED:
                self._add_candidate(c, greet=self._gossip)
                continue
            peer = self.membership.peers.get(c.node_id) if c.node_id is not None else None
            if peer is not None and peer.endpoint == c.endpoint:
                if peer.status is not NodeStatus.LEFT:
                    self.membership.mark_left(peer)
            else:
                self._forget_address(c.endpoint)  # a record that never became a member

    def _usable(self, who: str, *endpoints: str | None) -> bool:
        """Are these endpoints something a socket can connect to? Rejects the frame if not."""
        for endpoint in endpoints:
            if endpoint is None:
                continue
            try:
                parse_endpoint(endpoint)
            except ConfigError as exc:
                self._reject(who, "endpoint", f"{who} announces {exc.message}")
                return False
        return True

    def _add_candidate(self, c: Candidate, *, greet: bool) -> None:
        if c.endpoint == self.transport.endpoint or c.node_id == self.node_id:
            return
        if not self._usable(c.node_id or c.endpoint, c.endpoint, c.pub_endpoint or None):
            return
        if c.cluster is not None and c.cluster != self.options.cluster:
            log.debug("ignoring %s at %s: cluster %r", c.node_id, c.endpoint, c.cluster)
            return
        if c.version is not None and c.version != PROTOCOL_VERSION:
            self._reject(
                c.node_id or c.endpoint,
                "version",
                f"{c.node_id} at {c.endpoint} speaks protocol version {c.version}, this node {PROTOCOL_VERSION}",
            )
            return
        if c.pub_endpoint and c.node_id:
            self._addresses[c.endpoint] = PeerAddress(
                c.node_id, c.endpoint, c.pub_endpoint, self.options.cluster, PROTOCOL_VERSION
            )
            self.transport.subscribe_to(c.pub_endpoint)
            self.transport.dealer(c.endpoint)
        if (greet or not c.pub_endpoint) and c.endpoint not in self._greeted:
            self._greet(c.endpoint, attempts=0 if c.node_id is None else 5)

    def _greet(self, endpoint: str, attempts: int) -> None:
        """Exchange ``Info`` with ``endpoint`` (0 attempts: until it answers, for seeds)."""
        if endpoint in self._greeting or self.state is not State.RUNNING:
            return
        self._greeting.add(endpoint)
        self._spawn(self._greet_loop(endpoint, attempts), f"greet-{endpoint}")

    async def _greet_loop(self, endpoint: str, attempts: int) -> None:
        me = PeerAddress(
            self.node_id,
            self.transport.endpoint,
            self.transport.pub_endpoint,
            self.options.cluster,
            PROTOCOL_VERSION,
        )
        payload = self.codec.encode(Info(caller=me))
        target = Peer(node_id=endpoint, endpoint=endpoint, pub_endpoint="", incarnation=0)
        give_up = self.loop.time() + attempts * GREETING_TIMEOUT if attempts else math.inf
        self.transport.dealer(endpoint)
        try:
            while self.state is State.RUNNING and self.loop.time() < give_up:
                deadline = self.loop.time() + GREETING_TIMEOUT
                try:
                    info: NodeInfo = await self._call_remote(
                        target,
                        Info.__wire_name__,
                        payload,
                        deadline,
                        "",
                        self.codec.decoder(NodeInfo),
                    )
                except TransportFailed:
                    # Not connected yet (or not listening): TCP connects in milliseconds.
                    await asyncio.sleep(GREETING_RETRY)
                    continue
                except CatgaError as exc:
                    log.debug("greeting %s: %s", endpoint, exc)
                    await asyncio.sleep(max(0.0, deadline - self.loop.time()))
                    continue
                if info.cluster != self.options.cluster:
                    log.warning(
                        "%s at %s is in cluster %r, not %r; ignoring it",
                        info.node_id,
                        endpoint,
                        info.cluster,
                        self.options.cluster,
                    )
                    return
                self._greeted.add(endpoint)
                self._add_candidate(
                    Candidate(
                        endpoint, info.node_id, info.pub_endpoint, info.cluster, info.version
                    ),
                    greet=False,
                )
                for p in info.peers:
                    self._add_candidate(
                        Candidate(p.endpoint, p.node_id, p.pub_endpoint, p.cluster, p.version),
                        greet=True,
                    )
                return
            if self.state is State.RUNNING:
                self._forget_address(endpoint)
        finally:
            self._greeting.discard(endpoint)

    def _forget_address(self, endpoint: str) -> None:
        """An address that never joined (unanswered greetings, or its discovery record
        went away): stop reconnecting to it, and stop passing it on to others."""
        if any(p.endpoint == endpoint for p in self.membership.peers.values()):
            return  # it joined after all (heartbeats, not greetings, decide that)
        address = self._addresses.pop(endpoint, None)
        self.transport.drop_peer(endpoint, address.pub_endpoint if address else "")
        log.info("forgot %s: it never joined", endpoint)

    # built-in requests -----------------------------------------------------------------------------

    async def _ping(self, req: Ping) -> Pong:
        return Pong(self.node_id, time.time())

    async def _info(self, req: Info) -> NodeInfo:
        caller = req.caller
        if caller is not None and caller.cluster == self.options.cluster:
            self._add_candidate(
                Candidate(
                    caller.endpoint,
                    caller.node_id,
                    caller.pub_endpoint,
                    caller.cluster,
                    caller.version,
                ),
                greet=False,
            )
        gone = {
            p.endpoint
            for p in self.membership.peers.values()
            if p.status in (NodeStatus.LEFT, NodeStatus.FAULTED)
        }
        peers = [a for ep, a in self._addresses.items() if ep not in gone]
        return NodeInfo(
            node_id=self.node_id,
            cluster=self.options.cluster,
            version=PROTOCOL_VERSION,
            library_version=__version__,
            endpoint=self.transport.endpoint,
            pub_endpoint=self.transport.pub_endpoint,
            incarnation=self.incarnation,
            status=self._me.status.value,
            handles=sorted(self._me.handles),
            subscribes=sorted(self._me.subscribes),
            metadata=dict(self.options.metadata),
            peers=peers,
        )

    async def _stats(self, req: Stats) -> NodeStats:
        counts: dict[str, int] = {}
        for p in self.membership.peers.values():
            counts[p.status.value] = counts.get(p.status.value, 0) + 1
        return NodeStats(
            node_id=self.node_id,
            uptime=time.monotonic() - self._started_at,
            running=self._running,
            pending=len(self.pending),
            requests_handled=self.stats["requests_handled"],
            requests_failed=self.stats["requests_failed"],
            requests_refused=self.stats["requests_refused"],
            requests_sent=self.stats["requests_sent"],
            events_published=self.stats["events_published"],
            events_received=self.stats["events_received"],
            events_lost=self.stats["events_lost"],
            events_dropped=sum(
                sub.dropped for subs in self.mediator.subscribers.values() for sub in subs
            ),
            frames_rejected=self.stats["frames_rejected"],
            replies_dropped=self.transport.dropped_replies,
            late_replies=self.pending.late_replies,
            members=counts,
        )


#: Errors that tell a caller "this request did not run here" (or "nobody can run it"):
#: raised by a handler's own code, they are the handler's failure instead.
_NOT_RUN: Final = (Overloaded, HandlerNotFound, TransportFailed, NoNodes)


def _ran(exc: BaseException, node_id: str) -> HandlerError:
    """The handler ran and raised ``exc``: report it as the handler's failure."""
    message = exc.message if isinstance(exc, CatgaError) else str(exc)
    return HandlerError(message, error_type=type(exc).__name__, node=node_id)


def _make_discovery(opts: NodeOptions) -> Discovery | None:
    if opts.discovery == "none":
        return None
    if opts.discovery == "static":
        from .discovery.static import StaticDiscovery

        return StaticDiscovery(opts.seeds)
    if opts.discovery == "memory":
        from .discovery.memory import MemoryDiscovery

        return MemoryDiscovery()
    from .discovery.mdns import MdnsDiscovery, interfaces_for_bind

    return MdnsDiscovery(opts.cluster, interfaces_for_bind(opts.bind), version=PROTOCOL_VERSION)


def main(argv: list[str] | None = None) -> int:
    """``python -m catga_zmq.node``: run one node until SIGTERM or Ctrl-C."""
    from ._cli import run_node

    return run_node(argv)

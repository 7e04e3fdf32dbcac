"""``send()``: choose a node, encode, send, fail over, back off; the breaker's verdicts;
the replies that come back; requests in flight to a node that is lost.

Failover policy: a request that did not run (not delivered, ``OVERLOADED``, no handler
there, too large for that node) goes to the next candidate at once; one that was
delivered but whose node then died goes elsewhere only when its type is idempotent.
Every retry stays within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._clock import now_ms
from ._inbound import Rejections, decode_batch
from ._pending import Incident, PendingMap
from ._server import DEADLINE_EXPIRED, RequestServer
from .config import DEFAULT_MAX_MESSAGE_SIZE, NodeOptions
from .errors import (
    CatgaError,
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
from .membership import Membership, NodeStatus, Peer
from .messages import Message, Request, response_type
from .protocol import (
    DECODE_ERRORS,
    ENCODE_ERRORS,
    FLAG_ZSTD,
    PROTOCOL_VERSION,
    TRACE_ID_LIMIT,
    Codec,
    Header,
    Kind,
    decode_error,
    encode_failure,
    encode_header,
    header_decoder,
)
from .resilience import CircuitBreaker
from .routing import Router, make_router
from .transport import Transport

if TYPE_CHECKING:
    from ._compression import Zstd
    from .tracing import Outgoing, Spans

log = logging.getLogger("catga_zmq.node")

#: The longest deadline a request may carry (s): it travels as int32 milliseconds.
MAX_TIMEOUT: Final = (2**31 - 1) / 1000
MAX_BUDGET_MS: Final = 2**31 - 1
#: Sends of one request (the first included), always within its deadline. Rounds of
#: backoff when every candidate refused it do not count, but end at the deadline.
MAX_ATTEMPTS: Final = 8
#: First pause before going round the candidates again when all refused; doubles each time.
RETRY_BACKOFF: Final = 0.01  # s
#: A node that said BYE may have replies still on the way: its requests in flight fail
#: over only after this long (its answers overtaken by the BYE arrive well before).
LEFT_GRACE: Final = 0.5  # s

_REQ: Final = int(Kind.REQ)
_REP: Final = int(Kind.REP)
_ERR: Final = int(Kind.ERR)
_LIVE: Final = (NodeStatus.ALIVE, NodeStatus.DRAINING, NodeStatus.SUSPECT)


def _described(value: object) -> str:
    """A bad argument in an error message: its type and the start of its repr."""
    return f"{type(value).__qualname__} {value!r:.80}"


def _seconds(timeout: object) -> float:
    """``send(timeout=)`` of a type other than float or int: any real number but a bool."""
    if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool):
        try:
            return float(timeout)
        except OverflowError:
            pass  # above any float: out of range, said below like any other
    raise ValidationFailed(
        f"timeout must be a number of seconds, > 0 and at most {MAX_TIMEOUT:.0f}, "
        f"got {_described(timeout)}"
    )


def _routing_key(key: object) -> str:
    """``send(key=)`` of a type other than str: an int routes as its decimal string."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return str(int(key))  # int(): an IntEnum member routes as its value
        except ValueError:
            pass  # over Python's limit of digits for int -> str
    raise ValidationFailed(f"key must be a str or an int, got {_described(key)}")


def _field_key(message: Message, field: str, name: str) -> str:
    """The routing key from the message's ``__routing_key__`` field: its value as a str."""
    value = getattr(message, field)
    if type(value) is str:
        return value
    try:
        return str(value)
    except ValueError as exc:  # an int over Python's limit of digits for int -> str
        raise SerializationFailed(f"{name} could not be encoded: field {field!r}: {exc}") from None


class Requester:
    """Sends this node's requests and matches the replies to them."""

    def __init__(
        self,
        *,
        node_id: str,
        options: NodeOptions,
        membership: Membership,
        transport: Transport,
        server: RequestServer,
        codec: Codec,
        reject: Rejections,
        stats: dict[str, int],
        routers: dict[str, Router],
        on_traffic: Callable[[str], None],
    ) -> None:
        self.node_id = node_id
        self.options = options
        self.membership = membership
        self.transport = transport
        self.server = server
        self.codec = codec
        self.reject = reject
        self.stats = stats
        self.routers = routers
        self.on_traffic = on_traffic
        self.loop = asyncio.get_running_loop()
        self.pending = PendingMap(self.loop)
        self.closed = False
        #: OpenTelemetry spans of this node's sends; None: it does not trace.
        self.spans: Spans | None = None
        #: Requests of more bytes than this are compressed (see ``compress``): the one
        #: compare a request costs when compression is off.
        self.compress_over = sys.maxsize
        self.zstd: Zstd | None = None

    def compress(self, zstd: Zstd) -> None:
        """Compress large requests to the nodes that decode zstd, and decode replies
        compressed with it."""
        self.zstd = zstd
        self.compress_over = zstd.threshold

    def _packed(self, payload: bytes) -> tuple[bytes, int]:
        """``payload`` and its header flags: compressed when that makes it smaller."""
        packed = None if self.zstd is None else self.zstd.pack(payload)
        return (payload, 0) if packed is None else (packed, FLAG_ZSTD)

    # send ----------------------------------------------------------------------------

    async def send(
        self,
        message: Request[Any],
        timeout: float | None,
        key: str | None,
        node: str | None,
        trace: str,
        span: Outgoing | None = None,
    ) -> Any:
        """The reply to ``message`` (see ``Node.send``); ``span``: this send's CLIENT
        span, told of each attempt (None: no tracing)."""
        cls = type(message)
        name: str = getattr(cls, "__wire_name__", "")
        if not isinstance(message, Request):
            raise ValidationFailed(
                f"send() takes a Request, got {cls.__qualname__}; use publish() for events"
            )
        # Checked here, before anything is sent: a frame the receiver cannot decode is
        # dropped there unanswered, and its timeout would count against a healthy node.
        # Exact type tests first: the arguments of almost every call pass them at once.
        if type(trace) is not str and not isinstance(trace, str):
            raise ValidationFailed(
                f"trace_id (or current_trace) must be a str, got {_described(trace)}"
            )
        if len(trace) > TRACE_ID_LIMIT:
            raise ValidationFailed(
                f"trace_id (or current_trace) is {len(trace)} characters, over the "
                f"{TRACE_ID_LIMIT} a frame header takes"
            )
        if timeout is not None and type(timeout) is not float and type(timeout) is not int:
            timeout = _seconds(timeout)
        if key is not None and type(key) is not str:
            key = _routing_key(key)
        if node is not None and type(node) is not str and not isinstance(node, str):
            raise ValidationFailed(f"node must be a node id (a str), got {_described(node)}")
        budget = self.options.request_timeout if timeout is None else timeout
        if not 0 < budget <= MAX_TIMEOUT:
            raise ValidationFailed(
                f"timeout must be > 0 and at most {MAX_TIMEOUT:.0f} s, got {timeout}"
            )
        if len(self.pending) >= self.options.max_in_flight:
            # The caller's own bound, not any node's: no other node would do better.
            raise Overloaded(
                f"{len(self.pending)} requests of this node are already awaiting replies, "
                f"its max_in_flight ({self.options.max_in_flight}); send fewer at once or "
                "raise max_in_flight",
                node=self.node_id,
                retryable=False,
            )
        loop = self.loop
        deadline = loop.time() + budget
        if key is None and cls.__routing_key__:
            key = _field_key(message, cls.__routing_key__, name)
        idempotent = cls.__idempotent__
        payload: bytes | None = None
        tried: list[Peer] = []
        last_error: CatgaError | None = None
        attempts = rounds = 0
        too_large = False
        while attempts < MAX_ATTEMPTS:
            target = self._choose(name, message, key, node, tried)
            if target is None:
                if last_error is None:
                    raise self._no_nodes(name, node)
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
            if span is not None:
                span.attempt(target.node_id)
            # An explicit node= bypasses the breaker, so it gives the breaker no verdict
            # either (it could clear another request's half-open probe).
            judged = node is None and not target.local
            try:
                if target.local:
                    return await self.server.call_local(message, name, deadline, trace, span)
                if payload is None:
                    try:
                        payload = self._encode(message, name)
                    except BaseException:
                        if judged and target.breaker is not None:
                            target.breaker.release()
                        raise
                if len(payload) > (target.max_message_size or DEFAULT_MAX_MESSAGE_SIZE):
                    if judged and target.breaker is not None:
                        target.breaker.release()
                    too_large = True
                    raise self._too_large(name, len(payload), target)
                reply: Any = await self.call_remote(
                    target,
                    name,
                    payload,
                    deadline,
                    trace,
                    self.codec.decoder(response_type(cls)),
                    idempotent,
                    judged,
                    span,
                )
                return reply
            except TransportFailed as exc:
                if exc.delivered and not idempotent:
                    raise  # it may have run there: running it again is not ours to decide
                last_error = exc
            except (Overloaded, HandlerNotFound) as exc:
                last_error = exc  # not run there: another node may take it at once
            except SerializationFailed as exc:
                if not too_large:
                    raise
                too_large = False
                last_error = exc  # too large for that node: another may take it
            tried.append(target)
            if span is not None:
                span.failed_over(target.node_id, last_error)
            if loop.time() >= deadline:
                break
        assert last_error is not None
        try:
            raise last_error
        finally:
            del last_error  # break the frame <-> traceback cycle (see call_remote)

    @staticmethod
    def _too_large(name: str, size: int, target: Peer) -> SerializationFailed:
        """``name`` of ``size`` bytes is over what ``target`` takes: refused here, since
        libzmq would drop the frame there with the whole connection.

        Until a node advertises its limit (in its heartbeats) the default is assumed:
        a caller with a larger limit waits for the heartbeat, or names a node that
        advertised a larger one.
        """
        limit = target.max_message_size
        if limit:
            told = f"node {target.node_id}'s max_message_size {limit}"
        else:
            told = (
                f"the default max_message_size {DEFAULT_MAX_MESSAGE_SIZE} assumed for node "
                f"{target.node_id} until its heartbeat says what it takes"
            )
        return SerializationFailed(
            f"{name} is {size} bytes, over {told}; send less or raise it on that node",
            node=target.node_id,
        )

    def _no_nodes(self, name: str, node: str | None) -> NoNodes:
        if node is not None:
            return NoNodes(f"node {node} is not a live member handling {name}")
        isolated = len(self.membership.candidates(name))
        if not isolated:
            return NoNodes(f"no live node handles {name}")
        return NoNodes(
            f"every node that handles {name} ({isolated}) is isolated by its circuit "
            "breaker after repeated failures; it is probed again after breaker_cooldown "
            f"({self.options.breaker_cooldown} s)"
        )

    def _choose(
        self, name: str, message: Any, key: str | None, node: str | None, tried: list[Peer]
    ) -> Peer | None:
        membership = self.membership
        if node is not None:
            if tried:
                return None
            if node == self.node_id:
                return membership.me if name in self.server.mediator.handlers else None
            peer = membership.peers.get(node)
            if peer is None or peer.status not in _LIVE:
                return None
            return peer
        candidates = membership.candidates(name)
        if tried:
            candidates = tuple(p for p in candidates if p not in tried)
        router = self.routers.get(name)
        if router is None:
            router = self.routers[name] = make_router(self.options.routing)
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
        except ENCODE_ERRORS as exc:
            raise SerializationFailed(
                f"{name} could not be encoded: {encode_failure(message, exc)}"
            ) from None
        if len(payload) > self.options.max_message_size:
            raise SerializationFailed(
                f"{name} is {len(payload)} bytes, over max_message_size "
                f"{self.options.max_message_size}; send less or raise it on every node"
            )
        return payload

    async def call_remote(
        self,
        target: Peer,
        name: str,
        payload: bytes,
        deadline: float,
        trace: str,
        decoder: msgspec.msgpack.Decoder[Any],
        idempotent: bool = False,
        judged: bool = True,
        span: Outgoing | None = None,
    ) -> Any:
        """One send to ``target`` and the wait for its answer; ``judged``: the answer (or
        its absence) counts for or against the target's circuit breaker; ``span``: the
        CLIENT span whose W3C context goes in the header."""
        pending = self.pending
        rid = 0
        target.outstanding += 1
        breaker = target.breaker if judged else None
        try:
            budget_ms = min(MAX_BUDGET_MS, max(1, int((deadline - self.loop.time()) * 1000)))
            rid, fut = pending.open(target.node_id, idempotent, deadline, name, target.endpoint)
            flags = 0
            if len(payload) > self.compress_over and target.zstd:
                payload, flags = self._packed(payload)
            if span is None:
                header = encode_header(
                    _REQ, rid, name, self.node_id, budget_ms, flags, trace, now_ms()
                )
            else:
                header = encode_header(
                    _REQ,
                    rid,
                    name,
                    self.node_id,
                    budget_ms,
                    flags,
                    trace,
                    now_ms(),
                    0,
                    span.traceparent,
                    span.tracestate,
                )
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
            kind, body, source, handled_us = await fut
        except TransportFailed as exc:
            # One verdict per event, not per request: a dropped connection fails every
            # request in flight on it at once (see on_disconnect).
            if judged:
                incident = exc._incident
                if not isinstance(incident, Incident):
                    self._record_failure(target)
                elif not incident.judged:
                    incident.judged = True
                    self._record_failure(target)
            raise
        except RequestTimeout:
            if judged:
                self._record_failure(target)
            raise
        except BaseException:
            if breaker is not None:
                breaker.release()  # no verdict on the node (cancelled, or never sent)
            raise
        finally:
            target.outstanding -= 1
            if rid:
                pending.close(rid)  # on every way out: reply, error, timeout, cancellation
                # The future holds the exception, whose traceback holds this frame:
                # without this, every timeout leaves a cycle (and the request) to the GC.
                del fut
        if kind == _REP:
            if breaker is not None:
                breaker.success()
            if handled_us:
                self.stats["remote_handled"] += 1
                self.stats["remote_handler_us"] += handled_us
                if span is not None:
                    span.handled(handled_us)
            try:
                return decoder.decode(body)
            except DECODE_ERRORS as exc:
                problem = (
                    f"the reply to {name} from {source} is not a "
                    f"{getattr(decoder.type, '__qualname__', decoder.type)}: {exc}"
                )
                # A bad frame like any other (over a bound, say): counted, logged once.
                self.reject(source, f"reply:{name}", problem)
                raise SerializationFailed(problem, node=source) from None
        try:
            err = decode_error(body)
        except ProtocolError as exc:
            # Counted and logged like any bad frame; the request ends now, saying why.
            # The node did answer: no verdict on it.
            self.reject(source, "error-body", exc.message)
            if breaker is not None:
                breaker.release()
            raise ProtocolError(
                f"the error answer to {name} from {source} is not valid: {exc.message}",
                node=source,
            ) from None
        if err.code == RequestTimeout.code and err.error_type == DEADLINE_EXPIRED:
            # The handler's node cancelled it at the deadline this side sent: as much a
            # sign of a node in trouble as no answer at all.
            if judged:
                self._record_failure(target)
            raise RequestTimeout(err.message, node=source, retryable=idempotent)
        if breaker is not None:
            breaker.success()
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

    # replies -------------------------------------------------------------------------

    def on_reply(self, frames: list[bytes], endpoint: str) -> None:
        """Reply frames read on the DEALER to ``endpoint``."""
        if len(frames) == 1:
            for header, body in decode_batch(frames[0], endpoint, "reply", self.reject):
                self._reply(header, body, endpoint)
            return
        if len(frames) != 2:
            self.reject(endpoint, "reply-frames", f"a reply of {len(frames)} frames, expected 2")
            return
        try:
            header = header_decoder.decode(frames[0])
        except DECODE_ERRORS as exc:
            self.reject(endpoint, "reply-header", f"reply header does not decode: {exc}")
            return
        self._reply(header, frames[1], endpoint)

    def _reply(self, header: Header, body: bytes | msgspec.Raw, endpoint: str) -> None:
        if header.version != PROTOCOL_VERSION:
            problem = f"{header.source} speaks protocol version {header.version}, this node {PROTOCOL_VERSION}"
            self.reject(header.source, "version", problem)
            self.pending.fail(
                header.request_id, ProtocolError(problem, node=header.source), endpoint
            )
            return
        if header.kind != _REP and header.kind != _ERR:
            self.reject(header.source, "kind", f"frame kind {header.kind} as a reply")
            return
        if header.flags & FLAG_ZSTD:
            try:
                if self.zstd is None:
                    raise ProtocolError(
                        f"the reply from {header.source} came compressed with zstd, which "
                        f"this node does not decode (compression = none)"
                    )
                body = self.zstd.unpack(body)
            except ProtocolError as exc:
                self.reject(header.source, "decompress", exc.message)
                self.pending.fail(
                    header.request_id, ProtocolError(exc.message, node=header.source), endpoint
                )
                return
        # Proof of life only from the node the request went to, on the connection it
        # went through: a reply that names another node, or no request of ours, proves
        # nothing; one to a request that went elsewhere answers nothing.
        resolved = self.pending.resolve(
            header.request_id, (header.kind, body, header.source, header.handled_us), endpoint
        )
        if resolved:
            self.on_traffic(header.source)
        elif resolved is None:
            self.reject(
                endpoint,
                "reply-connection",
                f"a reply to request {header.request_id} read from {endpoint}, where that "
                "request did not go; dropped",
            )

    # lost nodes ----------------------------------------------------------------------

    def peer_lost(self, peer: Peer) -> None:
        """A peer turned SUSPECT, FAULTED or LEFT: fail over what is in flight to it."""
        if peer.status is NodeStatus.LEFT:
            # It drained before its BYE: its last replies may still be on the way.
            self.loop.call_later(LEFT_GRACE, self._fail_in_flight_if_left, peer)
        elif peer.status is NodeStatus.SUSPECT:
            # Maybe only slow: re-send only what may safely run twice.
            self._fail_in_flight(peer, "went silent", True)
        else:
            self._fail_in_flight(peer, f"is {peer.status.value}", False)

    def on_disconnect(self, endpoint: str) -> None:
        """The connection to ``endpoint`` dropped: replies to what was sent on it are lost.

        The node may be healthy: libzmq drops a connection on which a frame over the
        receiver's ``max_message_size`` arrives (a request over the node's limit, or a
        reply over this node's). Its requests fail as one ``Incident``, so the drop
        counts once against the node, not once per request it had in flight.
        """
        for peer in list(self.membership.peers.values()):
            if peer.endpoint == endpoint:
                limit = f"={peer.max_message_size}" if peer.max_message_size else ""
                self._fail_in_flight(
                    peer,
                    "dropped the connection",
                    False,
                    f"the connection to {peer.node_id} dropped with this request in flight "
                    f"(the node closed, or refused a frame over its max_message_size{limit}; "
                    f"or this node refused a reply over its own, {self.options.max_message_size})",
                )

    def _fail_in_flight_if_left(self, peer: Peer) -> None:
        if peer.status is NodeStatus.LEFT:  # not if it came back meanwhile
            self._fail_in_flight(peer, "left", False)

    def _fail_in_flight(self, peer: Peer, why: str, idempotent_only: bool, what: str = "") -> None:
        if self.closed:
            return
        what = what or f"node {peer.node_id} {why} while the request was in flight"
        n = self.pending.fail_node(peer.node_id, what, idempotent_only=idempotent_only)
        if n:
            log.info("%d requests in flight to %s failed over (%s)", n, peer.node_id, why)

"""Inbound requests: frame checks, the concurrency bound, the deadline, the answer, and
finishing or cancelling what runs when the node shuts down.

A local call (``send()`` of a type this node handles, routed here) takes the same path
of checks as a remote one: the handler receives its own copy of the message, decoded
from its wire form; the caller receives the reply decoded as the response type, so a
handler that returns the wrong type fails the same way on both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._inbound import Rejections, decode_batch
from .config import NodeOptions
from .errors import (
    Cancelled,
    CatgaError,
    HandlerError,
    HandlerNotFound,
    NoNodes,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    SerializationFailed,
    TransportFailed,
    ValidationFailed,
)
from .mediator import Context, HandlerEntry, Mediator
from .membership import Peer
from .messages import Message
from .protocol import (
    DECODE_ERRORS,
    ENCODE_ERRORS,
    FLAG_ZSTD,
    PROTOCOL_VERSION,
    Codec,
    Header,
    Kind,
    encode_error,
    encode_header,
    header_decoder,
)
from .security import AdminCheck, Trust
from .transport import Transport

if TYPE_CHECKING:
    from ._compression import Zstd
    from .tracing import Outgoing

log = logging.getLogger("catga_zmq.node")

_REQ: Final = int(Kind.REQ)
_REP: Final = int(Kind.REP)
_ERR: Final = int(Kind.ERR)

#: The clock of a handler's processing time (``HandlerStats.processing_time``): that
#: of the reader's arrival times, which a remote request's time starts from, so that
#: counting it costs one clock read per request, not two.
_clock: Final = time.monotonic

#: asyncio.Task(..., eager_start=True) exists from Python 3.12 on.
_EAGER_TASKS: Final = sys.version_info >= (3, 12)

#: Errors that tell a caller "this request did not run here" (or "nobody can run it"):
#: raised by a handler's own code, they are the handler's failure instead.
NOT_RUN: Final = (Overloaded, HandlerNotFound, TransportFailed, NoNodes)


#: How often running handlers are checked against their callers' deadlines: a handler
#: is cancelled at most this long after its deadline.
DEADLINE_SWEEP: Final = 0.02  # s

#: The ``error_type`` of the TIMEOUT answer a node sends when it cancels a handler at
#: its caller's deadline (a nested send's timeout inside a handler has none).
DEADLINE_EXPIRED: Final = "deadline"


def ran(exc: BaseException, node_id: str) -> HandlerError:
    """The handler ran and raised ``exc``: report it as the handler's failure."""
    message = exc.message if isinstance(exc, CatgaError) else str(exc)
    return HandlerError(message, error_type=type(exc).__name__, node=node_id)


class RequestServer:
    """Runs this node's handlers for requests read from the ROUTER, and for local calls."""

    def __init__(
        self,
        *,
        node_id: str,
        options: NodeOptions,
        mediator: Mediator,
        codec: Codec,
        transport: Transport,
        reject: Rejections,
        stats: dict[str, int],
        peers: Mapping[str, Peer],
        trust: Trust | None = None,
        admin: AdminCheck | None = None,
    ) -> None:
        self.node_id = node_id
        self.options = options
        self.mediator = mediator
        self.codec = codec
        self.transport = transport
        self.reject = reject
        self.stats = stats
        #: The members by node id: how late this node reads each one's frames.
        self.peers = peers
        #: CURVE: every request's source must be the node its connection's key is
        #: trusted for (None in plaintext).
        self.trust = trust
        #: Who may send admin requests (None: no one from outside this process).
        self.admin = admin
        self.loop = asyncio.get_running_loop()
        #: Handlers running now (remote and local calls).
        self.running = 0
        #: False once the node drains: new requests are refused (OVERLOADED).
        self.accepting = True
        #: Handler tasks still running -> the deadline their caller sent (0.0: none).
        #: A sweep every DEADLINE_SWEEP cancels those past it: cheaper than a timer or a
        #: heap entry per request, for a bound of DEADLINE_SWEEP on the lateness.
        self._serving: dict[asyncio.Task[None], float] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._timed_out: set[asyncio.Task[None]] = set()
        #: One name for every handler task of this node: the leak checks find them,
        #: and a constant costs nothing per request.
        self._task_name = f"catga-{node_id}-handler"
        #: Replies of more bytes than this are compressed (see ``compress``): the one
        #: compare a reply costs when compression is off.
        self.compress_over = sys.maxsize
        self.zstd: Zstd | None = None

    def compress(self, zstd: Zstd) -> None:
        """Compress large replies for the callers that decode zstd, and decode requests
        compressed with it."""
        self.zstd = zstd
        self.compress_over = zstd.threshold

    # reading -------------------------------------------------------------------------

    def on_request(self, frames: list[bytes]) -> None:
        if len(frames) == 2:
            ident = frames[0]
            for record_header, record in decode_batch(
                frames[1], ident.hex(), "request", self.reject
            ):
                self._request(ident, record_header, record)
            return
        if len(frames) != 3:
            self.reject(
                frames[0].hex() if frames else "?",
                "frames",
                f"{len(frames)} frames, expected 3 (or 2 for a batch)",
            )
            return
        ident, raw_header, payload = frames
        try:
            header = header_decoder.decode(raw_header)
        except DECODE_ERRORS as exc:
            self.reject(ident.hex(), "header", f"header does not decode: {exc}")
            return
        self._request(ident, header, payload)

    def _request(self, ident: bytes, header: Header, payload: bytes | msgspec.Raw) -> None:
        if header.version != PROTOCOL_VERSION or header.kind != _REQ:
            if header.version != PROTOCOL_VERSION:
                problem = (
                    f"protocol version {header.version}, this node speaks {PROTOCOL_VERSION}; "
                    "run the same catga_zmq protocol on every node"
                )
                self.reject(header.source, "version", problem)
                self._answer_error(ident, header, ProtocolError(problem, node=self.node_id))
            else:
                self.reject(header.source, "kind", f"frame kind {header.kind} sent to a ROUTER")
            return
        # No proof of life, however well formed: anyone can connect to a ROUTER and
        # name any node as its source (a frozen node must not be kept ALIVE by others).
        if self.trust is not None and not self.trust.identity_ok(
            header.source, self.transport.peer_key
        ):
            self.reject(
                header.source,
                "identity",
                f"a request naming {header.source!r} came on a connection with key "
                f"{self.transport.peer_key.decode('ascii', 'replace')}, which is not that "
                "node's; dropped",
            )
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
        # Before anything of the request is decoded or run; the connection's key is
        # the one of this frame (transport.peer_key is set per read).
        if entry.admin and self._admin_refused(ident, header):
            return
        refused = self._refusal()
        if refused is not None:
            self._answer_error(ident, header, refused)
            return
        if header.flags & FLAG_ZSTD:
            unpacked = self._unpacked(ident, header, payload)
            if unpacked is None:
                return
            payload = unpacked
        try:
            message = entry.decoder.decode(payload)
        except DECODE_ERRORS as exc:
            err = _undecodable(header.type_name, exc, self.node_id)
            self.reject(header.source, f"payload:{header.type_name}", err.message)
            self._answer_error(ident, header, err)
            return
        deadline = 0.0
        arrival = self.transport.arrival
        if header.budget_ms:
            deadline = arrival + header.budget_ms / 1000
            if header.sent_ms:
                peer = self.peers.get(header.source)
                if peer is not None:
                    # The budget counts from the send, not from this read: a frozen
                    # node reads late and must not start what its caller gave up on.
                    waited = peer.clock.wait(arrival * 1000, header.sent_ms)
                    if waited:
                        deadline -= waited / 1000
                        if deadline <= arrival:
                            self._expired(ident, header, waited)
                            return
        ctx = Context(
            header.type_name,
            self.node_id,
            header.source,
            header.request_id,
            header.trace_id,
            deadline,
            header.traceparent,
            header.tracestate,
        )
        self.running += 1
        coro = self._serve(entry, message, ctx, ident, arrival)
        if _EAGER_TASKS:
            # Python 3.12+: the handler runs at once, inside its task (so current_task(),
            # asyncio.timeout() and TaskGroup work); a handler that does not wait is done
            # before the next message is read, and never costs a loop iteration.
            task: asyncio.Task[None] = asyncio.Task(  # type: ignore[call-arg,unused-ignore]
                coro, loop=self.loop, name=self._task_name, eager_start=True
            )
            if task.done():
                return
        else:
            task = self.loop.create_task(coro, name=self._task_name)
        self._serving[task] = deadline
        if deadline and self._sweep is None:
            self._sweep = self.loop.call_later(DEADLINE_SWEEP, self._cancel_expired)

    def _unpacked(self, ident: bytes, header: Header, payload: bytes | msgspec.Raw) -> bytes | None:
        """A compressed request's payload; None (counted, logged once, answered) when
        it is refused."""
        try:
            if self.zstd is None:
                raise ProtocolError(
                    f"{header.type_name} came compressed with zstd, which {self.node_id} "
                    "does not decode (compression = none); senders compress only for nodes "
                    "whose heartbeats name it"
                )
            return self.zstd.unpack(payload)
        except ProtocolError as exc:
            self.reject(header.source, f"decompress:{header.type_name}", exc.message)
            self._answer_error(ident, header, ProtocolError(exc.message, node=self.node_id))
            return None

    def _expired(self, ident: bytes, header: Header, waited_ms: float) -> None:
        self.stats["requests_expired"] += 1
        why = (
            f"{header.type_name} was read on {self.node_id} {waited_ms / 1000:.3f} s late "
            f"(this node did not read meanwhile), past its {header.budget_ms / 1000:.3f} s "
            "budget; not started"
        )
        self._answer(ident, header.request_id, RequestTimeout.code, why, DEADLINE_EXPIRED, False)

    def _admin_refused(self, ident: bytes, header: Header) -> bool:
        """Answer ``PERMISSION_DENIED`` (and count and log it once per peer) if the
        caller may not send this admin request."""
        check = self.admin
        key = self.transport.peer_key
        denied = (
            PermissionDenied(
                f"{header.type_name} refused on {self.node_id}: it takes no admin requests",
                node=self.node_id,
            )
            if check is None
            else check.refusal(header.type_name, header.source, key)
        )
        if denied is None:
            return False
        self.reject(header.source, f"admin:{header.type_name}", denied.message)
        self._answer_error(ident, header, denied)
        return True

    def _refusal(self) -> Overloaded | None:
        """Why a new request is refused now (None: it may run)."""
        if not self.accepting:
            self.stats["requests_refused"] += 1
            return Overloaded(f"node {self.node_id} is draining", node=self.node_id)
        if self.running >= self.options.max_concurrency:
            self.stats["requests_refused"] += 1
            return Overloaded(
                f"node {self.node_id} runs {self.running} handlers (max_concurrency)",
                node=self.node_id,
            )
        return None

    # running -------------------------------------------------------------------------

    async def _serve(
        self, entry: HandlerEntry, message: Message, ctx: Context, ident: bytes, arrival: float
    ) -> None:
        """Run the handler of a request read at ``arrival`` (``time.monotonic()``) and
        answer it."""
        rid = ctx.request_id
        try:
            try:
                result = await entry.call(message, ctx)
            except NOT_RUN as exc:
                # Raised by the handler's own code (a nested send, say): the request
                # did run here, so it must not read as "not run, try another node".
                raise ran(exc, self.node_id) from exc
            body = self._encode_reply(ctx.type_name, result)
            flags = 0
            if len(body) > self.compress_over:
                peer = self.peers.get(ctx.source)
                if peer is not None and peer.zstd and self.zstd is not None:
                    packed = self.zstd.pack(body)
                    if packed is not None:
                        body, flags = packed, FLAG_ZSTD
            self.stats["requests_handled"] += 1
            entry.handled += 1
            # From the read, as the handler's stats count it: 0 would say "not given".
            handled_us = int((_clock() - arrival) * 1_000_000) or 1
            self.transport.reply(
                ident,
                encode_header(_REP, rid, "", self.node_id, 0, flags, "", 0, handled_us),
                body,
                self.running == 1,  # the only handler running: now, else batched
            )
        except HandlerError as exc:
            self.stats["requests_failed"] += 1
            entry.errors += 1
            self._answer(ident, rid, exc.code, exc.message, exc.error_type, exc.retryable)
        except CatgaError as exc:
            self.stats["requests_failed"] += 1
            entry.errors += 1
            self._answer(ident, rid, exc.code, exc.message, "", exc.retryable)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task in self._timed_out:
                # Cancelled by its caller's deadline, not by a shutdown: the caller has
                # given up already; this answer only tells a late listener why.
                assert task is not None
                self._timed_out.discard(task)
                task.uncancel()
                self.stats["requests_failed"] += 1
                entry.errors += 1
                why = f"{ctx.type_name} did not finish before its deadline; cancelled"
                self._answer(ident, rid, RequestTimeout.code, why, DEADLINE_EXPIRED, False)
                return
            # It may have done part of its work: not retryable.
            why = f"node {self.node_id} shut down before the handler finished"
            self._answer(ident, rid, Cancelled.code, why, "", False)
            raise
        except Exception as exc:
            self.stats["requests_failed"] += 1
            entry.errors += 1
            self._answer(ident, rid, HandlerError.code, str(exc), type(exc).__name__, False)
        finally:
            entry.busy += _clock() - arrival
            self.running -= 1
            # Cheaper than a done-callback, which costs a loop iteration of its own.
            self._serving.pop(asyncio.current_task(), None)  # type: ignore[arg-type,unused-ignore]

    def _encode_reply(self, type_name: str, result: Any) -> bytes:
        try:
            body = self.codec.encode(result)
        except ENCODE_ERRORS as exc:
            raise SerializationFailed(
                f"the reply to {type_name} could not be encoded: {exc}", node=self.node_id
            ) from None
        if len(body) > self.options.max_message_size:
            raise SerializationFailed(
                f"the reply to {type_name} is {len(body)} bytes, over max_message_size "
                f"{self.options.max_message_size}",
                node=self.node_id,
            )
        return body

    async def call_local(
        self,
        message: Message,
        name: str,
        deadline: float,
        trace: str,
        span: Outgoing | None = None,
    ) -> Any:
        """Run this node's handler of ``name`` for a local ``send()``, as a remote call
        would: the same refusals, a copy of the message, the reply checked and counted;
        ``span``, the caller's, is the parent of the handler's (when this node traces)."""
        entry = self.mediator.handlers.get(name)
        if entry is None:
            raise HandlerNotFound(f"no handler for {name} on {self.node_id}", node=self.node_id)
        refused = self._refusal()
        if refused is not None:
            raise refused
        try:
            copy = entry.decoder.decode(self.codec.encode(message))
        except ENCODE_ERRORS as exc:
            raise SerializationFailed(f"{name} could not be encoded: {exc}") from None
        except DECODE_ERRORS as exc:
            raise _undecodable(name, exc, self.node_id) from None
        ctx = Context(name, self.node_id, self.node_id, 0, trace, deadline)
        if span is not None:
            ctx.traceparent, ctx.tracestate = span.traceparent, span.tracestate
        self.running += 1
        started = _clock()
        scope = asyncio.timeout_at(deadline)
        try:
            try:
                async with scope:
                    result = await entry.call(copy, ctx)
                body = self._encode_reply(name, result)
            except TimeoutError as exc:
                if scope.expired():
                    raise RequestTimeout(
                        f"{name} did not finish before its deadline", node=self.node_id
                    ) from None
                if isinstance(exc, RequestTimeout):
                    raise  # a nested send's, or the deadline check's: as on the remote path
                raise ran(exc, self.node_id) from exc
            except NOT_RUN as exc:
                raise ran(exc, self.node_id) from exc
            except CatgaError:
                raise
            except Exception as exc:
                raise ran(exc, self.node_id) from exc
        except CatgaError:
            self.stats["requests_failed"] += 1
            entry.errors += 1
            raise
        finally:
            entry.busy += _clock() - started
            self.running -= 1
        self.stats["requests_handled"] += 1
        entry.handled += 1
        # As on the remote path: the handler's side counts what it answered, and it is
        # the caller that finds a reply of the wrong type.
        try:
            return self.codec.decoder(entry.response_type).decode(body)
        except DECODE_ERRORS as exc:
            raise SerializationFailed(
                f"the reply to {name} from {self.node_id} is not a "
                f"{getattr(entry.response_type, '__qualname__', entry.response_type)}: {exc}",
                node=self.node_id,
            ) from None

    # answers -------------------------------------------------------------------------

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
            encode_header(_ERR, request_id, "", self.node_id),
            encode_error(code, message, error_type, retryable),
            self.running <= 1,
        )

    # deadlines -----------------------------------------------------------------------

    def _cancel_expired(self) -> None:
        self._sweep = None
        now = time.monotonic()
        waiting = False
        for task, deadline in list(self._serving.items()):
            if not deadline:
                continue
            # A handler not started yet is left to DeadlineBehavior, which refuses it
            # with an answer; cancelled before its first step it would never answer.
            if deadline <= now and not task.done() and _started(task):
                self._timed_out.add(task)
                task.cancel()
            else:
                waiting = True
        if waiting:
            self._sweep = self.loop.call_later(DEADLINE_SWEEP, self._cancel_expired)

    # shutdown ------------------------------------------------------------------------

    async def finish(self, timeout: float, exclude: asyncio.Task[Any] | None) -> None:
        """Wait up to ``timeout`` s for the running handlers, then cancel the rest."""
        serving = [t for t in self._serving if t is not exclude]
        if serving:
            await asyncio.wait(serving, timeout=timeout)
        left = [t for t in self._serving if t is not exclude and not t.done()]
        if left:
            log.warning("%d handlers still running after drain_timeout: cancelled", len(left))
            await self.cancel_all(exclude)

    async def cancel_all(self, exclude: asyncio.Task[Any] | None = None) -> None:
        """Cancel every running handler and wait until each has answered CANCELLED."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        left = [t for t in self._serving if t is not exclude and not t.done()]
        if any(not _started(t) for t in left):
            # Let them take their first step, so that each answers its caller CANCELLED.
            await asyncio.sleep(0)
            left = [t for t in left if not t.done()]
        for task in left:
            task.cancel()
        if left:
            # A second cancellation of the closer must not leave them running.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*left, return_exceptions=True))


def _started(task: asyncio.Task[Any]) -> bool:
    return inspect.getcoroutinestate(task.get_coro()) != inspect.CORO_CREATED  # type: ignore[arg-type]


def _undecodable(type_name: str, exc: Exception, node_id: str) -> CatgaError:
    if isinstance(exc, msgspec.ValidationError):
        return ValidationFailed(f"{type_name}: {exc}", node=node_id)
    return SerializationFailed(f"{type_name}: {exc}", node=node_id)

"""Local dispatch: handlers, subscribers and the pipeline of behaviours around them.

A behaviour is middleware around every handler call (logging, deadline checks, metrics,
validation). The chain is composed once per handler when the node starts, not per call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .errors import ConfigError, RequestTimeout
from .messages import Event, Message, Request, response_type
from .protocol import MAX_HANDLES

if TYPE_CHECKING:
    from .tracing import Spans

log = logging.getLogger("catga_zmq.mediator")

#: Events queued for one subscriber before new ones are dropped (and counted), like a
#: NATS slow consumer: a stuck subscriber must not grow memory without bound.
SUBSCRIBER_QUEUE_LIMIT = 10_000


@dataclass(slots=True)
class Context:
    """What a handler or behaviour may know about the call it is part of.

    ``trace_id`` is the id the caller sent (``send(trace_id=)``, ``current_trace``);
    where this node traces (``catga_zmq.tracing``) and the caller sent none, the W3C
    trace id (32 hex digits) of the handler's span. ``traceparent`` and ``tracestate``
    are the W3C trace context the message came with ("" when its sender did not trace).
    """

    type_name: str
    node_id: str  # the node running the handler
    source: str  # the node that sent the message
    request_id: int = 0
    trace_id: str = ""
    deadline: float = 0.0  # monotonic time (loop.time()) by which the reply is due; 0: none
    traceparent: str = ""
    tracestate: str = ""

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when there is none."""
        if not self.deadline:
            return None
        return self.deadline - time.monotonic()


Next = Callable[[], Awaitable[Any]]


Call = Callable[[Message, Context], Awaitable[Any]]


class Behavior(Protocol):
    """``async def __call__(message, ctx, call_next)``: call ``call_next()`` to go on.

    A behaviour may also define ``wrap(inner) -> call``, returning ``inner`` wrapped in
    itself: it is then composed once per handler, which saves a closure and a
    coroutine per call (the built-in behaviours do this; ``__call__`` is enough).
    """

    async def __call__(self, message: Message, ctx: Context, call_next: Next) -> Any: ...


class DeadlineBehavior:
    """Refuses to start work whose deadline has already passed."""

    async def __call__(self, message: Message, ctx: Context, call_next: Next) -> Any:
        self.check(ctx)
        return await call_next()

    @staticmethod
    def check(ctx: Context) -> None:
        """Raise ``RequestTimeout`` if ``ctx``'s deadline has passed."""
        # time.monotonic(), not loop.time(): uvloop's loop time stands still while a
        # handler holds the loop, and requests read in the same pass must see the
        # time that passed. Both are CLOCK_MONOTONIC, so they compare.
        if ctx.deadline and time.monotonic() >= ctx.deadline:
            raise RequestTimeout(
                f"{ctx.type_name} from {ctx.source} arrived after its deadline; not started",
                node=ctx.node_id,
            )

    def wrap(self, inner: Call) -> Call:
        """``inner``, called only while its deadline has not passed (see ``Behavior``)."""
        check = self.check

        def call(message: Message, ctx: Context) -> Awaitable[Any]:
            check(ctx)
            return inner(message, ctx)

        return call


class LoggingBehavior:
    """Logs each call at DEBUG (type, source, duration) and each failure at WARNING."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("catga_zmq.handler")

    async def __call__(self, message: Message, ctx: Context, call_next: Next) -> Any:
        return await self.wrap(lambda _m, _c: call_next())(message, ctx)

    def wrap(self, inner: Call) -> Call:
        """``inner``, with its duration and any failure logged (see ``Behavior``)."""
        log = self.log

        async def call(message: Message, ctx: Context) -> Any:
            start = time.perf_counter()
            try:
                result = await inner(message, ctx)
            except Exception as exc:
                log.warning(
                    "%s from %s failed after %.1f ms: %s: %s",
                    ctx.type_name,
                    ctx.source,
                    (time.perf_counter() - start) * 1e3,
                    type(exc).__name__,
                    exc,
                )
                raise
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s from %s handled in %.1f ms",
                    ctx.type_name,
                    ctx.source,
                    (time.perf_counter() - start) * 1e3,
                )
            return result

        return call


HandlerFn = Callable[..., Any]


@dataclass(slots=True)
class HandlerEntry:
    message_type: type[Request[Any]]
    fn: HandlerFn
    wants_context: bool
    is_async: bool
    decoder: msgspec.msgpack.Decoder[Any]
    response_type: Any
    #: Served only to admin callers (the type's ``__admin__``): the request server
    #: checks the caller before the pipeline runs.
    admin: bool = False
    #: The composed pipeline: ``call(message, ctx) -> result``.
    call: Call = field(init=False)
    #: What the request server counts of it (``HandlerStats``): kept here, where each
    #: request looks its handler up anyway, so counting costs no lookup of its own.
    handled: int = 0
    errors: int = 0
    busy: float = 0.0  # s spent from the handler's start to its answer, in total

    def innermost(self) -> Call:
        """The handler itself as a pipeline step, with no layer it does not need."""
        fn = self.fn
        if self.is_async:
            if self.wants_context:
                return fn
            return lambda message, _ctx: fn(message)
        wants_context = self.wants_context

        async def call_sync(message: Message, ctx: Context) -> Any:
            return fn(message, ctx) if wants_context else fn(message)

        return call_sync


@dataclass(slots=True)
class SubscriberEntry:
    message_type: type[Event]
    fn: HandlerFn
    wants_context: bool
    is_async: bool
    queue: deque[tuple[Event, Context]] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None
    delivered: int = 0
    failed: int = 0
    dropped: int = 0


class Mediator:
    """Finds the handler or the subscribers of a message type and runs them."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.handlers: dict[str, HandlerEntry] = {}
        self.subscribers: dict[str, list[SubscriberEntry]] = {}
        self.behaviors: list[Behavior] = [LoggingBehavior(), DeadlineBehavior()]
        #: OpenTelemetry spans around handlers and subscribers; None: no tracing.
        self.spans: Spans | None = None
        self._decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}

    # registration ---------------------------------------------------------------

    def add_handler(self, fn: HandlerFn, message_type: type[Request[Any]] | None = None) -> None:
        cls, wants_ctx = _message_param(fn, message_type, Request, "handler")
        name = cls.__wire_name__
        if name in self.handlers and self.handlers[name].fn is not fn:
            raise ConfigError(
                f"{cls.__qualname__} already has a handler on this node "
                f"({_describe(self.handlers[name].fn)}); a request type has exactly one"
            )
        if name not in self.handlers and not name.startswith(BUILTIN_PREFIX):
            _room_for(cls, self.handlers, "handles")
        entry = HandlerEntry(
            cls,
            fn,
            wants_ctx,
            inspect.iscoroutinefunction(fn),
            self.decoder(cls),
            response_type(cls),
            bool(cls.__admin__),
        )
        entry.call = self._compose(entry)
        self.handlers[name] = entry

    def add_subscriber(self, fn: HandlerFn, message_type: type[Event] | None = None) -> None:
        cls, wants_ctx = _message_param(fn, message_type, Event, "subscriber")
        if cls.__wire_name__ not in self.subscribers:
            _room_for(cls, self.subscribers, "subscribes to")
        self.decoder(cls)
        self.subscribers.setdefault(cls.__wire_name__, []).append(
            SubscriberEntry(cls, fn, wants_ctx, inspect.iscoroutinefunction(fn))
        )

    def add_behavior(self, behavior: Behavior, *, outermost: bool = False) -> None:
        """Add a behaviour; the last added runs innermost, closest to the handler.
        ``outermost``: around every other one instead (metrics see each call whole)."""
        if outermost:
            self.behaviors.insert(0, behavior)
        else:
            self.behaviors.append(behavior)
        for entry in self.handlers.values():
            entry.call = self._compose(entry)

    def trace(self, spans: Spans | None) -> None:
        """Run every handler (but the built-in ones) in a SERVER span of ``spans``, and
        every subscriber in a CONSUMER span; None: no spans."""
        self.spans = spans
        for entry in self.handlers.values():
            entry.call = self._compose(entry)

    def decoder(self, cls: type[Any]) -> msgspec.msgpack.Decoder[Any]:
        try:
            return self._decoders[cls]
        except KeyError:
            dec = self._decoders[cls] = msgspec.msgpack.Decoder(cls)
            return dec

    def _compose(self, entry: HandlerEntry) -> Call:
        call = entry.innermost()
        for behavior in reversed(self.behaviors):
            wrap = getattr(behavior, "wrap", None)
            call = wrap(call) if wrap is not None else _wrap(behavior, call)
        # Outermost, so that the span covers every behaviour. Not around the built-in
        # requests: greetings and health checks would flood the traces.
        if self.spans is not None and not entry.message_type.__wire_name__.startswith(
            BUILTIN_PREFIX
        ):
            call = self.spans.serve(call)
        return call

    # dispatch -------------------------------------------------------------------

    def deliver(self, type_name: str, event: Event, ctx: Context) -> int:
        """Queue ``event`` for every local subscriber of its type; returns how many."""
        subs = self.subscribers.get(type_name)
        if not subs:
            return 0
        for sub in subs:
            if len(sub.queue) >= SUBSCRIBER_QUEUE_LIMIT:
                sub.dropped += 1
                if sub.dropped == 1 or sub.dropped % 1000 == 0:
                    log.warning(
                        "subscriber %s is %d events behind; dropped %d so far",
                        _describe(sub.fn),
                        len(sub.queue),
                        sub.dropped,
                    )
                continue
            sub.queue.append((event, ctx))
            if sub.worker is None:
                sub.worker = asyncio.get_running_loop().create_task(
                    self._run_subscriber(sub), name=f"catga-{self.node_id}-subscriber"
                )
        return len(subs)

    async def _run_subscriber(self, sub: SubscriberEntry) -> None:
        # One worker per subscriber keeps each subscriber's events in publish order and
        # costs one task per burst, not one per event.
        try:
            while sub.queue:
                event, ctx = sub.queue.popleft()
                try:
                    args = (event, ctx) if sub.wants_context else (event,)
                    if self.spans is not None:
                        await self.spans.consume(sub.fn, args, sub.is_async, ctx)
                    elif sub.is_async:
                        await sub.fn(*args)
                    else:
                        sub.fn(*args)
                    sub.delivered += 1
                except Exception:
                    sub.failed += 1
                    log.exception("subscriber %s failed on %s", _describe(sub.fn), ctx.type_name)
        finally:
            sub.worker = None

    async def idle(self, timeout: float, exclude: asyncio.Task[Any] | None = None) -> None:
        """Wait (up to ``timeout`` s) until every subscriber has finished its queue."""
        workers = [
            s.worker
            for subs in self.subscribers.values()
            for s in subs
            if s.worker is not None and s.worker is not exclude
        ]
        if workers:
            await asyncio.wait(workers, timeout=timeout)

    def cancel_subscribers(self) -> None:
        for subs in self.subscribers.values():
            for sub in subs:
                if sub.worker is not None:
                    sub.worker.cancel()
                sub.queue.clear()


def _wrap(behavior: Behavior, inner: Call) -> Call:
    def call(message: Message, ctx: Context) -> Awaitable[Any]:
        return behavior(message, ctx, lambda: inner(message, ctx))

    return call


def _describe(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


#: The wire names of the built-in requests: every node serves them, and heartbeats
#: leave them out, so they take no room of MAX_HANDLES.
BUILTIN_PREFIX = "catga."


def _room_for(cls: type[Any], registered: Mapping[str, Any], does: str) -> None:
    """Refuse one type more than MAX_HANDLES: heartbeats carry every name, and peers
    refuse a heartbeat with more."""
    if len(registered) >= MAX_HANDLES:
        raise ConfigError(
            f"{cls.__qualname__}: this node {does} {len(registered)} message types "
            f"already, the most a heartbeat carries ({MAX_HANDLES}); spread them over "
            "more nodes"
        )


def _message_param(
    fn: HandlerFn, explicit: type[Any] | None, base: type[Any], what: str
) -> tuple[Any, bool]:
    """The message type a handler takes (from its first parameter's annotation)."""
    if not callable(fn):
        raise ConfigError(f"{what} {fn!r} is not callable")
    params = list(inspect.signature(fn).parameters.values())
    if not 1 <= len(params) <= 2:
        raise ConfigError(
            f"{what} {_describe(fn)} must take (message) or (message, ctx), "
            f"it takes {len(params)} parameters"
        )
    cls = explicit
    if cls is None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise ConfigError(
                f"cannot read the annotations of {what} {_describe(fn)}: {exc}"
            ) from exc
        cls = hints.get(params[0].name)
        if cls is None:
            raise ConfigError(
                f"{what} {_describe(fn)}: annotate its first parameter with the message type, "
                f"e.g. `async def f(msg: MyMessage)`, or pass the type explicitly"
            )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
            f"{what} {_describe(fn)} takes {cls!r}, which is not a subclass of {base.__name__}"
        )
    return cls, len(params) == 2

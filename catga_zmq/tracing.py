"""OpenTelemetry spans and W3C trace-context propagation (the optional extra ``otel``).

When a node traces
------------------
It never imports OpenTelemetry to find out. A node traces when ``Node(tracer_provider=)``
gives it a provider, or when the application has imported ``opentelemetry.trace`` and
set a global tracer provider that is neither the API's default proxy nor its no-op one
(an SDK ``TracerProvider``, say). That is decided when the node starts; a node that does
not trace then looks again every ``RECHECK`` s (a dict look-up while the application has
not imported OpenTelemetry), so a provider set after the start is taken up within a
second, off the request path. The setting ``tracing = false`` turns all of it off.

A node that does not trace pays one None check per ``send()``, ``publish()`` and event
delivered to a subscriber, and nothing per handler call: its handlers' pipelines have
no tracing layer (``Mediator.trace`` adds one when tracing starts).

The spans (OpenTelemetry's semantic conventions for RPC and for messaging)
----------------------------------------------------------------------------
- ``send()``: a CLIENT span named after the wire type (``shop.GetUser``), with
  ``rpc.system`` (and its newer name ``rpc.system.name``) ``"catga_zmq"`` and
  ``rpc.method`` the wire name. It covers every attempt: each send to a node is an event
  ``attempt`` (``catga_zmq.attempt``: 1, 2...; ``catga_zmq.node``), each one that failed
  over is an event ``failover`` (``catga_zmq.node``, ``error.type``); ``catga_zmq.attempts``
  counts them, ``catga_zmq.node`` names the node of the last one, and
  ``catga_zmq.handler_us`` is the time its handler took there (from the reply).
- The handler: a SERVER span named after the wire type, whose parent is the caller's
  span (``traceparent`` in the request's header); it is the current span while the
  handler runs, so the handler's own spans nest under it. Built-in requests
  (``catga.Ping``, ``Info``, ``Stats``) get none: greetings would flood the traces.
- ``publish()``: a PRODUCER span ``publish NAME``; each subscriber's run: a CONSUMER span
  ``process NAME`` whose parent is the producer's (``messaging.system`` ``"catga_zmq"``,
  ``messaging.destination.name`` the wire name).

An error sets the span's status to ERROR (its description: the message) and
``error.type``: a ``CatgaError``'s code (``TIMEOUT``, ``HANDLER_FAILED``...; also as
``rpc.response.status_code``), or the class name of any other exception (a handler's
``ValueError``), which is also recorded as an ``exception`` event.

The W3C context travels in the header's ``traceparent`` and ``tracestate``, beside the
caller's own ``trace_id``, which is unchanged; a handler's ``ctx.trace_id`` that the
caller left empty becomes its span's trace id (32 hex digits).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ._version import __version__
from .errors import Cancelled, CatgaError, RequestTimeout
from .protocol import MAX_TRACESTATE

if TYPE_CHECKING:
    from opentelemetry.context import Context as TraceContext
    from opentelemetry.trace import Span, SpanKind, TracerProvider

    from .mediator import Call, Context

#: While a node does not trace, it looks for a tracer provider this often.
RECHECK: Final = 1.0  # s

#: ``rpc.system`` and ``messaging.system``.
SYSTEM: Final = "catga_zmq"
#: The instrumentation scope's name (its version: the library's).
SCOPE: Final = "catga_zmq"

T = TypeVar("T")

#: A W3C ``traceparent``: version, trace id, parent span id, flags; a version after 00
#: may add fields after the flags (W3C Trace Context, "Versioning of traceparent").
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def global_provider() -> TracerProvider | None:
    """The tracer provider the application set, or None: none set, or OpenTelemetry
    never imported (this does not import it)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider: TracerProvider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider


def spans_for(node_id: str, provider: TracerProvider | None) -> Spans | None:
    """The spans of node ``node_id`` from ``provider`` (None: the global one, if set)."""
    if provider is None:
        provider = global_provider()
        if provider is None:
            return None
    return Spans(node_id, provider)


async def wait_for_provider(node_id: str, start: Callable[[Spans], None]) -> None:
    """Look for a global tracer provider every ``RECHECK`` s; once there is one, call
    ``start`` with the node's spans and end."""
    while (spans := spans_for(node_id, None)) is None:  # noqa: ASYNC110 - no event says it
        await asyncio.sleep(RECHECK)
    start(spans)


def error_type(exc: BaseException, deadline: float = 0.0) -> str:
    """``error.type`` of ``exc``: a ``CatgaError``'s code, else the exception's class
    name; a cancelled handler past its ``deadline`` is ``TIMEOUT``, else ``CANCELLED``."""
    if isinstance(exc, CatgaError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        if deadline and time.monotonic() >= deadline:
            return RequestTimeout.code
        return Cancelled.code
    return type(exc).__qualname__


class Spans:
    """The spans of one node, from one tracer provider."""

    def __init__(self, node_id: str, provider: TracerProvider) -> None:
        from opentelemetry import context, trace

        self.node_id = node_id
        self.tracer = provider.get_tracer(SCOPE, __version__)
        self.kind = trace.SpanKind
        self.invalid: Span = trace.INVALID_SPAN
        self._trace = trace
        self._attach = context.attach
        self._detach = context.detach
        self._context = context.Context
        self._span_context = trace.SpanContext
        self._remote = trace.NonRecordingSpan
        self._state = trace.TraceState
        self._flags = trace.TraceFlags

    # outgoing: send() and publish() --------------------------------------------------

    def client(self, name: str) -> Outgoing:
        """The CLIENT span of one ``send()`` of wire type ``name`` (started when run)."""
        attributes = {"rpc.system": SYSTEM, "rpc.system.name": SYSTEM, "rpc.method": name}
        return Outgoing(self, name, self.kind.CLIENT, attributes)

    def producer(self, name: str) -> Outgoing:
        """The PRODUCER span of one ``publish()`` of wire type ``name``."""
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": name,
            "catga_zmq.node": self.node_id,
        }
        return Outgoing(self, f"publish {name}", self.kind.PRODUCER, attributes)

    def carrier(self, span: Span) -> tuple[str, str]:
        """``span``'s W3C ``traceparent`` and ``tracestate``, as the header carries them."""
        sc = span.get_span_context()
        if not sc.is_valid:
            return "", ""
        traceparent = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
        tracestate = sc.trace_state.to_header() if sc.trace_state else ""
        # W3C: a vendor passes on at least 512 characters; a receiver's header takes no
        # more, so a longer state is left out rather than cost the whole frame.
        if len(tracestate) > MAX_TRACESTATE:
            tracestate = ""
        return traceparent, tracestate

    # incoming: handlers and subscribers ----------------------------------------------

    def parent(self, traceparent: str, tracestate: str) -> TraceContext:
        """The context a received message's span starts in: its sender's span, or a new
        trace (never whatever happens to be current where the frame was read).

        Parsed as OpenTelemetry's W3C propagator does, at a third of its cost: a
        traceparent that is not valid (all-zero ids, version ff, a version 00 with more
        fields) starts a new trace.
        """
        match = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
        if match is None:
            return self._context()
        version, trace_id, span_id, flags, more = match.groups()
        if (
            trace_id == _ZERO_TRACE
            or span_id == _ZERO_SPAN
            or version == "ff"
            or (version == "00" and more)
        ):
            return self._context()
        state = self._state.from_header([tracestate]) if tracestate else None
        sc = self._span_context(
            int(trace_id, 16), int(span_id, 16), True, self._flags(int(flags, 16)), state
        )
        return self._trace.set_span_in_context(self._remote(sc), self._context())

    def serve(self, inner: Call) -> Call:
        """``inner`` (a handler's pipeline) run in a SERVER span (see ``Mediator.trace``)."""
        tracer, kind = self.tracer, self.kind.SERVER

        async def call(message: Any, ctx: Context) -> Any:
            parent = self.parent(ctx.traceparent, ctx.tracestate)
            span = tracer.start_span(
                ctx.type_name,
                parent,
                kind,
                {
                    "rpc.system": SYSTEM,
                    "rpc.system.name": SYSTEM,
                    "rpc.method": ctx.type_name,
                    "catga_zmq.node": ctx.node_id,
                    "catga_zmq.source": ctx.source,
                },
            )
            token = self._attach(self._trace.set_span_in_context(span, parent))
            try:
                if not ctx.trace_id:
                    ctx.trace_id = f"{span.get_span_context().trace_id:032x}"
                return await inner(message, ctx)
            except BaseException as exc:
                self.failed(span, exc, ctx.deadline)
                raise
            finally:
                self._detach(token)
                span.end()

        return call

    async def consume(
        self, fn: Callable[..., Any], args: tuple[Any, ...], is_async: bool, ctx: Context
    ) -> None:
        """Run one subscriber ``fn(*args)`` in a CONSUMER span."""
        parent = self.parent(ctx.traceparent, ctx.tracestate)
        span = self.tracer.start_span(
            f"process {ctx.type_name}",
            parent,
            self.kind.CONSUMER,
            {
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": ctx.type_name,
                "catga_zmq.node": ctx.node_id,
                "catga_zmq.source": ctx.source,
            },
        )
        token = self._attach(self._trace.set_span_in_context(span, parent))
        try:
            if not ctx.trace_id:
                ctx.trace_id = f"{span.get_span_context().trace_id:032x}"
            if is_async:
                await fn(*args)
            else:
                fn(*args)
        except BaseException as exc:
            self.failed(span, exc)
            raise
        finally:
            self._detach(token)
            span.end()

    # errors --------------------------------------------------------------------------

    def failed(self, span: Span, exc: BaseException, deadline: float = 0.0) -> None:
        """Mark ``span`` as failed by ``exc``: status, ``error.type`` and the exception."""
        kind = error_type(exc, deadline)
        if isinstance(exc, CatgaError):
            message = exc.message
            span.set_attribute("rpc.response.status_code", exc.code)
        else:
            message = str(exc) or kind
        span.set_attribute("error.type", kind)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, message))
        if not isinstance(exc, asyncio.CancelledError):
            span.record_exception(exc, escaped=True)


class Outgoing:
    """The span of one ``send()`` (CLIENT) or ``publish()`` (PRODUCER): started when
    ``run`` is awaited, in the current context (the application's span, or a handler's
    SERVER span), and ended when the call ends.

    While it runs, ``traceparent`` and ``tracestate`` are its W3C context for the
    header; the requester reports each attempt (``attempt``, ``failed_over``) and the
    handler's time from the reply (``handled``).
    """

    __slots__ = (
        "attempts",
        "attributes",
        "handled_us",
        "kind",
        "name",
        "node",
        "span",
        "spans",
        "traceparent",
        "tracestate",
    )

    def __init__(self, spans: Spans, name: str, kind: SpanKind, attributes: dict[str, str]) -> None:
        self.spans = spans
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.span: Span = spans.invalid
        self.traceparent = ""
        self.tracestate = ""
        self.attempts = 0
        self.node = ""
        self.handled_us = 0

    async def run(self, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call`` (the send or the publish, given this span) inside the span."""
        try:
            span = self.span = self.spans.tracer.start_span(
                self.name, kind=self.kind, attributes=self.attributes
            )
            self.traceparent, self.tracestate = self.spans.carrier(span)
        except BaseException:
            call.close()  # never awaited: no warning about it
            raise
        try:
            return await call
        except BaseException as exc:
            self.spans.failed(span, exc)
            raise
        finally:
            if self.attempts:
                # One call for all of them: each call takes the span's lock.
                done: dict[str, str | int] = {
                    "catga_zmq.attempts": self.attempts,
                    "catga_zmq.node": self.node,
                }
                if self.handled_us:
                    done["catga_zmq.handler_us"] = self.handled_us
                span.set_attributes(done)
            span.end()

    def attempt(self, node_id: str) -> None:
        """The request goes to ``node_id`` (the first time, or failing over)."""
        self.attempts += 1
        self.node = node_id
        self.span.add_event(
            "attempt", {"catga_zmq.attempt": self.attempts, "catga_zmq.node": node_id}
        )

    def failed_over(self, node_id: str, exc: CatgaError) -> None:
        """The attempt at ``node_id`` failed with ``exc`` and the request goes on."""
        self.span.add_event(
            "failover",
            {"catga_zmq.node": node_id, "error.type": exc.code, "exception.message": exc.message},
        )

    def handled(self, handled_us: int) -> None:
        """The handler took ``handled_us`` µs on its node (its reply says)."""
        self.handled_us = handled_us

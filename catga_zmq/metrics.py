"""Prometheus metrics of a node (the optional extra ``prometheus``), and ``/metrics``,
``/livez`` and ``/readyz`` over HTTP.

Most figures are counters the parts keep anyway (``stats()``'s, the peer table, the
transport's batches): a collector reads them when Prometheus scrapes, so they cost the
request path nothing. What only a request knows (its type, its outcome, how long it
took) is one call per request, on plain numbers (``Timings.observe``): a dict lookup, a
bisect and a few additions, no lock and no prometheus_client object. With metrics off
the node makes no ``Metrics`` at all, and the request path tests one attribute for None.

Labels are bounded: a message type (a registered class; past ``MAX_TYPE_LABELS`` types,
``_other``), an outcome (``OK`` or an error code, a class attribute of the error), a
peer's node id (members are at most ``max_peers``), a reason (a word of the code), a
status or a state. Never a request id.

The HTTP server runs on the node's own event loop (``asyncio.start_server``): an answer
to ``/livez`` shows that the loop turns, and every figure is read where it is written,
so no lock is needed. A scrape from another thread (a user's own server for their
registry) reads the figures on the node's loop too, waiting at most ``SCRAPE_TIMEOUT``.

prometheus_client is imported only here, and only when a node turns metrics on.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._server import NOT_RUN
from .errors import CatgaError, ConfigError, HandlerError
from .mediator import Call, Context
from .membership import NodeStatus
from .messages import Message, Request
from .resilience import CircuitState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from ._wiring import Parts

log = logging.getLogger("catga_zmq.metrics")

INSTALL_HINT: Final = "pip install 'catga-zmq[prometheus]'"

#: Upper bounds of the duration histograms (s). A request takes about 0.1 ms on
#: loopback: prometheus_client's default buckets, from 5 ms up, would put nearly every
#: one in the first.
BUCKETS: Final = (
    0.000025,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Message types with series of their own; the next ones share the label ``_other``.
MAX_TYPE_LABELS: Final = 1024
OTHER: Final = "_other"
#: Classes whose label is remembered (the rest are looked up at each send).
MAX_CLASSES: Final = 4 * MAX_TYPE_LABELS
#: The ``type`` label of a send() given something that is not a Request.
NOT_A_REQUEST: Final = "_invalid"
OK: Final = "OK"
#: How long a scrape from another thread waits for the node's loop (s).
SCRAPE_TIMEOUT: Final = 5.0
#: The HTTP server's bounds: connections at once, bytes of a request head, seconds to
#: read it. A scrape is one short GET; anything longer is not one.
MAX_CONNECTIONS: Final = 16
MAX_HEAD: Final = 8192  # bytes
READ_TIMEOUT: Final = 5.0  # s
MAX_HEADER_LINES: Final = 100

#: Error codes that say "not run here" when a handler's own code raises them (a nested
#: send): the caller gets HANDLER_FAILED, so that is the outcome.
_NOT_RUN_CODES: Final = frozenset(cls.code for cls in NOT_RUN)


def prometheus() -> Any:
    """The prometheus_client package, or ``ConfigError`` saying how to install it."""
    try:
        import prometheus_client
        import prometheus_client.exposition
        import prometheus_client.metrics_core
        import prometheus_client.utils
    except ImportError:
        raise ConfigError(
            f"metrics need prometheus_client, which is not installed: {INSTALL_HINT} "
            "(or set metrics_port to 0)"
        ) from None
    return prometheus_client


# what each request adds --------------------------------------------------------------------


class _Row:
    """One message type's figures: outcomes and the durations' histogram."""

    __slots__ = ("buckets", "ok", "outcomes", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.ok = 0
        self.outcomes: dict[str, int] = {}
        self.total = 0.0  # s, the sum of the durations


class Timings:
    """Requests by type and outcome, with a histogram of their durations by type."""

    __slots__ = ("max_types", "names", "rows")

    def __init__(self, max_types: int = MAX_TYPE_LABELS) -> None:
        self.rows: dict[str, _Row] = {}
        self.max_types = max_types
        #: The label of each class sent (its wire name), looked up once per class.
        self.names: dict[type, str] = {}

    def observe(self, name: str, outcome: str | None, seconds: float) -> None:
        """One request of type ``name`` ended (``outcome`` None: OK) after ``seconds``."""
        row = self.rows.get(name)
        if row is None:
            row = self._row(name)
        row.buckets[_bisect(BUCKETS, seconds)] += 1
        row.total += seconds
        if outcome is None:
            row.ok += 1
        else:
            row.outcomes[outcome] = row.outcomes.get(outcome, 0) + 1

    def _row(self, name: str) -> _Row:
        if len(self.rows) >= self.max_types:
            name = OTHER
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = _Row()
        return row


_bisect: Final = bisect.bisect_left
_clock: Final = time.perf_counter


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, CatgaError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return HandlerError.code


class HandlerTimings:
    """The behaviour, outermost, that times every handler call on this node (see
    ``Mediator.add_behavior``), local calls included."""

    def __init__(self, timings: Timings) -> None:
        self.timings = timings

    async def __call__(
        self, message: Message, ctx: Context, call_next: Callable[[], Awaitable[Any]]
    ) -> Any:
        return await self.wrap(lambda _m, _c: call_next())(message, ctx)

    def wrap(self, inner: Call) -> Call:
        observe = self.timings.observe
        clock = time.perf_counter

        async def call(message: Message, ctx: Context) -> Any:
            start = clock()
            try:
                result = await inner(message, ctx)
            except BaseException as exc:
                outcome = _outcome(exc)
                if outcome in _NOT_RUN_CODES:
                    outcome = HandlerError.code  # what its caller is answered
                elif outcome == "CANCELLED" and ctx.deadline and time.monotonic() >= ctx.deadline:
                    outcome = "TIMEOUT"  # cancelled at its caller's deadline
                observe(ctx.type_name, outcome, clock() - start)
                raise
            observe(ctx.type_name, None, clock() - start)
            return result

        return call


async def timed_send(timings: Timings, sent: Coroutine[Any, Any, Any], cls: type) -> Any:
    """Await ``send()``'s coroutine, and count it by type and outcome with its duration."""
    name = timings.names.get(cls)
    if name is None:
        name = cls.__wire_name__ if issubclass(cls, Request) else NOT_A_REQUEST
        if len(timings.names) < MAX_CLASSES:  # classes made at run time: not for ever
            timings.names[cls] = name
    start = _clock()
    try:
        result = await sent
    except BaseException as exc:
        timings.observe(name, _outcome(exc), _clock() - start)
        raise
    timings.observe(name, None, _clock() - start)
    return result


# the node's view ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probes:
    """What the node says of itself: each a reason, "" when all is well."""

    state: Callable[[], str]  # "running", "draining"...
    not_ready: Callable[[], str]  # why it takes no traffic ("" when it does)
    not_live: Callable[[], str]  # why it should be restarted ("" while it is fine)
    problems: Callable[[], list[str]]  # its health (node.problems())


#: Every family the collector gives: name -> (type, help, labels). Counters are named
#: without ``_total``, as prometheus_client takes them (it adds the suffix).
FAMILIES: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "catga_node_info": ("gauge", "This node: its id, cluster and version (always 1)", ("node_id", "cluster", "version")),
    "catga_node_state": ("gauge", "1 for the node's lifecycle state", ("state",)),
    "catga_node_ready": ("gauge", "1 while /readyz answers 200: running, joined, not draining", ()),
    "catga_node_healthy": ("gauge", "1 while every background loop of the node runs", ()),
    "catga_node_uptime_seconds": ("gauge", "Seconds since the node started", ()),
    "catga_requests_sent": ("counter", "send() calls that ended, by type and outcome (local calls too; failover within one)", ("type", "outcome")),
    "catga_request_duration_seconds": ("histogram", "send() durations at the caller, by type", ("type",)),
    "catga_requests_handled": ("counter", "Handler calls on this node that ended, by type and outcome", ("type", "outcome")),
    "catga_handler_duration_seconds": ("histogram", "Handler durations on this node, by type", ("type",)),
    "catga_requests_refused": ("counter", "Requests answered OVERLOADED without running (max_concurrency, draining)", ()),
    "catga_requests_expired": ("counter", "Requests answered TIMEOUT without running: read after their deadline", ()),
    "catga_request_transmissions": ("counter", "Requests put on the wire to other nodes (each failover attempt)", ()),
    "catga_requests_in_flight": ("gauge", "This node's requests awaiting replies", ()),
    "catga_peer_requests_in_flight": ("gauge", "This node's requests in flight, by peer", ("peer",)),
    "catga_handlers_running": ("gauge", "Handlers running on this node", ()),
    "catga_members": ("gauge", "Other nodes known, by status", ("status",)),
    "catga_circuit_state": ("gauge", "1 for the circuit breaker state of each peer", ("peer", "state")),
    "catga_events_published": ("counter", "Events this node published", ()),
    "catga_events_received": ("counter", "Events from other nodes delivered to subscribers here", ()),
    "catga_events_lost": ("counter", "Events from other nodes never received (sequence gaps)", ()),
    "catga_events_dropped": ("counter", "Events received but dropped: a subscriber's queue was full", ()),
    "catga_frames_rejected": ("counter", "Frames refused (malformed, unknown, of another version or cluster...), by reason", ("reason",)),
    "catga_batch_records": ("histogram", "Records per batch frame sent (requests or replies)", ()),
    "catga_heartbeats_sent": ("counter", "Heartbeats this node sent", ()),
    "catga_heartbeats_received": ("counter", "Heartbeats taken from peers", ()),
    "catga_replies_dropped": ("counter", "Replies that could not be delivered", ()),
    "catga_late_replies": ("counter", "Replies that came after their request ended", ()),
    "catga_connections_dropped": ("counter", "Inbound connections that ended", ()),
    "catga_connections_refused": ("counter", "CURVE handshakes refused", ()),
}  # fmt: skip

#: Counters read from the node's counters dict: family -> key.
_COUNTERS: Final = {
    "catga_requests_refused": "requests_refused",
    "catga_requests_expired": "requests_expired",
    "catga_request_transmissions": "requests_sent",
    "catga_events_published": "events_published",
    "catga_events_received": "events_received",
    "catga_events_lost": "events_lost",
    "catga_connections_refused": "connections_refused",
}
_STATES: Final = ("new", "running", "draining", "closed")


class Metrics:
    """A started node's metrics: the timings its requests add, a collector in a
    registry (the user's, or one of its own), and the HTTP server when it has a port."""

    def __init__(
        self,
        *,
        node_id: str,
        cluster: str,
        version: str,
        parts: Parts,
        counters: dict[str, int],
        probes: Probes,
        registry: CollectorRegistry | None = None,
    ) -> None:
        prom = prometheus()
        self._prom = prom
        self.node_id = node_id
        self.cluster = cluster
        self.version = version
        self.parts = parts
        self.counters = counters
        self.probes = probes
        self.loop = asyncio.get_running_loop()
        self.started_at = time.monotonic()
        self.sent = Timings()
        self.handled = Timings()
        if registry is None:
            registry = prom.CollectorRegistry()
            # The process's own figures too (CPU, memory, GC), as the default registry has.
            prom.ProcessCollector(registry=registry)
            prom.PlatformCollector(registry=registry)
            prom.GCCollector(registry=registry)
        self.registry = registry
        self._collector = _Collector(self)
        try:
            registry.register(self._collector)
        except ValueError as exc:
            raise ConfigError(
                f"metrics_registry already holds catga_zmq metrics ({exc}); give each "
                "node its own registry"
            ) from None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: Where /metrics is served ("" without a port).
        self.url = ""

    def handler_timings(self) -> HandlerTimings:
        """The behaviour that times this node's handlers (add it outermost)."""
        return HandlerTimings(self.handled)

    # serving -------------------------------------------------------------------------

    async def serve(self, bind: str, port: int) -> None:
        """Serve /metrics, /livez and /readyz on ``bind``:``port``; ``ConfigError`` when
        that cannot be bound."""
        host = bind.strip("[]")
        try:
            self._server = await asyncio.start_server(
                self._connection, host, port, limit=MAX_HEAD, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {bind}:{port}: {exc.strerror or exc}; choose "
                "another metrics_port (or metrics_bind)"
            ) from None
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/metrics"
        log.info("metrics of %s on %s (also /livez, /readyz)", self.node_id, self.url)

    async def aclose(self) -> None:
        """Stop serving and leave the registry; idempotent."""
        self.close()
        await asyncio.sleep(0)  # the closed connections' tasks see their end

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(KeyError):  # left it already
            self.registry.unregister(self._collector)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._writers.add(writer)
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    method, path, accept = await _read_head(reader)
            except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
                await _respond(writer, 400, "text/plain", b"bad request\n", False)
                return
            status, kind, body = self._answer(path, accept)
            if method not in ("GET", "HEAD"):
                status, kind, body = 405, "text/plain", b"only GET and HEAD\n"
            await _respond(writer, status, kind, body, method == "HEAD")
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, path: str, accept: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            encoder, kind = self._prom.exposition.choose_encoder(accept)
            try:
                return 200, kind, encoder(self.registry)
            except Exception as exc:
                log.exception("metrics of %s could not be collected", self.node_id)
                return 500, "text/plain", f"metrics could not be collected: {exc}\n".encode()
        if path == "/livez":
            why = self.probes.not_live()
            return (503, "text/plain", f"{why}\n".encode()) if why else (200, "text/plain", b"ok\n")
        if path == "/readyz":
            why = self.probes.not_ready()
            return (503, "text/plain", f"{why}\n".encode()) if why else (200, "text/plain", b"ok\n")
        return 404, "text/plain", b"not found: /metrics, /livez or /readyz\n"

    # collecting ----------------------------------------------------------------------

    def on_loop(self, read: Callable[[], list[Metric]]) -> list[Metric]:
        """``read()`` on the node's loop: at once from the loop's own thread, else handed
        to the loop and waited for."""
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            return read()
        done: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()

        def run() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(read())
                except BaseException as exc:
                    done.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop is closed: so is the node
            return []
        try:
            return done.result(SCRAPE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            done.cancel()
            raise TimeoutError(
                f"the event loop of node {self.node_id} did not answer within "
                f"{SCRAPE_TIMEOUT} s (stalled or overloaded)"
            ) from None

    def families(self) -> list[Metric]:
        """Every family, read now; on the node's loop only."""
        f = _Families(self._prom)
        parts = self.parts
        counters = dict(self.counters)
        f.add("catga_node_info", (self.node_id, self.cluster, self.version), 1)
        state = self.probes.state()
        for s in _STATES:
            f.add("catga_node_state", (s,), 1 if s == state else 0)
        f.add("catga_node_ready", (), 0 if self.probes.not_ready() else 1)
        f.add("catga_node_healthy", (), 0 if self.probes.problems() else 1)
        f.add("catga_node_uptime_seconds", (), time.monotonic() - self.started_at)
        f.timings("catga_requests_sent", "catga_request_duration_seconds", self.sent)
        f.timings("catga_requests_handled", "catga_handler_duration_seconds", self.handled)
        for family, key in _COUNTERS.items():
            f.add(family, (), counters.get(key, 0))
        f.add("catga_requests_in_flight", (), len(parts.requester.pending))
        f.add("catga_handlers_running", (), parts.server.running)
        statuses = dict.fromkeys((s.value for s in NodeStatus), 0)
        for peer in parts.membership.peers.values():
            statuses[peer.status.value] += 1
            f.add("catga_peer_requests_in_flight", (peer.node_id,), peer.outstanding)
            now = peer.breaker.state if peer.breaker is not None else CircuitState.CLOSED
            for c in CircuitState:
                f.add("catga_circuit_state", (peer.node_id, c.value), 1 if c is now else 0)
        for status, count in statuses.items():
            f.add("catga_members", (status,), count)
        subscribers = parts.builtins.mediator.subscribers.values()
        dropped = sum(sub.dropped for subs in subscribers for sub in subs)
        f.add("catga_events_dropped", (), dropped)
        for reason, count in sorted(parts.requester.reject.reasons.items()):
            f.add("catga_frames_rejected", (reason,), count)
        transport = parts.transport
        f.batches(transport.batch_records)
        f.add("catga_heartbeats_sent", (), parts.heartbeats.sent)
        f.add("catga_heartbeats_received", (), parts.heartbeats.received)
        f.add("catga_replies_dropped", (), transport.dropped_replies)
        f.add("catga_late_replies", (), parts.requester.pending.late_replies)
        f.add("catga_connections_dropped", (), transport.connections_dropped)
        return f.made()


class _Collector:
    """What the registry calls: ``collect()`` at each scrape, ``describe()`` once (the
    names, so that a registry refuses a second node's metrics instead of doubling them)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics.on_loop(self.metrics.families)

    def describe(self) -> Iterable[Metric]:
        return _Families(self.metrics._prom).made()


class _Families:
    """The families of one scrape, made from FAMILIES' types, helps and labels."""

    def __init__(self, prom: Any) -> None:
        core = prom.metrics_core
        kinds = {
            "counter": core.CounterMetricFamily,
            "gauge": core.GaugeMetricFamily,
            "histogram": core.HistogramMetricFamily,
        }
        self._go = prom.utils.floatToGoString
        self._made: dict[str, Any] = {
            name: kinds[kind](name, doc, labels=list(labels))
            for name, (kind, doc, labels) in FAMILIES.items()
        }

    def add(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self._made[name].add_metric(list(labels), value)

    def histogram(self, name: str, labels: tuple[str, ...], counts: list[int], bounds: Iterable[float], total: float) -> None:  # fmt: skip
        cumulative, running = [], 0
        for bound, count in zip([*bounds, float("inf")], counts, strict=True):
            running += count
            cumulative.append((self._go(bound), running))
        self._made[name].add_metric(list(labels), cumulative, total)

    def timings(self, counted: str, timed: str, timings: Timings) -> None:
        for name, row in sorted(timings.rows.items()):
            if row.ok:
                self.add(counted, (name, OK), row.ok)
            for outcome, count in sorted(row.outcomes.items()):
                self.add(counted, (name, outcome), count)
            self.histogram(timed, (name,), list(row.buckets), BUCKETS, row.total)

    def batches(self, by_size: list[int]) -> None:
        # by_size[n]: batches of n records; buckets at powers of two up to the last slot.
        bounds = [b for b in (1, 2, 4, 8, 16, 32, 64) if b < len(by_size) - 1]
        bounds.append(len(by_size) - 1)
        counts = [0] * (len(bounds) + 1)
        total = 0
        for size, n in enumerate(by_size):
            counts[bisect.bisect_left(bounds, size)] += n
            total += size * n
        self.histogram("catga_batch_records", (), counts, bounds, total)

    def made(self) -> list[Metric]:
        return list(self._made.values())


# HTTP, as little of it as a scrape needs -----------------------------------------------


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, str]:
    """The method, path and Accept header of a request; ``ValueError`` if it is none."""
    line = (await reader.readuntil(b"\n")).decode("latin-1").strip()
    method, target, _version = line.split(" ", 2)
    accept = ""
    for _ in range(MAX_HEADER_LINES):
        header = (await reader.readuntil(b"\n")).decode("latin-1").strip()
        if not header:
            return method, target.partition("?")[0], accept
        key, _, value = header.partition(":")
        if key.strip().lower() == "accept":
            accept = value.strip()
    raise ValueError("too many header lines")


async def _respond(
    writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, head_only: bool
) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
        status, "Service Unavailable" if status == 503 else "Internal Server Error"
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    writer.write(head if head_only else head + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()

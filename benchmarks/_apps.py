"""The nodes the benchmarks run, as users run theirs: ``python -m catga_zmq.node --app``.

- ``echo`` (``bench_all``, ``bench_scale``, ``bench_memory``, ``bench_curve``): answers
  ``Echo``, and takes ``Tick`` events (counted in its ``Stats``).
- ``events`` (``bench_events``): subscribes to ``Tick`` and counts each event by the
  publisher's sequence number (``ctx.request_id``) with its arrival time
  (``CLOCK_MONOTONIC``, one clock for every process of the machine) and, when asked, its
  delivery latency (the publisher stamps its send time in bytes 8..16 of the payload);
  serves ``Arm`` (count from a sequence number on) and ``Report``.
- ``idle`` (``bench_scale``): the built-in requests only.
- ``failover`` (``bench_failover``): ``IdemWork`` (idempotent) and ``OnceWork`` (not), whose
  handler sleeps ``FAILOVER_WORK_MS``; it prints every ``watch()`` event on stdout as
  ``event <time.time()> <kind> <node id> <incarnation>``, so the benchmark times
  detection against the moment it sent SIGKILL on the machine's clock.

Every process imports this module as ``benchmarks._apps`` (never by file path), so the wire
names agree on both sides. A node left behind by a crashed benchmark stops itself: with
``BENCH_PARENT_PID`` set, a daemon thread sends this process SIGTERM (it drains and
exits) once that parent is gone or ``BENCH_MAX_LIFETIME`` seconds have passed.

No ``from __future__ import annotations``: handler types are taken from the annotations.
"""

import asyncio
import os
import signal
import sys
import threading
import time

import msgspec

from catga_zmq import Context, Event, Node, Request

# --- echo ---------------------------------------------------------------------------------


class EchoReply(msgspec.Struct):
    data: bytes


class Echo(Request[EchoReply]):
    data: bytes


echo = Node(node_id="srv", bind="127.0.0.1", port=0, discovery=None)


@echo.handler
async def echo_handler(req: Echo) -> EchoReply:
    return EchoReply(data=req.data)


# --- events -------------------------------------------------------------------------------

PAYLOAD_SIZE = 100  # bytes of Tick.data
_BASE = bytes(i % 251 for i in range(PAYLOAD_SIZE))
_monotonic_ns = time.monotonic_ns
_from_bytes = int.from_bytes
MAX_LATENCY_SAMPLES = 1_000_000  # per armed window: the memory bound of a paced run


class Tick(Event):
    """The benchmark event: 100 bytes, sequence in bytes 0..8, send time (ns) in 8..16."""

    data: bytes


def tick_data(seq: int) -> bytes:
    """The 100-byte payload of event ``seq``, stamped with the send time (monotonic ns)."""
    return seq.to_bytes(8, "little") + _monotonic_ns().to_bytes(8, "little") + _BASE[16:]


@echo.subscribe
async def echo_tick(evt: Tick) -> None:
    """Counted in the node's ``Stats().events_received`` (``bench_curve``)."""


class Armed(msgspec.Struct):
    node_id: str


class Arm(Request[Armed]):
    """Count events with sequence >= ``first_seq`` from now on (resets the window)."""

    first_seq: int
    latency: bool = False


class EventReport(msgspec.Struct):
    node_id: str
    total: int  # every Tick seen since start (warm-up included)
    received: int  # Ticks in the armed window (sequence >= first_seq)
    gaps: int  # sequence numbers skipped inside the window (seen as jumps)
    reordered: int  # a sequence number at or below one already seen
    last_ns: int  # CLOCK_MONOTONIC of the window's last event; 0: none
    lat_p50_us: float
    lat_p99_us: float


class Report(Request[EventReport]):
    pass


class EventCounter:
    """What a subscriber saw, by the publisher's sequence numbers (one publisher)."""

    __slots__ = ("first_seq", "gaps", "last_ns", "last_seq", "latencies", "latency", "received", "reordered", "total")  # fmt: skip

    def __init__(self) -> None:
        self.total = 0
        self.arm(1 << 62, False)  # nothing is in the window until armed

    def arm(self, first_seq: int, latency: bool) -> None:
        self.first_seq, self.latency = first_seq, latency
        self.received = self.gaps = self.reordered = self.last_seq = self.last_ns = 0
        self.latencies: list[int] = []

    def on_event(self, seq: int, data: bytes) -> None:
        self.total += 1
        if seq < self.first_seq:
            return
        now = _monotonic_ns()
        self.received += 1
        last = self.last_seq
        if last == 0:
            self.gaps += seq - self.first_seq
        elif seq > last + 1:
            self.gaps += seq - last - 1
        elif seq <= last:
            self.reordered += 1
        if seq > last:
            self.last_seq = seq
        self.last_ns = now
        if self.latency and len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(now - _from_bytes(data[8:16], "little"))

    def report(self, node_id: str) -> EventReport:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:  # nearest rank, µs
            return lat[max(1, -(-len(lat) * int(p) // 100)) - 1] / 1000.0 if lat else 0.0

        counts = (self.total, self.received, self.gaps, self.reordered, self.last_ns)
        return EventReport(node_id, *counts, pct(50), pct(99))


events = Node(node_id="events-sub", cluster="bench-events", discovery=None, log_level="WARNING")
counter = EventCounter()


@events.subscribe
async def on_tick(evt: Tick, ctx: Context) -> None:
    counter.on_event(ctx.request_id, evt.data)


@events.handler
async def arm(req: Arm) -> Armed:
    counter.arm(req.first_seq, req.latency)
    return Armed(node_id=events.node_id)


@events.handler
async def report(req: Report) -> EventReport:
    return counter.report(events.node_id)


# --- idle ---------------------------------------------------------------------------------

idle = Node(node_id="idle", cluster="bench-scale", log_level="WARNING")


# --- failover -----------------------------------------------------------------------------

WORK_MS_ENV = "FAILOVER_WORK_MS"
EVENT_PREFIX = "event "


def event_kind(event: object) -> str:
    """``NodeJoined`` -> ``joined``: joined, recovered, suspect, faulted, left."""
    return type(event).__name__.removeprefix("Node").lower()


class Served(msgspec.Struct):
    seq: int
    served_by: str


class IdemWork(Request[Served]):
    """Safe to run twice: a delivered, unanswered one may go to another node."""

    __wire_name__ = "bench.failover.IdemWork"
    __idempotent__ = True
    seq: int


class OnceWork(Request[Served]):
    """Not idempotent: delivered and unanswered, the caller gets the error."""

    __wire_name__ = "bench.failover.OnceWork"
    seq: int


class WatchedNode(Node):
    """A node that prints its own ``watch()`` events on stdout, stamped with time.time()."""

    _printer: "asyncio.Task[None] | None" = None

    async def start(self) -> None:
        await super().start()
        self._printer = asyncio.get_running_loop().create_task(self._print_events())

    async def _print_events(self) -> None:
        async for e in self.watch():  # ends when the node closes
            kind, who = event_kind(e), e.node
            print(f"{EVENT_PREFIX}{time.time():.6f} {kind} {who.node_id} {who.incarnation}")
            sys.stdout.flush()

    async def aclose(self) -> None:
        if self._printer is not None:
            self._printer.cancel()
        await super().aclose()


# The node command overrides id, cluster, bind, port and discovery from its flags.
failover = WatchedNode(bind="127.0.0.1", discovery="none")
_WORK_S = max(0.0, float(os.environ.get(WORK_MS_ENV) or 0)) / 1000.0


@failover.handler
async def idem_work(req: IdemWork) -> Served:
    await asyncio.sleep(_WORK_S)
    return Served(seq=req.seq, served_by=failover.node_id)


@failover.handler
async def once_work(req: OnceWork) -> Served:
    await asyncio.sleep(_WORK_S)
    return Served(seq=req.seq, served_by=failover.node_id)


# --- watchdog -----------------------------------------------------------------------------

WATCHDOG_INTERVAL = 0.5  # s
KILL_GRACE = 15.0  # s after our own SIGTERM before exiting hard


def _watchdog(parent: int, max_lifetime: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < max_lifetime and os.getppid() == parent:  # bounded
        time.sleep(WATCHDOG_INTERVAL)
    os.kill(os.getpid(), signal.SIGTERM)  # drain and exit like any node
    time.sleep(KILL_GRACE)
    os._exit(1)


def _start_watchdog() -> None:
    try:
        parent = int(os.environ.get("BENCH_PARENT_PID", ""))
        max_lifetime = float(os.environ.get("BENCH_MAX_LIFETIME", "900"))
    except ValueError:
        return
    if parent != os.getpid():  # not the benchmark itself importing this module
        threading.Thread(
            target=_watchdog, args=(parent, max_lifetime), name="bench-watchdog", daemon=True
        ).start()


_start_watchdog()

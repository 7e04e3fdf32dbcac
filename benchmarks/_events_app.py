"""The nodes run by ``bench_events.py`` and ``bench_scale.py`` (``python -m catga_zmq.node --app``).

- ``node``: subscribes to ``Tick`` and counts the events it receives by the publisher's
  sequence number (``ctx.request_id``), with their arrival time (``CLOCK_MONOTONIC``,
  the same clock in every process of the machine) and, when asked, their delivery
  latency (the publisher stamps its send time in bytes 8..16 of the payload). It
  serves ``Arm`` (start counting from a sequence number) and ``Report``.
- ``idle``: a node with nothing but the built-in requests (``bench_scale.py``).

Both processes of a run import this module as ``benchmarks._events_app`` (never by file
path), so the wire name of ``Tick`` is ``benchmarks._events_app.Tick`` everywhere; the
raw PUB/SUB baseline of ``bench_events.py`` uses the same ``Tick`` and ``EventCounter``,
so both stacks do the same work per event.

A node left behind by a crashed benchmark stops itself: when ``BENCH_PARENT_PID`` is
set, a daemon thread sends this process SIGTERM (which drains and exits) once that
parent is gone or ``BENCH_MAX_LIFETIME`` seconds (default 900) have passed.

No ``from __future__ import annotations`` here: handler and subscriber types are taken
from their annotations, which stay real classes this way.
"""

import os
import signal
import threading
import time

import msgspec

from catga_zmq import Context, Event, Node, Request

PAYLOAD_SIZE = 100  # bytes of Tick.data
_BASE = bytes(i % 251 for i in range(PAYLOAD_SIZE))
_monotonic_ns = time.monotonic_ns
_from_bytes = int.from_bytes

#: Latency samples kept per armed window, at most (memory bound of a paced run).
MAX_LATENCY_SAMPLES = 1_000_000


class Tick(Event):
    """The benchmark event: 100 bytes, sequence in bytes 0..8, send time (ns) in 8..16."""

    data: bytes


def tick_data(seq: int) -> bytes:
    """The 100-byte payload of event ``seq``, stamped with the send time (monotonic ns)."""
    return seq.to_bytes(8, "little") + _monotonic_ns().to_bytes(8, "little") + _BASE[16:]


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
    first_seq: int
    max_seq: int
    first_ns: int  # CLOCK_MONOTONIC of the window's first and last event; 0: none
    last_ns: int
    lat_count: int
    lat_p50_us: float
    lat_p99_us: float
    lat_max_us: float


class Report(Request[EventReport]):
    pass


def _percentile(sorted_values: list[int], p: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))  # nearest rank, ceil
    return sorted_values[int(rank) - 1] / 1000.0


class EventCounter:
    """What a subscriber saw, by the publisher's sequence numbers (one publisher)."""

    __slots__ = (
        "first_ns",
        "first_seq",
        "gaps",
        "last_ns",
        "last_seq",
        "latencies",
        "latency",
        "received",
        "reordered",
        "total",
    )

    def __init__(self) -> None:
        self.total = 0
        self.arm(1 << 62, False)  # nothing is in the window until armed

    def arm(self, first_seq: int, latency: bool) -> None:
        self.first_seq = first_seq
        self.latency = latency
        self.received = 0
        self.gaps = 0
        self.reordered = 0
        self.last_seq = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latencies: list[int] = []

    def on_event(self, seq: int, data: bytes) -> None:
        self.total += 1
        if seq < self.first_seq:
            return
        now = _monotonic_ns()
        self.received += 1
        last = self.last_seq
        if last == 0:
            self.first_ns = now
            if seq > self.first_seq:
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
        return EventReport(
            node_id=node_id,
            total=self.total,
            received=self.received,
            gaps=self.gaps,
            reordered=self.reordered,
            first_seq=self.first_seq,
            max_seq=self.last_seq,
            first_ns=self.first_ns,
            last_ns=self.last_ns,
            lat_count=len(lat),
            lat_p50_us=_percentile(lat, 50),
            lat_p99_us=_percentile(lat, 99),
            lat_max_us=lat[-1] / 1000.0 if lat else 0.0,
        )


# --- the subscriber node ------------------------------------------------------------------

node = Node(node_id="events-sub", cluster="bench-events", discovery=None, log_level="WARNING")
counter = EventCounter()


@node.subscribe
async def on_tick(evt: Tick, ctx: Context) -> None:
    counter.on_event(ctx.request_id, evt.data)


@node.handler
async def arm(req: Arm) -> Armed:
    counter.arm(req.first_seq, req.latency)
    return Armed(node_id=node.node_id)


@node.handler
async def report(req: Report) -> EventReport:
    return counter.report(node.node_id)


# --- the idle node (bench_scale.py) -------------------------------------------------------

idle = Node(node_id="idle", cluster="bench-scale", log_level="WARNING")


# --- watchdog -----------------------------------------------------------------------------

WATCHDOG_INTERVAL = 0.5  # s
DEFAULT_MAX_LIFETIME = 900.0  # s
KILL_GRACE = 15.0  # s after our own SIGTERM before exiting hard


def _watchdog(parent: int, max_lifetime: float) -> None:
    started = time.monotonic()
    # Bounded: the loop ends at max_lifetime whatever happens.
    while time.monotonic() - started < max_lifetime:
        if os.getppid() != parent:
            break
        time.sleep(WATCHDOG_INTERVAL)
    os.kill(os.getpid(), signal.SIGTERM)  # drain and exit like any node
    time.sleep(KILL_GRACE)
    os._exit(1)


def _start_watchdog() -> None:
    raw = os.environ.get("BENCH_PARENT_PID")
    if not raw:
        return
    try:
        parent = int(raw)
        max_lifetime = float(os.environ.get("BENCH_MAX_LIFETIME", DEFAULT_MAX_LIFETIME))
    except ValueError:
        return
    if parent == os.getpid():
        return  # the benchmark itself imported this module
    threading.Thread(
        target=_watchdog, args=(parent, max_lifetime), name="bench-watchdog", daemon=True
    ).start()


_start_watchdog()

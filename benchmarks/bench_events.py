"""``node.publish()`` fan-out against raw pyzmq PUB/SUB: delivered events/s and loss.

One publisher (this process, under uvloop) and N subscriber processes (1, 4, 10), two
stacks measured in interleaved rounds:

- ``raw``: a plain pyzmq PUB socket here; each subscriber a plain SUB socket read through
  ``loop.add_reader(FD)`` (``bench_events.py raw-sub``, under uvloop), with the node's
  frames ``[topic, header, Tick]``, topic, header fields and HWMs; it decodes header and
  event and counts them with the node subscriber's ``EventCounter``.
- ``node``: ``await node.publish(Tick(...))`` from a node here to N node processes
  (``python -m catga_zmq.node --app benchmarks._apps:events``, static seeds).

Per round and stack: ``burst`` publishes as fast as the publisher can (yielding to the
loop every ``--yield-every`` events), up to ``--count`` events or ``--seconds``. PUB drops
what does not fit a subscriber's queue, so loss is reported, not hidden; "delivered/s per
subscriber" is what it received over the time from the first publish to its last arrival
(CLOCK_MONOTONIC, shared by every process here). ``paced`` publishes ``--rate`` events/s for
``--paced-seconds``: loss should be 0; the publish-to-subscriber latency is reported.

Before measuring, the publisher waits for every subscriber and publishes warm-up events
until each has one (PUB/SUB's slow joiners). Losses are counted three ways: sent minus
received, sequence gaps seen by the subscribers, and the nodes' own ``Stats().events_lost``.

    python benchmarks/bench_events.py --rounds 3
    python benchmarks/bench_events.py --subs 4 --rounds 5 --out /tmp/events
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Arm, EventCounter, EventReport, Report, Tick, tick_data
from benchmarks._common import (
    KIND_EVT,
    PROTOCOL_VERSION,
    BenchError,
    Envelope,
    choices,
    decode_envelope,
    encode_envelope,
    environment,
    fmt,
    int_list,
    log,
    parse,
    parser,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Child, LoadMeter, Processes, format_load, free_port, wait_for_stop

STACKS = ("raw", "node")
APP = "benchmarks._apps:events"
TYPE_NAME = Tick.__wire_name__
TOPIC = TYPE_NAME.encode() + b"\x00"  # the node's topic frame for Tick
SOURCE = "events-pub"  # node id of the publisher; the raw header carries the same
HWM = 10_000  # messages: the node's SNDHWM/RCVHWM (max(1000, max_in_flight))
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # bytes, the node's MAXMSGSIZE
START_TIMEOUT = 40.0  # s, for every subscriber to be up (20 processes start on 2 cores)
WARMUP_TIMEOUT = 15.0  # s, for every subscriber to receive a warm-up event
QUERY_TIMEOUT = 5.0  # s, one Arm/Report/Stats round trip
DRAIN_TIMEOUT = 15.0  # s, waiting for subscribers to finish what is queued
DRAIN_POLL = 0.1  # s
DRAIN_STILL_POLLS = 6  # polls without progress: the rest was dropped
FENCE_TIMEOUT = 3.0  # s, for the event after a run to reach every subscriber
_NOBLOCK, _MORE_NOBLOCK = int(zmq.NOBLOCK), int(zmq.SNDMORE | zmq.NOBLOCK)
_zsend: Callable[[Any, Any, int], object] = zmq.backend.Socket.send
_zrecv: Callable[[Any, int, bool], Any] = zmq.backend.Socket.recv


def _socket(ctx: zmq.Context[Any], kind: int) -> Any:
    """A socket with the node transport's options (so both stacks queue alike)."""
    sock = ctx.socket(kind)
    for option, value in ((zmq.LINGER, 0), (zmq.SNDHWM, HWM), (zmq.RCVHWM, HWM)):
        sock.setsockopt(option, value)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
    return sock


# --- the raw subscriber (a child process) ---------------------------------------------------


async def raw_subscriber(pub_endpoint: str, node_id: str) -> None:
    """SUB to ``pub_endpoint``; counts Ticks; ``arm FIRST LATENCY`` and ``report`` on stdin."""
    loop = asyncio.get_running_loop()
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _socket(ctx, zmq.SUB)
    sock.connect(pub_endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    counter = EventCounter()
    on_event, decode_tick = counter.on_event, msgspec.msgpack.Decoder(Tick).decode
    stop = asyncio.Event()
    buf = b""

    def read() -> None:
        try:
            while True:
                frame = _zrecv(sock, _NOBLOCK, False)
                parts = [frame.bytes]
                while frame.more:
                    frame = _zrecv(sock, _NOBLOCK, False)
                    parts.append(frame.bytes)
                try:
                    env = decode_envelope(parts[1])
                    if len(parts) == 3 and env.kind == KIND_EVT and env.type_name == TYPE_NAME:
                        on_event(env.request_id, decode_tick(parts[2]).data)
                except (IndexError, msgspec.DecodeError, msgspec.ValidationError):
                    log(f"{node_id}: rejected a frame")
        except zmq.Again:
            return

    def on_stdin() -> None:
        nonlocal buf
        chunk = os.read(0, 65536)
        if not chunk:  # the parent is gone
            stop.set()
            return
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            words = raw.decode().split()
            if words[:1] == ["arm"]:
                counter.arm(int(words[1]), words[2] == "1")
                answer = "ok"
            else:
                answer = msgspec.json.encode(counter.report(node_id)).decode()
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()

    loop.add_reader(sock.FD, read)
    loop.add_reader(0, on_stdin)
    loop.call_soon(read)
    print(f"READY {node_id}", flush=True)
    try:
        await asyncio.wait(
            [loop.create_task(stop.wait()), loop.create_task(wait_for_stop())],
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        loop.remove_reader(0)
        loop.remove_reader(sock.FD)
        sock.close(0)
        ctx.term()


# --- the two stacks (in this process) -------------------------------------------------------


class RawStack:
    name = "raw"

    def __init__(self, procs: Processes, host: str, n: int) -> None:
        self.procs, self.n = procs, n
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pub = _socket(self.ctx, zmq.PUB)
        self.pub.bind(f"tcp://{host}:*")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subs: list[Child] = []
        self.seq = 0  # last sequence number published
        self._encode = msgspec.msgpack.Encoder().encode

    async def open(self) -> None:
        for i in range(self.n):
            argv = ("raw-sub", "--pub", self.endpoint, "--id", f"raw-sub-{self.n}-{i}")
            self.subs.append(
                self.procs.script(f"raw-sub-{i}", __file__, *argv, stdin=subprocess.PIPE)
            )

    async def ready(self, timeout: float) -> None:
        lines = await asyncio.gather(*(s.readline_async(timeout) for s in self.subs))
        if bad := [line for line in lines if not line.startswith("READY")]:
            raise BenchError(f"raw subscriber: unexpected {bad[0]!r}")

    def publish(self, seq: int) -> None:
        # The node's frames: topic, header (Envelope == catga_zmq Header), Tick's msgpack.
        header = encode_envelope(
            Envelope(PROTOCOL_VERSION, KIND_EVT, seq, TYPE_NAME, SOURCE, 0, 0, "")
        )
        sock = self.pub
        _zsend(sock, TOPIC, _MORE_NOBLOCK)
        _zsend(sock, header, _MORE_NOBLOCK)
        _zsend(sock, self._encode(Tick(data=tick_data(seq))), _NOBLOCK)

    async def publish_range(self, seq: int, stop: int) -> None:
        publish = self.publish
        while seq < stop:
            publish(seq)
            seq += 1

    async def _ask(self, command: str) -> list[str]:
        for sub in self.subs:
            sub.send_line(command)
        return await asyncio.gather(*(s.readline_async(QUERY_TIMEOUT) for s in self.subs))

    async def arm(self, first_seq: int, latency: bool) -> None:
        if bad := [a for a in await self._ask(f"arm {first_seq} {int(latency)}") if a != "ok"]:
            raise BenchError(f"raw subscriber refused arm: {bad[0]!r}")

    async def reports(self) -> list[EventReport]:
        return [msgspec.json.decode(a, type=EventReport) for a in await self._ask("report")]

    async def node_counters(self) -> dict[str, tuple[int, int]]:
        return {}  # plain sockets have no counters of their own

    async def check_published(self) -> None:
        pass

    async def close(self) -> None:
        self.procs.stop(self.subs)
        self.pub.close(0)
        self.ctx.term()


class NodeStack:
    name = "node"

    def __init__(self, procs: Processes, host: str, n: int) -> None:
        from catga_zmq import Node

        self.procs, self.n, self.host = procs, n, host
        self.cluster = f"bench-events-{os.getpid()}-{n}"
        self.port = free_port(host)
        self.node = Node(SOURCE, self.cluster, discovery=None, bind=host, port=self.port)
        self.sub_ids = [f"ev-sub-{n}-{i}" for i in range(n)]
        self.subs: list[Child] = []
        self.seq = 0

    async def open(self) -> None:
        await self.node.start()
        seed = f"tcp://{self.host}:{self.port}"
        for sid in self.sub_ids:
            sub = self.procs.node(sid, APP, cluster=self.cluster, bind=self.host, seeds=[seed])
            self.subs.append(sub)

    async def ready(self, timeout: float) -> None:
        try:
            await self.node.wait_for_peers(self.n, timeout=timeout, handles=Arm)
        except Exception as exc:
            dead = [s.pid for s in self.subs if not s.alive()]
            raise BenchError(f"node subscribers not all ALIVE (exited: {dead}): {exc}") from exc

    async def publish_range(self, seq: int, stop: int) -> None:
        publish = self.node.publish
        while seq < stop:
            await publish(Tick(data=tick_data(seq)))
            seq += 1

    async def _ask(self, message: Any) -> list[Any]:
        send = self.node.send
        return await asyncio.gather(
            *(send(message, node=sid, timeout=QUERY_TIMEOUT) for sid in self.sub_ids)
        )

    async def arm(self, first_seq: int, latency: bool) -> None:
        await self._ask(Arm(first_seq=first_seq, latency=latency))

    async def reports(self) -> list[EventReport]:
        return await self._ask(Report())

    async def node_counters(self) -> dict[str, tuple[int, int]]:
        from catga_zmq import Stats

        return {r.node_id: (r.events_lost, r.events_received) for r in await self._ask(Stats())}

    async def check_published(self) -> None:
        from catga_zmq import Stats

        stats = await self.node.send(Stats(), node=SOURCE, timeout=QUERY_TIMEOUT)
        if stats.events_published != self.seq:
            raise BenchError(
                f"node published {stats.events_published} events, the benchmark counted "
                f"{self.seq}: the subscribers' sequence window would be wrong"
            )

    async def close(self) -> None:
        self.procs.stop(self.subs)
        await self.node.aclose()


Stack = RawStack | NodeStack


async def publish_one(stack: Stack) -> None:
    stack.seq += 1
    await stack.publish_range(stack.seq, stack.seq + 1)


async def warm_up(stack: Stack) -> int:
    """Publish until every subscriber has an event (slow joiners); returns how many."""
    deadline = time.monotonic() + WARMUP_TIMEOUT
    sent = 0
    while time.monotonic() < deadline:
        for _ in range(5):
            await publish_one(stack)
            await asyncio.sleep(0.02)
        sent += 5
        reports = await stack.reports()
        if all(r.total > 0 for r in reports):
            for _ in range(50):  # a few more: every connection past its first messages
                await publish_one(stack)
            await asyncio.sleep(0.2)
            return sent + 50
    missing = [r.node_id for r in reports if r.total == 0]
    raise BenchError(f"{stack.name}: no warm-up event reached {missing}")


async def collect(stack: Stack, sent: int) -> list[EventReport]:
    """Poll the subscribers until all got ``sent`` events or they stop making progress."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last, still = -1, 0
    while True:
        reports = await stack.reports()
        got = sum(r.received for r in reports)
        if all(r.received >= sent for r in reports) or time.monotonic() > deadline:
            return reports
        still = still + 1 if got == last else 0
        if still >= DRAIN_STILL_POLLS:
            return reports
        last = got
        await asyncio.sleep(DRAIN_POLL)


async def fence(stack: Stack, reports: list[EventReport]) -> bool:
    """One more event after the window, seen by every subscriber (bounded wait).

    A subscriber sees a lost event as a sequence gap only when a later one arrives: the
    fence makes the losses at a run's tail show in the node's ``events_lost`` now, not in
    the next run's figures. The fence is outside every counted window.
    """
    before = {r.node_id: r.total for r in reports}
    await publish_one(stack)
    deadline = time.monotonic() + FENCE_TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(DRAIN_POLL / 2)
        if all(r.total > before.get(r.node_id, 0) for r in await stack.reports()):
            return True
    return False


def rate_of(mode: str) -> float | None:
    """``paced-5000`` -> 5000.0; ``burst`` -> None."""
    return float(mode.split("-", 1)[1]) if mode.startswith("paced-") else None


def label(mode: str) -> str:
    rate = rate_of(mode)
    return "burst" if rate is None else f"paced {rate:,.0f}/s"


async def publish_run(stack: Stack, mode: str, a: Any) -> tuple[int, int, int]:
    """Burst or paced; returns (sent, t0 ns, t1 ns) on CLOCK_MONOTONIC."""
    clock, rate = time.monotonic_ns, rate_of(mode)
    seq = first = stack.seq + 1
    t0 = clock()
    if rate is None:
        end, deadline = first + a.count, t0 + int(a.seconds * 1e9)
        while seq < end and clock() < deadline:
            stop = min(end, seq + a.yield_every)
            await stack.publish_range(seq, stop)
            seq = stop
            await asyncio.sleep(0)
    else:
        end, hard = (
            first + max(1, int(rate * a.paced_seconds)),
            t0 + int((a.paced_seconds + 2) * 1e9),
        )
        while seq < end and (now := clock()) <= hard:
            due = min(end, first + int((now - t0) * rate / 1e9) + 1)
            await stack.publish_range(seq, due)
            seq = max(seq, due)
            await asyncio.sleep(0.0005)
    stack.seq = seq - 1
    return seq - first, t0, clock()


async def measure(stack: Stack, mode: str, a: Any) -> dict[str, Any]:
    paced = rate_of(mode) is not None
    await stack.arm(stack.seq + 1, latency=paced)
    counters0 = await stack.node_counters()
    sent, t0, t1 = await publish_run(stack, mode, a)
    reports = await collect(stack, sent)
    fenced = await fence(stack, reports)
    counters1 = await stack.node_counters()
    await stack.check_published()
    lost_stat = sum(counters1[k][0] - counters0[k][0] for k in counters1) if counters1 else None
    rates = [r.received / ((r.last_ns - t0) / 1e9) if r.received else 0.0 for r in reports]
    received = sum(r.received for r in reports)
    pub_seconds = (t1 - t0) / 1e9
    return {
        "sent": sent,
        "published_per_s": sent / pub_seconds if pub_seconds > 0 else 0.0,
        "delivered_per_s_mean": statistics.fmean(rates),
        "delivered_per_s_min": min(rates),
        "lost": sent * len(reports) - received,
        "loss_pct": 100.0 * (sent * len(reports) - received) / (sent * len(reports) or 1),
        "gaps": sum(r.gaps for r in reports),
        "reordered": sum(r.reordered for r in reports),
        "events_lost_stat": lost_stat,
        "lat_p50_us": statistics.median(r.lat_p50_us for r in reports) if paced else None,
        "lat_p99_us": max(r.lat_p99_us for r in reports) if paced else None,
        "fenced": fenced,
        "per_subscriber": [msgspec.structs.asdict(r) for r in reports],
    }


@dataclass(slots=True)
class Record:
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds if r.get(key) is not None]
        return statistics.median(values) if values else None


async def run_group(a: Any, n: int, records: dict[tuple[int, str, str], Record]) -> None:
    """All rounds for ``n`` subscribers: start both stacks' subscribers, interleave, stop."""
    with Processes() as procs:
        stacks: list[Stack] = []
        try:
            for kind in a.only:
                stack = RawStack(procs, a.host, n) if kind == "raw" else NodeStack(procs, a.host, n)
                stacks.append(stack)
                await stack.open()
            usable = []
            for stack in stacks:
                try:
                    await stack.ready(START_TIMEOUT)
                    warm = await warm_up(stack)
                except Exception as exc:
                    for mode in a.modes:
                        records[(n, mode, stack.name)].error = f"setup: {exc}"
                    continue
                log(f"{n} subs, {stack.name}: ready ({warm} warm-up events)")
                usable.append(stack)
            for round_no in range(1, a.rounds + 1):
                for stack in usable if round_no % 2 else usable[::-1]:
                    for mode in a.modes:
                        rec = records[(n, mode, stack.name)]
                        if rec.error is not None:
                            continue
                        try:
                            r = await measure(stack, mode, a)
                        except Exception as exc:
                            rec.error = f"round {round_no}: {type(exc).__name__}: {exc}"
                            continue
                        rec.rounds.append(r)
                        log(
                            f"round {round_no}/{a.rounds} subs {n:>2} {stack.name:<4} "
                            f"{label(mode):<14} sent {r['sent']:>7} delivered/sub "
                            f"{r['delivered_per_s_mean']:>9,.0f}/s lost {r['loss_pct']:5.1f}% "
                            f"gaps {r['gaps']} events_lost {r['events_lost_stat']}"
                        )
        finally:
            for stack in stacks:
                await stack.close()


def format_table(a: Any, records: dict[tuple[int, str, str], Record]) -> str:
    rows = []
    for n in a.subs:
        for mode in a.modes:
            base = records.get((n, mode, "raw"))
            base_rate = base.median("delivered_per_s_mean") if base and not base.error else None
            for stack in a.only:
                rec = records[(n, mode, stack)]
                if rec.error or not rec.rounds:
                    rows.append([n, label(mode), stack, *["-"] * 7, f"ERROR: {rec.error}"])
                    continue
                rate = rec.median("delivered_per_s_mean")
                lat = "-"
                if rate_of(mode) is not None:
                    lat = f"{fmt(rec.median('lat_p50_us'))} / {fmt(rec.median('lat_p99_us'))}"
                rows.append(
                    [
                        n,
                        label(mode),
                        stack,
                        fmt(rec.median("published_per_s")),
                        fmt(rate),
                        fmt(rec.median("delivered_per_s_min")),
                        f"{fmt(rec.median('loss_pct'), 1, '%')} ({fmt(rec.median('lost'))})",
                        fmt(rec.median("gaps")),
                        fmt(rec.median("events_lost_stat")),
                        lat,
                        f"{rate / base_rate:.2f}" if rate and base_rate else "-",
                    ]
                )
    head = ["subs", "run", "stack", "published/s", "delivered/s per sub (mean)", "slowest sub"]
    head += ["lost", "seq gaps", "node events_lost", "latency p50 / p99 µs", "ratio to raw"]
    return table(head, rows, left=0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["raw-sub"]:  # a subscriber process: raw-sub --pub ENDPOINT --id ID
        run_uvloop(raw_subscriber(argv[argv.index("--pub") + 1], argv[argv.index("--id") + 1]))
        return 0
    p = parser(__doc__, rounds=3, seconds=1.5)
    p.add_argument("--subs", type=int_list, default=(1, 4, 10), help="subscriber counts")
    p.add_argument("--only", type=choices(STACKS), default=STACKS, metavar="raw,node")
    p.add_argument("--modes", type=choices(("burst", "paced")), default=("burst", "paced"))
    p.add_argument("--count", type=int, default=200_000, help="events per burst, at most")
    p.add_argument("--rate", type=int_list, default=(5000, 20000), help="paced events/s")
    p.add_argument("--paced-seconds", type=float, default=2.0, help="length of a paced run")
    p.add_argument("--yield-every", type=int, default=100, help="burst: events per yield")
    a = parse(p, argv)
    a.modes = (("burst",) if "burst" in a.modes else ()) + (
        tuple(f"paced-{r:g}" for r in a.rate) if "paced" in a.modes else ()
    )
    env = environment()
    records = {(n, m, s): Record() for n in a.subs for m in a.modes for s in a.only}
    meter = LoadMeter(lambda: [])  # children are waited for by the end: os.times() has them

    async def run_all() -> None:
        for n in a.subs:
            await run_group(a, n, records)

    run_uvloop(run_all())
    load = meter.stop()
    body = (
        f"`node.publish()` to N subscriber node processes vs raw pyzmq PUB/SUB (same frames, "
        f"same HWM {HWM}), 100-byte `Tick` payload; median of {a.rounds} interleaved rounds. "
        f"burst: up to {a.count:,} events or {a.seconds:g} s as fast as the publisher goes "
        f"(yielding every {a.yield_every}); paced: {' and '.join(f'{r:,}' for r in a.rate)} "
        f"events/s for {a.paced_seconds:g} s. delivered/s per sub = events a subscriber "
        "received / (its last arrival - first publish). lost = sent x subs - received "
        "(median over rounds, count in brackets); seq gaps = sequence jumps the subscribers "
        "saw; node events_lost = the nodes' own `Stats().events_lost` delta. Latency (paced "
        "only): publish to subscriber callback, p50 = median over subscribers, p99 = worst "
        f"subscriber.\n\n{format_table(a, records)}\n\n"
        f"Wall time: {load['seconds']:.0f} s. {format_load(load)}"
    )
    results = {
        "config": vars(a),
        "machine_load": load,
        "results": [
            {"subs": n, "mode": m, "stack": s, "error": r.error, "rounds": r.rounds}
            for (n, m, s), r in records.items()
        ],
    }
    report("bench_events", "node.publish() fan-out vs raw PUB/SUB", env, body, a.out, results)
    return 1 if any(r.error for r in records.values()) else 0


if __name__ == "__main__":
    run_script(main)

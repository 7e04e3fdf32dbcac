"""``node.publish()`` fan-out against raw pyzmq PUB/SUB: delivered events/s and loss.

One publisher (this process, under uvloop) and N subscriber processes (N = 1, 4, 10 by
default), for two stacks measured in interleaved rounds on the same machine:

- ``raw``:  a plain pyzmq PUB socket here; each subscriber is a plain SUB socket read
  through ``loop.add_reader(FD)`` (``bench_events.py raw-sub``, under uvloop). Same
  frames as the node's: ``[topic, msgpack header, msgpack Tick]``, the same topic
  (``benchmarks._events_app.Tick`` + NUL), the same header fields, the same HWMs (10000,
  the node's own); the subscriber decodes header and event and counts it with the
  same ``EventCounter`` as the node subscriber.
- ``node``: ``await node.publish(Tick(...))`` from a node here to N node processes
  (``python -m catga_zmq.node --app benchmarks._events_app:node``, static seeds), whose
  ``@node.subscribe`` subscriber counts each event by the publisher's sequence number.

Each stack runs two measurements per round:

- ``burst``: publish as fast as the publisher can (yielding to the loop every
  ``--yield-every`` events), up to ``--count`` events or ``--seconds``. PUB drops what
  does not fit a subscriber's queue (SNDHWM + RCVHWM + socket buffers), so the slower the
  subscribers, the more is lost: that loss is reported, not hidden. "delivered/s per
  subscriber" is what each subscriber received divided by the time from the first
  publish to its last arrival (CLOCK_MONOTONIC, shared by every process here).
- ``paced``: ``--rate`` events/s for ``--paced-seconds``: loss should be 0; the
  publish-to-subscriber latency (send time stamped in the payload) is reported.

Before measuring, the publisher waits until it sees every subscriber ALIVE
(``wait_for_peers``) and then publishes warm-up events until every subscriber has
received one (the slow-joiner problem of PUB/SUB). Losses are counted three ways:
sent minus received (everything, tail included), sequence gaps seen by the subscriber's
counter, and for the node stack the node's own ``events_lost`` (``Stats``).

    python benchmarks/bench_events.py                       # 1, 4, 10 subscribers
    python benchmarks/bench_events.py --subs 4 --rounds 5 --json events.json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import msgspec
import zmq

from benchmarks._common import (
    REPO_ROOT,
    BenchError,
    Envelope,
    encode_envelope,
    environment,
    format_environment,
    run_uvloop,
)
from benchmarks._events_app import (
    Arm,
    EventCounter,
    EventReport,
    Report,
    Tick,
    tick_data,
)

STACKS = ("raw", "node")
BASELINE = "raw"
EVENTS_APP = "benchmarks._events_app:node"
TYPE_NAME = Tick.__wire_name__
TOPIC = TYPE_NAME.encode() + b"\x00"  # catga_zmq.protocol.topic_for
KIND_EVT = 4  # catga_zmq.protocol.Kind.EVT
PROTOCOL_VERSION = 1
SOURCE = "events-pub"  # node id of the publisher; the raw header carries the same
HWM = 10_000  # messages: the node's SNDHWM/RCVHWM (max(1000, max_in_flight))
MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # bytes, the node's MAXMSGSIZE

START_TIMEOUT = 40.0  # s, for every subscriber to be up (20 processes start on 2 cores)
WARMUP_TIMEOUT = 15.0  # s, for every subscriber to receive a warm-up event
WARMUP_INTERVAL = 0.02  # s between warm-up events
QUERY_TIMEOUT = 5.0  # s, one Arm/Report/Stats round trip
DRAIN_TIMEOUT = 15.0  # s, waiting for subscribers to finish what is queued
DRAIN_POLL = 0.1  # s
DRAIN_STILL_POLLS = 6  # polls without progress: the rest was dropped
FENCE_TIMEOUT = 3.0  # s, for the event after a run to reach every subscriber
STOP_TIMEOUT = 15.0  # s after SIGTERM (a node drains) before SIGKILL
CHILD_MAX_LIFETIME = 900.0  # s, a child left behind by a crashed run exits anyway
MAX_ROUNDS = 20
MAX_SUBS = 32


# --- child processes and machine load (also used by bench_scale.py) -----------------------


def loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only a loopback address (127.0.0.1) is allowed")


def free_port(host: str) -> int:
    """A free TCP port now (the node CLI takes a number; the race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # The apps' watchdog: a child outliving this process stops itself.
    env["BENCH_PARENT_PID"] = str(os.getpid())
    env["BENCH_MAX_LIFETIME"] = str(CHILD_MAX_LIFETIME)
    return env


def start_node_process(
    app: str,
    node_id: str,
    cluster: str,
    host: str,
    *,
    port: int | None = None,
    seeds: Sequence[str] = (),
    discovery: str | None = None,
    extra: Sequence[str] = (),
    stdout: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """``python -m catga_zmq.node --app APP ...``; stdout (its ready line) is discarded
    unless ``stdout=subprocess.PIPE``."""
    cmd = [
        sys.executable,
        "-m",
        "catga_zmq.node",
        "--app",
        app,
        "--id",
        node_id,
        "--cluster",
        cluster,
        "--bind",
        host,
        "--log-level",
        "WARNING",
    ]
    if port is not None:
        cmd += ["--port", str(port)]
    if seeds:
        cmd += ["--seeds", ",".join(seeds)]
    if discovery is not None:
        cmd += ["--discovery", discovery]
    cmd += list(extra)
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=stdout, cwd=REPO_ROOT, env=child_env()
    )


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT) -> None:
    """Stop each child by its own PID: SIGTERM to all, wait, SIGKILL whoever is left."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.poll() is None:
            print(f"pid {proc.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL", file=sys.stderr)
            proc.kill()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                print(f"pid {proc.pid} survived SIGKILL", file=sys.stderr)
    for proc in procs:
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = f.readline().split()
    v = [int(x) for x in parts[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq (guest is in user)
    steal = v[7] if len(v) > 7 else 0
    return busy / _CLK_TCK, steal / _CLK_TCK


def _own_cpu(live_pids: Callable[[], Iterable[int]]) -> float:
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system  # waited children included
    for pid in live_pids():
        own += proc_cpu_seconds(pid) or 0.0
    return own


class LoadMeter:
    """CPU the machine spent on work this run did not start (other users' tests, ...).

    Machine busy time minus the CPU of this process and of its children (live ones
    from /proc, finished ones from ``os.times()``); ``steal`` is time the hypervisor
    gave to other guests.
    """

    def __init__(self, live_pids: Callable[[], Iterable[int]]) -> None:
        self._live = live_pids
        self._load0 = os.getloadavg()[0]
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = _machine_cpu()
        self._own0 = _own_cpu(live_pids)

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self._t0
        busy, steal = _machine_cpu()
        own = _own_cpu(self._live) - self._own0
        foreign = max(0.0, busy - self._busy0 - own)
        return {
            "seconds": seconds,
            "cores": float(os.cpu_count() or 0),
            "own_cpu_s": own,
            "foreign_cpu_s": foreign,
            "foreign_cores_avg": foreign / seconds if seconds > 0 else 0.0,
            "steal_cores_avg": (steal - self._steal0) / seconds if seconds > 0 else 0.0,
            "loadavg_start": self._load0,
            "loadavg_end": os.getloadavg()[0],
        }


def format_load(load: dict[str, float] | None) -> str:
    if not load:
        return ""
    text = (
        f"Other load on the machine during the run: {load['foreign_cores_avg']:.2f} of "
        f"{load['cores']:.0f} cores on average (CPU time of processes this run did not "
        f"start), steal {load['steal_cores_avg']:.2f} cores; load average "
        f"{load['loadavg_start']:.2f} at start, {load['loadavg_end']:.2f} at end."
    )
    if load["foreign_cores_avg"] > 0.1 or load["steal_cores_avg"] > 0.1:
        text += (
            " WARNING: the machine was not idle; figures are lower and noisier than on an idle one."
        )
    return text


def catga_version() -> str:
    try:
        from importlib.metadata import version

        return version("catga-zmq")
    except Exception:
        return "unknown"


def exit_on_signal(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP: unwind, so that every started process is stopped by a finally.
    raise SystemExit(128 + signum)


# --- the raw subscriber (child process) --------------------------------------------------

_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_zsend: Callable[[Any, Any, int], object] = zmq.backend.Socket.send
_zrecv: Callable[[Any, int, bool], Any] = zmq.backend.Socket.recv


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    """A socket with the node transport's options (so both stacks queue alike)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
    return sock


async def raw_subscriber(pub_endpoint: str, node_id: str, max_lifetime: float) -> None:
    """SUB to ``pub_endpoint``; counts Ticks; commands on stdin, answers on stdout.

    Commands (one per line): ``arm FIRST_SEQ LATENCY(0|1)`` -> ``ok``; ``report`` ->
    the ``EventReport`` as JSON. EOF on stdin (the parent is gone), SIGTERM or
    ``max_lifetime`` end it.
    """
    from benchmarks._common import decode_envelope

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.call_later(max_lifetime, stop.set)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _socket(ctx, zmq.SUB)
    sock.connect(pub_endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    counter = EventCounter()
    on_event = counter.on_event
    decode_tick = msgspec.msgpack.Decoder(Tick).decode
    rejected = 0

    def drain() -> None:
        nonlocal rejected
        try:
            while True:
                frame = _zrecv(sock, _NOBLOCK, False)
                parts = [frame.bytes]
                while frame.more:
                    frame = _zrecv(sock, _NOBLOCK, False)
                    parts.append(frame.bytes)
                if len(parts) != 3:
                    rejected += 1
                    continue
                try:
                    env = decode_envelope(parts[1])
                    if env.kind != KIND_EVT or env.type_name != TYPE_NAME:
                        rejected += 1
                        continue
                    tick = decode_tick(parts[2])
                except (msgspec.DecodeError, msgspec.ValidationError):
                    rejected += 1
                    continue
                on_event(env.request_id, tick.data)
        except zmq.Again:
            return

    buf = b""

    def answer(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def on_stdin() -> None:
        nonlocal buf
        chunk = os.read(0, 65536)
        if not chunk:
            stop.set()
            return
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            words = raw.decode().split()
            if words[:1] == ["arm"] and len(words) == 3:
                counter.arm(int(words[1]), words[2] == "1")
                answer("ok")
            elif words == ["report"]:
                answer(msgspec.json.encode(counter.report(node_id)).decode())
            else:
                answer(f"error unknown command {raw[:40]!r}")
        drain()  # our own socket work may have eaten the SUB FD's edge: never here, but cheap

    loop.add_reader(sock.FD, drain)
    loop.add_reader(0, on_stdin)
    loop.call_soon(drain)
    answer(f"READY {node_id}")
    try:
        await stop.wait()
    finally:
        loop.remove_reader(0)
        loop.remove_reader(sock.FD)
        sock.close(0)
        ctx.term()
        if rejected:
            print(f"raw subscriber {node_id}: rejected {rejected} frames", file=sys.stderr)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout within ``timeout`` (bounded; never blocks longer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"pid {proc.pid}: no answer on stdout within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        # One byte at a time: a line never swallows the start of the next answer.
        chunk = os.read(fd, 1)
        if not chunk:
            raise BenchError(f"pid {proc.pid} exited (status {proc.poll()})")
        buf += chunk
        if len(buf) > 1 << 20:
            raise BenchError(f"pid {proc.pid}: unexpected output {buf[:80]!r}")
    return buf[:-1].decode()


# --- stacks (in the benchmark process) --------------------------------------------------


@dataclass(slots=True)
class Reading:
    """A subscriber's report, plus the node's own counters for the node stack."""

    report: EventReport
    events_lost: int | None = None  # NodeStats.events_lost (node stack only)
    events_received: int | None = None


class RawStack:
    name = "raw"

    def __init__(self, host: str, n: int) -> None:
        self.n = n
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pub = _socket(self.ctx, zmq.PUB)
        self.pub.bind(f"tcp://{host}:*")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seq = 0  # last sequence number published
        self._encode = msgspec.msgpack.Encoder().encode
        self.stats_before: dict[str, tuple[int, int]] = {}

    def start(self) -> None:
        for i in range(self.n):
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "raw-sub",
                        "--pub",
                        self.endpoint,
                        "--id",
                        f"raw-sub-{self.n}-{i}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    cwd=REPO_ROOT,
                    env=child_env(),
                )
            )

    async def ready(self, timeout: float) -> None:
        lines = await asyncio.gather(
            *(asyncio.to_thread(read_line, p, timeout) for p in self.procs)
        )
        for proc, line in zip(self.procs, lines, strict=True):
            if not line.startswith("READY "):
                raise BenchError(f"raw subscriber pid {proc.pid}: unexpected {line!r}")

    def _publish(self, seq: int) -> None:
        # The node's frames: topic, header (Envelope == catga_zmq Header), Tick's msgpack.
        header = encode_envelope(
            Envelope(PROTOCOL_VERSION, KIND_EVT, seq, TYPE_NAME, SOURCE, 0, 0, "")
        )
        payload = self._encode(Tick(data=tick_data(seq)))
        sock = self.pub
        _zsend(sock, TOPIC, _MORE_NOBLOCK)
        _zsend(sock, header, _MORE_NOBLOCK)
        _zsend(sock, payload, _NOBLOCK)

    def publish_one(self) -> None:
        self.seq += 1
        self._publish(self.seq)

    async def burst(self, count: int, seconds: float, yield_every: int) -> tuple[int, int, int]:
        publish = self._publish
        clock = time.monotonic_ns
        t0 = clock()
        deadline = t0 + int(seconds * 1e9)
        seq = first = self.seq + 1
        end = first + count
        while seq < end:
            stop = min(end, seq + yield_every)
            while seq < stop:
                publish(seq)
                seq += 1
            await asyncio.sleep(0)
            if clock() >= deadline:
                break
        t1 = clock()
        self.seq = seq - 1
        return seq - first, t0, t1

    async def paced(self, rate: float, seconds: float) -> tuple[int, int, int]:
        publish = self._publish
        clock = time.monotonic_ns
        total = max(1, int(rate * seconds))
        t0 = clock()
        hard = t0 + int((seconds + 2.0) * 1e9)
        seq = first = self.seq + 1
        end = first + total
        while seq < end:
            now = clock()
            if now > hard:
                break
            due = min(end, first + int((now - t0) * rate / 1e9) + 1)
            while seq < due:
                publish(seq)
                seq += 1
            await asyncio.sleep(0.0005)
        t1 = clock()
        self.seq = seq - 1
        return seq - first, t0, t1

    def _ask(self, proc: subprocess.Popen[bytes], command: str) -> str:
        assert proc.stdin is not None
        proc.stdin.write(command.encode() + b"\n")
        proc.stdin.flush()
        return read_line(proc, QUERY_TIMEOUT)

    async def arm(self, first_seq: int, latency: bool) -> None:
        answers = await asyncio.gather(
            *(
                asyncio.to_thread(self._ask, p, f"arm {first_seq} {int(latency)}")
                for p in self.procs
            )
        )
        bad = [a for a in answers if a != "ok"]
        if bad:
            raise BenchError(f"raw subscriber refused arm: {bad[0]!r}")

    async def readings(self) -> list[Reading]:
        answers = await asyncio.gather(
            *(asyncio.to_thread(self._ask, p, "report") for p in self.procs)
        )
        return [Reading(msgspec.json.decode(a, type=EventReport)) for a in answers]

    async def begin(self) -> None:
        pass

    async def add_node_counters(self, readings: list[Reading]) -> None:
        pass  # plain sockets have no counters of their own

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        stop_processes(self.procs)

    def close(self) -> None:
        self.pub.close(0)
        self.ctx.term()


class NodeStack:
    name = "node"

    def __init__(self, host: str, n: int) -> None:
        from catga_zmq import Node

        self.n = n
        self.host = host
        self.cluster = f"bench-events-{os.getpid()}-{n}"
        self.port = free_port(host)
        self.node = Node(
            node_id=SOURCE, cluster=self.cluster, discovery=None, bind=host, port=self.port
        )
        self.sub_ids = [f"ev-sub-{n}-{i}" for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seq = 0
        self.started = False
        self.stats_before: dict[str, tuple[int, int]] = {}

    async def open(self) -> None:
        await self.node.start()
        self.started = True

    def start(self) -> None:
        seed = f"tcp://{self.host}:{self.port}"
        for sid in self.sub_ids:
            self.procs.append(
                start_node_process(EVENTS_APP, sid, self.cluster, self.host, seeds=[seed])
            )

    async def ready(self, timeout: float) -> None:
        try:
            await self.node.wait_for_peers(self.n, timeout=timeout, handles=Arm)
        except Exception as exc:
            dead = [p.pid for p in self.procs if p.poll() is not None]
            raise BenchError(
                f"node subscribers not all seen ALIVE within {timeout:.0f} s"
                f"{f' (exited: {dead})' if dead else ''}: {exc}"
            ) from exc

    async def publish_async(self) -> None:
        self.seq += 1
        await self.node.publish(Tick(data=tick_data(self.seq)))

    async def burst(self, count: int, seconds: float, yield_every: int) -> tuple[int, int, int]:
        publish = self.node.publish
        clock = time.monotonic_ns
        t0 = clock()
        deadline = t0 + int(seconds * 1e9)
        seq = first = self.seq + 1
        end = first + count
        while seq < end:
            stop = min(end, seq + yield_every)
            while seq < stop:
                await publish(Tick(data=tick_data(seq)))
                seq += 1
            await asyncio.sleep(0)
            if clock() >= deadline:
                break
        t1 = clock()
        self.seq = seq - 1
        return seq - first, t0, t1

    async def paced(self, rate: float, seconds: float) -> tuple[int, int, int]:
        publish = self.node.publish
        clock = time.monotonic_ns
        total = max(1, int(rate * seconds))
        t0 = clock()
        hard = t0 + int((seconds + 2.0) * 1e9)
        seq = first = self.seq + 1
        end = first + total
        while seq < end:
            now = clock()
            if now > hard:
                break
            due = min(end, first + int((now - t0) * rate / 1e9) + 1)
            while seq < due:
                await publish(Tick(data=tick_data(seq)))
                seq += 1
            await asyncio.sleep(0.0005)
        t1 = clock()
        self.seq = seq - 1
        return seq - first, t0, t1

    async def arm(self, first_seq: int, latency: bool) -> None:
        await asyncio.gather(
            *(
                self.node.send(
                    Arm(first_seq=first_seq, latency=latency), node=sid, timeout=QUERY_TIMEOUT
                )
                for sid in self.sub_ids
            )
        )

    async def _stats(self) -> dict[str, tuple[int, int]]:
        from catga_zmq import Stats

        replies = await asyncio.gather(
            *(self.node.send(Stats(), node=sid, timeout=QUERY_TIMEOUT) for sid in self.sub_ids)
        )
        return {r.node_id: (r.events_lost, r.events_received) for r in replies}

    async def begin(self) -> None:
        self.stats_before = await self._stats()

    async def readings(self) -> list[Reading]:
        reports = await asyncio.gather(
            *(self.node.send(Report(), node=sid, timeout=QUERY_TIMEOUT) for sid in self.sub_ids)
        )
        return [Reading(rep) for rep in reports]

    async def add_node_counters(self, readings: list[Reading]) -> None:
        """The nodes' own ``events_lost``/``events_received`` since ``begin()``."""
        stats = await self._stats()
        for r in readings:
            lost0, recv0 = self.stats_before.get(r.report.node_id, (0, 0))
            lost1, recv1 = stats[r.report.node_id]
            r.events_lost, r.events_received = lost1 - lost0, recv1 - recv0

    def check_sequence(self) -> None:
        published = self.node.stats["events_published"]
        if published != self.seq:
            raise BenchError(
                f"node published {published} events, the benchmark counted {self.seq}: "
                "the subscribers' sequence window would be wrong"
            )

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        stop_processes(self.procs)

    async def aclose(self) -> None:
        if self.started:
            await self.node.aclose()


Stack = RawStack | NodeStack


async def publish_single(stack: Stack) -> None:
    if isinstance(stack, NodeStack):
        await stack.publish_async()
    else:
        stack.publish_one()


async def warm_up(stack: Stack, timeout: float) -> int:
    """Publish until every subscriber has an event (slow joiners); returns how many."""
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        for _ in range(5):
            await publish_single(stack)
            sent += 1
            await asyncio.sleep(WARMUP_INTERVAL)
        readings = await stack.readings()
        if all(r.report.total > 0 for r in readings):
            # A few more so that every connection is past its first messages.
            for _ in range(50):
                await publish_single(stack)
                sent += 1
            await asyncio.sleep(0.2)
            return sent
        if time.monotonic() > deadline:
            missing = [r.report.node_id for r in readings if r.report.total == 0]
            raise BenchError(f"{stack.name}: no warm-up event reached {missing} in {timeout:.0f} s")


async def collect(stack: Stack, sent: int) -> list[Reading]:
    """Poll the subscribers until all got ``sent`` events or they stop making progress."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last = -1
    still = 0
    while True:
        readings = await stack.readings()
        got = sum(r.report.received for r in readings)
        if all(r.report.received >= sent for r in readings):
            return readings
        still = still + 1 if got == last else 0
        if still >= DRAIN_STILL_POLLS or time.monotonic() > deadline:
            return readings
        last = got
        await asyncio.sleep(DRAIN_POLL)


async def fence(stack: Stack, readings: list[Reading]) -> bool:
    """One more event after the window, seen by every subscriber (bounded wait).

    A subscriber sees a lost event as a sequence gap only when a later one arrives: the
    fence makes the losses at the tail of a run show in the node's ``events_lost``
    now, not in the next run's figures. The fence is outside every counted window.
    """
    before = {r.report.node_id: r.report.total for r in readings}
    await publish_single(stack)
    deadline = time.monotonic() + FENCE_TIMEOUT
    while time.monotonic() < deadline:
        await asyncio.sleep(DRAIN_POLL / 2)
        now = await stack.readings()
        if all(r.report.total > before.get(r.report.node_id, 0) for r in now):
            return True
    return False


@dataclass(slots=True)
class Config:
    subs: tuple[int, ...]
    stacks: tuple[str, ...]
    modes: tuple[str, ...]
    rounds: int
    count: int
    seconds: float
    rates: tuple[float, ...]
    paced_seconds: float
    yield_every: int
    host: str


def run_rate(mode: str) -> float | None:
    """``paced-5000`` -> 5000.0; ``burst`` -> None."""
    return float(mode.split("-", 1)[1]) if mode.startswith("paced-") else None


def run_label(mode: str) -> str:
    rate = run_rate(mode)
    return "burst" if rate is None else f"paced {rate:,.0f}/s"


async def measure(stack: Stack, mode: str, config: Config) -> dict[str, Any]:
    rate = run_rate(mode)
    paced = rate is not None
    first = stack.seq + 1
    await stack.arm(first, latency=paced)
    await stack.begin()
    if rate is None:
        sent, t0, t1 = await stack.burst(config.count, config.seconds, config.yield_every)
    else:
        sent, t0, t1 = await stack.paced(rate, config.paced_seconds)
    readings = await collect(stack, sent)
    fenced = await fence(stack, readings)
    await stack.add_node_counters(readings)
    if isinstance(stack, NodeStack):
        stack.check_sequence()
    per_sub: list[dict[str, Any]] = []
    for r in readings:
        rep = r.report
        span = (rep.last_ns - t0) / 1e9 if rep.received else 0.0
        per_sub.append(
            {
                "node_id": rep.node_id,
                "received": rep.received,
                "lost": sent - rep.received,
                "gaps": rep.gaps,
                "reordered": rep.reordered,
                "events_lost": r.events_lost,
                "events_received": r.events_received,
                "delivered_per_s": rep.received / span if span > 0 else 0.0,
                "drain_s": max(0.0, (rep.last_ns - t1) / 1e9) if rep.received else 0.0,
                "lat_p50_us": rep.lat_p50_us,
                "lat_p99_us": rep.lat_p99_us,
                "lat_max_us": rep.lat_max_us,
            }
        )
    pub_seconds = (t1 - t0) / 1e9
    received = sum(s["received"] for s in per_sub)
    lost = sent * len(per_sub) - received
    rates = [s["delivered_per_s"] for s in per_sub]
    node_lost = [s["events_lost"] for s in per_sub if s["events_lost"] is not None]
    result: dict[str, Any] = {
        "sent": sent,
        "publish_seconds": pub_seconds,
        "published_per_s": sent / pub_seconds if pub_seconds > 0 else 0.0,
        "delivered_per_s_mean": statistics.fmean(rates) if rates else 0.0,
        "delivered_per_s_min": min(rates) if rates else 0.0,
        "received": received,
        "lost": lost,
        "loss_pct": 100.0 * lost / (sent * len(per_sub)) if sent and per_sub else 0.0,
        "gaps": sum(s["gaps"] for s in per_sub),
        "events_lost_stat": sum(node_lost) if node_lost else None,
        "lat_p50_us": statistics.median(s["lat_p50_us"] for s in per_sub) if paced else None,
        "lat_p99_us": max(s["lat_p99_us"] for s in per_sub) if paced else None,
        "drain_s": max(s["drain_s"] for s in per_sub) if per_sub else 0.0,
        "fenced": fenced,
        "subscribers": per_sub,
    }
    return result


@dataclass(slots=True)
class Record:
    n: int
    mode: str
    stack: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds if r.get(key) is not None]
        return statistics.median(values) if values else None


async def run_group(
    config: Config, n: int, records: dict[tuple[int, str, str], Record], live: list[Stack]
) -> None:
    """All rounds for ``n`` subscribers: start both stacks' subscribers, interleave, stop."""
    stacks: list[Stack] = []
    try:
        if "raw" in config.stacks:
            raw = RawStack(config.host, n)
            stacks.append(raw)
            live.append(raw)
        if "node" in config.stacks:
            node_stack = NodeStack(config.host, n)
            stacks.append(node_stack)
            live.append(node_stack)
            await node_stack.open()
        started = time.monotonic()
        for stack in stacks:
            stack.start()
        usable: list[Stack] = []
        for stack in stacks:
            try:
                await stack.ready(START_TIMEOUT)
                warm = await warm_up(stack, WARMUP_TIMEOUT)
            except Exception as exc:
                for mode in config.modes:
                    records[(n, mode, stack.name)].error = f"setup: {exc}"
                print(f"{n} subs, {stack.name}: setup failed: {exc!r}", file=sys.stderr)
                continue
            print(
                f"{n} subs, {stack.name}: ready after {time.monotonic() - started:.1f} s "
                f"({warm} warm-up events)",
                file=sys.stderr,
                flush=True,
            )
            usable.append(stack)
        for round_no in range(config.rounds):
            order = usable if round_no % 2 == 0 else list(reversed(usable))
            for stack in order:
                for mode in config.modes:
                    record = records[(n, mode, stack.name)]
                    if record.error is not None:
                        continue
                    try:
                        result = await measure(stack, mode, config)
                    except Exception as exc:
                        record.error = f"round {round_no + 1}: {type(exc).__name__}: {exc}"
                        print(f"{n} subs {stack.name} {mode}: {record.error}", file=sys.stderr)
                        continue
                    record.rounds.append(result)
                    lat = (
                        f"  p50 {result['lat_p50_us']:.0f} µs p99 {result['lat_p99_us']:.0f} µs"
                        if run_rate(mode) is not None
                        else ""
                    )
                    print(
                        f"round {round_no + 1}/{config.rounds} subs {n:>2} {stack.name:<4} {run_label(mode):<14}"
                        f"  sent {result['sent']:>7} at {result['published_per_s']:>9,.0f}/s"
                        f"  delivered/sub {result['delivered_per_s_mean']:>9,.0f}/s"
                        f" (min {result['delivered_per_s_min']:,.0f})"
                        f"  lost {result['loss_pct']:5.1f}%  gaps {result['gaps']}"
                        f"  events_lost {result['events_lost_stat']}{lat}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for stack in stacks:
            stack.stop()
        for stack in stacks:
            if isinstance(stack, NodeStack):
                await stack.aclose()
            else:
                stack.close()
            live.remove(stack)


async def run_all(
    config: Config, records: dict[tuple[int, str, str], Record], live: list[Stack]
) -> None:
    for n in config.subs:
        await run_group(config, n, records, live)


# --- report --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def format_table(config: Config, records: dict[tuple[int, str, str], Record]) -> str:
    lines = [
        "| subs | run | stack | published/s | delivered/s per sub (mean) | slowest sub | "
        "lost | seq gaps | node events_lost | latency p50 / p99 µs | ratio to raw |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in config.subs:
        for mode in config.modes:
            base = records.get((n, mode, BASELINE))
            base_rate = base.median("delivered_per_s_mean") if base and not base.error else None
            for stack in config.stacks:
                rec = records[(n, mode, stack)]
                run = run_label(mode)
                if rec.error or not rec.rounds:
                    lines.append(
                        f"| {n} | {run} | {stack} | - | - | - | - | - | - | - | ERROR: {rec.error or 'no rounds'} |"
                    )
                    continue
                rate = rec.median("delivered_per_s_mean")
                ratio = f"{rate / base_rate:.2f}" if rate and base_rate else "-"
                lost = rec.median("loss_pct")
                lost_n = rec.median("lost")
                lat = (
                    f"{_fmt(rec.median('lat_p50_us'))} / {_fmt(rec.median('lat_p99_us'))}"
                    if run_rate(mode) is not None
                    else "-"
                )
                lines.append(
                    f"| {n} | {run} | {stack} | {_fmt(rec.median('published_per_s'))} "
                    f"| {_fmt(rate)} | {_fmt(rec.median('delivered_per_s_min'))} "
                    f"| {_fmt(lost, 1, '%')} ({_fmt(lost_n)}) | {_fmt(rec.median('gaps'))} "
                    f"| {_fmt(rec.median('events_lost_stat'))} | {lat} | {ratio} |"
                )
    return "\n".join(lines)


def describe(config: Config) -> str:
    return (
        f"`node.publish()` to N subscriber node processes vs raw pyzmq PUB/SUB (same frames, "
        f"same HWM {HWM}), 100-byte `Tick` payload; median of {config.rounds} interleaved "
        f"rounds. burst: up to {config.count:,} events or {config.seconds:g} s as fast as "
        f"the publisher goes (yielding every {config.yield_every}); paced: "
        f"{' and '.join(f'{r:,.0f}' for r in config.rates)} events/s for {config.paced_seconds:g} s. delivered/s per sub = events a subscriber "
        "received / (its last arrival - first publish). lost = sent x subs - received, "
        "summed over subscribers (median over rounds, count in brackets); seq gaps = what "
        "the subscribers' counters saw as sequence jumps; node events_lost = the nodes' "
        "own `Stats().events_lost` delta. Latency (paced only): publish to subscriber "
        "callback, p50 = median over subscribers, p99 = worst subscriber."
    )


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subs", default="1,4,10", help="subscriber counts (default 1,4,10)")
    parser.add_argument("--only", default="raw,node", help="stacks: raw,node")
    parser.add_argument("--modes", default="burst,paced", help="burst,paced")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3)")
    parser.add_argument("--count", type=int, default=200_000, help="events per burst, at most")
    parser.add_argument("--seconds", type=float, default=1.5, help="time bound of a burst (s)")
    parser.add_argument(
        "--rate", default="5000,20000", help="paced rates (events/s), comma separated"
    )
    parser.add_argument(
        "--paced-seconds", type=float, default=2.0, help="length of a paced run (s)"
    )
    parser.add_argument("--yield-every", type=int, default=100, help="burst: events per loop yield")
    parser.add_argument("--host", type=loopback, default="127.0.0.1", help="loopback only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    parser.add_argument("--md", type=Path, metavar="PATH", help="also save the report here")
    args = parser.parse_args(argv)
    try:
        subs = tuple(sorted({int(s) for s in args.subs.split(",") if s.strip()}))
    except ValueError:
        parser.error(f"--subs: not a list of integers: {args.subs!r}")
    if not subs or subs[0] < 1 or subs[-1] > MAX_SUBS:
        parser.error(f"--subs: each 1..{MAX_SUBS}")
    stacks = tuple(s for s in STACKS if s in {x.strip() for x in args.only.split(",")})
    kinds = {x.strip() for x in args.modes.split(",")}
    try:
        rates = tuple(sorted({float(x) for x in args.rate.split(",") if x.strip()}))
    except ValueError:
        parser.error(f"--rate: not a list of numbers: {args.rate!r}")
    modes = (("burst",) if "burst" in kinds else ()) + (
        tuple(f"paced-{r:g}" for r in rates) if "paced" in kinds else ()
    )
    if not stacks or not modes:
        parser.error("--only and --modes must name at least one of raw,node / burst,paced")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if args.count < 1 or not 0 < args.seconds <= 60 or not 0 < args.paced_seconds <= 60:
        parser.error("--count >= 1, --seconds and --paced-seconds in (0, 60]")
    if not rates or not 0 < rates[0] <= rates[-1] <= 1_000_000 or args.yield_every < 1:
        parser.error("--rate in (0, 1e6], --yield-every >= 1")
    if args.rounds < 3:
        print("warning: fewer than 3 rounds; medians are not meaningful", file=sys.stderr)
    config = Config(
        subs=subs,
        stacks=stacks,
        modes=modes,
        rounds=args.rounds,
        count=args.count,
        seconds=args.seconds,
        rates=rates,
        paced_seconds=args.paced_seconds,
        yield_every=args.yield_every,
        host=args.host,
    )
    return config, args.json, args.md


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["raw-sub"]:
        p = argparse.ArgumentParser(prog="bench_events.py raw-sub")
        p.add_argument("--pub", required=True)
        p.add_argument("--id", required=True)
        p.add_argument("--max-lifetime", type=float, default=CHILD_MAX_LIFETIME)
        a = p.parse_args(argv[1:])
        run_uvloop(raw_subscriber(a.pub, a.id, a.max_lifetime))
        return 0

    config, json_path, md_path = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, exit_on_signal)
    env = environment()
    env["catga_zmq"] = catga_version()
    records = {
        (n, mode, stack): Record(n, mode, stack)
        for n in config.subs
        for mode in config.modes
        for stack in config.stacks
    }
    live: list[Stack] = []
    started = time.monotonic()
    meter = LoadMeter(lambda: [pid for s in live for pid in s.pids()])
    try:
        run_uvloop(run_all(config, records, live))
    finally:
        for stack in list(live):  # only if run_all was torn down before its own finally
            stack.stop()
    load = meter.stop()
    elapsed = time.monotonic() - started

    report = "\n".join(
        [
            "# node.publish() fan-out vs raw PUB/SUB",
            "",
            describe(config),
            "",
            format_table(config, records),
            "",
            format_environment(env),
            "",
            f"Wall time of the run: {elapsed:.0f} s.",
            "",
            format_load(load),
        ]
    )
    print(report)
    if md_path is not None:
        md_path.write_text(report + "\n", encoding="utf-8")
    if json_path is not None:
        document = {
            "benchmark": "bench_events",
            "environment": env,
            "config": asdict(config),
            "elapsed_seconds": elapsed,
            "machine_load": load,
            "results": [
                {
                    "subs": rec.n,
                    "mode": rec.mode,
                    "stack": rec.stack,
                    "error": rec.error,
                    "median": {
                        key: rec.median(key)
                        for key in (
                            "published_per_s",
                            "delivered_per_s_mean",
                            "delivered_per_s_min",
                            "loss_pct",
                            "lost",
                            "gaps",
                            "events_lost_stat",
                            "lat_p50_us",
                            "lat_p99_us",
                        )
                    },
                    "rounds": rec.rounds,
                }
                for rec in records.values()
            ],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"results saved to {json_path}", file=sys.stderr)
    return 1 if any(rec.error for rec in records.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

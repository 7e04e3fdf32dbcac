"""Soak: a node under a sustained garbage flood keeps its peers and answers real requests.

Every process on 127.0.0.1, the client side in this process under uvloop:

- the server: ``python -m catga_zmq.node --app benchmarks._apps:echo``, heartbeats every
  ``--heartbeat-interval`` (0.1 s);
- the flood: ``--floods`` (2) processes of this script, each a raw DEALER that sends as
  fast as the server takes them, for ``--seconds``: random frames (1-4 parts of random
  bytes), deeply nested msgpack (``--depth`` arrays), headers with long strings (64 KiB
  sources and trace ids, a new source per frame of the pool), wrong-version headers, and
  invented heartbeats (HB frames on the ROUTER, which a raw DEALER can reach) and
  greetings (``Info`` requests whose caller is an invented node): nodes that do not
  exist, at ports this run holds bound and not listening, so they reach no one;
- the client: a node here with ``--in-flight`` (16) echo requests in flight, each with a
  ``--timeout`` (2 s) deadline, every reply checked.

Three phases: ``before`` and ``after`` (``--quiet-seconds`` each, no flood) and
``during``. For each: real requests answered (share), their p50/p99, the server's RSS and
open file descriptors (of them sockets) from /proc, the longest gap between two of the
server's heartbeats as the client saw them (a loop stall shows there: the heartbeat is a
timer of the server's loop) and how often the client did not see it ALIVE.

    python benchmarks/bench_soak.py --seconds 20          # about 35 s

Exit status 1 when a real reply is wrong or the flood did not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply
from benchmarks._common import (
    BenchError,
    ReplyMismatch,
    environment,
    fmt,
    log,
    parse,
    parser,
    payload_for,
    percentile,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Child, Processes, free_port, rss_bytes
from catga_zmq import CatgaError, Node, NodeStatus, StaticDiscovery

MB = 1024 * 1024
FLOOD_CHILD = "--flood-child"  # argv[1] of a flood process
POOL = 512  # distinct garbage messages a flood cycles through
LONG = 64 * 1024  # characters of a long string
WATCH_EVERY = 0.01  # s between two looks at the server's membership entry
PROC_EVERY = 0.5  # s between two reads of the server's /proc
SEND_TIMEOUT_MS = 10_000  # a flood whose messages the server never takes gives up


# --- the flood (child process) ---------------------------------------------------------


def garbage_pool(seed: int, depth: int, ghosts: list[str], cluster: str) -> list[list[bytes]]:
    """``POOL`` hostile messages, of every kind in turn."""
    from catga_zmq import Info
    from catga_zmq.protocol import PROTOCOL_VERSION, Header, HeartbeatBody, Kind
    from catga_zmq.system import PeerAddress

    enc = msgspec.msgpack.encode
    rnd = random.Random(seed)
    pool: list[list[bytes]] = []
    for i in range(POOL):
        kind = i % 7
        if kind == 0:  # random frames
            pool.append([rnd.randbytes(rnd.randint(1, 64)) for _ in range(rnd.randint(1, 4))])
        elif kind == 1:  # one frame (read as a batch) of deeply nested arrays
            pool.append([b"\x91" * depth + b"\xc0"])
        elif kind == 2:  # a request header whose source is long (and new)
            source = f"s{seed}-{i}-" + "x" * LONG
            pool.append(
                [enc(Header(PROTOCOL_VERSION, int(Kind.REQ), i + 1, "x.Y", source, 2000)), b"\x90"]
            )
        elif kind == 3:  # ... whose trace id is long
            header = Header(PROTOCOL_VERSION, int(Kind.REQ), i + 1, "x.Y", "t", 2000, 0, "t" * LONG)
            pool.append([enc(header), b"\x90"])
        elif kind == 4:  # a header of a protocol version to come
            pool.append(
                [enc(Header(PROTOCOL_VERSION + 1, int(Kind.REQ), i + 1, "x.Y", "v", 2000)), b"\x90"]
            )
        elif kind == 5:  # an invented heartbeat: a node that does not exist
            ghost = f"ghost-{seed}-{i}"
            endpoint = ghosts[i % len(ghosts)]
            body = HeartbeatBody(ghost, 1, i, "alive", cluster, endpoint, endpoint)
            pool.append([enc(Header(PROTOCOL_VERSION, int(Kind.HB), 0, "", ghost, 0)), enc(body)])
        else:  # a greeting (Info) that claims an invented node's address, where nothing listens
            ghost = f"greeter-{seed}-{i}"
            address = PeerAddress(
                ghost,
                ghosts[i % len(ghosts)],
                ghosts[(i + 1) % len(ghosts)],
                cluster,
                PROTOCOL_VERSION,
            )
            header = Header(PROTOCOL_VERSION, int(Kind.REQ), i + 1, Info.__wire_name__, ghost, 2000)
            pool.append([enc(header), enc(Info(caller=address))])
    return pool


def flood_main(argv: list[str]) -> int:
    """``bench_soak.py --flood-child ENDPOINT SECONDS SEED DEPTH GHOST,GHOST CLUSTER``."""
    import zmq

    endpoint, seconds, seed, depth = argv[0], float(argv[1]), int(argv[2]), int(argv[3])
    pool = garbage_pool(seed, depth, argv[4].split(","), argv[5])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    # Non-blocking: when the server stops reading this connection (its queue is full:
    # max_inbound_bytes, or the replies this flood leaves unread), the flood waits and
    # reads its replies, as a flood that wants to go on must; a wait of more than
    # SEND_TIMEOUT_MS without one message taken is a stuck server.
    sent, waits, end = 0, 0, time.monotonic() + seconds
    last_taken = time.monotonic()
    try:
        while (now := time.monotonic()) < end:
            before = sent
            for _ in range(256):  # the clock once per 256 messages
                try:
                    sock.send_multipart(pool[sent % POOL], zmq.NOBLOCK)
                    sent += 1
                except zmq.Again:
                    waits += 1
                    while sock.poll(0):
                        sock.recv_multipart()
                    time.sleep(0.001)
                    break
            if sent > before:
                last_taken = now
            elif now - last_taken > SEND_TIMEOUT_MS / 1000:
                print(f"flood stuck after {sent}", flush=True)
                return 1
    finally:
        sock.close()
        ctx.term()
    print(f"flood sent {sent} waits {waits}", flush=True)
    return 0


# --- the measurement -------------------------------------------------------------------


class Phase:
    """What the client saw in one phase."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.failed = 0
        self.latencies: list[float] = []  # s, answered requests
        self.beat_gap = 0.0  # s, the longest between two heartbeats of the server
        self.not_alive = 0  # looks at the server that found it not ALIVE
        self.rss: list[int] = []
        self.fds: list[int] = []
        self.sockets: list[int] = []

    def row(self) -> list[object]:
        total = self.ok + self.failed
        lat = sorted(self.latencies)
        return [
            self.name,
            f"{self.ok:,}/{total:,}",
            fmt(100 * self.ok / total if total else None, 2, "%"),
            fmt(percentile(lat, 50) * 1e3 if lat else None, 2),
            fmt(percentile(lat, 99) * 1e3 if lat else None, 2),
            fmt(max(self.rss, default=0) / MB, 1),
            f"{max(self.fds, default=0)} ({max(self.sockets, default=0)})",
            fmt(self.beat_gap * 1e3),
            self.not_alive,
        ]

    def result(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "ok": self.ok,
            "failed": self.failed,
            "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
            "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
            "rss_max": max(self.rss, default=None),
            "fds_max": max(self.fds, default=None),
            "sockets_max": max(self.sockets, default=None),
            "beat_gap_max_s": self.beat_gap,
            "not_alive": self.not_alive,
        }


def open_fds(pid: int) -> tuple[int, int]:
    """Open file descriptors of ``pid``, and how many of them are sockets."""
    fds = sockets = 0
    with contextlib.suppress(OSError):
        for name in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
    return fds, sockets


async def soak(
    a: Any, server: Child, endpoint: str, cluster: str, procs: Processes
) -> dict[str, Any]:
    client = Node(
        "soak-cli",
        cluster,
        discovery=StaticDiscovery([endpoint]),
        heartbeat_interval=a.heartbeat_interval,
        suspect_after=3 * a.heartbeat_interval,
    )
    phases = [Phase("before"), Phase("during"), Phase("after")]
    current = phases[0]
    stop = False
    seq = 0
    mismatch: list[str] = []

    async def caller() -> None:
        nonlocal seq
        while not stop:
            payload = payload_for(seq)
            seq += 1
            phase, t0 = current, time.perf_counter()
            try:
                reply = await client.send(Echo(data=payload), timeout=a.timeout)
            except CatgaError:
                phase.failed += 1
                continue
            if not isinstance(reply, EchoReply) or reply.data != payload:
                mismatch.append(f"request {seq - 1}")
                phase.failed += 1
                continue
            phase.ok += 1
            phase.latencies.append(time.perf_counter() - t0)

    async def watcher() -> None:
        last_beat, last_proc = 0.0, 0.0
        while not stop:
            view = next((m for m in client.members() if m.node_id == "srv"), None)
            if view is None or view.status is not NodeStatus.ALIVE:
                current.not_alive += 1
            elif view.last_heartbeat != last_beat:
                if last_beat:
                    gap = view.last_heartbeat - last_beat
                    current.beat_gap = max(current.beat_gap, gap)
                last_beat = view.last_heartbeat
            now = time.monotonic()
            if now - last_proc >= PROC_EVERY:
                last_proc = now
                current.rss.append(rss_bytes(server.pid) or 0)
                fds, sockets = open_fds(server.pid)
                current.fds.append(fds)
                current.sockets.append(sockets)
            await asyncio.sleep(WATCH_EVERY)

    floods: list[Child] = []
    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)
        tasks = [asyncio.create_task(watcher())]
        tasks += [asyncio.create_task(caller()) for _ in range(a.in_flight)]
        try:
            await asyncio.sleep(a.quiet_seconds)
            current = phases[1]
            ghosts = ",".join(f"tcp://{a.host}:{port}" for port in a.ghost_ports)
            for i in range(a.floods):
                floods.append(
                    procs.script(
                        f"flood{i}",
                        __file__,
                        FLOOD_CHILD,
                        endpoint,
                        str(a.seconds),
                        str(a.seed + i),
                        str(a.depth),
                        ghosts,
                        cluster,
                    )
                )
            flood_lines = [await f.readline_async(a.seconds + 60) for f in floods]
            current = phases[2]
            await asyncio.sleep(a.quiet_seconds)
        finally:
            stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
    sent = []
    for line in flood_lines:
        if not line.startswith("flood sent"):
            raise BenchError(f"a flood failed: {line!r}")
        sent.append(int(line.split()[2]))
    if mismatch:
        raise ReplyMismatch(f"{len(mismatch)} wrong replies, first: {mismatch[0]}")
    return {
        "phases": {p.name: p.result() for p in phases},
        "rows": [p.row() for p in phases],
        "flood_sent": sent,
    }


def reserve_ports(host: str, count: int) -> list[socket.socket]:
    """TCP ports bound but not listening: a connection to one is refused, and no other
    process can take the port while the run holds it (so invented peers reach no one)."""
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        held.append(s)
    return held


def format_report(a: Any, r: dict[str, Any]) -> str:
    head = [
        "phase",
        "answered",
        "share",
        "p50 ms",
        "p99 ms",
        "server RSS MB",
        "fds (sockets)",
        "longest heartbeat gap ms",
        "looks not ALIVE",
    ]
    sent = r["flood_sent"]
    return (
        f"{a.floods} flood process(es), {sum(sent):,} garbage messages in {a.seconds:g} s "
        f"({sum(sent) / a.seconds:,.0f}/s); {a.in_flight} real requests in flight, "
        f"{a.timeout:g} s deadline; server heartbeat every {a.heartbeat_interval:g} s\n\n"
        + table(head, r["rows"])
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [FLOOD_CHILD]:
        return flood_main(argv[1:])
    p = parser(__doc__, seconds=20.0, in_flight=(16,))
    p.add_argument("--quiet-seconds", type=float, default=5.0, help="before and after (s)")
    p.add_argument("--floods", type=int, default=2, help="flood processes")
    p.add_argument("--depth", type=int, default=1100, help="nesting of the deep frames")
    p.add_argument("--timeout", type=float, default=2.0, help="real requests' deadline (s)")
    p.add_argument("--heartbeat-interval", type=float, default=0.1, help="server's (s)")
    p.add_argument("--seed", type=int, default=20261201)
    a = parse(p, argv)
    a.in_flight = a.in_flight[0]
    env = environment()
    results: dict[str, Any] = {}
    failed: list[str] = []
    held = reserve_ports(a.host, 128)
    a.ghost_ports = [s.getsockname()[1] for s in held]
    try:
        with Processes() as procs:
            port, cluster = free_port(a.host), f"bench-soak-{os.getpid()}"
            server = procs.node(
                "srv",
                "benchmarks._apps:echo",
                cluster=cluster,
                bind=a.host,
                port=port,
                discovery="none",
                heartbeat_interval=a.heartbeat_interval,
                log_level="ERROR",
            )
            server.wait_ready("ready")
            endpoint = f"tcp://{a.host}:{port}"
            log(f"server up at {endpoint}; {a.quiet_seconds:g} s quiet, {a.seconds:g} s flood")
            results = run_uvloop(soak(a, server, endpoint, cluster, procs))
    except BenchError as exc:
        failed.append(f"error: {exc}")
    finally:
        for s in held:
            s.close()
    body = format_report(a, results) if results else ""
    body += f"\n\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}"
    results.pop("rows", None)
    config = {k: v for k, v in vars(a).items() if k != "out"}
    results.update(config=config, failed=failed)
    report("bench_soak", "catga_zmq under a garbage flood", env, body, a.out, results)
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

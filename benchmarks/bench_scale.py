"""How catga_zmq behaves with more nodes: scale-out of requests, and 32 idle nodes.

(a) scale-out: one caller node (this process, under uvloop) sends ``Echo`` requests
    (100 bytes, round robin) to 1, 2 and 4 server node processes
    (``python -m catga_zmq.node --app benchmarks._echo_app:node --id srv-...``), at 64
    and 256 requests in flight. Each group of servers is a cluster of its own, so the
    three groups stay up together and the rounds interleave them; the table gives the
    median of the rounds, with the CPU the caller and the servers used (in cores: 1.0
    is one core busy) and how evenly the servers shared the work (requests handled,
    from each server's ``Stats``).

(b) 32 idle nodes (``benchmarks._events_app:idle``: built-ins only, default heartbeats
    of 0.5 s) on 127.0.0.1, found by mDNS as a user would start them, then by static
    seeds (the first node runs ``--discovery none --port P``, the others ``--seeds``):
    time from starting the processes until every node sees the 32 others ALIVE (its
    31 idle peers plus the observer this benchmark runs to ask them, via each node's
    ``Stats().members``), then each node's CPU share over ``--cpu-window`` seconds
    (from /proc/<pid>/stat) and its memory (VmRSS; USS with psutil).

    python benchmarks/bench_scale.py                 # both parts, about 3 minutes
    python benchmarks/bench_scale.py --only idle --discovery static
    python benchmarks/bench_scale.py --rounds 5 --json scale.json

Every process started here is stopped by its PID (SIGTERM, wait, SIGKILL) on the way
out, failures included; the apps also stop themselves if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    BenchError,
    ReplyMismatch,
    environment,
    format_environment,
    measure_throughput,
    run_uvloop,
)
from benchmarks.bench_events import (
    LoadMeter,
    catga_version,
    exit_on_signal,
    format_load,
    free_port,
    loopback,
    proc_cpu_seconds,
    proc_rss_kib,
    start_node_process,
    stop_processes,
)

ECHO_APP = "benchmarks._echo_app:node"
IDLE_APP = "benchmarks._events_app:idle"
SERVER_GROUPS = (1, 2, 4)
IN_FLIGHT = (64, 256)
IDLE_NODES = 32
DISCOVERY_MODES = ("mdns", "static")
START_TIMEOUT = 40.0  # s, for a caller to see its servers
MESH_TIMEOUT = 90.0  # s, for 32 nodes to see each other
MESH_POLL = 0.25  # s between two sweeps of Stats requests
STATS_TIMEOUT = 2.0  # s, one Stats request
SETTLE = 2.0  # s after the mesh formed, before the CPU window
STOP_TIMEOUT = 15.0  # s after SIGTERM before SIGKILL
MAX_ROUNDS = 20


@dataclass(slots=True)
class Config:
    parts: tuple[str, ...]
    rounds: int
    groups: tuple[int, ...]
    in_flight: tuple[int, ...]
    total: int
    seconds: float
    warmup: int
    idle_nodes: int
    discovery: tuple[str, ...]
    cpu_window: float
    host: str


# --- (a) scale-out ---------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    n: int
    cluster: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    caller: Any = None
    error: str | None = None


def start_group(n: int, host: str) -> Group:
    group = Group(n=n, cluster=f"bench-scale-{os.getpid()}-n{n}")
    for i in range(n):
        port = free_port(host)
        node_id = f"srv-{n}-{i}"
        group.ids.append(node_id)
        group.endpoints.append(f"tcp://{host}:{port}")
        group.procs.append(
            start_node_process(ECHO_APP, node_id, group.cluster, host, port=port, discovery="none")
        )
    return group


async def open_caller(group: Group) -> None:
    from benchmarks._echo_app import Echo
    from catga_zmq import Node, StaticDiscovery

    caller = Node(
        node_id=f"caller-{group.n}",
        cluster=group.cluster,
        discovery=StaticDiscovery(group.endpoints),
    )
    await caller.start()
    group.caller = caller
    try:
        await caller.wait_for_peers(group.n, timeout=START_TIMEOUT, handles=Echo)
    except Exception as exc:
        dead = [p.pid for p in group.procs if p.poll() is not None]
        raise BenchError(
            f"{group.n} servers not all seen{f' (exited: {dead})' if dead else ''}: {exc}"
        ) from exc


async def handled(group: Group) -> dict[str, int]:
    from catga_zmq import Stats

    replies = await asyncio.gather(
        *(group.caller.send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in group.ids)
    )
    return {r.node_id: r.requests_handled for r in replies}


async def measure_group(group: Group, in_flight: int, config: Config) -> dict[str, Any]:
    from benchmarks._echo_app import Echo, EchoReply

    send = group.caller.send

    async def call(payload: bytes) -> bytes:
        reply = await send(Echo(data=payload))
        if type(reply) is not EchoReply:
            raise ReplyMismatch(f"expected EchoReply, got {type(reply).__name__}")
        return reply.data

    pids = [p.pid for p in group.procs]
    before = await handled(group)
    cpu0 = time.process_time()
    srv0 = sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)
    t0 = time.monotonic()
    result = await measure_throughput(
        call,
        in_flight=in_flight,
        total=config.total,
        max_seconds=config.seconds,
        warmup=config.warmup,
    )
    wall = time.monotonic() - t0
    caller_cpu = time.process_time() - cpu0
    servers_cpu = sum(proc_cpu_seconds(pid) or 0.0 for pid in pids) - srv0
    after = await handled(group)
    shares = [after[i] - before[i] for i in group.ids]
    return {
        "req_s": result.req_s,
        "count": result.count,
        "seconds": result.seconds,
        # CPU over the warm-up and the measured run together (both at this level).
        "caller_cores": caller_cpu / wall if wall > 0 else 0.0,
        "servers_cores": servers_cpu / wall if wall > 0 else 0.0,
        "handled": dict(zip(group.ids, shares, strict=True)),
        "spread": (max(shares) / min(shares)) if shares and min(shares) > 0 else None,
    }


@dataclass(slots=True)
class ScaleRecord:
    n: int
    in_flight: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds if r.get(key) is not None]
        return statistics.median(values) if values else None


async def run_scale(
    config: Config, records: dict[tuple[int, int], ScaleRecord], live: list[subprocess.Popen[bytes]]
) -> dict[str, float]:
    groups: list[Group] = []
    meter = LoadMeter(lambda: [p.pid for p in live if p.poll() is None])
    try:
        for n in config.groups:
            group = start_group(n, config.host)
            groups.append(group)
            live.extend(group.procs)
        started = time.monotonic()
        for group in groups:
            try:
                await open_caller(group)
            except Exception as exc:
                group.error = f"setup: {exc}"
                print(f"{group.n} servers: {group.error}", file=sys.stderr)
        print(
            f"scale-out: servers up after {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        for round_no in range(config.rounds):
            k = round_no % len(groups)
            order = groups[k:] + groups[:k]  # rotate, so no group always goes first
            for group in order:
                for in_flight in config.in_flight:
                    record = records[(group.n, in_flight)]
                    if group.error is not None:
                        record.error = group.error
                        continue
                    if record.error is not None:
                        continue
                    try:
                        r = await measure_group(group, in_flight, config)
                    except Exception as exc:
                        record.error = f"round {round_no + 1}: {type(exc).__name__}: {exc}"
                        print(f"{group.n} servers @{in_flight}: {record.error}", file=sys.stderr)
                        continue
                    record.rounds.append(r)
                    print(
                        f"round {round_no + 1}/{config.rounds} servers {group.n} @{in_flight:<3}"
                        f"  {r['req_s']:9,.0f} req/s  caller {r['caller_cores']:.2f} cores"
                        f"  servers {r['servers_cores']:.2f} cores  handled {list(r['handled'].values())}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        procs = [p for g in groups for p in g.procs]
        stop_processes(procs, STOP_TIMEOUT)
        for group in groups:
            if group.caller is not None:
                await group.caller.aclose()
        for p in procs:
            live.remove(p)
    return meter.stop()


# --- (b) 32 idle nodes -----------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    discovery: str
    nodes: int
    error: str | None = None
    spawn_seconds: float = 0.0  # to start every process (Popen)
    ready_p50_s: float | None = None  # "ready" line (bound, discovery registered)
    ready_max_s: float | None = None
    mesh_first_s: float | None = None  # first node seeing everyone ALIVE
    mesh_p50_s: float | None = None
    mesh_all_s: float | None = None  # every node seeing everyone ALIVE
    observer_all_s: float | None = None  # the observer seeing every node ALIVE
    converged: int = 0
    cpu_window_s: float = 0.0
    cpu_pct_median: float | None = None  # % of one core, per node
    cpu_pct_max: float | None = None
    cpu_pct_min: float | None = None
    cpu_cores_total: float | None = None  # all nodes together, in cores
    cpu_pct_by_thread: dict[str, float] = field(default_factory=dict)  # mean per node
    observer_cpu_pct: float | None = None
    rss_mib_median: float | None = None
    rss_mib_max: float | None = None
    uss_mib_median: float | None = None
    members_end: dict[str, int] = field(default_factory=dict)  # status -> nodes reporting 32 of it
    not_all_alive_end: list[str] = field(default_factory=list)
    frames_rejected: int = 0
    stop_seconds: float = 0.0
    machine_load: dict[str, float] = field(default_factory=dict)
    per_node: list[dict[str, Any]] = field(default_factory=list)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each kind of thread of ``pid`` (by thread name), from /proc.

    Names: the event loop thread carries the process name (``python``), libzmq's I/O
    threads are ``ZMQbg/...``, zeroconf's and others keep their own names.
    """
    found: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        kind = "main" if tid == str(pid) else ("zmq" if name.startswith("ZMQbg") else "other")
        found[kind] = found.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return found


def _uss_mib(pid: int) -> float | None:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return float(psutil.Process(pid).memory_full_info().uss) / 2**20
    except Exception:
        return None


async def run_idle(config: Config, mode: str, live: list[subprocess.Popen[bytes]]) -> IdleResult:
    from catga_zmq import Node, NodeStats, NodeStatus, StaticDiscovery, Stats

    n = config.idle_nodes
    host = config.host
    res = IdleResult(discovery=mode, nodes=n)
    cluster = f"bench-idle-{os.getpid()}-{mode}"
    ids = [f"idle-{i:02d}" for i in range(n)]
    procs: list[subprocess.Popen[bytes]] = []
    ready_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()
    observer: Node | None = None
    readers: list[int] = []
    try:
        t0 = time.monotonic()
        seed_port = free_port(host)
        seed = f"tcp://{host}:{seed_port}"
        for i, node_id in enumerate(ids):
            if mode == "mdns":
                kw: dict[str, Any] = {"discovery": "mdns"}
            elif i == 0:
                kw = {"discovery": "none", "port": seed_port}
            else:
                kw = {"seeds": [seed]}
            proc = start_node_process(
                IDLE_APP, node_id, cluster, host, stdout=subprocess.PIPE, **kw
            )
            procs.append(proc)
            live.append(proc)
        res.spawn_seconds = time.monotonic() - t0

        def on_ready(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if data.startswith(b"ready") or not data:
                if data:
                    ready_at[proc.pid] = time.monotonic() - t0
                loop.remove_reader(fd)
                readers.remove(fd)

        for proc in procs:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            loop.add_reader(fd, on_ready, proc)
            readers.append(fd)

        if mode == "mdns":
            observer = Node(node_id="observer", cluster=cluster, discovery="mdns", bind=host)
        else:
            observer = Node(
                node_id="observer", cluster=cluster, discovery=StaticDiscovery([seed]), bind=host
            )
        await observer.start()

        # Every node must see n ALIVE peers: its n-1 idle peers and the observer.
        target = n
        converged: dict[str, float] = {}
        deadline = t0 + MESH_TIMEOUT
        while time.monotonic() < deadline:
            alive = {
                m.node_id
                for m in observer.members()
                if not m.local and m.status is NodeStatus.ALIVE
            }
            if res.observer_all_s is None and alive >= set(ids):
                res.observer_all_s = time.monotonic() - t0
            asking = [i for i in ids if i not in converged and i in alive]
            replies = await asyncio.gather(
                *(observer.send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in asking),
                return_exceptions=True,
            )
            now = time.monotonic() - t0
            for node_id, reply in zip(asking, replies, strict=True):
                if isinstance(reply, NodeStats) and reply.members.get("alive", 0) >= target:
                    converged[node_id] = now
            if len(converged) == n and res.observer_all_s is not None:
                break
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead:
                raise BenchError(f"{len(dead)} node processes exited early: pids {dead[:5]}")
            await asyncio.sleep(MESH_POLL)
        res.converged = len(converged)
        if ready_at:
            times = sorted(ready_at.values())
            res.ready_p50_s, res.ready_max_s = statistics.median(times), times[-1]
        if converged:
            times = sorted(converged.values())
            res.mesh_first_s, res.mesh_p50_s = times[0], statistics.median(times)
        if len(converged) < n:
            raise BenchError(
                f"only {len(converged)} of {n} nodes saw {target} ALIVE within {MESH_TIMEOUT:.0f} s"
            )
        res.mesh_all_s = max(converged.values())
        print(
            f"idle/{mode}: all {n} nodes see {target} ALIVE after {res.mesh_all_s:.1f} s "
            f"(ready: median {res.ready_p50_s or 0:.1f} s, last {res.ready_max_s or 0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

        await asyncio.sleep(SETTLE)
        pids = [p.pid for p in procs]
        meter = LoadMeter(lambda: [p.pid for p in live if p.poll() is None])
        cpu0 = {pid: proc_cpu_seconds(pid) for pid in pids}
        threads0 = {pid: thread_cpu(pid) for pid in pids}
        own0 = time.process_time()
        w0 = time.monotonic()
        await asyncio.sleep(config.cpu_window)  # the observer only heartbeats meanwhile
        window = time.monotonic() - w0
        cpu1 = {pid: proc_cpu_seconds(pid) for pid in pids}
        threads1 = {pid: thread_cpu(pid) for pid in pids}
        own = time.process_time() - own0
        res.machine_load = meter.stop()
        res.cpu_window_s = window

        pcts = []
        for node_id, proc in zip(ids, procs, strict=True):
            a, b = cpu0[proc.pid], cpu1[proc.pid]
            pct = 100.0 * (b - a) / window if a is not None and b is not None else None
            rss = proc_rss_kib(proc.pid)
            uss = _uss_mib(proc.pid)
            by_thread = {
                kind: 100.0 * (secs - threads0[proc.pid].get(kind, 0.0)) / window
                for kind, secs in threads1[proc.pid].items()
            }
            res.per_node.append(
                {
                    "node_id": node_id,
                    "pid": proc.pid,
                    "cpu_pct": pct,
                    "cpu_pct_by_thread": by_thread,
                    "rss_mib": rss / 1024 if rss is not None else None,
                    "uss_mib": uss,
                }
            )
            if pct is not None:
                pcts.append(pct)
        if pcts:
            res.cpu_pct_median = statistics.median(pcts)
            res.cpu_pct_max, res.cpu_pct_min = max(pcts), min(pcts)
            res.cpu_cores_total = sum(pcts) / 100.0
        res.observer_cpu_pct = 100.0 * own / window
        for kind in ("main", "zmq", "other"):
            values = [p["cpu_pct_by_thread"].get(kind, 0.0) for p in res.per_node]
            res.cpu_pct_by_thread[kind] = sum(values) / len(values) if values else 0.0
        rss_values = [p["rss_mib"] for p in res.per_node if p["rss_mib"] is not None]
        if rss_values:
            res.rss_mib_median, res.rss_mib_max = statistics.median(rss_values), max(rss_values)
        uss_values = [p["uss_mib"] for p in res.per_node if p["uss_mib"] is not None]
        if uss_values:
            res.uss_mib_median = statistics.median(uss_values)

        # Still a full mesh after the window? (a flapping failure detector shows here)
        replies = await asyncio.gather(
            *(observer.send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in ids),
            return_exceptions=True,
        )
        for node_id, reply in zip(ids, replies, strict=True):
            if isinstance(reply, NodeStats):
                for status, count in reply.members.items():
                    res.members_end[status] = res.members_end.get(status, 0) + count
                res.frames_rejected += reply.frames_rejected
                if reply.members.get("alive", 0) < target:
                    res.not_all_alive_end.append(f"{node_id}: {dict(reply.members)}")
            else:
                res.not_all_alive_end.append(f"{node_id}: {type(reply).__name__}: {reply}")
        print(
            f"idle/{mode}: CPU per node median {res.cpu_pct_median:.2f}% "
            f"(max {res.cpu_pct_max:.2f}%), all nodes {res.cpu_cores_total:.2f} cores; "
            f"RSS median {res.rss_mib_median:.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        print(f"idle/{mode}: {res.error}", file=sys.stderr)
    finally:
        for fd in readers:
            loop.remove_reader(fd)
        t_stop = time.monotonic()
        stop_processes(procs, STOP_TIMEOUT)
        res.stop_seconds = time.monotonic() - t_stop
        for p in procs:
            live.remove(p)
        if observer is not None:
            await observer.aclose()
    return res


# --- run and report --------------------------------------------------------------------------


async def run_all(
    config: Config,
    records: dict[tuple[int, int], ScaleRecord],
    idle: list[IdleResult],
    loads: dict[str, dict[str, float]],
    live: list[subprocess.Popen[bytes]],
) -> None:
    if "scale" in config.parts:
        loads["scale"] = await run_scale(config, records, live)
    if "idle" in config.parts:
        for mode in config.discovery:
            idle.append(await run_idle(config, mode, live))


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def format_scale(config: Config, records: dict[tuple[int, int], ScaleRecord]) -> str:
    lines = [
        "| servers | in flight | req/s | vs 1 server | caller CPU (cores) | servers CPU (cores) "
        "| requests per server (min..max) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for in_flight in config.in_flight:
        base = records.get((config.groups[0], in_flight))
        base_rate = base.median("req_s") if base and not base.error else None
        for n in config.groups:
            rec = records[(n, in_flight)]
            if rec.error or not rec.rounds:
                lines.append(
                    f"| {n} | {in_flight} | - | - | - | - | ERROR: {rec.error or 'no rounds'} |"
                )
                continue
            rate = rec.median("req_s")
            last = rec.rounds[-1]["handled"]
            spread = f"{min(last.values()):,}..{max(last.values()):,}" if last else "-"
            lines.append(
                f"| {n} | {in_flight} | {_fmt(rate)} | "
                f"{(rate / base_rate) if rate and base_rate else 0:.2f} | "
                f"{_fmt(rec.median('caller_cores'), 2)} | {_fmt(rec.median('servers_cores'), 2)} | "
                f"{spread} |"
            )
    return "\n".join(lines)


def format_idle(results: list[IdleResult]) -> str:
    lines = [
        "| discovery | nodes | all started (ready line) median / last | first node sees all | "
        "every node sees all | CPU per node median (min..max) | all nodes together | "
        "RSS per node median (max) | USS median | still full mesh after window |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.error and r.mesh_all_s is None:
            lines.append(
                f"| {r.discovery} | {r.nodes} | {_fmt(r.ready_p50_s, 1, ' s')} / "
                f"{_fmt(r.ready_max_s, 1, ' s')} | {_fmt(r.mesh_first_s, 1, ' s')} | "
                f"ERROR: {r.error} | - | - | - | - | - |"
            )
            continue
        mesh_ok = "yes" if not r.not_all_alive_end else f"NO: {len(r.not_all_alive_end)} nodes"
        lines.append(
            f"| {r.discovery} | {r.nodes} | {_fmt(r.ready_p50_s, 1, ' s')} / "
            f"{_fmt(r.ready_max_s, 1, ' s')} | {_fmt(r.mesh_first_s, 1, ' s')} | "
            f"{_fmt(r.mesh_all_s, 1, ' s')} | {_fmt(r.cpu_pct_median, 2, '%')} "
            f"({_fmt(r.cpu_pct_min, 2)}..{_fmt(r.cpu_pct_max, 2)}) | "
            f"{_fmt(r.cpu_cores_total, 2, ' cores')} | {_fmt(r.rss_mib_median, 1, ' MiB')} "
            f"({_fmt(r.rss_mib_max, 1)}) | {_fmt(r.uss_mib_median, 1, ' MiB')} | {mesh_ok} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", default="scale,idle", help="parts: scale,idle")
    parser.add_argument("--rounds", type=int, default=3, help="scale-out: interleaved rounds")
    parser.add_argument("--groups", default="1,2,4", help="scale-out: server counts")
    parser.add_argument("--in-flight", default="64,256", help="scale-out: in-flight levels")
    parser.add_argument(
        "--total", type=int, default=200_000, help="scale-out: requests per run, at most"
    )
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="scale-out: time bound of a run (s)"
    )
    parser.add_argument("--warmup", type=int, default=2_000, help="scale-out: warm-up requests")
    parser.add_argument("--nodes", type=int, default=IDLE_NODES, help="idle: node processes")
    parser.add_argument("--discovery", default="mdns,static", help="idle: mdns,static")
    parser.add_argument("--cpu-window", type=float, default=10.0, help="idle: CPU window (s)")
    parser.add_argument("--host", type=loopback, default="127.0.0.1", help="loopback only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    parser.add_argument("--md", type=Path, metavar="PATH", help="also save the report here")
    args = parser.parse_args(argv)
    parts = tuple(p for p in ("scale", "idle") if p in {x.strip() for x in args.only.split(",")})
    modes = tuple(m for m in DISCOVERY_MODES if m in {x.strip() for x in args.discovery.split(",")})
    try:
        groups = tuple(sorted({int(x) for x in args.groups.split(",") if x.strip()}))
        levels = tuple(sorted({int(x) for x in args.in_flight.split(",") if x.strip()}))
    except ValueError:
        parser.error("--groups and --in-flight take comma-separated integers")
    if not parts or not modes:
        parser.error("--only needs scale and/or idle; --discovery mdns and/or static")
    if (
        not groups
        or groups[0] < 1
        or groups[-1] > 16
        or not levels
        or levels[0] < 1
        or levels[-1] > 4096
    ):
        parser.error("--groups: 1..16 servers; --in-flight: 1..4096")
    if not 1 <= args.rounds <= MAX_ROUNDS or not 2 <= args.nodes <= 64:
        parser.error(f"--rounds 1..{MAX_ROUNDS}; --nodes 2..64")
    if not 0 < args.seconds <= 60 or not 1 <= args.cpu_window <= 120 or args.total < 1:
        parser.error("--seconds in (0, 60], --cpu-window in [1, 120], --total >= 1")
    config = Config(
        parts=parts,
        rounds=args.rounds,
        groups=groups,
        in_flight=levels,
        total=args.total,
        seconds=args.seconds,
        warmup=max(0, args.warmup),
        idle_nodes=args.nodes,
        discovery=modes,
        cpu_window=args.cpu_window,
        host=args.host,
    )
    return config, args.json, args.md


def main(argv: list[str] | None = None) -> int:
    config, json_path, md_path = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, exit_on_signal)
    env = environment()
    env["catga_zmq"] = catga_version()
    records = {(n, f): ScaleRecord(n, f) for n in config.groups for f in config.in_flight}
    idle: list[IdleResult] = []
    loads: dict[str, dict[str, float]] = {}
    live: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        run_uvloop(run_all(config, records, idle, loads, live))
    finally:
        stop_processes(live, STOP_TIMEOUT)  # only what an interrupted run left behind
    elapsed = time.monotonic() - started

    out = ["# catga_zmq with more nodes", ""]
    if "scale" in config.parts:
        out += [
            f"## (a) one caller, 1..{config.groups[-1]} server processes",
            "",
            f"`node.send(Echo(100 bytes))`, round robin, from one caller node to N echo "
            f"server nodes; median of {config.rounds} interleaved rounds, each up to "
            f"{config.total:,} requests or {config.seconds:g} s after {config.warmup:,} "
            "warm-up requests. CPU in cores (1.00 = one core busy) over warm-up + run; "
            "requests per server: handled in the last round (warm-up + run), from each "
            "server's `Stats()`.",
            "",
            format_scale(config, records),
            "",
            format_load(loads.get("scale")),
            "",
        ]
    if "idle" in config.parts:
        out += [
            f"## (b) {config.idle_nodes} idle nodes, default heartbeats (0.5 s)",
            "",
            f"Times from starting the {config.idle_nodes} processes at once; 'sees all' = the "
            f"node's `Stats().members` has {config.idle_nodes} ALIVE peers (its "
            f"{config.idle_nodes - 1} idle peers and the observer that asks). CPU over "
            f"{config.cpu_window:g} s once the mesh formed (% of one core, /proc/<pid>/stat); "
            "RSS = VmRSS; USS = memory unique to the process (psutil).",
            "",
            format_idle(idle),
            "",
        ]
        for r in idle:
            if r.machine_load:
                out.append(f"{r.discovery}: {format_load(r.machine_load)}")
            if r.not_all_alive_end:
                out.append(
                    f"{r.discovery}: not a full mesh after the window: {r.not_all_alive_end[:4]}"
                )
            if r.frames_rejected:
                out.append(f"{r.discovery}: {r.frames_rejected} frames rejected in all")
            if r.cpu_pct_by_thread:
                t = r.cpu_pct_by_thread
                out.append(
                    f"{r.discovery}: CPU per node by thread (mean, % of a core): event loop "
                    f"{t.get('main', 0):.2f}%, libzmq I/O {t.get('zmq', 0):.2f}%, other threads "
                    f"(zeroconf, ...) {t.get('other', 0):.2f}%."
                )
            out.append(
                f"{r.discovery}: spawning took {r.spawn_seconds:.1f} s; stopping all "
                f"{r.nodes} (SIGTERM, drain, BYE) took {r.stop_seconds:.1f} s; the observer "
                f"(this process) used {_fmt(r.observer_cpu_pct, 2, '%')} of a core in the window."
            )
        out.append("")
    out += [format_environment(env), "", f"Wall time of the run: {elapsed:.0f} s."]
    report = "\n".join(out)
    print(report)
    if md_path is not None:
        md_path.write_text(report + "\n", encoding="utf-8")
    if json_path is not None:
        document = {
            "benchmark": "bench_scale",
            "environment": env,
            "config": asdict(config),
            "elapsed_seconds": elapsed,
            "machine_load": loads,
            "scale": [
                {
                    "servers": rec.n,
                    "in_flight": rec.in_flight,
                    "error": rec.error,
                    "median_req_s": rec.median("req_s"),
                    "rounds": rec.rounds,
                }
                for rec in records.values()
            ],
            "idle": [asdict(r) for r in idle],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"results saved to {json_path}", file=sys.stderr)
    failed = any(r.error for r in records.values()) or any(r.error for r in idle)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

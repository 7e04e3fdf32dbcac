"""How catga_zmq behaves with more nodes: scale-out of requests, and 32 idle nodes.

(a) scale-out: one caller node (this process, under uvloop) sends ``Echo`` requests
    (100 bytes, round robin) to 1, 2 and 4 server node processes (``python -m
    catga_zmq.node --app benchmarks._apps:echo``), at 64 and 256 in flight. Each group of
    servers is a cluster of its own, so the groups stay up together and the rounds
    interleave them; the table gives the median of the rounds, the CPU the caller and the
    servers used (in cores: 1.0 is one core busy) and how the servers shared the work
    (requests handled, from each server's ``Stats``).

(b) 32 idle nodes (``benchmarks._apps:idle``: built-ins only, default heartbeats) on
    127.0.0.1, found by mDNS as a user would start them, then by static seeds (the first
    node runs ``--discovery none --port P``, the others ``--seeds``): time from starting the
    processes until every node sees the 32 others ALIVE (its 31 idle peers and the
    observer this benchmark runs to ask them, via each node's ``Stats().members``), then
    each node's CPU share over ``--cpu-window`` seconds and its RSS.

    python benchmarks/bench_scale.py                 # both parts, about 3 minutes
    python benchmarks/bench_scale.py --only idle --discovery static
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply
from benchmarks._common import (
    BenchError,
    ReplyMismatch,
    choices,
    environment,
    fmt,
    int_list,
    log,
    measure_throughput,
    parse,
    parser,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import (
    Child,
    LoadMeter,
    Processes,
    cpu_seconds,
    format_load,
    free_port,
    rss_bytes,
)
from catga_zmq import Node, NodeStats, NodeStatus, StaticDiscovery, Stats

ECHO = "benchmarks._apps:echo"
START_TIMEOUT = 40.0  # s, for a caller to see its servers
MESH_TIMEOUT = 90.0  # s, for 32 nodes to see each other
MESH_POLL = 0.25  # s between two sweeps of Stats requests
STATS_TIMEOUT = 2.0  # s, one Stats request
SETTLE = 2.0  # s after the mesh formed, before the CPU window


# --- (a) scale-out ----------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    n: int
    servers: list[Child]
    ids: list[str]
    caller: Node
    rounds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # by in-flight
    error: str | None = None


async def open_group(n: int, procs: Processes, host: str) -> Group:
    cluster, ids = f"bench-scale-{os.getpid()}-n{n}", [f"srv-{n}-{i}" for i in range(n)]
    ports = [free_port(host) for _ in ids]
    servers = [
        procs.node(i, ECHO, cluster=cluster, bind=host, port=port, discovery="none")
        for i, port in zip(ids, ports, strict=True)
    ]
    endpoints = [f"tcp://{host}:{port}" for port in ports]
    caller = Node(f"caller-{n}", cluster, discovery=StaticDiscovery(endpoints))
    return Group(n, servers, ids, caller)


async def handled(group: Group) -> dict[str, int]:
    send = group.caller.send
    replies = await asyncio.gather(
        *(send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in group.ids)
    )
    return {r.node_id: r.requests_handled for r in replies}


async def measure_group(group: Group, in_flight: int, a: Any) -> dict[str, Any]:
    send = group.caller.send

    async def call(payload: bytes) -> bytes:
        reply = await send(Echo(data=payload))
        if type(reply) is not EchoReply:
            raise ReplyMismatch(f"expected EchoReply, got {type(reply).__name__}")
        return reply.data

    pids = [s.pid for s in group.servers]
    before = await handled(group)
    cpu0, srv0, t0 = time.process_time(), sum(cpu_seconds(p) or 0.0 for p in pids), time.monotonic()
    result = await measure_throughput(
        call, in_flight=in_flight, total=a.total, max_seconds=a.seconds, warmup=a.warmup
    )
    wall = time.monotonic() - t0
    caller_cpu, srv = time.process_time() - cpu0, sum(cpu_seconds(p) or 0.0 for p in pids) - srv0
    after = await handled(group)
    return {
        **result,
        # CPU over the warm-up and the measured run together (both at this level).
        "caller_cores": caller_cpu / wall,
        "servers_cores": srv / wall,
        "handled": {i: after[i] - before[i] for i in group.ids},
    }


async def run_scale(a: Any, groups: list[Group]) -> dict[str, float]:
    with Processes() as procs:
        meter = LoadMeter(procs.pids)
        try:
            for n in a.groups:
                groups.append(await open_group(n, procs, a.host))
            for group in groups:
                try:
                    await group.caller.start()
                    await group.caller.wait_for_peers(group.n, timeout=START_TIMEOUT, handles=Echo)
                except Exception as exc:
                    dead = [s.pid for s in group.servers if not s.alive()]
                    group.error = f"setup: {exc} (exited: {dead})"
            for round_no in range(1, a.rounds + 1):
                k = (round_no - 1) % len(groups)
                for group in groups[k:] + groups[:k]:  # rotate: no group always goes first
                    for n in a.in_flight:
                        if group.error is not None:
                            break
                        try:
                            r = await measure_group(group, n, a)
                        except Exception as exc:
                            group.error = f"round {round_no}: {type(exc).__name__}: {exc}"
                            break
                        group.rounds.setdefault(n, []).append(r)
                        log(
                            f"round {round_no}/{a.rounds} servers {group.n} @{n:<3} "
                            f"{r['req_s']:9,.0f} req/s  caller {r['caller_cores']:.2f} cores  "
                            f"servers {r['servers_cores']:.2f} cores  "
                            f"handled {list(r['handled'].values())}"
                        )
            return meter.stop()
        finally:
            for group in groups:
                await group.caller.aclose()


def format_scale(a: Any, groups: list[Group]) -> str:
    def med(rounds: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    rows = []
    for n in a.in_flight:
        base = groups[0].rounds.get(n) if groups else None
        for g in groups:
            rounds = g.rounds.get(n)
            if not rounds:
                rows.append([g.n, n, "-", "-", "-", "-", f"ERROR: {g.error or 'no rounds'}"])
                continue
            last = rounds[-1]["handled"]
            rows.append(
                [
                    g.n,
                    n,
                    fmt(med(rounds, "req_s")),
                    f"{med(rounds, 'req_s') / med(base, 'req_s'):.2f}" if base else "-",
                    fmt(med(rounds, "caller_cores"), 2),
                    fmt(med(rounds, "servers_cores"), 2),
                    f"{min(last.values()):,}..{max(last.values()):,}",
                ]
            )
    head = ["servers", "in flight", "req/s", "vs 1 server", "caller CPU (cores)"]
    head += ["servers CPU (cores)", "requests per server (min..max)"]
    return table(head, rows, left=0)


# --- (b) 32 idle nodes ------------------------------------------------------------------------


async def run_idle(a: Any, mode: str) -> dict[str, Any]:
    n, host = a.nodes, a.host
    res: dict[str, Any] = {"discovery": mode, "nodes": n, "error": None}
    cluster, ids = f"bench-idle-{os.getpid()}-{mode}", [f"idle-{i:02d}" for i in range(n)]
    seed_port = free_port(host)
    seed = f"tcp://{host}:{seed_port}"
    observer = Node(
        "observer",
        cluster,
        bind=host,
        discovery="mdns" if mode == "mdns" else StaticDiscovery([seed]),
    )
    readiness: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
    with Processes() as procs:
        try:
            t0 = time.monotonic()
            for i, node_id in enumerate(ids):
                kw: dict[str, Any] = {"discovery": "mdns"}
                if mode == "static":
                    kw = {"discovery": "none", "port": seed_port} if i == 0 else {"seeds": [seed]}
                procs.node(node_id, "benchmarks._apps:idle", cluster=cluster, bind=host, **kw)
            res["spawn_s"] = time.monotonic() - t0
            await observer.start()

            async def ready(child: Child) -> float:
                await child.readline_async(MESH_TIMEOUT)
                return time.monotonic() - t0

            readiness = asyncio.ensure_future(asyncio.gather(*(ready(c) for c in procs.children)))
            converged: dict[str, float] = {}  # node -> when it saw n ALIVE (peers + observer)
            while time.monotonic() < t0 + MESH_TIMEOUT and len(converged) < n:
                alive = {m.node_id for m in observer.members() if m.status is NodeStatus.ALIVE}
                asking = [i for i in ids if i not in converged and i in alive]
                replies = await asyncio.gather(
                    *(observer.send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in asking),
                    return_exceptions=True,
                )
                for node_id, reply in zip(asking, replies, strict=True):
                    if isinstance(reply, NodeStats) and reply.members.get("alive", 0) >= n:
                        converged[node_id] = time.monotonic() - t0
                if dead := [c.pid for c in procs.children if not c.alive()]:
                    raise BenchError(f"{len(dead)} node processes exited early: {dead[:5]}")
                await asyncio.sleep(MESH_POLL)
            times = sorted(await readiness)
            res.update(ready_p50_s=statistics.median(times), ready_max_s=times[-1])
            if len(converged) < n:
                raise BenchError(f"only {len(converged)} of {n} nodes saw {n} ALIVE")
            res["mesh_all_s"] = max(converged.values())
            log(f"idle/{mode}: all {n} see {n} ALIVE after {res['mesh_all_s']:.1f} s")

            await asyncio.sleep(SETTLE)
            pids = procs.pids()
            meter = LoadMeter(procs.pids)
            cpu0, w0 = {p: cpu_seconds(p) or 0.0 for p in pids}, time.monotonic()
            await asyncio.sleep(a.cpu_window)  # the observer only heartbeats meanwhile
            window = time.monotonic() - w0
            pcts = [100.0 * ((cpu_seconds(p) or 0.0) - cpu0[p]) / window for p in pids]
            rss = [(rss_bytes(p) or 0) / 2**20 for p in pids]
            res.update(machine_load=meter.stop(), cpu_window_s=window, cpu_pct=pcts, rss_mib=rss)
            # Still a full mesh after the window? (a flapping failure detector shows here)
            replies = await asyncio.gather(
                *(observer.send(Stats(), node=i, timeout=STATS_TIMEOUT) for i in ids),
                return_exceptions=True,
            )
            res["not_full_mesh_after"] = [
                f"{i}: {r.members if isinstance(r, NodeStats) else repr(r)}"
                for i, r in zip(ids, replies, strict=True)
                if not isinstance(r, NodeStats) or r.members.get("alive", 0) < n
            ]
        except Exception as exc:
            res["error"] = f"{type(exc).__name__}: {exc}"
            log(f"idle/{mode}: {res['error']}")
        finally:
            readiness.cancel()  # its readers go before the pipes close
            await asyncio.gather(readiness, return_exceptions=True)
            t = time.monotonic()
            procs.stop()
            res["stop_s"] = time.monotonic() - t
            await observer.aclose()
    return res


def format_idle(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if "cpu_pct" not in r:
            rows.append([r["discovery"], r["nodes"], *["-"] * 5, f"ERROR: {r['error']}"])
            continue
        pct, rss = r["cpu_pct"], r["rss_mib"]
        rows.append(
            [
                r["discovery"],
                r["nodes"],
                f"{r['ready_p50_s']:.1f} / {r['ready_max_s']:.1f} s",
                f"{r['mesh_all_s']:.1f} s",
                f"{statistics.median(pct):.2f}% ({min(pct):.2f}..{max(pct):.2f})",
                f"{sum(pct) / 100:.2f} cores",
                f"{statistics.median(rss):.1f} MiB ({max(rss):.1f})",
                "yes" if not r["not_full_mesh_after"] else f"NO: {r['not_full_mesh_after'][:3]}",
            ]
        )
    head = ["discovery", "nodes", "ready line median / last", "every node sees all"]
    head += ["CPU per node median (min..max)", "all nodes together", "RSS per node median (max)"]
    return table([*head, "still full mesh after window"], rows)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, rounds=3, seconds=1.5, in_flight=(64, 256))
    p.add_argument("--only", type=choices(("scale", "idle")), default=("scale", "idle"))
    p.add_argument("--groups", type=int_list, default=(1, 2, 4), help="scale: server counts")
    p.add_argument("--total", type=int, default=200_000, help="scale: requests per run, at most")
    p.add_argument("--warmup", type=int, default=2_000, help="scale: warm-up requests")
    p.add_argument("--nodes", type=int, default=32, help="idle: node processes")
    p.add_argument("--discovery", type=choices(("mdns", "static")), default=("mdns", "static"))
    p.add_argument("--cpu-window", type=float, default=10.0, help="idle: CPU window (s)")
    a = parse(p, argv)
    env = environment()
    groups: list[Group] = []
    idle: list[dict[str, Any]] = []
    load: dict[str, Any] = {}

    async def run_all() -> None:
        if "scale" in a.only:
            load["scale"] = await run_scale(a, groups)
        for mode in a.discovery if "idle" in a.only else ():
            idle.append(await run_idle(a, mode))

    run_uvloop(run_all())
    out = []
    if "scale" in a.only:
        out += [
            f"## (a) one caller, 1..{a.groups[-1]} server processes\n",
            f"`node.send(Echo(100 bytes))`, round robin, from one caller node to N echo server "
            f"nodes; median of {a.rounds} interleaved rounds, each up to {a.total:,} requests "
            f"or {a.seconds:g} s after {a.warmup:,} warm-up requests. CPU in cores (1.00 = one "
            "core busy) over warm-up + run; requests per server: handled in the last round "
            "(warm-up + run), from each server's `Stats()`.\n",
            format_scale(a, groups),
            "",
            format_load(load["scale"]),
            "",
        ]
    if "idle" in a.only:
        out += [
            f"## (b) {a.nodes} idle nodes, default heartbeats\n",
            f"Times from starting the {a.nodes} processes at once; 'sees all' = the node's "
            f"`Stats().members` has {a.nodes} ALIVE ({a.nodes - 1} idle peers and the observer "
            f"that asks). CPU over {a.cpu_window:g} s once the mesh formed (% of one core, "
            "/proc/<pid>/stat); RSS = VmRSS.\n",
            format_idle(idle),
            "",
            *(
                f"{r['discovery']}: {format_load(r.get('machine_load'))} Stopping all took "
                f"{r['stop_s']:.1f} s."
                for r in idle
            ),
        ]
    results = {
        "config": vars(a),
        "machine_load": load,
        "idle": idle,
        "scale": [{"servers": g.n, "error": g.error, "rounds": g.rounds} for g in groups],
    }
    report("bench_scale", "catga_zmq with more nodes", env, "\n".join(out), a.out, results)
    return 1 if any(g.error for g in groups) or any(r["error"] for r in idle) else 0


if __name__ == "__main__":
    run_script(main)

"""``node.send()`` against raw pyzmq and peer RPC stacks, in one interleaved run.

Stacks (each server in its own process on 127.0.0.1; clients in this process under
uvloop, except zerorpc's gevent client, a process of its own):

- ``raw``      ROUTER/DEALER driven by ``loop.add_reader(FD)`` (``raw_echo.py``): the limit;
- ``asyncio``  the same over ``zmq.asyncio`` (``raw_echo.py``);
- ``node``     ``node.send(Echo(...))`` to a node run by ``python -m catga_zmq.node --app
               benchmarks._apps:echo``, from a client node here;
- ``nats``, ``grpc``, ``zerorpc``: nats-py via nats-server, grpc.aio, zerorpc (``peers.py``).

Every request carries the same 100-byte payload in the msgpack envelope of ``_common.py``,
and every reply is checked: a wrong reply makes the stack an error, never a figure. Each
round measures every stack in turn (the order rotates by one each round): sequential
latency (p50/p99 and more), then throughput at each in-flight level. The tables give the
medians of the rounds; with ``--out`` (default ``benchmarks/results/``), a markdown
report, JSON and two PNG charts.

    benchmarks/run.sh                        # installs what is missing, then runs this
    python benchmarks/bench_all.py           # full run (about 5 minutes on 2 cores)
    python benchmarks/bench_all.py --quick   # a short smoke run (about 1 minute)
    python benchmarks/bench_all.py --send    # node.send() vs raw and zmq.asyncio at 64 in
                                             # flight, 3 s runs (what bench_send.py was)
    python benchmarks/bench_all.py --only raw,node,nats --rounds 5
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import peers
from benchmarks._common import (
    PERCENTILES,
    RESULTS_DIR,
    BenchError,
    Call,
    ReplyMismatch,
    choices,
    environment,
    fmt,
    log,
    measure_latency,
    measure_throughput,
    parse,
    parser,
    pkey,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Child, LoadMeter, Processes, cpu_seconds, format_load, free_port

ECHO = "benchmarks._apps:echo"
STACKS = ("raw", "asyncio", "node", "nats", "grpc", "zerorpc")
BASELINE, NODE = "raw", "node"
LABELS = {
    "raw": "raw add_reader (limit)",
    "asyncio": "zmq.asyncio",
    "node": "node.send()",
    "nats": "nats-py via nats-server",
    "grpc": "grpc.aio unary",
    "zerorpc": "zerorpc (gevent)",
}
COLORS = {"raw": "#444444", "asyncio": "#1f77b4", "node": "#d62728", "nats": "#2ca02c"}
COLORS.update(grpc="#9467bd", zerorpc="#ff7f0e")
CPU_IN_FLIGHT = 64  # the in-flight level whose CPU cost per request goes in the table
PEER_DISTS = ("nats-py", "grpcio", "zerorpc", "gevent", "msgpack", "matplotlib")
# Defaults of each mode; any flag given overrides its mode's value.
MODES: dict[str, dict[str, Any]] = {
    "full": dict(rounds=5, seconds=1.5, in_flight=(1, 16, 64, 256), only=STACKS),
    "quick": dict(rounds=3, seconds=0.4, in_flight=(1, 16, 64, 256), only=STACKS),
    "send": dict(rounds=5, seconds=3.0, in_flight=(64,), only=("raw", "asyncio", "node")),
}
MODES["full"].update(latency_count=5_000, latency_warmup=500, total=200_000, warmup=2_000)
MODES["quick"].update(latency_count=1_000, latency_warmup=200, total=50_000, warmup=500)
MODES["send"].update(latency_count=5_000, latency_warmup=500, total=200_000, warmup=2_000)


def parse_args(argv: list[str] | None) -> Any:
    given = sys.argv[1:] if argv is None else argv
    mode = "quick" if "--quick" in given else "send" if "--send" in given else "full"
    d = MODES[mode]
    p = parser(__doc__, rounds=d["rounds"], seconds=d["seconds"], in_flight=d["in_flight"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="short smoke run (about 1 minute)")
    group.add_argument("--send", action="store_true", help="node vs raw and asyncio at 64")
    p.add_argument("--only", type=choices(STACKS), default=d["only"], metavar=",".join(STACKS))
    p.add_argument("--latency-count", type=int, default=d["latency_count"], help="at most")
    p.add_argument("--latency-warmup", type=int, default=d["latency_warmup"])
    p.add_argument("--latency-seconds", type=float, default=d["seconds"], help="time bound, s")
    p.add_argument("--total", type=int, default=d["total"], help="requests per run, at most")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="warm-up requests per run")
    p.add_argument("--nats-server", help="nats-server binary (default: from PATH)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.set_defaults(out=RESULTS_DIR, no_charts=mode == "send")  # one level: nothing to draw
    args = parse(p, argv)
    args.mode = mode
    args.name = {"full": "bench_all", "quick": "bench_all_quick", "send": "bench_send"}[mode]
    if min(args.latency_count, args.total) < 1 or min(args.latency_warmup, args.warmup) < 0:
        p.error("counts must be >= 1 (warm-ups >= 0)")
    return args


# --- stacks -------------------------------------------------------------------------------


@dataclass(slots=True)
class Stack:
    """One stack: its server processes (their CPU is counted), its client, its rounds."""

    name: str
    address: str = ""
    servers: list[Child] = field(default_factory=list)
    call: Call | None = None
    driver: peers.ZerorpcDriver | None = None  # zerorpc: the measuring client process
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def server_cpu(self) -> float:
        return sum(cpu_seconds(s.pid) or 0.0 for s in self.servers)

    async def latency(self, a: Any) -> dict[str, float]:
        if self.driver is not None:
            return await self.driver.latency(a.latency_count, a.latency_warmup, a.latency_seconds)
        assert self.call is not None
        return await measure_latency(
            self.call,
            count=a.latency_count,
            warmup=a.latency_warmup,
            max_seconds=a.latency_seconds,
        )

    async def throughput(self, a: Any, n: int) -> dict[str, float]:
        if self.driver is not None:
            return await self.driver.throughput(n, a.total, a.seconds, a.warmup)
        assert self.call is not None
        return await measure_throughput(
            self.call, in_flight=n, total=a.total, max_seconds=a.seconds, warmup=a.warmup
        )


def start_server(stack: Stack, a: Any, procs: Processes, env: dict[str, str], tmp: str) -> None:
    """The stack's server processes; returns once each has said it is ready."""
    host, here = a.host, Path(__file__).resolve().parent
    if stack.name in ("raw", "asyncio"):
        child = procs.script(stack.name, here / "raw_echo.py", "serve", stack.name, "--host", host)
        stack.servers, stack.address = [child], child.wait_ready().split()[1]
    elif stack.name == "node":
        port = free_port(host)
        cluster = f"bench-all-{os.getpid()}"
        child = procs.node("srv", ECHO, cluster=cluster, bind=host, port=port, discovery="none")
        child.wait_ready("ready")
        stack.servers, stack.address = [child], f"tcp://{host}:{port}"
    elif stack.name == "nats":
        binary = peers.find_nats_server(a.nats_server)
        if binary is None:
            raise BenchError("nats-server not found (benchmarks/run.sh installs it with apt)")
        env["nats-server"] = peers.nats_server_version(binary)
        server, stack.address = peers.start_nats_server(procs, binary, host, tmp)
        responder = procs.script(
            "nats responder", here / "peers.py", "serve", "nats", "--url", stack.address
        )
        responder.wait_ready()
        stack.servers = [server, responder]
    else:
        child = procs.script(stack.name, here / "peers.py", "serve", stack.name, "--host", host)
        stack.servers, stack.address = [child], child.wait_ready().split()[1]
        if stack.name == "zerorpc":
            stack.driver = peers.ZerorpcDriver(procs, stack.address)


@asynccontextmanager
async def open_node(stack: Stack) -> AsyncIterator[Call]:
    """A client node that sees the server node; yields ``call(payload)``."""
    from benchmarks._apps import Echo, EchoReply
    from catga_zmq import Node, StaticDiscovery

    cluster = f"bench-all-{os.getpid()}"
    async with Node(
        node_id="bench-cli", cluster=cluster, discovery=StaticDiscovery([stack.address])
    ) as client:
        try:
            await client.wait_for_peers(1, timeout=10.0, handles=Echo)
        except Exception as exc:
            status = stack.servers[0].popen.poll()
            raise BenchError(f"node server at {stack.address} (status {status}): {exc}") from exc
        send = client.send

        async def call(payload: bytes) -> bytes:
            reply = await send(Echo(data=payload))
            if type(reply) is not EchoReply:
                raise ReplyMismatch(f"node: expected EchoReply, got {type(reply).__name__}")
            return reply.data

        yield call


async def open_client(stack: Stack, exits: AsyncExitStack) -> None:
    from benchmarks.raw_echo import open_client as open_raw

    if stack.name in ("raw", "asyncio"):
        stack.call = await exits.enter_async_context(open_raw(stack.name, stack.address))
    elif stack.name == "node":
        stack.call = await exits.enter_async_context(open_node(stack))
    elif stack.name == "nats":
        stack.call = await exits.enter_async_context(peers.open_nats(stack.address))
    elif stack.name == "grpc":
        stack.call = await exits.enter_async_context(peers.open_grpc(stack.address))


async def measure(stack: Stack, a: Any, round_no: int) -> dict[str, Any]:
    """Latency, then throughput at each level; CPU per request of client and servers."""

    def per_request(result: dict[str, float], cpu0: float) -> dict[str, float]:
        count = result["count"] or 1.0
        result["server_cpu_us_per_req"] = (stack.server_cpu() - cpu0) / count * 1e6
        result["client_cpu_us_per_req"] = result.pop("client_cpu_s") / count * 1e6
        return result

    cpu0 = stack.server_cpu()
    lat = per_request(await stack.latency(a), cpu0)
    thr = {}
    for n in a.in_flight:
        cpu0 = stack.server_cpu()
        thr[str(n)] = per_request(await stack.throughput(a, n), cpu0)
    rates = "  ".join(f"@{n} {thr[str(n)]['req_s']:,.0f}" for n in a.in_flight)
    log(
        f"round {round_no}/{a.rounds} {stack.name:<8} p50 {lat['p50_us']:6.0f} µs  p99 "
        f"{lat['p99_us']:6.0f} µs  req/s {rates}"
    )
    return {"latency": lat, "throughput": thr}


async def run_rounds(a: Any, stacks: list[Stack]) -> None:
    async with AsyncExitStack() as exits:
        for stack in (s for s in stacks if s.error is None):
            try:
                await open_client(stack, exits)
            except Exception as exc:
                stack.error = f"setup: {exc}"
        live = [s for s in stacks if s.error is None]
        for round_no in range(1, a.rounds + 1):
            # Rotate the order each round so no stack always runs first or after another.
            shift = (round_no - 1) % max(1, len(live))
            for stack in live[shift:] + live[:shift]:
                if stack.error is not None:
                    continue
                try:
                    stack.rounds.append(await measure(stack, a, round_no))
                except Exception as exc:  # a wrong reply or a failure: an error, no figure
                    stack.error = f"round {round_no}: {type(exc).__name__}: {exc}"
                    log(f"{stack.name}: {stack.error}")


# --- summary and report -----------------------------------------------------------------------


def summarize(stack: Stack, a: Any) -> dict[str, Any] | None:
    """Medians over rounds, and the spread of req/s: (max - min) / median."""
    if stack.error is not None or not stack.rounds:
        return None
    rounds = stack.rounds
    cpu = ("server_cpu_us_per_req", "client_cpu_us_per_req")
    keys = [f"{pkey(p)}_us" for p in PERCENTILES] + ["mean_us", "max_us", *cpu]
    latency = {k: statistics.median(r["latency"][k] for r in rounds) for k in keys}
    throughput = {}
    for n in map(str, a.in_flight):
        runs = [r["throughput"][n] for r in rounds]
        rates = [t["req_s"] for t in runs]
        mid = statistics.median(rates)
        throughput[n] = {
            "req_s": mid,
            "req_s_min": min(rates),
            "req_s_max": max(rates),
            "spread": (max(rates) - min(rates)) / mid if mid else 0.0,
            **{k: statistics.median(t[k] for t in runs) for k in cpu},
        }
    return {"rounds": len(rounds), "latency": latency, "throughput": throughput}


def format_tables(a: Any, stacks: list[Stack], summary: dict[str, Any]) -> str:
    levels = a.in_flight
    cpu_level = str(CPU_IN_FLIGHT if CPU_IN_FLIGHT in levels else levels[-1])
    ok = [s.name for s in stacks if summary[s.name] is not None]

    def lat(stack: str, key: str) -> float:
        return float(summary[stack]["latency"][key])

    def rate(stack: str, n: int) -> float:
        return float(summary[stack]["throughput"][str(n)]["req_s"])

    def ratio(num: str, den: str, label: str) -> list[str]:
        cells = [f"{lat(num, k) / lat(den, k):.2f}" for k in ("p50_us", "p99_us")]
        return [LABELS[label], *cells] + [
            f"{rate(num, n) / rate(den, n):.2f}" if rate(den, n) else "-" for n in levels
        ]

    rows = []
    for s in stacks:
        if s.name not in ok:
            rows.append([LABELS[s.name], *["-"] * (len(levels) + 3), f"ERROR: {s.error}"])
            continue
        t = summary[s.name]["throughput"]
        cpu = t[cpu_level]
        rows.append(
            [
                LABELS[s.name],
                fmt(lat(s.name, "p50_us")),
                fmt(lat(s.name, "p99_us")),
                *(fmt(rate(s.name, n)) for n in levels),
                f"{cpu['client_cpu_us_per_req']:.0f} + {cpu['server_cpu_us_per_req']:.0f}",
                f"{max(v['spread'] for v in t.values()) * 100:.0f}%",
            ]
        )
    head = ["stack", "p50 µs", "p99 µs", *(f"req/s @{n}" for n in levels)]
    out = [table([*head, f"CPU µs/req @{cpu_level} (client+server)", "req/s spread"], rows)]
    out.append(
        f"\nAgainst the add_reader limit (`{BASELINE}`): latency as stack / raw (1.00 = as "
        "fast, higher = slower); throughput as stack / raw (1.00 = the limit, lower = slower).\n"
    )
    head = ["stack", "p50 / raw", "p99 / raw", *(f"req/s / raw @{n}" for n in levels)]
    out.append(table(head, [ratio(s, BASELINE, s) for s in ok if BASELINE in ok]))
    if NODE in ok:
        out.append(
            "\n`node.send()` against each other stack: latency as node / peer (below 1.00 = "
            "node answers sooner); throughput as node / peer (above 1.00 = node serves more).\n"
        )
        head = ["peer", "p50 node / peer", "p99 node / peer"]
        head += [f"req/s node / peer @{n}" for n in levels]
        out.append(table(head, [ratio(NODE, peer, peer) for peer in ok if peer != NODE]))
    return "\n".join(out)


def write_charts(a: Any, summary: dict[str, Any], env: dict[str, str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in a.only if summary.get(s) is not None]
    footer = "\n".join(
        textwrap.shorten(line, 160, placeholder=" ...")
        for line in (
            f"{env['machine']}; {env['os']}; {env['python']}",
            ", ".join(f"{k} {env[k]}" for k in ("pyzmq", "uvloop", *PEER_DISTS[:4]) if k in env),
            f"{env['date']} git {env['git']}: {env.get('launcher') or env['command']}",
        )
    )

    def style(stack: str) -> dict[str, Any]:
        return dict(
            color=COLORS[stack],
            label=LABELS[stack],
            marker="o",
            linestyle="--" if stack == BASELINE else "-",
            linewidth=2.5 if stack == NODE else 1.5,
        )

    def save(fig: Any, ax: Any, title: str, suffix: str) -> Path:
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
        fig.text(0.01, 0.01, footer, fontsize=6.5, family="monospace", va="bottom")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = a.out / f"{a.name}_{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [-math.log10(1 - p / 100.0) for p in PERCENTILES]  # spaced by "nines"
    for stack in shown:
        ax.plot(
            xs, [summary[stack]["latency"][f"{pkey(p)}_us"] for p in PERCENTILES], **style(stack)
        )
    ax.set_xticks(xs, [pkey(p) for p in PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("round-trip latency, µs (log scale)")
    ax.set_xlabel("percentile (sequential round trips, one in flight)")
    paths = [
        save(
            fig, ax, f"Latency percentiles, 100-byte echo (median of {a.rounds} rounds)", "latency"
        )
    ]

    fig, ax = plt.subplots(figsize=(9, 6))
    levels = list(a.in_flight)
    for stack in shown:
        thr = [summary[stack]["throughput"][str(n)] for n in levels]
        ys = [t["req_s"] for t in thr]
        err = [
            [t["req_s"] - t["req_s_min"] for t in thr],
            [t["req_s_max"] - t["req_s"] for t in thr],
        ]
        ax.errorbar(levels, ys, yerr=err, capsize=3, **style(stack))
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("requests per second (median; bars: min-max of rounds)")
    paths.append(save(fig, ax, "Throughput vs in-flight requests, 100-byte echo", "throughput"))
    return paths


NOTES = """\
Notes:
- Servers each run in their own process; clients share this process (uvloop), one
  connection each, all open during the whole run. zerorpc's client is a gevent process
  of its own, measuring with the same rules; its in-flight requests are greenlets of a
  gevent.pool.Pool sharing one zerorpc.Client (zerorpc defaults: 5 s heartbeat).
- nats: each round trip goes client -> nats-server -> responder -> nats-server -> client
  (two hops through the broker, as any NATS request does); nats-server 2.x started here.
- grpc: grpc.aio generic handler on raw bytes (no protobuf), plaintext HTTP/2, one channel.
- All processes share the machine's cores: with 2 cores, client and server (and
  nats-server) compete, so throughput is bounded by the sum of their CPU per request."""


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    env = environment(*(PEER_DISTS if set(a.only) - {"raw", "asyncio", "node"} else ()))
    if os.getloadavg()[0] > 0.5:
        log(
            f"warning: load average {os.getloadavg()[0]:.2f} before the run: other work "
            "will lower and scatter the figures (the report says how much)"
        )
    log(
        f"{a.name}: {', '.join(a.only)}; {a.rounds} rounds; in flight "
        f"{','.join(map(str, a.in_flight))}"
    )
    stacks = [Stack(name) for name in a.only]
    with Processes() as procs, ExitStack() as exits:
        tmp = exits.enter_context(tempfile.TemporaryDirectory(prefix="bench-all-"))
        for stack in stacks:
            try:
                start_server(stack, a, procs, env, tmp)
            except Exception as exc:
                stack.error = f"server: {exc}"
                log(f"{stack.name}: server failed to start: {exc!r}")
        meter = LoadMeter(procs.pids)
        run_uvloop(run_rounds(a, stacks))
        load = meter.stop()

    summary = {s.name: summarize(s, a) for s in stacks}
    charts: list[Path] = []
    if a.out is not None and not a.no_charts and any(summary.values()):
        a.out.mkdir(parents=True, exist_ok=True)
        try:
            charts = write_charts(a, summary, env)
        except Exception as exc:  # charts are an extra: the figures stand without them
            log(f"charts failed: {exc!r}")
    body = (
        f"100-byte payload in a msgpack envelope, echoed; median of {a.rounds} interleaved "
        f"rounds (order rotating). Latency: up to {a.latency_count:,} sequential round trips "
        f"or {a.latency_seconds:g} s per round. Throughput: req/s with N requests in flight, "
        f"up to {a.total:,} requests or {a.seconds:g} s per run after {a.warmup:,} warm-up "
        "requests. CPU: client and server process CPU time per request (user+system, all "
        "threads; nats: nats-server + responder). Spread: largest (max - min) / median of "
        "req/s across rounds.\n\n"
        + format_tables(a, stacks, summary)
        + "\n\n"
        + "".join(f"![{p.stem}]({p.name})\n" for p in charts)
        + f"\nWall time of the measurements: {load['seconds']:.0f} s. {format_load(load)}\n\n"
        + NOTES
    )
    title = {"full": "node.send() vs raw pyzmq and peer stacks", "send": "node.send() vs raw pyzmq"}
    title["quick"] = title["full"] + " (quick run)"
    results = {
        "config": vars(a),
        "machine_load": load,
        "stacks": {
            s.name: {
                "label": LABELS[s.name],
                "error": s.error,
                "median": summary[s.name],
                "rounds": s.rounds,
            }
            for s in stacks
        },
    }
    report(a.name, title[a.mode], env, body, a.out, results)
    return 1 if any(s.error for s in stacks) else 0


if __name__ == "__main__":
    run_script(main)

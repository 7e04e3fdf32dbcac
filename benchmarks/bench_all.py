"""``node.send()`` against raw pyzmq and peer RPC stacks, in one interleaved run.

Stacks (each server in its own process on 127.0.0.1; clients in this process under
uvloop, except zerorpc whose gevent client is a process of its own):

- ``raw``      ROUTER/DEALER driven by ``loop.add_reader(FD)`` (``raw_echo.py``): the limit;
- ``asyncio``  the same over ``zmq.asyncio`` (``raw_echo.py``);
- ``node``     ``node.send(Echo(...))`` to a node started with ``python -m catga_zmq.node``
               (``bench_send.py``'s functions);
- ``nats``     nats-py ``request()`` through a local ``nats-server`` (started here on a
               random port, stopped after) to a nats-py responder process;
- ``grpc``     ``grpc.aio`` unary call to a ``grpc.aio`` server, generic bytes handler;
- ``zerorpc``  zerorpc (gevent) client process to a zerorpc server process.

Every request carries the same 100-byte payload in the msgpack envelope of
``_common.py`` (two frames for raw/asyncio/node, one ``[header, payload]`` body for the
peers, see ``peers/_frame.py``), and every reply is checked: a wrong reply makes the
stack an error, never a figure. Each round measures every stack in turn (the order
rotates by one each round), each for: sequential latency (p50/p99 and more), then
throughput at each in-flight level (1, 16, 64, 256). The tables give the medians of the
rounds. Results: a markdown report, JSON and two PNG charts in ``benchmarks/results/``.

    benchmarks/run.sh                      # installs what is missing, then runs this
    python benchmarks/bench_all.py         # full run (about 5 minutes on 2 cores)
    python benchmarks/bench_all.py --quick # a short smoke run (about 1 minute)
    python benchmarks/bench_all.py --only raw,node,nats --rounds 5
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO_ROOT,
    BenchError,
    Call,
    _dist_version,
    environment,
    format_environment,
    measure_throughput,
    run_uvloop,
    sample_latency,
)
from benchmarks.peers._measure import PERCENTILES, pkey, summarize_latency

STACKS = ("raw", "asyncio", "node", "nats", "grpc", "zerorpc")
BASELINE = "raw"
NODE = "node"
PEERS = ("asyncio", "nats", "grpc", "zerorpc")  # node is compared with each of these (and raw)
LABELS = {
    "raw": "raw add_reader (limit)",
    "asyncio": "zmq.asyncio",
    "node": "node.send()",
    "nats": "nats-py via nats-server",
    "grpc": "grpc.aio unary",
    "zerorpc": "zerorpc (gevent)",
}
COLORS = {
    "raw": "#444444",
    "asyncio": "#1f77b4",
    "node": "#d62728",
    "nats": "#2ca02c",
    "grpc": "#9467bd",
    "zerorpc": "#ff7f0e",
}
DEFAULT_IN_FLIGHT = (1, 16, 64, 256)
CPU_IN_FLIGHT = 64  # the in-flight level whose CPU cost per request goes in the table
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MAX_ROUNDS = 50
MAX_IN_FLIGHT = 4096


# --- configuration ------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    stacks: tuple[str, ...]
    rounds: int
    in_flight: tuple[int, ...]
    latency_count: int  # sequential round trips per round, at most
    latency_warmup: int
    latency_seconds: float  # time bound of one latency run
    total: int  # requests per throughput run, at most
    warmup: int  # warm-up requests before each throughput run
    seconds: float  # time bound of one throughput run
    host: str
    quick: bool
    out_dir: str
    prefix: str
    nats_server: str | None
    charts: bool


def _parse_stacks(value: str) -> tuple[str, ...]:
    chosen = {s.strip() for s in value.split(",") if s.strip()}
    unknown = chosen - set(STACKS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown stacks {sorted(unknown)}; choose from {','.join(STACKS)}"
        )
    return tuple(s for s in STACKS if s in chosen)  # fixed order, baseline first


def _parse_in_flight(value: str) -> tuple[int, ...]:
    try:
        levels = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not levels or levels[0] < 1 or levels[-1] > MAX_IN_FLIGHT:
        raise argparse.ArgumentTypeError(f"in-flight levels must be 1..{MAX_IN_FLIGHT}")
    return tuple(levels)


def _loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only a loopback address (127.0.0.1) is allowed")


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 1 minute)")
    parser.add_argument(
        "--only", type=_parse_stacks, default=STACKS, metavar=",".join(STACKS), help="stacks to run"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds, >= 3 (default 5; quick 3)")
    parser.add_argument(
        "--in-flight",
        type=_parse_in_flight,
        default=DEFAULT_IN_FLIGHT,
        metavar="1,16,64,256",
        help="throughput in-flight levels",
    )
    parser.add_argument("--latency-count", type=int, help="round trips per latency run (5000)")
    parser.add_argument("--latency-warmup", type=int, help="warm-up round trips (500)")
    parser.add_argument("--latency-seconds", type=float, help="time bound of a latency run (1.5)")
    parser.add_argument("--total", type=int, help="requests per throughput run, at most (200000)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per throughput run (2000)")
    parser.add_argument("--seconds", type=float, help="time bound of a throughput run (1.5)")
    parser.add_argument("--host", type=_loopback, default="127.0.0.1", help="loopback only")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--nats-server", help="nats-server binary (default: from PATH)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    args = parser.parse_args(argv)

    quick = args.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    config = Config(
        stacks=args.only,
        rounds=pick(args.rounds, 5, 3),
        in_flight=args.in_flight,
        latency_count=pick(args.latency_count, 5_000, 1_000),
        latency_warmup=pick(args.latency_warmup, 500, 200),
        latency_seconds=pick(args.latency_seconds, 1.5, 0.4),
        total=pick(args.total, 200_000, 50_000),
        warmup=pick(args.warmup, 2_000, 500),
        seconds=pick(args.seconds, 1.5, 0.4),
        host=args.host,
        quick=quick,
        out_dir=str(args.out_dir),
        prefix="bench_all_quick" if quick else "bench_all",
        nats_server=args.nats_server,
        charts=not args.no_charts,
    )
    if not 1 <= config.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    if min(config.latency_count, config.total) < 1 or min(config.latency_warmup, config.warmup) < 0:
        parser.error("counts must be >= 1 (warm-ups >= 0)")
    if not (0 < config.seconds <= 60 and 0 < config.latency_seconds <= 60):
        parser.error("--seconds and --latency-seconds must be in (0, 60]")
    if config.rounds < 3:
        print("warning: fewer than 3 rounds; medians are not meaningful", file=sys.stderr)
    return config


# --- CPU accounting -----------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system, all threads) of a set of processes."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self._procs = [psutil.Process(pid) for pid in pids]

    def seconds(self) -> float:
        total = 0.0
        for proc in self._procs:
            try:
                times = proc.cpu_times()
            except Exception:  # the process is gone: the measurement will fail anyway
                continue
            total += times.user + times.system
        return total


class LoadMeter:
    """CPU used on the machine during the run by processes that are not the benchmark's.

    Other work on the machine (a test suite, another benchmark) competes for the same
    cores and lowers every figure; this says how much there was, so a reader can judge.
    Machine-wide busy time (user, nice, system, irq, softirq from ``psutil.cpu_times``)
    minus the CPU time of this process and of every process it started; ``steal`` is
    time the hypervisor gave to other guests.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self._psutil = psutil
        self._own = CpuMeter(pids)
        self._load_start = os.getloadavg()[0]
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = self._machine()
        self._own0 = self._own.seconds()

    def _machine(self) -> tuple[float, float]:
        t = self._psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        return busy, getattr(t, "steal", 0.0)

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self._t0
        busy, steal = self._machine()
        own = self._own.seconds() - self._own0
        foreign = max(0.0, busy - self._busy0 - own)
        return {
            "seconds": seconds,
            "cores": float(self._psutil.cpu_count() or 0),
            "own_cpu_s": own,
            "foreign_cpu_s": foreign,
            "foreign_cores_avg": foreign / seconds if seconds > 0 else 0.0,
            "steal_cores_avg": (steal - self._steal0) / seconds if seconds > 0 else 0.0,
            "loadavg_start": self._load_start,
            "loadavg_end": os.getloadavg()[0],
        }


def format_load(load: dict[str, float] | None) -> str:
    if not load:
        return ""
    text = (
        f"Other load on the machine during the measurements: {load['foreign_cores_avg']:.2f} "
        f"of {load['cores']:.0f} cores on average (CPU time of processes this run did not "
        f"start), steal {load['steal_cores_avg']:.2f} cores; load average "
        f"{load['loadavg_start']:.2f} at start, {load['loadavg_end']:.2f} at end."
    )
    if load["foreign_cores_avg"] > 0.1 or load["steal_cores_avg"] > 0.1:
        text += (
            " WARNING: the machine was not idle; figures are lower and noisier than on an "
            "idle machine (compare the spread column)."
        )
    return text


# --- measurements in this process -------------------------------------------------------


async def latency_run(
    call: Call, *, count: int, warmup: int, max_seconds: float
) -> dict[str, float]:
    """``_common.sample_latency`` summarized with every percentile (for the chart)."""
    run = await sample_latency(call, count=count, warmup=warmup, max_seconds=max_seconds)
    result = summarize_latency(run.samples_ns, run.seconds)
    result["client_cpu_s"] = run.cpu_seconds
    return result


async def throughput_run(
    call: Call, *, in_flight: int, total: int, max_seconds: float, warmup: int
) -> dict[str, float]:
    """``_common.measure_throughput``: a warm-up run, then the measured run (CPU around it)."""
    if warmup:
        await measure_throughput(
            call,
            in_flight=in_flight,
            total=warmup,
            max_seconds=max(0.25, max_seconds / 4),
            warmup=0,
        )
    cpu0 = time.process_time()
    result = await measure_throughput(
        call, in_flight=in_flight, total=total, max_seconds=max_seconds, warmup=0
    )
    cpu = time.process_time() - cpu0
    return {
        "req_s": result.req_s,
        "count": float(result.count),
        "seconds": result.seconds,
        "in_flight": float(in_flight),
        "client_cpu_s": cpu,
    }


class Stack(Protocol):
    name: str

    async def latency(self, config: Config) -> dict[str, float]: ...

    async def throughput(self, config: Config, in_flight: int) -> dict[str, float]: ...


@dataclass(slots=True)
class LocalStack:
    """A stack whose client is a ``call(payload)`` coroutine in this process."""

    name: str
    call: Call

    async def latency(self, config: Config) -> dict[str, float]:
        return await latency_run(
            self.call,
            count=config.latency_count,
            warmup=config.latency_warmup,
            max_seconds=config.latency_seconds,
        )

    async def throughput(self, config: Config, in_flight: int) -> dict[str, float]:
        return await throughput_run(
            self.call,
            in_flight=in_flight,
            total=config.total,
            max_seconds=config.seconds,
            warmup=config.warmup,
        )


@dataclass(slots=True)
class ZerorpcStack:
    """zerorpc: the measurement runs in the gevent client process (``peers/zerorpc_echo.py``)."""

    name: str
    driver: Any  # ZerorpcClientProcess

    async def latency(self, config: Config) -> dict[str, float]:
        return await self.driver.latency(  # type: ignore[no-any-return]
            count=config.latency_count,
            warmup=config.latency_warmup,
            max_seconds=config.latency_seconds,
        )

    async def throughput(self, config: Config, in_flight: int) -> dict[str, float]:
        return await self.driver.throughput(  # type: ignore[no-any-return]
            in_flight=in_flight,
            total=config.total,
            max_seconds=config.seconds,
            warmup=config.warmup,
        )


# --- servers (processes, managed outside the event loop) -----------------------------------


@dataclass(slots=True)
class Server:
    """What a stack's client needs: the address, the server PIDs (for CPU), extras."""

    address: str
    server_pids: list[int]
    client_pid: int | None = None  # None: the client is this process
    node_process: Any = None  # bench_send's node server Popen (for its error messages)
    driver: Any = None  # zerorpc client process


def _start_one(stack: str, config: Config, exits: ExitStack, versions: dict[str, str]) -> Server:
    host = config.host
    if stack in ("raw", "asyncio"):
        from benchmarks.raw_echo import start_server

        srv = start_server(stack, host)  # type: ignore[arg-type]
        exits.callback(srv.stop)
        return Server(srv.endpoint, [srv.pid])
    if stack == "node":
        from benchmarks.bench_send import NODE_STOP_TIMEOUT, start_node_server
        from benchmarks.raw_echo import stop_process

        proc, endpoint = start_node_server(host)
        exits.callback(stop_process, proc, NODE_STOP_TIMEOUT)
        return Server(endpoint, [proc.pid], node_process=proc)
    if stack == "nats":
        from benchmarks.peers import nats_echo
        from benchmarks.raw_echo import stop_process

        binary = nats_echo.find_nats_server(config.nats_server)
        if binary is None:
            raise BenchError("nats-server not found (benchmarks/run.sh installs it with apt)")
        versions["nats-server"] = nats_echo.nats_server_version(binary)
        proc, url, tmp = nats_echo.start_nats_server(binary, host)
        exits.callback(tmp.cleanup)
        exits.callback(stop_process, proc)
        responder = nats_echo.start_responder(url)
        exits.callback(responder.stop)
        return Server(url, [proc.pid, responder.pid])
    if stack == "grpc":
        from benchmarks.peers import grpc_echo

        peer = grpc_echo.start_server(host)
        exits.callback(peer.stop)
        return Server(peer.address, [peer.pid])
    if stack == "zerorpc":
        from benchmarks.peers import zerorpc_echo

        peer = zerorpc_echo.start_server(host)
        exits.callback(peer.stop)
        driver = zerorpc_echo.ZerorpcClientProcess(peer.address)
        exits.callback(driver.stop)
        return Server(peer.address, [peer.pid], client_pid=driver.pid, driver=driver)
    raise ValueError(stack)


def start_servers(
    config: Config, exits: ExitStack, records: dict[str, StackRecord], versions: dict[str, str]
) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    for stack in config.stacks:
        try:
            servers[stack] = _start_one(stack, config, exits, versions)
        except Exception as exc:
            records[stack].error = f"server: {exc}"
            print(f"{stack}: server failed to start: {exc!r}", file=sys.stderr)
    return servers


# --- clients (in the event loop) -----------------------------------------------------------


def _opener(stack: str, server: Server) -> AbstractAsyncContextManager[Stack]:
    @asynccontextmanager
    async def local(cm: AbstractAsyncContextManager[Call]) -> AsyncIterator[Stack]:
        async with cm as call:
            yield LocalStack(stack, call)

    if stack in ("raw", "asyncio"):
        from benchmarks.bench_send import open_echo_call

        return local(open_echo_call(stack, server.address))  # type: ignore[arg-type]
    if stack == "node":
        from benchmarks.bench_send import open_node_client

        return local(open_node_client(server.address, server.node_process))
    if stack == "nats":
        from benchmarks.peers import nats_echo

        return local(nats_echo.open_client(server.address))
    if stack == "grpc":
        from benchmarks.peers import grpc_echo

        return local(grpc_echo.open_client(server.address))
    if stack == "zerorpc":

        @asynccontextmanager
        async def remote() -> AsyncIterator[Stack]:
            yield ZerorpcStack(stack, server.driver)

        return remote()
    raise ValueError(stack)


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class StackRecord:
    stack: str
    # one dict per completed round: {"latency": {...}, "throughput": {"64": {...}, ...}}
    rounds: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def ok(self) -> bool:
        return self.error is None and bool(self.rounds)


def _per_request_us(cpu_s: float, count: float) -> float:
    return cpu_s / count * 1e6 if count else 0.0


async def measure_stack(
    stack: Stack, config: Config, server: Server, round_no: int
) -> dict[str, Any]:
    servers_cpu = CpuMeter(server.server_pids)
    s0 = servers_cpu.seconds()
    lat = await stack.latency(config)
    lat["server_cpu_us_per_req"] = _per_request_us(servers_cpu.seconds() - s0, lat["count"])
    lat["client_cpu_us_per_req"] = _per_request_us(lat.pop("client_cpu_s"), lat["count"])
    thr: dict[str, dict[str, float]] = {}
    for n in config.in_flight:
        s0 = servers_cpu.seconds()
        t = await stack.throughput(config, n)
        t["server_cpu_us_per_req"] = _per_request_us(servers_cpu.seconds() - s0, t["count"])
        t["client_cpu_us_per_req"] = _per_request_us(t.pop("client_cpu_s"), t["count"])
        thr[str(n)] = t
    print(
        f"round {round_no}/{config.rounds} {stack.name:<8} p50 {lat['p50_us']:6.0f} µs"
        f"  p99 {lat['p99_us']:6.0f} µs  req/s "
        + "  ".join(f"@{n} {thr[str(n)]['req_s']:,.0f}" for n in config.in_flight),
        file=sys.stderr,
        flush=True,
    )
    return {"latency": lat, "throughput": thr}


async def run_rounds(
    config: Config, servers: dict[str, Server], records: dict[str, StackRecord]
) -> None:
    async with AsyncExitStack() as exits:
        stacks: list[Stack] = []
        for name, server in servers.items():
            try:
                stacks.append(await exits.enter_async_context(_opener(name, server)))
            except Exception as exc:
                records[name].error = f"setup: {exc}"
                print(f"{name}: client setup failed: {exc!r}", file=sys.stderr)

        for round_no in range(1, config.rounds + 1):
            # Rotate the order each round so no stack always runs first or after another.
            shift = (round_no - 1) % max(1, len(stacks))
            for stack in stacks[shift:] + stacks[:shift]:
                record = records[stack.name]
                if record.error is not None:
                    continue
                try:
                    record.rounds.append(
                        await measure_stack(stack, config, servers[stack.name], round_no)
                    )
                except Exception as exc:
                    # A wrong reply or a failure is an error, never a figure.
                    record.error = f"round {round_no}: {type(exc).__name__}: {exc}"
                    print(f"{stack.name}: {record.error}", file=sys.stderr, flush=True)


# --- summary --------------------------------------------------------------------------------


def summarize(record: StackRecord, config: Config) -> dict[str, Any] | None:
    """Medians over rounds (and the spread of req/s: (max - min) / median)."""
    if not record.ok():
        return None
    rounds = record.rounds

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    lat_keys = [f"{pkey(p)}_us" for p in PERCENTILES] + [
        "mean_us",
        "max_us",
        "server_cpu_us_per_req",
        "client_cpu_us_per_req",
    ]
    latency = {k: med([r["latency"][k] for r in rounds]) for k in lat_keys}
    throughput: dict[str, dict[str, float]] = {}
    for n in config.in_flight:
        runs = [r["throughput"][str(n)] for r in rounds]
        rates = [t["req_s"] for t in runs]
        median_rate = med(rates)
        throughput[str(n)] = {
            "req_s": median_rate,
            "req_s_min": min(rates),
            "req_s_max": max(rates),
            "spread": (max(rates) - min(rates)) / median_rate if median_rate else 0.0,
            "server_cpu_us_per_req": med([t["server_cpu_us_per_req"] for t in runs]),
            "client_cpu_us_per_req": med([t["client_cpu_us_per_req"] for t in runs]),
        }
    return {"rounds": len(rounds), "latency": latency, "throughput": throughput}


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(num: float | None, den: float | None) -> str:
    if num is None or not den:
        return "-"
    return f"{num / den:.2f}"


def format_tables(
    config: Config, records: dict[str, StackRecord], summary: dict[str, dict[str, Any] | None]
) -> str:
    levels = config.in_flight
    cpu_level = CPU_IN_FLIGHT if CPU_IN_FLIGHT in levels else levels[-1]
    out: list[str] = []

    def lat(stack: str, key: str) -> float | None:
        s = summary.get(stack)
        return None if s is None else s["latency"][key]

    def rate(stack: str, n: int) -> float | None:
        s = summary.get(stack)
        return None if s is None else s["throughput"][str(n)]["req_s"]

    # 1. The figures.
    head = ["stack", "p50 µs", "p99 µs", *(f"req/s @{n}" for n in levels)]
    head += [f"CPU µs/req @{cpu_level} (client+server)", "req/s spread"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|" * (len(head) - 1))
    for stack in config.stacks:
        s = summary.get(stack)
        if s is None:
            err = records[stack].error or "no rounds"
            out.append(
                f"| {LABELS[stack]} | " + " | ".join(["-"] * (len(head) - 2)) + f" | ERROR: {err} |"
            )
            continue
        t = s["throughput"]
        cpu = t[str(cpu_level)]
        spread = max(v["spread"] for v in t.values())
        cells = [
            LABELS[stack],
            _f(lat(stack, "p50_us")),
            _f(lat(stack, "p99_us")),
            *(_f(rate(stack, n)) for n in levels),
            f"{cpu['client_cpu_us_per_req']:.0f} + {cpu['server_cpu_us_per_req']:.0f}",
            f"{spread * 100:.0f}%",
        ]
        out.append("| " + " | ".join(cells) + " |")

    # 2. Against the add_reader limit.
    out.append("")
    out.append(
        f"Against the add_reader limit (`{BASELINE}`): latency as stack / raw (1.00 = as fast, "
        "higher = slower); throughput as stack / raw (1.00 = the limit, lower = slower)."
    )
    out.append("")
    head = ["stack", "p50 / raw", "p99 / raw", *(f"req/s / raw @{n}" for n in levels)]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|" + "---:|" * (len(head) - 1))
    for stack in config.stacks:
        if summary.get(stack) is None:
            continue
        cells = [
            LABELS[stack],
            _ratio(lat(stack, "p50_us"), lat(BASELINE, "p50_us")),
            _ratio(lat(stack, "p99_us"), lat(BASELINE, "p99_us")),
            *(_ratio(rate(stack, n), rate(BASELINE, n)) for n in levels),
        ]
        out.append("| " + " | ".join(cells) + " |")

    # 3. node.send() against each peer.
    if summary.get(NODE) is not None:
        out.append("")
        out.append(
            "`node.send()` against each other stack: latency as node / peer (below 1.00 = node "
            "answers sooner); throughput as node / peer (above 1.00 = node serves more)."
        )
        out.append("")
        head = [
            "peer",
            "p50 node / peer",
            "p99 node / peer",
            *(f"req/s node / peer @{n}" for n in levels),
        ]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
        for peer in (BASELINE, *PEERS):
            if peer not in config.stacks or summary.get(peer) is None:
                continue
            cells = [
                LABELS[peer],
                _ratio(lat(NODE, "p50_us"), lat(peer, "p50_us")),
                _ratio(lat(NODE, "p99_us"), lat(peer, "p99_us")),
                *(_ratio(rate(NODE, n), rate(peer, n)) for n in levels),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def describe(config: Config) -> str:
    return (
        f"100-byte payload in a msgpack envelope, echoed; median of {config.rounds} interleaved "
        f"rounds (order rotating). Latency: up to {config.latency_count:,} sequential round "
        f"trips or {config.latency_seconds:g} s per round. Throughput: req/s with N requests in "
        f"flight, up to {config.total:,} requests or {config.seconds:g} s per run after "
        f"{config.warmup:,} warm-up requests. CPU: client and server process CPU time per "
        "request (user+system, all threads; nats: nats-server + responder). Spread: largest "
        "(max - min) / median of req/s across rounds."
    )


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


def versions_env(extra: dict[str, str]) -> dict[str, str]:
    from benchmarks.bench_send import node_version

    env = environment()
    env["catga_zmq"] = node_version()
    for dist in ("nats-py", "grpcio", "zerorpc", "gevent", "msgpack", "matplotlib", "psutil"):
        env[dist] = _dist_version(dist)
    env.update(extra)
    launcher = os.environ.get("CATGA_BENCH_LAUNCHER")
    if launcher:
        env["launcher"] = launcher
    return env


# --- charts -----------------------------------------------------------------------------------


def _footer(env: dict[str, str]) -> str:
    versions = ", ".join(
        f"{k} {env[k]}"
        for k in (
            "catga_zmq",
            "pyzmq",
            "libzmq",
            "uvloop",
            "nats-py",
            "nats-server",
            "grpcio",
            "zerorpc",
            "gevent",
        )
        if k in env
    )
    lines = [
        f"{env['cpu']}, nproc {env['nproc']}; {env['platform']}; {env['python']}",
        versions,
        f"{env['date']} git {env['git']}: {env.get('launcher') or env['command']}",
    ]
    return "\n".join(textwrap.shorten(line, 160, placeholder=" ...") for line in lines)


def write_charts(
    config: Config,
    summary: dict[str, dict[str, Any] | None],
    env: dict[str, str],
    out_dir: Path,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in config.stacks if summary.get(s) is not None]
    footer = _footer(env)
    written: list[Path] = []

    # Latency percentiles: x = percentile (spaced by "nines"), y = µs (log).
    import math

    fig, ax = plt.subplots(figsize=(9, 6))
    xs = [-math.log10(1 - p / 100.0) for p in PERCENTILES]
    for stack in shown:
        lat = summary[stack]["latency"]  # type: ignore[index]
        ys = [lat[f"{pkey(p)}_us"] for p in PERCENTILES]
        ax.plot(
            xs,
            ys,
            marker="o",
            color=COLORS[stack],
            linestyle="--" if stack == BASELINE else "-",
            linewidth=2.5 if stack == NODE else 1.5,
            label=LABELS[stack],
        )
    ax.set_xticks(xs, [f"p{p:g}" for p in PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("round-trip latency, µs (log scale)")
    ax.set_xlabel("percentile (sequential round trips, one in flight)")
    ax.set_title(f"Latency percentiles, 100-byte echo (median of {config.rounds} rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.text(0.01, 0.01, footer, fontsize=6.5, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = out_dir / f"{config.prefix}_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    # Throughput against in-flight requests.
    fig, ax = plt.subplots(figsize=(9, 6))
    for stack in shown:
        thr = summary[stack]["throughput"]  # type: ignore[index]
        levels = list(config.in_flight)
        ys = [thr[str(n)]["req_s"] for n in levels]
        lo = [thr[str(n)]["req_s"] - thr[str(n)]["req_s_min"] for n in levels]
        hi = [thr[str(n)]["req_s_max"] - thr[str(n)]["req_s"] for n in levels]
        ax.errorbar(
            levels,
            ys,
            yerr=[lo, hi],
            marker="o",
            capsize=3,
            color=COLORS[stack],
            linestyle="--" if stack == BASELINE else "-",
            linewidth=2.5 if stack == NODE else 1.5,
            label=LABELS[stack],
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(config.in_flight), [str(n) for n in config.in_flight])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("requests per second (median; bars: min-max of rounds)")
    ax.set_title("Throughput vs in-flight requests, 100-byte echo")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    fig.text(0.01, 0.01, footer, fontsize=6.5, family="monospace", va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = out_dir / f"{config.prefix}_throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


# --- main ---------------------------------------------------------------------------------------


def _exit_on_signal(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP: unwind, so every started process is stopped by the finally blocks.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)

    records = {stack: StackRecord(stack) for stack in config.stacks}
    versions: dict[str, str] = {}
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(
            f"warning: load average {busy:.2f} before the run: other work on this machine "
            "will lower and scatter the figures (the report says how much there was)",
            file=sys.stderr,
        )
    started = time.monotonic()
    print(
        f"bench_all: {', '.join(config.stacks)}; {config.rounds} rounds; in flight "
        f"{','.join(map(str, config.in_flight))}{' (quick)' if config.quick else ''}",
        file=sys.stderr,
        flush=True,
    )
    load: dict[str, float] | None = None
    with ExitStack() as exits:
        servers = start_servers(config, exits, records, versions)
        own_pids = [os.getpid()]
        for server in servers.values():
            own_pids += server.server_pids
            if server.client_pid is not None:
                own_pids.append(server.client_pid)
        meter = LoadMeter(own_pids)
        run_uvloop(run_rounds(config, servers, records))
        load = meter.stop()
    elapsed = time.monotonic() - started

    env = versions_env(versions)
    summary = {stack: summarize(records[stack], config) for stack in config.stacks}
    tables = format_tables(config, records, summary)
    env_block = format_environment(env)

    charts: list[Path] = []
    if config.charts and any(summary.values()):
        try:
            charts = write_charts(config, summary, env, out_dir)
        except Exception as exc:  # charts are an extra: the figures stand without them
            print(f"charts failed: {exc!r}", file=sys.stderr)

    report = [
        f"# node.send() vs raw pyzmq and peer stacks{' (quick run)' if config.quick else ''}",
        "",
        describe(config),
        "",
        tables,
        "",
        *(f"![{p.stem}]({p.name})" for p in charts),
        "",
        env_block,
        "",
        f"Wall time of the run: {elapsed:.0f} s.",
        "",
        format_load(load),
        "",
        NOTES,
    ]
    text = "\n".join(report) + "\n"
    print(text)

    md_path = out_dir / f"{config.prefix}.md"
    md_path.write_text(text, encoding="utf-8")
    json_path = out_dir / f"{config.prefix}.json"
    document = {
        "benchmark": "bench_all",
        "environment": env,
        "config": asdict(config),
        "elapsed_seconds": elapsed,
        "machine_load": load,
        "stacks": {
            stack: {
                "label": LABELS[stack],
                "error": records[stack].error,
                "median": summary[stack],
                "rounds": records[stack].rounds,
            }
            for stack in config.stacks
        },
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for path in (md_path, json_path, *charts):
        print(f"wrote {path}", file=sys.stderr)
    return 1 if any(records[s].error for s in config.stacks) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

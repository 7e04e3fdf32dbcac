"""``node.send()`` against raw pyzmq: sequential latency and throughput, interleaved.

Each round measures every selected stack in turn (raw, asyncio, node, raw, asyncio,
node, ...) so that drift in the machine (thermal, noisy neighbours) spreads over all of
them; the table gives the median of the rounds. Per stack and round:

- latency: sequential round trips of a 100-byte payload, p50 and p99 in µs;
- throughput: requests/s with ``--in-flight`` requests outstanding (64 by default).

Stacks (every server in its own process, bound on 127.0.0.1, clients under uvloop):

- ``raw``: ROUTER/DEALER driven by ``loop.add_reader(FD)`` (``raw_echo.py``);
- ``asyncio``: the same over ``zmq.asyncio``;
- ``node``: ``node.send(Echo(...))`` from a client node to a server node started with
  ``python -m catga_zmq.node --app benchmarks._echo_app:node``.

    python benchmarks/bench_send.py                      # all three stacks
    python benchmarks/bench_send.py --only raw,asyncio   # the baselines only
    python benchmarks/bench_send.py --rounds 5 --json results.json

Every reply is checked; a stack that fails is reported as an error and the exit status
is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO_ROOT,
    BenchError,
    Call,
    ReplyMismatch,
    StackRow,
    environment,
    format_environment,
    format_table,
    measure_latency,
    measure_throughput,
    run_uvloop,
)
from benchmarks.raw_echo import KINDS, Kind, open_client, start_server, stop_process

STACKS = ("raw", "asyncio", "node")
BASELINE = "raw"
NODE_APP = "benchmarks._echo_app:node"
NODE_START_TIMEOUT = 10.0  # s, for the client node to see the server node
NODE_STOP_TIMEOUT = 10.0  # s, a node drains in-flight work on SIGTERM


# --- node stack (isolated: the only code that knows catga_zmq's API) --------------------


def _free_port(host: str) -> int:
    # The node CLI takes a port number, so pick a free one; the tiny race with other
    # processes binding it meanwhile is acceptable for a benchmark.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_node_server(host: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the echo node in a child process; return (process, ROUTER endpoint).

    Readiness is established by the client (``wait_for_peers``), not here.
    """
    port = _free_port(host)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "catga_zmq.node",
            "--app",
            NODE_APP,
            "--bind",
            host,
            "--port",
            str(port),
            "--discovery",
            "none",
        ],
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        env=env,
    )
    return proc, f"tcp://{host}:{port}"


@asynccontextmanager
async def open_node_client(endpoint: str, server: subprocess.Popen[bytes]) -> AsyncIterator[Call]:
    """A started client node that sees the server node; yields ``call(payload)``."""
    from benchmarks._echo_app import Echo, EchoReply
    from catga_zmq import Node, StaticDiscovery

    client = Node(node_id="bench-cli", discovery=StaticDiscovery([endpoint]))
    async with client:
        try:
            await client.wait_for_peers(1, timeout=NODE_START_TIMEOUT)
        except Exception as exc:
            status = server.poll()
            if status is not None:
                raise BenchError(f"node server pid {server.pid} exited with {status}") from exc
            raise BenchError(f"node server at {endpoint} not seen: {exc!r}") from exc

        send = client.send

        async def call(payload: bytes) -> bytes:
            reply = await send(Echo(data=payload))
            if type(reply) is not EchoReply:
                raise ReplyMismatch(f"node: expected EchoReply, got {type(reply).__name__}")
            return reply.data

        yield call


def node_version() -> str:
    try:
        from importlib.metadata import version

        return version("catga-zmq")
    except Exception:
        return "unknown"


# --- the run ----------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    stacks: tuple[str, ...]
    rounds: int
    latency_count: int
    latency_warmup: int
    total: int
    in_flight: int
    seconds: float
    host: str


@dataclass(slots=True)
class StackRecord:
    stack: str
    rounds: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None

    def row(self) -> StackRow:
        if self.error is not None or not self.rounds:
            return StackRow(stack=self.stack, error=self.error or "no rounds")

        def median(key: str) -> float:
            return statistics.median(r[key] for r in self.rounds)

        return StackRow(
            stack=self.stack,
            p50_us=median("p50_us"),
            p99_us=median("p99_us"),
            req_s=median("req_s"),
        )


Opener = Callable[[], AbstractAsyncContextManager[Call]]


@asynccontextmanager
async def open_echo_call(kind: Kind, endpoint: str) -> AsyncIterator[Call]:
    """A raw or zmq.asyncio client (``raw_echo.py``) reduced to its ``call``."""
    async with open_client(kind, endpoint) as client:
        yield client.call


async def run_rounds(
    config: Config, openers: dict[str, Opener], records: dict[str, StackRecord]
) -> None:
    async with AsyncExitStack() as exits:
        calls: dict[str, Call] = {}
        for stack, opener in openers.items():
            try:
                calls[stack] = await exits.enter_async_context(opener())
            except Exception as exc:
                records[stack].error = f"setup: {exc}"
                print(f"{stack}: setup failed: {exc!r}", file=sys.stderr)

        for round_no in range(1, config.rounds + 1):
            for stack, call in calls.items():
                record = records[stack]
                if record.error is not None:
                    continue
                try:
                    lat = await measure_latency(
                        call,
                        count=config.latency_count,
                        warmup=config.latency_warmup,
                        max_seconds=config.seconds,
                    )
                    thr = await measure_throughput(
                        call,
                        in_flight=config.in_flight,
                        total=config.total,
                        max_seconds=config.seconds,
                    )
                except Exception as exc:
                    # A wrong reply or a failure is an error, never a figure.
                    record.error = f"round {round_no}: {type(exc).__name__}: {exc}"
                    print(f"{stack}: {record.error}", file=sys.stderr)
                    continue
                record.rounds.append(
                    {
                        "p50_us": lat.p50_us,
                        "p99_us": lat.p99_us,
                        "latency_count": lat.count,
                        "req_s": thr.req_s,
                        "throughput_count": thr.count,
                        "throughput_seconds": thr.seconds,
                    }
                )
                print(
                    f"round {round_no}/{config.rounds} {stack:<8} p50 {lat.p50_us:7.0f} µs"
                    f"  p99 {lat.p99_us:7.0f} µs  {thr.req_s:9,.0f} req/s"
                    f"  ({lat.count} seq, {thr.count} at {thr.in_flight} in flight)",
                    file=sys.stderr,
                    flush=True,
                )


@dataclass(slots=True)
class Servers:
    """Endpoints of the started servers, and the node server process if any."""

    endpoints: dict[str, str] = field(default_factory=dict)
    node_process: subprocess.Popen[bytes] | None = None
    errors: dict[str, str] = field(default_factory=dict)


def start_servers(config: Config, exits: ExitStack) -> Servers:
    """Start one server process per stack; each is stopped by its PID when ``exits`` closes."""
    servers = Servers()
    for stack in config.stacks:
        try:
            if stack in KINDS:
                server = start_server(stack, config.host)
                exits.callback(server.stop)
                servers.endpoints[stack] = server.endpoint
            elif stack == "node":
                proc, endpoint = start_node_server(config.host)
                exits.callback(stop_process, proc, NODE_STOP_TIMEOUT)
                servers.node_process = proc
                servers.endpoints[stack] = endpoint
        except Exception as exc:
            servers.errors[stack] = f"server: {exc}"
            print(f"{stack}: server failed to start: {exc!r}", file=sys.stderr)
    return servers


def make_openers(servers: Servers) -> dict[str, Opener]:
    openers: dict[str, Opener] = {}
    for stack, endpoint in servers.endpoints.items():
        if stack in KINDS:
            openers[stack] = partial(open_echo_call, stack, endpoint)
        elif stack == "node":
            proc = servers.node_process
            assert proc is not None
            openers[stack] = partial(open_node_client, endpoint, proc)
    return openers


def _parse_stacks(value: str) -> tuple[str, ...]:
    chosen = {s.strip() for s in value.split(",") if s.strip()}
    unknown = chosen - set(STACKS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown stacks {sorted(unknown)}; choose from {','.join(STACKS)}"
        )
    return tuple(s for s in STACKS if s in chosen)  # baseline first, fixed order


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", type=_parse_stacks, default=STACKS, metavar="raw,asyncio,node")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 3)")
    parser.add_argument("--latency-count", type=int, default=5_000, help="round trips per round")
    parser.add_argument("--latency-warmup", type=int, default=500)
    parser.add_argument("--total", type=int, default=200_000, help="max requests per round")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time bound of each measurement (s)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.latency_count < 1 or args.total < 1 or args.in_flight < 1:
        parser.error("--rounds, --latency-count, --total and --in-flight must be >= 1")
    if args.rounds < 3:
        print("warning: fewer than 3 rounds; medians are not meaningful", file=sys.stderr)
    config = Config(
        stacks=args.only,
        rounds=args.rounds,
        latency_count=args.latency_count,
        latency_warmup=args.latency_warmup,
        total=args.total,
        in_flight=args.in_flight,
        seconds=args.seconds,
        host=args.host,
    )
    return config, args.json


def main(argv: list[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    env = environment()
    if "node" in config.stacks:
        env["catga_zmq"] = node_version()
    records = {stack: StackRecord(stack) for stack in config.stacks}
    started = time.monotonic()
    with ExitStack() as exits:
        servers = start_servers(config, exits)
        for stack, error in servers.errors.items():
            records[stack].error = error
        run_uvloop(run_rounds(config, make_openers(servers), records))
    elapsed = time.monotonic() - started

    rows = [records[stack].row() for stack in config.stacks]
    print(
        f"`node.send()` vs raw pyzmq: 100-byte echo, median of {config.rounds} interleaved "
        f"rounds; p50/p99 over up to {config.latency_count} sequential round trips; req/s "
        f"at {config.in_flight} in flight (up to {config.total} requests or "
        f"{config.seconds:g} s per round).\n"
    )
    print(format_table(rows, baseline=BASELINE, ratio_title=f"ratio to {BASELINE}"))
    print()
    print(format_environment(env))

    if json_path is not None:
        document: dict[str, Any] = {
            "benchmark": "bench_send",
            "environment": env,
            "config": asdict(config),
            "elapsed_seconds": elapsed,
            "results": [{**asdict(row), "rounds": records[row.stack].rounds} for row in rows],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults saved to {json_path}", file=sys.stderr)
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

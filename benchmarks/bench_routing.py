"""How each routing strategy spreads requests across nodes, measured end to end.

Every scenario starts a fresh cluster of in-process nodes (one event loop, found through
a ``MemoryHub``) that talk over real loopback ZeroMQ sockets (ROUTER/DEALER requests,
PUB/SUB heartbeats), sends a fixed number of requests from a client node with
``--concurrency`` of them in flight, and counts which node answered each one:

- ``round_robin``: three equal servers;
- ``weighted``: servers of weight 5, 3 and 1 (the client routes ``weighted``);
- ``consistent_hash``: three servers, ``--keys`` distinct keys (``send(key=...)``); then a
  fourth server joins and every key is sent again: how many moved, and where to;
- ``least_connections``: three servers, one of them slow (``--slow-ms`` per request);
  ``round_robin`` over the same servers is shown for contrast;
- ``local_first``: the client handles the type itself, next to three servers.

    python benchmarks/bench_routing.py
    python benchmarks/bench_routing.py --requests 9000 --keys 10000 --json routing.json

Every loop is bounded (a fixed request count, and a time limit per scenario). The
weighted split also reflects the load the servers report (their CPU and in-flight
count), which in one process is about the same for all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from benchmarks._common import environment, format_environment, run_uvloop
from catga_zmq import MemoryDiscovery, MemoryHub, Node, Request, __version__

#: Cluster timings: fast heartbeats so a cluster forms (and a joiner is seen) quickly.
TIMING: dict[str, Any] = {
    "heartbeat_interval": 0.1,  # s
    "suspect_after": 0.3,  # s
    "acceptable_pause": 0.2,  # s
    "faulted_after": 1.0,  # s
    "drain_timeout": 2.0,  # s
}
SCENARIO_TIMEOUT = 120.0  # s, the most one scenario may take before it is reported failed
JOIN_TIMEOUT = 10.0  # s, for the client to see every server


class Where(msgspec.Struct):
    by: str


class Route(Request[Where]):
    __wire_name__ = "bench.Route"
    n: int = 0


@dataclass(slots=True)
class Row:
    strategy: str
    setup: str
    requests: int
    counts: dict[str, int] = field(default_factory=dict)
    expected: str = ""
    seconds: float = 0.0
    note: str = ""
    error: str | None = None

    def distribution(self) -> str:
        total = sum(self.counts.values()) or 1
        return ", ".join(
            f"{node} {count} ({100 * count / total:.1f}%)"
            for node, count in sorted(self.counts.items())
        )


@dataclass(frozen=True, slots=True)
class Config:
    requests: int
    keys: int
    concurrency: int
    slow_ms: float


# --- cluster ------------------------------------------------------------------------------


class Cluster:
    """Nodes on one hub; ``close()`` drains them all."""

    def __init__(self) -> None:
        self.hub = MemoryHub()
        self.cluster = f"bench-{uuid.uuid4().hex[:8]}"
        self.nodes: list[Node] = []

    def node(self, node_id: str, **settings: Any) -> Node:
        node = Node(
            node_id,
            cluster=self.cluster,
            discovery=MemoryDiscovery(self.hub),
            **{**TIMING, **settings},
        )
        self.nodes.append(node)
        return node

    def server(self, node_id: str, *, delay: float = 0.0, **settings: Any) -> Node:
        node = self.node(node_id, **settings)

        @node.handler
        async def route(req: Route) -> Where:
            if delay:
                await asyncio.sleep(delay)
            return Where(node_id)

        return node

    async def start(self) -> None:
        for node in self.nodes:
            if node.state.value == "new":
                await node.start()

    async def close(self) -> None:
        for node in reversed(self.nodes):
            await node.aclose()


async def drive(
    client: Node,
    count: int,
    concurrency: int,
    make: Callable[[int], tuple[Route, str | None]],
) -> tuple[list[str], float]:
    """Send ``count`` requests, ``concurrency`` at a time; the answering node of each, and the time."""
    answered: list[str] = [""] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            message, key = make(i)
            answered[i] = (await client.send(message, key=key, timeout=10.0)).by

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, count)):
            tg.create_task(worker())
    return answered, time.perf_counter() - start


def plain(i: int) -> tuple[Route, str | None]:
    return Route(n=i), None


# --- scenarios ----------------------------------------------------------------------------


async def scenario_round_robin(cfg: Config) -> list[Row]:
    c = Cluster()
    for i in (1, 2, 3):
        c.server(f"s{i}")
    client = c.node("client")
    try:
        await c.start()
        await client.wait_for_peers(3, timeout=JOIN_TIMEOUT, handles=Route)
        got, seconds = await drive(client, cfg.requests, cfg.concurrency, plain)
    finally:
        await c.close()
    third = cfg.requests / 3
    return [
        Row(
            "round_robin",
            "3 equal servers",
            cfg.requests,
            dict(Counter(got)),
            f"{third:g} each",
            seconds,
        )
    ]


async def scenario_weighted(cfg: Config) -> list[Row]:
    c = Cluster()
    weights = {"s1": 5, "s2": 3, "s3": 1}
    for node_id, weight in weights.items():
        c.server(node_id, weight=weight)
    client = c.node("client", routing="weighted")
    try:
        await c.start()
        await client.wait_for_peers(3, timeout=JOIN_TIMEOUT, handles=Route)
        got, seconds = await drive(client, cfg.requests, cfg.concurrency, plain)
        loads = {
            m.node_id: f"{m.load:.2f}/{m.in_flight}"
            for m in client.members()
            if m.node_id != "client"
        }
    finally:
        await c.close()
    total = sum(weights.values())
    expected = "/".join(f"{cfg.requests * w / total:g}" for w in weights.values())
    return [
        Row(
            "weighted",
            "weights s1=5, s2=3, s3=1",
            cfg.requests,
            dict(Counter(got)),
            f"{expected} with no load",
            seconds,
            note="last reported load/in-flight: "
            + ", ".join(f"{k} {v}" for k, v in sorted(loads.items())),
        )
    ]


async def scenario_consistent_hash(cfg: Config) -> list[Row]:
    c = Cluster()
    for i in (1, 2, 3):
        c.server(f"s{i}")
    client = c.node("client")
    client.route(Route, "consistent_hash")
    keys = [f"user-{i}" for i in range(cfg.keys)]

    def keyed(i: int) -> tuple[Route, str | None]:
        return Route(n=i), keys[i]

    try:
        await c.start()
        await client.wait_for_peers(3, timeout=JOIN_TIMEOUT, handles=Route)
        before, seconds_before = await drive(client, cfg.keys, cfg.concurrency, keyed)
        again, _ = await drive(client, cfg.keys, cfg.concurrency, keyed)
        stable = sum(a == b for a, b in zip(before, again, strict=True))
        joiner = c.server("s4")
        await joiner.start()
        await client.wait_for_peers(4, timeout=JOIN_TIMEOUT, handles=Route)
        after, seconds_after = await drive(client, cfg.keys, cfg.concurrency, keyed)
    finally:
        await c.close()
    moved = [(b, a) for b, a in zip(before, after, strict=True) if a != b]
    moved_to = Counter(a for _, a in moved)
    return [
        Row(
            "consistent_hash",
            f"3 servers, {cfg.keys} distinct keys",
            cfg.keys,
            dict(Counter(before)),
            "about 1/3 each",
            seconds_before,
            note=f"same node on a second pass: {stable}/{cfg.keys}",
        ),
        Row(
            "consistent_hash",
            "s4 joins, same keys again",
            cfg.keys,
            dict(Counter(after)),
            "about 1/4 of keys move, all to s4",
            seconds_after,
            note=f"moved {len(moved)} ({100 * len(moved) / cfg.keys:.1f}%), to: "
            + (", ".join(f"{k} {v}" for k, v in sorted(moved_to.items())) or "none"),
        ),
    ]


async def scenario_least_connections(cfg: Config) -> list[Row]:
    rows = []
    delay = cfg.slow_ms / 1000
    for strategy in ("least_connections", "round_robin"):
        c = Cluster()
        c.server("s1-slow", delay=delay)
        c.server("s2")
        c.server("s3")
        client = c.node("client")
        client.route(Route, strategy)
        try:
            await c.start()
            await client.wait_for_peers(3, timeout=JOIN_TIMEOUT, handles=Route)
            got, seconds = await drive(client, cfg.requests, cfg.concurrency, plain)
        finally:
            await c.close()
        rows.append(
            Row(
                strategy,
                f"s1-slow answers after {cfg.slow_ms:g} ms, s2 and s3 at once",
                cfg.requests,
                dict(Counter(got)),
                "s1-slow gets few" if strategy == "least_connections" else "1/3 each (contrast)",
                seconds,
            )
        )
    return rows


async def scenario_local_first(cfg: Config) -> list[Row]:
    c = Cluster()
    for i in (1, 2, 3):
        c.server(f"s{i}")
    client = c.server("client")  # handles Route itself
    client.route(Route, "local_first")
    try:
        await c.start()
        await client.wait_for_peers(3, timeout=JOIN_TIMEOUT, handles=Route)
        got, seconds = await drive(client, cfg.requests, cfg.concurrency, plain)
    finally:
        await c.close()
    return [
        Row(
            "local_first",
            "client handles the type too, 3 servers",
            cfg.requests,
            dict(Counter(got)),
            "all on client",
            seconds,
        )
    ]


SCENARIOS = {
    "round_robin": scenario_round_robin,
    "weighted": scenario_weighted,
    "consistent_hash": scenario_consistent_hash,
    "least_connections": scenario_least_connections,
    "local_first": scenario_local_first,
}


async def run(cfg: Config, names: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                rows.extend(await SCENARIOS[name](cfg))
        except Exception as exc:  # report the scenario as failed, go on with the others
            rows.append(Row(name, "-", 0, error=f"{type(exc).__name__}: {exc}"))
    return rows


# --- report -------------------------------------------------------------------------------


def format_rows(rows: Sequence[Row]) -> str:
    lines = [
        "| strategy | setup | requests | answered by | expected | req/s | notes |",
        "|---|---|---:|---|---|---:|---|",
    ]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.strategy} | - | - | - | - | - | ERROR: {r.error} |")
            continue
        rate = f"{r.requests / r.seconds:,.0f}" if r.seconds else "-"
        lines.append(
            f"| {r.strategy} | {r.setup} | {r.requests:,} | {r.distribution()} | {r.expected} "
            f"| {rate} | {r.note} |"
        )
    return "\n".join(lines)


def _parse_only(value: str) -> tuple[str, ...]:
    chosen = {s.strip() for s in value.split(",") if s.strip()}
    unknown = chosen - set(SCENARIOS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown strategies {sorted(unknown)}; choose from {','.join(SCENARIOS)}"
        )
    return tuple(s for s in SCENARIOS if s in chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", type=_parse_only, default=tuple(SCENARIOS), metavar="NAMES")
    parser.add_argument("--requests", type=int, default=900, help="requests per scenario")
    parser.add_argument("--keys", type=int, default=10_000, help="distinct consistent-hash keys")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--slow-ms", type=float, default=10.0, help="the slow node's delay (ms)")
    parser.add_argument("--no-uvloop", action="store_true", help="run on asyncio's own loop")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.keys < 1 or args.concurrency < 1 or args.slow_ms < 0:
        parser.error("--requests, --keys and --concurrency must be >= 1, --slow-ms >= 0")
    cfg = Config(args.requests, args.keys, args.concurrency, args.slow_ms)
    env = environment()
    env["catga_zmq"] = __version__
    env["event loop"] = "asyncio" if args.no_uvloop else "uvloop"

    started = time.monotonic()
    rows = asyncio.run(run(cfg, args.only)) if args.no_uvloop else run_uvloop(run(cfg, args.only))
    elapsed = time.monotonic() - started

    print(
        "Routing strategies, end to end: in-process nodes (one event loop, MemoryHub "
        "discovery) over real loopback ZeroMQ sockets; "
        f"{cfg.concurrency} requests in flight from one client node.\n"
    )
    print(format_rows(rows))
    print()
    print(format_environment(env))
    if args.json is not None:
        document = {
            "benchmark": "bench_routing",
            "environment": env,
            "config": asdict(cfg),
            "elapsed_seconds": elapsed,
            "results": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults saved to {args.json}", file=sys.stderr)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

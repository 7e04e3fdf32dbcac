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
    python benchmarks/bench_routing.py --requests 9000 --keys 10000 --out /tmp/routing

Every loop is bounded (a fixed request count, and a time limit per scenario). The
weighted split also reflects the load the servers report (their CPU and in-flight
count), which in one process is about the same for all of them.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    choices,
    environment,
    parse,
    parser,
    report,
    run_script,
    run_uvloop,
    table,
)
from catga_zmq import MemoryDiscovery, MemoryHub, Node, Request

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
MakeRequest = Callable[[int], tuple["Route", str | None]]


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

    def cells(self) -> list[object]:
        if self.error is not None:
            return [self.strategy, *["-"] * 5, f"ERROR: {self.error}"]
        total = sum(self.counts.values()) or 1
        spread = ", ".join(
            f"{k} {v} ({100 * v / total:.1f}%)" for k, v in sorted(self.counts.items())
        )
        rate = f"{self.requests / self.seconds:,.0f}" if self.seconds else "-"
        return [
            self.strategy,
            self.setup,
            f"{self.requests:,}",
            spread,
            self.expected,
            rate,
            self.note,
        ]


class Cluster:
    """Servers and a client on one hub; ``close()`` drains every node that started."""

    def __init__(self, delays: dict[str, float], **client: Any) -> None:
        self.hub, self.name = MemoryHub(), f"bench-{uuid.uuid4().hex[:8]}"
        self.started: list[Node] = []
        self.servers = [self.server(i, d) for i, d in delays.items()]
        self.client = self.node("client", **client)

    def node(self, node_id: str, **settings: Any) -> Node:
        return Node(
            node_id, self.name, discovery=MemoryDiscovery(self.hub), **{**TIMING, **settings}
        )

    def server(self, node_id: str, delay: float = 0.0, **settings: Any) -> Node:
        node = self.node(node_id, **settings)

        @node.handler
        async def route(req: Route) -> Where:
            if delay:
                await asyncio.sleep(delay)
            return Where(node_id)

        return node

    async def start(self, *nodes: Node, peers: int) -> None:
        for node in nodes or (*self.servers, self.client):
            self.started.append(node)
            await node.start()
        await self.client.wait_for_peers(peers, timeout=JOIN_TIMEOUT, handles=Route)

    async def drive(
        self, count: int, concurrency: int, make: MakeRequest
    ) -> tuple[list[str], float]:
        """``count`` requests, ``concurrency`` at a time: who answered each, and the time."""
        answered, next_index = [""] * count, 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                i, next_index = next_index, next_index + 1
                message, key = make(i)
                answered[i] = (await self.client.send(message, key=key, timeout=10.0)).by

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, count)):
                tg.create_task(worker())
        return answered, time.perf_counter() - start

    async def close(self) -> None:
        for node in reversed(self.started):
            await node.aclose()


def plain(i: int) -> tuple[Route, str | None]:
    return Route(n=i), None


async def scenario(a: Any, name: str, setup: str, expected: str, c: Cluster, **kw: Any) -> Row:
    """Start ``c``, send ``a.requests`` plain requests, count who answered."""
    try:
        await c.start(peers=len(c.servers))
        got, seconds = await c.drive(a.requests, a.concurrency, plain)
        return Row(name, setup, a.requests, dict(Counter(got)), expected, seconds, **kw)
    finally:
        await c.close()


async def round_robin(a: Any) -> list[Row]:
    c = Cluster({"s1": 0, "s2": 0, "s3": 0})
    return [await scenario(a, "round_robin", "3 equal servers", f"{a.requests / 3:g} each", c)]


async def weighted(a: Any) -> list[Row]:
    weights = {"s1": 5, "s2": 3, "s3": 1}
    c = Cluster({}, routing="weighted")
    c.servers = [c.server(i, weight=w) for i, w in weights.items()]
    expected = "/".join(f"{a.requests * w / sum(weights.values()):g}" for w in weights.values())
    row = await scenario(a, "weighted", "weights s1=5, s2=3, s3=1", f"{expected} with no load", c)
    return [row]


async def consistent_hash(a: Any) -> list[Row]:
    c = Cluster({"s1": 0, "s2": 0, "s3": 0})
    c.client.route(Route, "consistent_hash")
    keys = [f"user-{i}" for i in range(a.keys)]

    def keyed(i: int) -> tuple[Route, str | None]:
        return Route(n=i), keys[i]

    try:
        await c.start(peers=3)
        before, seconds_before = await c.drive(a.keys, a.concurrency, keyed)
        again, _ = await c.drive(a.keys, a.concurrency, keyed)
        await c.start(c.server("s4"), peers=4)
        after, seconds_after = await c.drive(a.keys, a.concurrency, keyed)
    finally:
        await c.close()
    stable = sum(x == y for x, y in zip(before, again, strict=True))
    moved = Counter(y for x, y in zip(before, after, strict=True) if x != y)
    n_moved = sum(moved.values())
    return [
        Row(
            "consistent_hash",
            f"3 servers, {a.keys} distinct keys",
            a.keys,
            dict(Counter(before)),
            "about 1/3 each",
            seconds_before,
            f"same node on a second pass: {stable}/{a.keys}",
        ),
        Row(
            "consistent_hash",
            "s4 joins, same keys again",
            a.keys,
            dict(Counter(after)),
            "about 1/4 of keys move, all to s4",
            seconds_after,
            f"moved {n_moved} ({100 * n_moved / a.keys:.1f}%), to: "
            + (", ".join(f"{k} {v}" for k, v in sorted(moved.items())) or "none"),
        ),
    ]


async def least_connections(a: Any) -> list[Row]:
    rows = []
    setup = f"s1-slow answers after {a.slow_ms:g} ms, s2 and s3 at once"
    for strategy in ("least_connections", "round_robin"):
        c = Cluster({"s1-slow": a.slow_ms / 1000, "s2": 0, "s3": 0})
        c.client.route(Route, strategy)
        lc = strategy == "least_connections"
        expected = "s1-slow gets few" if lc else "1/3 each (contrast)"
        rows.append(await scenario(a, strategy, setup, expected, c))
    return rows


async def local_first(a: Any) -> list[Row]:
    c = Cluster({"s1": 0, "s2": 0, "s3": 0})
    c.client = c.server("client")  # handles Route itself
    c.client.route(Route, "local_first")
    setup = "client handles the type too, 3 servers"
    return [await scenario(a, "local_first", setup, "all on client", c)]


SCENARIOS = {
    f.__name__: f for f in (round_robin, weighted, consistent_hash, least_connections, local_first)
}


async def run(a: Any) -> list[Row]:
    rows: list[Row] = []
    for name in a.only:
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT):
                rows.extend(await SCENARIOS[name](a))
        except Exception as exc:  # report the scenario as failed, go on with the others
            rows.append(Row(name, "-", 0, error=f"{type(exc).__name__}: {exc}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--only", type=choices(tuple(SCENARIOS)), default=tuple(SCENARIOS))
    p.add_argument("--requests", type=int, default=900, help="requests per scenario")
    p.add_argument("--keys", type=int, default=10_000, help="distinct consistent-hash keys")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--slow-ms", type=float, default=10.0, help="the slow node's delay (ms)")
    p.add_argument("--no-uvloop", action="store_true", help="run on asyncio's own loop")
    a = parse(p, argv)
    if a.requests < 1 or a.keys < 1 or a.concurrency < 1 or a.slow_ms < 0:
        p.error("--requests, --keys and --concurrency must be >= 1, --slow-ms >= 0")
    env = environment()
    env["event loop"] = "asyncio" if a.no_uvloop else "uvloop"
    rows = asyncio.run(run(a)) if a.no_uvloop else run_uvloop(run(a))
    head = ["strategy", "setup", "requests", "answered by", "expected", "req/s", "notes"]
    body = (
        "Routing strategies, end to end: in-process nodes (one event loop, MemoryHub "
        "discovery) over real loopback ZeroMQ sockets; "
        f"{a.concurrency} requests in flight from one client node.\n\n"
        + table(head, [r.cells() for r in rows], left=2)
    )
    results = {"config": vars(a), "results": [asdict(r) for r in rows]}
    report("bench_routing", "How each routing strategy spreads requests", env, body, a.out, results)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    run_script(main)

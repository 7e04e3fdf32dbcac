"""CURVE on against off: ``node.send()`` latency and throughput, and events, in one run.

Each round starts, for each mode in turn (the order rotating), an echo server
(``python -m catga_zmq.node --app benchmarks._apps:echo``) and a client node here under
uvloop, both in plaintext or both with CURVE keys (``keygen``'s format, a trust directory
holding both), and measures:

- sequential round trips (p50/p99),
- requests/s with ``--in-flight`` (64) requests outstanding,
- events: the client publishes ``--events`` ``Tick`` events as fast as it can to a
  subscriber on the server (``benchmarks._apps:echo`` subscribes to ``Tick``), and the
  server's ``Stats`` tells how many it received; events/s is received over the time from
  the first publish until the count stops rising.

    python benchmarks/bench_curve.py                    # 3 rounds, about 1 minute
    python benchmarks/bench_curve.py --rounds 5 --seconds 3

Exit status 1 when a reply is wrong or a round fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply, Tick, tick_data
from benchmarks._common import (
    BenchError,
    environment,
    fmt,
    log,
    measure_latency,
    measure_throughput,
    parse,
    parser,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Processes, free_port
from catga_zmq import Node, StaticDiscovery, Stats
from catga_zmq.security import generate

MODES = ("off", "on")


def make_keys(where: Path) -> dict[str, dict[str, str]]:
    """Key pairs for the server and the client, both in one trust directory."""
    keys, trust = where / "keys", where / "trust"
    keys.mkdir()
    trust.mkdir()
    settings: dict[str, dict[str, str]] = {}
    for name in ("srv", "cli"):
        public, secret = generate(name, keys)
        shutil.copy(public, trust / public.name)
        settings[name] = {"curve_secret_key": str(secret), "curve_trust_dir": str(trust)}
    return settings


async def one_round(a: Any, endpoint: str, cluster: str, curve: dict[str, str]) -> dict[str, Any]:
    seed = f"{endpoint};srv" if curve else endpoint
    client = Node("cli", cluster, discovery=StaticDiscovery([seed]), **curve)  # type: ignore[arg-type]
    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)

        async def call(payload: bytes) -> bytes:
            reply = await client.send(Echo(data=payload), timeout=10.0)
            assert isinstance(reply, EchoReply)
            return reply.data

        lat = await measure_latency(call, count=a.latency_count, max_seconds=a.seconds)
        thr = await measure_throughput(
            call, in_flight=a.in_flight, total=a.total, max_seconds=a.seconds, warmup=2000
        )
        before = (await client.send(Stats(), node="srv", timeout=10.0)).events_received
        start = time.perf_counter()
        for n in range(a.events):
            await client.publish(Tick(data=tick_data(n)))
        got, last_change, last = before, time.perf_counter(), before
        async with asyncio.timeout(60):
            while time.perf_counter() - last_change < 0.5:
                await asyncio.sleep(0.1)
                got = (await client.send(Stats(), node="srv", timeout=10.0)).events_received
                if got != last:
                    last, last_change = got, time.perf_counter()
        received = got - before
        seconds = last_change - start
    return {
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "req_s": thr["req_s"],
        "events_sent": a.events,
        "events_received": received,
        "events_s": received / seconds if seconds > 0 else 0.0,
    }


def run(a: Any) -> dict[str, list[dict[str, Any]]]:
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-curve-") as tmp:
        keys = make_keys(Path(tmp))
        for r in range(a.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                with Processes() as procs:
                    port, cluster = free_port(a.host), f"bench-curve-{os.getpid()}-{r}"
                    curve = keys["srv"] if mode == "on" else {}
                    server = procs.node(
                        "srv",
                        "benchmarks._apps:echo",
                        cluster=cluster,
                        bind=a.host,
                        port=port,
                        discovery="static" if curve else "none",
                        seeds=[f"tcp://{a.host}:{port}"] if curve else [],
                        **curve,
                    )
                    server.wait_ready("ready")
                    endpoint = f"tcp://{a.host}:{port}"
                    got = run_uvloop(
                        one_round(a, endpoint, cluster, keys["cli"] if mode == "on" else {})
                    )
                    rounds[mode].append(got)
                    log(
                        f"round {r + 1}/{a.rounds} CURVE {mode:<3} p50 {got['p50_us']:6.0f} µs  "
                        f"p99 {got['p99_us']:6.0f} µs  req/s @{a.in_flight} {got['req_s']:,.0f}  "
                        f"events/s {got['events_s']:,.0f} "
                        f"({got['events_received']:,}/{got['events_sent']:,})"
                    )
    return rounds


def format_report(a: Any, rounds: dict[str, list[dict[str, Any]]]) -> str:
    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[mode])

    rows = [
        [
            f"CURVE {mode}",
            fmt(med(mode, "p50_us")),
            fmt(med(mode, "p99_us")),
            fmt(med(mode, "req_s")),
            fmt(med(mode, "events_s")),
            f"{min(r['events_received'] for r in rounds[mode]):,}/{a.events:,}",
        ]
        for mode in MODES
    ]
    ratio = [
        "on / off",
        fmt(med("on", "p50_us") / med("off", "p50_us"), 2, "x"),
        fmt(med("on", "p99_us") / med("off", "p99_us"), 2, "x"),
        fmt(med("on", "req_s") / med("off", "req_s"), 2, "x"),
        fmt(med("on", "events_s") / med("off", "events_s"), 2, "x"),
        "",
    ]
    head = ["mode", "p50 µs", "p99 µs", f"req/s @{a.in_flight}", "events/s", "events received"]
    return (
        f"Medians of {a.rounds} rounds (the order of the modes alternating); 100-byte "
        f"payloads; {a.events:,} events published per round to one subscriber.\n\n"
        + table(head, [*rows, ratio])
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, rounds=3, seconds=2.0, in_flight=(64,))
    p.add_argument("--latency-count", type=int, default=3000, help="round trips, at most")
    p.add_argument("--total", type=int, default=200_000, help="requests per run, at most")
    p.add_argument("--events", type=int, default=50_000, help="events published per round")
    a = parse(p, argv)
    a.in_flight = a.in_flight[0]
    env = environment()
    failed: list[str] = []
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        rounds = run(a)
    except (BenchError, AssertionError) as exc:
        failed.append(f"error: {exc!r}")
    body = format_report(a, rounds) if rounds and all(rounds.values()) else ""
    body += f"\n\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}"
    config = {k: v for k, v in vars(a).items() if k != "out"}
    report(
        "bench_curve",
        "CURVE on against off",
        env,
        body,
        a.out,
        {"rounds": rounds, "config": config, "failed": failed},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

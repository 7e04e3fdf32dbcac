"""Metrics on against off: ``node.send()`` latency and throughput, in one run.

Each round starts, for each mode in turn (the order alternating), an echo server
(``python -m catga_zmq.node --app benchmarks._apps:echo``) and a client node here under
uvloop; with metrics on, both have a ``metrics_port`` (the client times its sends, the
server its handlers) and a thread here scrapes both ``/metrics`` once a second, as
Prometheus would. It measures:

- sequential round trips (p50/p99),
- requests/s with ``--in-flight`` (64) requests outstanding, and the client's CPU time
  per request in that run (less moved by other load on the machine than requests/s).

    python benchmarks/bench_metrics.py                  # 5 rounds, about 1 minute
    python benchmarks/bench_metrics.py --rounds 7 --seconds 3

Exit status 1 when a reply is wrong, a scrape fails or a round fails.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply
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
from catga_zmq import Node, StaticDiscovery

MODES = ("off", "on")
SCRAPE_INTERVAL = 1.0  # s, as the tests' Prometheus


class Scraper(threading.Thread):
    """GET each URL every SCRAPE_INTERVAL until stopped; counts scrapes and failures."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.done = threading.Event()
        self.scrapes = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.done.wait(SCRAPE_INTERVAL):
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as answer:
                        if b"catga_requests_" not in answer.read():
                            self.failures.append(f"{url}: no catga_requests_ family")
                    self.scrapes += 1
                except OSError as exc:
                    self.failures.append(f"{url}: {exc}")


async def one_round(a: Any, endpoint: str, cluster: str, metrics: dict[str, Any]) -> dict[str, Any]:
    client = Node("cli", cluster, discovery=StaticDiscovery([endpoint]), **metrics)
    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)

        async def call(payload: bytes) -> bytes:
            reply = await client.send(Echo(data=payload), timeout=10.0)
            assert isinstance(reply, EchoReply)
            return reply.data

        urls = [client.metrics_url, a.server_url] if metrics else []
        scraper = Scraper(urls)
        scraper.start()
        try:
            lat = await measure_latency(call, count=a.latency_count, max_seconds=a.seconds)
            thr = await measure_throughput(
                call, in_flight=a.in_flight, total=a.total, max_seconds=a.seconds, warmup=2000
            )
        finally:
            scraper.done.set()
            scraper.join(10)
    if scraper.failures:
        raise BenchError(f"scrapes failed: {scraper.failures[:3]}")
    return {
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "req_s": thr["req_s"],
        "client_cpu_us": thr["client_cpu_s"] / thr["count"] * 1e6 if thr["count"] else 0.0,
        "scrapes": scraper.scrapes,
    }


def run(a: Any) -> dict[str, list[dict[str, Any]]]:
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for r in range(a.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            with Processes() as procs:
                port, cluster = free_port(a.host), f"bench-metrics-{os.getpid()}-{r}"
                server_metrics = free_port(a.host) if mode == "on" else 0
                server = procs.node(
                    "srv",
                    "benchmarks._apps:echo",
                    cluster=cluster,
                    bind=a.host,
                    port=port,
                    discovery="none",
                    metrics_port=server_metrics,
                )
                server.wait_ready("ready")
                a.server_url = f"http://{a.host}:{server_metrics}/metrics"
                metrics = {"metrics_port": free_port(a.host)} if mode == "on" else {}
                got = run_uvloop(one_round(a, f"tcp://{a.host}:{port}", cluster, metrics))
                rounds[mode].append(got)
                log(
                    f"round {r + 1}/{a.rounds} metrics {mode:<3} p50 {got['p50_us']:6.0f} µs  "
                    f"p99 {got['p99_us']:6.0f} µs  req/s @{a.in_flight} {got['req_s']:,.0f}  "
                    f"client CPU {got['client_cpu_us']:5.1f} µs/req  scrapes {got['scrapes']}"
                )
    return rounds


def format_report(a: Any, rounds: dict[str, list[dict[str, Any]]]) -> str:
    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[mode])

    rows = [
        [
            f"metrics {mode}",
            fmt(med(mode, "p50_us")),
            fmt(med(mode, "p99_us")),
            fmt(med(mode, "req_s")),
            fmt(med(mode, "client_cpu_us"), 1),
        ]
        for mode in MODES
    ]
    ratio = [
        "on / off",
        fmt(med("on", "p50_us") / med("off", "p50_us"), 2, "x"),
        fmt(med("on", "p99_us") / med("off", "p99_us"), 2, "x"),
        fmt(med("on", "req_s") / med("off", "req_s"), 2, "x"),
        fmt(med("on", "client_cpu_us") / med("off", "client_cpu_us"), 2, "x"),
    ]
    head = ["mode", "p50 µs", "p99 µs", f"req/s @{a.in_flight}", "client CPU µs/req"]
    return (
        f"Medians of {a.rounds} rounds (the order of the modes alternating); 100-byte "
        "payloads; with metrics on, both nodes have a metrics_port and are scraped every "
        f"{SCRAPE_INTERVAL:.0f} s.\n\n" + table(head, [*rows, ratio])
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, rounds=5, seconds=2.0, in_flight=(64,))
    p.add_argument("--latency-count", type=int, default=3000, help="round trips, at most")
    p.add_argument("--total", type=int, default=200_000, help="requests per run, at most")
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
    config = {k: v for k, v in vars(a).items() if k not in ("out", "server_url")}
    report(
        "bench_metrics",
        "Metrics on against off",
        env,
        body,
        a.out,
        {"rounds": rounds, "config": config, "failed": failed},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

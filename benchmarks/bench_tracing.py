"""Tracing's cost: ``node.send()`` latency and throughput with tracing off, with only
OpenTelemetry's API present, and with the SDK tracing every request, in one run.

Each round starts, for each mode in turn (the order rotating), an echo server
(``python -m catga_zmq.node --app benchmarks._traced:echo``, ``BENCH_TRACING=MODE``) and a
client node here under uvloop, both in the same mode:

- ``off``: the ``tracing`` setting off on both sides: no span is looked for;
- ``api``: ``opentelemetry.trace`` imported, no tracer provider set (the ``otel`` extra
  installed and nothing configured): a node must not trace, and must cost what ``off``
  costs;
- ``sdk``: the SDK's ``TracerProvider`` on both sides (the client's given with
  ``Node(tracer_provider=)``, the server's the global one), its spans dropped by the
  exporter: a CLIENT and a SERVER span per request, short of exporting them.

It measures sequential round trips (p50/p99), requests/s with ``--in-flight`` (64)
requests outstanding, and the CPU time per request of that run in the client and in the
server (``/proc``): on a loaded machine the CPU time holds where requests/s does not. The
handler's time is what the replies carried (``Stats.remote_handler_us``).

    python benchmarks/bench_tracing.py                       # 3 rounds, about 1 minute
    python benchmarks/bench_tracing.py --rounds 5 --modes api,sdk

``--modes api`` alone runs against a checkout from before tracing (the others need it).
Exit status 1 when a reply is wrong or a round fails.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply
from benchmarks._common import (
    BenchError,
    choices,
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
from benchmarks._proc import Processes, cpu_seconds, free_port
from benchmarks._traced import MODES, drop_provider
from catga_zmq import Node, StaticDiscovery

_PROVIDER: Any = None


def client_settings(mode: str) -> dict[str, Any]:
    """The client node's own settings in ``mode`` (see the module's doc)."""
    global _PROVIDER
    if mode == "off":
        return {"tracing": False}
    import opentelemetry.trace  # noqa: F401 - present, as in "api"; no provider set

    if mode == "sdk":
        # Its own provider: the global one, once set, could not be unset for "api".
        _PROVIDER = _PROVIDER or drop_provider()
        return {"tracer_provider": _PROVIDER}
    return {}


async def one_round(
    a: Any, endpoint: str, cluster: str, mode: str, server_pid: int
) -> dict[str, Any]:
    client = Node("cli", cluster, discovery=StaticDiscovery([endpoint]), **client_settings(mode))
    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)

        async def call(payload: bytes) -> bytes:
            reply = await client.send(Echo(data=payload), timeout=10.0)
            assert isinstance(reply, EchoReply)
            return reply.data

        lat = await measure_latency(call, count=a.latency_count, max_seconds=a.seconds)
        # Warm up first, so that the server's CPU time below is that of the run alone.
        await measure_throughput(
            call, in_flight=a.in_flight, total=2000, max_seconds=a.seconds, warmup=0
        )
        server_cpu = cpu_seconds(server_pid) or 0.0
        thr = await measure_throughput(
            call, in_flight=a.in_flight, total=a.total, max_seconds=a.seconds, warmup=0
        )
        server_cpu = (cpu_seconds(server_pid) or 0.0) - server_cpu
        stats = client.stats()
        handled = getattr(stats, "remote_handled", 0)
        handler_us = getattr(stats, "remote_handler_us", 0)
    return {
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "req_s": thr["req_s"],
        "client_cpu_us": thr["client_cpu_s"] / thr["count"] * 1e6,
        "server_cpu_us": server_cpu / thr["count"] * 1e6,
        "handler_us_mean": handler_us / handled if handled else None,
    }


def run(a: Any) -> dict[str, list[dict[str, Any]]]:
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in a.modes}
    for r in range(a.rounds):
        order = a.modes[r % len(a.modes) :] + a.modes[: r % len(a.modes)]
        for mode in order:
            with Processes() as procs:
                port, cluster = free_port(a.host), f"bench-tracing-{os.getpid()}-{r}"
                server = procs.node(
                    "srv",
                    "benchmarks._traced:echo",
                    cluster=cluster,
                    bind=a.host,
                    port=port,
                    discovery="none",
                    env={"BENCH_TRACING": mode},
                )
                server.wait_ready("ready")
                got = run_uvloop(one_round(a, f"tcp://{a.host}:{port}", cluster, mode, server.pid))
                rounds[mode].append(got)
                mean = got["handler_us_mean"]
                log(
                    f"round {r + 1}/{a.rounds} tracing {mode:<3} p50 {got['p50_us']:6.0f} µs  "
                    f"p99 {got['p99_us']:6.0f} µs  req/s @{a.in_flight} {got['req_s']:,.0f}  "
                    f"CPU µs/req {got['client_cpu_us']:.1f} + {got['server_cpu_us']:.1f}  "
                    f"handler {fmt(mean, 1)} µs"
                )
    return rounds


def format_report(a: Any, rounds: dict[str, list[dict[str, Any]]]) -> str:
    def med(mode: str, key: str) -> float | None:
        values = [r[key] for r in rounds[mode] if r[key] is not None]
        return statistics.median(values) if values else None

    rows: list[list[object]] = [
        [
            mode,
            fmt(med(mode, "p50_us")),
            fmt(med(mode, "p99_us")),
            fmt(med(mode, "req_s")),
            f"{fmt(med(mode, 'client_cpu_us'), 1)} + {fmt(med(mode, 'server_cpu_us'), 1)}",
            fmt(med(mode, "handler_us_mean"), 1),
        ]
        for mode in a.modes
    ]
    base = a.modes[0]
    for mode in a.modes[1:]:

        def ratio(key: str, m: str = mode) -> str:
            num, den = med(m, key), med(base, key)
            return fmt(num / den, 2, "x") if num is not None and den else "-"

        cpu = f"{ratio('client_cpu_us')} + {ratio('server_cpu_us')}"
        rows.append([f"{mode} / {base}", ratio("p50_us"), ratio("p99_us"), ratio("req_s"), cpu, ""])
    head = [
        "mode",
        "p50 µs",
        "p99 µs",
        f"req/s @{a.in_flight}",
        "CPU µs/req client + server",
        "handler µs (mean)",
    ]
    return (
        f"Medians of {a.rounds} rounds (the order of the modes rotating); 100-byte "
        "payloads; the handler's time is the mean of what the replies carried "
        "(`Stats.remote_handler_us / remote_handled`, measured on the server).\n\n"
        + table(head, rows)
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, rounds=3, seconds=2.0, in_flight=(64,))
    p.add_argument("--latency-count", type=int, default=3000, help="round trips, at most")
    p.add_argument("--total", type=int, default=200_000, help="requests per run, at most")
    p.add_argument(
        "--modes", type=choices(MODES), default=MODES, metavar="M,M", help="off, api, sdk"
    )
    a = parse(p, argv)
    a.in_flight = a.in_flight[0]
    a.modes = tuple(a.modes)
    env = environment("opentelemetry-api", "opentelemetry-sdk")
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
        "bench_tracing",
        "Tracing off, OpenTelemetry's API only, and the SDK",
        env,
        body,
        a.out,
        {"rounds": rounds, "config": config, "failed": failed},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

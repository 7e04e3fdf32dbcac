"""Compression's cost and gain: ``node.send()`` with zstd on and off, for JSON-like
payloads of 200 B, 1 KiB and 16 KiB, in one run.

Each round starts, for each mode in turn (the order rotating), an echo server
(``python -m catga_zmq.node --app benchmarks._apps:echo``, with ``--compression zstd``
when on) and a client node here under uvloop in the same mode, and measures each payload
size in turn:

- payload bytes on the wire per request, the request's and the reply's, from what the
  payloads encode to less what both nodes counted saved (``Stats.compression_saved``);
  headers and ZMTP framing, the same in both modes, are left out;
- sequential round trips (p50/p99);
- requests/s with ``--in-flight`` (64) outstanding, and the CPU time per request of that
  run in the client and in the server (``/proc``): on a loaded machine the CPU time holds
  where requests/s does not.

The default threshold is 1 KiB, so the 200 B payload is never compressed: "on" and
"off" must cost the same there. The 1 KiB payload encodes to a little over it.

    python benchmarks/bench_compression.py                 # 3 rounds, about 2 minutes
    python benchmarks/bench_compression.py --rounds 5 --sizes 16384

Exit status 1 when a reply is wrong or a round fails.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from benchmarks._apps import Echo, EchoReply
from benchmarks._common import (
    BenchError,
    choices,
    environment,
    fmt,
    int_list,
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
from catga_zmq import Node, StaticDiscovery, Stats

MODES = ("off", "on")
SIZES = (200, 1024, 16 * 1024)


def json_like(size: int) -> bytes:
    """A JSON document of ``size`` bytes, records as an API sends them."""
    rows = [
        {"id": i, "name": f"user-{i}", "email": f"user-{i}@example.com", "active": i % 3 == 0}
        for i in range(size // 40 + 1)
    ]
    return json.dumps(rows).encode()[:size]


def settings(mode: str) -> dict[str, Any]:
    return {"compression": "zstd"} if mode == "on" else {}


async def one_round(
    a: Any, endpoint: str, cluster: str, mode: str, server_pid: int
) -> dict[int, dict[str, Any]]:
    client = Node("cli", cluster, discovery=StaticDiscovery([endpoint]), **settings(mode))
    found: dict[int, dict[str, Any]] = {}
    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)
        for size in a.sizes:
            data = json_like(size)

            async def call(payload: bytes, data: bytes = data) -> bytes:
                reply = await client.send(Echo(data=data), timeout=10.0)
                assert isinstance(reply, EchoReply)
                if reply.data != data:
                    raise BenchError(f"a {len(data)}-byte echo came back different")
                return payload

            lat = await measure_latency(call, count=a.latency_count, max_seconds=a.seconds)
            await measure_throughput(
                call, in_flight=a.in_flight, total=2000, max_seconds=a.seconds, warmup=0
            )
            saved_before = client.stats().compression_saved
            server_before = (await client.send(Stats(), timeout=10.0)).compression_saved
            server_cpu = cpu_seconds(server_pid) or 0.0
            thr = await measure_throughput(
                call, in_flight=a.in_flight, total=a.total, max_seconds=a.seconds, warmup=0
            )
            server_cpu = (cpu_seconds(server_pid) or 0.0) - server_cpu
            # The Stats request itself is small (never compressed): it changes nothing.
            saved = client.stats().compression_saved - saved_before
            saved += (await client.send(Stats(), timeout=10.0)).compression_saved - server_before
            plain = len(msgspec.msgpack.encode(Echo(data=data))) + len(
                msgspec.msgpack.encode(EchoReply(data=data))
            )
            count = thr["count"]
            found[size] = {
                "wire_bytes": plain - saved / count,
                "p50_us": lat["p50_us"],
                "p99_us": lat["p99_us"],
                "req_s": thr["req_s"],
                "client_cpu_us": thr["client_cpu_s"] / count * 1e6,
                "server_cpu_us": server_cpu / count * 1e6,
            }
    return found


def run(a: Any) -> dict[str, list[dict[int, dict[str, Any]]]]:
    rounds: dict[str, list[dict[int, dict[str, Any]]]] = {m: [] for m in a.modes}
    for r in range(a.rounds):
        order = a.modes[r % len(a.modes) :] + a.modes[: r % len(a.modes)]
        for mode in order:
            with Processes() as procs:
                port, cluster = free_port(a.host), f"bench-zstd-{os.getpid()}-{r}"
                server = procs.node(
                    "srv",
                    "benchmarks._apps:echo",
                    cluster=cluster,
                    bind=a.host,
                    port=port,
                    discovery="none",
                    compression="zstd" if mode == "on" else "none",
                )
                server.wait_ready("ready")
                got = run_uvloop(one_round(a, f"tcp://{a.host}:{port}", cluster, mode, server.pid))
                rounds[mode].append(got)
                for size, m in got.items():
                    log(
                        f"round {r + 1}/{a.rounds} {mode:<3} {size:>6} B  wire "
                        f"{m['wire_bytes']:8,.0f} B/req  p50 {m['p50_us']:6.0f} µs  req/s "
                        f"@{a.in_flight} {m['req_s']:8,.0f}  CPU µs/req "
                        f"{m['client_cpu_us']:.1f} + {m['server_cpu_us']:.1f}"
                    )
    return rounds


def format_report(a: Any, rounds: dict[str, list[dict[int, dict[str, Any]]]]) -> str:
    def med(mode: str, size: int, key: str) -> float:
        return statistics.median(r[size][key] for r in rounds[mode])

    rows: list[list[object]] = []
    for size in a.sizes:
        for mode in a.modes:
            rows.append(
                [
                    f"{size:,} B {mode}",
                    fmt(med(mode, size, "wire_bytes")),
                    fmt(med(mode, size, "p50_us")),
                    fmt(med(mode, size, "p99_us")),
                    fmt(med(mode, size, "req_s")),
                    f"{fmt(med(mode, size, 'client_cpu_us'), 1)} + "
                    f"{fmt(med(mode, size, 'server_cpu_us'), 1)}",
                ]
            )
        if len(a.modes) == 2:

            def ratio(key: str, s: int = size) -> str:
                return fmt(med("on", s, key) / med("off", s, key), 2, "x")

            rows.append(
                [
                    f"{size:,} B on / off",
                    ratio("wire_bytes"),
                    ratio("p50_us"),
                    ratio("p99_us"),
                    ratio("req_s"),
                    f"{ratio('client_cpu_us')} + {ratio('server_cpu_us')}",
                ]
            )
    head = [
        "payload, compression",
        "payload bytes/req (both ways)",
        "p50 µs",
        "p99 µs",
        f"req/s @{a.in_flight}",
        "CPU µs/req client + server",
    ]
    return (
        f"Medians of {a.rounds} rounds (the order of the modes rotating); JSON-like "
        "payloads echoed back, compression_threshold 1024 (the default), zstd level 3.\n\n"
        + table(head, rows)
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, rounds=3, seconds=2.0, in_flight=(64,))
    p.add_argument("--latency-count", type=int, default=2000, help="round trips, at most")
    p.add_argument("--total", type=int, default=50_000, help="requests per run, at most")
    p.add_argument("--sizes", type=int_list, default=SIZES, metavar="N,N", help="bytes")
    p.add_argument("--modes", type=choices(MODES), default=MODES, metavar="M,M", help="off, on")
    a = parse(p, argv)
    a.in_flight = a.in_flight[0]
    a.modes = tuple(a.modes)
    env = environment("zstandard")
    failed: list[str] = []
    rounds: dict[str, list[dict[int, dict[str, Any]]]] = {}
    try:
        rounds = run(a)
    except (BenchError, AssertionError) as exc:
        failed.append(f"error: {exc!r}")
    body = format_report(a, rounds) if rounds and all(rounds.values()) else ""
    body += f"\n\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}"
    config = {k: v for k, v in vars(a).items() if k != "out"}
    report(
        "bench_compression",
        "Compression on and off",
        env,
        body,
        a.out,
        {"rounds": rounds, "config": config, "failed": failed},
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

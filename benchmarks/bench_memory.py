"""Memory of nodes: idle RSS, and RSS across 1,000,000 requests.

Every process on 127.0.0.1, the client side in this process under uvloop:

- ``idle``: RSS of ``python -m catga_zmq.node --discovery none`` and of ``--discovery mdns``
  (a cluster name of its own), sampled for ``--idle-seconds`` after the node printed its
  ready line; next to them a bare interpreter that imported catga_zmq.
- ``echo``: a server node (``--app benchmarks._apps:echo``) and a client node here;
  ``--requests`` (1,000,000) 100-byte echo requests at ``--in-flight`` (64), every reply
  checked. RSS of both processes and the client's Python heap blocks
  (``sys.getallocatedblocks()``) every 100,000 requests. Verdict: no growth beyond noise:
  after the first 100,000 (warm-up: caches, allocator arenas, libzmq buffers) neither
  process's RSS grows more than ``--noise-mb`` (2 MB) by the end. RSS that rises while
  the Python blocks stay flat is an allocator high-water mark, not objects kept alive.

That timed-out requests leave nothing behind is a test (``tests/test_leaks.py``).

    python benchmarks/bench_memory.py                      # both parts, about 1 minute
    python benchmarks/bench_memory.py --requests 200000 --only echo

Exit status 1 when a check fails (growth beyond noise, a wrong reply, a request left
pending).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import Echo, EchoReply
from benchmarks._common import (
    BenchError,
    ReplyMismatch,
    choices,
    environment,
    parse,
    parser,
    payload_for,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Child, Processes, free_port, rss_bytes
from catga_zmq import Node, StaticDiscovery, Stats

MB = 1024 * 1024
PARTS = ("idle", "echo")


def mb(n: float | None) -> float:
    return round((n or 0) / MB, 2)


# --- part (a): idle nodes ---------------------------------------------------------------------


def run_idle(a: Any) -> list[dict[str, Any]]:
    cluster = f"bench-mem-{os.getpid()}"
    with Processes() as procs:
        started = [
            procs.script(
                "python + import catga_zmq (reference)",
                "-c",
                "import catga_zmq, time; print('ready', flush=True); time.sleep(600)",
            ),
            *(
                procs.node(
                    f"idle-{d}",
                    None,
                    cluster=f"{cluster}-{d}",
                    discovery=d,
                    name=f"node --discovery {d}",
                )
                for d in ("none", "mdns")
            ),
        ]
        for child in started:
            child.wait_ready("ready")
        series: dict[str, list[int]] = {c.name: [] for c in started}
        t0, interval = time.monotonic(), 0.5
        for i in range(int(a.idle_seconds / interval) + 1):
            for child in started:
                if not child.alive():
                    raise BenchError(f"{child.name} exited with {child.popen.returncode}")
                series[child.name].append(rss_bytes(child.pid) or 0)
            time.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
    rows = []
    for name, values in series.items():
        half = values[len(values) // 2 :]
        rows.append(
            {
                "process": name,
                "rss_at_ready_mb": mb(values[0]),
                "rss_settled_mb": mb(statistics.median(half)),
                "rss_max_mb": mb(max(values)),
                "drift_second_half_mb": mb(half[-1] - half[0]),
                "series_mb": list(map(mb, values)),
            }
        )
    return rows


def format_idle(a: Any, rows: list[dict[str, Any]]) -> str:
    keys = ("rss_at_ready_mb", "rss_settled_mb", "rss_max_mb", "drift_second_half_mb")
    head = ["process", "RSS at ready MB", "settled MB (median, 2nd half)", "max MB"]
    return f"### Idle RSS (sampled every 0.5 s for {a.idle_seconds:g} s after ready)\n\n" + table(
        [*head, "drift 2nd half MB"], [[r["process"], *(f"{r[k]:.2f}" for k in keys)] for r in rows]
    )


# --- part (b): a million echo requests --------------------------------------------------------


async def run_echo(a: Any, server: Child, endpoint: str, cluster: str) -> dict[str, Any]:
    client = Node("mem-echo-cli", cluster, discovery=StaticDiscovery([endpoint]))
    me, every, total = os.getpid(), a.sample_every, a.requests
    samples: list[dict[str, Any]] = []
    issued = completed = 0
    error: str | None = None

    def sample(done: int) -> None:
        samples.append(
            {
                "requests": done,
                "t": round(time.perf_counter() - t0, 2),
                "client_rss": rss_bytes(me),
                "server_rss": rss_bytes(server.pid),
                "py_blocks": sys.getallocatedblocks(),
            }
        )

    async def stats(node_id: str) -> dict[str, Any]:
        return msgspec.structs.asdict(await client.send(Stats(), node=node_id, timeout=5.0))

    async with client:
        await client.wait_for_peers(1, timeout=20.0, handles=Echo)
        before = await stats("srv")
        gc.collect()
        t0 = time.perf_counter()
        sample(0)
        deadline = t0 + a.max_seconds
        send = client.send

        async def worker() -> None:
            nonlocal issued, completed
            while issued < total and time.perf_counter() < deadline:
                payload = payload_for(issued)
                issued += 1
                reply = await send(Echo(data=payload))
                if type(reply) is not EchoReply or reply.data != payload:
                    raise ReplyMismatch(f"wrong reply {reply!r:.80}")
                completed += 1
                if completed % every == 0:
                    sample(completed)

        try:
            async with asyncio.timeout(a.max_seconds + 30), asyncio.TaskGroup() as tg:
                for _ in range(a.in_flight):
                    tg.create_task(worker())
        except TimeoutError:
            error = f"stalled after {completed} replies"
        except BaseExceptionGroup as group:
            error = f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"
        elapsed = time.perf_counter() - t0
        if completed % every:
            sample(completed)
        if completed < total and error is None:
            error = f"time bound {a.max_seconds:g} s reached after {completed} requests"
        await asyncio.sleep(1.0)  # the last replies land; then collect and look again
        gc.collect()
        settled = {
            "client_rss": rss_bytes(me),
            "server_rss": rss_bytes(server.pid),
            "py_blocks": sys.getallocatedblocks(),
        }
        after, own = await stats("srv"), await stats(client.node_id)

    warm = [s for s in samples if s["requests"] >= every] or samples
    checks: dict[str, Any] = {}
    for proc in ("client_rss", "server_rss"):
        values = [s[proc] for s in warm]
        grew = values[-1] - values[0]
        checks[proc] = {
            "before_mb": mb(samples[0][proc]),
            "after_mb": mb(samples[-1][proc]),
            "settled_mb": mb(settled[proc]),
            "growth_after_warmup_mb": mb(grew),
            "spread_after_warmup_mb": mb(max(values) - min(values)),
            "within_noise": grew < a.noise_mb * MB,
        }
    ok = error is None and own["pending"] == 0
    ok = ok and all(checks[p]["within_noise"] for p in ("client_rss", "server_rss"))
    return {
        "completed": completed,
        "seconds": round(elapsed, 2),
        "req_s": round(completed / elapsed) if elapsed > 0 else 0,
        "warmup": warm[0]["requests"],
        "leak_detectable_bytes_per_request": round(
            a.noise_mb * MB / max(1, warm[-1]["requests"] - warm[0]["requests"])
        ),
        "samples": samples,
        "settled": settled,
        "checks": checks,
        "client_pending": own["pending"],
        "server_stats_before": before,
        "server_stats_after": after,
        "error": error,
        "ok": ok,
    }


def format_echo(a: Any, r: dict[str, Any]) -> str:
    rows = [
        [
            f"{s['requests']:,}",
            f"{s['t']:.1f}",
            f"{mb(s['client_rss']):.2f}",
            f"{mb(s['server_rss']):.2f}",
            f"{s['py_blocks']:,}",
        ]
        for s in r["samples"]
    ]
    st = r["settled"]
    rows.append(
        [
            "settled (1 s later, gc)",
            "",
            f"{mb(st['client_rss']):.2f}",
            f"{mb(st['server_rss']):.2f}",
            f"{st['py_blocks']:,}",
        ]
    )
    verdicts = []
    for proc, name in (("client_rss", "client (this process)"), ("server_rss", "server node")):
        c = r["checks"][proc]
        verdicts.append(
            [
                name,
                f"{c['before_mb']:.2f}",
                f"{c['after_mb']:.2f}",
                f"{c['growth_after_warmup_mb']:+.2f}",
                f"{c['spread_after_warmup_mb']:.2f}",
                "no growth beyond noise" if c["within_noise"] else "GROWTH beyond noise",
            ]
        )
    head = ["process", "before MB", "after MB", "growth after warm-up MB"]
    return "\n".join(
        [
            f"### RSS across {r['completed']:,} echo requests ({a.in_flight} in flight, "
            f"{r['req_s']:,} req/s, {r['seconds']} s)\n",
            table(
                ["requests", "t s", "client RSS MB", "server RSS MB", "client Python blocks"], rows
            ),
            f"\nNoise: RSS growth from the first sample after warm-up ({r['warmup']:,}) to the last "
            f"< {a.noise_mb:g} MB (a leak of {r['leak_detectable_bytes_per_request']} B per request "
            f"would show). Requests still pending at the client at the end (its `Stats()`): "
            f"{r['client_pending']}.\n",
            table([*head, "spread after warm-up MB", "verdict"], verdicts),
            f"\nERROR: {r['error']}" if r["error"] else "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, in_flight=(64,))
    p.add_argument("--only", type=choices(PARTS), default=PARTS, metavar="idle,echo")
    p.add_argument("--idle-seconds", type=float, default=8.0, help="idle sampling time (s)")
    p.add_argument("--requests", type=int, default=1_000_000, help="echo requests")
    p.add_argument("--sample-every", type=int, default=0, help="requests per sample (1/10)")
    p.add_argument("--max-seconds", type=float, default=90.0, help="time bound of a part (s)")
    p.add_argument("--noise-mb", type=float, default=2.0, help="RSS growth that is noise (MB)")
    a = parse(p, argv)
    a.in_flight, a.sample_every = a.in_flight[0], a.sample_every or max(1, a.requests // 10)
    env = environment()
    results: dict[str, Any] = {}
    failed: list[str] = []
    try:
        if "idle" in a.only:
            results["idle"] = run_idle(a)
        if "echo" in a.only:
            with Processes() as procs:
                port, cluster = free_port(a.host), f"bench-mem-{os.getpid()}"
                app, bind = "benchmarks._apps:echo", a.host
                server = procs.node(
                    "srv", app, cluster=cluster, bind=bind, port=port, discovery="none"
                )
                server.wait_ready("ready")
                endpoint = f"tcp://{a.host}:{port}"
                results["echo"] = run_uvloop(run_echo(a, server, endpoint, cluster))
                if not results["echo"]["ok"]:
                    failed.append("echo")
    except BenchError as exc:
        failed.append(f"error: {exc}")
    body = [format_idle(a, results["idle"])] if "idle" in results else []
    body += [format_echo(a, results["echo"])] if "echo" in results else []
    body.append(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    results.update(config=vars(a), failed=failed)
    report("bench_memory", "catga_zmq memory", env, "\n\n".join(body), a.out, results)
    return 1 if failed else 0


if __name__ == "__main__":
    run_script(main)

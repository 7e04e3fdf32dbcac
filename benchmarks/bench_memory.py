"""Memory of nodes: idle RSS, RSS across 1,000,000 requests, the pending map after timeouts.

Three parts, every process on 127.0.0.1, the client side in this process under uvloop:

- ``idle``: RSS of ``python -m catga_zmq.node --discovery none`` and of ``--discovery
  mdns`` (a cluster name of its own), sampled for ``--idle-seconds`` after the node
  printed its ready line; next to them a bare interpreter that imported catga_zmq.
- ``echo``: a server node (``--app benchmarks._echo_app:node``) and a client node in this
  process; ``--requests`` (1,000,000) 100-byte echo requests at ``--in-flight`` (64),
  every reply checked. RSS of both processes (and the client's Python heap blocks)
  every 100,000 requests. Verdict: no growth beyond noise, i.e. after the first
  100,000 (warm-up: caches, pymalloc arenas, libzmq buffers) the RSS of neither process
  grows more than ``--noise-mb`` (2 MB) by the end.
- ``timeouts``: a server whose handler sleeps 0.2 s, and a client that sends
  ``--timeout-requests`` (100,000) requests with a 0.05 s timeout, 5,000 at once. Every
  one must end in ``RequestTimeout``; afterwards the client's pending map is empty and
  its deadline heap compacted (``len(pending._heap)`` at most the compaction slack). The
  run stops to settle (late replies in, ``gc.collect()``) after 20, 40, 60, 80 and 100%
  of the requests; verdict: the settled client RSS does not grow beyond noise over the
  last 40% (a leak would grow with the count; the backlog's high-water mark does not).
  The client's circuit breaker is set out of reach (``breaker_threshold``): otherwise it
  isolates the silent server after 5 timeouts and the rest fail at once with
  ``NoNodes``, never reaching the pending map, which is what this part is about.

RSS is read from /proc (psutil elsewhere); "Python blocks" is ``sys.getallocatedblocks()``
and "pymalloc arenas" the count of CPython's 1 MiB small-object arenas: RSS that rises
while both stay flat is allocator high-water mark, not objects kept alive.

    python benchmarks/bench_memory.py                          # all parts, about 1.5 min
    python benchmarks/bench_memory.py --requests 200000        # a shorter echo part
    python benchmarks/bench_memory.py --only echo --json memory.json

Prints markdown tables, the series, and the machine and versions. Exit status 1 when a
check fails (growth beyond noise, a wrong reply, a pending entry left behind).

No ``from __future__ import annotations`` in this module: the ``Nap`` handler's request
type is taken from its annotation, which must stay a real class.
"""

import argparse
import asyncio
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO_ROOT,
    BenchError,
    ReplyMismatch,
    environment,
    format_environment,
    payload_for,
    run_uvloop,
)
from benchmarks.raw_echo import read_line, stop_process
from catga_zmq import Node, Request, RequestTimeout, StaticDiscovery, Stats

MB = 1024 * 1024
NOISE_MB = 2.0  # MB of RSS growth after warm-up that still counts as noise
READY_TIMEOUT = 20.0  # s for a node process to print its ready line
PEER_TIMEOUT = 10.0  # s for the client node to see the server node
STOP_TIMEOUT = 15.0  # s for a node process to drain on SIGTERM
ECHO_APP = "benchmarks._echo_app:node"
NAP_APP = "benchmarks.bench_memory:nap_node"
NAP_SLEEP = 0.2  # s the nap handler sleeps: 4x the timeout, so every request times out
NAP_MAX_CONCURRENCY = 50_000  # batches overlap on the server while their naps finish
NAP_PAYLOAD_SIZE = 100  # bytes


# --- the nap server (imported by the server process as benchmarks.bench_memory) ---------


class Napped(msgspec.Struct):
    data: bytes


class Nap(Request[Napped]):
    """Sleeps ``seconds`` on the server, then echoes ``data``."""

    __wire_name__ = "benchmarks.bench_memory.Nap"
    seconds: float
    data: bytes


nap_node = Node(
    node_id="nap-srv", bind="127.0.0.1", discovery=None, max_concurrency=NAP_MAX_CONCURRENCY
)


@nap_node.handler
async def nap(req: Nap) -> Napped:
    await asyncio.sleep(req.seconds)
    return Napped(data=req.data)


# --- measuring processes ------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc; psutil elsewhere)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except FileNotFoundError:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)


def pymalloc_arenas() -> int | None:
    """pymalloc arenas this process holds now (CPython's ``sys._debugmallocstats``).

    An arena is freed only when every block in it is free, so a count that rises while
    the allocated blocks do not is fragmentation (a high-water mark), not a leak.
    """
    stats = getattr(sys, "_debugmallocstats", None)
    if stats is None:
        return None
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)  # it writes to the C-level stderr
            stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    m = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text)
    return int(m.group(1).replace(",", "")) if m else None


def mb(n: float) -> float:
    return round(n / MB, 2)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("CATGA_DISCOVERY", None)  # the command line decides
    return env


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log: Any  # the temporary file its stderr goes to
    ready: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def endpoint(self) -> str:
        for part in self.ready.split():
            if part.startswith("endpoint="):
                return part.split("=", 1)[1]
        raise BenchError(f"{self.name}: no endpoint in its ready line {self.ready!r}")

    def stderr_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]


def start_child(name: str, argv: list[str], children: list[Child]) -> Child:
    """Start a child, stdout piped (its ready line), stderr to a temporary file."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop_children
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO_ROOT,
        env=_child_env(),
    )
    child = Child(name, argv, proc, log)
    children.append(child)  # stopped by PID in main's finally, whatever happens next
    return child


def wait_ready(child: Child) -> None:
    try:
        child.ready = read_line(child.proc, READY_TIMEOUT)
    except BenchError as exc:
        raise BenchError(f"{child.name}: {exc}; stderr: {child.stderr_tail(600)!r}") from None


def stop_children(children: list[Child]) -> None:
    for child in children:
        try:
            stop_process(child.proc, STOP_TIMEOUT)
        finally:
            child.log.close()
    children.clear()


def node_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "catga_zmq.node", "--bind", "127.0.0.1", *args]


# --- part (a): idle nodes -----------------------------------------------------------------


def run_idle(config: "Config", children: list[Child]) -> dict[str, Any]:
    cluster = f"bench-mem-{os.getpid()}"
    specs = {
        "python + import catga_zmq (reference)": [
            sys.executable,
            "-c",
            "import catga_zmq, time; print('ready', flush=True); time.sleep(600)",
        ],
        "node --discovery none": node_argv(
            "--discovery", "none", "--cluster", cluster + "-none", "--log-level", "WARNING"
        ),
        "node --discovery mdns": node_argv(
            "--discovery", "mdns", "--cluster", cluster + "-mdns", "--log-level", "WARNING"
        ),
    }
    started = [start_child(name, argv, children) for name, argv in specs.items()]
    for child in started:
        wait_ready(child)
    t0 = time.monotonic()
    series: dict[str, list[tuple[float, int]]] = {c.name: [] for c in started}
    interval = 0.5
    for i in range(int(config.idle_seconds / interval) + 1):
        for child in started:
            if child.proc.poll() is not None:
                raise BenchError(f"{child.name} exited with {child.proc.returncode}")
            series[child.name].append((round(time.monotonic() - t0, 2), rss_bytes(child.pid)))
        time.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
    rows = []
    for child in started:
        values = [v for _, v in series[child.name]]
        half = values[len(values) // 2 :]
        rows.append(
            {
                "process": child.name,
                "pid": child.pid,
                "command": " ".join(Path(a).name if a == sys.executable else a for a in child.argv),
                "rss_at_ready_mb": mb(values[0]),
                "rss_settled_mb": mb(statistics.median(half)),
                "rss_max_mb": mb(max(values)),
                "drift_second_half_mb": mb(half[-1] - half[0]),
                "series_mb": [(t, mb(v)) for t, v in series[child.name]],
            }
        )
    stop_children(children)
    return {"seconds": config.idle_seconds, "rows": rows}


def format_idle(result: dict[str, Any]) -> str:
    lines = [
        f"### Idle RSS (sampled every 0.5 s for {result['seconds']:g} s after ready)",
        "",
        "| process | RSS at ready MB | settled MB (median, 2nd half) | max MB | drift 2nd half MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['process']} | {r['rss_at_ready_mb']:.1f} | {r['rss_settled_mb']:.1f} "
            f"| {r['rss_max_mb']:.1f} | {r['drift_second_half_mb']:+.2f} |"
        )
    return "\n".join(lines)


# --- the client node -----------------------------------------------------------------------


async def open_client(node_id: str, server: Child, **settings: Any) -> Node:
    client = Node(node_id=node_id, discovery=StaticDiscovery([server.endpoint()]), **settings)
    await client.start()
    try:
        await client.wait_for_peers(1, timeout=PEER_TIMEOUT)
    except Exception as exc:
        await client.aclose()
        status = server.proc.poll()
        raise BenchError(
            f"{server.name} (pid {server.pid}, status {status}) not seen: {exc!r}; "
            f"stderr: {server.stderr_tail(600)!r}"
        ) from exc
    return client


async def server_stats(client: Node, server_id: str) -> dict[str, Any]:
    try:
        stats = await client.send(Stats(), node=server_id, timeout=5.0)
    except Exception as exc:
        return {"error": repr(exc)}
    return msgspec.structs.asdict(stats)


def client_state(client: Node) -> dict[str, int]:
    pending = client.pending
    return {
        "pending": len(pending),
        "pending_heap": len(pending._heap),
        "late_replies": pending.late_replies,
        "serving_tasks": len(client._serving),
        "node_tasks": len(client._tasks),
        "peers": len(client.membership.peers),
        "py_allocated_blocks": sys.getallocatedblocks(),
    }


def growth_after_warmup(values: list[int]) -> tuple[int, int]:
    """(last - first, max - min) over ``values`` (the samples after warm-up)."""
    return values[-1] - values[0], max(values) - min(values)


# --- part (b): a million echo requests -----------------------------------------------------


async def run_echo_async(config: "Config", server: Child) -> dict[str, Any]:
    from benchmarks._echo_app import Echo, EchoReply

    client = await open_client("mem-echo-cli", server)
    me = os.getpid()
    samples: list[dict[str, Any]] = []
    total = config.requests
    every = config.sample_every
    issued = 0
    completed = 0
    error: str | None = None

    def sample(done: int) -> None:
        row = {
            "requests": done,
            "t": round(time.perf_counter() - t0, 2),
            "client_rss": rss_bytes(me),
            "server_rss": rss_bytes(server.pid),
            "py_blocks": sys.getallocatedblocks(),
            "pymalloc_arenas": pymalloc_arenas(),
            "pending": len(client.pending),
            "pending_heap": len(client.pending._heap),
        }
        samples.append(row)

    try:
        before_stats = await server_stats(client, "srv")
        gc.collect()
        t0 = time.perf_counter()
        sample(0)
        deadline = t0 + config.max_seconds
        send = client.send

        async def worker() -> None:
            nonlocal issued, completed
            while issued < total and time.perf_counter() < deadline:
                seq = issued
                issued += 1
                payload = payload_for(seq)
                reply = await send(Echo(data=payload))
                if type(reply) is not EchoReply or reply.data != payload:
                    raise ReplyMismatch(f"request {seq}: wrong reply {reply!r:.80}")
                completed += 1
                if completed % every == 0:
                    sample(completed)

        try:
            async with asyncio.timeout(config.max_seconds + 30), asyncio.TaskGroup() as tg:
                for _ in range(config.in_flight):
                    tg.create_task(worker())
        except TimeoutError:
            error = f"stalled after {completed} replies"
        except BaseExceptionGroup as group:
            error = f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}"
        elapsed = time.perf_counter() - t0
        if completed % every:
            sample(completed)
        if completed < total and error is None:
            error = f"time bound {config.max_seconds:g} s reached after {completed} requests"
        # Let the last replies land, collect garbage, and look again.
        await asyncio.sleep(1.0)
        gc.collect()
        settled = {
            "client_rss": rss_bytes(me),
            "server_rss": rss_bytes(server.pid),
            "py_blocks": sys.getallocatedblocks(),
            "pymalloc_arenas": pymalloc_arenas(),
        }
        after_stats = await server_stats(client, "srv")
        state = client_state(client)
    finally:
        await client.aclose()

    warm = [s for s in samples if s["requests"] >= every] or samples
    checks: dict[str, Any] = {}
    for proc in ("client_rss", "server_rss"):
        grew, spread = growth_after_warmup([s[proc] for s in warm])
        checks[proc] = {
            "growth_after_warmup_mb": mb(grew),
            "spread_after_warmup_mb": mb(spread),
            "before_mb": mb(samples[0][proc]),
            "after_mb": mb(samples[-1][proc]),
            "settled_mb": mb(settled[proc]),
            "within_noise": grew < config.noise_mb * MB,
        }
    checks["py_blocks"] = {
        "growth_after_warmup": warm[-1]["py_blocks"] - warm[0]["py_blocks"],
        "before": samples[0]["py_blocks"],
        "after": samples[-1]["py_blocks"],
        "settled": settled["py_blocks"],
    }
    ok = error is None and all(checks[p]["within_noise"] for p in ("client_rss", "server_rss"))
    ok = ok and state["pending"] == 0
    return {
        "requests": total,
        "completed": completed,
        "seconds": round(elapsed, 2),
        "req_s": round(completed / elapsed) if elapsed > 0 else 0,
        "in_flight": config.in_flight,
        "warmup": warm[0]["requests"],
        "leak_detectable_bytes_per_request": round(
            config.noise_mb * MB / max(1, warm[-1]["requests"] - warm[0]["requests"])
        ),
        "samples": samples,
        "settled": settled,
        "checks": checks,
        "client_state": state,
        "server_stats_before": before_stats,
        "server_stats_after": after_stats,
        "error": error,
        "ok": ok,
    }


def format_echo(result: dict[str, Any], noise_mb: float) -> str:
    c = result["checks"]
    lines = [
        f"### RSS across {result['completed']:,} echo requests "
        f"({result['in_flight']} in flight, {result['req_s']:,} req/s, {result['seconds']} s)",
        "",
        "| requests | t s | client RSS MB | server RSS MB | client Python blocks "
        "| pymalloc arenas | pending | heap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["samples"]:
        arenas = "-" if s["pymalloc_arenas"] is None else str(s["pymalloc_arenas"])
        lines.append(
            f"| {s['requests']:,} | {s['t']:.1f} | {mb(s['client_rss']):.2f} "
            f"| {mb(s['server_rss']):.2f} | {s['py_blocks']:,} | {arenas} | {s['pending']} "
            f"| {s['pending_heap']} |"
        )
    st = result["settled"]
    arenas = "-" if st["pymalloc_arenas"] is None else str(st["pymalloc_arenas"])
    lines.append(
        f"| settled (1 s later, gc) | | {mb(st['client_rss']):.2f} | {mb(st['server_rss']):.2f} "
        f"| {st['py_blocks']:,} | {arenas} | {result['client_state']['pending']} "
        f"| {result['client_state']['pending_heap']} |"
    )
    lines += [
        "",
        f"Noise: RSS growth from the first sample after warm-up ({result['warmup']:,}) to "
        f"the last < {noise_mb:g} MB (a leak of {result['leak_detectable_bytes_per_request']} "
        f"B per request would show).",
        "",
        "| process | before MB | after MB | growth after warm-up MB | spread after warm-up MB | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for proc, label in (("client_rss", "client (this process)"), ("server_rss", "server node")):
        x = c[proc]
        verdict = "no growth beyond noise" if x["within_noise"] else "GROWTH beyond noise"
        lines.append(
            f"| {label} | {x['before_mb']:.2f} | {x['after_mb']:.2f} "
            f"| {x['growth_after_warmup_mb']:+.2f} | {x['spread_after_warmup_mb']:.2f} | {verdict} |"
        )
    if result["error"]:
        lines.append(f"\nERROR: {result['error']}")
    return "\n".join(lines)


# --- part (c): a burst of timeouts ---------------------------------------------------------


async def run_timeouts_async(config: "Config", server: Child) -> dict[str, Any]:
    client = await open_client("mem-timeout-cli", server, breaker_threshold=1_000_000_000)
    me = os.getpid()
    total, batch = config.timeout_requests, config.timeout_batch
    timeout = config.timeout
    outcomes: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    data = bytes(NAP_PAYLOAD_SIZE)
    error: str | None = None
    sent = 0
    t0 = time.perf_counter()
    settle_at = settle_points(total, batch)

    def sample(settled: bool = False) -> None:
        samples.append(
            {
                "requests": sent,
                "settled": settled,
                "t": round(time.perf_counter() - t0, 2),
                "client_rss": rss_bytes(me),
                "server_rss": rss_bytes(server.pid),
                "py_blocks": sys.getallocatedblocks(),
                "pymalloc_arenas": pymalloc_arenas(),
                "pending": len(client.pending),
                "pending_heap": len(client.pending._heap),
                "late_replies": client.pending.late_replies,
            }
        )

    async def settle() -> None:
        # The naps end NAP_SLEEP after their batch; let their late replies land, collect
        # the garbage, then measure: every settled point is taken the same way.
        await asyncio.sleep(NAP_SLEEP + 0.5)
        gc.collect()
        sample(settled=True)

    async def one() -> str:
        try:
            await client.send(Nap(seconds=NAP_SLEEP, data=data), timeout=timeout)
        except RequestTimeout:
            return "RequestTimeout"
        except Exception as exc:
            return type(exc).__name__
        return "reply"

    try:
        gc.collect()
        sample(settled=True)
        deadline = t0 + config.max_seconds
        while sent < total and time.perf_counter() < deadline:
            n = min(batch, total - sent)
            try:
                async with asyncio.timeout(timeout + 10.0):
                    results = await asyncio.gather(*(one() for _ in range(n)))
            except TimeoutError:
                error = f"a batch of {n} did not end within {timeout + 10:g} s"
                break
            outcomes.update(results)
            sent += n
            if sent % config.timeout_sample_every == 0 and sent not in settle_at:
                sample()
            if sent in settle_at:
                sample()
                if sent == total:
                    right_after = client_state(client)
                await settle()
        elapsed = time.perf_counter() - t0
        if sent < total:
            error = error or f"time bound {config.max_seconds:g} s reached after {sent} requests"
            right_after = client_state(client)
            await settle()
        state = client_state(client)
        stats = await server_stats(client, "nap-srv")
    finally:
        await client.aclose()

    settled = [s for s in samples if s["settled"]]
    # Warm-up: up to the first settled point after the start (20% of the requests, the
    # backlog's high-water mark builds there). No leak: the last 40% adds < noise.
    baseline = settled[1] if len(settled) > 2 else settled[0]
    mid = min(settled, key=lambda s: abs(s["requests"] - 0.6 * total))
    final = settled[-1]
    growth_second_half = final["client_rss"] - mid["client_rss"]
    growth_after_warmup = final["client_rss"] - baseline["client_rss"]
    window = max(1, final["requests"] - mid["requests"])
    heap_bound = 1024  # compaction slack: answered entries may stay until 2 * pending + 1024
    checks = {
        "all_timed_out": outcomes.get("RequestTimeout", 0) == sent == total,
        "pending_empty": right_after["pending"] == 0 and state["pending"] == 0,
        "heap_compacted": state["pending_heap"] <= heap_bound,
        "heap_bound": heap_bound,
        "warmup_requests": baseline["requests"],
        "mid_requests": mid["requests"],
        "client_rss_warmup_mb": mb(baseline["client_rss"]),
        "client_rss_mid_mb": mb(mid["client_rss"]),
        "client_rss_final_mb": mb(final["client_rss"]),
        "client_rss_growth_after_warmup_mb": mb(growth_after_warmup),
        "client_rss_growth_last_part_mb": mb(growth_second_half),
        "leak_detectable_bytes_per_request": round(config.noise_mb * MB / window),
        "client_rss_within_noise": growth_second_half < config.noise_mb * MB,
        "py_blocks_warmup": baseline["py_blocks"],
        "py_blocks_final": final["py_blocks"],
    }
    ok = error is None and all(
        checks[k]
        for k in ("all_timed_out", "pending_empty", "heap_compacted", "client_rss_within_noise")
    )
    return {
        "requests": total,
        "sent": sent,
        "batch": batch,
        "timeout_s": timeout,
        "nap_s": NAP_SLEEP,
        "seconds": round(elapsed, 2),
        "outcomes": dict(outcomes),
        "samples": samples,
        "client_state_right_after": right_after,
        "client_state_settled": state,
        "server_stats": stats,
        "checks": checks,
        "error": error,
        "ok": ok,
    }


def settle_points(total: int, batch: int) -> set[int]:
    """Request counts (whole batches) after which the timeout run settles and measures."""
    points = {total}
    for fraction in (0.2, 0.4, 0.6, 0.8):
        n = round(total * fraction / batch) * batch
        if 0 < n < total:
            points.add(n)
    return points


def format_timeouts(result: dict[str, Any], noise_mb: float) -> str:
    c = result["checks"]
    lines = [
        f"### Pending map after {result['sent']:,} timeouts "
        f"(timeout {result['timeout_s']:g} s, handler sleeps {result['nap_s']:g} s, "
        f"{result['batch']:,} at once, {result['seconds']} s)",
        "",
        "Rows marked *settled* wait for the late replies and run `gc.collect()` first; the "
        "others are taken as the run goes.",
        "",
        "| requests | t s | client RSS MB | server RSS MB | client Python blocks | pymalloc arenas "
        "| pending | heap | late replies |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["samples"]:
        req = f"{s['requests']:,}" + (" *settled*" if s["settled"] else "")
        arenas = "-" if s["pymalloc_arenas"] is None else str(s["pymalloc_arenas"])
        lines.append(
            f"| {req} | {s['t']:.1f} | {mb(s['client_rss']):.2f} | {mb(s['server_rss']):.2f} "
            f"| {s['py_blocks']:,} | {arenas} | {s['pending']} | {s['pending_heap']} "
            f"| {s['late_replies']:,} |"
        )
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(result["outcomes"].items()))
    ra, st = result["client_state_right_after"], result["client_state_settled"]
    lines += [
        "",
        f"- outcomes: {outcomes}; every request timed out: {'yes' if c['all_timed_out'] else 'NO'}",
        f"- `len(client.pending)`: {ra['pending']} right after the last batch, "
        f"{st['pending']} settled: {'empty' if c['pending_empty'] else 'NOT EMPTY'}",
        f"- `len(client.pending._heap)`: {ra['pending_heap']} right after, "
        f"{st['pending_heap']} settled (bound {c['heap_bound']}): "
        f"{'compacted' if c['heap_compacted'] else 'NOT compacted'}",
        f"- client RSS, settled: {c['client_rss_warmup_mb']:.2f} MB after "
        f"{c['warmup_requests']:,} (warm-up), {c['client_rss_mid_mb']:.2f} MB after "
        f"{c['mid_requests']:,}, {c['client_rss_final_mb']:.2f} MB at the end; growth after "
        f"warm-up {c['client_rss_growth_after_warmup_mb']:+.2f} MB",
        f"- no growth beyond noise over the last {result['sent'] - c['mid_requests']:,} "
        f"requests (< {noise_mb:g} MB, i.e. a leak of {c['leak_detectable_bytes_per_request']} "
        f"B per timed-out request would show): "
        f"{c['client_rss_growth_last_part_mb']:+.2f} MB, "
        f"{'yes' if c['client_rss_within_noise'] else 'NO'}",
        f"- client Python blocks, settled: {c['py_blocks_warmup']:,} after warm-up, "
        f"{c['py_blocks_final']:,} at the end",
    ]
    if result["error"]:
        lines.append(f"\nERROR: {result['error']}")
    return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------------

PARTS = ("idle", "echo", "timeouts")


@dataclass
class Config:
    parts: tuple[str, ...] = PARTS
    idle_seconds: float = 8.0
    requests: int = 1_000_000
    sample_every: int = 100_000
    in_flight: int = 64
    timeout_requests: int = 100_000
    timeout_batch: int = 5_000
    timeout: float = 0.05
    timeout_sample_every: int = 10_000
    max_seconds: float = 90.0
    noise_mb: float = NOISE_MB
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--only", default=",".join(PARTS), metavar="idle,echo,timeouts")
    p.add_argument("--idle-seconds", type=float, default=8.0, help="idle sampling time (s)")
    p.add_argument("--requests", type=int, default=1_000_000, help="echo requests (part echo)")
    p.add_argument(
        "--sample-every", type=int, default=0, help="echo requests per sample (default: 1/10)"
    )
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--timeout-requests", type=int, default=100_000)
    p.add_argument("--timeout-batch", type=int, default=5_000, help="timeouts sent at once")
    p.add_argument("--max-seconds", type=float, default=90.0, help="time bound of a part (s)")
    p.add_argument("--noise-mb", type=float, default=NOISE_MB, help="RSS growth that is noise")
    p.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    a = p.parse_args(argv)
    parts = tuple(x for x in PARTS if x in {s.strip() for s in a.only.split(",")})
    unknown = {s.strip() for s in a.only.split(",") if s.strip()} - set(PARTS)
    if unknown or not parts:
        p.error(f"--only: unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    if a.requests < 1 or a.in_flight < 1 or a.timeout_requests < 1 or a.timeout_batch < 1:
        p.error("--requests, --in-flight, --timeout-requests and --timeout-batch must be >= 1")
    sample_every = a.sample_every or max(1, a.requests // 10)
    timeout_every = max(
        a.timeout_batch, (a.timeout_requests // 10) // a.timeout_batch * a.timeout_batch
    )
    config = Config(
        parts=parts,
        idle_seconds=a.idle_seconds,
        requests=a.requests,
        sample_every=sample_every,
        in_flight=a.in_flight,
        timeout_requests=a.timeout_requests,
        timeout_batch=a.timeout_batch,
        timeout_sample_every=timeout_every,
        max_seconds=a.max_seconds,
        noise_mb=a.noise_mb,
    )
    return config, a.json


def main(argv: list[str] | None = None) -> int:
    config, json_path = parse_args(argv)
    env = environment()
    try:
        from importlib.metadata import version

        env["catga_zmq"] = version("catga-zmq")
    except Exception:
        env["catga_zmq"] = "unknown"
    results: dict[str, Any] = {}
    failed: list[str] = []
    children: list[Child] = []
    started = time.monotonic()
    try:
        if "idle" in config.parts:
            print("idle: sampling idle node processes ...", file=sys.stderr, flush=True)
            results["idle"] = run_idle(config, children)
        if "echo" in config.parts:
            print(f"echo: {config.requests:,} requests ...", file=sys.stderr, flush=True)
            server = start_child(
                "echo server",
                node_argv("--app", ECHO_APP, "--discovery", "none", "--log-level", "WARNING"),
                children,
            )
            wait_ready(server)
            results["echo"] = run_uvloop(run_echo_async(config, server))
            stop_children(children)
            if not results["echo"]["ok"]:
                failed.append("echo")
        if "timeouts" in config.parts:
            print(
                f"timeouts: {config.timeout_requests:,} requests ...", file=sys.stderr, flush=True
            )
            server = start_child(
                "nap server",
                node_argv("--app", NAP_APP, "--discovery", "none", "--log-level", "ERROR"),
                children,
            )
            wait_ready(server)
            results["timeouts"] = run_uvloop(run_timeouts_async(config, server))
            stop_children(children)
            if not results["timeouts"]["ok"]:
                failed.append("timeouts")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed.append(f"error: {exc}")
    finally:
        stop_children(children)  # by PID: SIGTERM, then SIGKILL after STOP_TIMEOUT
    elapsed = time.monotonic() - started

    print("## catga_zmq memory\n")
    if "idle" in results:
        print(format_idle(results["idle"]) + "\n")
    if "echo" in results:
        print(format_echo(results["echo"], config.noise_mb) + "\n")
    if "timeouts" in results:
        print(format_timeouts(results["timeouts"], config.noise_mb) + "\n")
    print(format_environment(env))
    print(
        f"\nelapsed {elapsed:.1f} s; {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}"
    )

    if json_path is not None:
        document = {
            "benchmark": "bench_memory",
            "environment": env,
            "config": asdict(config),
            "elapsed_seconds": round(elapsed, 2),
            "results": results,
            "failed": failed,
        }
        json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"results saved to {json_path}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

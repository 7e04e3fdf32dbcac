"""Shared pieces of the standalone benchmarks: payload, envelope, measurement, report.

Every stack under test is reduced to one coroutine function, ``call(payload) -> reply``,
so the same measurement code runs against the raw pyzmq baselines and against
``node.send()``. Every reply is compared with the payload it answers: a wrong reply
raises ``ReplyMismatch`` and the stack is reported as failed, never as a figure.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

REPO_ROOT = Path(__file__).resolve().parent.parent

Call = Callable[[bytes], Awaitable[bytes]]
T = TypeVar("T")

# --- payload ----------------------------------------------------------------------------

PAYLOAD_SIZE = 100  # bytes
_PAYLOAD_BASE = bytes(i % 251 for i in range(PAYLOAD_SIZE))
PAYLOAD = _PAYLOAD_BASE


def payload_for(seq: int) -> bytes:
    """The 100-byte payload with ``seq`` stamped in its first 8 bytes.

    Stamping makes every request distinct, so a reply routed to the wrong caller (a
    request-id mix-up under load) fails the equality check instead of passing it.
    """
    return (seq & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") + _PAYLOAD_BASE[8:]


# --- envelope (the shape of our wire header) --------------------------------------------

PROTOCOL_VERSION = 1
KIND_REQ = 1
KIND_REP = 2
KIND_ERR = 3

# The same wire name and header fields as the node's own Echo request, so that the
# baselines encode a header of about the size node.send() does.
ECHO_TYPE_NAME = "benchmarks._echo_app.Echo"
DEFAULT_BUDGET_MS = 10_000  # ms


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Header frame of a ``[header, payload]`` multipart message (msgpack array)."""

    version: int
    kind: int
    request_id: int
    type_name: str
    source: str
    budget_ms: int
    flags: int
    trace_id: str


encode_envelope: Callable[[Envelope], bytes] = msgspec.msgpack.Encoder().encode
decode_envelope: Callable[[bytes], Envelope] = msgspec.msgpack.Decoder(Envelope).decode


def request_envelope(request_id: int, source: str) -> Envelope:
    return Envelope(
        version=PROTOCOL_VERSION,
        kind=KIND_REQ,
        request_id=request_id,
        type_name=ECHO_TYPE_NAME,
        source=source,
        budget_ms=DEFAULT_BUDGET_MS,
        flags=0,
        trace_id="",
    )


def reply_envelope(request: Envelope, source: str) -> Envelope:
    return msgspec.structs.replace(request, kind=KIND_REP, source=source)


# --- errors -----------------------------------------------------------------------------


class BenchError(Exception):
    """A benchmark could not produce a trustworthy figure."""


class ReplyMismatch(BenchError):
    """A reply did not equal the echo of its request."""


class Stalled(BenchError):
    """Replies stopped arriving: the run exceeded its time bound plus grace."""


def check_reply(reply: bytes, expected: bytes) -> None:
    if reply != expected:
        raise ReplyMismatch(
            f"wrong reply: expected {len(expected)} bytes {expected[:12].hex()}..., "
            f"got {type(reply).__name__} {reply[:12]!r}..."
        )


# --- measurement ------------------------------------------------------------------------

STALL_GRACE = 10.0  # s, on top of a measurement's own time bound


@dataclass(frozen=True, slots=True)
class LatencyResult:
    p50_us: float
    p99_us: float
    count: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    req_s: float
    count: int
    seconds: float
    in_flight: int


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class LatencySamples:
    samples_ns: list[int]  # one per round trip, in the order they were made
    seconds: float  # wall time of the measured round trips
    cpu_seconds: float  # this process's CPU time over the same span


async def sample_latency(
    call: Call,
    *,
    count: int = 5_000,
    warmup: int = 500,
    max_seconds: float = 3.0,
) -> LatencySamples:
    """Sequential round trips: one request in flight, ``count`` at most, ``max_seconds`` at most."""
    if count < 1:
        raise ValueError("count must be >= 1")
    perf = time.perf_counter_ns
    samples: list[int] = []
    try:
        async with asyncio.timeout(max_seconds * 2 + STALL_GRACE):
            for seq in range(warmup):
                payload = payload_for(seq)
                check_reply(await call(payload), payload)
            gc.collect()
            cpu0 = time.process_time()
            start = perf()
            deadline = start + int(max_seconds * 1e9)
            for seq in range(warmup, warmup + count):
                payload = payload_for(seq)
                t0 = perf()
                reply = await call(payload)
                t1 = perf()
                check_reply(reply, payload)
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            elapsed = (perf() - start) / 1e9
            cpu = time.process_time() - cpu0
    except TimeoutError:
        raise Stalled(f"latency run stalled after {len(samples)} round trips") from None
    return LatencySamples(samples, elapsed, cpu)


async def measure_latency(
    call: Call,
    *,
    count: int = 5_000,
    warmup: int = 500,
    max_seconds: float = 3.0,
) -> LatencyResult:
    """p50/p99 of ``sample_latency``."""
    run = await sample_latency(call, count=count, warmup=warmup, max_seconds=max_seconds)
    us = sorted(s / 1000.0 for s in run.samples_ns)
    return LatencyResult(
        p50_us=percentile(us, 50), p99_us=percentile(us, 99), count=len(us), seconds=run.seconds
    )


async def _run_in_flight(
    call: Call, *, in_flight: int, total: int, max_seconds: float, first_seq: int
) -> tuple[int, float]:
    """Keep ``in_flight`` requests outstanding until ``total`` are issued or time is up.

    Returns (completed, seconds). Workers stop issuing at the deadline and wait for what
    they already sent, so the count and the time cover the same replies.
    """
    remaining = total
    next_seq = first_seq
    completed = 0
    perf = time.perf_counter
    start = perf()
    deadline = start + max_seconds

    async def worker() -> None:
        nonlocal remaining, next_seq, completed
        while remaining > 0 and perf() < deadline:
            remaining -= 1
            seq = next_seq
            next_seq += 1
            payload = payload_for(seq)
            check_reply(await call(payload), payload)
            completed += 1

    try:
        async with asyncio.timeout(max_seconds + STALL_GRACE), asyncio.TaskGroup() as tg:
            for _ in range(in_flight):
                tg.create_task(worker())
    except TimeoutError:
        raise Stalled(f"throughput run stalled after {completed} replies") from None
    except BaseExceptionGroup as group:
        # Report the first real failure (a mismatch, a transport error), not the group.
        raise group.exceptions[0] from group
    return completed, perf() - start


async def measure_throughput(
    call: Call,
    *,
    in_flight: int = 64,
    total: int = 100_000,
    max_seconds: float = 3.0,
    warmup: int = 2_000,
) -> ThroughputResult:
    """Requests per second with ``in_flight`` requests outstanding (bounded count and time)."""
    if in_flight < 1 or total < 1:
        raise ValueError("in_flight and total must be >= 1")
    if warmup:
        await _run_in_flight(
            call,
            in_flight=in_flight,
            total=warmup,
            max_seconds=max(0.5, max_seconds / 4),
            first_seq=1 << 40,
        )
    gc.collect()
    done, seconds = await _run_in_flight(
        call, in_flight=in_flight, total=total, max_seconds=max_seconds, first_seq=2 << 40
    )
    return ThroughputResult(
        req_s=done / seconds if seconds > 0 else 0.0,
        count=done,
        seconds=seconds,
        in_flight=in_flight,
    )


# --- report -----------------------------------------------------------------------------


@dataclass(slots=True)
class StackRow:
    """One line of the results table; ``error`` set means the stack has no figures."""

    stack: str
    p50_us: float | None = None
    p99_us: float | None = None
    req_s: float | None = None
    error: str | None = None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def format_table(rows: Sequence[StackRow], baseline: str, *, ratio_title: str = "") -> str:
    """A markdown table; the ratio column is each stack's req/s over ``baseline``'s."""
    base = next((r for r in rows if r.stack == baseline and r.error is None), None)
    title = ratio_title or f"ratio to {baseline}"
    lines = [
        f"| stack | p50 µs | p99 µs | req/s | {title} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error is not None:
            lines.append(f"| {row.stack} | - | - | - | ERROR: {row.error} |")
            continue
        if base is not None and base.req_s and row.req_s is not None:
            ratio = f"{row.req_s / base.req_s:.2f}"
        else:
            ratio = "-"
        lines.append(
            f"| {row.stack} | {_fmt(row.p50_us)} | {_fmt(row.p99_us)} "
            f"| {_fmt(row.req_s)} | {ratio} |"
        )
    return "\n".join(lines)


def print_table(rows: Sequence[StackRow], baseline: str, *, ratio_title: str = "") -> None:
    print(format_table(rows, baseline, ratio_title=ratio_title))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "none"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Machine, interpreter, library versions and the command line of this run."""
    import zmq

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "nproc": str(usable),
        "cpu_count": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "uvloop": _dist_version("uvloop"),
        "git": _git_revision(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


def format_environment(env: dict[str, str]) -> str:
    """The machine/versions block printed under every table (a fenced code block)."""
    shown = {
        "machine": f"{env['cpu']}, nproc {env['nproc']} (cpu_count {env['cpu_count']})",
        "os": env["platform"],
        "python": env["python"],
        "pyzmq": f"{env['pyzmq']} (libzmq {env['libzmq']})",
        "msgspec": env["msgspec"],
        "uvloop": env["uvloop"],
    }
    used = {"cpu", "nproc", "cpu_count", "platform", "libzmq", "command", *shown}
    # Anything else: git, date, and keys a caller added (the catga_zmq version).
    shown.update({key: value for key, value in env.items() if key not in used})
    shown["command"] = env["command"]
    width = max(map(len, shown))
    return "\n".join(["```", *(f"{k:<{width}} : {v}" for k, v in shown.items()), "```"])


def print_environment(env: dict[str, str] | None = None) -> None:
    print(format_environment(env if env is not None else environment()))


# --- running ----------------------------------------------------------------------------


def run_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a uvloop event loop (every stack is measured under uvloop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

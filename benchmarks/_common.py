"""What every benchmark script shares: payload, envelope, measurement, header, flags, report.

Every request/reply stack is reduced to one coroutine function, ``call(payload) -> reply``,
so the same measurement runs against the raw pyzmq baselines, the peers and
``node.send()``. Every reply is compared with the payload it answers: a wrong reply raises
``ReplyMismatch`` and the stack is reported as failed, never as a figure.

Every report starts with the header of ``environment()``: the machine, the versions, the
git commit and the command that produced it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import ipaddress
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

Call = Callable[[bytes], Awaitable[bytes]]
T = TypeVar("T")

# --- payload and envelope ---------------------------------------------------------------

PAYLOAD_SIZE = 100  # bytes
_PAYLOAD_BASE = bytes(i % 251 for i in range(PAYLOAD_SIZE))


def payload_for(seq: int) -> bytes:
    """The 100-byte payload with ``seq`` stamped in its first 8 bytes.

    Stamping makes every request distinct, so a reply routed to the wrong caller (a
    request-id mix-up under load) fails the equality check instead of passing it.
    """
    return (seq & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") + _PAYLOAD_BASE[8:]


PROTOCOL_VERSION = 1
KIND_REQ, KIND_REP, KIND_EVT = 1, 2, 4
# The node's own wire name of Echo (``_apps.Echo``), so that the baselines encode a header
# of the size node.send() does.
ECHO_TYPE_NAME = "benchmarks._apps.Echo"
DEFAULT_BUDGET_MS = 10_000  # ms


class Envelope(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Header frame of a ``[header, payload]`` message: the fields of the node's header."""

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
        PROTOCOL_VERSION, KIND_REQ, request_id, ECHO_TYPE_NAME, source, DEFAULT_BUDGET_MS, 0, ""
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
# Percentiles kept for every latency run; p50 and p99 go to the tables, all to the charts.
PERCENTILES: tuple[float, ...] = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def pkey(p: float) -> str:
    """JSON key of a percentile: ``p50``, ``p99``, ``p99.9``."""
    return f"p{p:g}"


def summarize_latency(samples_ns: Sequence[int], seconds: float, cpu: float) -> dict[str, float]:
    """Percentiles, min/max/mean (µs), count, wall time and client CPU of a latency run."""
    us = sorted(s / 1000.0 for s in samples_ns)
    out = {f"{pkey(p)}_us": percentile(us, p) for p in PERCENTILES}
    out.update(min_us=us[0], max_us=us[-1], mean_us=sum(us) / len(us), count=float(len(us)))
    out.update(seconds=seconds, client_cpu_s=cpu)
    return out


async def measure_latency(
    call: Call, *, count: int = 5_000, warmup: int = 500, max_seconds: float = 3.0
) -> dict[str, float]:
    """Sequential round trips: one in flight, ``count`` at most, ``max_seconds`` at most."""
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
            for seq in range(warmup, warmup + max(1, count)):
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
    return summarize_latency(samples, elapsed, cpu)


async def run_in_flight(
    call: Call, in_flight: int, total: int, max_seconds: float, first_seq: int
) -> tuple[int, float]:
    """Keep ``in_flight`` requests outstanding until ``total`` are issued or time is up.

    Returns (completed, seconds). Workers stop issuing at the deadline and wait for what
    they already sent, so the count and the time cover the same replies.
    """
    remaining, next_seq, completed = total, first_seq, 0
    perf = time.perf_counter
    start = perf()
    deadline = start + max_seconds

    async def worker() -> None:
        nonlocal remaining, next_seq, completed
        while remaining > 0 and perf() < deadline:
            remaining -= 1
            payload = payload_for(next_seq)
            next_seq += 1
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
    call: Call, *, in_flight: int, total: int, max_seconds: float, warmup: int
) -> dict[str, float]:
    """Requests/s with ``in_flight`` outstanding, after a warm-up; client CPU of the run."""
    if warmup:
        await run_in_flight(call, in_flight, warmup, max(0.25, max_seconds / 4), 1 << 40)
    gc.collect()
    cpu0 = time.process_time()
    done, seconds = await run_in_flight(call, in_flight, total, max_seconds, 2 << 40)
    cpu = time.process_time() - cpu0
    rate = done / seconds if seconds > 0 else 0.0
    return {"req_s": rate, "count": float(done), "seconds": seconds, "client_cpu_s": cpu}


# --- the header: machine, versions, command -----------------------------------------------


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
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "none"


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(*dists: str) -> dict[str, str]:
    """Machine, interpreter, library versions (and those of ``dists``), git and command."""
    import zmq

    import catga_zmq

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    env = {
        "machine": f"{_cpu_model()}, nproc {usable} (cpu_count {os.cpu_count()})",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "catga_zmq": f"{catga_zmq.__version__} from {Path(catga_zmq.__file__).parent}",
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
        "msgspec": msgspec.__version__,
        "uvloop": dist_version("uvloop"),
        **{d: dist_version(d) for d in dists},
        "git": _git_revision(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join([sys.executable, *sys.argv]),
    }
    if launcher := os.environ.get("CATGA_BENCH_LAUNCHER"):
        env["launcher"] = launcher
    return env


def format_environment(env: dict[str, str]) -> str:
    """The header printed with every report (a fenced code block)."""
    last = ("command", "launcher")  # after whatever a script added (nats-server, ...)
    items = [(k, v) for k, v in env.items() if k not in last]
    items += [(k, env[k]) for k in last if k in env]
    width = max(len(k) for k, _ in items)
    return "\n".join(["```", *(f"{k:<{width}} : {v}" for k, v in items), "```"])


# --- flags ------------------------------------------------------------------------------


def int_list(value: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``: sorted, distinct, each >= 1."""
    try:
        levels = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {value!r}") from None
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: each must be >= 1")
    return levels


def choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated subset of ``allowed``, in ``allowed``'s order."""

    def parse(value: str) -> tuple[str, ...]:
        chosen = {s.strip() for s in value.split(",") if s.strip()}
        if not chosen or chosen - set(allowed):
            raise argparse.ArgumentTypeError(f"{value!r}: choose from {','.join(allowed)}")
        return tuple(s for s in allowed if s in chosen)

    return parse


def loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r}: only a loopback address (127.0.0.1) is allowed")


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        if (number := kind(value)) <= 0:
            raise argparse.ArgumentTypeError(f"{value!r}: must be > 0")
        return number

    return parse


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every flag's default."""


def parser(
    doc: str | None, *, rounds: int = 0, seconds: float = 0, in_flight: tuple[int, ...] = ()
) -> argparse.ArgumentParser:
    """The flags every script shares, with the script's defaults; it adds its own after.

    A shared flag left at 0 (or empty) here is not offered: that script has no such knob.
    """
    first, _, rest = (doc or "").partition("\n")
    p = argparse.ArgumentParser(description=first, epilog=rest, formatter_class=_Help)
    if rounds:
        p.add_argument("--rounds", type=positive(int), default=rounds, help="interleaved rounds")
    if seconds:
        p.add_argument("--seconds", type=positive(float), default=seconds, help="time bound, s")
    if in_flight:
        p.add_argument(
            "--in-flight", type=int_list, default=in_flight, metavar="N,N", help="levels"
        )
    p.add_argument("--host", type=loopback, default="127.0.0.1", help="loopback only")
    p.add_argument("--out", type=Path, metavar="DIR", help="write NAME.md and NAME.json there")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if getattr(args, "rounds", 3) < 3:
        log("warning: fewer than 3 rounds; medians are not meaningful")
    return args


# --- report and running -----------------------------------------------------------------


def log(text: str) -> None:
    """Progress and problems go to stderr; the report alone goes to stdout."""
    print(text, file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def table(head: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns are left-aligned, the rest right."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * left + "---:|" * (len(head) - left)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(name: str, title: str, env: dict[str, str], body: str, out: Any, results: Any) -> None:
    """Print the header and the report; with ``out``, write NAME.md and NAME.json there."""
    text = f"# {title}\n\n{format_environment(env)}\n\n{body.strip()}\n"
    print(text)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text, encoding="utf-8")
    document = {"benchmark": name, "environment": env, **results}
    (out / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    log(f"wrote {out / name}.md and .json")


def run_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a uvloop event loop (every stack is measured under uvloop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _exit_on_signal(signum: int, _frame: object) -> None:
    # Unwind, so that the finally blocks stop every process this run started.
    raise SystemExit(128 + signum)


def run_script(main: Callable[[], int]) -> NoReturn:
    """A script's entry point: SIGTERM/SIGHUP unwind like Ctrl-C; exit with main's status."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""zerorpc echo: a gevent server process and a gevent client process.

zerorpc is gevent-based and cannot run in the benchmark's asyncio (uvloop) process, so
its client is a process of its own: the benchmark sends it one JSON command per line
on stdin (``latency`` or ``throughput``) and reads one JSON result line from its stdout;
the client runs the measurement with the same rules as ``_common.py`` (sequential
round trips for latency; ``in_flight`` workers sharing a count and a deadline for
throughput; warm-up first; every reply checked). In-flight requests are
``in_flight`` greenlets in a ``gevent.pool.Pool`` sharing one ``zerorpc.Client``
(zerorpc multiplexes concurrent calls over its one DEALER socket). Client and server
keep zerorpc's defaults (heartbeat 5 s, which spawns a heartbeat greenlet per call;
unbounded server pool). The argument is the msgpack ``[header, payload]`` body of
``_frame.py`` as bytes; zerorpc wraps it in its own msgpack event.

    python benchmarks/peers/zerorpc_echo.py serve                    # READY tcp://...
    python benchmarks/peers/zerorpc_echo.py client --connect tcp://127.0.0.1:PORT
    python benchmarks/peers/zerorpc_echo.py selftest
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from benchmarks._common import (
    STALL_GRACE,
    BenchError,
    Stalled,
    check_reply,
    payload_for,
)
from benchmarks.peers._frame import BadRequest, decode_reply, echo_body, encode_request
from benchmarks.peers._measure import summarize_latency
from benchmarks.peers._proc import (
    PARENT_CHECK_INTERVAL,
    SERVER_MAX_LIFETIME,
    PeerProcess,
    announce,
    parent_gone,
    start_script,
)
from benchmarks.raw_echo import read_line

REQUEST_TIMEOUT = 10.0  # s, per call
COMMAND_SLACK = 10.0  # s, on top of a command's own bound, before the driver gives up
MAX_IN_FLIGHT = 4096
MAX_TOTAL = 10_000_000

# --- server process ---------------------------------------------------------------------


def _serve(host: str) -> None:
    import gevent
    import zerorpc
    import zmq

    bad = 0

    class EchoService:
        def echo(self, body: bytes) -> bytes:
            nonlocal bad
            try:
                return echo_body(body, "zerorpc-srv")
            except BadRequest:
                bad += 1
                raise

    server = zerorpc.Server(EchoService())
    server.bind(f"tcp://{host}:*")
    endpoint = server._events._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    parent = os.getppid()
    started = time.monotonic()

    def watchdog() -> None:
        while not parent_gone(parent, started, SERVER_MAX_LIFETIME):
            gevent.sleep(PARENT_CHECK_INTERVAL)
        server.stop()

    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    dog = gevent.spawn(watchdog)
    runner = gevent.spawn(server.run)
    announce(endpoint)
    try:
        runner.join()
    finally:
        dog.kill(block=False)
        server.close()
        if bad:
            print(f"zerorpc server: {bad} malformed requests", file=sys.stderr)


def start_server(host: str = "127.0.0.1") -> PeerProcess:
    return start_script("zerorpc server", Path(__file__).resolve(), ["serve", "--host", host])


# --- client process: the measurements, in gevent ------------------------------------------


def _g_latency(
    call: Callable[[bytes], bytes], count: int, warmup: int, max_seconds: float
) -> dict[str, float]:
    import gc

    import gevent

    perf = time.perf_counter_ns
    samples: list[int] = []
    try:
        with gevent.Timeout(max_seconds * 2 + STALL_GRACE):
            for seq in range(warmup):
                payload = payload_for(seq)
                check_reply(call(payload), payload)
            gc.collect()
            cpu0 = time.process_time()
            start = perf()
            deadline = start + int(max_seconds * 1e9)
            for seq in range(warmup, warmup + count):
                payload = payload_for(seq)
                t0 = perf()
                reply = call(payload)
                t1 = perf()
                check_reply(reply, payload)
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            elapsed = (perf() - start) / 1e9
            cpu = time.process_time() - cpu0
    except gevent.Timeout:
        raise Stalled(f"latency run stalled after {len(samples)} round trips") from None
    result = summarize_latency(samples, elapsed)
    result["client_cpu_s"] = cpu
    return result


def _g_run_in_flight(
    call: Callable[[bytes], bytes],
    in_flight: int,
    total: int,
    max_seconds: float,
    first_seq: int,
) -> tuple[int, float]:
    """gevent twin of ``_common._run_in_flight``: returns (completed, seconds)."""
    import gevent
    import gevent.pool

    remaining = total
    next_seq = first_seq
    completed = 0
    perf = time.perf_counter
    start = perf()
    deadline = start + max_seconds

    def worker() -> None:
        nonlocal remaining, next_seq, completed
        while remaining > 0 and perf() < deadline:
            remaining -= 1
            seq = next_seq
            next_seq += 1
            payload = payload_for(seq)
            check_reply(call(payload), payload)
            completed += 1

    pool = gevent.pool.Pool(in_flight)
    workers = [pool.spawn(worker) for _ in range(in_flight)]
    finished = gevent.joinall(workers, timeout=max_seconds + STALL_GRACE)
    if len(finished) < len(workers):
        pool.kill(block=True, timeout=5)
        raise Stalled(f"throughput run stalled after {completed} replies")
    for g in workers:
        if g.exception is not None:
            raise g.exception
    return completed, perf() - start


def _g_throughput(
    call: Callable[[bytes], bytes], in_flight: int, total: int, max_seconds: float, warmup: int
) -> dict[str, float]:
    import gc

    if warmup:
        _g_run_in_flight(call, in_flight, warmup, max(0.5, max_seconds / 4), 1 << 40)
    gc.collect()
    cpu0 = time.process_time()
    done, seconds = _g_run_in_flight(call, in_flight, total, max_seconds, 2 << 40)
    cpu = time.process_time() - cpu0
    return {
        "req_s": done / seconds if seconds > 0 else 0.0,
        "count": float(done),
        "seconds": seconds,
        "in_flight": float(in_flight),
        "client_cpu_s": cpu,
    }


def _client(endpoint: str) -> None:
    import zerorpc

    client = zerorpc.Client(timeout=REQUEST_TIMEOUT)
    client.connect(endpoint)
    next_id = 0

    def call(payload: bytes) -> bytes:
        nonlocal next_id
        next_id += 1
        request_id = next_id
        return decode_reply(
            client.echo(encode_request(request_id, "zerorpc-cli", payload)), request_id
        )

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        probe = payload_for(0)
        check_reply(call(probe), probe)
        announce(str(os.getpid()))
        # One command per line; the parent closing stdin (EOF) ends the client.
        for line in sys.stdin:
            try:
                cmd = json.loads(line)
                op = cmd["op"]
                if op == "quit":
                    break
                if op == "latency":
                    result = _g_latency(
                        call,
                        count=max(1, min(int(cmd["count"]), MAX_TOTAL)),
                        warmup=max(0, min(int(cmd["warmup"]), MAX_TOTAL)),
                        max_seconds=float(cmd["max_seconds"]),
                    )
                elif op == "throughput":
                    result = _g_throughput(
                        call,
                        in_flight=max(1, min(int(cmd["in_flight"]), MAX_IN_FLIGHT)),
                        total=max(1, min(int(cmd["total"]), MAX_TOTAL)),
                        max_seconds=float(cmd["max_seconds"]),
                        warmup=max(0, min(int(cmd["warmup"]), MAX_TOTAL)),
                    )
                else:
                    raise BenchError(f"unknown op {op!r}")
                reply({"ok": True, "result": result})
            except Exception as exc:
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        client.close()


# --- driver (in the benchmark process) ----------------------------------------------------


class ZerorpcClientProcess:
    """The gevent client process, driven from asyncio without blocking the event loop."""

    def __init__(self, endpoint: str) -> None:
        self._peer = start_script(
            "zerorpc client",
            Path(__file__).resolve(),
            ["client", "--connect", endpoint],
            stdin=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        return self._peer.pid

    async def _command(self, cmd: dict[str, Any], timeout: float) -> dict[str, float]:
        proc = self._peer.process
        assert proc.stdin is not None
        if proc.poll() is not None:
            raise BenchError(f"zerorpc client pid {proc.pid} exited with {proc.returncode}")
        proc.stdin.write((json.dumps(cmd) + "\n").encode())
        proc.stdin.flush()
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, read_line, proc, timeout)
        answer = json.loads(line)
        if not answer.get("ok"):
            raise BenchError(f"zerorpc client: {answer.get('error')}")
        result: dict[str, float] = answer["result"]
        return result

    async def latency(self, *, count: int, warmup: int, max_seconds: float) -> dict[str, float]:
        cmd = {"op": "latency", "count": count, "warmup": warmup, "max_seconds": max_seconds}
        return await self._command(cmd, max_seconds * 2 + STALL_GRACE + COMMAND_SLACK)

    async def throughput(
        self, *, in_flight: int, total: int, max_seconds: float, warmup: int
    ) -> dict[str, float]:
        cmd = {
            "op": "throughput",
            "in_flight": in_flight,
            "total": total,
            "max_seconds": max_seconds,
            "warmup": warmup,
        }
        bound = max(0.5, max_seconds / 4) + max_seconds + 2 * STALL_GRACE + COMMAND_SLACK
        return await self._command(cmd, bound)

    def stop(self) -> None:
        proc = self._peer.process
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.write(b'{"op": "quit"}\n')
                proc.stdin.close()
            except OSError:
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._peer.stop()


# --- standalone ---------------------------------------------------------------------------


async def _selftest(endpoint: str) -> None:
    client = ZerorpcClientProcess(endpoint)
    try:
        lat = await client.latency(count=1000, warmup=100, max_seconds=2.0)
        thr = await client.throughput(in_flight=16, total=5000, max_seconds=2.0, warmup=500)
    finally:
        client.stop()
    print(
        f"zerorpc: p50 {lat['p50_us']:.0f} µs p99 {lat['p99_us']:.0f} µs; "
        f"{thr['req_s']:,.0f} req/s at 16 in flight"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the server (prints READY tcp://...)")
    serve.add_argument("--host", default="127.0.0.1")
    client = sub.add_parser("client", help="run the measuring client (JSON lines on stdin)")
    client.add_argument("--connect", required=True)
    sub.add_parser("selftest", help="start a server and a client process, measure briefly")
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        _serve(args.host)
    elif args.cmd == "client":
        _client(args.connect)
    else:
        from benchmarks._common import run_uvloop

        server = start_server()
        try:
            run_uvloop(_selftest(server.address))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

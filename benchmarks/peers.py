"""Peer stacks for ``bench_all.py``: NATS, gRPC and zerorpc echo servers and clients.

Every peer carries the raw baselines' two parts as one body: a msgpack array
``[header, payload]``, the header being ``_common.Envelope`` (the size of the node's own
header) and the payload the 100-byte body. A server decodes the header, checks it is a
request and answers with a reply header and the same payload (the raw echo's work); a
client checks the reply's kind, type name and request id, the measurement the payload.

- ``nats``: nats-py ``request()`` through a ``nats-server`` started here (127.0.0.1, a
  random port read from its ports file, no config) to a nats-py responder process. Each
  round trip crosses the broker twice, as every NATS request does.
- ``grpc``: a ``grpc.aio`` unary call to a ``grpc.aio`` server process; a generic handler
  on raw bytes (no protobuf, no generated code), plaintext HTTP/2, one channel.
- ``zerorpc``: gevent cannot share the benchmark's uvloop, so the client is a process of
  its own: it reads one JSON command per line on stdin (``latency``, ``throughput``) and
  answers one JSON line, measuring by the rules of ``_common.py`` with in-flight requests
  as greenlets of a ``gevent.pool.Pool`` sharing one ``zerorpc.Client`` (zerorpc
  defaults: 5 s heartbeat, unbounded server pool).

    python benchmarks/peers.py serve nats --url nats://127.0.0.1:4222   # READY <address>
    python benchmarks/peers.py serve grpc
    python benchmarks/peers.py serve zerorpc
    python benchmarks/peers.py zerorpc-client --connect tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ECHO_TYPE_NAME,
    KIND_REP,
    KIND_REQ,
    STALL_GRACE,
    BenchError,
    Call,
    Envelope,
    ReplyMismatch,
    Stalled,
    check_reply,
    log,
    payload_for,
    reply_envelope,
    request_envelope,
    run_uvloop,
    summarize_latency,
)
from benchmarks._proc import (
    MAX_LIFETIME,
    PARENT_CHECK_INTERVAL,
    START_TIMEOUT,
    Child,
    Processes,
    announce,
    free_port,
    parent_gone,
    wait_for_stop,
)

HERE = Path(__file__).resolve()
REQUEST_TIMEOUT = 10.0  # s, per request (a stall is reported, never waited out)
COMMAND_SLACK = 10.0  # s, on top of a zerorpc command's own bound
NATS_SUBJECT = "bench.echo"
GRPC_PATH = "/bench.Echo/Echo"
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


# --- the body: [header, payload] as one msgpack array ---------------------------------------


class Framed(msgspec.Struct, array_like=True, frozen=True, gc=False):
    header: Envelope
    payload: bytes


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Framed).decode


class BadRequest(BenchError):
    """A server got a body that is not an echo request."""


def encode_request(request_id: int, source: str, payload: bytes) -> bytes:
    return _encode(Framed(request_envelope(request_id, source), payload))


def echo_body(body: bytes, source: str) -> bytes:
    """Server side: the reply body for a request body (raises ``BadRequest``)."""
    try:
        framed = _decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed request body: {exc}") from None
    if framed.header.kind != KIND_REQ:
        raise BadRequest(f"not a request: kind {framed.header.kind}")
    return _encode(Framed(reply_envelope(framed.header, source), framed.payload))


def decode_reply(body: bytes, request_id: int) -> bytes:
    """Client side: the payload of a reply body, after checking its header."""
    try:
        framed = _decode(body)
    except msgspec.DecodeError as exc:
        raise ReplyMismatch(f"malformed reply body: {exc}") from None
    h = framed.header
    if h.kind != KIND_REP or h.request_id != request_id or h.type_name != ECHO_TYPE_NAME:
        raise ReplyMismatch(f"unexpected reply header {h!r} for request {request_id}")
    return framed.payload


async def probed(call: Call, ready: Any = None) -> Call:
    """``call`` once it has answered one request (within ``START_TIMEOUT``)."""
    async with asyncio.timeout(START_TIMEOUT):
        if ready is not None:
            await ready
        check_reply(await call(payload_for(0)), payload_for(0))
    return call


# --- nats -----------------------------------------------------------------------------------


def find_nats_server(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    for candidate in ("nats-server", "/usr/bin/nats-server", "/usr/sbin/nats-server"):
        if found := shutil.which(candidate):
            return found
    return None


def nats_server_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().removeprefix("nats-server: ") or "unknown"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the benchmark dies (nats-server has no
    parent watchdog of its own, so a SIGKILLed benchmark would leave it running)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except Exception:
            pass


def start_nats_server(procs: Processes, binary: str, host: str, tmp: str) -> tuple[Child, str]:
    """``nats-server`` on ``host``, random port; the URL is read from its ports file, so
    there is no race on a port picked in advance."""
    argv = [binary, "-a", host, "-p", "-1", "--ports_file_dir", tmp]
    with open(Path(tmp) / "nats-server.log", "wb") as out:  # the child keeps it open
        child = procs.spawn(
            "nats-server", argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    ports = Path(tmp) / f"nats-server_{child.pid}.ports"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive():
            tail = (Path(tmp) / "nats-server.log").read_text(errors="replace")[-400:]
            raise BenchError(f"nats-server exited with {child.popen.returncode}: {tail}")
        try:
            urls = json.loads(ports.read_text())["nats"]
            return child, next((u for u in urls if host in u), urls[0])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)  # not written, or not complete yet
    raise BenchError(f"nats-server pid {child.pid}: not listening after {START_TIMEOUT:g} s")


async def serve_nats(url: str) -> None:
    import nats

    nc = await nats.connect(url, name="bench-responder", allow_reconnect=False)

    async def handler(msg: Any) -> None:
        try:
            await msg.respond(echo_body(msg.data, "nats-srv"))
        except BadRequest as exc:
            log(f"nats responder: {exc}")

    try:
        await nc.subscribe(NATS_SUBJECT, queue="bench", cb=handler)
        await nc.flush()  # the server knows the subscription: requests will reach it
        announce(url)
        await wait_for_stop()
    finally:
        await nc.close()


@asynccontextmanager
async def open_nats(url: str) -> AsyncIterator[Call]:
    import nats

    nc = await nats.connect(url, name="bench-client", allow_reconnect=False)
    request, next_id = nc.request, 0

    async def call(payload: bytes) -> bytes:
        nonlocal next_id
        next_id += 1
        request_id = next_id
        body = encode_request(request_id, "nats-cli", payload)
        msg = await request(NATS_SUBJECT, body, timeout=REQUEST_TIMEOUT)
        return decode_reply(msg.data, request_id)

    try:
        yield await probed(call)
    finally:
        await nc.close()


# --- grpc -----------------------------------------------------------------------------------


async def serve_grpc(host: str) -> None:
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            return echo_body(request, "grpc-srv")
        except BadRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    service, method = GRPC_PATH.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        announce(f"{host}:{port}")
        await wait_for_stop()
    finally:
        await server.stop(1.0)


@asynccontextmanager
async def open_grpc(target: str) -> AsyncIterator[Call]:
    import grpc

    channel = grpc.aio.insecure_channel(target)
    method, next_id = channel.unary_unary(GRPC_PATH), 0  # no serializers: bytes as they are

    async def call(payload: bytes) -> bytes:
        nonlocal next_id
        next_id += 1
        request_id = next_id
        reply = await method(
            encode_request(request_id, "grpc-cli", payload), timeout=REQUEST_TIMEOUT
        )
        return decode_reply(reply, request_id)

    try:
        yield await probed(call, channel.channel_ready())
    finally:
        await channel.close()


# --- zerorpc (gevent, in processes of its own) ----------------------------------------------


def serve_zerorpc(host: str) -> None:
    import gevent
    import zerorpc

    class EchoService:
        def echo(self, body: bytes) -> bytes:
            return echo_body(body, "zerorpc-srv")

    server = zerorpc.Server(EchoService())
    endpoint = f"tcp://{host}:{free_port(host)}"
    server.bind(endpoint)
    parent, started = os.getppid(), time.monotonic()

    def watchdog() -> None:
        while not parent_gone(parent, started, MAX_LIFETIME):
            gevent.sleep(PARENT_CHECK_INTERVAL)
        server.stop()

    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    dog, runner = gevent.spawn(watchdog), gevent.spawn(server.run)
    announce(endpoint)
    try:
        runner.join()
    finally:
        dog.kill(block=False)
        server.close()


def _g_latency(call: Callable[[bytes], bytes], count: int, warmup: int, max_seconds: float) -> Any:
    """gevent twin of ``_common.measure_latency``."""
    import gevent

    perf = time.perf_counter_ns
    samples: list[int] = []
    try:
        with gevent.Timeout(max_seconds * 2 + STALL_GRACE):
            for seq in range(warmup):
                check_reply(call(payload_for(seq)), payload_for(seq))
            gc.collect()
            cpu0 = time.process_time()
            start = perf()
            deadline = start + int(max_seconds * 1e9)
            for seq in range(warmup, warmup + max(1, count)):
                payload = payload_for(seq)
                t0 = perf()
                reply = call(payload)
                t1 = perf()
                check_reply(reply, payload)
                samples.append(t1 - t0)
                if t1 > deadline:
                    break
            elapsed, cpu = (perf() - start) / 1e9, time.process_time() - cpu0
    except gevent.Timeout:
        raise Stalled(f"latency run stalled after {len(samples)} round trips") from None
    return summarize_latency(samples, elapsed, cpu)


def _g_run_in_flight(
    call: Callable[[bytes], bytes], in_flight: int, total: int, max_seconds: float, seq: int
) -> tuple[int, float]:
    """gevent twin of ``_common.run_in_flight``: (completed, seconds)."""
    import gevent
    import gevent.pool

    remaining, next_seq, completed = total, seq, 0
    perf = time.perf_counter
    start = perf()
    deadline = start + max_seconds

    def worker() -> None:
        nonlocal remaining, next_seq, completed
        while remaining > 0 and perf() < deadline:
            remaining -= 1
            payload = payload_for(next_seq)
            next_seq += 1
            check_reply(call(payload), payload)
            completed += 1

    pool = gevent.pool.Pool(in_flight)
    workers = [pool.spawn(worker) for _ in range(in_flight)]
    if len(gevent.joinall(workers, timeout=max_seconds + STALL_GRACE)) < len(workers):
        pool.kill(block=True, timeout=5)
        raise Stalled(f"throughput run stalled after {completed} replies")
    for g in workers:
        if g.exception is not None:
            raise g.exception
    return completed, perf() - start


def _g_throughput(
    call: Callable[[bytes], bytes], in_flight: int, total: int, max_seconds: float, warmup: int
) -> dict[str, float]:
    """gevent twin of ``_common.measure_throughput``."""
    if warmup:
        _g_run_in_flight(call, in_flight, warmup, max(0.25, max_seconds / 4), 1 << 40)
    gc.collect()
    cpu0 = time.process_time()
    done, seconds = _g_run_in_flight(call, in_flight, total, max_seconds, 2 << 40)
    cpu = time.process_time() - cpu0
    rate = done / seconds if seconds > 0 else 0.0
    return {"req_s": rate, "count": float(done), "seconds": seconds, "client_cpu_s": cpu}


def zerorpc_client(endpoint: str) -> None:
    """The measuring client: one JSON command per stdin line, one JSON answer per line."""
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

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        check_reply(call(payload_for(0)), payload_for(0))
        announce(endpoint)
        for line in sys.stdin:  # the parent closing stdin (EOF) ends the client
            try:
                cmd = json.loads(line)
                measure = _g_latency if cmd["op"] == "latency" else _g_throughput
                answer({"ok": True, "result": measure(call, *cmd["args"])})
            except Exception as exc:
                answer({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        client.close()


class ZerorpcDriver:
    """The gevent client process, driven from the event loop (its replies read there)."""

    def __init__(self, procs: Processes, endpoint: str) -> None:
        argv = ("zerorpc-client", "--connect", endpoint)
        self.child = procs.script("zerorpc client", HERE, *argv, stdin=subprocess.PIPE)
        self.child.wait_ready()

    async def _command(self, op: str, bound: float, *args: float) -> dict[str, float]:
        self.child.send_line(json.dumps({"op": op, "args": args}))
        answer = json.loads(await self.child.readline_async(bound + COMMAND_SLACK))
        if not answer.get("ok"):
            raise BenchError(f"zerorpc client: {answer.get('error')}")
        return answer["result"]  # type: ignore[no-any-return]

    async def latency(self, count: int, warmup: int, max_seconds: float) -> dict[str, float]:
        bound = max_seconds * 2 + STALL_GRACE
        return await self._command("latency", bound, count, warmup, max_seconds)

    async def throughput(
        self, n: int, total: int, max_seconds: float, warmup: int
    ) -> dict[str, float]:
        bound = max(0.25, max_seconds / 4) + max_seconds + 2 * STALL_GRACE
        return await self._command("throughput", bound, n, total, max_seconds, warmup)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run a server (prints READY <address>)")
    serve.add_argument("stack", choices=("nats", "grpc", "zerorpc"))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--url", help="nats: the nats-server URL")
    client = sub.add_parser("zerorpc-client", help="the measuring zerorpc client")
    client.add_argument("--connect", required=True)
    args = p.parse_args()
    if args.cmd == "zerorpc-client":
        zerorpc_client(args.connect)
    elif args.stack == "zerorpc":
        serve_zerorpc(args.host)
    elif args.stack == "grpc":
        run_uvloop(serve_grpc(args.host))
    else:
        run_uvloop(serve_nats(args.url))


if __name__ == "__main__":
    main()

"""Raw pyzmq echo baselines: what ``node.send()`` is measured against.

Two stacks, each a ROUTER echo server in its own process and a DEALER client with one
future per request id, both speaking the ``[header, payload]`` envelope of
``_common.py``:

- ``raw``: the sockets are read through ``loop.add_reader(sock.FD)``, draining with
  NOBLOCK while ``EVENTS & POLLIN`` (the compiled calls catga_zmq's transport makes).
  This is the fastest asyncio-compatible way to drive pyzmq and the floor for our own
  transport.
- ``asyncio``: the same over ``zmq.asyncio`` (``await recv_multipart()`` /
  ``await send_multipart()``), the way most asyncio users write it.

Both run under uvloop. ``bench_send.py`` imports ``start_server`` / ``open_client``
and interleaves these stacks with ``node.send()``. Standalone:

    python benchmarks/raw_echo.py run            # one round of both stacks
    python benchmarks/raw_echo.py serve raw      # a server; prints "READY <endpoint>"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import zmq
import zmq.asyncio

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ECHO_TYPE_NAME,
    KIND_REP,
    KIND_REQ,
    REPO_ROOT,
    BenchError,
    StackRow,
    decode_envelope,
    encode_envelope,
    measure_latency,
    measure_throughput,
    print_environment,
    print_table,
    reply_envelope,
    request_envelope,
    run_uvloop,
)

Kind = Literal["raw", "asyncio"]
KINDS: tuple[Kind, ...] = ("raw", "asyncio")

SERVER_START_TIMEOUT = 10.0  # s, to see "READY" from a server process
SERVER_STOP_TIMEOUT = 5.0  # s, after SIGTERM before SIGKILL
SERVER_MAX_LIFETIME = 1800.0  # s, a server left behind by a crashed parent exits anyway
PARENT_CHECK_INTERVAL = 0.5  # s

_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

# The limit is measured with the fastest socket calls pyzmq offers: the compiled
# socket's own send/recv, without the Python wrappers' keyword and enum handling
# (the same calls catga_zmq's transport makes).
_send: Callable[[Any, Any, int], object] = zmq.backend.Socket.send
_recv: Callable[[Any, int, bool], Any] = zmq.backend.Socket.recv
_get: Callable[[Any, int], int] = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: Any) -> bool:
    """``EVENTS & POLLIN``; reading EVENTS also re-arms the FD's edge. Cheaper than a
    receive that fails with EAGAIN, for which pyzmq builds an exception object."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def send_frames(sock: Any, frames: Sequence[Any]) -> None:
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], _MORE_NOBLOCK)
    _send(sock, frames[last], _NOBLOCK)


def recv_frames(sock: Any) -> list[bytes]:
    frame = _recv(sock, _NOBLOCK, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        parts.append(frame.bytes)
    return parts


# --- servers (run in the child process) -------------------------------------------------


def _bind_router(ctx: zmq.Context[zmq.Socket[bytes]], host: str) -> tuple[zmq.Socket[bytes], str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://{host}:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _echo_frames(frames: list[bytes], source: str) -> list[bytes] | None:
    """``[ident, header, payload]`` -> the reply frames, or None for a malformed request."""
    if len(frames) != 3:
        return None
    ident, header, payload = frames
    try:
        env = decode_envelope(header)
    except msgspec.DecodeError:
        return None
    if env.kind != KIND_REQ:
        return None
    return [ident, encode_envelope(reply_envelope(env, source)), payload]


async def _serve_raw(host: str, announce: Callable[[str], None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock, endpoint = _bind_router(ctx, host)

    def recv(_flags: int) -> list[bytes]:
        return recv_frames(sock)

    def send(frames: list[bytes], _flags: int) -> None:
        send_frames(sock, frames)

    dropped = 0

    def drain() -> None:
        nonlocal dropped
        # ZMQ_FD is edge-triggered: it signals a change, not a level. Keep receiving
        # while EVENTS says POLLIN (reading EVENTS re-arms the edge); that includes
        # after every send, because a send can process the very command that made the
        # next message readable and leave the FD silent.
        while readable(sock):
            frames = recv(_NOBLOCK)
            reply = _echo_frames(frames, "raw-srv")
            if reply is None:
                dropped += 1
                continue
            send(reply, _NOBLOCK)

    loop.add_reader(sock.fileno(), drain)
    try:
        # Messages may have arrived before the reader was registered: no edge will
        # announce them, so drain once by hand.
        loop.call_soon(drain)
        announce(endpoint)
        await stop.wait()
    finally:
        loop.remove_reader(sock.fileno())
        sock.close(0)
        ctx.term()
        if dropped:
            print(f"raw server: dropped {dropped} malformed requests", file=sys.stderr)


async def _serve_asyncio(host: str, announce: Callable[[str], None], stop: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://{host}:*")
    endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    dropped = 0

    async def echo_loop() -> None:
        nonlocal dropped
        while True:
            frames = await sock.recv_multipart()
            reply = _echo_frames(frames, "asyncio-srv")
            if reply is None:
                dropped += 1
                continue
            await sock.send_multipart(reply)

    task = asyncio.create_task(echo_loop())
    try:
        announce(endpoint)
        done, _ = await asyncio.wait(
            [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()  # the echo loop died: raise its error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close(0)
        ctx.term()
        if dropped:
            print(f"asyncio server: dropped {dropped} malformed requests", file=sys.stderr)


async def serve(kind: Kind, host: str, max_lifetime: float) -> None:
    """Run one echo server until SIGTERM/SIGINT, parent exit or ``max_lifetime``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    started = time.monotonic()

    def watchdog() -> None:
        if os.getppid() != parent or time.monotonic() - started > max_lifetime:
            stop.set()
        else:
            loop.call_later(PARENT_CHECK_INTERVAL, watchdog)

    loop.call_later(PARENT_CHECK_INTERVAL, watchdog)

    def announce(endpoint: str) -> None:
        sys.stdout.write(f"READY {endpoint}\n")
        sys.stdout.flush()

    server = _serve_raw if kind == "raw" else _serve_asyncio
    await server(host, announce, stop)


# --- server processes (managed from the benchmark process, outside the event loop) ----


def stop_process(proc: subprocess.Popen[bytes], timeout: float = SERVER_STOP_TIMEOUT) -> None:
    """Stop one child by its own PID: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line from the child's stdout within ``timeout`` (bounded, never blocks)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"pid {proc.pid}: no line on stdout within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise BenchError(f"pid {proc.pid} exited (status {proc.poll()}) before ready")
        buf += chunk
        if len(buf) > 65536:
            raise BenchError(f"pid {proc.pid}: unexpected output {buf[:80]!r}")
    return buf.split(b"\n", 1)[0].decode()


@dataclass(slots=True)
class ServerProcess:
    kind: str
    endpoint: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def start_server(
    kind: Kind, host: str = "127.0.0.1", timeout: float = SERVER_START_TIMEOUT
) -> ServerProcess:
    """Start ``raw_echo.py serve KIND`` in a child process; return once it is bound."""
    if kind not in KINDS:
        raise ValueError(f"unknown server kind {kind!r}")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "serve", kind, "--host", host],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        line = read_line(proc, timeout)
        if not line.startswith("READY "):
            raise BenchError(f"{kind} server pid {proc.pid}: unexpected {line!r}")
        return ServerProcess(kind=kind, endpoint=line.split(" ", 1)[1], process=proc)
    except BaseException:
        stop_process(proc)
        raise


@contextmanager
def echo_server(kind: Kind, host: str = "127.0.0.1") -> Iterator[ServerProcess]:
    server = start_server(kind, host)
    try:
        yield server
    finally:
        server.stop()


# --- clients (run in the benchmark's event loop) ----------------------------------------


class EchoClient(Protocol):
    async def call(self, payload: bytes) -> bytes: ...

    async def aclose(self) -> None: ...


class RawClient:
    """DEALER driven by ``loop.add_reader(FD)``; one future per request id."""

    def __init__(self, endpoint: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._fd = self._sock.fileno()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._error: BenchError | None = None
        self._closed = False
        self._loop.add_reader(self._fd, self._drain)
        self._loop.call_soon(self._drain)

    async def call(self, payload: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        self._next_id += 1
        request_id = self._next_id
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[request_id] = fut
        try:
            send_frames(
                self._sock,
                [encode_envelope(request_envelope(request_id, "raw-cli")), payload],
            )
        except zmq.Again:
            del self._pending[request_id]
            raise BenchError("raw client: send would block (HWM reached)") from None
        # The send may have consumed the FD edge that announced replies already queued:
        # drain now, or those replies can wait with no wake-up at all.
        self._drain()
        try:
            return await fut
        except BaseException:
            self._pending.pop(request_id, None)
            raise

    def _drain(self) -> None:
        sock = self._sock

        def recv(_flags: int) -> list[bytes]:
            return recv_frames(sock)

        pending = self._pending
        while readable(sock):
            frames = recv(_NOBLOCK)
            try:
                header, payload = frames
                env = decode_envelope(header)
            except (ValueError, msgspec.DecodeError) as exc:
                self._fail(BenchError(f"raw client: malformed reply: {exc}"))
                return
            fut = pending.pop(env.request_id, None)
            if fut is None or env.kind != KIND_REP or env.type_name != ECHO_TYPE_NAME:
                self._fail(BenchError(f"raw client: unexpected reply header {env!r}"))
                return
            if not fut.done():
                fut.set_result(payload)

    def _fail(self, error: BenchError) -> None:
        self._error = error
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._fail(BenchError("raw client closed"))
        self._sock.close(0)
        self._ctx.term()


class AsyncioClient:
    """DEALER over ``zmq.asyncio`` with a reader task; one future per request id."""

    def __init__(self, endpoint: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._error: BenchError | None = None
        self._closed = False
        self._reader = asyncio.create_task(self._read())

    async def call(self, payload: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        self._next_id += 1
        request_id = self._next_id
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[request_id] = fut
        try:
            await self._sock.send_multipart(
                [encode_envelope(request_envelope(request_id, "asyncio-cli")), payload]
            )
            return await fut
        except BaseException:
            self._pending.pop(request_id, None)
            raise

    async def _read(self) -> None:
        pending = self._pending
        recv = self._sock.recv_multipart
        try:
            while True:
                frames = await recv()
                header, payload = frames
                env = decode_envelope(header)
                fut = pending.pop(env.request_id, None)
                if fut is None or env.kind != KIND_REP or env.type_name != ECHO_TYPE_NAME:
                    raise BenchError(f"asyncio client: unexpected reply header {env!r}")
                if not fut.done():
                    fut.set_result(payload)
        except asyncio.CancelledError:
            raise
        except BenchError as exc:
            self._fail(exc)
        except Exception as exc:
            self._fail(BenchError(f"asyncio client: reader failed: {exc!r}"))

    def _fail(self, error: BenchError) -> None:
        self._error = error
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._fail(BenchError("asyncio client closed"))
        self._sock.close(0)
        self._ctx.term()


def make_client(kind: Kind, endpoint: str) -> EchoClient:
    if kind == "raw":
        return RawClient(endpoint)
    if kind == "asyncio":
        return AsyncioClient(endpoint)
    raise ValueError(f"unknown client kind {kind!r}")


@asynccontextmanager
async def open_client(kind: Kind, endpoint: str) -> AsyncIterator[EchoClient]:
    """A connected client whose first round trip has succeeded (within 10 s)."""
    client = make_client(kind, endpoint)
    try:
        # DEALER connects lazily; the first call proves the server is up and echoing.
        async with asyncio.timeout(SERVER_START_TIMEOUT):
            probe = b"probe"
            if await client.call(probe) != probe:
                raise BenchError(f"{kind} client: probe reply mismatch")
        yield client
    except TimeoutError:
        raise BenchError(f"{kind} client: no reply from {endpoint}") from None
    finally:
        await client.aclose()


# --- standalone -------------------------------------------------------------------------


async def _run_once(
    endpoints: dict[Kind, str], latency_count: int, total: int, seconds: float, in_flight: int
) -> list[StackRow]:
    rows: list[StackRow] = []
    for kind, endpoint in endpoints.items():
        try:
            async with open_client(kind, endpoint) as client:
                lat = await measure_latency(client.call, count=latency_count, max_seconds=seconds)
                thr = await measure_throughput(
                    client.call, in_flight=in_flight, total=total, max_seconds=seconds
                )
        except BenchError as exc:
            rows.append(StackRow(stack=kind, error=str(exc)))
            continue
        rows.append(StackRow(stack=kind, p50_us=lat.p50_us, p99_us=lat.p99_us, req_s=thr.req_s))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run one echo server (prints READY <endpoint>)")
    p_serve.add_argument("kind", choices=KINDS)
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--max-lifetime", type=float, default=SERVER_MAX_LIFETIME)
    p_run = sub.add_parser("run", help="one round of both stacks (see bench_send.py)")
    p_run.add_argument("--latency-count", type=int, default=5_000)
    p_run.add_argument("--total", type=int, default=100_000)
    p_run.add_argument("--seconds", type=float, default=3.0)
    p_run.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args(argv)

    if args.command == "serve":
        run_uvloop(serve(args.kind, args.host, args.max_lifetime))
        return 0

    servers: list[ServerProcess] = []
    try:
        for kind in KINDS:
            servers.append(start_server(kind))
        rows = run_uvloop(
            _run_once(
                {s.kind: s.endpoint for s in servers},  # type: ignore[misc]
                args.latency_count,
                args.total,
                args.seconds,
                args.in_flight,
            )
        )
    finally:
        for server in servers:
            server.stop()
    print_table(rows, baseline="raw")
    print()
    print_environment()
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

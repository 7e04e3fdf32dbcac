"""Raw pyzmq echo baselines: what ``node.send()`` is measured against.

Two stacks, each a ROUTER echo server in its own process and a DEALER client with one
future per request id, both speaking the ``[header, payload]`` envelope of ``_common.py``:

- ``raw``: the sockets are read through ``loop.add_reader(sock.FD)``, asking
  ``EVENTS & POLLIN`` before each message, with the compiled socket calls catga_zmq's
  transport makes. The fastest asyncio-compatible way to drive pyzmq: the limit.
- ``asyncio``: the same over ``zmq.asyncio`` (``await recv_multipart()`` /
  ``await send_multipart()``), the way most asyncio users write it.

Both run under uvloop. ``bench_all.py`` starts the servers with:

    python benchmarks/raw_echo.py serve raw      # prints "READY <endpoint>"
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    ECHO_TYPE_NAME,
    KIND_REP,
    KIND_REQ,
    BenchError,
    Call,
    decode_envelope,
    encode_envelope,
    log,
    reply_envelope,
    request_envelope,
    run_uvloop,
)
from benchmarks._proc import START_TIMEOUT, announce, wait_for_stop

KINDS = ("raw", "asyncio")
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# The limit is measured with the fastest socket calls pyzmq offers: the compiled socket's
# own send/recv, without the Python wrappers' keyword and enum handling.
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
    for frame in frames[:-1]:
        _send(sock, frame, _MORE_NOBLOCK)
    _send(sock, frames[-1], _NOBLOCK)


def recv_frames(sock: Any) -> list[bytes]:
    frame = _recv(sock, _NOBLOCK, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        parts.append(frame.bytes)
    return parts


def socket(ctx: zmq.Context[Any], kind: int, endpoint: str, *, bind: bool) -> Any:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint) if bind else sock.connect(endpoint)
    return sock


# --- servers (the child process) ----------------------------------------------------------


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


async def serve(kind: str, host: str) -> None:
    """One echo server until SIGTERM, parent exit or the maximum lifetime."""
    loop = asyncio.get_running_loop()
    ctx = zmq.asyncio.Context() if kind == "asyncio" else zmq.Context()
    sock = socket(ctx, zmq.ROUTER, f"tcp://{host}:*", bind=True)
    dropped = 0

    def read() -> None:
        nonlocal dropped
        # ZMQ_FD is edge-triggered: keep receiving while EVENTS says POLLIN, after every
        # send too, since a send can process the command that made the next message
        # readable and leave the FD silent.
        while readable(sock):
            reply = _echo_frames(recv_frames(sock), "raw-srv")
            if reply is None:
                dropped += 1
            else:
                send_frames(sock, reply)

    async def echo_loop() -> None:
        nonlocal dropped
        while True:
            reply = _echo_frames(await sock.recv_multipart(), "asyncio-srv")
            if reply is None:
                dropped += 1
            else:
                await sock.send_multipart(reply)

    if kind == "raw":
        loop.add_reader(sock.fileno(), read)
        loop.call_soon(read)  # messages queued before the reader: no edge announces them
        task = None
    else:
        task = loop.create_task(echo_loop())
    try:
        announce(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        await wait_for_stop()
        if task is not None and task.done():
            task.result()  # the echo loop died: raise its error
    finally:
        if task is None:
            loop.remove_reader(sock.fileno())
        else:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sock.close(0)
        ctx.term()
        if dropped:
            log(f"{kind} server: dropped {dropped} malformed requests")


# --- clients (the benchmark's event loop) -------------------------------------------------


class _Client:
    """A DEALER with one future per request id; a wrong reply fails every pending call."""

    source = ""

    def __init__(self, sock: Any) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._error: BenchError | None = None

    def _open(self, payload: bytes) -> tuple[int, asyncio.Future[bytes], list[bytes]]:
        if self._error is not None:
            raise self._error
        self._next_id += 1
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[self._next_id] = fut
        header = encode_envelope(request_envelope(self._next_id, self.source))
        return self._next_id, fut, [header, payload]

    def _reply(self, frames: list[bytes]) -> bool:
        try:
            header, payload = frames
            env = decode_envelope(header)
        except (ValueError, msgspec.DecodeError) as exc:
            self._fail(BenchError(f"{self.source}: malformed reply: {exc}"))
            return False
        fut = self._pending.pop(env.request_id, None)
        if fut is None or env.kind != KIND_REP or env.type_name != ECHO_TYPE_NAME:
            self._fail(BenchError(f"{self.source}: unexpected reply header {env!r}"))
            return False
        if not fut.done():
            fut.set_result(payload)
        return True

    def _fail(self, error: BenchError) -> None:
        self._error = error
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)


class RawClient(_Client):
    """Driven by ``loop.add_reader(FD)``, the way the node's transport reads."""

    source = "raw-cli"

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        super().__init__(socket(ctx, zmq.DEALER, endpoint, bind=False))
        self._fd = self._sock.fileno()
        self._loop.add_reader(self._fd, self._read)
        self._loop.call_soon(self._read)

    async def call(self, payload: bytes) -> bytes:
        # Inline, as the old limit was: a helper call per request would slow the limit.
        if self._error is not None:
            raise self._error
        self._next_id += 1
        request_id = self._next_id
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[request_id] = fut
        try:
            send_frames(
                self._sock, [encode_envelope(request_envelope(request_id, "raw-cli")), payload]
            )
        except zmq.Again:
            del self._pending[request_id]
            raise BenchError("raw client: send would block (HWM reached)") from None
        # The send may have consumed the FD edge that announced replies already queued.
        self._read()
        try:
            return await fut
        except BaseException:
            self._pending.pop(request_id, None)
            raise

    def _read(self) -> None:
        sock, pending = self._sock, self._pending
        while readable(sock):
            frames = recv_frames(sock)
            try:
                header, payload = frames
                env = decode_envelope(header)
            except (ValueError, msgspec.DecodeError) as exc:
                return self._fail(BenchError(f"raw client: malformed reply: {exc}"))
            fut = pending.pop(env.request_id, None)
            if fut is None or env.kind != KIND_REP or env.type_name != ECHO_TYPE_NAME:
                return self._fail(BenchError(f"raw client: unexpected reply header {env!r}"))
            if not fut.done():
                fut.set_result(payload)

    async def aclose(self) -> None:
        self._loop.remove_reader(self._fd)
        self._fail(BenchError("raw client closed"))
        self._sock.close(0)


class AsyncioClient(_Client):
    """Over ``zmq.asyncio``, with a reader task."""

    source = "asyncio-cli"

    def __init__(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        super().__init__(socket(ctx, zmq.DEALER, endpoint, bind=False))
        self._reader = self._loop.create_task(self._read())

    async def call(self, payload: bytes) -> bytes:
        request_id, fut, frames = self._open(payload)
        try:
            await self._sock.send_multipart(frames)
            return await fut
        except BaseException:
            self._pending.pop(request_id, None)
            raise

    async def _read(self) -> None:
        recv = self._sock.recv_multipart
        try:
            while self._reply(await recv()):
                pass
        except Exception as exc:
            self._fail(BenchError(f"asyncio client: reader failed: {exc!r}"))

    async def aclose(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._fail(BenchError("asyncio client closed"))
        self._sock.close(0)


@asynccontextmanager
async def open_client(kind: str, endpoint: str) -> AsyncIterator[Call]:
    """A connected client whose first round trip has succeeded; yields its ``call``."""
    ctx = zmq.asyncio.Context() if kind == "asyncio" else zmq.Context()
    client = AsyncioClient(ctx, endpoint) if kind == "asyncio" else RawClient(ctx, endpoint)
    try:
        # DEALER connects lazily; the first call proves the server is up and echoing.
        async with asyncio.timeout(START_TIMEOUT):
            if await client.call(b"probe") != b"probe":
                raise BenchError(f"{kind} client: probe reply mismatch")
        yield client.call
    except TimeoutError:
        raise BenchError(f"{kind} client: no reply from {endpoint}") from None
    finally:
        await client.aclose()
        ctx.term()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("command", choices=["serve"])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    run_uvloop(serve(args.kind, args.host))

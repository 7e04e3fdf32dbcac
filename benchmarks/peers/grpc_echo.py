"""gRPC unary echo over ``grpc.aio``: a server process and an in-process client.

No generated code: the service is a generic handler (``grpc.method_handlers_generic_handler``
with ``grpc.unary_unary_rpc_method_handler``) whose request and response are raw bytes
(no serializers), carrying the msgpack ``[header, payload]`` body of ``_frame.py``. The
wire work is the same as a protobuf ``bytes`` field minus protobuf's few bytes of tag.
Plaintext HTTP/2 on 127.0.0.1 (``insecure_channel``), one channel, default options.

    python benchmarks/peers/grpc_echo.py serve               # prints READY 127.0.0.1:PORT
    python benchmarks/peers/grpc_echo.py selftest
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from benchmarks._common import Call, check_reply, payload_for
from benchmarks.peers._frame import BadRequest, decode_reply, echo_body, encode_request
from benchmarks.peers._proc import (
    SERVER_START_TIMEOUT,
    PeerProcess,
    announce,
    run_async_server,
    start_script,
    wait_for_stop,
)

SERVICE = "bench.Echo"
METHOD = "Echo"
PATH = f"/{SERVICE}/{METHOD}"
REQUEST_TIMEOUT = 10.0  # s, per call
SERVER_GRACE = 1.0  # s, for in-flight calls on stop


async def _serve(host: str) -> None:
    import grpc

    bad = 0

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal bad
        try:
            return echo_body(request, "grpc-srv")
        except BadRequest as exc:
            bad += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        announce(f"{host}:{port}")
        await wait_for_stop()
    finally:
        await server.stop(SERVER_GRACE)
        if bad:
            print(f"grpc server: {bad} malformed requests", file=sys.stderr)


def start_server(host: str = "127.0.0.1") -> PeerProcess:
    return start_script("grpc server", Path(__file__).resolve(), ["serve", "--host", host])


@asynccontextmanager
async def open_client(target: str) -> AsyncIterator[Call]:
    """One ``grpc.aio`` channel reduced to ``call(payload)`` (unary, checked)."""
    import grpc

    channel = grpc.aio.insecure_channel(target)
    try:
        # No serializers: request and response are bytes as they are.
        method = channel.unary_unary(PATH)
        next_id = 0

        async def call(payload: bytes) -> bytes:
            nonlocal next_id
            next_id += 1
            request_id = next_id
            reply = await method(
                encode_request(request_id, "grpc-cli", payload), timeout=REQUEST_TIMEOUT
            )
            return decode_reply(reply, request_id)

        async with asyncio.timeout(SERVER_START_TIMEOUT):
            await channel.channel_ready()
            probe = payload_for(0)
            check_reply(await call(probe), probe)
        yield call
    finally:
        await channel.close()


async def _selftest(target: str, count: int) -> None:
    async with open_client(target) as call:
        t0 = time.perf_counter()
        for seq in range(count):
            payload = payload_for(seq)
            check_reply(await call(payload), payload)
        dt = time.perf_counter() - t0
    print(f"grpc: {count} sequential round trips, {dt / count * 1e6:.0f} µs each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the server (prints READY host:port)")
    serve.add_argument("--host", default="127.0.0.1")
    test = sub.add_parser("selftest", help="start a server process, run calls")
    test.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        run_async_server(lambda: _serve(args.host))
        return 0

    from benchmarks._common import run_uvloop

    server = start_server()
    try:
        run_uvloop(_selftest(server.address, max(1, min(args.count, 100_000))))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

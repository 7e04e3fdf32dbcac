"""NATS request/reply echo: a local nats-server, a responder process, a nats-py client.

The path of one request is client -> nats-server -> responder -> nats-server -> client:
NATS is brokered, so every round trip crosses the server twice. That is what a NATS
user pays and is measured as is. The benchmark starts its own ``nats-server`` (bound
to 127.0.0.1 on a random port, no config file, no monitoring) and stops it by its PID.

    python benchmarks/peers/nats_echo.py serve --url nats://127.0.0.1:4222
    python benchmarks/peers/nats_echo.py selftest     # server + responder + 1000 calls
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from benchmarks._common import BenchError, Call, check_reply, payload_for
from benchmarks.peers._frame import BadRequest, decode_reply, echo_body, encode_request
from benchmarks.peers._proc import (
    SERVER_START_TIMEOUT,
    PeerProcess,
    announce,
    run_async_server,
    start_script,
    wait_for_stop,
)
from benchmarks.raw_echo import stop_process

SUBJECT = "bench.echo"
QUEUE = "bench"
REQUEST_TIMEOUT = 10.0  # s, per request (a stall is reported, never waited out)
NATS_POLL_INTERVAL = 0.05  # s, while waiting for the ports file
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


# --- nats-server ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the benchmark dies.

    nats-server has no parent watchdog of its own (the Python servers here do), so a
    benchmark killed with SIGKILL would otherwise leave it running.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except Exception:
            pass


def find_nats_server(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    for candidate in ("nats-server", "/usr/bin/nats-server", "/usr/sbin/nats-server"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def nats_server_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().removeprefix("nats-server: ") or "unknown"


def start_nats_server(
    binary: str, host: str = "127.0.0.1", timeout: float = SERVER_START_TIMEOUT
) -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    """Start ``nats-server`` on ``host``, random port; return (process, url, its temp dir).

    The port is read from the ports file the server writes once it listens, so there is
    no race on a port picked in advance.
    """
    tmp = tempfile.TemporaryDirectory(prefix="bench-nats-")
    log_path = Path(tmp.name) / "nats-server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    try:
        proc = subprocess.Popen(
            [binary, "-a", host, "-p", "-1", "--ports_file_dir", tmp.name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # no threads in this process yet
        )
    except BaseException:
        log.close()
        tmp.cleanup()
        raise
    log.close()
    try:
        ports_file = Path(tmp.name) / f"nats-server_{proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-400:]
                raise BenchError(f"nats-server exited with {proc.returncode}: {tail}")
            if ports_file.exists():
                try:
                    urls = json.loads(ports_file.read_text())["nats"]
                    break
                except (ValueError, KeyError):
                    pass  # written but not complete yet
            if time.monotonic() > deadline:
                raise BenchError(f"nats-server pid {proc.pid}: not listening after {timeout:.0f}s")
            time.sleep(NATS_POLL_INTERVAL)
        url = next((u for u in urls if host in u), urls[0])
        return proc, url, tmp
    except BaseException:
        stop_process(proc)
        tmp.cleanup()
        raise


# --- responder (the server process) -----------------------------------------------------


async def _serve(url: str, subject: str) -> None:
    import nats
    from nats.aio.msg import Msg

    nc = await nats.connect(url, name="bench-responder", allow_reconnect=False)
    bad = 0

    async def handler(msg: Msg) -> None:
        nonlocal bad
        try:
            reply = echo_body(msg.data, "nats-srv")
        except BadRequest:
            bad += 1
            return
        await msg.respond(reply)

    try:
        await nc.subscribe(subject, queue=QUEUE, cb=handler)
        await nc.flush()  # the subscription is known to the server: requests will reach it
        announce(url)
        await wait_for_stop()
    finally:
        await nc.close()
        if bad:
            print(f"nats responder: {bad} malformed requests", file=sys.stderr)


def start_responder(url: str) -> PeerProcess:
    return start_script("nats responder", Path(__file__).resolve(), ["serve", "--url", url])


# --- client (the benchmark process) -----------------------------------------------------


@asynccontextmanager
async def open_client(url: str, subject: str = SUBJECT) -> AsyncIterator[Call]:
    """A nats-py connection reduced to ``call(payload)`` (``nc.request``, checked)."""
    import nats

    nc = await nats.connect(url, name="bench-client", allow_reconnect=False)
    try:
        request = nc.request
        next_id = 0

        async def call(payload: bytes) -> bytes:
            nonlocal next_id
            next_id += 1
            request_id = next_id
            msg = await request(
                subject, encode_request(request_id, "nats-cli", payload), timeout=REQUEST_TIMEOUT
            )
            return decode_reply(msg.data, request_id)

        async with asyncio.timeout(SERVER_START_TIMEOUT):
            probe = payload_for(0)
            check_reply(await call(probe), probe)
        yield call
    finally:
        await nc.close()


async def _selftest(url: str, count: int) -> None:
    async with open_client(url) as call:
        t0 = time.perf_counter()
        for seq in range(count):
            payload = payload_for(seq)
            check_reply(await call(payload), payload)
        dt = time.perf_counter() - t0
    print(f"nats: {count} sequential round trips, {dt / count * 1e6:.0f} µs each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run the responder (prints READY <url>)")
    serve.add_argument("--url", required=True)
    serve.add_argument("--subject", default=SUBJECT)
    test = sub.add_parser("selftest", help="start nats-server and a responder, run calls")
    test.add_argument("--nats-server", default=None)
    test.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        run_async_server(lambda: _serve(args.url, args.subject))
        return 0

    from benchmarks._common import run_uvloop

    binary = find_nats_server(args.nats_server)
    if binary is None:
        print("nats-server not found", file=sys.stderr)
        return 2
    proc, url, tmp = start_nats_server(binary)
    try:
        responder = start_responder(url)
        try:
            run_uvloop(_selftest(url, max(1, min(args.count, 100_000))))
        finally:
            responder.stop()
    finally:
        stop_process(proc)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

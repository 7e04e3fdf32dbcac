"""Starting and stopping the peer server processes (by their own PID, bounded in time)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import REPO_ROOT, BenchError
from benchmarks.raw_echo import read_line, stop_process

SERVER_START_TIMEOUT = 15.0  # s, to see "READY" from a server process
SERVER_MAX_LIFETIME = 1800.0  # s, a server left behind by a crashed parent exits anyway
PARENT_CHECK_INTERVAL = 0.5  # s


@dataclass(slots=True)
class PeerProcess:
    """A started child process and the address it announced."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    extra_pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        stop_process(self.process)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def start_script(
    name: str,
    script: Path,
    args: list[str],
    *,
    timeout: float = SERVER_START_TIMEOUT,
    stdin: int = subprocess.DEVNULL,
) -> PeerProcess:
    """Run ``python script args...``; return once it printed ``READY <address>``."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=child_env(),
    )
    try:
        line = read_line(proc, timeout)
        if not line.startswith("READY"):
            raise BenchError(f"{name} pid {proc.pid}: unexpected first line {line!r}")
        return PeerProcess(name=name, address=line[len("READY") :].strip(), process=proc)
    except BaseException:
        stop_process(proc)
        raise


def announce(address: str) -> None:
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


def parent_gone(parent: int, started: float, max_lifetime: float) -> bool:
    return os.getppid() != parent or time.monotonic() - started > max_lifetime


async def wait_for_stop(max_lifetime: float = SERVER_MAX_LIFETIME) -> None:
    """In an asyncio server: return on SIGTERM/SIGINT, parent exit or ``max_lifetime``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()
    started = time.monotonic()

    def watchdog() -> None:
        if parent_gone(parent, started, max_lifetime):
            stop.set()
        else:
            loop.call_later(PARENT_CHECK_INTERVAL, watchdog)

    loop.call_later(PARENT_CHECK_INTERVAL, watchdog)
    await stop.wait()


def run_async_server(main: Callable[[], object]) -> None:
    """Run an asyncio server coroutine function under uvloop, as the raw servers run."""
    from benchmarks._common import run_uvloop

    run_uvloop(main())  # type: ignore[arg-type]

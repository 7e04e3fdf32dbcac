"""Command processes for tests: start one, wait for its ready line, stop it by its PID.

Output goes to files, not pipes, so a chatty process can never block on a full pipe.
Every wait is bounded and polls without blocking the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0  # s for a node process to print its ready line
EXIT_TIMEOUT = 15.0  # s for a process to exit after SIGTERM
POLL = 0.05  # s between two looks at a file or a process


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without inherited ``CATGA_*`` settings, which would change defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATGA_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Proc:
    """One command, its output in ``out`` and ``err``."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ready: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def _ready_line(self) -> bool:
        for line in self.stdout().splitlines():
            if line.startswith("ready "):
                self.ready = dict(part.split("=", 1) for part in line.split()[1:])
                return True
        return False

    async def await_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._ready_line():
                return
            await asyncio.sleep(POLL)
        if self._ready_line():
            return
        raise AssertionError(
            f"{self.name} (pid {self.pid}) not ready within {timeout} s, exit code "
            f"{self.proc.poll()}; stderr:\n{self.stderr()[-3000:]}"
        )

    async def await_text(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``text`` is in the process's stderr (its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return
            await asyncio.sleep(POLL)
        raise AssertionError(
            f"{text!r} not in the log of {self.name} within {timeout} s:\n{self.stderr()[-3000:]}"
        )

    async def await_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(POLL)
        raise AssertionError(f"{self.name} (pid {self.pid}) still running after {timeout} s")

    def send(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: by this process's PID only. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=EXIT_TIMEOUT)
        else:
            self.proc.wait()


def start(name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``cmd`` in the repository's root (not waiting for it)."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    with out.open("wb") as fout, err.open("wb") as ferr:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=clean_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=fout,
            stderr=ferr,
        )
    return Proc(name, proc, out, err)


async def run(cmd: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``cmd`` to its end: (exit code, stdout, stderr); killed by its PID at ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

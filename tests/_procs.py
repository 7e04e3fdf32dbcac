"""Child processes of the tests: output in files, waited on with bounds, stopped by PID.

The one process runner of the suite: the node processes of ``test_cluster.py``, the
hosts and clients of a ``Lan`` (``tests/lan.py``, which runs them under
``ip netns exec``), the server that ``test_failover_memory.py`` kills. A ``Proc``
writes its stdout and stderr to files, so that nothing blocks on a full pipe and a
failing test can show what the child said; every wait is bounded, and every child is
stopped by its own PID (SIGTERM, a bounded wait, then SIGKILL), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: The repository root: children run here and import ``tests.apps`` from here.
ROOT = Path(__file__).resolve().parent.parent
POLL = 0.05  # s between two looks at a file or a process
STOP_TIMEOUT = 15.0  # s from SIGTERM to SIGKILL: a node drains first (drain_timeout 10 s)
KILL_TIMEOUT = 5.0  # s for a SIGKILLed child to be reaped
READY = re.compile(r"^ready (?P<fields>.*)$")


class ProcError(AssertionError):
    """A child did not do what a test waited for; the message has the end of its stderr."""


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``CATGA_*`` settings, and with ``extra``.

    Inherited settings would change the defaults the tests are about. Output is
    unbuffered, so that a line is in the file as soon as it is printed; ``ROOT`` is on
    ``PYTHONPATH``, so that ``tests.apps`` imports from any directory.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATGA_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(
    cmd: Sequence[str], *, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end and capture its output (text); never raises on an exit code.

    On a timeout ``subprocess.run`` kills the child (by its PID), reaps it and raises.
    """
    return subprocess.run(
        list(cmd),
        cwd=ROOT,
        env=child_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def python(*args: str) -> list[str]:
    """The command line of this interpreter with ``args``."""
    return [sys.executable, *args]


class Proc:
    """One child process; its stdout goes to ``<stem>.out``, its stderr to ``<stem>.err``."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.name = name
        self.popen = popen
        self.out = out
        self.err = err
        #: The fields of the ``ready k=v ...`` line, once a wait for it has seen it.
        self.ready: dict[str, str] = {}
        #: True once ``stop()`` had to SIGKILL it.
        self.killed = False

    @classmethod
    def start(
        cls,
        name: str,
        cmd: Sequence[str],
        stem: Path,
        *,
        env: dict[str, str] | None = None,
        **popen: Any,
    ) -> Proc:
        """Start ``cmd`` in ``ROOT`` (not waiting for it); ``popen`` goes to ``Popen``."""
        out, err = stem.parent / f"{stem.name}.out", stem.parent / f"{stem.name}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=child_env() if env is None else env,
                stdin=subprocess.DEVNULL,
                stdout=fout,
                stderr=ferr,
                **popen,
            )
        return cls(name, proc, out, err)

    # what it is and said -----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return _read(self.out)

    def stderr(self) -> str:
        return _read(self.err)

    def fail(self, why: str) -> ProcError:
        """An error naming this child, what went wrong and the end of its stderr."""
        tail = "\n".join(self.stderr().splitlines()[-30:])
        return ProcError(
            f"{self.name} (pid {self.pid}, exit code {self.returncode}): {why}\n"
            f"--- stdout:\n{self.stdout()[-2000:]}\n--- stderr:\n{tail}"
        )

    def _matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for line in self.stdout().splitlines() if (m := pattern.search(line))]

    # waiting -----------------------------------------------------------------------

    def _line_or_none(self, pattern: re.Pattern[str], count: int) -> re.Match[str] | None:
        """The ``count``-th stdout line matching, or None; a ProcError if it ended first."""
        exited = self.returncode is not None  # before reading: its last lines are in
        found = self._matches(pattern)
        if len(found) >= count:
            return found[count - 1]
        if exited:
            raise self.fail(f"ended before {_lines(pattern, count)} ({len(found)} seen)")
        return None

    def wait_line(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """Block until the ``count``-th stdout line that matches ``pattern`` (a regex).

        Only while no event loop of the test runs: this stops the loop.
        """
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while (found := self._line_or_none(regex, count)) is None:
            if time.monotonic() >= deadline:
                raise self.fail(f"no {_lines(regex, count)} within {timeout} s")
            time.sleep(POLL)
        return found

    async def await_line(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """As ``wait_line``, without stopping the event loop (a node may run on it)."""
        regex, deadline = re.compile(pattern), time.monotonic() + timeout
        while (found := self._line_or_none(regex, count)) is None:
            if time.monotonic() >= deadline:
                raise self.fail(f"no {_lines(regex, count)} within {timeout} s")
            await asyncio.sleep(POLL)
        return found

    def wait_ready(self, timeout: float) -> dict[str, str]:
        """Block until the ``ready k=v ...`` line; its fields (also in ``self.ready``)."""
        self.ready = _fields(self.wait_line(READY.pattern, timeout))
        return self.ready

    async def await_ready(self, timeout: float) -> dict[str, str]:
        """As ``wait_ready``, without stopping the event loop."""
        self.ready = _fields(await self.await_line(READY.pattern, timeout))
        return self.ready

    async def await_log(self, text: str, timeout: float) -> None:
        """Wait until ``text`` is in its stderr (where a node logs)."""
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() >= deadline:
                raise self.fail(f"{text!r} not in its log within {timeout} s")
            await asyncio.sleep(POLL)

    async def await_exit(self, timeout: float) -> int:
        """Its exit code, waiting up to ``timeout`` s without stopping the event loop."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() >= deadline:
                raise self.fail(f"still running after {timeout} s")
            await asyncio.sleep(POLL)
        return code

    # stopping ----------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to this child's PID, if it still runs."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; its exit code. Idempotent."""
        stop_all([self], timeout)
        code = self.returncode
        assert code is not None  # stop_all raised otherwise
        return code


def stop_all(procs: Iterable[Proc], timeout: float = STOP_TIMEOUT) -> None:
    """Stop each child by its PID: SIGTERM to all, up to ``timeout`` s, then SIGKILL.

    They drain side by side, so stopping many takes no longer than stopping one. Raises
    ``ProcError`` naming any that outlived SIGKILL, after trying every one.
    """
    live = [p for p in procs if p.returncode is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    survivors: list[str] = []
    for proc in live:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
            continue
        except subprocess.TimeoutExpired:
            proc.killed = True
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
        try:
            proc.popen.wait(KILL_TIMEOUT)
        except subprocess.TimeoutExpired:
            survivors.append(f"{proc.name} (pid {proc.pid})")
    if survivors:
        raise ProcError(f"still running after SIGKILL: {', '.join(survivors)}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _lines(pattern: re.Pattern[str], count: int) -> str:
    """What a wait looks for, in words: ``the ready line``, ``3 lines /^started/``."""
    if pattern is READY or pattern.pattern == READY.pattern:
        return "the ready line"
    return f"line /{pattern.pattern}/" if count == 1 else f"{count} lines /{pattern.pattern}/"


def _fields(line: re.Match[str]) -> dict[str, str]:
    """``ready node=n1 endpoint=tcp://...`` -> ``{"node": "n1", "endpoint": "tcp://..."}``."""
    return dict(part.split("=", 1) for part in line.group("fields").split() if "=" in part)

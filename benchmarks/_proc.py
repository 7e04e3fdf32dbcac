"""The process harness of every benchmark: start children, read their lines, stop them by PID.

The benchmark side: ``Processes`` starts children (a script of ours, a node with
``python -m catga_zmq.node --app``, any program), and stops each by its own PID (SIGTERM,
a bounded wait, SIGKILL), all of them when its ``with`` block ends, whatever happened.
``Child`` reads a child's stdout line by line, bounded in time, from a thread or from the
event loop. ``cpu_seconds``, ``rss_bytes`` and ``LoadMeter`` read /proc.

The child side: ``announce`` prints the ``READY <address>`` line the parent waits for, and
``wait_for_stop`` returns on SIGTERM, when the parent is gone or after a maximum lifetime,
so that a child outlives no crashed benchmark (node apps do the same, see ``_apps.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks._common import REPO_ROOT, BenchError, log

START_TIMEOUT = 20.0  # s, for a child's ready line
STOP_TIMEOUT = 15.0  # s after SIGTERM (a node drains) before SIGKILL
MAX_LIFETIME = 1800.0  # s, a child left behind by a crashed parent exits anyway
PARENT_CHECK_INTERVAL = 0.5  # s
MAX_LINE = 1 << 20  # bytes; longer output is a broken child
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with ``benchmarks`` importable and the node apps' watchdog armed.

    ``CATGA_*`` variables are dropped: the command line alone sets a node's options.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATGA_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["BENCH_PARENT_PID"] = str(os.getpid())
    env["BENCH_MAX_LIFETIME"] = str(MAX_LIFETIME)
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port now (the node command takes a number; the race is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Child:
    """One started process; its stdout is read as lines (``readline``, ``readline_async``)."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.name, self.popen, self._buf = name, popen, b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _line(self) -> str | None:
        if b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise BenchError(f"{self.name} pid {self.pid}: no newline in {self._buf[:80]!r}")
            return None
        raw, self._buf = self._buf.split(b"\n", 1)
        return raw.decode("utf-8", "replace")

    def _fill(self) -> None:
        assert self.popen.stdout is not None
        chunk = os.read(self.popen.stdout.fileno(), 65536)
        if not chunk:
            raise BenchError(f"{self.name} pid {self.pid} exited (status {self.popen.poll()})")
        self._buf += chunk

    def readline(self, timeout: float = START_TIMEOUT) -> str:
        """The next line of stdout within ``timeout`` (blocking; never longer)."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while (line := self._line()) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} pid {self.pid}: no line within {timeout:g} s")
            if select.select([self.popen.stdout.fileno()], [], [], left)[0]:
                self._fill()
        return line

    async def readline_async(self, timeout: float | None = START_TIMEOUT) -> str:
        """The next line of stdout within ``timeout``, read on the running loop."""
        if (line := self._line()) is not None:
            return line
        assert self.popen.stdout is not None
        loop = asyncio.get_running_loop()
        fd = self.popen.stdout.fileno()
        got: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            try:
                self._fill()
            except BenchError as exc:
                if not got.done():
                    got.set_exception(exc)
                loop.remove_reader(fd)
                return
            if b"\n" in self._buf and not got.done():
                got.set_result(None)

        loop.add_reader(fd, on_readable)
        try:
            async with asyncio.timeout(timeout):
                await got
        except TimeoutError:
            raise BenchError(f"{self.name} pid {self.pid}: no line within {timeout:g} s") from None
        finally:
            loop.remove_reader(fd)
        line = self._line()
        assert line is not None
        return line

    def wait_ready(self, prefix: str = "READY", timeout: float = START_TIMEOUT) -> str:
        """Skip lines until one starts with ``prefix`` (``READY``; nodes print ``ready``)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line.startswith(prefix):
                return line

    def send_line(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()


def stop_all(children: Iterable[Child], timeout: float = STOP_TIMEOUT) -> dict[str, int | None]:
    """Stop each child by its own PID: SIGTERM to all, wait, SIGKILL whoever is left."""
    children = list(children)
    for child in children:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(max(0.0, deadline - time.monotonic()))
        if child.alive():
            log(f"{child.name} pid {child.pid} ignored SIGTERM: SIGKILL")
            child.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(5.0)
        for stream in (child.popen.stdin, child.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    return {child.name: child.popen.returncode for child in children}


class Processes:
    """Every child of a run. Leaving the ``with`` block stops those still running."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: Sequence[str], env: Any = None, **popen: Any) -> Child:
        """Start ``argv``: stdout piped (its lines) and stdin closed unless told otherwise."""
        popen = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, **popen}
        child = Child(
            name, subprocess.Popen(list(argv), cwd=REPO_ROOT, env=child_env(env), **popen)
        )
        self.children.append(child)  # stopped by PID from now on, whatever happens next
        return child

    def script(self, name: str, path: os.PathLike[str] | str, *args: str, **kw: Any) -> Child:
        """``python path args...`` (a script of ours, run with ``serve ...``)."""
        return self.spawn(name, [sys.executable, str(path), *args], **kw)

    def node(
        self,
        node_id: str,
        app: str | None,
        *,
        name: str | None = None,
        env: Any = None,
        stdout: Any = subprocess.PIPE,
        **flags: Any,
    ) -> Child:
        """``python -m catga_zmq.node --app APP --id NODE_ID --FLAG VALUE...``: a node run as
        users run theirs; ``flags`` are the command's own (``cluster=``, ``seeds=[...]``)."""
        argv = [sys.executable, "-m", "catga_zmq.node", *(("--app", app) if app else ())]
        argv += ["--id", node_id]
        for key, value in {"bind": "127.0.0.1", "log_level": "WARNING", **flags}.items():
            if value is not None and value != []:
                text = ",".join(value) if isinstance(value, list) else str(value)
                argv += [f"--{key.replace('_', '-')}", text]
        return self.spawn(name or node_id, argv, env=env, stdout=stdout)

    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c.alive()]

    def stop(
        self, children: Iterable[Child] | None = None, timeout: float = STOP_TIMEOUT
    ) -> dict[str, int | None]:
        """Stop ``children`` (default: all of them) by PID and forget them."""
        chosen = list(self.children if children is None else children)
        self.children = [c for c in self.children if c not in chosen]
        return stop_all(chosen, timeout)


# --- /proc --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # fields 14 and 15 of stat(5)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a live process, from /proc/<pid>/statm."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq (guest is in user)
    return busy / _CLK_TCK, (v[7] if len(v) > 7 else 0) / _CLK_TCK


def _own_cpu(live_pids: Callable[[], Iterable[int]]) -> float:
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system  # waited children included
    return own + sum(cpu_seconds(pid) or 0.0 for pid in live_pids())


class LoadMeter:
    """CPU the machine spent on work this run did not start (other people's tests, ...).

    Other work competes for the same cores and lowers every figure; this says how much
    there was. Machine busy time minus the CPU of this process and its children (live
    ones from /proc, finished ones from ``os.times()``); steal is time the hypervisor
    gave to other guests.
    """

    def __init__(self, live_pids: Callable[[], Iterable[int]]) -> None:
        self._live = live_pids
        self._load0 = os.getloadavg()[0]
        self._t0 = time.monotonic()
        self._busy0, self._steal0 = _machine_cpu()
        self._own0 = _own_cpu(live_pids)

    def stop(self) -> dict[str, float]:
        seconds = max(1e-9, time.monotonic() - self._t0)
        busy, steal = _machine_cpu()
        foreign = max(0.0, busy - self._busy0 - (_own_cpu(self._live) - self._own0))
        return {
            "seconds": seconds,
            "cores": float(os.cpu_count() or 0),
            "foreign_cores_avg": foreign / seconds,
            "steal_cores_avg": (steal - self._steal0) / seconds,
            "loadavg_start": self._load0,
            "loadavg_end": os.getloadavg()[0],
        }


def format_load(load: dict[str, float] | None) -> str:
    if not load:
        return ""
    text = (
        f"Other load on the machine during the run: {load['foreign_cores_avg']:.2f} of "
        f"{load['cores']:.0f} cores on average (CPU time of processes this run did not "
        f"start), steal {load['steal_cores_avg']:.2f} cores; load average "
        f"{load['loadavg_start']:.2f} at start, {load['loadavg_end']:.2f} at end."
    )
    if load["foreign_cores_avg"] > 0.1 or load["steal_cores_avg"] > 0.1:
        text += " WARNING: the machine was not idle; figures are lower and noisier."
    return text


# --- the child side -----------------------------------------------------------------------


def announce(address: str) -> None:
    sys.stdout.write(f"READY {address}\n")
    sys.stdout.flush()


def parent_gone(parent: int, started: float, max_lifetime: float = MAX_LIFETIME) -> bool:
    return os.getppid() != parent or time.monotonic() - started > max_lifetime


async def wait_for_stop(max_lifetime: float = MAX_LIFETIME) -> None:
    """In an asyncio child: return on SIGTERM/SIGINT, parent exit or ``max_lifetime``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent, started = os.getppid(), time.monotonic()

    def watchdog() -> None:
        if parent_gone(parent, started, max_lifetime):
            stop.set()
        else:
            loop.call_later(PARENT_CHECK_INTERVAL, watchdog)

    loop.call_later(PARENT_CHECK_INTERVAL, watchdog)
    await stop.wait()

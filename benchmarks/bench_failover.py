"""Failure detection and failover cost on real node processes, default node settings.

Node processes run ``python -m catga_zmq.node --app benchmarks._failover_app:node``
(bound on 127.0.0.1, mDNS there or static seeds); the benchmark process joins the
cluster as a client node. Two phases:

1. **Detection.** ``--nodes`` nodes (4). ``--kills`` times (10), one node is sent
   SIGKILL (h1, h2, ... in turn). Every surviving node writes its membership log lines
   with ``time.time()`` to stdout (``_failover_app``), so the time from SIGKILL to
   "is suspect" and to "is faulted" is read per surviving peer on the same clock. The
   killed node is then restarted under the same id, and the next kill waits until it is
   ALIVE again in every view (each survivor's, the client's) and it sees every survivor.
   Reported: "on all peers" (per kill, the slowest survivor), each peer, the client's
   ``watch()``, the silence and phi the detector logged, and restart-to-ALIVE.

2. **Failover cost.** Down to 3 nodes (the others drain and leave). The client sends
   ``IdemWork`` (``__idempotent__ = True``) and ``OnceWork`` (not idempotent), each at
   ``--rate`` requests/s (200), open loop, each served by all 3 nodes (round robin,
   handler time ``--work-ms``). ``--failover-kills`` times (3): ``--steady`` s of steady
   state, SIGKILL one node, a ``--window`` s window (5), restart it, wait until it is
   ALIVE everywhere, settle. Latency (until ``send()`` returned or raised, default 5 s
   deadline) in the steady windows vs the kill windows (every request in flight at any
   moment from the kill to ``--window`` s after) vs the rejoin windows (restart to ALIVE
   plus settle), and the outcome of every request: ok, TIMEOUT, TRANSPORT_FAILED, other,
   or hung (``send()`` did not return within its deadline plus 2 s). The notes say, per
   kill, when each failed or slow request was sent relative to the SIGKILL.

Every process shares the machine's CPUs, and so do whatever else runs there: the report
gives the machine's CPU use and pressure during the run, and the stalls of this
process's event loop (a stall of the whole machine delays every detector at once).

    python benchmarks/bench_failover.py                       # ~2 minutes
    python benchmarks/bench_failover.py --kills 3 --failover-kills 1
    python benchmarks/bench_failover.py --discovery static --json failover.json

Exit status 1 when an idempotent request failed, any request hung, a kill went
undetected, or the cluster did not come back; 2 when it could not be set up.
Every process started here is stopped by its own PID (SIGTERM, wait, SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO_ROOT,
    BenchError,
    environment,
    format_environment,
    percentile,
    run_uvloop,
)
from benchmarks._failover_app import (
    EVENT_PREFIX,
    EVENTS_ENV,
    WORK_MS_ENV,
    IdemWork,
    OnceWork,
    Served,
)
from catga_zmq import (
    CatgaError,
    Node,
    NodeFaulted,
    NodeJoined,
    NodeLeft,
    NodeOptions,
    NodeRecovered,
    NodeStatus,
    NodeSuspect,
    StaticDiscovery,
)

APP = "benchmarks._failover_app:node"

READY_TIMEOUT = 20.0  # s for a node process to print its ready line
MESH_TIMEOUT = 30.0  # s for every node (and the client) to see every other, at start
DETECT_LIMIT = 15.0  # s after SIGKILL: a survivor that has not said FAULTED by then missed it
REJOIN_LIMIT = 25.0  # s for a restarted node to be ALIVE in every view
STOP_TIMEOUT = 12.0  # s for SIGTERM (drain) before SIGKILL
RESTART_GUARD = 0.25  # s between the end of a kill window and the restart
HANG_GRACE = 2.0  # s past a request's own deadline after which it counts as hung
MAX_OUTSTANDING = 5_000  # requests of one stream in flight at once; past it, sends are shed
POLL = 0.01  # s between looks at the logs and views while waiting
SLOW_DETECTION = 3.0  # s; a detection slower than this is pointed out in the notes

log = logging.getLogger("bench_failover")


# --- the nodes' membership lines on stdout -------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEvent:
    t: float  # time.time() in the node that logged it
    kind: str  # suspect, faulted, joined, recovered, left
    subject: str  # the node it is about
    silent: float | None = None  # s of silence the detector saw (suspect, faulted)
    phi: float | None = None  # phi at FAULTED


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("suspect", re.compile(r"node (?P<id>\S+) is suspect: silent for (?P<silent>[\d.]+) s")),
    (
        "faulted",
        re.compile(
            r"node (?P<id>\S+) is faulted: silent for (?P<silent>[\d.]+) s"
            r"(?: \(phi (?P<phi>[\d.]+|inf)\))?"
        ),
    ),
    ("joined", re.compile(r"node (?P<id>\S+) joined at ")),
    ("recovered", re.compile(r"node (?P<id>\S+) is \w+ again")),
    ("left", re.compile(r"node (?P<id>\S+) left\b")),
)


def parse_event(line: str) -> LogEvent | None:
    """``event <epoch> <membership log message>`` -> ``LogEvent`` (None: not one we use)."""
    try:
        stamp, message = line[len(EVENT_PREFIX) :].split(" ", 1)
        t = float(stamp)
    except ValueError:
        return None
    for kind, pattern in _PATTERNS:
        m = pattern.match(message)
        if m:
            groups = m.groupdict()
            silent = groups.get("silent")
            phi = groups.get("phi")
            return LogEvent(
                t,
                kind,
                m.group("id"),
                float(silent) if silent else None,
                float(phi) if phi else None,
            )
    return None


_ALIVE_KINDS = ("joined", "recovered")
_LOST_KINDS = ("suspect", "faulted", "left")


class NodeProcess:
    """One life of one node: the process, its ready line and its membership events."""

    def __init__(self, node_id: str, life: int, popen: subprocess.Popen[bytes], log_path: Path):
        self.node_id = node_id
        self.life = life
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.spawned = time.time()
        self.endpoint = ""
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._events: list[LogEvent] = []
        self._thread = threading.Thread(
            target=self._read, name=f"stdout-{node_id}-{life}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        # Ends at EOF, when the process exits (every process here is stopped by PID).
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("ready "):
                fields = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
                self.endpoint = fields.get("endpoint", "")
                self.ready.set()
            elif line.startswith(EVENT_PREFIX):
                event = parse_event(line)
                if event is not None:
                    with self._lock:
                        self._events.append(event)

    def events(self) -> list[LogEvent]:
        with self._lock:
            return list(self._events)

    def first(self, kind: str, subject: str, after: float) -> LogEvent | None:
        for e in self.events():
            if e.kind == kind and e.subject == subject and e.t >= after:
                return e
        return None

    def sees_alive(self, subject: str, since: float) -> bool:
        """Its latest word on ``subject`` is joined/recovered, said at or after ``since``."""
        latest: LogEvent | None = None
        for e in self.events():
            if e.subject == subject:
                latest = e
        return latest is not None and latest.kind in _ALIVE_KINDS and latest.t >= since

    def alive(self) -> bool:
        return self.popen.poll() is None

    def join_reader(self, timeout: float) -> None:
        self._thread.join(timeout)

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cluster:
    """The node processes. ``stop_all`` stops every one ever started, by its own PID."""

    def __init__(self, ids: Sequence[str], discovery: str, work_ms: float, log_dir: Path):
        self.name = f"fo-{os.getpid()}-{secrets.token_hex(3)}"
        self.ids = list(ids)
        self.discovery = discovery
        self.work_ms = work_ms
        self.log_dir = log_dir
        self.current: dict[str, NodeProcess] = {}
        self.every: list[NodeProcess] = []
        self._lives: Counter[str] = Counter()
        # Static discovery: fixed ROUTER ports, so a restarted node comes back where
        # every node's seed list says it is.
        self.ports = {i: _free_port("127.0.0.1") for i in ids} if discovery == "static" else {}

    @property
    def seeds(self) -> list[str]:
        return [f"tcp://127.0.0.1:{p}" for p in self.ports.values()]

    def spawn(self, node_id: str) -> NodeProcess:
        self._lives[node_id] += 1
        life = self._lives[node_id]
        cmd = [sys.executable, "-m", "catga_zmq.node", "--app", APP, "--id", node_id]
        cmd += ["--cluster", self.name, "--bind", "127.0.0.1"]
        if self.discovery == "static":
            cmd += ["--discovery", "static", "--port", str(self.ports[node_id])]
            cmd += ["--seeds", ",".join(self.seeds)]
        else:
            cmd += ["--discovery", "mdns"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env[EVENTS_ENV] = "1"
        env[WORK_MS_ENV] = str(self.work_ms)
        env.pop("CATGA_CLUSTER", None)
        log_path = self.log_dir / f"{node_id}.{life}.log"
        with log_path.open("ab") as err:
            # No cwd and close_fds=False let subprocess use posix_spawn (vfork), which does
            # not copy this process's page tables: a restart does not stall the client's
            # loop. Every descriptor here is non-inheritable (PEP 446), so none leaks.
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                close_fds=False,
            )
        proc = NodeProcess(node_id, life, popen, log_path)
        self.every.append(proc)
        self.current[node_id] = proc
        return proc

    async def start(self, node_id: str) -> NodeProcess:
        # In a worker thread: the client's requests keep flowing while the process starts.
        return await self.wait_ready(await asyncio.to_thread(self.spawn, node_id))

    async def wait_ready(self, proc: NodeProcess) -> NodeProcess:
        node_id = proc.node_id
        deadline = time.monotonic() + READY_TIMEOUT
        while not proc.ready.is_set():
            if not proc.alive():
                raise BenchError(
                    f"node {node_id} (pid {proc.pid}) exited with {proc.popen.returncode} "
                    f"before it was ready:\n{proc.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"node {node_id} (pid {proc.pid}) not ready in {READY_TIMEOUT} s")
            await asyncio.sleep(POLL)
        return proc

    async def kill(self, node_id: str) -> float:
        """SIGKILL the node's current process; returns time.time() just before the signal."""
        proc = self.current[node_id]
        t = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(500):  # reap it without blocking the loop (bounded: 5 s)
            if proc.popen.poll() is not None:
                break
            await asyncio.sleep(POLL)
        return t

    async def terminate(self, node_id: str) -> int | None:
        """SIGTERM (the node drains and says BYE), then SIGKILL after ``STOP_TIMEOUT``."""
        proc = self.current.pop(node_id)
        if proc.popen.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while proc.popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a process, bounded
            await asyncio.sleep(POLL)
        if proc.popen.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(5)
        return proc.popen.returncode

    def stop_all(self) -> dict[str, int | None]:
        """Every process ever started here: SIGTERM, wait, SIGKILL; by PID, never by name."""
        running = [p for p in self.every if p.popen.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in running:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.popen.wait(5)
            codes[f"{p.node_id}.{p.life}"] = p.popen.returncode
        for p in self.every:
            p.join_reader(2.0)
            if p.popen.stdout is not None:
                p.popen.stdout.close()
        return codes


# --- the client node in this process -------------------------------------------------------


class ClientView:
    """The client node's ``watch()``, stamped with time.time() as events arrive."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.events: list[tuple[float, str, str, int]] = []  # t, kind, node id, incarnation
        self._iterator = node.watch()  # subscribed now: nothing is missed
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        names = {
            NodeSuspect: "suspect",
            NodeFaulted: "faulted",
            NodeJoined: "joined",
            NodeRecovered: "recovered",
            NodeLeft: "left",
        }
        async for event in self._iterator:
            kind = names.get(type(event), type(event).__name__)
            self.events.append((time.time(), kind, event.node.node_id, event.node.incarnation))

    def first(self, kind: str, subject: str, after: float) -> float | None:
        for t, k, who, _ in self.events:
            if k == kind and who == subject and t >= after:
                return t
        return None

    def member(self, node_id: str) -> Any:
        for m in self.node.members():
            if m.node_id == node_id and not m.local:
                return m
        return None

    def alive_incarnation(self, node_id: str) -> int | None:
        m = self.member(node_id)
        if m is None or m.status is not NodeStatus.ALIVE:
            return None
        return int(m.incarnation)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class LagMonitor:
    """How late this process's event loop wakes up: a stall of the whole machine (CPU
    steal, a paused VM) shows here at the same moment as in the nodes' detectors."""

    TICK = 0.02  # s
    REPORT = 0.1  # s of lag worth remembering

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (time.time(), lag s)
        self.max_lag = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # cancelled by close()
            before = loop.time()
            await asyncio.sleep(self.TICK)
            lag = loop.time() - before - self.TICK
            self.max_lag = max(self.max_lag, lag)
            if lag >= self.REPORT:
                self.stalls.append((time.time(), lag))

    def near(self, t: float, span: float) -> list[tuple[float, float]]:
        return [(ts, lag) for ts, lag in self.stalls if t - span <= ts <= t + span]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """Machine-wide CPU seconds so far, all CPUs (Linux ``/proc/stat``)."""

    total: float
    idle: float  # idle + iowait
    steal: float  # taken by the host of this VM
    wall: float  # time.monotonic()
    waiting: float | None  # s some runnable task waited for a CPU (PSI), if the kernel says

    @staticmethod
    def now() -> CpuTimes | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            hz = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        if len(ticks) < 8:
            return None
        waiting: float | None = None
        try:
            with open("/proc/pressure/cpu", encoding="ascii") as f:
                some = f.readline().split()
            waiting = int(some[-1].split("=", 1)[1]) / 1e6  # total=<microseconds>
        except (OSError, ValueError, IndexError):
            pass
        return CpuTimes(
            sum(ticks) / hz, (ticks[3] + ticks[4]) / hz, ticks[7] / hz, time.monotonic(), waiting
        )


def machine_load(before: CpuTimes | None, after: CpuTimes | None) -> dict[str, float]:
    """Busy share of all CPUs (every process, not only ours) and steal over a span."""
    if before is None or after is None or after.total <= before.total:
        return {}
    total = after.total - before.total
    load = {
        "busy_percent": 100.0 * (1.0 - (after.idle - before.idle) / total),
        "steal_percent": 100.0 * (after.steal - before.steal) / total,
    }
    if before.waiting is not None and after.waiting is not None and after.wall > before.wall:
        load["cpu_pressure_percent"] = (
            100.0 * (after.waiting - before.waiting) / (after.wall - before.wall)
        )
    return load


async def wait_until(what: str, ready: Callable[[], bool], limit: float) -> float:
    """Poll ``ready`` until true; returns the time.time() it became true; bounded."""
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {limit:g} s")
        await asyncio.sleep(POLL)
    return time.time()


def _mesh_ready(cluster: Cluster, view: ClientView, ids: Sequence[str]) -> Callable[[], bool]:
    """Every node in ``ids`` sees every other ALIVE (its current life), the client all."""

    def ready() -> bool:
        for a in ids:
            pa = cluster.current[a]
            for b in ids:
                if a != b and not pa.sees_alive(b, cluster.current[b].spawned):
                    return False
            if view.alive_incarnation(a) is None:
                return False
        return True

    return ready


async def wait_rejoined(
    cluster: Cluster, view: ClientView, target: str, old_incarnation: int | None, t_restart: float
) -> float:
    """The restarted ``target`` is ALIVE in every view and sees every survivor."""
    survivors = [i for i in cluster.current if i != target]
    proc = cluster.current[target]

    def ready() -> bool:
        if not all(cluster.current[s].sees_alive(target, t_restart) for s in survivors):
            return False
        if not all(proc.sees_alive(s, t_restart) for s in survivors):
            return False
        inc = view.alive_incarnation(target)
        return inc is not None and inc != old_incarnation

    return await wait_until(f"{target} ALIVE again in every view", ready, REJOIN_LIMIT)


# --- phase 1: detection --------------------------------------------------------------------


@dataclass(slots=True)
class KillRecord:
    kill: int
    target: str
    t_kill: float
    suspect_s: dict[str, float | None] = field(default_factory=dict)  # per survivor
    faulted_s: dict[str, float | None] = field(default_factory=dict)
    silent_at_fault: dict[str, float | None] = field(default_factory=dict)
    phi_at_fault: dict[str, float | None] = field(default_factory=dict)
    client_suspect_s: float | None = None
    client_faulted_s: float | None = None
    ready_s: float | None = None  # restart -> ready line
    rejoin_s: float | None = None  # restart -> ALIVE in every view
    error: str | None = None

    def all_peers(self, which: dict[str, float | None]) -> float | None:
        values = list(which.values())
        if not values or any(v is None for v in values):
            return None
        return max(v for v in values if v is not None)


async def detect_one(cluster: Cluster, view: ClientView, kill_no: int, target: str) -> KillRecord:
    survivors = [i for i in cluster.current if i != target]
    before = view.member(target)
    old_incarnation = int(before.incarnation) if before is not None else None
    t_kill = await cluster.kill(target)
    rec = KillRecord(kill_no, target, t_kill)

    def detected() -> bool:
        return all(
            cluster.current[s].first("faulted", target, t_kill) is not None for s in survivors
        ) and (view.first("faulted", target, t_kill) is not None)

    try:
        await wait_until(
            f"kill {kill_no}: {target} FAULTED on every survivor", detected, DETECT_LIMIT
        )
    except BenchError as exc:
        rec.error = str(exc)
    for s in survivors:
        proc = cluster.current[s]
        sus = proc.first("suspect", target, t_kill)
        fau = proc.first("faulted", target, t_kill)
        rec.suspect_s[s] = sus.t - t_kill if sus else None
        rec.faulted_s[s] = fau.t - t_kill if fau else None
        rec.silent_at_fault[s] = fau.silent if fau else None
        rec.phi_at_fault[s] = fau.phi if fau else None
    cs, cf = view.first("suspect", target, t_kill), view.first("faulted", target, t_kill)
    rec.client_suspect_s = cs - t_kill if cs is not None else None
    rec.client_faulted_s = cf - t_kill if cf is not None else None

    t_restart = time.time()
    await cluster.start(target)
    rec.ready_s = time.time() - t_restart
    t_back = await wait_rejoined(cluster, view, target, old_incarnation, t_restart)
    rec.rejoin_s = t_back - t_restart
    return rec


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


async def run_detection(
    cluster: Cluster, view: ClientView, kills: int, settle: float, records: list[KillRecord]
) -> None:
    """Appends to ``records`` as it goes: a failure part way keeps what was measured."""
    ids = list(cluster.current)
    for k in range(kills):
        target = ids[k % len(ids)]
        rec = await detect_one(cluster, view, k + 1, target)
        records.append(rec)
        print(
            f"kill {k + 1}/{kills} {target}: suspect "
            + "/".join(_fmt_s(v) for v in rec.suspect_s.values())
            + " s, faulted "
            + "/".join(_fmt_s(v) for v in rec.faulted_s.values())
            + f" s (client {_fmt_s(rec.client_faulted_s)} s); ALIVE everywhere "
            f"{_fmt_s(rec.rejoin_s)} s after restart" + (f"; {rec.error}" if rec.error else ""),
            file=sys.stderr,
            flush=True,
        )
        await asyncio.sleep(settle)


# --- phase 2: failover cost ----------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    start: float  # time.time() when send() was called
    end: float
    outcome: str  # ok, an error code, HUNG, WRONG_REPLY
    served_by: str = ""


class Stream:
    """Open loop: one ``send()`` every 1/rate s, each in its own task, every one recorded."""

    def __init__(self, client: Node, message_type: type[Any], rate: float) -> None:
        self.client = client
        self.message_type = message_type
        self.rate = rate
        self.samples: list[Sample] = []
        self.shed = 0
        self._outstanding: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._budget = client.options.request_timeout + HANG_GRACE
        self.task: asyncio.Task[None] | None = None

    def start(self, max_seconds: float) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(max_seconds))

    async def _one(self, seq: int) -> None:
        start = time.time()
        served_by = ""
        guard = asyncio.timeout(self._budget)
        try:
            async with guard:
                reply = await self.client.send(self.message_type(seq=seq))
            if isinstance(reply, Served) and reply.seq == seq:
                outcome, served_by = "ok", reply.served_by
            else:
                outcome = "WRONG_REPLY"
        except CatgaError as exc:
            outcome = "HUNG" if guard.expired() else exc.code
        except TimeoutError:
            outcome = "HUNG" if guard.expired() else "TimeoutError"
        except Exception as exc:  # anything else is a finding, not a crash of the benchmark
            outcome = type(exc).__name__
        self.samples.append(Sample(start, time.time(), outcome, served_by))

    async def _run(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        t0 = loop.time()
        end = t0 + max_seconds
        seq = 0
        while not self._stop.is_set() and loop.time() < end:
            delay = t0 + seq * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            seq += 1
            if len(self._outstanding) >= MAX_OUTSTANDING:
                self.shed += 1
                continue
            task = loop.create_task(self._one(seq))
            self._outstanding.add(task)
            task.add_done_callback(self._outstanding.discard)

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task
        if self._outstanding:
            # Each request is bounded by its own guard; this bound is only a backstop.
            await asyncio.wait(list(self._outstanding), timeout=self._budget + 5)
        for task in list(self._outstanding):
            task.cancel()


@dataclass(slots=True)
class FailoverKill:
    kill: int
    target: str
    steady_from: float
    t_kill: float
    client_suspect_s: float | None = None
    client_faulted_s: float | None = None
    t_restart: float = 0.0
    rejoin_s: float | None = None
    settled: float = 0.0  # ALIVE everywhere + settle
    error: str | None = None


def _nearest_kill(s: Sample, kills: Sequence[FailoverKill]) -> FailoverKill | None:
    """The last kill at or before the request ended."""
    before = [k for k in kills if k.t_kill <= s.end]
    return before[-1] if before else None


def _in_steady(s: Sample, kills: Sequence[FailoverKill]) -> bool:
    return any(s.start >= k.steady_from and s.end < k.t_kill for k in kills)


def _in_window(s: Sample, kills: Sequence[FailoverKill], window: float) -> bool:
    return any(s.end >= k.t_kill and s.start < k.t_kill + window for k in kills)


def _in_rejoin(s: Sample, kills: Sequence[FailoverKill]) -> bool:
    return any(k.settled and s.end >= k.t_restart and s.start < k.settled for k in kills)


@dataclass(slots=True)
class WindowRow:
    requests: str
    window: str
    sent: int
    ok: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    slow: int
    timeout: int
    transport_failed: int
    other: dict[str, int]
    hung: int


def window_row(requests: str, window: str, samples: Sequence[Sample], slow_s: float) -> WindowRow:
    lat = sorted((s.end - s.start) * 1000.0 for s in samples)
    outcomes = Counter(s.outcome for s in samples)
    other = {
        k: v for k, v in outcomes.items() if k not in ("ok", "TIMEOUT", "TRANSPORT_FAILED", "HUNG")
    }
    return WindowRow(
        requests=requests,
        window=window,
        sent=len(samples),
        ok=outcomes["ok"],
        p50_ms=percentile(lat, 50) if lat else None,
        p99_ms=percentile(lat, 99) if lat else None,
        max_ms=lat[-1] if lat else None,
        slow=sum(1 for v in lat if v > slow_s * 1000.0),
        timeout=outcomes["TIMEOUT"],
        transport_failed=outcomes["TRANSPORT_FAILED"],
        other=other,
        hung=outcomes["HUNG"],
    )


async def run_failover(
    cluster: Cluster,
    view: ClientView,
    cfg: Config,
    streams: dict[str, Stream],
    kills: list[FailoverKill],
) -> None:
    """Appends to ``kills``; the streams are stopped (every request ended) on the way out."""
    ids = list(cluster.current)
    planned = cfg.warmup + cfg.failover_kills * (
        cfg.steady + cfg.window + REJOIN_LIMIT + READY_TIMEOUT + cfg.settle
    )
    for stream in streams.values():
        stream.start(planned + 10)
    try:
        await asyncio.sleep(cfg.warmup)
        for k in range(cfg.failover_kills):
            target = ids[k % len(ids)]
            steady_from = time.time()
            await asyncio.sleep(cfg.steady)
            before = view.member(target)
            old_incarnation = int(before.incarnation) if before is not None else None
            t_kill = await cluster.kill(target)
            rec = FailoverKill(k + 1, target, steady_from, t_kill)
            kills.append(rec)
            # The restart waits RESTART_GUARD past the window, so that what a restart costs
            # (a process starting on the same CPUs, mDNS) is not counted in the window.
            await asyncio.sleep(max(0.0, t_kill + cfg.window + RESTART_GUARD - time.time()))
            cs = view.first("suspect", target, t_kill)
            cf = view.first("faulted", target, t_kill)
            rec.client_suspect_s = cs - t_kill if cs is not None else None
            rec.client_faulted_s = cf - t_kill if cf is not None else None
            t_restart = time.time()
            rec.t_restart = t_restart
            await cluster.start(target)
            try:
                t_back = await wait_rejoined(cluster, view, target, old_incarnation, t_restart)
                rec.rejoin_s = t_back - t_restart
            except BenchError as exc:
                rec.error = str(exc)
                raise
            print(
                f"failover kill {k + 1}/{cfg.failover_kills} {target}: client saw SUSPECT "
                f"{_fmt_s(rec.client_suspect_s)} s, FAULTED {_fmt_s(rec.client_faulted_s)} s "
                f"after SIGKILL; ALIVE again {_fmt_s(rec.rejoin_s)} s after restart",
                file=sys.stderr,
                flush=True,
            )
            await asyncio.sleep(cfg.settle)
            rec.settled = time.time()
    finally:
        for stream in streams.values():
            await stream.stop()


# --- report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatRow:
    measure: str
    values: tuple[float, ...]
    missing: int = 0

    def as_dict(self) -> dict[str, Any]:
        v = sorted(self.values)
        return {
            "measure": self.measure,
            "n": len(v),
            "missing": self.missing,
            "min": v[0] if v else None,
            "median": statistics.median(v) if v else None,
            "max": v[-1] if v else None,
            "values": list(self.values),
        }


def _stat(measure: str, values: Iterable[float | None]) -> StatRow:
    vals = list(values)
    got = tuple(v for v in vals if v is not None)
    return StatRow(measure, got, missing=len(vals) - len(got))


def detection_rows(records: Sequence[KillRecord]) -> list[StatRow]:
    ok = list(records)
    return [
        _stat(
            "SIGKILL → SUSPECT on all peers (slowest peer)", (r.all_peers(r.suspect_s) for r in ok)
        ),
        _stat(
            "SIGKILL → FAULTED on all peers (slowest peer)", (r.all_peers(r.faulted_s) for r in ok)
        ),
        _stat(
            "SIGKILL → SUSPECT, each peer",
            (v for r in ok for v in r.suspect_s.values()),
        ),
        _stat(
            "SIGKILL → FAULTED, each peer",
            (v for r in ok for v in r.faulted_s.values()),
        ),
        _stat("SIGKILL → FAULTED at the bench client (watch())", (r.client_faulted_s for r in ok)),
        _stat(
            "silence the detector logged at FAULTED",
            (v for r in ok for v in r.silent_at_fault.values()),
        ),
        _stat("phi logged at FAULTED", (v for r in ok for v in r.phi_at_fault.values())),
        _stat("restart → ready line", (r.ready_s for r in ok)),
        _stat("restart → ALIVE in every view", (r.rejoin_s for r in ok)),
    ]


def format_detection(rows: Sequence[StatRow]) -> str:
    lines = ["| measure | n | min | median | max |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        d = row.as_dict()
        unit = "" if row.measure.startswith("phi") else " s"
        cells = [f"{d[k]:.2f}{unit}" if d[k] is not None else "-" for k in ("min", "median", "max")]
        n = f"{d['n']}" + (f" ({row.missing} missing)" if row.missing else "")
        lines.append(f"| {row.measure} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def format_failover(rows: Sequence[WindowRow], slow_s: float) -> str:
    lines = [
        f"| requests | window | sent | ok | p50 ms | p99 ms | max ms | > {slow_s:g} s "
        "| TIMEOUT | TRANSPORT_FAILED | other | hung |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        other = ", ".join(f"{k} {v}" for k, v in sorted(r.other.items())) or "0"
        lines.append(
            f"| {r.requests} | {r.window} | {r.sent} | {r.ok} | {_ms(r.p50_ms)} | "
            f"{_ms(r.p99_ms)} | {_ms(r.max_ms)} | {r.slow} | {r.timeout} | "
            f"{r.transport_failed} | {other} | {r.hung} |"
        )
    return "\n".join(lines)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def _spurious(
    cluster: Cluster, view: ClientView, kills: Sequence[tuple[str, float, float]]
) -> list[str]:
    """SUSPECT/FAULTED of a node that had not been killed: a false positive of the detector.

    ``kills`` are (target, killed at, back at); a loss of the target in that span is expected.
    """

    def expected(subject: str, t: float) -> bool:
        return any(subject == tgt and t0 <= t <= t1 for tgt, t0, t1 in kills)

    found: list[str] = []
    for proc in cluster.every:
        for e in proc.events():
            if e.kind in ("suspect", "faulted") and not expected(e.subject, e.t):
                found.append(
                    f"{proc.node_id} (life {proc.life}) said {e.subject} is {e.kind} at "
                    f"{_clock(e.t)}"
                    + (f" (silent {e.silent:.2f} s)" if e.silent is not None else "")
                )
    for t, kind, who, _ in view.events:
        if kind in ("suspect", "faulted") and not expected(who, t):
            found.append(f"the bench client said {who} is {kind} at {_clock(t)}")
    return found


# --- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    nodes: int
    kills: int
    failover_kills: int
    rate: float
    work_ms: float
    steady: float
    window: float
    settle: float
    warmup: float
    slow: float
    discovery: str
    max_seconds: float


@dataclass(slots=True)
class Results:
    detection: list[KillRecord] = field(default_factory=list)
    failover: list[FailoverKill] = field(default_factory=list)
    rows: list[WindowRow] = field(default_factory=list)
    shed: dict[str, int] = field(default_factory=dict)
    hung_detail: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    affected: list[dict[str, Any]] = field(default_factory=list)  # failed or slow, per kill
    slowest_steady: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stalls: list[tuple[float, float]] = field(default_factory=list)
    max_lag: float = 0.0
    load: dict[str, float] = field(default_factory=dict)  # busy %, steal %, loadavg
    error: str | None = None


def _gone(view: ClientView, node_id: str) -> bool:
    return view.alive_incarnation(node_id) is None


def _serving(client: Node, wire_name: str) -> int:
    return sum(
        1
        for m in client.members()
        if not m.local and m.status is NodeStatus.ALIVE and wire_name in m.handles
    )


def _client_node(cluster: Cluster) -> Node:
    discovery: Any = StaticDiscovery(cluster.seeds) if cluster.discovery == "static" else "mdns"
    return Node(
        node_id=f"bench-client-{os.getpid()}",
        cluster=cluster.name,
        bind="127.0.0.1",
        discovery=discovery,
    )


def summarize_failover(cfg: Config, streams: dict[str, Stream], results: Results) -> None:
    """The table rows, and every failed or slow request with its place around its kill."""
    kills = results.failover
    for name, stream in streams.items():
        results.shed[name] = stream.shed
        steady = [s for s in stream.samples if _in_steady(s, kills)]
        window = [s for s in stream.samples if _in_window(s, kills, cfg.window)]
        results.rows.append(window_row(name, "steady", steady, cfg.slow))
        results.rows.append(window_row(name, f"kill → +{cfg.window:g} s", window, cfg.slow))
        rejoin = [s for s in stream.samples if _in_rejoin(s, kills)]
        results.rows.append(window_row(name, "restart → ALIVE + settle", rejoin, cfg.slow))
        results.rows.append(window_row(name, "whole run", stream.samples, cfg.slow))
        for s in stream.samples:
            if s.outcome == "HUNG":
                results.hung_detail.append(f"{name} request started at {s.start:.3f}")
            if s.outcome != "ok" or s.end - s.start > cfg.slow:
                k = _nearest_kill(s, kills)
                results.affected.append(
                    {
                        "requests": name,
                        "kill": k.kill if k else None,
                        "target": k.target if k else None,
                        "start_after_kill_s": s.start - k.t_kill if k else None,
                        "latency_s": s.end - s.start,
                        "outcome": s.outcome,
                        "served_by": s.served_by,
                    }
                )
        slowest = sorted(steady, key=lambda x: x.start - x.end)[:10]
        results.slowest_steady[name] = [
            {
                "latency_ms": (x.end - x.start) * 1000,
                "at": _clock(x.start),
                "before_kill_s": min(
                    (k.t_kill - x.start for k in kills if k.t_kill >= x.start),
                    default=None,
                ),
                "served_by": x.served_by,
            }
            for x in slowest
        ]


async def run(cfg: Config, cluster: Cluster, results: Results) -> None:
    started = time.monotonic()
    spawned = [cluster.spawn(node_id) for node_id in cluster.ids]  # start side by side
    for proc in spawned:
        await cluster.wait_ready(proc)
    client = _client_node(cluster)
    cpu_before = CpuTimes.now()
    results.load["loadavg_1min_at_start"] = os.getloadavg()[0]
    async with client:
        view = ClientView(client)
        lag = LagMonitor()
        try:
            await wait_until(
                "every node sees every other ALIVE",
                _mesh_ready(cluster, view, cluster.ids),
                MESH_TIMEOUT,
            )
            await asyncio.sleep(cfg.settle)
            results.phases["start"] = time.monotonic() - started

            t = time.monotonic()
            if cfg.kills:
                try:
                    await run_detection(cluster, view, cfg.kills, cfg.settle, results.detection)
                finally:
                    results.phases["detection"] = time.monotonic() - t

            if cfg.failover_kills:
                t = time.monotonic()
                for extra in cluster.ids[3:]:  # down to 3 nodes serving the types
                    code = await cluster.terminate(extra)
                    if code != 0:
                        print(f"{extra} exited with {code} on SIGTERM", file=sys.stderr)
                    await wait_until(
                        f"{extra} gone from the client's view",
                        partial(_gone, view, extra),
                        REJOIN_LIMIT,
                    )
                await wait_until(
                    "three nodes serve the types",
                    lambda: _serving(client, IdemWork.__wire_name__) == 3,
                    REJOIN_LIMIT,
                )
                streams = {
                    "idempotent": Stream(client, IdemWork, cfg.rate),
                    "non-idempotent": Stream(client, OnceWork, cfg.rate),
                }
                try:
                    await run_failover(cluster, view, cfg, streams, results.failover)
                finally:
                    results.phases["failover"] = time.monotonic() - t
                    summarize_failover(cfg, streams, results)
        finally:
            # A killed node's old life is never heard again: anything after its kill
            # until it is back is expected. (Its restart is a new life: ALIVE again.)
            spans = [
                (r.target, r.t_kill, r.t_kill + DETECT_LIMIT + REJOIN_LIMIT)
                for r in results.detection
            ] + [
                (k.target, k.t_kill, k.t_kill + cfg.window + REJOIN_LIMIT) for k in results.failover
            ]
            results.spurious = _spurious(cluster, view, spans)
            await lag.close()
            await view.close()
            results.stalls, results.max_lag = lag.stalls, lag.max_lag
            results.load.update(machine_load(cpu_before, CpuTimes.now()))
            results.load["loadavg_1min_at_end"] = os.getloadavg()[0]


def parse_args(argv: list[str] | None) -> tuple[Config, Path | None, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4, help="nodes in phase 1 (>= 3)")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in phase 1 (0: skip)")
    parser.add_argument(
        "--failover-kills", type=int, default=3, help="SIGKILLs under load in phase 2 (0: skip)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of each type")
    parser.add_argument(
        "--work-ms",
        type=float,
        default=20.0,
        help="handler time (ms): requests in flight at a kill",
    )
    parser.add_argument("--steady", type=float, default=3.0, help="s of steady state before a kill")
    parser.add_argument(
        "--window", type=float, default=5.0, help="s after a kill measured as its window"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="s to settle after a node is back"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="s of load before phase 2 measures"
    )
    parser.add_argument(
        "--slow", type=float, default=1.0, help="a request slower than this (s) is counted"
    )
    parser.add_argument("--discovery", choices=("mdns", "static"), default="mdns")
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="hard bound on the whole run (s)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save results here")
    parser.add_argument(
        "--log-dir", type=Path, metavar="DIR", help="keep the nodes' stderr logs here"
    )
    a = parser.parse_args(argv)
    if a.nodes < 3:
        parser.error("--nodes must be >= 3")
    if a.kills < 0 or a.failover_kills < 0:
        parser.error("--kills and --failover-kills must be >= 0")
    if a.rate <= 0 or a.rate > 5000:
        parser.error("--rate must be in (0, 5000]")
    if min(a.steady, a.window, a.settle, a.warmup, a.slow) < 0 or a.work_ms < 0:
        parser.error("durations must be >= 0")
    cfg = Config(
        nodes=a.nodes,
        kills=a.kills,
        failover_kills=a.failover_kills,
        rate=a.rate,
        work_ms=a.work_ms,
        steady=a.steady,
        window=a.window,
        settle=a.settle,
        warmup=a.warmup,
        slow=a.slow,
        discovery=a.discovery,
        max_seconds=a.max_seconds,
    )
    return cfg, a.json, a.log_dir


def _defaults_line() -> str:
    o = NodeOptions()
    return (
        f"heartbeat_interval {o.heartbeat_interval:g} s, suspect_after {o.suspect_after:g} s, "
        f"phi_threshold {o.phi_threshold:g} (acceptable_pause {o.acceptable_pause:g} s), "
        f"faulted_after {o.faulted_after:g} s, request_timeout {o.request_timeout:g} s, "
        f"routing {o.routing}"
    )


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}} to {hi:{fmt}}"


def _affected_lines(affected: Sequence[dict[str, Any]]) -> list[str]:
    """One line per kill, request type and outcome: the failed or slow requests."""
    groups: dict[tuple[int, str, str, str], list[dict[str, Any]]] = {}
    for a in affected:
        key = (a["kill"] or 0, a["target"] or "-", a["requests"], a["outcome"])
        groups.setdefault(key, []).append(a)
    lines = []
    for (kill, target, requests, outcome), items in sorted(groups.items()):
        starts = [
            a["start_after_kill_s"] * 1000 for a in items if a["start_after_kill_s"] is not None
        ]
        took = [a["latency_s"] for a in items]
        after = sum(1 for v in starts if v >= 0)
        served = sorted({a["served_by"] for a in items if a["served_by"]})
        where = (
            f"sent {_span(starts, '+.0f')} ms from the SIGKILL ({len(starts) - after} before it, "
            f"{after} after)"
            if starts
            else "sent before any kill"
        )
        lines.append(
            f"failover kill {kill} ({target}), {requests}: {len(items)} "
            + ("slow ok" if outcome == "ok" else outcome)
            + f", {where}, send() returned after {_span(took, '.2f')} s"
            + (f", answered by {', '.join(served)}" if served else "")
        )
    return lines


def report(cfg: Config, results: Results, env: dict[str, str], elapsed: float) -> list[str]:
    """Print the tables; returns the problems that make the exit status 1."""
    problems: list[str] = []
    notes: list[str] = []
    print(
        f"Node settings: defaults ({_defaults_line()}); discovery {cfg.discovery}; "
        f"every process on 127.0.0.1.\n"
    )
    if results.detection:
        print(
            f"### Failure detection: {cfg.nodes} nodes, {len(results.detection)} SIGKILLs "
            f"({cfg.nodes - 1} surviving peers each; times on the peers' own clock, "
            "time.time(), from just before SIGKILL)\n"
        )
        rows = detection_rows(results.detection)
        print(format_detection(rows))
        print()
        for r in results.detection:
            if r.error:
                problems.append(f"kill {r.kill} ({r.target}): {r.error}")
            for peer, v in r.faulted_s.items():
                if v is None:
                    problems.append(f"kill {r.kill}: {peer} never said {r.target} is faulted")
                elif v > SLOW_DETECTION:
                    notes.append(
                        f"kill {r.kill}: {peer} took {v:.2f} s to say {r.target} is faulted "
                        f"(silent {_fmt_s(r.silent_at_fault[peer])} s, phi {_fmt_s(r.phi_at_fault[peer])})"
                    )
    if results.rows:
        print(
            f"### Failover cost: 3 nodes serve each type; the client sends each type at "
            f"{cfg.rate:g} req/s (open loop), handler {cfg.work_ms:g} ms; "
            f"{len(results.failover)} SIGKILLs; steady = {cfg.steady:g} s before each kill, "
            f"kill window = every request in flight from the kill to {cfg.window:g} s after; "
            "latency = until send() returned or raised\n"
        )
        print(format_failover(results.rows, cfg.slow))
        print()
        for row in results.rows:
            if row.window != "whole run":
                continue
            if row.hung:
                problems.append(f"{row.requests}: {row.hung} requests hung")
            if row.requests == "idempotent" and row.ok != row.sent:
                problems.append(f"idempotent: {row.sent - row.ok} of {row.sent} requests failed")
        detect = [k.client_faulted_s for k in results.failover]
        notes.append(
            "under load the client saw FAULTED "
            + ", ".join(_fmt_s(v) for v in detect)
            + " s after each SIGKILL"
        )
        for name, shed in results.shed.items():
            if shed:
                problems.append(f"{name}: {shed} sends shed (over {MAX_OUTSTANDING} in flight)")
        for k in results.failover:
            if k.error:
                problems.append(f"failover kill {k.kill}: {k.error}")
    for r in results.detection:
        worst = r.all_peers(r.faulted_s)
        if worst is None:
            continue
        stalls = [
            (t - r.t_kill, lag)
            for t, lag in results.stalls
            if r.t_kill <= t <= r.t_kill + worst + 0.05
        ]
        if stalls:
            notes.append(
                f"kill {r.kill} ({r.target}, FAULTED on all peers after {worst:.2f} s): the "
                "bench process's event loop also stalled "
                + ", ".join(f"{lag * 1000:.0f} ms at +{dt:.2f} s" for dt, lag in stalls)
                + " after the SIGKILL (a stall of the whole machine delays every detector)"
            )
    for line in _affected_lines(results.affected):
        notes.append(line)
    if results.stalls:
        worst_t, worst_lag = max(results.stalls, key=lambda x: x[1])
        notes.append(
            f"the bench process's event loop woke >= {LagMonitor.REPORT * 1000:.0f} ms late "
            f"{len(results.stalls)} times (worst {worst_lag * 1000:.0f} ms at {_clock(worst_t)})"
        )
    if results.load:
        ld = results.load
        busy = ld.get("busy_percent")
        cpu = (
            f"CPUs {busy:.0f}% busy, {ld.get('steal_percent', 0):.1f}% stolen by the host; "
            if busy is not None
            else ""
        )
        if "cpu_pressure_percent" in ld:
            cpu += (
                f"some runnable task waited for a CPU {ld['cpu_pressure_percent']:.0f}% of the "
                "time (/proc/pressure/cpu); "
            )
        notes.append(
            "machine load during the run (every process, ours and others'): "
            + cpu
            + f"load average {ld.get('loadavg_1min_at_start', 0):.2f} at start, "
            f"{ld.get('loadavg_1min_at_end', 0):.2f} at end, on {os.cpu_count()} CPUs"
        )
    if results.spurious:
        notes.append(
            f"{len(results.spurious)} SUSPECT/FAULTED of nodes that were not killed: "
            + "; ".join(results.spurious[:10])
        )
    if results.error:
        problems.append(results.error)
    if notes or problems:
        print("Notes:\n")
        for n in problems:
            print(f"- PROBLEM: {n}")
        for n in notes:
            print(f"- {n}")
        print()
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results.phases.items())
    print(f"Run time {elapsed:.0f} s ({phases}).\n")
    print(format_environment(env))
    return problems


def main(argv: list[str] | None = None) -> int:
    cfg, json_path, log_dir = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    env = environment()
    from catga_zmq import __version__

    env["catga_zmq"] = __version__
    keep_logs = log_dir is not None
    if log_dir is None:
        log_dir = Path(tempfile.mkdtemp(prefix="bench_failover-"))
    else:
        log_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"h{i}" for i in range(1, cfg.nodes + 1)]
    cluster = Cluster(ids, cfg.discovery, cfg.work_ms, log_dir)
    results = Results()
    started = time.monotonic()
    exit_codes: dict[str, int | None] = {}
    try:

        async def bounded() -> None:
            async with asyncio.timeout(cfg.max_seconds):
                await run(cfg, cluster, results)

        try:
            run_uvloop(bounded())
        except TimeoutError:
            results.error = f"the run exceeded --max-seconds {cfg.max_seconds:g}"
        except BenchError as exc:
            results.error = str(exc)
    finally:
        exit_codes = cluster.stop_all()
        if not keep_logs and results.error is None:
            shutil.rmtree(log_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"cluster {cluster.name}; node processes stopped: {exit_codes}", file=sys.stderr)
    if results.error is not None:
        print(f"error: {results.error} (node logs in {log_dir})", file=sys.stderr)

    problems = report(cfg, results, env, elapsed)

    if json_path is not None:
        document: dict[str, Any] = {
            "benchmark": "bench_failover",
            "environment": env,
            "config": asdict(cfg),
            "node_defaults": msgspec_to_dict(NodeOptions()),
            "elapsed_seconds": elapsed,
            "detection": {
                "summary": [r.as_dict() for r in detection_rows(results.detection)],
                "kills": [asdict(r) for r in results.detection],
            },
            "failover": {
                "rows": [asdict(r) for r in results.rows],
                "kills": [asdict(k) for k in results.failover],
                "shed": results.shed,
            },
            "failover_affected": results.affected,
            "slowest_steady": results.slowest_steady,
            "bench_loop_stalls": [{"at": _clock(t), "lag_s": lag} for t, lag in results.stalls],
            "bench_loop_max_lag_s": results.max_lag,
            "machine_load": results.load,
            "spurious": results.spurious,
            "problems": problems,
            "error": results.error,
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults saved to {json_path}", file=sys.stderr)
    if results.error is not None and not results.detection and not results.rows:
        return 2
    return 1 if problems else 0


def msgspec_to_dict(obj: Any) -> dict[str, Any]:
    import msgspec

    return dict(msgspec.to_builtins(obj))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""Failure detection and failover cost on real node processes, default node settings.

Node processes run ``python -m catga_zmq.node --app benchmarks._apps:failover`` (bound on
127.0.0.1, mDNS there or static seeds); the benchmark process joins the cluster as a
client node. Every node prints the events of its own ``watch()`` with ``time.time()``, so
the time from SIGKILL to SUSPECT and to FAULTED is read per surviving peer on one clock.

1. **Detection.** ``--nodes`` nodes (4); ``--kills`` times (10) one node is sent SIGKILL
   (h1, h2, ... in turn), then restarted under the same id; the next kill waits until it
   is ALIVE again in every view (each survivor's, the client's) and sees every survivor.
   Reported: "on all peers" (per kill, the slowest survivor), each peer, the client's
   ``watch()``, and restart to ALIVE everywhere.
2. **Failover cost.** Down to 3 nodes (the others drain and leave). The client sends
   ``IdemWork`` (``__idempotent__``) and ``OnceWork`` (not), each at ``--rate`` requests/s,
   open loop, round robin over the 3 nodes (handler time ``--work-ms``).
   ``--failover-kills`` times: ``--steady`` s of steady state, SIGKILL one node, a
   ``--window`` s window, restart, wait until it is ALIVE everywhere, settle. Latency
   (until ``send()`` returned or raised) and the outcome of every request (ok, TIMEOUT,
   TRANSPORT_FAILED, other, or hung: no return within its deadline plus 2 s) in the
   steady, kill and rejoin windows; the notes say when each failed or slow request was
   sent relative to its SIGKILL.

    python benchmarks/bench_failover.py                      # about 2 minutes
    python benchmarks/bench_failover.py --kills 3 --failover-kills 1 --discovery static

Exit status 1 when an idempotent request failed, any request hung, a kill went
undetected or the cluster did not come back; 2 when it could not be set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._apps import EVENT_PREFIX, WORK_MS_ENV, IdemWork, OnceWork, Served, event_kind
from benchmarks._common import (
    BenchError,
    environment,
    fmt,
    log,
    parse,
    parser,
    percentile,
    report,
    run_script,
    run_uvloop,
    table,
)
from benchmarks._proc import Child, LoadMeter, Processes, format_load, free_port
from catga_zmq import CatgaError, Node, NodeOptions, NodeStatus, StaticDiscovery

APP = "benchmarks._apps:failover"
READY_TIMEOUT = 20.0  # s for a node process to print its ready line
MESH_TIMEOUT = 30.0  # s for every node (and the client) to see every other, at start
DETECT_LIMIT = 15.0  # s after SIGKILL: a survivor that has not said FAULTED by then missed it
REJOIN_LIMIT = 25.0  # s for a restarted node to be ALIVE in every view
RESTART_GUARD = 0.25  # s between the end of a kill window and the restart
HANG_GRACE = 2.0  # s past a request's own deadline after which it counts as hung
MAX_OUTSTANDING = 5_000  # requests of one stream in flight at once; past it, sends are shed
POLL = 0.01  # s between looks at the views while waiting
SLOW_DETECTION = 3.0  # s; a detection slower than this is pointed out in the notes
ALIVE_KINDS = ("joined", "recovered")


# --- views: what a node (or the client) said about its peers, and when ----------------------


@dataclass(frozen=True, slots=True)
class Seen:
    t: float  # time.time() where it was seen
    kind: str  # joined, recovered, suspect, faulted, left
    subject: str  # the node it is about


class View:
    def __init__(self) -> None:
        self.events: list[Seen] = []

    def first(self, kind: str, subject: str, after: float) -> float | None:
        return next(
            (e.t for e in self.events if e.kind == kind and e.subject == subject and e.t >= after),
            None,
        )

    def sees_alive(self, subject: str, since: float) -> bool:
        """Its latest word on ``subject`` is joined/recovered, said at or after ``since``."""
        latest = [e for e in self.events if e.subject == subject][-1:]
        return bool(latest) and latest[0].kind in ALIVE_KINDS and latest[0].t >= since


class NodeProcess(View):
    """One life of one node: its process, its ready line and the events it printed."""

    def __init__(self, child: Child, life: int) -> None:
        super().__init__()
        self.child, self.node_id, self.life = child, child.name, life
        self.spawned = time.time()
        self.ready = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(BenchError):  # its stdout ends when the process does
            while True:
                line = await self.child.readline_async(None)
                if line.startswith("ready"):
                    self.ready.set()
                elif line.startswith(EVENT_PREFIX):
                    t, kind, subject, _ = line[len(EVENT_PREFIX) :].split(" ", 3)
                    self.events.append(Seen(float(t), kind, subject))


class ClientView(View):
    """The client node's ``watch()``, stamped with time.time() as events arrive."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self._iterator = node.watch()  # subscribed now: nothing is missed
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for e in self._iterator:
            self.events.append(Seen(time.time(), event_kind(e), e.node.node_id))

    def alive_incarnation(self, node_id: str) -> int | None:
        for m in self.node.members():
            if m.node_id == node_id and not m.local and m.status is NodeStatus.ALIVE:
                return int(m.incarnation)
        return None


class Cluster:
    """The node processes; every one ever started is stopped by its own PID at the end."""

    def __init__(self, procs: Processes, ids: Sequence[str], discovery: str, work_ms: float):
        self.procs, self.ids, self.discovery, self.work_ms = procs, list(ids), discovery, work_ms
        self.name = f"fo-{os.getpid()}-{secrets.token_hex(3)}"
        self.current: dict[str, NodeProcess] = {}
        self.every: list[NodeProcess] = []
        # Static discovery: fixed ports, so a restarted node comes back where the seeds say.
        self.ports = {i: free_port() for i in ids} if discovery == "static" else {}
        self.seeds = [f"tcp://127.0.0.1:{p}" for p in self.ports.values()]

    async def start(self, node_id: str) -> NodeProcess:
        kw: dict[str, Any] = {"discovery": self.discovery, "env": {WORK_MS_ENV: str(self.work_ms)}}
        if self.discovery == "static":
            kw.update(port=self.ports[node_id], seeds=self.seeds)
        # In a worker thread: the client's requests keep flowing while the process starts.
        child = await asyncio.to_thread(self.procs.node, node_id, APP, cluster=self.name, **kw)
        proc = NodeProcess(child, sum(p.node_id == node_id for p in self.every) + 1)
        self.every.append(proc)
        self.current[node_id] = proc
        return proc

    async def wait_ready(self, proc: NodeProcess) -> None:
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await proc.ready.wait()
        except TimeoutError:
            raise BenchError(f"node {proc.node_id} (pid {proc.child.pid}) not ready") from None

    async def kill(self, node_id: str) -> float:
        """SIGKILL the node's current process; returns time.time() just before the signal."""
        child = self.current[node_id].child
        t = time.time()
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(500):  # reap it without blocking the loop (bounded: 5 s)
            if not child.alive():
                break
            await asyncio.sleep(POLL)
        return t

    async def terminate(self, node_id: str) -> int | None:
        """SIGTERM (the node drains and says BYE), then SIGKILL after the stop timeout."""
        proc = self.current.pop(node_id)
        proc.reader.cancel()  # its reader goes before its pipe closes
        await asyncio.gather(proc.reader, return_exceptions=True)
        return (await asyncio.to_thread(self.procs.stop, [proc.child]))[node_id]

    async def close(self) -> None:
        for proc in self.every:
            proc.reader.cancel()
        await asyncio.gather(*(p.reader for p in self.every), return_exceptions=True)
        self.procs.stop()


async def wait_until(what: str, ready: Callable[[], bool], limit: float) -> float:
    """Poll ``ready`` until true; returns the time.time() it became true; bounded."""
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {limit:g} s")
        await asyncio.sleep(POLL)
    return time.time()


async def wait_rejoined(
    cluster: Cluster, view: ClientView, target: str, old: int | None, since: float
) -> float:
    """The restarted ``target`` is ALIVE in every view and sees every survivor."""
    survivors = [i for i in cluster.current if i != target]
    proc = cluster.current[target]

    def ready() -> bool:
        inc = view.alive_incarnation(target)
        return (
            all(cluster.current[s].sees_alive(target, since) for s in survivors)
            and all(proc.sees_alive(s, since) for s in survivors)
            and inc is not None
            and inc != old
        )

    await cluster.wait_ready(proc)
    return await wait_until(f"{target} ALIVE again in every view", ready, REJOIN_LIMIT)


async def restart(
    cluster: Cluster, view: ClientView, target: str, old: int | None
) -> tuple[float, float]:
    """Restart ``target``; returns (restarted at, seconds until ALIVE in every view)."""
    t = time.time()
    await cluster.start(target)
    return t, await wait_rejoined(cluster, view, target, old, t) - t


# --- phase 1: detection -------------------------------------------------------------------


@dataclass(slots=True)
class KillRecord:
    kill: int
    target: str
    t_kill: float
    suspect_s: dict[str, float | None] = field(default_factory=dict)  # per survivor
    faulted_s: dict[str, float | None] = field(default_factory=dict)
    client_faulted_s: float | None = None
    rejoin_s: float | None = None  # restart -> ALIVE in every view
    error: str | None = None

    @staticmethod
    def slowest(which: dict[str, float | None]) -> float | None:
        values = list(which.values())
        return None if not values or None in values else max(v for v in values if v is not None)


async def run_detection(
    cluster: Cluster, view: ClientView, a: Any, records: list[KillRecord]
) -> None:
    """Appends to ``records`` as it goes: a failure part way keeps what was measured."""
    ids = list(cluster.current)
    for k in range(a.kills):
        target = ids[k % len(ids)]
        survivors = [i for i in cluster.current if i != target]
        old = view.alive_incarnation(target)
        t_kill = await cluster.kill(target)
        rec = KillRecord(k + 1, target, t_kill)
        records.append(rec)

        views: list[View] = [cluster.current[s] for s in survivors] + [view]

        def detected() -> bool:
            return all(v.first("faulted", target, t_kill) is not None for v in views)  # noqa: B023

        try:
            await wait_until(f"kill {k + 1}: {target} FAULTED everywhere", detected, DETECT_LIMIT)
        except BenchError as exc:
            rec.error = str(exc)
        for s in survivors:
            for kind, into in (("suspect", rec.suspect_s), ("faulted", rec.faulted_s)):
                t = cluster.current[s].first(kind, target, t_kill)
                into[s] = None if t is None else t - t_kill
        cf = view.first("faulted", target, t_kill)
        rec.client_faulted_s = None if cf is None else cf - t_kill
        _, rec.rejoin_s = await restart(cluster, view, target, old)
        log(
            f"kill {k + 1}/{a.kills} {target}: suspect "
            f"{'/'.join(fmt(v, 2) for v in rec.suspect_s.values())} s, faulted "
            f"{'/'.join(fmt(v, 2) for v in rec.faulted_s.values())} s (client "
            f"{fmt(rec.client_faulted_s, 2)} s); ALIVE everywhere {fmt(rec.rejoin_s, 2)} s "
            "after restart"
        )
        await asyncio.sleep(a.settle)


def detection_rows(records: Sequence[KillRecord]) -> list[list[str]]:
    def row(measure: str, values: Iterable[float | None]) -> list[str]:
        vals = list(values)
        got = sorted(v for v in vals if v is not None)
        missing = f" ({len(vals) - len(got)} missing)" if len(got) < len(vals) else ""
        stats = (got[0], statistics.median(got), got[-1]) if got else (None,) * 3
        return [measure, f"{len(got)}{missing}", *(fmt(v, 2, " s") for v in stats)]

    return [
        row(
            "SIGKILL → SUSPECT on all peers (slowest peer)",
            (KillRecord.slowest(r.suspect_s) for r in records),
        ),
        row(
            "SIGKILL → FAULTED on all peers (slowest peer)",
            (KillRecord.slowest(r.faulted_s) for r in records),
        ),
        row("SIGKILL → SUSPECT, each peer", (v for r in records for v in r.suspect_s.values())),
        row("SIGKILL → FAULTED, each peer", (v for r in records for v in r.faulted_s.values())),
        row(
            "SIGKILL → FAULTED at the bench client (watch())", (r.client_faulted_s for r in records)
        ),
        row("restart → ALIVE in every view", (r.rejoin_s for r in records)),
    ]


# --- phase 2: failover cost ---------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    start: float  # time.time() when send() was called
    end: float
    outcome: str  # ok, an error code, HUNG, WRONG_REPLY
    served_by: str = ""


class Stream:
    """Open loop: one ``send()`` every 1/rate s, each in its own task, every one recorded."""

    def __init__(self, client: Node, message_type: type[Any], rate: float, bound: float) -> None:
        self.client, self.message_type, self.rate, self.bound = client, message_type, rate, bound
        self.samples: list[Sample] = []
        self.shed = 0
        self._outstanding: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._budget = NodeOptions().request_timeout + HANG_GRACE  # the client's defaults
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _one(self, seq: int) -> None:
        start, served_by = time.time(), ""
        guard = asyncio.timeout(self._budget)
        try:
            async with guard:
                reply = await self.client.send(self.message_type(seq=seq))
            ok = isinstance(reply, Served) and reply.seq == seq
            outcome, served_by = ("ok", reply.served_by) if ok else ("WRONG_REPLY", "")
        except CatgaError as exc:
            outcome = "HUNG" if guard.expired() else exc.code
        except TimeoutError:
            outcome = "HUNG" if guard.expired() else "TimeoutError"
        except Exception as exc:  # anything else is a finding, not a crash of the benchmark
            outcome = type(exc).__name__
        self.samples.append(Sample(start, time.time(), outcome, served_by))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0, seq = loop.time(), 0
        while not self._stop.is_set() and loop.time() < t0 + self.bound:
            delay = t0 + seq / self.rate - loop.time()
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
        await self.task
        if self._outstanding:  # each request is bounded by its own guard; this is a backstop
            await asyncio.wait(list(self._outstanding), timeout=self._budget + 5)
        for task in list(self._outstanding):
            task.cancel()


@dataclass(slots=True)
class FailoverKill:
    kill: int
    target: str
    steady_from: float
    t_kill: float
    client_faulted_s: float | None = None
    t_restart: float = 0.0
    rejoin_s: float | None = None
    settled: float = 0.0  # ALIVE everywhere + settle


async def run_failover(
    cluster: Cluster,
    view: ClientView,
    a: Any,
    streams: dict[str, Stream],
    kills: list[FailoverKill],
) -> None:
    """Appends to ``kills``; the streams are stopped (every request ended) on the way out."""
    ids = list(cluster.current)
    try:
        await asyncio.sleep(a.warmup)
        for k in range(a.failover_kills):
            target = ids[k % len(ids)]
            steady_from = time.time()
            await asyncio.sleep(a.steady)
            old = view.alive_incarnation(target)
            rec = FailoverKill(k + 1, target, steady_from, await cluster.kill(target))
            kills.append(rec)
            # The restart waits past the window, so that what a restart costs (a process
            # starting on the same CPUs, mDNS) is not counted in the window.
            await asyncio.sleep(max(0.0, rec.t_kill + a.window + RESTART_GUARD - time.time()))
            cf = view.first("faulted", target, rec.t_kill)
            rec.client_faulted_s = None if cf is None else cf - rec.t_kill
            rec.t_restart, rec.rejoin_s = await restart(cluster, view, target, old)
            log(
                f"failover kill {k + 1}/{a.failover_kills} {target}: client saw FAULTED "
                f"{fmt(rec.client_faulted_s, 2)} s after SIGKILL; ALIVE again "
                f"{fmt(rec.rejoin_s, 2)} s after restart"
            )
            await asyncio.sleep(a.settle)
            rec.settled = time.time()
    finally:
        for stream in streams.values():
            await stream.stop()


def window_row(
    requests: str, window: str, samples: Sequence[Sample], slow_s: float
) -> dict[str, Any]:
    lat = sorted((s.end - s.start) * 1000.0 for s in samples)
    outcomes = Counter(s.outcome for s in samples)
    named = ("ok", "TIMEOUT", "TRANSPORT_FAILED", "HUNG")
    return {
        "requests": requests,
        "window": window,
        "sent": len(samples),
        "p50_ms": percentile(lat, 50) if lat else None,
        "p99_ms": percentile(lat, 99) if lat else None,
        "max_ms": lat[-1] if lat else None,
        "slow": sum(v > slow_s * 1000.0 for v in lat),
        **{k: outcomes[k] for k in named},
        "other": {k: v for k, v in outcomes.items() if k not in named},
    }


def summarize_failover(
    a: Any, streams: dict[str, Stream], kills: Sequence[FailoverKill]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The table rows, and every failed or slow request with its place around its kill."""
    windows: dict[str, Callable[[Sample], bool]] = {
        "steady": lambda s: any(s.start >= k.steady_from and s.end < k.t_kill for k in kills),
        f"kill → +{a.window:g} s": lambda s: any(
            s.end >= k.t_kill and s.start < k.t_kill + a.window for k in kills
        ),
        "restart → ALIVE + settle": lambda s: any(
            k.settled and s.end >= k.t_restart and s.start < k.settled for k in kills
        ),
        "whole run": lambda s: True,
    }
    rows, affected = [], []
    for name, stream in streams.items():
        for window, inside in windows.items():
            rows.append(window_row(name, window, [s for s in stream.samples if inside(s)], a.slow))
        for s in stream.samples:
            if s.outcome != "ok" or s.end - s.start > a.slow:
                k = ([kill for kill in kills if kill.t_kill <= s.end] or [None])[-1]
                affected.append(
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
    return rows, affected


def affected_notes(affected: Sequence[dict[str, Any]]) -> list[str]:
    """One line per kill, request type and outcome: the failed or slow requests."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for x in affected:
        groups.setdefault(
            (x["kill"] or 0, x["target"] or "-", x["requests"], x["outcome"]), []
        ).append(x)

    def span(values: Sequence[float], f: str) -> str:
        lo, hi = format(min(values), f), format(max(values), f)
        return lo if lo == hi else f"{lo} to {hi}"

    lines = []
    for (kill, target, requests, outcome), items in sorted(groups.items()):
        starts = [
            x["start_after_kill_s"] * 1000 for x in items if x["start_after_kill_s"] is not None
        ]
        served = sorted({x["served_by"] for x in items if x["served_by"]})
        where = (
            f"sent {span(starts, '+.0f')} ms from the SIGKILL" if starts else "sent before any kill"
        )
        lines.append(
            f"failover kill {kill} ({target}), {requests}: {len(items)} "
            f"{'slow ok' if outcome == 'ok' else outcome}, {where}, send() returned after "
            f"{span([x['latency_s'] for x in items], '.2f')} s"
            + (f", answered by {', '.join(served)}" if served else "")
        )
    return lines


def spurious(
    cluster: Cluster, view: ClientView, spans: Sequence[tuple[str, float, float]]
) -> list[str]:
    """SUSPECT/FAULTED of a node that had not been killed: a false positive of the detector.

    ``spans`` are (target, killed at, back at); a loss of the target in that span is expected.
    """
    found = []
    for who, v in [(f"{p.node_id} (life {p.life})", p) for p in cluster.every] + [
        ("the client", view)
    ]:
        for e in v.events:
            expected = any(e.subject == tgt and t0 <= e.t <= t1 for tgt, t0, t1 in spans)
            if e.kind in ("suspect", "faulted") and not expected:
                found.append(
                    f"{who} said {e.subject} is {e.kind} at {time.strftime('%H:%M:%S', time.localtime(e.t))}"
                )
    return found


# --- the run --------------------------------------------------------------------------------


async def run(a: Any, procs: Processes, out: dict[str, Any]) -> None:
    cluster = Cluster(procs, [f"h{i}" for i in range(1, a.nodes + 1)], a.discovery, a.work_ms)
    detection: list[KillRecord] = out.setdefault("detection", [])
    kills: list[FailoverKill] = out.setdefault("failover_kills", [])
    discovery: Any = StaticDiscovery(cluster.seeds) if a.discovery == "static" else "mdns"
    client = Node(
        f"bench-client-{os.getpid()}", cluster.name, bind="127.0.0.1", discovery=discovery
    )
    try:
        for proc in [await cluster.start(i) for i in cluster.ids]:  # start side by side
            await cluster.wait_ready(proc)
        async with client:
            view = ClientView(client)
            try:
                ids = cluster.ids

                def mesh() -> bool:
                    return all(
                        view.alive_incarnation(x) is not None
                        and all(
                            cluster.current[x].sees_alive(y, cluster.current[y].spawned)
                            for y in ids
                            if y != x
                        )
                        for x in ids
                    )

                await wait_until("every node sees every other ALIVE", mesh, MESH_TIMEOUT)
                await asyncio.sleep(a.settle)
                await run_detection(cluster, view, a, detection)
                if a.failover_kills:
                    for extra in cluster.ids[3:]:  # down to 3 nodes serving the types
                        if (code := await cluster.terminate(extra)) != 0:
                            log(f"{extra} exited with {code} on SIGTERM")
                        gone = lambda x=extra: view.alive_incarnation(x) is None  # noqa: E731
                        await wait_until(f"{extra} gone from the client's view", gone, REJOIN_LIMIT)
                    streams = {
                        "idempotent": Stream(client, IdemWork, a.rate, a.max_seconds),
                        "non-idempotent": Stream(client, OnceWork, a.rate, a.max_seconds),
                    }
                    try:
                        await run_failover(cluster, view, a, streams, kills)
                    finally:
                        out["rows"], out["affected"] = summarize_failover(a, streams, kills)
                        out["shed"] = {name: s.shed for name, s in streams.items()}
            finally:
                # A killed node's old life is never heard again: its loss from the kill
                # until it is back is expected (its restart is a new life, ALIVE again).
                spans = [
                    (r.target, r.t_kill, r.t_kill + DETECT_LIMIT + REJOIN_LIMIT) for r in detection
                ]
                spans += [(k.target, k.t_kill, k.t_kill + a.window + REJOIN_LIMIT) for k in kills]
                out["spurious"] = spurious(cluster, view, spans)
                view.task.cancel()
    finally:
        await cluster.close()


def format_report(a: Any, out: dict[str, Any], load: dict[str, float]) -> tuple[str, list[str]]:
    problems: list[str] = []
    notes: list[str] = []
    o = NodeOptions()
    text = [
        f"Node settings: defaults (heartbeat_interval {o.heartbeat_interval:g} s, suspect_after "
        f"{o.suspect_after:g} s, phi_threshold {o.phi_threshold:g}, faulted_after "
        f"{o.faulted_after:g} s, request_timeout {o.request_timeout:g} s, routing {o.routing}); "
        f"discovery {a.discovery}; every process on 127.0.0.1.\n"
    ]
    detection: list[KillRecord] = out.get("detection", [])
    if detection:
        text.append(
            f"### Failure detection: {a.nodes} nodes, {len(detection)} SIGKILLs ({a.nodes - 1} "
            "surviving peers each; times on the peers' own clock, time.time(), from just before "
            "SIGKILL)\n"
        )
        text.append(table(["measure", "n", "min", "median", "max"], detection_rows(detection)))
        for r in detection:
            if r.error:
                problems.append(f"kill {r.kill} ({r.target}): {r.error}")
            for peer, v in r.faulted_s.items():
                if v is None:
                    problems.append(f"kill {r.kill}: {peer} never said {r.target} is faulted")
                elif v > SLOW_DETECTION:
                    notes.append(
                        f"kill {r.kill}: {peer} took {v:.2f} s to say {r.target} is faulted"
                    )
    if rows := out.get("rows"):
        text.append(
            f"\n### Failover cost: 3 nodes serve each type; the client sends each type at "
            f"{a.rate:g} req/s (open loop), handler {a.work_ms:g} ms; "
            f"{len(out['failover_kills'])} SIGKILLs; steady = {a.steady:g} s before each kill, kill "
            f"window = every request in flight from the kill to {a.window:g} s after; latency = "
            "until send() returned or raised\n"
        )
        cells = [
            [
                r["requests"],
                r["window"],
                r["sent"],
                r["ok"],
                fmt(r["p50_ms"], 1),
                fmt(r["p99_ms"], 1),
                fmt(r["max_ms"], 1),
                r["slow"],
                r["TIMEOUT"],
                r["TRANSPORT_FAILED"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["other"].items())) or "0",
                r["HUNG"],
            ]
            for r in rows
        ]
        head = ["requests", "window", "sent", "ok", "p50 ms", "p99 ms", "max ms", f"> {a.slow:g} s"]
        text.append(table([*head, "TIMEOUT", "TRANSPORT_FAILED", "other", "hung"], cells, left=2))
        for r in rows:
            if r["window"] == "whole run" and r["HUNG"]:
                problems.append(f"{r['requests']}: {r['HUNG']} requests hung")
            if (
                r["window"] == "whole run"
                and r["requests"] == "idempotent"
                and r["ok"] != r["sent"]
            ):
                problems.append(f"idempotent: {r['sent'] - r['ok']} of {r['sent']} requests failed")
        notes.append(
            "under load the client saw FAULTED "
            + ", ".join(fmt(k.client_faulted_s, 2) for k in out["failover_kills"])
            + " s after each SIGKILL"
        )
        problems += [
            f"{n}: {s} sends shed (over {MAX_OUTSTANDING})" for n, s in out["shed"].items() if s
        ]
        notes += affected_notes(out["affected"])
    if out.get("spurious"):
        notes.append(
            f"{len(out['spurious'])} SUSPECT/FAULTED of nodes that were not killed: "
            + "; ".join(out["spurious"][:10])
        )
    if out.get("error"):
        problems.append(out["error"])
    notes.append(format_load(load))
    text.append("\nNotes:\n")
    text += [f"- PROBLEM: {p}" for p in problems] + [f"- {n}" for n in notes]
    return "\n".join(text), problems


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--nodes", type=int, default=4, help="nodes in phase 1 (>= 3)")
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs in phase 1 (0: skip)")
    p.add_argument("--failover-kills", type=int, default=3, help="SIGKILLs under load (0: skip)")
    p.add_argument("--rate", type=float, default=200.0, help="requests/s of each type")
    p.add_argument("--work-ms", type=float, default=20.0, help="handler time (ms)")
    p.add_argument("--steady", type=float, default=3.0, help="s of steady state before a kill")
    p.add_argument("--window", type=float, default=5.0, help="s after a kill: its window")
    p.add_argument("--settle", type=float, default=1.0, help="s to settle after a node is back")
    p.add_argument("--warmup", type=float, default=1.0, help="s of load before phase 2 measures")
    p.add_argument("--slow", type=float, default=1.0, help="a request slower than this (s)")
    p.add_argument("--discovery", choices=("mdns", "static"), default="mdns")
    p.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run (s)")
    a = parse(p, argv)
    if a.nodes < 3 or a.kills < 0 or a.failover_kills < 0 or not 0 < a.rate <= 5000:
        p.error("--nodes >= 3, --kills and --failover-kills >= 0, --rate in (0, 5000]")
    env = environment()
    out: dict[str, Any] = {}
    with Processes() as procs:
        meter = LoadMeter(procs.pids)

        async def bounded() -> None:
            async with asyncio.timeout(a.max_seconds):
                await run(a, procs, out)

        try:
            run_uvloop(bounded())
        except TimeoutError:
            out["error"] = f"the run exceeded --max-seconds {a.max_seconds:g}"
        except BenchError as exc:
            out["error"] = str(exc)
        load = meter.stop()
    body, problems = format_report(a, out, load)
    results = {
        "config": vars(a),
        "node_defaults": msgspec.to_builtins(NodeOptions()),
        "machine_load": load,
        "problems": problems,
        **{
            k: [asdict(x) for x in v] if k in ("detection", "failover_kills") else v
            for k, v in out.items()
        },
    }
    report("bench_failover", "Failure detection and failover cost", env, body, a.out, results)
    if out.get("error") and not out.get("detection") and not out.get("rows"):
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    run_script(main)

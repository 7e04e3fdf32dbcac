"""Prometheus metrics: ``/metrics``, ``/livez`` and ``/readyz`` of real nodes on loopback.

``promtool check metrics`` (Debian's prometheus package) reads a live node's output;
readiness follows the node's life (not before it joined, not while it drains); labels
stay bounded whatever comes off the wire; a missing prometheus_client is one clear line;
a real Prometheus server scrapes three node processes under load and its query API shows
the load's request rate; every metric the Grafana dashboard queries exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from _procs import ROOT, Proc, python, run, stop_all
from conftest import MakeNode, unbatch, wait_until

from catga_zmq import (
    ConfigError,
    Event,
    HandlerError,
    MemoryDiscovery,
    MemoryHub,
    Node,
    Request,
    RequestTimeout,
    StaticDiscovery,
)
from catga_zmq.discovery.base import Candidate
from catga_zmq.metrics import OTHER, Timings
from catga_zmq.protocol import Kind, encode_header

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

DASHBOARD = ROOT / "examples" / "grafana" / "catga_zmq.json"


class Greet(Request[str]):
    __wire_name__ = "metrics_test.Greet"
    name: str


class Fail(Request[str]):
    __wire_name__ = "metrics_test.Fail"


class Hold(Request[str]):
    """Its handler waits until the test lets it go."""

    __wire_name__ = "metrics_test.Hold"


class Note(Event):
    __wire_name__ = "metrics_test.Note"
    text: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(url: str) -> tuple[int, str]:
    """One GET on a fresh connection: the status and the body."""
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None and parsed.port is not None
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        try:
            writer.write(
                f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def probe_url(node: Node, path: str) -> str:
    return node.metrics_url.replace("/metrics", path)


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its samples, from the text exposition."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append(dict(s.labels))
    return found


def serve(node: Node, gate: asyncio.Event | None = None) -> None:
    @node.handler
    async def greet(req: Greet) -> str:
        return "hello " + req.name

    @node.handler
    async def fail(req: Fail) -> str:
        raise ValueError("no")

    @node.handler
    async def hold(req: Hold) -> str:
        assert gate is not None
        await gate.wait()
        return "done"

    @node.subscribe
    async def on_note(evt: Note) -> None:
        pass


async def traffic(caller: Node, server: Node) -> None:
    """Requests that succeed and fail, an event, and a frame the server rejects."""
    for i in range(20):
        assert await caller.send(Greet(name=str(i)), node=server.node_id) == f"hello {i}"
    with pytest.raises(HandlerError):
        await caller.send(Fail(), node=server.node_id)
    await caller.publish(Note(text="x"))
    ctx = zmq.asyncio.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        await sock.send_multipart([b"garbage", b"frames", b"here", b"four"])
        # a Greet whose payload is no Greet: rejected as "payload:metrics_test.Greet"
        header = encode_header(int(Kind.REQ), 1, Greet.__wire_name__, "z", 5000)
        await sock.send_multipart([header, b"\xc1"])
        await wait_until(lambda: server.stats().frames_rejected >= 2)
        sock.close(0)
    finally:
        ctx.destroy(0)
    await wait_until(lambda: server.stats().events_received >= 1)


async def two_nodes(make_node: MakeNode, **settings: Any) -> tuple[Node, Node]:
    a = make_node("a", metrics_port=free_port(), **settings)
    b = make_node("b", metrics_port=free_port(), **settings)
    serve(a)
    serve(b)
    await a.start()
    await b.start()
    await a.wait_for_peers(1, handles=Greet, timeout=10)
    await b.wait_for_peers(1, handles=Greet, timeout=10)
    return a, b


# promtool ------------------------------------------------------------------------------


async def test_promtool_passes_on_a_live_nodes_output(make_node: MakeNode, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    a, b = await two_nodes(make_node)
    await traffic(a, b)
    for node in (a, b):
        status, text = await http_get(node.metrics_url)
        assert status == 200
        checked = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    found = samples((await http_get(b.metrics_url))[1])
    handled = {(s["type"], s["outcome"]) for s in found["catga_requests_handled_total"]}
    assert ("metrics_test.Greet", "OK") in handled
    assert ("metrics_test.Fail", "HANDLER_FAILED") in handled
    # the reason is the problem's first word: never the type name that came with it
    assert {s["reason"] for s in found["catga_frames_rejected_total"]} == {"frames", "payload"}
    # sub-millisecond buckets: a loopback request is about 0.1 ms
    bounds = {float(s["le"]) for s in found["catga_handler_duration_seconds_bucket"]}
    assert min(bounds) <= 0.0001
    assert found["catga_events_received_total"]
    caller = samples((await http_get(a.metrics_url))[1])
    sent = {(s["type"], s["outcome"]) for s in caller["catga_requests_sent_total"]}
    assert {("metrics_test.Greet", "OK"), ("metrics_test.Fail", "HANDLER_FAILED")} <= sent
    assert [s["peer"] for s in caller["catga_circuit_state"] if s["state"] == "closed"] == ["b"]


async def test_counts_match_the_requests(make_node: MakeNode) -> None:
    a, b = await two_nodes(make_node)
    for i in range(30):
        await a.send(Greet(name=str(i)), node="b")
    registry_text = (await http_get(b.metrics_url))[1]
    families = {f.name: f for f in text_string_to_metric_families(registry_text)}
    ok = [
        s.value
        for s in families["catga_requests_handled"].samples
        if s.labels == {"type": "metrics_test.Greet", "outcome": "OK"}
    ]
    assert ok == [30.0]
    count = [
        s.value
        for s in families["catga_handler_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["type"] == "metrics_test.Greet"
    ]
    assert count == [30.0]
    beats = [s.value for s in families["catga_heartbeats_received"].samples]
    assert beats and beats[0] >= 1


# /livez and /readyz ----------------------------------------------------------------------


class HeldRegister(MemoryDiscovery):
    """In-memory discovery whose ``register()`` waits until the test lets it go: the node
    is started as far as its discovery, and has not joined yet."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def register(self, me: Candidate) -> None:
        self.entered.set()
        await self.release.wait()
        await super().register(me)


async def test_readyz_before_joined_while_draining_and_after(hub: MemoryHub) -> None:
    gate = asyncio.Event()
    discovery = HeldRegister(hub)
    port = free_port()
    node = Node("r", discovery=discovery, metrics_port=port, heartbeat_interval=0.1)
    serve(node, gate)
    base = f"http://127.0.0.1:{port}"
    starting = asyncio.create_task(node.start())
    try:
        await asyncio.wait_for(discovery.entered.wait(), 10)
        status, body = await http_get(base + "/readyz")
        assert (status, body) == (503, "node r has not joined its cluster yet\n")
        assert (await http_get(base + "/livez"))[0] == 200
        discovery.release.set()
        await asyncio.wait_for(starting, 10)
        ready = [0]

        async def poll() -> None:
            ready[0] = (await http_get(base + "/readyz"))[0]

        async with asyncio.timeout(10):
            while ready[0] != 200:
                await poll()
                await asyncio.sleep(0.02)
        # draining: a handler holds the drain open
        holding = asyncio.create_task(node.send(Hold(), node="r", timeout=30))
        await wait_until(lambda: node.stats().running == 1)
        closing = asyncio.create_task(node.aclose())
        await wait_until(lambda: node.state == "draining")
        status, body = await http_get(base + "/readyz")
        assert (status, body) == (503, "node r is draining\n")
        assert (await http_get(base + "/livez"))[0] == 200
        status, text = await http_get(base + "/metrics")
        assert status == 200
        assert 'catga_node_state{state="draining"} 1.0' in text
        assert "catga_node_ready 0.0" in text
        gate.set()
        assert await holding == "done"
        await asyncio.wait_for(closing, 20)
        with pytest.raises(OSError):
            await http_get(base + "/livez")  # the port is closed with the node
    finally:
        discovery.release.set()
        gate.set()
        await node.aclose()


async def test_unknown_paths_and_methods(make_node: MakeNode) -> None:
    node = make_node("a", metrics_port=free_port())
    await node.start()
    assert (await http_get(probe_url(node, "/other")))[0] == 404
    parsed = urllib.parse.urlsplit(node.metrics_url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 405 ")
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    writer.write(b"nonsense\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400 ")


# bounded labels --------------------------------------------------------------------------

#: Every label name a catga_ family may have, each with a bounded set of values.
LABELS = {"type", "outcome", "peer", "reason", "status", "state", "le", "node_id", "cluster", "version"}  # fmt: skip


async def test_labels_stay_bounded_whatever_the_wire_says(make_node: MakeNode) -> None:
    a, b = await two_nodes(make_node, max_peers=4)
    for i in range(50):
        await a.send(Greet(name=str(i)), node="b")
    before = samples((await http_get(b.metrics_url))[1])
    # Requests of invented types and ids, straight to b's ROUTER: answered, never a series.
    ctx = zmq.asyncio.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(b.endpoint)
        for i in range(200):
            rid = 10_000_000 + i
            header = encode_header(int(Kind.REQ), rid, f"made.Up{uuid.uuid4().hex}", "z", 5000)
            await sock.send_multipart([header, b"\x90"])
        answered = 0
        async with asyncio.timeout(20):
            while answered < 200:
                answered += len(unbatch(await sock.recv_multipart()))
        sock.close(0)
    finally:
        ctx.destroy(0)
    for i in range(50, 500):
        await a.send(Greet(name=str(i)), node="b")
    after = samples((await http_get(b.metrics_url))[1])
    catga = {name: sets for name, sets in after.items() if name.startswith("catga_")}
    for name, sets in catga.items():
        assert {k for s in sets for k in s} <= LABELS, name
        assert len(sets) == len(before.get(name, [])), f"{name} grew with the requests"
    types = {s["type"] for s in catga["catga_requests_handled_total"]}
    assert types == {"metrics_test.Greet"}
    values = {v for sets in catga.values() for s in sets for v in s.values()}
    assert not any(str(10_000_000 + i) in values for i in range(200))
    peers = {s["peer"] for s in catga["catga_circuit_state"]}
    assert peers == {"a"}


def test_message_types_past_the_bound_share_one_label() -> None:
    timings = Timings(max_types=3)
    for n in range(10):
        timings.observe(f"t{n}", None, 0.0001)
    assert sorted(timings.rows) == [OTHER, "t0", "t1", "t2"]
    assert timings.rows[OTHER].ok == 7


async def test_a_send_of_no_request_is_counted_under_one_label(make_node: MakeNode) -> None:
    a, _b = await two_nodes(make_node)
    for _ in range(3):
        with pytest.raises(Exception, match="takes a Request"):
            await a.send(Note(text="not a request"))  # type: ignore[arg-type]
    found = samples((await http_get(a.metrics_url))[1])
    assert {"type": "_invalid", "outcome": "VALIDATION_FAILED"} in found[
        "catga_requests_sent_total"
    ]


# settings, registries and the extra --------------------------------------------------------


async def test_metrics_off_costs_no_behaviour_and_no_server(make_node: MakeNode) -> None:
    node = make_node("a")
    await node.start()
    assert node.metrics_url == ""
    assert node._metrics is None
    assert [type(b).__name__ for b in node.mediator.behaviors] == [
        "LoggingBehavior",
        "DeadlineBehavior",
    ]


async def test_a_port_in_use_fails_the_start_and_releases_everything(hub: MemoryHub) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Node("a", discovery=MemoryDiscovery(hub), metrics_port=port)
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{port}"):
            await node.start()
    assert node.state == "closed"


def test_metrics_port_must_differ_from_the_node_ports() -> None:
    with pytest.raises(ConfigError, match="metrics_port and port are both 7000"):
        Node("a", discovery=None, port=7000, metrics_port=7000)


async def test_a_users_registry_gets_the_metrics_while_the_node_runs(hub: MemoryHub) -> None:
    registry = prometheus_client.CollectorRegistry()
    node = Node("a", discovery=MemoryDiscovery(hub), metrics_registry=registry)
    serve(node)
    async with node:
        assert node.metrics_url == ""  # no port: the user serves the registry
        await node.send(Greet(name="x"))
        text = prometheus_client.generate_latest(registry).decode()
        assert 'catga_requests_handled_total{outcome="OK",type="metrics_test.Greet"} 1.0' in text
        # from another thread (a user's own HTTP server): read on the node's loop
        other = (await asyncio.to_thread(prometheus_client.generate_latest, registry)).decode()
        assert 'catga_requests_sent_total{outcome="OK",type="metrics_test.Greet"} 1.0' in other
        second = Node("b", discovery=MemoryDiscovery(hub), metrics_registry=registry)
        with pytest.raises(ConfigError, match="give each node its own registry"):
            await second.start()
    assert "catga_" not in prometheus_client.generate_latest(registry).decode()


#: A child without prometheus_client: the import is blocked as if it were not installed.
WITHOUT_EXTRA = textwrap.dedent(
    """
    import sys
    sys.modules["prometheus_client"] = None
    from catga_zmq._cli import run_node
    sys.exit(run_node(["--id", "m", "--discovery", "none", "--metrics-port", "{port}"]))
    """
)


def test_a_missing_extra_is_one_line_naming_the_install() -> None:
    done = run(python("-c", WITHOUT_EXTRA.format(port=free_port())), timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'catga-zmq[prometheus]'" in lines[0]
    assert "Traceback" not in done.stderr


# the Grafana dashboard ---------------------------------------------------------------------


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return {m for e in exprs for m in re.findall(r"\b(?:catga|process)_[a-z_]+", e)}


async def test_every_metric_the_dashboard_queries_exists(make_node: MakeNode) -> None:
    a, b = await two_nodes(make_node)
    await traffic(a, b)
    found = set(samples((await http_get(a.metrics_url))[1]))
    found |= set(samples((await http_get(b.metrics_url))[1]))
    wanted = dashboard_metrics()
    assert {m for m in wanted if m.startswith("catga_")}, "the dashboard queries no catga_ metric"
    assert wanted - found == set()


# a real Prometheus server ----------------------------------------------------------------

APP = "tests.apps.cluster_app:node"
PROMETHEUS_BOUND = 40.0  # s for the whole scrape-and-query, after the nodes are up


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        stop_all(started)


def prometheus_config(path: Path, targets: list[str]) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: catga
                static_configs:
                  - targets: {json.dumps(targets)}
            """
        )
    )
    return path


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        data = json.load(answer)
    assert data["status"] == "success", data
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


@pytest.mark.cluster
async def test_prometheus_scrapes_a_cluster_under_load(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    from tests.apps.cluster_app import Where

    cluster = f"pm-{uuid.uuid4().hex[:10]}"
    # Every node is a seed of the others and of the client: no wait for gossip.
    node_ports = [free_port() for _ in range(3)]
    seeds = [f"tcp://127.0.0.1:{p}" for p in node_ports]
    ports = [free_port() for _ in range(3)]
    with processes() as started:
        for n, port in enumerate(ports, 1):
            cmd = python("-m", "catga_zmq.node", "--app", APP, "--id", f"n{n}")
            cmd += ["--cluster", cluster, "--bind", "127.0.0.1", "--seeds", ",".join(seeds)]
            cmd += ["--port", str(node_ports[n - 1]), "--metrics-port", str(port)]
            started.append(Proc.start(f"n{n}", cmd, tmp_path / f"n{n}"))
        for proc in started:
            await proc.await_ready(20)
        prom_port = free_port()
        config = prometheus_config(tmp_path / "prometheus.yml", [f"127.0.0.1:{p}" for p in ports])
        cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        cmd += [f"--web.listen-address=127.0.0.1:{prom_port}"]
        started.append(Proc.start("prometheus", cmd, tmp_path / "prometheus"))
        client = Node("load", cluster, discovery=StaticDiscovery(seeds))
        async with client:
            await client.wait_for_peers(3, timeout=30, handles=Where)
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    await asyncio.gather(*(client.send(Where(), timeout=5) for _ in range(20)))
                    await asyncio.sleep(0.005)

            loader = asyncio.create_task(load())
            expr = 'sum(rate(catga_requests_handled_total{type="cluster.Where",outcome="OK"}[5s]))'
            rate = 0.0
            deadline = time.monotonic() + PROMETHEUS_BOUND
            try:
                while time.monotonic() < deadline and rate <= 0:
                    await asyncio.sleep(1.0)
                    try:
                        result = await asyncio.to_thread(query, prom_port, expr)
                    except OSError:
                        continue  # not listening yet
                    rate = float(result[0]["value"][1]) if result else 0.0
                up = await asyncio.to_thread(query, prom_port, "up")
            finally:
                stop.set()
                await loader
            assert rate > 0, "Prometheus saw no request rate for cluster.Where"
            assert sorted(float(r["value"][1]) for r in up) == [1.0, 1.0, 1.0], up
            assert {r["metric"]["instance"] for r in up} == {f"127.0.0.1:{p}" for p in ports}


async def test_a_handler_cut_at_its_deadline_counts_as_timeout(make_node: MakeNode) -> None:
    gate = asyncio.Event()  # never set: the handler runs until its deadline cancels it
    a = make_node("a", metrics_port=free_port())
    b = make_node("b", metrics_port=free_port())
    serve(b, gate)
    await a.start()
    await b.start()
    await a.wait_for_peers(1, handles=Hold, timeout=10)
    with pytest.raises(RequestTimeout):
        await a.send(Hold(), node="b", timeout=0.2)
    await wait_until(lambda: b.stats().running == 0)
    handled = samples((await http_get(b.metrics_url))[1])["catga_requests_handled_total"]
    assert {"type": "metrics_test.Hold", "outcome": "TIMEOUT"} in handled
    sent = samples((await http_get(a.metrics_url))[1])["catga_requests_sent_total"]
    assert {"type": "metrics_test.Hold", "outcome": "TIMEOUT"} in sent

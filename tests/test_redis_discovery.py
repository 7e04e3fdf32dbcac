"""Redis discovery with a real redis-server, started here on a free loopback port.

The server runs without persistence (``--save '' --appendonly no``) in a temporary
directory and is stopped by its PID; a restart runs a new one on the same port, empty,
as a Redis that lost its data. Node processes are ``python -m catga_zmq.node --discovery
redis --redis-url ...``; the test process joins as a client node through the same Redis.
Entries are refreshed every 0.2 s and live 1 s, so expiry shows within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from _procs import ROOT, Proc, python, run, stop_all

from catga_zmq import ConfigError, Node, NodeFaulted, NodeOptions, NodeStatus, Ping
from catga_zmq.discovery.base import Candidate, ChangeKind
from catga_zmq.discovery.redis import RedisDiscovery
from catga_zmq.security import generate
from tests.apps.cluster_app import Relay, Where

APP = "tests.apps.cluster_app:node"
IDS = ("n1", "n2", "n3")
REFRESH = 0.2  # s
TTL = 1.0  # s
FAST = {"redis_refresh_interval": REFRESH, "redis_ttl": TTL}
FAST_FLAGS = ["--redis-refresh-interval", str(REFRESH), "--redis-ttl", str(TTL)]
READY_TIMEOUT = 20.0  # s for a node process to print its ready line
FIND_TIMEOUT = 20.0  # s for the nodes to find each other
CHANGE_TIMEOUT = 15.0  # s for a change to show
POLL = 0.05  # s

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A redis-server of this test: loopback only, no persistence, stopped by its PID."""

    dir: Path
    port: int = field(default_factory=_free_port)
    proc: Proc | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.runs += 1
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = Proc.start("redis", cmd, self.dir / f"redis.{self.runs}")
        deadline = time.monotonic() + 10.0
        with self.client() as client:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise self.proc.fail("redis-server did not answer PING")
                time.sleep(POLL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2.0, decode_responses=True
        )


@pytest.fixture
def redis_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path


@pytest.fixture
def server(redis_dir: Path) -> Iterator[RedisServer]:
    srv = RedisServer(redis_dir)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Cluster:
    name: str
    logs: Path
    url: str
    nodes: dict[str, Proc] = field(default_factory=dict)

    def start(self, node_id: str, *extra: str) -> Proc:
        cmd = python("-m", "catga_zmq.node", "--app", APP, "--id", node_id)
        cmd += ["--cluster", self.name, "--bind", "127.0.0.1", "--discovery", "redis"]
        cmd += ["--redis-url", self.url, *FAST_FLAGS, *extra]
        proc = Proc.start(node_id, cmd, self.logs / node_id)
        self.nodes[node_id] = proc
        return proc

    def key(self, node_id: str) -> str:
        return f"catga:{{{self.name}}}:node:{node_id}"

    @property
    def zset(self) -> str:
        return f"catga:{{{self.name}}}:nodes"


@contextlib.contextmanager
def cluster_of(url: str, logs: Path, ids: tuple[str, ...] = IDS) -> Iterator[Cluster]:
    cluster = Cluster(f"rd-{uuid.uuid4().hex[:10]}", logs, url)
    try:
        for node_id in ids:
            cluster.start(node_id)
        for proc in cluster.nodes.values():
            proc.wait_ready(READY_TIMEOUT)
        yield cluster
    finally:
        for proc in cluster.nodes.values():
            proc.stop()


@contextlib.asynccontextmanager
async def client_of(cluster: Cluster) -> AsyncIterator[Node]:
    node = Node(
        f"client-{uuid.uuid4().hex[:6]}",
        cluster=cluster.name,
        discovery="redis",
        redis_url=cluster.url,
        **FAST,
    )
    async with node:
        await node.wait_for_peers(len(cluster.nodes), timeout=FIND_TIMEOUT, handles=Where)
        yield node


async def until(predicate: object, timeout: float, what: str) -> float:
    start = time.monotonic()
    assert callable(predicate)
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(POLL)
    return time.monotonic() - start


def status(node: Node, node_id: str) -> NodeStatus | None:
    return next((m.status for m in node.members() if m.node_id == node_id), None)


# a cluster ---------------------------------------------------------------------------


async def test_three_node_processes_find_each_other_through_redis(
    server: RedisServer, tmp_path: Path
) -> None:
    with cluster_of(server.url, tmp_path) as cluster, server.client() as r:
        async with client_of(cluster) as client:
            for node_id, proc in cluster.nodes.items():
                assert await client.send(Where(), node=node_id, timeout=5.0) == node_id
                entry = r.hgetall(cluster.key(node_id))
                assert entry["id"] == node_id
                assert entry["ep"] == proc.ready["endpoint"]
                assert entry["pub"] == proc.ready["pub"]
                assert entry["cluster"] == cluster.name
                assert entry["v"].isdigit()
                assert 0 < r.pttl(cluster.key(node_id)) <= TTL * 1000
                # Scored by its expiry on the server's clock: within the TTL from now.
                seconds, micros = r.time()
                score = r.zscore(cluster.zset, node_id)
                assert score is not None
                assert 0 < score - (seconds * 1000 + micros // 1000) <= TTL * 1000
            assert set(r.zrange(cluster.zset, 0, -1)) == {*IDS, client.node_id}
            # The nodes found each other too (each sees the two others and the client).
            for node_id in IDS:
                await cluster.nodes[node_id].await_log("discovery redis", 1.0)
            other = {"n1": "n2", "n2": "n3", "n3": "n1"}
            for node_id, to in other.items():
                answer = await client.send(Relay(to=to), node=node_id, timeout=5.0)
                assert answer == f"{node_id}->{to}"
        # The client drained: its entry is withdrawn at once, not after the TTL.
        assert r.zscore(cluster.zset, client.node_id) is None
        assert r.exists(f"catga:{{{cluster.name}}}:node:{client.node_id}") == 0


async def test_a_sigkilled_nodes_entry_expires_and_heartbeats_fault_it(
    server: RedisServer, tmp_path: Path
) -> None:
    with cluster_of(server.url, tmp_path) as cluster, server.client() as r:
        async with client_of(cluster) as client:
            changes = client.watch()
            n3 = cluster.nodes["n3"]
            n3.send_signal(signal.SIGKILL)
            assert await n3.await_exit(CHANGE_TIMEOUT) == -signal.SIGKILL

            def gone() -> bool:
                return r.zscore(cluster.zset, "n3") is None and not r.hgetall(cluster.key("n3"))

            took = await until(gone, CHANGE_TIMEOUT, "n3's entry gone from Redis")
            print(f"n3's entry expired {took:.2f} s after SIGKILL (TTL {TTL} s)")
            async with asyncio.timeout(CHANGE_TIMEOUT):
                async for change in changes:
                    if isinstance(change, NodeFaulted) and change.node.node_id == "n3":
                        break
            assert status(client, "n3") is NodeStatus.FAULTED
            for node_id in ("n1", "n2"):
                await cluster.nodes[node_id].await_log("node n3 is faulted", CHANGE_TIMEOUT)
            assert {await client.send(Where(), timeout=5.0) for _ in range(6)} == {"n1", "n2"}
            assert set(r.zrange(cluster.zset, 0, -1)) == {"n1", "n2", client.node_id}


async def test_an_entry_deleted_from_redis_never_makes_a_heartbeating_node_leave(
    server: RedisServer,
) -> None:
    # Membership is the heartbeats': the entry going only stops greetings.
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    settings = {"cluster": cluster, "discovery": "redis", "redis_url": server.url}
    # n1 refreshes every 1.5 s: its entry stays deleted long enough to be seen gone.
    slow = {"redis_refresh_interval": 1.5, "redis_ttl": 4.0}
    async with Node("n1", **settings, **slow) as n1, Node("client", **settings, **FAST) as client:
        await client.wait_for_peers(1, timeout=FIND_TIMEOUT)
        assert isinstance(client.discovery, RedisDiscovery)
        changes = client.discovery.watch()
        with server.client() as r, r.pipeline() as pipe:
            pipe.zrem(f"catga:{{{cluster}}}:nodes", "n1").delete(f"catga:{{{cluster}}}:node:n1")
            pipe.publish(f"catga:{{{cluster}}}:changes", "n1")
            pipe.execute()
        seen: list[ChangeKind] = []
        async with asyncio.timeout(CHANGE_TIMEOUT):
            async for change in changes:
                if change.candidate.node_id == "n1":
                    seen.append(change.kind)
                if seen[-2:] == [ChangeKind.REMOVED, ChangeKind.ADDED]:
                    break  # withdrawn, then written again by n1's next refresh
        assert status(client, "n1") is NodeStatus.ALIVE
        assert (await client.send(Ping(), node="n1", timeout=5.0)).node_id == "n1"
        assert n1.healthy


async def test_redis_restarted_mid_run_nodes_keep_serving_and_register_again(
    server: RedisServer, tmp_path: Path
) -> None:
    with cluster_of(server.url, tmp_path) as cluster, server.client() as r:
        async with client_of(cluster) as client:
            outcomes: list[str] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    try:
                        outcomes.append(await client.send(Where(), timeout=5.0))
                    except Exception as exc:
                        outcomes.append(f"error {exc!r}")
                    await asyncio.sleep(0.02)

            sender = asyncio.create_task(load())
            try:
                server.stop()
                for proc in cluster.nodes.values():
                    await proc.await_log("redis discovery: cannot reach", CHANGE_TIMEOUT)
                served_while_down = len(outcomes)
                await asyncio.sleep(1.5)  # longer than the TTL: nothing expires meanwhile
                assert len(outcomes) > served_while_down  # still serving
                assert all(status(client, n) is NodeStatus.ALIVE for n in IDS)
                # What discovery knew stays while Redis is away.
                assert isinstance(client.discovery, RedisDiscovery)
                assert {c.node_id for c in client.discovery.candidates()} == set(IDS)
                server.start()  # empty: a Redis that lost its data
                want = {*IDS, client.node_id}
                await until(
                    lambda: set(r.zrange(cluster.zset, 0, -1)) == want,
                    CHANGE_TIMEOUT,
                    "every node registered again",
                )
                for node_id, proc in cluster.nodes.items():
                    assert r.hgetall(cluster.key(node_id))["ep"] == proc.ready["endpoint"]
                    assert proc.stderr().count(f"registered {node_id} at") >= 2
                    # One line for the outage, however many attempts it took.
                    assert proc.stderr().count("cannot reach") == 1
                before = len(outcomes)
                await until(lambda: len(outcomes) > before + 10, CHANGE_TIMEOUT, "serving")
            finally:
                stop.set()
                await sender
            errors = [o for o in outcomes if o.startswith("error")]
            assert not errors, errors[:5]
            assert set(outcomes) == set(IDS)
            print(f"{len(outcomes)} requests across the restart, none failed")


# Redis down, a bad URL -------------------------------------------------------------------


async def test_redis_down_at_start_one_line_then_backoff_then_registered(
    redis_dir: Path, tmp_path: Path
) -> None:
    srv = RedisServer(redis_dir)  # not started yet
    cluster = Cluster(f"rd-{uuid.uuid4().hex[:10]}", tmp_path, srv.url)
    try:
        proc = cluster.start("n1", "--log-level", "DEBUG")
        await proc.await_ready(READY_TIMEOUT)  # it starts all the same
        await proc.await_log("redis discovery: cannot reach", CHANGE_TIMEOUT)
        line = next(x for x in proc.stderr().splitlines() if "cannot reach" in x)
        assert srv.url in line and "retrying" in line
        first = time.monotonic()
        await asyncio.sleep(1.5)
        attempts = proc.stderr().count("redis discovery: attempt ")
        # Backoff (0.1 s, doubling, jittered): a few attempts in 1.5 s, not hundreds.
        assert 2 <= attempts <= 7, attempts
        assert proc.stderr().count("cannot reach") == 1
        srv.start()
        with srv.client() as r:
            await until(
                lambda: r.zscore(cluster.zset, "n1") is not None,
                CHANGE_TIMEOUT,
                "n1 registered once Redis is up",
            )
            assert r.hgetall(cluster.key("n1"))["ep"] == proc.ready["endpoint"]
        print(f"registered {time.monotonic() - first:.2f} s after the first failure")
        await proc.await_log("registered n1 at", CHANGE_TIMEOUT)
        assert proc.stop() == 0
    finally:
        for p in cluster.nodes.values():
            p.stop()
        srv.stop()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis//127.0.0.1:6379", "the scheme must be"),
        ("redis://127.0.0.1:notaport/0", "not usable"),
        ("redis://127.0.0.1:6379/zero", "the path is the database number"),
        ("redis://127.0.0.1:0/0", "the port must be 1 to 65535"),
        ("redis://127.0.0.1:6379/0?timeout=1", "the only query taken is ?db=N"),
        ("http://127.0.0.1:6379", "the scheme must be"),
    ],
)
def test_a_malformed_url_is_refused_with_the_settings(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        NodeOptions(discovery="redis", redis_url=url).validated()
    message = info.value.message
    assert says in message and "redis://HOST:PORT/DB" in message
    assert "\n" not in message


def test_a_malformed_url_is_one_line_and_exit_code_2() -> None:
    url = "redis://:secret@127.0.0.1:70000/0"
    done = run(python("-m", "catga_zmq.node", "--discovery", "redis", "--redis-url", url))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "redis_url 'redis://:***@127.0.0.1:70000/0' is not usable" in lines[0]
    assert "secret" not in lines[0]  # the password is never shown


def test_redis_discovery_without_a_url_is_refused() -> None:
    done = run(python("-m", "catga_zmq.node", "--discovery", "redis"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "catga-node: error: [CONFIG_INVALID] discovery 'redis' needs redis_url, the "
        "server (--redis-url redis://HOST:PORT/DB)"
    )


def test_ttl_must_be_more_than_twice_the_refresh() -> None:
    with pytest.raises(ConfigError, match="more than twice"):
        NodeOptions(redis_refresh_interval=1.0, redis_ttl=2.0).validated()
    assert NodeOptions(redis_refresh_interval=1.0, redis_ttl=2.1).validated()


def test_without_redis_py_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from catga_zmq import ConfigError\n"
        "from catga_zmq.discovery.redis import RedisDiscovery\n"
        "try:\n"
        "    RedisDiscovery('redis://127.0.0.1:6379/0', 'c')\n"
        "except ConfigError as exc:\n"
        "    print(exc.message)\n"
    )
    done = run(python("-c", code))
    assert done.returncode == 0, done.stderr
    assert "pip install 'catga-zmq[redis]'" in done.stdout


# what Redis holds is untrusted ------------------------------------------------------------


async def test_entries_that_are_not_usable_are_refused(server: RedisServer) -> None:
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    zset, tag = f"catga:{{{cluster}}}:nodes", f"catga:{{{cluster}}}"
    good = {"id": "ok", "ep": "tcp://127.0.0.1:5001", "pub": "tcp://127.0.0.1:5002"}
    bad = {
        "wrong-id": {**good, "id": "someone-else"},
        "bad-ep": {**good, "id": "bad-ep", "ep": "http://127.0.0.1:5001"},
        "port-0": {**good, "id": "port-0", "ep": "tcp://127.0.0.1:0"},
        "long": {**good, "id": "long", "pub": "tcp://127.0.0.1:5002" + "x" * 400},
        "other-cluster": {**good, "id": "other-cluster", "cluster": "another"},
        "bad-meta": {**good, "id": "bad-meta", "meta": '{"k": 7}'},
        "bad-key": {**good, "id": "bad-key", "pk": "short"},
        "no-ep": {"id": "no-ep", "cluster": cluster},
    }
    with server.client() as r:
        far = (r.time()[0] + 3600) * 1000
        for node_id, entry in {"ok": good, **bad}.items():
            r.hset(f"{tag}:node:{node_id}", mapping={"cluster": cluster, "v": "3", **entry})
            r.zadd(zset, {node_id: far})
        r.zadd(zset, {"not an id!": far})
    discovery = RedisDiscovery(server.url, cluster, **_fast())
    try:
        changes = discovery.watch()
        await discovery.register(Candidate("tcp://127.0.0.1:5999", "me", cluster=cluster))
        assert discovery.connected
        first = await asyncio.wait_for(anext(changes), 5.0)
        assert first.kind is ChangeKind.ADDED
        assert first.candidate.node_id == "ok"
        assert first.candidate.endpoint == good["ep"]
        assert [c.node_id for c in discovery.candidates()] == ["ok"]
        assert set(discovery._refused) == set(bad)
    finally:
        await discovery.aclose()


def _fast() -> dict[str, float]:
    return {"refresh_interval": REFRESH, "ttl": TTL}


async def test_a_client_reads_the_entries_and_writes_none(
    server: RedisServer, tmp_path: Path
) -> None:
    # A client (the operator commands' role) finds the members through Redis without
    # an entry of its own: nobody would list it, so nothing may say it is there.
    with cluster_of(server.url, tmp_path) as cluster, server.client() as r:
        client = Node(
            f"client-{uuid.uuid4().hex[:6]}",
            cluster=cluster.name,
            discovery="redis",
            redis_url=cluster.url,
            role="client",
            **FAST,
        )
        async with client:
            await client.wait_for_peers(len(cluster.nodes), timeout=FIND_TIMEOUT, handles=Where)
            assert await client.send(Where(), node="n1", timeout=5.0) == "n1"
            assert set(r.zrange(cluster.zset, 0, -1)) == set(IDS)
            assert r.exists(cluster.key(client.node_id)) == 0


async def test_metadata_and_a_restart_elsewhere_reach_the_others(server: RedisServer) -> None:
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    # a reads the ids only every 30 s: what it sees sooner came through the channel.
    a = RedisDiscovery(server.url, cluster, refresh_interval=30.0, ttl=61.0)
    b = RedisDiscovery(server.url, cluster, **_fast())
    try:
        changes = a.watch()
        await a.register(Candidate("tcp://127.0.0.1:5101", "a", cluster=cluster))
        me = Candidate(
            "tcp://127.0.0.1:5201", "b", "tcp://127.0.0.1:5202", cluster, 3, None, {"zone": "z1"}
        )
        await b.register(me)
        added = await asyncio.wait_for(anext(changes), 5.0)
        assert (added.kind, added.candidate.node_id) == (ChangeKind.ADDED, "b")
        assert added.candidate.metadata == {"zone": "z1"}
        # b comes back on another port under its id: the old place is withdrawn first.
        await b.register(Candidate("tcp://127.0.0.1:5301", "b", "tcp://127.0.0.1:5302", cluster))
        removed = await asyncio.wait_for(anext(changes), 5.0)
        assert (removed.kind, removed.candidate.endpoint) == (ChangeKind.REMOVED, me.endpoint)
        moved = await asyncio.wait_for(anext(changes), 5.0)
        assert (moved.kind, moved.candidate.endpoint) == (ChangeKind.ADDED, "tcp://127.0.0.1:5301")
        await b.aclose()  # withdrawn at once, not after the TTL
        gone = await asyncio.wait_for(anext(changes), 5.0)
        assert (gone.kind, gone.candidate.node_id) == (ChangeKind.REMOVED, "b")
    finally:
        await a.aclose()
        await b.aclose()


async def test_curve_nodes_find_each_other_with_the_key_from_redis(
    server: RedisServer, tmp_path: Path
) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    for name in ("c1", "c2"):
        public, _ = generate(name, tmp_path)
        shutil.copy(public, trust / public.name)
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    nodes = [
        Node(
            name,
            cluster=cluster,
            discovery="redis",
            redis_url=server.url,
            curve_secret_key=str(tmp_path / f"{name}.key_secret"),
            curve_trust_dir=str(trust),
            **FAST,
        )
        for name in ("c1", "c2")
    ]
    async with nodes[0], nodes[1]:
        await nodes[0].wait_for_peers(1, timeout=FIND_TIMEOUT)
        await nodes[1].wait_for_peers(1, timeout=FIND_TIMEOUT)
        with server.client() as r:
            for node in nodes:
                entry = r.hgetall(f"catga:{{{cluster}}}:node:{node.node_id}")
                assert node._parts is not None
                assert entry["pk"] == node._parts.me.public_key
                assert len(entry["pk"]) == 40


# README ---------------------------------------------------------------------------------


def readme_redis_commands() -> list[list[str]]:
    """The shell commands of the block under README's "Redis discovery"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Redis discovery\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no shell block under 'Redis discovery'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_readme_redis_commands_work_as_written(tmp_path: Path) -> None:
    # As written, but for the port and the cluster (this run's own), and the server's
    # --dir (a temporary one, though it writes nothing there).
    port, cluster = str(_free_port()), f"readme-{uuid.uuid4().hex[:10]}"

    def here(words: list[str]) -> list[str]:
        words = [w.replace("6379", port).replace("{shop}", f"{{{cluster}}}") for w in words]
        words = [cluster if w == "shop" else w for w in words]
        return [sys.executable, *words[1:]] if words[0] == "python" else words

    commands = [here(words) for words in readme_redis_commands()]
    assert [c[0] for c in commands] == ["redis-server", *[sys.executable] * 3, *["redis-cli"] * 2]
    server_cmd, *node_cmds = commands[:3]
    procs = [Proc.start("redis", [*server_cmd, "--dir", str(tmp_path)], tmp_path / "redis")]
    try:
        for cmd in node_cmds:
            node_id = cmd[cmd.index("--id") + 1]
            procs.append(Proc.start(node_id, cmd, tmp_path / node_id))
        for proc in procs[1:]:
            proc.wait_ready(READY_TIMEOUT)
        nodes = run(commands[3], timeout=60)
        assert nodes.returncode == 0, nodes.stderr
        assert "shop-1" in nodes.stdout and "shop-2" in nodes.stdout, nodes.stdout
        ids = run(commands[4], timeout=30)
        assert ids.returncode == 0, ids.stderr
        assert set(ids.stdout.split()[::2]) == {"shop-1", "shop-2"}, ids.stdout
        entry = run(commands[5], timeout=30).stdout.split()
        assert dict(zip(entry[::2], entry[1::2], strict=True))["ep"] == procs[1].ready["endpoint"]
    finally:
        stop_all(procs)


async def test_a_node_given_a_redis_discovery_object_uses_it(server: RedisServer) -> None:
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    discovery = RedisDiscovery(server.url, cluster, **_fast())
    node = Node("obj", cluster=cluster, discovery=discovery)
    assert node.options.discovery == "redis"
    assert node.options.redis_url == server.url
    with server.client() as r:
        async with node:
            assert node.discovery is discovery and discovery.connected
            assert r.hgetall(f"catga:{{{cluster}}}:node:obj")["ep"] == node.endpoint
        assert r.exists(f"catga:{{{cluster}}}:node:obj") == 0  # withdrawn on close


async def test_two_nodes_with_one_id_through_redis_the_younger_closes(
    server: RedisServer,
) -> None:
    # They share one hash: each reads what is there before it writes its own, so each
    # connects to the other and their heartbeats tell which is younger.
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    settings = {"cluster": cluster, "discovery": "redis", "redis_url": server.url, **FAST}
    async with Node("dup", **settings) as older:
        await asyncio.sleep(0.05)  # a later start: the younger incarnation
        younger = Node("dup", **settings)
        await younger.start()
        try:
            await asyncio.wait_for(younger.wait_closed(), CHANGE_TIMEOUT)
        finally:
            await younger.aclose()
        assert younger.failure is not None and "the younger" in younger.failure.message
        assert older.state == "running"
        with server.client() as r:
            await until(
                lambda: r.hget(f"catga:{{{cluster}}}:node:dup", "ep") == older.endpoint,
                CHANGE_TIMEOUT,
                "the older's entry in Redis",
            )


async def test_a_backend_withdraws_only_its_own_record(server: RedisServer) -> None:
    # Two with one id: the one that closes must not withdraw what the other wrote last.
    cluster = f"rd-{uuid.uuid4().hex[:10]}"
    slow = {"refresh_interval": 30.0, "ttl": 61.0}  # writes only when registering
    a = RedisDiscovery(server.url, cluster, **slow)
    b = RedisDiscovery(server.url, cluster, **slow)
    key = f"catga:{{{cluster}}}:node:dup"
    try:
        with server.client() as r:
            await b.register(Candidate("tcp://127.0.0.1:5402", "dup", cluster=cluster))
            await a.register(Candidate("tcp://127.0.0.1:5401", "dup", cluster=cluster))
            assert r.hget(key, "ep") == "tcp://127.0.0.1:5401"  # a's, written last
            await b.aclose()
            assert r.hget(key, "ep") == "tcp://127.0.0.1:5401"
            assert r.zscore(f"catga:{{{cluster}}}:nodes", "dup") is not None
            await a.aclose()
            assert r.exists(key) == 0  # its own: withdrawn
    finally:
        await a.aclose()
        await b.aclose()

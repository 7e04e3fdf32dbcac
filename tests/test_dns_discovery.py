"""DNS discovery against a real DNS server: a dnsmasq that each test starts itself.

Each dnsmasq listens on a free 127.0.0.x address and UDP port, answers for ``*.test``
only from its own records (which point only at 127.0.0.x and ::1), is started and
stopped by its PID, and re-reads its hosts file on SIGHUP. The cluster tests run
``python -m catga_zmq.node --app tests.apps.dns_app:node --discovery dns`` processes,
and read whom each node found from its log (``node n2 joined at ...``), so that
nothing but DNS introduces the nodes to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest
from _procs import ROOT, Proc, child_env, python, run, stop_all
from conftest import PATIENT, catga_tasks, parts, wait_until

from catga_zmq import ConfigError, Node
from catga_zmq.config import DnsRecordName
from catga_zmq.discovery.base import ChangeKind, DiscoveryChange
from catga_zmq.discovery.dns import DnsDiscovery, DnsProblem
from tests.apps.dns_app import Members

APP = "tests.apps.dns_app:node"
NAME = "nodes.catga.test"  # A records
SRV_NAME = "_catga._tcp.catga.test"
INTERVAL = 1.0  # s, the nodes' dns_interval
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
FIND_TIMEOUT = 20.0  # s for started nodes to find each other
#: A node added to the records joins within one interval and this (its greeting, the
#: first heartbeats both ways, on a loaded 2-core machine).
JOIN_SLACK = 4.0  # s
#: How long a member whose record went away is watched: past suspect_after (1.25 s)
#: and two more resolutions.
OBSERVE = 3.0  # s

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
needs_dnsmasq = pytest.mark.skipif(
    not Path(DNSMASQ).exists(), reason="dnsmasq is not installed (apt-get install dnsmasq)"
)
pytestmark = [needs_dnsmasq]


# loopback addresses and ports -----------------------------------------------------------


def loopback_hosts(count: int) -> list[str]:
    """``count`` distinct 127.0.0.x addresses, picked at random so runs rarely meet."""
    return [f"127.0.0.{x}" for x in random.sample(range(100, 250), count)]


def _free(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: list[str], kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if all(_free(h, port, kind) for h in hosts[1:]):
            return port
    raise AssertionError(f"no port free on all of {hosts}")


# the DNS server -------------------------------------------------------------------------


class Dnsmasq:
    """One dnsmasq on a free 127.0.0.x address and port; ``extra`` are more options
    (``--srv-host=...``). Not started until ``start()``."""

    def __init__(self, logs: Path, extra: Iterable[str] = ()) -> None:
        [self.address] = loopback_hosts(1)
        self.port = free_port([self.address], socket.SOCK_DGRAM)
        self.logs = logs
        self.hosts = logs / f"dns-{self.port}.hosts"
        self.hosts.write_text("")
        self.extra = list(extra)
        self.proc: Proc | None = None
        self.runs = 0

    @property
    def resolver(self) -> str:
        """As the dns_resolver setting takes it."""
        return f"{self.address}:{self.port}"

    def write_hosts(self, entries: Iterable[tuple[str, str]]) -> None:
        """The hosts file: (address, name) lines."""
        self.hosts.write_text("".join(f"{a} {n}\n" for a, n in entries))

    async def start(self) -> None:
        """Start it and wait until it answers (an NXDOMAIN is an answer)."""
        cmd = [
            DNSMASQ,
            "--no-daemon",  # in the foreground: no fork, no pid file, no user change
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=-",  # its log on stderr, not syslog
            "--bind-interfaces",
            f"--listen-address={self.address}",
            f"--port={self.port}",
            f"--addn-hosts={self.hosts}",
            "--local=/test/",  # answer *.test from these records only: NXDOMAIN, not REFUSED
            *self.extra,
        ]
        self.runs += 1
        self.proc = Proc.start("dnsmasq", cmd, self.logs / f"dnsmasq.{self.port}.{self.runs}")
        deadline = time.monotonic() + 10.0
        while True:
            try:
                await self.answers("up.test", "A")
                return
            except dns.exception.DNSException:
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise self.proc.fail("dnsmasq did not answer") from None
                await asyncio.sleep(0.05)

    async def answers(self, name: str, rdtype: str) -> set[str]:
        """What it answers for ``name`` now (empty for NXDOMAIN and no records)."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.port
        resolver.lifetime = 0.5
        try:
            answer = await resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return set()
        return {r.to_text() for r in answer}

    async def reload(self, entries: Iterable[tuple[str, str]], name: str) -> None:
        """New hosts file, SIGHUP (dnsmasq re-reads it); returns once it answers from it."""
        entries = list(entries)
        self.write_hosts(entries)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        expected = {a for a, n in entries if n == name and ":" not in a}
        deadline = time.monotonic() + 10.0
        while await self.answers(name, "A") != expected:
            if time.monotonic() > deadline:
                raise self.proc.fail(f"dnsmasq does not answer {sorted(expected)} for {name}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Callable[..., Dnsmasq]]:
    """``dnsmasq(*options)``: a DNS server (unstarted), stopped by its PID afterwards."""
    made: list[Dnsmasq] = []

    def make(*extra: str) -> Dnsmasq:
        server = Dnsmasq(tmp_path, extra)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


class Nodes:
    """The node processes of one test, by id; all stopped by their PIDs afterwards."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.cluster = f"dns-{uuid.uuid4().hex[:10]}"
        self.procs: dict[str, Proc] = {}

    def start(self, node_id: str, host: str, port: int, *flags: str) -> Proc:
        cmd = python("-m", "catga_zmq.node", "--app", APP, "--id", node_id)
        cmd += ["--cluster", self.cluster, "--bind", host, "--port", str(port), *flags]
        self.procs[node_id] = proc = Proc.start(node_id, cmd, self.logs / node_id)
        return proc

    def __getitem__(self, node_id: str) -> Proc:
        return self.procs[node_id]

    async def ready(self) -> None:
        for proc in self.procs.values():
            await proc.await_ready(READY_TIMEOUT)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    found = Nodes(tmp_path)
    try:
        yield found
    finally:
        stop_all(found.procs.values())


def dns_flags(server: Dnsmasq, name: str, *more: str) -> list[str]:
    return [
        "--discovery",
        "dns",
        "--dns-name",
        name,
        "--dns-resolver",
        server.resolver,
        "--dns-interval",
        str(INTERVAL),
        *more,
    ]


async def await_joined(proc: Proc, peers: Iterable[str], timeout: float) -> None:
    """Until ``proc`` has logged each of ``peers`` as joined."""
    for peer in peers:
        await proc.await_log(f"node {peer} joined at ", timeout)


def joined(proc: Proc) -> set[str]:
    """The nodes ``proc`` has logged as joined so far."""
    return set(re.findall(r"node (\S+) joined at ", proc.stderr()))


@contextlib.asynccontextmanager
async def client_of(nodes: Nodes, endpoints: list[str]) -> AsyncIterator[Node]:
    """The test process as a member, greeting ``endpoints`` (static seeds, no DNS)."""
    node = Node("client", cluster=nodes.cluster, seeds=endpoints, discovery="static")
    async with node:
        yield node


async def view(client: Node, node_id: str) -> dict[str, str]:
    """Whom ``node_id`` sees, and in which status, as it answers ``Members``."""
    return await client.send(Members(), node=node_id, timeout=2.0)


# the cluster ----------------------------------------------------------------------------


@pytest.mark.cluster
async def test_a_records_find_three_nodes_a_fourth_joins_and_a_removed_record_stays_alive(
    dnsmasq: Callable[..., Dnsmasq], nodes: Nodes
) -> None:
    hosts = loopback_hosts(4)
    port = free_port(hosts)
    server = dnsmasq()
    server.write_hosts((h, NAME) for h in hosts[:3])
    await server.start()
    ids = ["n1", "n2", "n3"]
    for node_id, host in zip(ids, hosts, strict=False):
        nodes.start(node_id, host, port, *dns_flags(server, NAME))
    # n4 has no discovery of its own: only the others' DNS records can lead them to it.
    nodes.start("n4", hosts[3], port, "--discovery", "none")
    await nodes.ready()

    for node_id in ids:
        await await_joined(nodes[node_id], set(ids) - {node_id}, FIND_TIMEOUT)
    assert not joined(nodes["n4"])

    await server.reload(((h, NAME) for h in hosts), NAME)
    added = time.monotonic()
    for node_id in ids:
        await await_joined(nodes[node_id], ["n4"], INTERVAL + JOIN_SLACK * 3)
    took = time.monotonic() - added
    assert took <= INTERVAL + JOIN_SLACK, f"n4 joined {took:.2f} s after its record came"
    await await_joined(nodes["n4"], ids, JOIN_SLACK)

    # n2's record goes: the others stop greeting it, and it stays a member.
    await server.reload(((h, NAME) for h in hosts if h != hosts[1]), NAME)
    for node_id in ("n1", "n3"):
        await nodes[node_id].await_log(f"removed tcp://{hosts[1]}:{port}", INTERVAL + JOIN_SLACK)
    endpoints = [f"tcp://{h}:{port}" for h in (hosts[0], hosts[2], hosts[3])]
    async with client_of(nodes, endpoints) as client:
        await client.wait_for_peers(4, timeout=FIND_TIMEOUT, handles=Members)
        until = time.monotonic() + OBSERVE
        while time.monotonic() < until:
            for node_id in ("n1", "n3", "n4"):
                assert (await view(client, node_id)).get("n2") == "alive", node_id
            await asyncio.sleep(0.2)
    for node_id in ("n1", "n3", "n4"):
        log = nodes[node_id].stderr()
        assert "node n2 is suspect" not in log and "node n2 left" not in log, node_id


@pytest.mark.cluster
async def test_srv_records_give_each_node_its_host_and_port(
    dnsmasq: Callable[..., Dnsmasq], nodes: Nodes
) -> None:
    [host] = loopback_hosts(1)
    ports = [free_port([host]) for _ in range(3)]
    assert len(set(ports)) == 3
    # n3's target is a CNAME: dnsmasq then leaves its address out of the additional
    # section, and the node must ask for it.
    server = dnsmasq(
        f"--srv-host={SRV_NAME},n1.catga.test,{ports[0]}",
        f"--srv-host={SRV_NAME},n2.catga.test,{ports[1]}",
        f"--srv-host={SRV_NAME},alias.catga.test,{ports[2]}",
        f"--host-record=n1.catga.test,{host}",
        f"--host-record=n2.catga.test,{host}",
        "--cname=alias.catga.test,n3.catga.test",
        f"--host-record=n3.catga.test,{host}",
    )
    await server.start()
    ids = ["n1", "n2", "n3"]
    for node_id, port in zip(ids, ports, strict=True):
        nodes.start(node_id, host, port, *dns_flags(server, SRV_NAME, "--dns-record", "srv"))
    await nodes.ready()
    for node_id in ids:
        await await_joined(nodes[node_id], set(ids) - {node_id}, FIND_TIMEOUT)


@pytest.mark.cluster
async def test_with_curve_an_srv_targets_name_is_the_certificate_of_its_node(
    dnsmasq: Callable[..., Dnsmasq], nodes: Nodes, tmp_path: Path
) -> None:
    # As a StatefulSet's pods behind a headless Service: shop-0.shop... names node shop-0,
    # whose certificate shop-0.key is in the trust directory. A target named after no
    # certificate is not connected to, and the node says why.
    from catga_zmq.security import generate

    keys, trust = tmp_path / "keys", tmp_path / "trust"
    keys.mkdir()
    trust.mkdir()
    ids = ["n1", "n2", "n3"]
    for node_id in [*ids, "stranger"]:
        public, _ = generate(node_id, keys)
        if node_id != "stranger":
            shutil.copy(public, trust / public.name)
    [host] = loopback_hosts(1)
    ports = [free_port([host]) for _ in range(4)]
    assert len(set(ports)) == 4
    records = [f"--host-record={n}.catga.test,{host}" for n in [*ids, "stranger"]]
    records += [
        f"--srv-host={SRV_NAME},{n}.catga.test,{port}"
        for n, port in zip([*ids, "stranger"], ports, strict=True)
    ]
    server = dnsmasq(*records)
    await server.start()
    for node_id, port in zip([*ids, "stranger"], ports, strict=True):
        curve = ["--curve-secret-key", str(keys / f"{node_id}.key_secret")]
        curve += ["--curve-trust-dir", str(trust)]
        nodes.start(
            node_id, host, port, *dns_flags(server, SRV_NAME, "--dns-record", "srv"), *curve
        )
    await nodes.ready()
    for node_id in ids:
        await await_joined(nodes[node_id], set(ids) - {node_id}, FIND_TIMEOUT)
    await nodes["n1"].await_log("no certificate stranger.key in the trust directory", JOIN_SLACK)
    assert "stranger" not in joined(nodes["n1"])
    assert joined(nodes["stranger"]) == set(), nodes["stranger"].stderr()


@pytest.mark.cluster
async def test_dns_server_down_at_start_one_line_then_backoff_then_joins(
    dnsmasq: Callable[..., Dnsmasq], nodes: Nodes
) -> None:
    hosts = loopback_hosts(2)
    port = free_port(hosts)
    server = dnsmasq()  # not started yet
    server.write_hosts((h, NAME) for h in hosts)
    # A shorter interval (the last --dns-interval counts): the backoff reaches it sooner.
    flags = dns_flags(server, NAME, "--dns-interval", "0.5", "--log-level", "DEBUG")
    n1 = nodes.start("n1", hosts[0], port, *flags)
    nodes.start("n2", hosts[1], port, "--discovery", "none")
    await nodes.ready()  # the node starts, DNS or not

    retry = re.compile(rf"DNS discovery of {NAME}: next attempt in ([\d.]+) s")
    deadline = time.monotonic() + 20.0
    while len(retry.findall(n1.stderr())) < 3:
        assert time.monotonic() < deadline, n1.fail("fewer than 3 attempts in 20 s")
        await asyncio.sleep(0.05)
    # Doubling from 0.25 s, capped at the interval.
    assert [float(d) for d in retry.findall(n1.stderr())][:3] == [0.25, 0.5, 0.5]

    await server.start()
    await n1.await_log("resolved again after", INTERVAL + JOIN_SLACK)
    await await_joined(n1, ["n2"], INTERVAL + JOIN_SLACK)
    await await_joined(nodes["n2"], ["n1"], JOIN_SLACK)
    problems = [line for line in n1.stderr().splitlines() if "WARNING" in line]
    assert len(problems) == 1, problems
    assert f"no answer to SRV {NAME} from {server.resolver}" in problems[0]
    assert "is the DNS server up?" in problems[0]


@pytest.mark.cluster
def test_readme_dns_commands_work_as_written(tmp_path: Path) -> None:
    commands = readme_dns_commands()
    assert [c[0] for c in commands] == ["printf", "dnsmasq", "export", "python", "python", "python"]
    # The README's addresses, ports and cluster, replaced by free ones of this run.
    dns_host, *node_hosts = loopback_hosts(3)
    cluster = f"dns-{uuid.uuid4().hex[:10]}"
    ours = {
        "127.0.0.99": dns_host,
        "5300": str(free_port([dns_host], socket.SOCK_DGRAM)),
        "127.0.0.11": node_hosts[0],
        "127.0.0.12": node_hosts[1],
        "5555": str(free_port(node_hosts)),
    }
    theirs = re.compile(r"127\.0\.0\.(?:99|11|12)\b|\b(?:5300|5555)\b")

    def here(word: str) -> str:
        if word == "shop":
            return cluster
        word = theirs.sub(lambda m: ours[m.group()], word)
        return word.replace("shop.hosts", str(tmp_path / "shop.hosts"))

    env: dict[str, str] = {}
    started: list[Proc] = []
    try:
        for n, words in enumerate([here(w) for w in c] for c in commands):
            if words[0] == "printf":
                assert words[2] == ">"
                Path(words[3]).write_text(words[1].replace("\\n", "\n"))
            elif words[0] == "export":
                env.update(w.split("=", 1) for w in words[1:])
            elif words[-1] == "&":
                program = python(*words[1:-1]) if words[0] == "python" else words[:-1]
                started.append(
                    Proc.start(words[0], program, tmp_path / f"readme.{n}", env=child_env(**env))
                )
                if words[0] == "dnsmasq":
                    _wait_answering(started[-1], dns_host, int(ours["5300"]))
                else:
                    started[-1].wait_ready(READY_TIMEOUT)
            else:
                done = run(python(*words[1:]), env=child_env(**env))
        assert done.returncode == 0, done.stderr
        table = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:]}
        assert table == {"shop-1": "alive", "shop-2": "alive"}, done.stdout
    finally:
        stop_all(started)


def readme_dns_commands() -> list[list[str]]:
    """The commands of the shell block under README's "DNS discovery", as words."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### DNS discovery\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no shell block under 'DNS discovery'"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def _wait_answering(proc: Proc, host: str, port: int) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.lifetime = [host], port, 0.5
    deadline = time.monotonic() + 10.0
    while True:
        try:
            resolver.resolve("up.test", "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return
        except dns.exception.DNSException:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise proc.fail("dnsmasq did not answer") from None
            time.sleep(0.05)
        else:
            return


# the backend on its own -----------------------------------------------------------------


async def test_resolves_a_aaaa_srv_and_auto_records_to_endpoints(
    dnsmasq: Callable[..., Dnsmasq],
) -> None:
    [host] = loopback_hosts(1)
    server = dnsmasq(
        f"--srv-host={SRV_NAME},n1.catga.test,5601",
        f"--srv-host={SRV_NAME},alias.catga.test,5602",
        f"--host-record=n1.catga.test,{host}",
        "--cname=alias.catga.test,n2.catga.test",
        "--host-record=n2.catga.test,::1",
        "--srv-host=_gone._tcp.catga.test",  # no target: "no service here" (RFC 2782)
    )
    server.write_hosts([(host, NAME), ("127.0.0.1", NAME), ("::1", NAME)])
    await server.start()

    def backend(name: str, record: DnsRecordName = "auto") -> DnsDiscovery:
        return DnsDiscovery(name, record=record, port=5555, resolver=server.resolver)

    a_records = {f"tcp://{host}:5555", "tcp://127.0.0.1:5555", "tcp://[::1]:5555"}
    assert await backend(NAME, record="a").resolve() == a_records
    assert await backend(NAME, record="auto").resolve() == a_records
    srv = {f"tcp://{host}:5601", "tcp://[::1]:5602"}
    assert await backend(SRV_NAME, record="srv").resolve() == srv
    assert await backend(SRV_NAME, record="auto").resolve() == srv
    assert await backend("_gone._tcp.catga.test", record="srv").resolve() == set()

    with pytest.raises(DnsProblem) as info:
        await backend(NAME, record="srv").resolve()
    assert info.value.kind == "missing" and info.value.authoritative
    assert f"{NAME} has no SRV records" in info.value.text
    with pytest.raises(DnsProblem) as info:
        await backend("nowhere.catga.test").resolve()
    assert info.value.authoritative
    assert "nowhere.catga.test does not exist (NXDOMAIN" in info.value.text


async def test_watch_follows_the_records(dnsmasq: Callable[..., Dnsmasq]) -> None:
    hosts = loopback_hosts(3)
    server = dnsmasq()
    server.write_hosts((h, NAME) for h in hosts[:2])
    await server.start()
    backend = DnsDiscovery(NAME, record="a", port=5555, interval=0.2, resolver=server.resolver)
    changes = backend.watch()
    try:

        async def take(count: int) -> set[tuple[ChangeKind, str]]:
            got: list[DiscoveryChange] = []
            async with asyncio.timeout(10):
                while len(got) < count:
                    got.append(await anext(changes))
            return {(c.kind, c.candidate.endpoint) for c in got}

        added, removed = ChangeKind.ADDED, ChangeKind.REMOVED
        assert await take(2) == {(added, f"tcp://{h}:5555") for h in hosts[:2]}
        await server.reload(((h, NAME) for h in hosts[1:]), NAME)
        assert await take(2) == {
            (removed, f"tcp://{hosts[0]}:5555"),
            (added, f"tcp://{hosts[2]}:5555"),
        }
        assert {c.endpoint for c in backend.candidates()} == {f"tcp://{h}:5555" for h in hosts[1:]}
        # The server says the name is gone: so are its addresses.
        await server.reload([], NAME)
        assert await take(2) == {(removed, f"tcp://{h}:5555") for h in hosts[1:]}
    finally:
        await backend.aclose()
    assert [c async for c in changes] == []  # aclose() ends it
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("catga-dns-")]


async def test_a_record_that_goes_away_stops_its_greetings(
    dnsmasq: Callable[..., Dnsmasq],
) -> None:
    [nobody] = loopback_hosts(1)  # a listed address where no node listens
    port = free_port([nobody])
    server = dnsmasq()
    server.write_hosts([(nobody, NAME)])
    await server.start()
    node = Node(
        "a",
        discovery="dns",
        dns_name=NAME,
        dns_resolver=server.resolver,
        dns_port=port,
        dns_interval=0.2,
    )
    greeting = f"greet-tcp://{nobody}:{port}"
    async with node:
        await wait_until(lambda: any(t.endswith(greeting) for t in catga_tasks()), 10)
        await server.reload([], NAME)
        await wait_until(lambda: not any(t.endswith(greeting) for t in catga_tasks()), 10)
        assert f"tcp://{nobody}:{port}" not in parts(node).transport.dealers
        assert node.healthy


async def test_a_listed_node_that_restarts_at_its_address_is_greeted_again(
    dnsmasq: Callable[..., Dnsmasq],
) -> None:
    # The records do not change when a node restarts at its address, so no new ADDED
    # comes: the node that knew it greets the address again once the old one is gone.
    [host] = loopback_hosts(1)
    port = free_port([host])
    server = dnsmasq()
    server.write_hosts([(host, NAME)])
    await server.start()
    finder = Node(
        "finder",
        discovery="dns",
        dns_name=NAME,
        dns_resolver=server.resolver,
        dns_port=port,
        dns_interval=0.5,
        **PATIENT,
    )

    def listed() -> Node:
        # No discovery of its own: only the finder's greetings can introduce it.
        return Node("listed", discovery=None, bind=host, port=port, **PATIENT)

    async with finder:
        async with listed():
            await wait_until(lambda: _alive(finder, "listed"), 10)
            old = parts(finder).membership.peers["listed"].incarnation
        await wait_until(lambda: not _alive(finder, "listed"), 10)  # its BYE: LEFT
        async with listed():
            await wait_until(
                lambda: (
                    _alive(finder, "listed")
                    and parts(finder).membership.peers["listed"].incarnation != old
                ),
                10,
            )


def _alive(node: Node, node_id: str) -> bool:
    return any(m.node_id == node_id and m.status.value == "alive" for m in node.members())


async def test_dns_discovery_object_given_to_a_node(dnsmasq: Callable[..., Dnsmasq]) -> None:
    server = dnsmasq()
    backend = DnsDiscovery(NAME, record="a", port=5555, interval=2.5, resolver=server.resolver)
    node = Node("a", discovery=backend)
    assert node.options.discovery == "dns"
    assert (node.options.dns_name, node.options.dns_port) == (NAME, 5555)
    assert (node.options.dns_interval, node.options.dns_resolver) == (2.5, server.resolver)


# settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "discovery 'dns' needs a name to resolve (--dns-name NAME)"),
        ({"dns_name": NAME}, "needs the port of the nodes its A/AAAA records name"),
        ({"dns_name": "a..b", "dns_port": 1}, "dns_name 'a..b' is not a DNS name"),
        ({"dns_name": "x" * 64, "dns_port": 1}, "is not a DNS name; write labels of 1-63"),
        ({"dns_name": NAME, "dns_port": 1, "dns_resolver": "dns.local"}, "is not usable"),
        ({"dns_name": NAME, "dns_port": 1, "dns_resolver": "127.0.0.1:0"}, "IP[:PORT]"),
        ({"dns_name": NAME, "dns_port": 1, "dns_resolver": "[::1]x"}, "IP[:PORT]"),
        ({"dns_name": NAME, "dns_port": 1, "dns_interval": 0.05}, "use 0.1 to 3600 s"),
        ({"dns_name": NAME, "dns_port": 1, "dns_interval": 3601.0}, "use 0.1 to 3600 s"),
        ({"dns_name": NAME, "dns_port": 70000}, "is out of range; use 0 to 65535"),
        ({"dns_name": NAME, "dns_port": 1, "dns_record": "mx"}, "is not one of auto, a, srv"),
        ({"dns_name": "a b", "dns_port": 1}, "dns_name='a b' is not allowed"),
    ],
)
def test_bad_dns_settings_are_one_line_errors(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Node("a", discovery="dns", **settings)
    assert message in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    "settings",
    [
        {"dns_name": SRV_NAME, "dns_record": "srv"},  # SRV records carry the port
        {"dns_name": NAME, "port": 5555},  # A records: the node's own port
        {"dns_name": NAME + ".", "dns_port": 5555, "dns_resolver": "[::1]:5353"},
        {"dns_name": NAME, "dns_port": 5555, "dns_resolver": "::1"},
        {"dns_name": NAME, "dns_port": 5555, "dns_resolver": "127.0.0.53"},
    ],
)
def test_good_dns_settings_are_taken(settings: dict[str, object]) -> None:
    assert Node("a", discovery="dns", **settings).options.discovery == "dns"


def test_node_command_says_what_is_missing() -> None:
    done = run(python("-m", "catga_zmq.node", "--discovery", "dns", "--port", "5555"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "catga-node: error: [CONFIG_INVALID] discovery 'dns' needs a name to resolve (--dns-name NAME)"
    ]


def test_without_dnspython_the_error_says_what_to_install() -> None:
    # dnspython hidden: its import fails as it does where it is not installed.
    code = (
        "import sys; sys.modules['dns'] = None; "
        "from catga_zmq.node import main; "
        "sys.exit(main(['--discovery', 'dns', '--dns-name', 'x.test', '--dns-record', 'srv']))"
    )
    done = run([sys.executable, "-c", code], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "catga-node: error: [CONFIG_INVALID] discovery 'dns' needs dnspython: pip install 'catga-zmq[dns]'"
    )

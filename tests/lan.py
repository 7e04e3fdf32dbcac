"""A LAN of network namespaces: one bridge, N hosts, real node processes.

Each ``Lan`` makes its own namespaces, all named after one unique prefix
(``cz<pid % 10000><3 hex>``)::

    <prefix>-br     the switch: bridge br0, one port per host (<prefix>p<i>)
    <prefix>-<host> a host: lo, and <prefix>v<i> = 10.213.X.(10+i)/24 with a
                    multicast route (224.0.0.0/4) so mDNS crosses the bridge

X is chosen at random per ``Lan``. ``Lan(..., curve=True)``: every node and client runs
with CURVE (``--curve-secret-key``, ``--curve-trust-dir``), its key made by
``catga_zmq.security.generate`` in ``<workdir>/keys`` and trusted in ``<workdir>/trust``
unless its host is one of ``untrusted``. Nothing is added to the machine's own namespace:
both ends of each veth pair are created inside the namespaces. Every process a ``Lan``
starts runs inside one of its namespaces, is a ``tests._procs.Proc`` (tracked by its
PID, output in files), gets SIGKILL if the test process dies (``PR_SET_PDEATHSIG``), and
``close()`` stops it (SIGTERM, wait, SIGKILL) before deleting the namespaces by name.

Used by ``tests/test_lan.py``; by hand (as root)::

    python -m tests.lan up --hosts h1,h2,h3,c1 --nodes h1,h2,h3   # until Ctrl-C
    python -m tests.lan down cz1234abc                              # after a hard kill
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import functools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests._procs import Proc, ProcError, child_env, stop_all

#: The repository root: node processes import ``tests.apps.lan_app`` from here.
ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "lan_client.py"
APP = "tests.apps.lan_app:node"

IP_TIMEOUT = 10.0  # s, one `ip` command
STOP_TIMEOUT = 8.0  # s from SIGTERM to SIGKILL in close()
POLL = 0.05  # s between looks at a log file (the wait_* of Proc poll as often)
FIRST_HOST = 10  # host i (from 1) gets 10.213.X.(FIRST_HOST + i)
MAX_HOSTS = 40
#: CURVE: the clients per host whose keys are made (and trusted) before anything starts.
CURVE_CLIENTS = 4
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")

#: A node's log line: ``2026-11-23 10:49:52,612 WARNING catga_zmq.membership: node h2 ...``
LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) +(?P<level>[A-Z]+) +(?P<logger>[\w.]+): "
    r"(?P<msg>.*)$"
)

_PR_SET_PDEATHSIG = 1


class LanError(RuntimeError):
    """Building the LAN, or a process in it, went wrong; the message says what."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=IP_TIMEOUT,
        check=False,
    )
    if check and done.returncode != 0:
        raise LanError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; `ip netns exec` then execs python in
    # the same process, so the node keeps it: if the test process dies, so does it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@contextlib.contextmanager
def _as_lan_error() -> Iterator[None]:
    """A process of the LAN that did not do what was waited for is a ``LanError``."""
    try:
        yield
    except ProcError as exc:
        raise LanError(str(exc)) from None


def namespaces() -> list[str]:
    """Names of the network namespaces on this machine (``ip netns list``)."""
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


@functools.cache
def lan_available() -> str | None:
    """Why a ``Lan`` cannot be built here, or None if it can (checked once)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (run: sudo python -m pytest -m netns)"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    probe = f"czprobe{os.getpid() % 10000}{secrets.token_hex(2)}"
    try:
        try:
            _ip("netns", "add", probe)
        except (LanError, OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot create a network namespace: {exc}"
        try:
            _ip("-n", probe, "link", "add", "name", "br0", "type", "bridge")
            _ip("-n", probe, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb")
            done = subprocess.run(
                ["ip", "netns", "exec", probe, sys.executable, "-c", "pass"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=IP_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                return f"cannot run a process in a namespace: {done.stderr.strip()}"
        except (LanError, OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot build a bridge and veth pairs: {exc}"
    finally:
        with contextlib.suppress(LanError, OSError, subprocess.TimeoutExpired):
            _ip("netns", "del", probe, check=False)
    return None


def log_time(stamp: str) -> float:
    """A logging ``asctime`` (local time, ms) as ``time.time()`` seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text.splitlines()[-lines:])


class Client:
    """A ``tests/lan_client.py`` run inside a host namespace.

    Its stdout carries ``ready`` (peers found, sending starts), then one line per
    membership change: ``event <NodeJoined|...> <node id> <time.time()>``.
    """

    def __init__(self, host: str, proc: Proc, out: Path) -> None:
        self.host = host
        self.proc = proc
        self.out = out  # the JSON report

    def lines(self) -> list[str]:
        return self.proc.stdout().splitlines()

    def _fail(self, why: str) -> LanError:
        return LanError(str(self.proc.fail(why)))

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (a regex), waiting up to ``timeout`` s."""
        with _as_lan_error():
            return self.proc.wait_line(pattern, timeout)

    def wait_ready(self, timeout: float = 40.0) -> None:
        self.wait_line(r"^ready\b", timeout)

    def events(self) -> list[tuple[str, str, float]]:
        """Membership changes printed so far: (event name, node id, time.time())."""
        found = []
        for line in self.lines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "event":
                found.append((parts[1], parts[2], float(parts[3])))
        return found

    def wait_event(self, names: Sequence[str], node: str, *, after: float, timeout: float) -> float:
        """When the client saw ``node`` change to one of ``names`` at or after ``after``."""
        end = time.monotonic() + timeout
        while True:
            for name, node_id, t in self.events():
                if name in names and node_id == node and t >= after:
                    return t
            if self.proc.returncode is not None:
                raise self._fail(f"exited before {names} of {node}")
            if time.monotonic() >= end:
                raise self._fail(f"did not see {'/'.join(names)} of {node} within {timeout} s")
            time.sleep(POLL)

    def stop(self) -> None:
        """Ask it to stop sending (SIGTERM): it finishes in-flight requests and reports."""
        self.proc.send_signal(signal.SIGTERM)

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the client to exit (at most ``timeout`` s) and return its JSON report."""
        try:
            self.proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.popen.kill()
            self.proc.popen.wait(5)
            raise self._fail(f"still running after {timeout} s; killed") from None
        if self.proc.returncode != 0:
            raise self._fail("a non-zero exit code")
        try:
            data: dict[str, Any] = json.loads(self.out.read_text())
        except (OSError, ValueError) as exc:
            raise self._fail(f"no readable report in {self.out}: {exc}") from None
        return data


class Lan:
    """Hosts on one bridge, each in its own network namespace; a context manager.

    ``Lan(["h1", "h2", "c1"])``: host names are 1-6 lower-case letters and digits.
    ``up()`` (or ``with``) builds it; ``close()`` stops every process and deletes every
    namespace it made, and is safe to call at any point, more than once.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        workdir: Path | str | None = None,
        cluster: str | None = None,
        env: Mapping[str, str] | None = None,
        curve: bool = False,
        untrusted: Sequence[str] = (),
    ) -> None:
        if not hosts or len(hosts) > MAX_HOSTS:
            raise ValueError(f"a Lan has 1 to {MAX_HOSTS} hosts, got {len(hosts)}")
        for host in hosts:
            if not _HOST_NAME.match(host):
                raise ValueError(f"host name {host!r}: use 1-6 lower-case letters and digits")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"host names repeat: {list(hosts)}")
        self.hosts = list(hosts)
        # Interface names are at most 15 bytes: "cz" + 4 digits + 3 hex + "v" + 2 digits.
        self.prefix = f"cz{os.getpid() % 10000}{secrets.token_hex(2)[:3]}"
        self.subnet = f"10.213.{random.randint(1, 254)}"
        self.cluster = cluster or f"lan-{self.prefix}"
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=self.prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)
        #: Extra environment for every process (e.g. CATGA_HEARTBEAT_INTERVAL).
        self.env = dict(env or {})
        self.curve = curve
        #: Hosts whose nodes' and clients' keys are not in the trust directory.
        self.untrusted = frozenset(untrusted)
        self.keys = self.workdir / "keys"
        self.trust = self.workdir / "trust"
        self.bridge_ns = f"{self.prefix}-br"
        self._index = {host: i for i, host in enumerate(self.hosts, 1)}
        self._namespaces: list[str] = []  # made by us, in order
        self._procs: list[Proc] = []  # every process we started
        self._nodes: dict[str, Proc] = {}  # the current node per host
        self._runs: dict[str, int] = {}  # node starts per host
        self._clients = 0
        self._closed = False

    # names -------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        self._check_host(host)
        return f"{self.prefix}-{host}"

    def ip(self, host: str) -> str:
        self._check_host(host)
        return f"{self.subnet}.{FIRST_HOST + self._index[host]}"

    def veth(self, host: str) -> str:
        """The host's interface (inside its namespace)."""
        self._check_host(host)
        return f"{self.prefix}v{self._index[host]}"

    def _port(self, host: str) -> str:
        return f"{self.prefix}p{self._index[host]}"

    def _check_host(self, host: str) -> None:
        if host not in self._index:
            raise KeyError(f"no host {host!r} in this Lan (hosts: {', '.join(self.hosts)})")

    # building ----------------------------------------------------------------------

    def __enter__(self) -> Lan:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        self._namespaces.append(name)  # first: an interrupt after `add` still deletes it
        done = _ip("netns", "add", name, check=False)
        if done.returncode != 0:
            self._namespaces.remove(name)  # not ours (or not made): never delete it
            raise LanError(f"`ip netns add {name}` failed: {done.stderr.strip()}")
        _ip("-n", name, "link", "set", "lo", "up")

    def up(self) -> Lan:
        """Build the namespaces, the bridge and the links; on any failure, undo all."""
        if self._closed:
            raise LanError("this Lan is closed; make a new one")
        atexit.register(self.close)
        if self.curve:
            self._make_keys()
        try:
            br = self.bridge_ns
            self._add_ns(br)
            # No STP (ports forward at once) and no IGMP snooping (no querier here:
            # multicast must be flooded to every port).
            _ip(
                "-n", br, "link", "add", "name", "br0", "type", "bridge",
                "stp_state", "0", "mcast_snooping", "0",
            )  # fmt: skip
            _ip("-n", br, "link", "set", "br0", "up")
            for host in self.hosts:
                ns, veth, port = self.ns(host), self.veth(host), self._port(host)
                self._add_ns(ns)
                _ip(
                    "-n",
                    br,
                    "link",
                    "add",
                    "name",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    veth,
                    "netns",
                    ns,
                )
                _ip("-n", br, "link", "set", port, "master", "br0")
                _ip("-n", br, "link", "set", port, "up")
                _ip("-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", veth)
                _ip("-n", ns, "link", "set", veth, "up")
                _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", veth)
        except BaseException:
            self.close()
            raise
        return self

    def _make_keys(self) -> None:
        """Every node's and client's key pair, before anything starts: a key trusted
        later is refused until the nodes re-read the trust directory."""
        from catga_zmq.security import generate

        self.keys.mkdir(exist_ok=True)
        self.trust.mkdir(exist_ok=True)
        for host in self.hosts:
            names = [host, *(f"client-{host}-{n}" for n in range(1, CURVE_CLIENTS + 1))]
            for name in names:
                public, _ = generate(name, self.keys)
                if host not in self.untrusted:
                    shutil.copy(public, self.trust / public.name)

    def _curve_args(self, node_id: str) -> list[str]:
        if not self.curve:
            return []
        secret = self.keys / f"{node_id}.key_secret"
        if not secret.exists():
            raise LanError(
                f"no key for {node_id}: keys are made for {CURVE_CLIENTS} clients a host"
            )
        return ["--curve-secret-key", str(secret), "--curve-trust-dir", str(self.trust)]

    # nodes -------------------------------------------------------------------------

    def _environ(self, host: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        # No CATGA_* settings leak in from the caller's shell (child_env): nodes run with
        # the defaults unless a test asks otherwise.
        return child_env(**{"LAN_EXEC_LOG": str(self.exec_log(host)), **self.env, **(extra or {})})

    def _spawn(
        self, host: str, name: str, cmd: Sequence[str], stem: Path, env: dict[str, str]
    ) -> Proc:
        """Run ``cmd`` inside the host's namespace; output in ``<stem>.out`` / ``.err``."""
        if self._closed or not self._namespaces:
            raise LanError("the Lan is not up")
        proc = Proc.start(
            name,
            ["ip", "netns", "exec", self.ns(host), *cmd],
            stem,
            env=env,
            start_new_session=True,  # a Ctrl-C at the terminal reaches pytest only
            preexec_fn=_die_with_parent,
        )
        self._procs.append(proc)
        return proc

    def start_node(self, host: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        """Run ``python -m catga_zmq.node`` (app ``tests.apps.lan_app:node``) on ``host``.

        Node id = host name, bound to the host's address, mDNS on its interface. ``args``
        are more flags (``--max-concurrency 4``).
        """
        running = self._nodes.get(host)
        if running is not None and running.returncode is None:
            raise LanError(f"a node already runs on {host} (pid {running.pid})")
        n = self._runs[host] = self._runs.get(host, 0) + 1
        cmd = [
            sys.executable, "-m", "catga_zmq.node",
            "--app", APP,
            "--bind", self.ip(host),
            "--discovery", "mdns",
            "--cluster", self.cluster,
            "--id", host,
            *self._curve_args(host),
            *args,
        ]  # fmt: skip
        proc = self._spawn(
            host, f"node on {host}", cmd, self.workdir / f"{host}.{n}", self._environ(host, env)
        )
        self._nodes[host] = proc
        return proc

    def node(self, host: str) -> Proc:
        try:
            return self._nodes[host]
        except KeyError:
            raise LanError(f"no node was started on {host}") from None

    def wait_ready(self, host: str, timeout: float = 20.0) -> str:
        """Wait for the node's ``ready`` line; returns its ROUTER endpoint."""
        with _as_lan_error():
            return self.node(host).wait_ready(timeout).get("endpoint", "")

    def kill(self, host: str, sig: int = signal.SIGKILL) -> float:
        """Send ``sig`` to the host's node; returns ``time.time()`` of the kill."""
        proc = self.node(host)
        if proc.returncode is not None:
            raise LanError(f"the node on {host} already exited ({proc.returncode})")
        proc.send_signal(sig)
        at = time.time()
        if sig == signal.SIGKILL:
            proc.popen.wait(5)
        return at

    def stop(self, host: str, timeout: float = 20.0) -> int:
        """SIGTERM the host's node (it drains) and return its exit code."""
        proc = self.node(host)
        with _as_lan_error():
            code = proc.stop(timeout)
        if proc.killed:
            raise LanError(f"node on {host} did not exit {timeout} s after SIGTERM")
        return code

    # the wire ----------------------------------------------------------------------

    def link_down(self, host: str) -> None:
        """Cut the host off the LAN (its interface down; the kernel drops its routes)."""
        _ip("-n", self.ns(host), "link", "set", self.veth(host), "down")

    def link_up(self, host: str) -> None:
        """Reconnect the host; the multicast route, gone with the link, comes back too."""
        ns, veth = self.ns(host), self.veth(host)
        _ip("-n", ns, "link", "set", veth, "up")
        _ip("-n", ns, "route", "replace", "224.0.0.0/4", "dev", veth)

    # clients -----------------------------------------------------------------------

    def start_client(self, host: str, args: Sequence[str]) -> Client:
        """Run ``tests/lan_client.py`` on ``host`` (``--bind``, ``--cluster``, ``--out`` set)."""
        self._clients += 1
        stem = self.workdir / f"client.{host}.{self._clients}"
        out = stem.parent / f"{stem.name}.json"
        node_id = f"client-{host}-{self._clients}"
        cmd = [
            sys.executable, str(CLIENT),
            "--bind", self.ip(host),
            "--cluster", self.cluster,
            "--id", node_id,
            "--out", str(out),
            *self._curve_args(node_id),
            *args,
        ]  # fmt: skip
        name = f"client {self._clients} on {host}"
        proc = self._spawn(host, name, cmd, stem, self._environ(host, None))
        return Client(host, proc, out)

    def run_client(self, host: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
        """Run a client to its end (at most ``timeout`` s) and return its JSON report."""
        return self.start_client(host, args).result(timeout)

    # logs --------------------------------------------------------------------------

    def exec_log(self, host: str) -> Path:
        """The host's record of executed ``Charge`` requests (one charge id a line)."""
        return self.workdir / f"{host}.exec.log"

    def stderr_files(self, host: str) -> list[Path]:
        return [self.workdir / f"{host}.{n}.err" for n in range(1, self._runs.get(host, 0) + 1)]

    def log(self, host: str) -> str:
        """Everything the host's nodes wrote to stderr, every incarnation in order."""
        parts = []
        for path in self.stderr_files(host):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_lines(self, host: str, pattern: str) -> list[tuple[float, str]]:
        """(time.time(), message) of the host's log lines whose message matches ``pattern``."""
        regex = re.compile(pattern)
        found = []
        for line in self.log(host).splitlines():
            m = LOG_LINE.match(line)
            if m and regex.search(m.group("msg")):
                found.append((log_time(m.group("ts")), m.group("msg")))
        return found

    def wait_log(self, host: str, pattern: str, *, after: float, timeout: float) -> float:
        """When the host first logged ``pattern`` at or after ``after``; waits up to ``timeout`` s."""
        end = time.monotonic() + timeout
        while True:
            for t, _msg in self.log_lines(host, pattern):
                if t >= after:
                    return t
            if time.monotonic() >= end:
                raise LanError(
                    f"{host} did not log /{pattern}/ within {timeout} s; its log ends:\n"
                    f"{_tail(self.stderr_files(host)[-1]) if self.stderr_files(host) else ''}"
                )
            time.sleep(POLL)

    # teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process started here (by PID), then delete every namespace made here."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        problems: list[str] = []
        try:
            stop_all(self._procs, STOP_TIMEOUT)
        except ProcError as exc:
            problems.append(str(exc))
        finally:
            for name in reversed(self._namespaces):
                try:
                    done = _ip("netns", "del", name, check=False)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    problems.append(f"ip netns del {name}: {exc}")
                    continue
                if done.returncode != 0 and name in namespaces():
                    problems.append(f"ip netns del {name}: {done.stderr.strip()}")
            self._namespaces.clear()
        if problems:
            raise LanError("teardown: " + "; ".join(problems))

    def describe(self) -> Iterator[str]:
        """Lines that say how to reach this LAN by hand."""
        yield f"prefix {self.prefix}, cluster {self.cluster}, logs in {self.workdir}"
        yield f"bridge: ip netns exec {self.bridge_ns} bridge link"
        for host in self.hosts:
            yield f"{host}: {self.ip(host)} in namespace {self.ns(host)} (ip netns exec {self.ns(host)} ...)"


# python -m tests.lan ---------------------------------------------------------------


def down(prefix: str) -> int:
    """Remove the namespaces of a LAN whose test was killed hard, and their processes."""
    if not re.fullmatch(r"cz\d{1,4}[0-9a-f]{3}", prefix):
        print(f"{prefix!r} is not a Lan prefix (cz<digits><3 hex>)", file=sys.stderr)
        return 2
    mine = [n for n in namespaces() if n.startswith(prefix + "-")]
    for name in mine:
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _ip("netns", "del", name, check=False)
        print(f"deleted {name} (killed {len(pids)} processes: {pids})")
    if not mine:
        print(f"no namespace starts with {prefix}-")
    return 0


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lan", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="build a LAN, run nodes, hold it until Ctrl-C or --hold s")
    u.add_argument("--hosts", default="h1,h2,h3,c1", help="host names (default h1,h2,h3,c1)")
    u.add_argument("--nodes", default="h1,h2,h3", help="hosts that run a node (default h1,h2,h3)")
    u.add_argument("--hold", type=float, default=600.0, help="seconds to keep it (default 600)")
    d = sub.add_parser("down", help="delete the namespaces of PREFIX and kill their processes")
    d.add_argument("prefix")
    args = p.parse_args(argv)
    if args.command == "down":
        return down(args.prefix)
    why = lan_available()
    if why:
        print(f"cannot build a LAN here: {why}", file=sys.stderr)
        return 2
    hosts = [h for h in args.hosts.split(",") if h]
    nodes = [h for h in args.nodes.split(",") if h]
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Lan(hosts) as lan:
        for host in nodes:
            lan.start_node(host)
        for host in nodes:
            lan.wait_ready(host)
        for line in lan.describe():
            print(line)
        spare = next((h for h in hosts if h not in nodes), nodes[0])
        print("try, in another shell:")
        print(
            f"  ip netns exec {lan.ns(spare)} {sys.executable} -m catga_zmq nodes "
            f"--cluster {lan.cluster} --bind {lan.ip(spare)}"
        )
        print(f"  ip -n {lan.ns(nodes[0])} link set {lan.veth(nodes[0])} down   # partition")
        print(f"holding for {args.hold:.0f} s; Ctrl-C to tear down", flush=True)
        end = time.monotonic() + args.hold
        while not stop and time.monotonic() < end:
            time.sleep(0.2)
    print("torn down")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

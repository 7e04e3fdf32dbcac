"""The node command and the operator commands, run as a user runs them: as processes.

Each process is stopped by its own PID, whatever happens in the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _net import loopback_multicast_problem
from _procs import Proc, python, run, stop_all

import catga_zmq
from catga_zmq import ConfigError, Node, Request, TransportFailed
from catga_zmq._version import __version__
from tests.apps.slow_app import Sleep

NODE = python("-m", "catga_zmq.node")
OPS = python("-m", "catga_zmq")
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
EXIT_TIMEOUT = 15.0  # s for a node process to exit after a signal
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "suspect_after": 0.5, "faulted_after": 2.0}


def _cluster() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def _run(cmd: list[str]) -> tuple[int, str, str]:
    """Run a command that needs no node of this process: blocking the loop costs nothing."""
    result = run(cmd, timeout=60.0)
    return result.returncode, result.stdout, result.stderr


@contextlib.contextmanager
def stopped_at_end(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        stop_all(procs)


# --version -------------------------------------------------------------------------------


def test_version_lives_in_its_own_module() -> None:
    assert catga_zmq.__version__ == __version__
    assert __version__.count(".") >= 2


@pytest.mark.parametrize("cmd", [NODE, OPS], ids=["node", "ops"])
def test_version_flag(cmd: list[str]) -> None:
    code, out, err = _run([*cmd, "--version"])
    assert code == 0, err
    assert out.strip() == f"catga_zmq {__version__}"


# a port in use -----------------------------------------------------------------------------


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port with a listener on it, for as long as the block runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("setting", "flag"), [("port", "--port"), ("pub_port", "--pub-port")])
async def test_port_in_use_is_a_config_error_naming_the_flag(setting: str, flag: str) -> None:
    with busy_port() as port:
        given: dict[str, Any] = {setting: port}
        node = Node("busy", discovery=None, **given)
        with pytest.raises(ConfigError) as info:
            await node.start()
    assert not isinstance(info.value, TransportFailed)
    assert not info.value.retryable
    assert f"{port}" in info.value.message and "in use" in info.value.message
    assert flag in info.value.message
    other = {"--port": "--pub-port", "--pub-port": "--port"}[flag]
    assert other not in info.value.message


@pytest.mark.parametrize("flag", ["--port", "--pub-port"])
def test_node_command_port_in_use_exits_2_with_one_line(flag: str) -> None:
    with busy_port() as port:
        code, out, err = _run([*NODE, "--discovery", "none", flag, str(port)])
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0] and str(port) in lines[0] and "in use" in lines[0]


# Ctrl-C --------------------------------------------------------------------------------------


async def test_second_ctrl_c_during_a_drain_exits_at_once(tmp_path: Path) -> None:
    cluster = _cluster()
    cmd = [*NODE, "--app", "tests.apps.slow_app:node", "--id", "slow-1", "--cluster", cluster]
    cmd += ["--discovery", "none", "--drain-timeout", "120"]
    proc = Proc.start("slow-1", cmd, tmp_path / "slow-1")
    with stopped_at_end(proc):
        await proc.await_ready(READY_TIMEOUT)
        client = Node(
            "client", cluster=cluster, discovery="static", seeds=[proc.ready["endpoint"]], **FAST
        )
        async with client:
            await client.wait_for_peers(1, handles=Sleep, timeout=20)
            call = asyncio.create_task(client.send(Sleep(seconds=300), timeout=600))
            try:
                await proc.await_log("sleeping 300", READY_TIMEOUT)
                proc.send_signal(signal.SIGINT)  # the first drains: it waits for the handler
                await proc.await_log("draining slow-1", READY_TIMEOUT)
                await asyncio.sleep(1.0)
                assert proc.returncode is None, "the first Ctrl-C did not wait for the handler"
                began = time.monotonic()
                proc.send_signal(signal.SIGINT)  # the second ends the drain at once
                code = await proc.await_exit(timeout=15.0)
                took = time.monotonic() - began
            finally:
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, catga_zmq.CatgaError):
                    await call
    assert code == 130, proc.stderr()
    assert took < 10.0, took
    assert "second" in proc.stderr().lower()  # it says why it did not finish the drain


async def test_one_ctrl_c_drains_and_exits_0(tmp_path: Path) -> None:
    cmd = [*NODE, "--id", "calm-1", "--cluster", _cluster(), "--discovery", "none"]
    proc = Proc.start("calm-1", cmd, tmp_path / "calm-1")
    with stopped_at_end(proc):
        await proc.await_ready(READY_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        assert await proc.await_exit(EXIT_TIMEOUT) == 0, proc.stderr()


# IPv6 ----------------------------------------------------------------------------------------


class WhereV6(Request[str]):
    __wire_name__ = "cli_test.WhereV6"


def _endpoint(node: Node) -> str:
    return next(m.endpoint for m in node.members() if m.local)


async def test_two_nodes_on_ipv6_loopback_exchange_a_request() -> None:
    cluster = _cluster()
    a = Node("v6-a", cluster=cluster, bind="::1", discovery=None, **FAST)

    @a.handler
    async def where(req: WhereV6) -> str:
        return a.node_id

    async with a:
        assert _endpoint(a).startswith("tcp://[::1]:")
        b = Node("v6-b", cluster=cluster, bind="::1", discovery="static", seeds=[_endpoint(a)])
        b.configure(**FAST)
        async with b:
            await b.wait_for_peers(1, handles=WhereV6, timeout=20)
            assert await b.send(WhereV6(), timeout=10) == "v6-a"
            peer = next(m for m in b.members() if m.node_id == "v6-a")
            assert peer.endpoint == _endpoint(a)


async def test_a_node_bound_to_ipv4_reaches_a_peer_bound_to_ipv6() -> None:
    cluster = _cluster()
    a = Node("v6-server", cluster=cluster, bind="::1", discovery=None, **FAST)

    @a.handler
    async def where(req: WhereV6) -> str:
        return a.node_id

    async with a:
        b = Node("v4-caller", cluster=cluster, discovery="static", seeds=[_endpoint(a)])
        b.configure(**FAST)
        async with b:
            assert _endpoint(b).startswith("tcp://127.0.0.1:")
            await b.wait_for_peers(1, handles=WhereV6, timeout=20)
            assert await b.send(WhereV6(), timeout=10) == "v6-server"


@pytest.mark.skipif(loopback_multicast_problem() is not None, reason="no loopback multicast")
async def test_nodes_bound_to_ipv6_loopback_find_each_other_by_mdns() -> None:
    # mDNS itself runs on 127.0.0.1 (lo is one interface); the records carry [::1].
    cluster = _cluster()
    a = Node("v6-mdns-a", cluster=cluster, bind="::1", discovery="mdns", **FAST)

    @a.handler
    async def where(req: WhereV6) -> str:
        return a.node_id

    b = Node("v6-mdns-b", cluster=cluster, bind="::1", discovery="mdns", **FAST)
    async with a, b:
        await b.wait_for_peers(1, handles=WhereV6, timeout=30)
        assert await b.send(WhereV6(), timeout=10) == "v6-mdns-a"
        peer = next(m for m in b.members() if m.node_id == "v6-mdns-a")
        assert peer.endpoint == _endpoint(a)


async def test_node_command_binds_ipv6(tmp_path: Path) -> None:
    cmd = [*NODE, "--id", "v6-1", "--cluster", _cluster(), "--bind", "::1", "--discovery", "none"]
    proc = Proc.start("v6-1", cmd, tmp_path / "v6-1")
    with stopped_at_end(proc):
        await proc.await_ready(READY_TIMEOUT)
        assert proc.ready["endpoint"].startswith("tcp://[::1]:")
        assert proc.ready["pub"].startswith("tcp://[::1]:")
        proc.send_signal(signal.SIGTERM)
        assert await proc.await_exit(EXIT_TIMEOUT) == 0, proc.stderr()

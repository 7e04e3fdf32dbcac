"""README's "Running nodes" commands, run as written: two nodes, then ``nodes`` and ``ping``;
then those of "Operator commands" against the same two nodes.

The commands are read from the README itself, so the test fails when the README and the
code disagree. Only the cluster name is replaced, by one of this run's own, so that runs
on one machine do not see each other; everything else is the README's text. The nodes
bind 127.0.0.1 (the default) and so run mDNS on 127.0.0.1 only.
"""

from __future__ import annotations

import re
import shlex
import signal
import sys
import uuid
from pathlib import Path

import pytest
from _net import loopback_multicast_problem
from _procs import ROOT, Proc, run, stop_all

_problem = loopback_multicast_problem()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(_problem is not None, reason=_problem or ""),
]

README_CLUSTER = "shop"
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
EXIT_TIMEOUT = 15.0  # s for a node process to exit after SIGTERM


def running_nodes_commands() -> list[list[str]]:
    """The shell commands of the first code block under README's "Running nodes"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Running nodes\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)\n(.*?)```", section, re.S)
    assert block is not None, "no shell block under 'Running nodes'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line]


def operator_commands() -> list[list[str]]:
    """The shell commands of the code block under README's "Operator commands"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Operator commands\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```(?:bash|sh)\n(.*?)```", section, re.S)
    assert block is not None, "no shell block under 'Operator commands'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line]


def _as_run_here(words: list[str], cluster: str) -> list[str]:
    assert words[0] == "python", words
    assert words.count("--cluster") == 1 and words[words.index("--cluster") + 1] == "shop"
    words = [cluster if w == README_CLUSTER else w for w in words]
    return [sys.executable, *words[1:]]


def test_the_block_has_the_commands_this_test_expects() -> None:
    commands = running_nodes_commands()
    assert [c[:3] for c in commands] == [
        ["python", "-m", "catga_zmq.node"],
        ["python", "-m", "catga_zmq.node"],
        ["python", "-m", "catga_zmq"],
        ["python", "-m", "catga_zmq"],
    ]
    assert [c[3] for c in commands[2:]] == ["nodes", "ping"]


async def test_running_nodes_commands_work_as_written(tmp_path: Path) -> None:
    cluster = f"readme-{uuid.uuid4().hex[:10]}"
    commands = [_as_run_here(words, cluster) for words in running_nodes_commands()]
    servers = [c for c in commands if c[2] == "catga_zmq.node"]
    operators = [c for c in commands if c[2] == "catga_zmq"]
    ids = [c[c.index("--id") + 1] for c in servers]
    nodes: list[Proc] = []
    try:
        for node_id, cmd in zip(ids, servers, strict=True):
            nodes.append(Proc.start(node_id, cmd, tmp_path / node_id))
        for proc in nodes:
            await proc.await_ready(READY_TIMEOUT)
            assert proc.ready["cluster"] == cluster
        for cmd in operators:
            # Blocking is harmless here: the nodes are processes, this one runs none.
            result = run(cmd, timeout=60)
            code, out, err = result.returncode, result.stdout, result.stderr
            assert code == 0, (cmd[3], out, err)
            for node_id in ids:
                assert node_id in out, (cmd[3], out, err)
        for proc in nodes:
            proc.send_signal(signal.SIGTERM)
        for proc in nodes:
            assert await proc.await_exit(EXIT_TIMEOUT) == 0, proc.stderr()
    finally:
        stop_all(nodes)


def test_the_operator_block_has_the_commands_this_test_expects() -> None:
    commands = operator_commands()
    assert all(c[:3] == ["python", "-m", "catga_zmq"] for c in commands)
    assert [c[3] for c in commands] == ["watch", "info", "stats", "request", "publish"]


async def test_operator_commands_work_as_written(tmp_path: Path) -> None:
    cluster = f"readme-{uuid.uuid4().hex[:10]}"
    servers = [
        _as_run_here(words, cluster)
        for words in running_nodes_commands()
        if words[2] == "catga_zmq.node"
    ]
    operators = [_as_run_here(words, cluster) for words in operator_commands()]
    procs: list[Proc] = []
    try:
        for cmd in servers:
            node_id = cmd[cmd.index("--id") + 1]
            procs.append(Proc.start(node_id, cmd, tmp_path / node_id))
        for proc in procs:
            await proc.await_ready(READY_TIMEOUT)
        expected = {
            "info": "shop-1",
            "stats": "shop-2",
            "request": '"name":"Ada"',
            "publish": "shop.UserRenamed delivered to shop-1 (1 subscriber), shop-2",
        }
        for cmd in operators:
            if cmd[3] == "watch":
                watch = Proc.start("watch", cmd, tmp_path / "watch")
                procs.append(watch)
                for proc in procs[:2]:
                    await watch.await_line(rf" joined +{proc.name} status=alive", READY_TIMEOUT)
                watch.send_signal(signal.SIGINT)
                assert await watch.await_exit(EXIT_TIMEOUT) == 0, watch.stderr()
                continue
            result = run(cmd, timeout=60)
            assert result.returncode == 0, (cmd[3], result.stdout, result.stderr)
            assert expected[cmd[3]] in result.stdout, (cmd[3], result.stdout, result.stderr)
    finally:
        stop_all(procs)


def runtime_commands() -> list[list[str]]:
    """The shell commands of the first code block under README's "Runtime settings"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Runtime settings and drain\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)\n(.*?)```", section, re.S)
    assert block is not None, "no shell block under 'Runtime settings and drain'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line]


async def test_runtime_settings_commands_work_as_written(tmp_path: Path) -> None:
    cluster = f"readme-{uuid.uuid4().hex[:10]}"
    commands = [_as_run_here(words, cluster) for words in runtime_commands()]
    assert [c[3] for c in commands] == ["set", "nodes", "drain"]
    server = _as_run_here(running_nodes_commands()[0], cluster)  # shop-1, as README runs it
    node = Proc.start("shop-1", server, tmp_path / "shop-1")
    try:
        await node.await_ready(READY_TIMEOUT)
        outputs = []
        for cmd in commands:
            # Blocking is harmless here: the node is a process, this one runs none.
            result = run(cmd, timeout=60)
            assert result.returncode == 0, (cmd[3], result.stdout, result.stderr)
            outputs.append(result.stdout)
        row = next(line for line in outputs[1].splitlines() if line.startswith("shop-1 "))
        assert " 3 " in row and "zone=b" in row, outputs[1]
        assert "shop-1 drains" in outputs[2]
        assert await node.await_exit(EXIT_TIMEOUT) == 0, node.stderr()
    finally:
        stop_all([node])

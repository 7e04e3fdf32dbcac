"""The operator commands (``python -m catga_zmq ...``) against node processes.

Each command runs as a client: the members must not list it, nor log it joining or
leaving. The nodes run ``tests.apps.cluster_app`` and find each other by a static seed,
as does each command (no multicast needed); every process is stopped by its PID.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _procs import Proc, child_env, python, run, stop_all

pytestmark = pytest.mark.cluster

OPS = python("-m", "catga_zmq")
NODE = python("-m", "catga_zmq.node")
APP = "tests.apps.cluster_app"
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
LINE_TIMEOUT = 30.0  # s for a watch line to appear
FAST = {"heartbeat_interval": "0.1", "suspect_after": "0.5", "faulted_after": "2.0"}
#: The same timings for a command, through its environment.
FAST_ENV = {f"CATGA_{k.upper()}": v for k, v in FAST.items()}


def _fast_flags() -> list[str]:
    return [w for k, v in FAST.items() for w in (f"--{k.replace('_', '-')}", v)]


class Cluster:
    """Two node processes, n1 (the seed) and n2, in a cluster of their own."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"ops-{uuid.uuid4().hex[:10]}"
        self.tmp = tmp
        self.procs: dict[str, Proc] = {}

    def start(self, node_id: str, *extra: str) -> Proc:
        cmd = [*NODE, "--app", f"{APP}:node", "--id", node_id, "--cluster", self.name]
        proc = Proc.start(node_id, [*cmd, *_fast_flags(), *extra], self.tmp / node_id)
        self.procs[node_id] = proc
        proc.wait_ready(READY_TIMEOUT)
        return proc

    @property
    def seed(self) -> str:
        return self.procs["n1"].ready["endpoint"]

    def where(self) -> list[str]:
        """The flags that point a command at this cluster."""
        return ["--cluster", self.name, "--seeds", self.seed]

    def ops(self, *words: str, timeout: float = 60.0) -> tuple[int, str, str]:
        result = run([*OPS, *words, *self.where()], timeout=timeout, env=child_env(**FAST_ENV))
        return result.returncode, result.stdout, result.stderr

    def logs(self) -> dict[str, str]:
        return {node_id: proc.stderr() for node_id, proc in self.procs.items()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("ops"))
    try:
        c.start("n1", "--discovery", "none")
        c.start("n2", "--seeds", c.seed)
        code, out, err = c.ops("nodes", "--json", "--wait", "2")
        assert code == 0 and {r["node"] for r in json.loads(out)} == {"n1", "n2"}, (out, err)
        yield c
    finally:
        stop_all(c.procs.values())


def _membership_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " joined at " in line or line.endswith(" left")]


# a client is no member -----------------------------------------------------------------------


def test_nodes_and_watch_make_no_member_log_a_join_or_a_leave(cluster: Cluster) -> None:
    before = {n: _membership_lines(log) for n, log in cluster.logs().items()}
    code, out, err = cluster.ops("nodes", "--node-id", "ops-probe", "--json", "--wait", "2")
    assert code == 0, err
    assert sorted(r["node"] for r in json.loads(out)) == ["n1", "n2"]
    watch = Proc.start(
        "watch",
        [*OPS, "watch", "--node-id", "ops-watch", *cluster.where()],
        cluster.tmp / "watch-quiet",
        env=child_env(**FAST_ENV),
    )
    try:
        watch.wait_line(r" joined +n1 ", LINE_TIMEOUT)
        watch.wait_line(r" joined +n2 ", LINE_TIMEOUT)
        watch.send_signal(signal.SIGINT)
        code = watch.popen.wait(LINE_TIMEOUT)
    finally:
        stop_all([watch])
    assert code == 0, watch.stderr()
    # Each member's view: the other member only, never a client.
    for node_id in ("n1", "n2"):
        code, out, err = cluster.ops("info", node_id, "--json")
        assert code == 0, err
        assert [p["node_id"] for p in json.loads(out)["peers"]] == [
            {"n1": "n2", "n2": "n1"}[node_id]
        ]
    code, out, err = cluster.ops("stats", "--json", "--wait", "1")
    assert code == 0, err
    assert {s["node_id"]: s["members"] for s in json.loads(out)} == {
        "n1": {"alive": 1},
        "n2": {"alive": 1},
    }
    after = {n: _membership_lines(log) for n, log in cluster.logs().items()}
    assert after == before
    for log in cluster.logs().values():
        assert "ops-probe" not in log and "ops-watch" not in log  # no client is named


# watch ----------------------------------------------------------------------------------------


def test_watch_follows_a_node_through_each_change_and_ends_on_ctrl_c(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    watch: Proc | None = None
    try:
        c.start("n1", "--discovery", "none")
        watch = Proc.start(
            "watch", [*OPS, "watch", *c.where()], tmp_path / "watch", env=child_env(**FAST_ENV)
        )
        watch.wait_line(r" joined +n1 status=alive ", LINE_TIMEOUT)
        n3 = c.start("n3", "--seeds", c.seed)
        watch.wait_line(r" joined +n3 status=alive endpoint=" + n3.ready["endpoint"], LINE_TIMEOUT)
        n3.send_signal(signal.SIGSTOP)
        try:
            watch.wait_line(r" suspect +n3 status=suspect ", LINE_TIMEOUT)
            watch.wait_line(r" faulted +n3 status=faulted ", LINE_TIMEOUT)
        finally:
            n3.send_signal(signal.SIGCONT)
        watch.wait_line(r" recovered +n3 status=alive ", LINE_TIMEOUT)
        n3.send_signal(signal.SIGTERM)
        watch.wait_line(r" left +n3 status=left ", LINE_TIMEOUT)
        assert n3.popen.wait(LINE_TIMEOUT) == 0
        watch.send_signal(signal.SIGINT)
        assert watch.popen.wait(LINE_TIMEOUT) == 0, watch.stderr()
        changes = [line.split()[1] for line in watch.stdout().splitlines() if " n3 " in line]
        assert changes == ["joined", "suspect", "faulted", "recovered", "left"]
        assert "Traceback" not in watch.stderr()
    finally:
        stop_all([*c.procs.values(), *([watch] if watch else [])])


def test_watch_json_prints_one_object_a_line(cluster: Cluster) -> None:
    watch = Proc.start(
        "watch-json",
        [*OPS, "watch", "--json", *cluster.where()],
        cluster.tmp / "watch-json",
        env=child_env(**FAST_ENV),
    )
    try:
        watch.wait_line(r'"node":"n2"', LINE_TIMEOUT)
        watch.wait_line(r'"node":"n1"', LINE_TIMEOUT)
        watch.send_signal(signal.SIGTERM)
        assert watch.popen.wait(LINE_TIMEOUT) == 0, watch.stderr()
    finally:
        stop_all([watch])
    rows = [json.loads(line) for line in watch.stdout().splitlines()]
    assert {r["node"]: r["change"] for r in rows} == {"n1": "joined", "n2": "joined"}
    assert all(r["status"] == "alive" and r["endpoint"].startswith("tcp://") for r in rows)


# request and publish --------------------------------------------------------------------------


def test_request_prints_the_reply_as_json(cluster: Cluster) -> None:
    code, out, err = cluster.ops("request", "cluster.Where", "{}", "--app", APP, "--node", "n2")
    assert code == 0, err
    assert json.loads(out) == "n2"
    # By class name too, and the reply of a type with fields.
    code, out, err = cluster.ops(
        "request", "Relay", '{"to": "n1"}', "--app", APP, "--node", "n2", "--json"
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["type"] == "cluster.Relay" and answer["reply"] == "n2->n1"
    assert answer["ms"] > 0


def test_an_error_answer_is_printed_and_exits_3(cluster: Cluster) -> None:
    code, out, err = cluster.ops("request", "Boom", '{"text": "ops"}', "--app", APP)
    assert code == 3
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "HANDLER_FAILED" in lines[0] and "boom: ops" in lines[0], err
    code, out, err = cluster.ops("request", "Boom", '{"text": "ops"}', "--app", APP, "--json")
    assert code == 3
    error = json.loads(out)["error"]
    assert error["code"] == "HANDLER_FAILED" and error["error_type"] == "ValueError"
    assert error["node"] in ("n1", "n2")


def test_publish_reaches_every_subscriber(cluster: Cluster) -> None:
    token = uuid.uuid4().hex
    code, out, err = cluster.ops(
        "publish", "cluster.Notice", json.dumps({"token": token}), "--app", APP, "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {
        "type": "cluster.Notice",
        "delivered": {"n1": 1, "n2": 1},
        "failed": {},
    }
    for node_id in ("n1", "n2"):
        code, out, err = cluster.ops(
            "request", "cluster.Seen", "{}", "--app", APP, "--node", node_id
        )
        assert code == 0, err
        assert json.loads(out).count(token) == 1


# stats, info, ping ----------------------------------------------------------------------------


def test_stats_counts_each_request_type_where_it_is_handled(cluster: Cluster) -> None:
    code, out, _ = cluster.ops("stats", "n1", "--json")
    before = json.loads(out)[0]["handlers"].get("cluster.Where", {"handled": 0})["handled"]
    for _ in range(3):
        code, _, err = cluster.ops("request", "cluster.Where", "{}", "--app", APP, "--node", "n1")
        assert code == 0, err
    code, _, _ = cluster.ops("request", "Boom", '{"text": "x"}', "--app", APP, "--node", "n1")
    assert code == 3
    code, out, err = cluster.ops("stats", "n1", "--json")
    assert code == 0, err
    [stats] = json.loads(out)
    where = stats["handlers"]["cluster.Where"]
    assert where["handled"] == before + 3 and where["errors"] == 0
    assert where["processing_time"] > 0
    assert stats["handlers"]["cluster.Boom"]["errors"] >= 1
    # Per type, the node's own totals: every request it handled is in one type's count.
    handlers: dict[str, Any] = stats["handlers"]
    assert sum(h["handled"] for h in handlers.values()) == stats["requests_handled"]
    assert sum(h["errors"] for h in handlers.values()) == stats["requests_failed"]
    code, out, err = cluster.ops("stats", "n1")
    assert code == 0, err
    assert any(line.split()[:2] == ["n1", "cluster.Where"] for line in out.splitlines()), out


def test_info_and_ping(cluster: Cluster) -> None:
    code, out, err = cluster.ops("info", "n2", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["node_id"] == "n2" and info["endpoint"] == cluster.procs["n2"].ready["endpoint"]
    assert "cluster.Where" in info["handles"]
    code, out, err = cluster.ops("info", "n2")
    assert code == 0, err
    assert "cluster.Notice" in out and cluster.procs["n2"].ready["endpoint"] in out
    code, out, err = cluster.ops("ping", "--json", "--wait", "1")
    assert code == 0, err
    assert {r["node"] for r in json.loads(out)} == {"n1", "n2"}
    assert all(isinstance(r["rtt_ms"], float) for r in json.loads(out))


def test_a_node_not_there_exits_1(cluster: Cluster) -> None:
    code, out, err = cluster.ops("info", "n9", "--wait", "1")
    assert code == 1 and out == ""
    assert "n9" in err and len(err.strip().splitlines()) == 1, err


# bad values: one line, exit 2, before anything starts -----------------------------------------


@pytest.mark.parametrize(
    ("words", "said"),
    [
        (["request", "cluster.Boom", '{"text": ', "--app", APP], "is not JSON"),
        (["request", "cluster.Boom", '{"txt": "x"}', "--app", APP], "has no field 'txt'"),
        (["request", "cluster.Boom", '{"text": 7}', "--app", APP], "Expected `str`"),
        (["request", "cluster.Boom", "[1]", "--app", APP], "give a JSON object"),
        (["request", "NoSuchType", "{}", "--app", APP], "no request type 'NoSuchType'"),
        (["request", "cluster.Notice", "{}", "--app", APP], "no request type 'cluster.Notice'"),
        (["publish", "cluster.Where", "{}", "--app", APP], "no event type 'cluster.Where'"),
        (["request", "Where", "{}", "--app", "tests.apps.no_such_app"], "cannot import"),
        (["stats", "--wait", "0"], "--wait must be"),
    ],
    ids=[
        "json",
        "field",
        "value",
        "array",
        "type",
        "event-as-request",
        "request-as-event",
        "app",
        "wait",
    ],
)
def test_bad_values_exit_2_with_one_line(words: list[str], said: str) -> None:
    result = run([*OPS, *words, "--cluster", "nowhere", "--discovery", "none"], timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr
    assert result.stdout == ""


def test_help_documents_the_exit_codes() -> None:
    for command in ([], ["watch"], ["request"], ["stats"]):
        result = run([*OPS, *command, "--help"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert "exit codes:" in result.stdout
        for code in ("0", "1", "2", "3", "130"):
            assert f"\n  {code} " in result.stdout

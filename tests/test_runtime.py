"""Runtime settings and drain: the built-in admin requests ``Configure`` and ``Drain``,
who may send them, and the ``set`` and ``drain`` commands run as a user runs them.

Nodes are real: in-process nodes on loopback sockets, node processes for the commands;
each process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _procs import Proc, python, stop_all
from conftest import MakeNode, member, wait_until

from catga_zmq import (
    Configure,
    Drain,
    Node,
    NodeOptions,
    PermissionDenied,
    RequestTimeout,
    RuntimeSettings,
    ValidationFailed,
)
from catga_zmq._runtime import parse_changes
from catga_zmq.errors import ConfigError
from catga_zmq.security import ADMIN_DIR, RELOAD_INTERVAL, AdminCheck, TrustStore, generate
from tests.apps.slow_app import Sleep

OPS = python("-m", "catga_zmq")
NODE = python("-m", "catga_zmq.node")
READY_TIMEOUT = 30.0  # s for a node process to print its ready line
EXIT_TIMEOUT = 60.0  # s for an operator command (it starts a node of its own) to end
FAST: dict[str, Any] = {"heartbeat_interval": 0.1, "suspect_after": 0.5, "faulted_after": 2.0}


# the checks of a change, alone ---------------------------------------------------------------


def test_a_change_is_checked_as_its_flag() -> None:
    changes = parse_changes({"weight": "3", "metadata.zone": "b", "request_timeout": "2.5"})
    assert changes.values == {"weight": 3, "request_timeout": 2.5}
    assert changes.labels == {"zone": "b"}
    assert changes.names() == ["metadata.zone", "request_timeout", "weight"]
    assert parse_changes({"metadata": "zone=a,rack=3"}).values == {
        "metadata": {"zone": "a", "rack": "3"}
    }
    assert parse_changes({"metadata": ""}).values == {"metadata": {}}


@pytest.mark.parametrize(
    ("texts", "says"),
    [
        ({"weight": "-1"}, ["weight='-1'", "0 to 1000000"]),
        ({"weight": "many"}, ["weight='many'", "0 to 1000000"]),
        ({"max_concurrency": "0"}, ["max_concurrency='0'", "1 to 1000000"]),
        ({"log_level": "LOUD"}, ["log_level='LOUD'", "DEBUG, INFO"]),
        ({"metadata.zo ne": "b"}, ["metadata.zo ne='b'", "letters, digits"]),
        ({"metadata.zone": "a\nb"}, ["metadata.zone=", "no control characters"]),
        ({"bogus": "1"}, ["unknown setting 'bogus'", "weight, metadata, metadata.KEY"]),
        ({"port": "5555"}, ["port cannot change while a node runs", "weight"]),
        ({}, ["no setting given", "weight"]),
    ],
    ids=[
        "negative",
        "not-a-number",
        "zero-concurrency",
        "level",
        "key",
        "value",
        "unknown",
        "not-runtime",
        "empty",
    ],
)
def test_a_bad_change_names_the_setting_and_what_it_takes(
    texts: dict[str, str], says: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_changes(texts)
    for text in says:
        assert text in info.value.message, info.value.message
    assert "\n" not in info.value.message


# who may: the admin check, alone ---------------------------------------------------------------


def _refusal(**settings: Any) -> PermissionDenied | None:
    options = NodeOptions(node_id="n1", **settings)
    return AdminCheck(options, None).refusal("catga.Drain", "ops", b"")


def test_plaintext_admin_by_default_only_on_a_loopback_bind() -> None:
    assert _refusal() is None  # bind 127.0.0.1: only this host reaches the node
    assert _refusal(bind="::1") is None
    refused = _refusal(bind="0.0.0.0")
    assert refused is not None and refused.code == "PERMISSION_DENIED"
    assert "binds 0.0.0.0" in refused.message and "plaintext_admin=any" in refused.message
    assert _refusal(bind="0.0.0.0", plaintext_admin="any") is None
    refused = _refusal(plaintext_admin="none")
    assert refused is not None and "plaintext_admin=none" in refused.message


def test_the_trust_directory_names_admin_keys_in_its_admin_subdirectory(tmp_path: Path) -> None:
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    keys.mkdir()
    (trust / ADMIN_DIR).mkdir(parents=True)
    found = {name: generate(name, keys)[0] for name in ("a", "ops", "boss")}
    shutil.copy(found["a"], trust)
    shutil.copy(found["ops"], trust)
    shutil.copy(found["boss"], trust / ADMIN_DIR)
    store = TrustStore(trust)
    key = {name: store.key_of(name) for name in found}
    assert store.names() == ["a", "boss", "ops"]  # an admin key is trusted too
    assert store.admin_names() == ["boss"]
    assert store.identity_ok("boss", key["boss"] or b"")
    check = AdminCheck(NodeOptions(node_id="a", curve_trust_dir=str(trust)), store)
    assert check.refusal("catga.Drain", "boss", key["boss"] or b"") is None
    refused = check.refusal("catga.Drain", "ops", key["ops"] or b"")
    assert refused is not None and os.path.join(str(trust), ADMIN_DIR) in refused.message
    # Moved out of admin/: trusted still, an admin no longer, after the reload.
    (trust / ADMIN_DIR / "boss.key").rename(trust / "boss.key")
    assert store.changed()
    change = store.reload()
    assert change.admins_removed == {"boss"} and not change.removed
    assert check.refusal("catga.Drain", "boss", key["boss"] or b"") is not None
    assert store.identity_ok("boss", key["boss"] or b"")
    # Promoted: the same certificate in both places.
    shutil.copy(trust / "ops.key", trust / ADMIN_DIR / "ops.key")
    assert store.reload().admins_added == {"ops"}
    assert check.refusal("catga.Drain", "ops", key["ops"] or b"") is None


def test_an_admin_certificate_with_another_key_than_its_name_above_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    keys.mkdir()
    (trust / ADMIN_DIR).mkdir(parents=True)
    shutil.copy(generate("ops", keys)[0], trust)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(generate("ops", other)[0], trust / ADMIN_DIR)  # ops, another key
    store = TrustStore(trust)
    assert store.admin_names() == []
    assert "admin/ops.key skipped" in caplog.text and "another key" in caplog.text


# in-process nodes ----------------------------------------------------------------------------


async def test_set_shows_in_the_next_heartbeat_on_other_nodes(make_node: MakeNode) -> None:
    a, b = make_node("a", weight=1, metadata={"zone": "a"}), make_node("b")
    await a.start()
    await b.start()
    await b.wait_for_peers(1, timeout=20)
    answer = await b.send(
        Configure(changes={"weight": "3", "metadata.zone": "b", "max_concurrency": "7"}),
        node="a",
        timeout=10,
    )
    assert isinstance(answer, RuntimeSettings)
    assert (answer.node_id, answer.weight, answer.metadata) == ("a", 3, {"zone": "b"})
    assert answer.changed == ["max_concurrency", "metadata.zone", "weight"]
    assert (a.options.weight, a.options.max_concurrency) == (3, 7)
    await wait_until(lambda: member(b, "a").weight == 3, timeout=10)
    assert member(b, "a").metadata == {"zone": "b"}
    assert member(a, "a").weight == 3  # its own record too (local routing)


async def test_log_level_request_timeout_and_drain_timeout_take_effect(
    make_node: MakeNode,
) -> None:
    a, b = make_node("a"), make_node("b")

    @b.handler
    async def sleep(req: Sleep) -> str:
        await asyncio.sleep(req.seconds)
        return "slept"

    await a.start()
    await b.start()
    await a.wait_for_peers(1, timeout=20, handles=Sleep)
    await b.wait_for_peers(1, timeout=20)
    root = logging.getLogger()
    level = root.level
    try:
        changes = {"log_level": "debug", "request_timeout": "0.25", "drain_timeout": "3"}
        answer = await b.send(Configure(changes=changes), node="a", timeout=10)
        assert answer.log_level == "debug" and root.level == logging.DEBUG
        assert (a.options.request_timeout, a.options.drain_timeout) == (0.25, 3.0)
        # send() without a timeout now has 0.25 s.
        with pytest.raises(RequestTimeout):
            await a.send(Sleep(seconds=5), node="b")
    finally:
        root.setLevel(level)


async def test_a_bad_value_changes_nothing(make_node: MakeNode) -> None:
    # A small max_message_size, so that a few labels overflow a heartbeat.
    a = make_node("a", weight=2, metadata={"zone": "a"}, max_message_size=8192)
    b = make_node("b")
    await a.start()
    await b.start()
    await b.wait_for_peers(1, timeout=20)
    for bad in ({"weight": "5", "max_concurrency": "-1"}, {"weight": "5", "bogus": "x"}):
        with pytest.raises(ValidationFailed) as info:
            await b.send(Configure(changes=bad), node="a", timeout=10)
        assert info.value.node == "a"
    assert (a.options.weight, a.options.metadata) == (2, {"zone": "a"})
    # Metadata that would make the heartbeats larger than the frames peers take: each
    # request fits, the two together do not.
    labels = {f"metadata.k{i}": "x" * 1024 for i in range(4)}
    await b.send(Configure(changes=labels), node="a", timeout=10)
    with pytest.raises(ValidationFailed) as info:
        more = {f"metadata.m{i}": "x" * 1024 for i in range(4)}
        await b.send(Configure(changes=more), node="a", timeout=10)
    assert "max_message_size" in info.value.message
    assert len(a.options.metadata) == 5 and "m0" not in a.options.metadata


async def test_drain_finishes_what_runs_then_closes(make_node: MakeNode) -> None:
    a, b = make_node("a", drain_timeout=20), make_node("b")

    @a.handler
    async def sleep(req: Sleep) -> str:
        await asyncio.sleep(req.seconds)
        return "slept"

    await a.start()
    await b.start()
    await b.wait_for_peers(1, timeout=20, handles=Sleep)
    running = asyncio.create_task(b.send(Sleep(seconds=1.0), node="a", timeout=30))
    await wait_until(lambda: a.stats().running == 1, timeout=10)
    answer = await b.send(Drain(), node="a", timeout=10)
    assert (answer.node_id, answer.running) == ("a", 1)
    assert await running == "slept"  # the request in flight completed
    async with asyncio.timeout(20):
        await a.wait_closed()
    assert a.failure is None


async def test_admin_requests_are_refused_when_plaintext_admin_is_none(
    make_node: MakeNode,
) -> None:
    a, b = make_node("a", plaintext_admin="none", weight=1), make_node("b")
    await a.start()
    await b.start()
    await b.wait_for_peers(1, timeout=20)
    with pytest.raises(PermissionDenied) as info:
        await b.send(Configure(changes={"weight": "9"}), node="a", timeout=10)
    assert "plaintext_admin=none" in info.value.message
    with pytest.raises(PermissionDenied):
        await b.send(Drain(), node="a", timeout=10)
    assert a.options.weight == 1 and a.healthy
    # A local call comes from the node's own process: allowed.
    assert (await a.send(Configure(changes={"weight": "9"}), node="a")).weight == 9


# CURVE: admin keys ---------------------------------------------------------------------------


class CurveKeys:
    """Key pairs in ``tmp``; ``trust`` holds a, ops and boss, boss under ``admin/``."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "keys"
        self.trust = tmp / "trust"
        self.dir.mkdir()
        (self.trust / ADMIN_DIR).mkdir(parents=True)
        for name in ("a", "ops", "boss"):
            public, _ = generate(name, self.dir)
            shutil.copy(public, self.trust / ADMIN_DIR if name == "boss" else self.trust)

    def settings(self, name: str) -> dict[str, Any]:
        return {
            "curve_secret_key": str(self.dir / f"{name}.key_secret"),
            "curve_trust_dir": str(self.trust),
        }


async def test_only_an_admin_key_may_drain_or_set_and_a_demoted_key_is_refused_after_reload(
    make_node: MakeNode, tmp_path: Path
) -> None:
    keys = CurveKeys(tmp_path)
    a = make_node("a", **keys.settings("a"))
    ops, boss = make_node("ops", **keys.settings("ops")), make_node("boss", **keys.settings("boss"))
    for node in (a, ops, boss):
        await node.start()
    await ops.wait_for_peers(2, timeout=20)
    await boss.wait_for_peers(2, timeout=20)
    with pytest.raises(PermissionDenied) as info:
        await ops.send(Configure(changes={"weight": "4"}), node="a", timeout=10)
    assert "not an admin key" in info.value.message and ADMIN_DIR in info.value.message
    with pytest.raises(PermissionDenied):
        await ops.send(Drain(), node="a", timeout=10)
    assert a.options.weight == 1 and a.healthy
    assert (await boss.send(Configure(changes={"weight": "4"}), node="a", timeout=10)).weight == 4
    # boss taken out of admin/ (trusted still): refused once a has re-read its directory.
    (keys.trust / ADMIN_DIR / "boss.key").rename(keys.trust / "boss.key")
    moved = time.monotonic()
    async with asyncio.timeout(RELOAD_INTERVAL + 15):
        while True:
            try:
                await boss.send(Configure(changes={"weight": "5"}), node="a", timeout=5)
            except PermissionDenied:
                break
            await asyncio.sleep(0.1)
    # RELOAD_INTERVAL is the bound; the rest is slack for a loaded machine.
    assert time.monotonic() - moved < RELOAD_INTERVAL + 15
    assert a.options.weight in (4, 5)  # a try before the reload may have gone through
    assert await boss.send(Configure(changes={"weight": "6"}), node="boss") is not None


# the commands, against node processes --------------------------------------------------------


def _cluster() -> str:
    return f"rt-{uuid.uuid4().hex[:10]}"


def _static(cluster: str, endpoint: str) -> list[str]:
    return ["--cluster", cluster, "--discovery", "static", "--seeds", endpoint]


async def _command(tmp: Path, name: str, *args: str) -> tuple[int, str, str]:
    """Run an operator command to its end without stopping the event loop."""
    proc = Proc.start(name, [*OPS, *args], tmp / name)
    try:
        code = await proc.await_exit(EXIT_TIMEOUT)
    finally:
        proc.stop()
    return code, proc.stdout(), proc.stderr()


async def test_set_command_changes_a_node_process_and_nodes_shows_it(tmp_path: Path) -> None:
    cluster = _cluster()
    node = Proc.start(
        "shop-1",
        [
            *NODE,
            "--app",
            "examples.shop:node",
            "--id",
            "shop-1",
            "--cluster",
            cluster,
            "--discovery",
            "static",
            "--seeds",
            "tcp://127.0.0.1:1",
            "--metadata",
            "zone=a",
            "--heartbeat-interval",
            "0.1",
            "--suspect-after",
            "0.5",
            "--faulted-after",
            "2",
        ],
        tmp_path / "shop-1",
    )
    try:
        ready = await node.await_ready(READY_TIMEOUT)
        where = _static(cluster, ready["endpoint"])
        code, out, err = await _command(
            tmp_path, "set", "set", "shop-1", "weight=3", "metadata.zone=b", *where, "--json"
        )
        assert code == 0, err
        answer = json.loads(out)
        assert (answer["weight"], answer["metadata"]) == (3, {"zone": "b"})
        # Another member sees it in the heartbeats.
        observer = Node(
            "watcher", cluster=cluster, discovery="static", seeds=[ready["endpoint"]], **FAST
        )
        async with observer:
            await observer.wait_for_peers(1, timeout=20)
            await wait_until(lambda: member(observer, "shop-1").weight == 3, timeout=10)
            assert member(observer, "shop-1").metadata == {"zone": "b"}
        code, out, err = await _command(tmp_path, "nodes", "nodes", *where, "--json", "--wait", "2")
        assert code == 0, err
        row = next(r for r in json.loads(out) if r["node"] == "shop-1")
        assert (row["weight"], row["metadata"]) == (3, {"zone": "b"})
        code, out, err = await _command(tmp_path, "nodes-table", "nodes", *where, "--wait", "2")
        assert code == 0 and "zone=b" in out, (out, err)
        # A bad value: exit 2, one line naming it, nothing changed.
        for bad, name in (
            (["weight=3", "max_concurrency=0"], "max_concurrency"),
            (["colour=red"], "colour"),
        ):
            code, out, err = await _command(tmp_path, f"bad-{name}", "set", "shop-1", *bad, *where)
            assert code == 2, (out, err)
            assert len(err.strip().splitlines()) == 1 and name in err, err
        code, out, err = await _command(tmp_path, "after", "nodes", *where, "--json", "--wait", "2")
        row = next(r for r in json.loads(out) if r["node"] == "shop-1")
        assert (row["weight"], row["metadata"]) == (3, {"zone": "b"})
        # A node nobody runs: exit 1.
        code, out, err = await _command(
            tmp_path, "missing", "set", "shop-9", "weight=1", *where, "--wait", "1"
        )
        assert code == 1 and "shop-9" in err, (out, err)
    finally:
        stop_all([node])


async def test_drain_command_drains_a_node_process_whose_request_completes(
    tmp_path: Path,
) -> None:
    cluster = _cluster()
    node = Proc.start(
        "slow-1",
        [
            *NODE,
            "--app",
            "tests.apps.slow_app:node",
            "--id",
            "slow-1",
            "--cluster",
            cluster,
            "--discovery",
            "none",
            "--drain-timeout",
            "30",
        ],
        tmp_path / "slow-1",
    )
    try:
        ready = await node.await_ready(READY_TIMEOUT)
        client = Node(
            "client", cluster=cluster, discovery="static", seeds=[ready["endpoint"]], **FAST
        )
        async with client:
            await client.wait_for_peers(1, handles=Sleep, timeout=20)
            call = asyncio.create_task(client.send(Sleep(seconds=3.0), node="slow-1", timeout=60))
            await node.await_log("sleeping 3.0 s", timeout=20)
            code, out, err = await _command(
                tmp_path,
                "drain",
                "drain",
                "slow-1",
                *_static(cluster, ready["endpoint"]),
                "--json",
            )
            assert code == 0, err
            answer = json.loads(out)
            # Sleep runs; the command's own greeting (Info) may be running beside it.
            assert answer["node_id"] == "slow-1" and answer["running"] >= 1, answer
            assert await call == "slow-1"  # in flight when the drain began: it completed
            assert await node.await_exit(30) == 0, node.stderr()
        assert "drains: asked by" in node.stderr()
    finally:
        stop_all([node])


async def test_drain_and_set_commands_need_an_admin_key_with_curve(
    make_node: MakeNode, tmp_path: Path
) -> None:
    keys = CurveKeys(tmp_path)
    a = make_node("a", **keys.settings("a"))
    await a.start()

    def as_(name: str) -> list[str]:
        return [
            *_static(a.options.cluster, f"{a.endpoint};a"),
            "--node-id",
            name,
            "--curve-secret-key",
            str(keys.dir / f"{name}.key_secret"),
            "--curve-trust-dir",
            str(keys.trust),
        ]

    code, out, err = await _command(tmp_path, "ops-set", "set", "a", "weight=4", *as_("ops"))
    assert code == 3, (out, err)
    assert "PERMISSION_DENIED" in err and "not an admin key" in err
    code, out, err = await _command(tmp_path, "ops-drain", "drain", "a", *as_("ops"))
    assert code == 3, (out, err)
    assert a.options.weight == 1 and a.healthy
    code, out, err = await _command(tmp_path, "boss-set", "set", "a", "weight=4", *as_("boss"))
    assert code == 0, err
    assert a.options.weight == 4
    code, out, err = await _command(tmp_path, "boss-drain", "drain", "a", *as_("boss"))
    assert code == 0, err
    async with asyncio.timeout(20):
        await a.wait_closed()

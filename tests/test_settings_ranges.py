"""Every numeric setting has a stated range: a value outside it, or not finite, is a
``ConfigError`` when the node (or its options) is built, naming the setting and the range;
and a ``start()`` that fails anyway releases every socket and the ZeroMQ context.

Out-of-range values used to be taken and fail late: ``request_timeout=nan`` failed every
later ``send()``, ``heartbeat_interval=1e-9`` flooded the cluster, ``weight=2**70``
killed the heartbeat task, ``max_in_flight=2**31`` made ``start()`` raise and leave a
socket open, on which the context's ``term()`` then waited forever.
"""

from __future__ import annotations

import asyncio
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import zmq
from _procs import python, run
from conftest import MakeNode, catga_tasks, member, parts, wait_until

from catga_zmq import ConfigError, MemoryDiscovery, MemoryHub, Node, NodeOptions
from catga_zmq._cli import settings_from_argv
from catga_zmq.config import options_from_env, options_from_toml, settings
from catga_zmq.discovery.base import Candidate
from catga_zmq.membership import NodeStatus

NAN = math.nan
INF = math.inf

#: Each numeric setting's range, as the error states it.
RANGES = {
    "port": "0 to 65535",
    "pub_port": "0 to 65535",
    "heartbeat_interval": "0.01 to 3600 s",
    "suspect_after": "0.001 to 3600 s",
    "acceptable_pause": "0 to 3600 s",
    "phi_threshold": "more than 0, up to 1000",
    "faulted_after": "0.001 to 3600 s",
    "breaker_threshold": "1 to 1000000",
    "breaker_cooldown": "0.001 to 3600 s",
    "request_timeout": "0.001 to 3600 s",
    "drain_timeout": "0 to 3600 s",
    "max_message_size": "1 to 2147483647 bytes",
    "max_concurrency": "1 to 1000000",
    "max_in_flight": "1 to 1000000",
    "weight": "0 to 1000000",
    "max_peers": "1 to 16000",
    "max_addresses": "1 to 1000000",
}

#: The bad settings found taken, or failing late, and at least one past each end of
#: every range.
BAD: list[tuple[str, Any]] = [
    # found accepted
    ("request_timeout", NAN),
    ("request_timeout", INF),
    ("drain_timeout", NAN),
    ("acceptable_pause", NAN),
    ("phi_threshold", NAN),
    ("breaker_cooldown", NAN),
    ("heartbeat_interval", 1e-9),
    ("weight", 2**70),
    ("max_in_flight", 2**31),
    ("max_message_size", 2**63),
    # each end of each range
    ("port", -1),
    ("port", 65536),
    ("pub_port", -1),
    ("pub_port", 65536),
    ("heartbeat_interval", 0.009),
    ("heartbeat_interval", NAN),
    ("heartbeat_interval", INF),
    ("suspect_after", 0.0),
    ("suspect_after", NAN),
    ("suspect_after", 3601.0),
    ("acceptable_pause", -0.1),
    ("acceptable_pause", INF),
    ("phi_threshold", 0.0),
    ("phi_threshold", 1000.5),
    ("phi_threshold", INF),
    ("faulted_after", NAN),
    ("faulted_after", INF),
    ("faulted_after", 3601.0),
    ("breaker_threshold", 0),
    ("breaker_threshold", 1_000_001),
    ("breaker_cooldown", 0.0),
    ("breaker_cooldown", INF),
    ("request_timeout", 0.0001),
    ("request_timeout", -INF),
    ("request_timeout", 3601.0),
    ("drain_timeout", -1.0),
    ("drain_timeout", INF),
    ("max_message_size", 0),
    ("max_message_size", 2**31),
    ("max_concurrency", 0),
    ("max_concurrency", 1_000_001),
    ("max_concurrency", 2**64),
    ("max_in_flight", 0),
    ("max_in_flight", 1_000_001),
    ("weight", -1),
    ("weight", 1_000_001),
    ("max_peers", 0),
    ("max_peers", 16_001),
    ("max_addresses", 0),
    ("max_addresses", 1_000_001),
]


def _id(case: tuple[str, Any]) -> str:
    return f"{case[0]}={case[1]!r}"


def test_every_numeric_setting_has_a_range() -> None:
    numeric = [s.name for s in settings() if s.type_name in ("int", "float")]
    assert numeric == list(RANGES)
    assert {s.name: s.range for s in settings() if s.range} == RANGES


@pytest.mark.parametrize("case", BAD, ids=_id)
def test_node_refuses_a_value_out_of_range(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(ConfigError) as info:
        Node("a", discovery=None, **{name: value})
    assert info.value.code == "CONFIG_INVALID"
    assert f"{name}={value!r} is out of range; use {RANGES[name]}" in info.value.message


@pytest.mark.parametrize("case", BAD, ids=_id)
def test_options_built_directly_are_checked_too(case: tuple[str, Any]) -> None:
    # NodeOptions(...) itself checks nothing (a msgspec Struct): validated() must, and
    # Node(options=...) calls it.
    name, value = case
    options = NodeOptions(**{name: value})
    with pytest.raises(ConfigError) as info:
        options.validated()
    assert f"{name}={value!r} is out of range; use {RANGES[name]}" in info.value.message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("request_timeout", "nan"),
        ("request_timeout", "inf"),
        ("heartbeat_interval", "1e-9"),
        ("weight", str(2**70)),
        ("max_in_flight", str(2**31)),
        ("max_message_size", str(2**63)),
        ("phi_threshold", "0"),
    ],
)
def test_flags_and_variables_name_themselves(name: str, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        settings_from_argv([flag, text])
    assert f"{flag} {text!r} is out of range; use {RANGES[name]}" in info.value.message
    env = "CATGA_" + name.upper()
    with pytest.raises(ConfigError) as info:
        options_from_env({env: text})
    assert f"{env}={text!r} is out of range; use {RANGES[name]}" in info.value.message


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_toml_nan_and_inf_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catga.toml"
    path.write_text(f"[node]\nrequest_timeout = {text}\n")
    with pytest.raises(ConfigError) as info:
        options_from_toml(path)
    assert "catga.toml" in info.value.message
    assert "request_timeout=" in info.value.message
    assert "is out of range; use 0.001 to 3600 s" in info.value.message


def test_node_id_with_a_final_newline_is_refused() -> None:
    # re's "$" matches before a final newline: "abc\n" passed a ^...$ pattern.
    for node_id in ("abc\n", "abc\r\n", "\nabc"):
        with pytest.raises(ConfigError, match="node_id") as info:
            Node(node_id, discovery=None)
        assert repr(node_id) in info.value.message
    assert Node("abc", discovery=None).node_id == "abc"


#: The ends of every range, in two sets that each satisfy the checks between settings
#: (heartbeat_interval < suspect_after < faulted_after).
LOW_ENDS: dict[str, Any] = {
    "port": 0,
    "pub_port": 0,
    "heartbeat_interval": 0.01,
    "suspect_after": 0.02,
    "acceptable_pause": 0.0,
    "phi_threshold": 1e-9,
    "faulted_after": 0.03,
    "breaker_threshold": 1,
    "breaker_cooldown": 0.001,
    "request_timeout": 0.001,
    "drain_timeout": 0.0,
    "max_message_size": 1,
    "max_concurrency": 1,
    "max_in_flight": 1,
    "weight": 0,
    "max_peers": 1,
    "max_addresses": 1,
}
HIGH_ENDS: dict[str, Any] = {
    "port": 65535,
    "pub_port": 65534,
    "heartbeat_interval": 3599.0,
    "suspect_after": 3599.5,
    "acceptable_pause": 3600.0,
    "phi_threshold": 1000.0,
    "faulted_after": 3600.0,
    "breaker_threshold": 1_000_000,
    "breaker_cooldown": 3600.0,
    "request_timeout": 3600.0,
    "drain_timeout": 3600.0,
    "max_message_size": 2**31 - 1,
    "max_concurrency": 1_000_000,
    "max_in_flight": 1_000_000,
    "weight": 1_000_000,
    "max_peers": 16_000,
    "max_addresses": 1_000_000,
}


@pytest.mark.parametrize("ends", [LOW_ENDS, HIGH_ENDS], ids=["low", "high"])
def test_the_ends_of_each_range_are_accepted(ends: dict[str, Any]) -> None:
    assert set(ends) == set(RANGES)
    options = Node("a", discovery=None, **ends).options
    assert {name: getattr(options, name) for name in ends} == ends


async def test_nodes_at_the_top_of_the_ranges_run(make_node: MakeNode) -> None:
    # The upper ends fit what libzmq (int32 options) and the wire (heartbeats carry the
    # weight) take: such nodes start, see each other and answer.
    top = {
        "max_peers": 16_000,  # the context's socket limit, 64,064, fits libzmq's
        "max_message_size": 2**31 - 1,
        "max_in_flight": 1_000_000,
        "max_concurrency": 1_000_000,
        "breaker_threshold": 1_000_000,
        "weight": 1_000_000,
        "routing": "weighted",
    }
    a, b = make_node("a", **top), make_node("b", **top)
    await a.start()
    await b.start()
    await wait_until(lambda: _alive(a, "b") and _alive(b, "a"), timeout=30.0)
    assert a.healthy and b.healthy


def _alive(node: Node, other: str) -> bool:
    try:
        return member(node, other).status is NodeStatus.ALIVE
    except KeyError:
        return False


# a failed start -------------------------------------------------------------------------


class RegisterFails(MemoryDiscovery):
    """In-memory discovery whose ``register()`` fails the way no one planned for."""

    async def register(self, me: Candidate) -> None:
        raise RuntimeError("the directory is down")


async def test_a_start_failing_after_bind_releases_its_sockets_and_context() -> None:
    node = Node("a", discovery=RegisterFails(MemoryHub()))
    with pytest.raises(RuntimeError, match="the directory is down"):
        await node.start()
    assert node.state == "closed"
    transport = parts(node).transport
    assert transport.ctx.closed
    # The ports are free again: nothing of the node still holds them.
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(node.endpoint)
        sock.close(0)


class CloseHangs(RegisterFails):
    """...whose goodbye then takes long, so that a caller gives up on the start in it."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.closing = asyncio.Event()

    async def aclose(self) -> None:
        self.closing.set()
        await asyncio.sleep(60)


async def test_a_failed_start_cancelled_in_its_teardown_still_releases_everything() -> None:
    # As asyncio.wait_for(node.start(), ...) does when the discovery's goodbye is slow.
    discovery = CloseHangs(MemoryHub())
    node = Node("a", discovery=discovery)
    starting = asyncio.create_task(node.start())
    await asyncio.wait_for(discovery.closing.wait(), 10.0)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    ctx = parts(node).transport.ctx
    try:
        assert node.state == "closed"
        assert ctx.closed
        assert catga_tasks() == []
        await node.aclose()  # closed already: a no-op
        assert node.state == "closed"
    finally:  # should this fail, an open context would hang the rest of the session
        ctx.destroy(0)


#: A child that fails a start three ways, collects its garbage and exits: a socket left
#: open makes the context's term() wait forever, in start() or in a later collection.
FAILED_STARTS = textwrap.dedent(
    """
    import asyncio, gc, sys
    import msgspec, zmq
    from catga_zmq import MemoryDiscovery, MemoryHub, Node

    class RegisterFails(MemoryDiscovery):
        async def register(self, me):
            raise RuntimeError("the directory is down")

    async def fail(node):
        try:
            await node.start()
        except BaseException as exc:
            print("start raised", type(exc).__name__, flush=True)
        else:
            sys.exit("start did not fail")

    async def main():
        await fail(Node("a", discovery=RegisterFails(MemoryHub())))
        # Options set behind validation's back: setsockopt raises on the first socket,
        # which has no name yet when it does.
        node = Node("b", discovery=None)
        node.options = msgspec.structs.replace(node.options, max_in_flight=2**31)
        await fail(node)
        # A start given up on while its teardown waits for the discovery's goodbye.
        closing = asyncio.Event()

        class CloseHangs(RegisterFails):
            async def aclose(self):
                closing.set()
                await asyncio.sleep(60)

        starting = asyncio.create_task(fail(Node("c", discovery=CloseHangs(MemoryHub()))))
        await asyncio.wait_for(closing.wait(), 10)
        starting.cancel()
        await starting

    asyncio.run(main())
    gc.collect()
    contexts = [o for o in gc.get_objects() if isinstance(o, zmq.Context)]
    print("contexts", len(contexts), "open", sum(not c.closed for c in contexts), flush=True)
    """
)


def test_failed_starts_leave_nothing_that_hangs_collection_or_exit() -> None:
    done = run(python("-c", FAILED_STARTS), timeout=60.0)  # a hang: killed, and a failure
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "start raised RuntimeError",
        "start raised OverflowError",
        "start raised CancelledError",
    ], done.stdout
    assert lines[3].startswith("contexts ") and lines[3].endswith(" open 0"), done.stdout

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
    "dns_port": "0 to 65535",
    "dns_interval": "0.1 to 3600 s",
    "redis_refresh_interval": "0.05 to 3600 s",
    "redis_ttl": "0.2 to 3600 s",
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
    "max_inbound_bytes": "1 to 2147483647 bytes",
    "max_concurrency": "1 to 1000000",
    "max_in_flight": "1 to 1000000",
    "weight": "0 to 1000000",
    "max_peers": "1 to 8000",
    "max_addresses": "1 to 1000000",
    "metrics_port": "0 to 65535",
    "compression_threshold": "64 to 2147483647 bytes",
    "compression_level": "1 to 19",
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
    ("dns_port", -1),
    ("dns_port", 65536),
    ("dns_interval", 0.09),
    ("dns_interval", 3601.0),
    ("dns_interval", NAN),
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
    ("max_inbound_bytes", 0),
    ("max_inbound_bytes", 2**31),
    ("max_concurrency", 0),
    ("max_concurrency", 1_000_001),
    ("max_concurrency", 2**64),
    ("max_in_flight", 0),
    ("max_in_flight", 1_000_001),
    ("weight", -1),
    ("weight", 1_000_001),
    ("max_peers", 0),
    ("max_peers", 8_001),
    ("max_addresses", 0),
    ("max_addresses", 1_000_001),
    ("redis_refresh_interval", 0.04),
    ("redis_refresh_interval", NAN),
    ("redis_ttl", 0.1),
    ("redis_ttl", INF),
    ("metrics_port", -1),
    ("metrics_port", 65536),
    ("compression_threshold", 63),
    ("compression_threshold", 2**31),
    ("compression_level", 0),
    ("compression_level", 20),
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
#: (heartbeat_interval < suspect_after < faulted_after; redis_ttl more than twice
#: redis_refresh_interval).
LOW_ENDS: dict[str, Any] = {
    "port": 0,
    "pub_port": 0,
    "dns_port": 0,
    "dns_interval": 0.1,
    "redis_refresh_interval": 0.05,
    "redis_ttl": 0.2,
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
    "max_inbound_bytes": 1,
    "max_concurrency": 1,
    "max_in_flight": 1,
    "weight": 0,
    "max_peers": 1,
    "max_addresses": 1,
    "metrics_port": 0,
    "compression_threshold": 64,
    "compression_level": 1,
}
HIGH_ENDS: dict[str, Any] = {
    "port": 65535,
    "pub_port": 65534,
    "dns_port": 65535,
    "dns_interval": 3600.0,
    "redis_refresh_interval": 1000.0,
    "redis_ttl": 3600.0,
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
    "max_inbound_bytes": 2**31 - 1,
    "max_concurrency": 1_000_000,
    "max_in_flight": 1_000_000,
    "weight": 1_000_000,
    "max_peers": 8_000,
    "max_addresses": 1_000_000,
    "metrics_port": 65533,
    "compression_threshold": 2**31 - 1,
    "compression_level": 19,
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
        "max_peers": 8_000,  # the context's socket limit, 57,088, fits libzmq's
        "max_message_size": 2**31 - 1,
        "max_inbound_bytes": 2**31 - 1,
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


# text, list and table settings ------------------------------------------------------------

#: Text, list and table settings that were taken: a newline or a NUL, control
#: characters, absurd lengths, too many entries. (discovery and routing are choice lists.)
HUGE = "x" * 1_000_000
BAD_TEXT: list[tuple[str, Any]] = [
    ("node_id", "abc\n"),
    ("node_id", "a\x00b"),
    ("node_id", "x" * 65),
    ("cluster", "shop\n"),
    ("cluster", "sh\x00op"),
    ("cluster", "shop\x1b[31m"),
    ("cluster", "shop\u2028"),
    ("cluster", HUGE),
    ("bind", "127.0.0.1\n"),
    ("bind", "127.0.0.1\x00"),
    ("bind", "local host"),
    ("bind", ""),
    ("bind", "h" * 254),
    ("advertise", "host\n"),
    ("advertise", "h" * 254),
    ("log_level", "info\n"),
    ("log_level", "INFO\x00"),
    ("log_level", "verbose"),
    ("log_level", HUGE),
    ("seeds", ["tcp://127.0.0.1:1\n"]),
    ("seeds", ["tcp://127.0.0.1:1\x00"]),
    ("seeds", ["tcp://" + "h" * 300 + ":1"]),
    ("seeds", [f"tcp://127.0.0.1:{i}" for i in range(1, 1026)]),
    ("metadata", {"zone\n": "a"}),
    ("metadata", {"": "a"}),
    ("metadata", {"-zone": "a"}),
    ("metadata", {"zo ne": "a"}),
    ("metadata", {"k" * 65: "a"}),
    ("metadata", {"zone": "a\n"}),
    ("metadata", {"zone": "a\x00"}),
    ("metadata", {"zone": "v" * 1025}),
    ("metadata", {f"k{i}": "v" for i in range(257)}),
    ("metadata", {f"k{i}": "v" for i in range(100_000)}),
]

#: What the error says is allowed, for each.
ALLOWED = {
    "node_id": "use empty, or 1-64 letters, digits",
    "cluster": "use 1-63 characters, no control characters",
    "bind": "use a host name, an IPv4 or IPv6 address or *, up to 253",
    "advertise": "use empty, or a host name",
    "log_level": "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    "seeds": "use at most 1024 endpoints tcp://HOST:PORT, each up to 300 characters",
    "metadata": "use at most 256 KEY=VALUE pairs; each key 1-64 letters",
}


def _text_id(case: tuple[str, Any]) -> str:
    name, value = case
    return f"{name}={_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 40 else f"{text[:30]}...{len(value)}"


@pytest.mark.parametrize("case", BAD_TEXT, ids=_text_id)
def test_node_refuses_bad_text_settings(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(ConfigError) as info:
        Node("a" if name != "node_id" else value, discovery=None, **_other(name, value))
    message = info.value.message
    assert info.value.code == "CONFIG_INVALID"
    assert message.startswith(f"{name}="), message
    assert "is not allowed; " + ALLOWED[name] in message
    assert len(message) < 600  # a megabyte value is not repeated whole


def _other(name: str, value: Any) -> dict[str, Any]:
    return {} if name == "node_id" else {name: value}


@pytest.mark.parametrize("case", BAD_TEXT[:3], ids=_text_id)
def test_text_settings_built_directly_are_checked_too(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(ConfigError, match="is not allowed"):
        NodeOptions(**{name: value}).validated()


def test_text_settings_within_bounds_are_accepted() -> None:
    metadata = {f"k{i:03}.a/b_c-{'d' * 50}": "v" * 1024 for i in range(256)}
    options = Node(
        "n" * 64,
        cluster="zoné 1" + "c" * 57,
        bind="::1",
        advertise="fe80::1%eth0",
        log_level="warning",
        seeds=["tcp://127.0.0.1:1", "tcp://[::1]:2"],
        metadata=metadata,
        discovery=None,
    ).options
    assert len(options.cluster) == 63 and options.log_level == "warning"
    assert options.metadata == metadata


@pytest.mark.parametrize(
    ("name", "flag_args", "env_text", "toml_text"),
    [
        ("node_id", ["--node-id", "abc\n"], "abc\n", '"abc\\n"'),
        ("cluster", ["--cluster", "a\x1bb"], "a\x1bb", '"a\\u001bb"'),
        ("log_level", ["--log-level", "info\n"], "info\n", '"info\\n"'),
        ("bind", ["--bind", "h" * 300], "h" * 300, '"' + "h" * 300 + '"'),
        ("metadata", ["--metadata", "zone=a\x00"], "zone=a\x00", '{ zone = "a\\u0000" }'),
        (
            "metadata",
            ["--metadata", ",".join(f"k{i}=v" for i in range(300))],
            ",".join(f"k{i}=v" for i in range(300)),
            "{ " + ", ".join(f'k{i} = "v"' for i in range(300)) + " }",
        ),
    ],
    ids=["node_id", "cluster", "log_level", "bind", "metadata-nul", "metadata-300"],
)
def test_flags_variables_and_toml_take_the_same_rule(
    tmp_path: Path, name: str, flag_args: list[str], env_text: str, toml_text: str
) -> None:
    # settings() gives one rule to all three: each names the setting as it was written.
    with pytest.raises(ConfigError) as info:
        settings_from_argv(flag_args)
    assert info.value.message.startswith(f"{flag_args[0]} "), info.value.message
    assert "is not allowed; " + ALLOWED[name] in info.value.message
    env = "CATGA_" + name.upper()
    with pytest.raises(ConfigError) as info:
        options_from_env({env: env_text})
    assert info.value.message.startswith(f"{env}="), info.value.message
    assert "is not allowed; " + ALLOWED[name] in info.value.message
    path = tmp_path / "catga.toml"
    path.write_text(f"[node]\n{name} = {toml_text}\n")
    with pytest.raises(ConfigError) as info:
        options_from_toml(path)
    assert "catga.toml" in info.value.message and f"{name}=" in info.value.message
    assert "is not allowed; " + ALLOWED[name] in info.value.message


def test_metadata_that_makes_heartbeats_too_large_is_refused_at_construction() -> None:
    # 200 values of 1,000 characters: about 200 KB in every heartbeat, over a
    # max_message_size of 100 KB that peers (of the same settings) take.
    metadata = {f"k{i}": "v" * 1000 for i in range(200)}
    with pytest.raises(ConfigError) as info:
        Node("a", discovery=None, metadata=metadata, max_message_size=100_000)
    message = info.value.message
    assert "metadata makes this node's heartbeats up to" in message
    assert "over max_message_size=100000 bytes" in message
    assert Node("a", discovery=None, metadata=metadata).options.metadata == metadata


async def test_the_largest_metadata_allowed_reaches_the_peers(make_node: MakeNode) -> None:
    # What config takes, the wire takes: the receivers' bounds are the same.
    metadata = {f"k{i:03}-{'x' * 59}": "v" * 1024 for i in range(256)}
    a, b = make_node("a", metadata=metadata), make_node("b")
    await a.start()
    await b.start()
    await wait_until(lambda: _alive(b, "a"), timeout=30.0)
    assert member(b, "a").metadata == metadata
    assert b.stats().frames_rejected == 0

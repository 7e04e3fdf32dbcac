"""NodeOptions: defaults, validation messages, environment and TOML loading, precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from catga_zmq import ConfigError, Node, NodeOptions
from catga_zmq.config import options_from_env, options_from_toml, parse_endpoint


def test_defaults_validate() -> None:
    opts = NodeOptions().validated()
    assert opts.node_id  # filled in: host-pid-random
    assert opts.bind == "127.0.0.1"  # safe default: loopback only
    assert opts.heartbeat_interval < opts.suspect_after < opts.faulted_after
    assert opts.discovery == "mdns"


def test_default_node_ids_differ() -> None:
    assert NodeOptions().validated().node_id != NodeOptions().validated().node_id


def test_validated_keeps_a_given_node_id() -> None:
    assert NodeOptions(node_id="users-1").validated().node_id == "users-1"


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"port": 70000}, ["port", "70000"]),
        ({"pub_port": -1}, ["pub_port"]),
        ({"port": 5555, "pub_port": 5555}, ["port", "pub_port"]),
        ({"heartbeat_interval": 0}, ["heartbeat_interval"]),
        ({"request_timeout": -1.0}, ["request_timeout"]),
        ({"drain_timeout": -1.0}, ["drain_timeout"]),
        ({"suspect_after": 3.0, "faulted_after": 3.0}, ["suspect_after", "faulted_after"]),
        ({"suspect_after": 4.0, "faulted_after": 3.0}, ["suspect_after", "faulted_after"]),
        ({"heartbeat_interval": 2.0}, ["heartbeat_interval", "suspect_after"]),
        ({"seeds": ["localhost:5"]}, ["localhost:5", "tcp://HOST:PORT"]),
        ({"seeds": ["tcp://127.0.0.1:0"]}, ["tcp://127.0.0.1:0"]),
        ({"discovery": "static"}, ["static", "seed"]),
        ({"log_level": "LOUD"}, ["log_level", "LOUD"]),
        ({"node_id": "has space"}, ["node_id", "has space"]),
        ({"node_id": "-leading-dash"}, ["node_id"]),
        ({"cluster": ""}, ["cluster"]),
        ({"cluster": "c" * 64}, ["cluster"]),
        ({"max_concurrency": 0}, ["max_concurrency"]),
        ({"max_in_flight": 0}, ["max_in_flight"]),
        ({"max_message_size": 0}, ["max_message_size"]),
        ({"weight": -1}, ["weight"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_bad_values_name_the_setting(settings: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        NodeOptions(**settings).validated()
    assert info.value.code == "CONFIG_INVALID"
    for name in names:
        assert name in info.value.message, (name, info.value.message)


def test_boundary_values_are_accepted() -> None:
    opts = NodeOptions(
        port=65535,
        pub_port=0,
        weight=0,
        drain_timeout=0,
        log_level="debug",
        seeds=["tcp://[::1]:1", "tcp://host.example:65535"],
        discovery="static",
    ).validated()
    assert opts.port == 65535


def test_node_rejects_bad_settings_at_construction() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        Node("a", heartbeat_interval=0, discovery=None)
    with pytest.raises(ConfigError, match="colour"):
        Node("a", colour="blue", discovery=None)
    with pytest.raises(ConfigError, match="port"):
        Node("a", port="high", discovery=None)


# endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "parsed"),
    [
        ("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)),
        ("tcp://[::1]:1", ("::1", 1)),
        ("tcp://users-1.local:65535", ("users-1.local", 65535)),
    ],
)
def test_parse_endpoint(endpoint: str, parsed: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == parsed


@pytest.mark.parametrize(
    "endpoint",
    [
        "localhost:5",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://127.0.0.1:65536",
        "udp://h:1",
        "",
    ],
)
def test_parse_endpoint_rejects(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        parse_endpoint(endpoint)


# environment ---------------------------------------------------------------------------


def test_options_from_env() -> None:
    env = {
        "CATGA_PORT": "5555",
        "CATGA_SEEDS": "tcp://127.0.0.1:1, tcp://127.0.0.1:2,",
        "CATGA_HEARTBEAT_INTERVAL": "0.25",
        "CATGA_DISCOVERY": "static",
        "OTHER_PORT": "1",
        "CATGA_METADATA": "ignored",
    }
    found = options_from_env(env)
    assert found == {
        "port": 5555,
        "seeds": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
        "heartbeat_interval": 0.25,
        "discovery": "static",
    }
    assert isinstance(found["port"], int)
    opts = NodeOptions().merged(found).validated()
    assert opts.port == 5555 and opts.seeds == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]


def test_options_from_env_empty() -> None:
    assert options_from_env({}) == {}
    assert options_from_env({"PORT": "1"}) == {}


def test_options_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATGA_CLUSTER", "shop")
    assert options_from_env()["cluster"] == "shop"


def test_options_from_env_bad_type_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"port") as info:
        options_from_env({"CATGA_PORT": "lots"})
    assert "CATGA_" in info.value.message  # says where the value came from


def test_options_from_env_bad_choice() -> None:
    with pytest.raises(ConfigError, match="discovery"):
        options_from_env({"CATGA_DISCOVERY": "carrier-pigeon"})


# TOML ------------------------------------------------------------------------------------


def test_options_from_toml_node_table(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text(
        '[node]\nnode_id = "users-1"\nport = 6000\nheartbeat_interval = 1\n'
        'seeds = ["tcp://127.0.0.1:1"]\n[node.metadata]\nzone = "a"\n\n[other]\nport = 1\n'
    )
    table = options_from_toml(path)
    assert table["port"] == 6000 and table["node_id"] == "users-1"
    opts = NodeOptions().merged(table).validated()
    assert opts.port == 6000
    assert opts.heartbeat_interval == 1.0
    assert opts.metadata == {"zone": "a"}
    assert opts.seeds == ["tcp://127.0.0.1:1"]


def test_options_from_toml_top_level(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text('cluster = "shop"\nrouting = "local_first"\n')
    assert options_from_toml(str(path)) == {"cluster": "shop", "routing": "local_first"}


def test_toml_wrong_type_names_the_setting_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[node]\nport = "high"\n')
    with pytest.raises(ConfigError) as info:
        options_from_toml(path)
    assert "port" in info.value.message
    assert "bad.toml" in info.value.message


def test_toml_unknown_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[node]\ncolour = 1\n")
    with pytest.raises(ConfigError, match="colour"):
        options_from_toml(path)


def test_toml_node_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('node = "users-1"\n')
    with pytest.raises(ConfigError, match=r"\[node\] must be a table"):
        options_from_toml(path)


def test_toml_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[node\nport = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        options_from_toml(path)


def test_toml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        options_from_toml(tmp_path / "nope.toml")


# precedence --------------------------------------------------------------------------------


def test_precedence_defaults_app_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text('[node]\nport = 6000\npub_port = 6001\ncluster = "from-file"\nweight = 3\n')
    app = NodeOptions(node_id="app", cluster="from-app", port=5000, weight=2)
    env = options_from_env({"CATGA_PORT": "7000", "CATGA_LOG_LEVEL": "DEBUG"})
    flags = {"log_level": "ERROR"}
    opts = app.merged(options_from_toml(path)).merged(env).merged(flags).validated()
    assert opts.node_id == "app"  # only the app set it
    assert opts.cluster == "from-file"  # file over app
    assert opts.weight == 3  # file over app
    assert opts.pub_port == 6001  # file over default
    assert opts.port == 7000  # env over file
    assert opts.log_level == "ERROR"  # flags over env
    assert opts.request_timeout == NodeOptions().request_timeout  # nobody set it


def test_merged_type_checks() -> None:
    with pytest.raises(ConfigError, match="port"):
        NodeOptions().merged({"port": "5555"})  # a string is not an int outside env
    with pytest.raises(ConfigError, match="nope"):
        NodeOptions().merged({"nope": 1})


def test_merged_with_nothing_is_the_same_object() -> None:
    opts = NodeOptions(port=1)
    assert opts.merged({}) is opts
    assert opts.merged({"port": 2}).port == 2
    assert opts.port == 1  # merged returns a copy


def test_configure_before_start_only() -> None:
    node = Node("a", discovery=None)
    node.configure(port=6123, request_timeout=2.0)
    assert node.options.port == 6123 and node.options.request_timeout == 2.0
    with pytest.raises(ConfigError, match="request_timeout"):
        node.configure(request_timeout=0)


def test_bad_seed_message_names_the_seeds_setting() -> None:
    with pytest.raises(ConfigError, match="seed") as info:
        NodeOptions(seeds=["localhost:5"]).validated()
    assert "localhost:5" in info.value.message

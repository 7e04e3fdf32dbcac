"""NodeOptions: defaults, validation messages, environment and TOML loading, precedence."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from catga_zmq import ConfigError, Node, NodeOptions
from catga_zmq._cli import settings_from_argv
from catga_zmq.config import options_from_env, options_from_toml, parse_endpoint, settings


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
        ({"discovery": "redis"}, ["redis", "redis_url"]),
        ({"redis_url": "redis://127.0.0.1:x/0"}, ["redis_url", "redis://HOST:PORT/DB"]),
        ({"redis_ttl": 1.0, "redis_refresh_interval": 0.5}, ["redis_ttl", "redis_refresh"]),
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
        ("tcp://[2001:db8::5]:80", ("2001:db8::5", 80)),
        ("tcp://[::ffff:127.0.0.1]:5555", ("::ffff:127.0.0.1", 5555)),
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


@pytest.mark.parametrize("endpoint", ["tcp://::1:5555", "tcp://[::1:5555", "tcp://[]:5555"])
def test_parse_endpoint_ipv6_needs_brackets(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"tcp://\[::1\]:5555"):
        parse_endpoint(endpoint)


# environment ---------------------------------------------------------------------------


def test_options_from_env() -> None:
    env = {
        "CATGA_PORT": "5555",
        "CATGA_SEEDS": "tcp://127.0.0.1:1, tcp://127.0.0.1:2,",
        "CATGA_HEARTBEAT_INTERVAL": "0.25",
        "CATGA_DISCOVERY": "static",
        "OTHER_PORT": "1",
        "CATGA_METADATA": "zone=a, rack=3",
    }
    found = options_from_env(env)
    assert found == {
        "port": 5555,
        "seeds": ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"],
        "heartbeat_interval": 0.25,
        "discovery": "static",
        "metadata": {"zone": "a", "rack": "3"},
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


def test_options_from_env_bad_type_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CATGA_PORT='lots'") as info:
        options_from_env({"CATGA_PORT": "lots"})
    assert "int" in info.value.message  # says what it should be


def test_options_from_env_bad_choice() -> None:
    with pytest.raises(ConfigError, match="CATGA_DISCOVERY='carrier-pigeon' is not one of"):
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


# every setting: a flag, an environment variable, a TOML key ------------------------------


def _sample(name: str, kind: Any, default: Any) -> tuple[Any, list[str], str, str]:
    """A value other than the default, as (value, flag arguments, env text, TOML text)."""
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(kind) is typing.Literal:
        value = next(c for c in typing.get_args(kind) if c != default)
        return value, [flag, value], value, f'"{value}"'
    if kind is str:
        value = "debug" if name == "log_level" else f"{name}-x"
        return value, [flag, value], value, f'"{value}"'
    if kind is int:
        return default + 3, [flag, str(default + 3)], str(default + 3), str(default + 3)
    if kind is float:
        value = default + 0.25
        return value, [flag, str(value)], str(value), str(value)
    if kind is bool:
        # TOML writes true and false in lower case only.
        text = str(not default).lower()
        return not default, [flag, text], str(not default), text
    if typing.get_origin(kind) is list:
        items = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
        return items, [flag, items[0], flag, items[1]], ",".join(items), repr(items)
    if typing.get_origin(kind) is dict:
        pairs = {"zone": "a", "rack": "3"}
        args = [flag, "zone=a", flag, "rack=3"]
        return pairs, args, "zone=a,rack=3", '{ zone = "a", rack = "3" }'
    raise AssertionError(f"no sample for {name}: {kind}")


_HINTS = typing.get_type_hints(NodeOptions)


@pytest.mark.parametrize("name", NodeOptions.__struct_fields__)
def test_every_setting_has_a_flag_an_env_var_and_a_toml_key(name: str, tmp_path: Path) -> None:
    default = getattr(NodeOptions(), name)
    value, args, env_text, toml_text = _sample(name, _HINTS[name], default)
    assert value != default
    from_flags = NodeOptions().merged(settings_from_argv(args))
    from_env = NodeOptions().merged(options_from_env({"CATGA_" + name.upper(): env_text}))
    path = tmp_path / "catga.toml"
    path.write_text(f"[node]\n{name} = {toml_text}\n")
    from_toml = NodeOptions().merged(options_from_toml(path))
    assert getattr(from_flags, name) == value, args
    assert getattr(from_env, name) == value, env_text
    assert getattr(from_toml, name) == value, toml_text


def test_list_and_dict_flags_also_take_commas() -> None:
    found = settings_from_argv(
        ["--seeds", "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "--metadata", "zone=a,rack=3"]
    )
    assert found["seeds"] == ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]
    assert found["metadata"] == {"zone": "a", "rack": "3"}


def test_id_is_short_for_node_id() -> None:
    assert settings_from_argv(["--id", "users-1"]) == {"node_id": "users-1"}


@pytest.mark.parametrize("text", ["zone", "=a", "zone=a,rack"])
def test_metadata_not_key_value_says_how_to_write_it(text: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE") as info:
        options_from_env({"CATGA_METADATA": text})
    assert "CATGA_METADATA" in info.value.message
    with pytest.raises(ConfigError, match="KEY=VALUE") as info:
        settings_from_argv(["--metadata", text])
    assert "--metadata" in info.value.message


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--port") as info:
        settings_from_argv(["--port", "high"])
    assert "high" in info.value.message


# enum choices and near misses ------------------------------------------------------------


_ROUTINGS = "round_robin, local_first, weighted, consistent_hash, least_connections"


@pytest.mark.parametrize(
    ("load", "label"),
    [
        (lambda: NodeOptions().merged({"routing": "fast"}), "routing='fast'"),
        (lambda: options_from_env({"CATGA_ROUTING": "fast"}), "CATGA_ROUTING='fast'"),
        (lambda: settings_from_argv(["--routing", "fast"]), "--routing 'fast'"),
    ],
    ids=["mapping", "env", "flag"],
)
def test_enum_error_lists_the_choices(load: Callable[[], object], label: str) -> None:
    with pytest.raises(ConfigError) as info:
        load()
    assert f"{label} is not one of {_ROUTINGS}" in info.value.message


def test_enum_error_in_toml_lists_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text('discovery = "carrier-pigeon"\n')
    with pytest.raises(ConfigError) as info:
        options_from_toml(path)
    choices = "mdns, static, memory, dns, redis, none"
    assert f"discovery='carrier-pigeon' is not one of {choices}" in str(info.value)
    assert "catga.toml" in info.value.message


def test_toml_near_miss_says_what_was_meant(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text("[node]\nheartbeat_intervall = 1\n")
    with pytest.raises(ConfigError) as info:
        options_from_toml(path)
    message = info.value.message
    assert "unknown setting 'heartbeat_intervall'" in message
    assert "did you mean 'heartbeat_interval'" in message


def test_toml_unknown_key_says_where_the_settings_are(tmp_path: Path) -> None:
    path = tmp_path / "catga.toml"
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'colour'.*--help"):
        options_from_toml(path)


def test_env_near_miss_says_what_was_meant() -> None:
    with pytest.raises(ConfigError) as info:
        options_from_env({"CATGA_HEARTBEAT_INTERVALL": "1"})
    message = info.value.message
    assert "CATGA_HEARTBEAT_INTERVALL is not a setting" in message
    assert "did you mean CATGA_HEARTBEAT_INTERVAL" in message


def test_env_other_catga_names_are_left_alone() -> None:
    # Variables of other tools (benchmark launchers...) share the prefix.
    assert options_from_env({"CATGA_BENCH_LAUNCHER": "taskset", "CATGA_PORT": "1"}) == {"port": 1}


# docstrings ------------------------------------------------------------------------------


def test_every_setting_is_described() -> None:
    descriptions = {s.name: s.help for s in settings()}
    for name in NodeOptions.__struct_fields__:
        assert len(descriptions.get(name, "")) > 10, name
    assert NodeOptions.__doc__ and "heartbeat_interval" in NodeOptions.__doc__

"""Every setting of a node, its default and its unit, in one place.

Settings come from, lowest to highest precedence: the defaults below, the ``Node``
object of the app (``--app``), a TOML file (``--config``; a ``[node]`` table or the top
level), environment variables (``CATGA_`` + the upper-case name, e.g.
``CATGA_HEARTBEAT_INTERVAL=0.25``), then command-line flags.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError

DiscoveryName = Literal["mdns", "static", "memory", "none"]
RoutingName = Literal[
    "round_robin", "local_first", "weighted", "consistent_hash", "least_connections"
]

ENV_PREFIX = "CATGA_"

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_ENDPOINT = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def default_node_id() -> str:
    return f"{socket.gethostname().split('.')[0][:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class NodeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    node_id: str = ""  # empty: host-pid-random, chosen at construction
    cluster: str = "default"  # nodes of another cluster name are ignored
    bind: str = "127.0.0.1"  # host or IP the ROUTER and PUB sockets bind to
    port: int = 0  # ROUTER port; 0: a free port
    pub_port: int = 0  # PUB (heartbeats and events) port; 0: a free port
    advertise: str = ""  # host peers should connect to; empty: the bind address
    discovery: DiscoveryName = "mdns"
    seeds: list[str] = []  # static discovery: ROUTER endpoints, tcp://host:port
    heartbeat_interval: float = 0.5  # s
    suspect_after: float = 1.25  # s without traffic from a peer: SUSPECT (out of routing)
    acceptable_pause: float = (
        1.5  # s of silence past the usual gap that is no death (GC, busy loop)
    )
    phi_threshold: float = 8.0  # phi-accrual suspicion at which a SUSPECT peer is FAULTED
    faulted_after: float = 5.0  # s without traffic: FAULTED whatever phi says
    breaker_threshold: int = 5  # consecutive failures that isolate a node (circuit OPEN)
    breaker_cooldown: float = 5.0  # s before an isolated node gets one probe request
    request_timeout: float = 5.0  # s, default deadline of send()
    drain_timeout: float = 10.0  # s to finish in-flight work on shutdown
    max_message_size: int = 16 * 1024 * 1024  # bytes; larger frames are refused by libzmq
    max_concurrency: int = 1024  # handlers running at once; past it: OVERLOADED
    max_in_flight: int = 10_000  # this node's own requests awaiting replies
    routing: RoutingName = "round_robin"
    weight: int = 1  # share of traffic under weighted routing; 0: none
    log_level: str = "INFO"
    metadata: dict[str, str] = {}

    def validated(self) -> NodeOptions:
        """Return a copy with derived defaults filled in, or raise ``ConfigError``."""
        opts = self if self.node_id else msgspec.structs.replace(self, node_id=default_node_id())
        if not _NODE_ID.match(opts.node_id):
            raise ConfigError(
                f"node_id {opts.node_id!r} is not valid: use 1-64 letters, digits, '.', '_', ':' "
                "or '-', starting with a letter or digit"
            )
        if not opts.cluster or len(opts.cluster) > 63:
            raise ConfigError(f"cluster {opts.cluster!r} must be 1-63 characters")
        for name in ("port", "pub_port"):
            value = getattr(opts, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name} {value} is out of range; use 0 (any free port) to 65535")
        if opts.port and opts.port == opts.pub_port:
            raise ConfigError(f"port and pub_port are both {opts.port}; they must differ")
        positive = ("heartbeat_interval", "suspect_after", "faulted_after", "request_timeout")
        for name in positive:
            if getattr(opts, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {getattr(opts, name)}")
        if opts.drain_timeout < 0:
            raise ConfigError(f"drain_timeout must be >= 0 seconds, got {opts.drain_timeout}")
        if not opts.heartbeat_interval < opts.suspect_after < opts.faulted_after:
            raise ConfigError(
                "need heartbeat_interval < suspect_after < faulted_after, got "
                f"{opts.heartbeat_interval} / {opts.suspect_after} / {opts.faulted_after} s"
            )
        if opts.acceptable_pause < 0 or opts.phi_threshold <= 0 or opts.breaker_cooldown <= 0:
            raise ConfigError(
                "acceptable_pause must be >= 0 s, phi_threshold > 0 and breaker_cooldown > 0 s"
            )
        for name in ("max_message_size", "max_concurrency", "max_in_flight", "breaker_threshold"):
            if getattr(opts, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(opts, name)}")
        if opts.weight < 0:
            raise ConfigError(f"weight must be >= 0, got {opts.weight}")
        if opts.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                f"log_level {opts.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
            )
        for seed in opts.seeds:
            try:
                parse_endpoint(seed)
            except ConfigError as exc:
                raise ConfigError(f"seeds: {exc.message}") from None
        if opts.discovery == "static" and not opts.seeds:
            raise ConfigError(
                "discovery 'static' needs at least one seed (--seeds tcp://host:port)"
            )
        return opts

    def merged(self, changes: Mapping[str, Any]) -> NodeOptions:
        """Overlay ``changes`` (from a file, the environment or flags), type-checked."""
        if not changes:
            return self
        data = msgspec.structs.asdict(self)
        data.update(changes)
        return options_from_mapping(data, source="settings")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` -> (host, port), or ``ConfigError`` saying what is wrong."""
    m = _ENDPOINT.match(endpoint.strip())
    if not m or not 0 < int(m.group(2)) <= 65535:
        raise ConfigError(
            f"endpoint {endpoint!r} is not usable; write it as tcp://HOST:PORT "
            "(for example tcp://127.0.0.1:5555)"
        )
    return m.group(1).strip("[]"), int(m.group(2))


def options_from_mapping(
    data: Mapping[str, Any], *, source: str, strict: bool = True
) -> NodeOptions:
    """Convert a mapping to ``NodeOptions``; errors name the setting and the source."""
    try:
        return msgspec.convert(dict(data), NodeOptions, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_plain(str(exc))}") from None


def _plain(msg: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; name the setting instead.
    m = re.search(r" - at `\$\.(\w+)`", msg)
    if m:
        return f"{m.group(1)}: {msg[: m.start()]}"
    return msg


def options_from_toml(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file (its ``[node]`` table, or its top level)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    table = doc.get("node", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {str(p)!r}: [node] must be a table")
    options_from_mapping(table, source=f"config file {str(p)!r}")  # type-check early
    return table


_FIELDS = NodeOptions.__struct_fields__


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``CATGA_*`` variables; lists (seeds) are comma separated."""
    env = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None or name == "metadata":
            continue
        found[name] = [s.strip() for s in raw.split(",") if s.strip()] if name == "seeds" else raw
    if found:
        typed = options_from_mapping(found, source="environment (CATGA_*)", strict=False)
        found = {name: getattr(typed, name) for name in found}
    return found

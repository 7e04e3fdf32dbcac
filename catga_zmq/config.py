"""Every setting of a node, its default and its unit, in one place.

Settings come from, lowest to highest precedence: the defaults below, the ``Node``
object of the app (``--app``), a TOML file (``--config``; a ``[node]`` table or the top
level), environment variables, then command-line flags.

Each ``NodeOptions`` field is reachable in every one of those places by one rule
(``settings()`` applies it; nothing else names a flag or a variable):

- TOML key: the field's name (``pub_port = 6001``; lists and tables as TOML has them);
- environment variable: ``CATGA_`` + the upper-case name (``CATGA_PUB_PORT=6001``);
- flag: ``--`` + the name with dashes (``--pub-port 6001``).

In a variable or a flag, a list is comma separated (``--seeds tcp://a:1,tcp://b:1``) and
a table is ``KEY=VALUE`` pairs (``CATGA_METADATA=zone=a,rack=3``); a flag may also be
repeated (``--metadata zone=a --metadata rack=3``).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import socket
import tomllib
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import ConfigError

DiscoveryName = Literal["mdns", "static", "memory", "none"]
RoutingName = Literal[
    "round_robin", "local_first", "weighted", "consistent_hash", "least_connections"
]

ENV_PREFIX = "CATGA_"
#: Short flags for the settings typed most often, besides the one the rule gives.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"node_id": ("--id",)}

# Matched with fullmatch: ``$`` alone also matches before a final newline ("abc\n").
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def _doc(
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    unit: str = "",
) -> msgspec.Meta:
    # The description and the range travel with the field's type: --help and the docs
    # read the description there, and msgspec checks the range wherever settings are
    # converted (a mapping, a TOML file, variables, flags). A range with ``le`` also
    # refuses inf and NaN: NaN fails every comparison.
    if gt is not None:
        return msgspec.Meta(description=text, gt=gt, le=le, extra={"unit": unit})
    return msgspec.Meta(description=text, ge=ge, le=le, extra={"unit": unit})


#: The longest duration a setting takes (s): longer is a typo, and a finite bound keeps
#: inf out of every deadline and sleep.
MAX_DURATION: Final = 3600.0  # s
#: The shortest timeout or cooldown (s): a finite, positive floor.
MIN_DURATION: Final = 0.001  # s
#: The shortest heartbeat interval (s): shorter floods the cluster and the log.
MIN_HEARTBEAT_INTERVAL: Final = 0.01  # s
#: The largest count a capacity or weight setting takes: far past any real need, and
#: within int32, which libzmq's options (HWM) and the wire's integers take.
MAX_COUNT: Final = 1_000_000
#: The largest frame libzmq is told to accept (bytes): int32, as its option takes.
MAX_MESSAGE_SIZE: Final = 2**31 - 1  # bytes
#: ``max_message_size`` when none is set (bytes). Also what a caller assumes of a peer
#: that has not advertised its own (no heartbeat yet, or an older version), when its
#: own is larger: a frame over the receiver's limit costs the whole connection.
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024  # bytes


def default_node_id() -> str:
    """A node id unique on this machine and likely in the cluster: ``host-pid-random``."""
    return f"{socket.gethostname().split('.')[0][:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class NodeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting of a node, by group (each field's description says more):

    - Identity: ``node_id``, ``cluster`` (nodes of another cluster are ignored),
      ``metadata`` (free labels other nodes see).
    - Sockets: ``bind``, ``port`` (ROUTER, requests), ``pub_port`` (PUB, heartbeats and
      events), ``advertise`` (the host peers connect to), ``max_message_size``.
    - Discovery: ``discovery`` (mdns, static, memory or none) and ``seeds`` for static.
    - Failure detection: ``heartbeat_interval``, ``suspect_after``, ``acceptable_pause``,
      ``phi_threshold``, ``faulted_after``.
    - Resilience: ``breaker_threshold``, ``breaker_cooldown``, ``request_timeout``.
    - Capacity: ``max_concurrency`` (handlers at once), ``max_in_flight`` (own requests),
      ``max_peers`` and ``max_addresses`` (peers and addresses kept, so sockets too).
    - Routing: ``routing`` (the strategy) and ``weight`` (share under weighted routing).
    - Lifecycle: ``drain_timeout``, ``log_level``.

    Durations are in seconds, sizes in bytes. Every number has a range, stated next to
    its default; ``validated()`` checks each value against it, then the values together.
    """

    node_id: Annotated[str, _doc("node id; empty: host-pid-random")] = ""
    cluster: Annotated[str, _doc("cluster name; nodes of another cluster are ignored")] = "default"
    bind: Annotated[str, _doc("host or IP (v4 or v6) the ROUTER and PUB sockets bind to")] = (
        "127.0.0.1"
    )
    port: Annotated[int, _doc("ROUTER (requests) port; 0: any free port", ge=0, le=65535)] = 0
    pub_port: Annotated[
        int, _doc("PUB (heartbeats and events) port; 0: any free port", ge=0, le=65535)
    ] = 0
    advertise: Annotated[str, _doc("host peers connect to; empty: the bind address")] = ""
    discovery: Annotated[DiscoveryName, _doc("how nodes find each other")] = "mdns"
    seeds: Annotated[list[str], _doc("static discovery: ROUTER endpoints, tcp://HOST:PORT")] = []
    heartbeat_interval: Annotated[
        float,
        _doc("s between two heartbeats", ge=MIN_HEARTBEAT_INTERVAL, le=MAX_DURATION, unit="s"),
    ] = 0.5
    suspect_after: Annotated[
        float,
        _doc(
            "s without traffic from a peer: SUSPECT (out of routing)",
            ge=MIN_DURATION,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 1.25
    acceptable_pause: Annotated[
        float,
        _doc(
            "s of silence past the usual gap that is no death (GC, busy loop)",
            ge=0,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 1.5
    phi_threshold: Annotated[
        float, _doc("phi-accrual suspicion at which a SUSPECT peer is FAULTED", gt=0, le=1000)
    ] = 8.0
    faulted_after: Annotated[
        float,
        _doc(
            "s without traffic: FAULTED whatever phi says",
            ge=MIN_DURATION,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 5.0
    breaker_threshold: Annotated[
        int, _doc("consecutive failures that isolate a node (circuit OPEN)", ge=1, le=MAX_COUNT)
    ] = 5
    breaker_cooldown: Annotated[
        float,
        _doc(
            "s before an isolated node gets one probe request",
            ge=MIN_DURATION,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 5.0
    request_timeout: Annotated[
        float,
        _doc("s, the default deadline of send()", ge=MIN_DURATION, le=MAX_DURATION, unit="s"),
    ] = 5.0
    drain_timeout: Annotated[
        float, _doc("s to finish in-flight work on shutdown", ge=0, le=MAX_DURATION, unit="s")
    ] = 10.0
    max_message_size: Annotated[
        int,
        _doc(
            "bytes; larger frames are refused by libzmq",
            ge=1,
            le=MAX_MESSAGE_SIZE,
            unit="bytes",
        ),
    ] = DEFAULT_MAX_MESSAGE_SIZE
    max_concurrency: Annotated[
        int, _doc("handlers running at once; past it: OVERLOADED", ge=1, le=MAX_COUNT)
    ] = 1024
    max_in_flight: Annotated[
        int, _doc("this node's own requests awaiting replies", ge=1, le=MAX_COUNT)
    ] = 10_000
    routing: Annotated[RoutingName, _doc("how a request picks among the nodes")] = "round_robin"
    weight: Annotated[
        int, _doc("share of traffic under weighted routing; 0: none", ge=0, le=MAX_COUNT)
    ] = 1
    log_level: Annotated[str, _doc("DEBUG, INFO, WARNING, ERROR or CRITICAL")] = "INFO"
    metadata: Annotated[dict[str, str], _doc("labels other nodes see, KEY=VALUE")] = {}
    # Four sockets a peer (a DEALER and its monitor, for members and for addresses
    # alike) stay under libzmq's 65,535 sockets a context.
    max_peers: Annotated[
        int,
        _doc(
            "members kept (and addresses connected to before they join); more: refused",
            ge=1,
            le=16_000,
        ),
    ] = 256
    max_addresses: Annotated[
        int, _doc("addresses heard of and kept before they join", ge=1, le=MAX_COUNT)
    ] = 1024

    def validated(self) -> NodeOptions:
        """Return a copy with derived defaults filled in, or raise ``ConfigError``."""
        # A round trip through msgspec checks every type and range, also of options built
        # directly (NodeOptions(weight=2**70) runs no check of its own).
        checked = options_from_mapping(msgspec.structs.asdict(self), source="")
        opts = (
            checked
            if checked.node_id
            else msgspec.structs.replace(checked, node_id=default_node_id())
        )
        if not _NODE_ID.fullmatch(opts.node_id):
            raise ConfigError(
                f"node_id {opts.node_id!r} is not valid: use 1-64 letters, digits, '.', '_', ':' "
                "or '-', starting with a letter or digit"
            )
        if not opts.cluster or len(opts.cluster) > 63:
            raise ConfigError(f"cluster {opts.cluster!r} must be 1-63 characters")
        if opts.port and opts.port == opts.pub_port:
            raise ConfigError(f"port and pub_port are both {opts.port}; they must differ")
        if not opts.heartbeat_interval < opts.suspect_after < opts.faulted_after:
            raise ConfigError(
                "need heartbeat_interval < suspect_after < faulted_after, got "
                f"{opts.heartbeat_interval} / {opts.suspect_after} / {opts.faulted_after} s"
            )
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
        return options_from_mapping(data, source="")


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``tcp://host:port`` -> (host, port), or ``ConfigError`` saying what is wrong.

    An IPv6 address is written in brackets, ``tcp://[::1]:5555``, and comes back bare.
    """
    m = _ENDPOINT.fullmatch(endpoint.strip())
    if not m or not 0 < int(m.group(2)) <= 65535:
        raise ConfigError(
            f"endpoint {endpoint!r} is not usable; write it as tcp://HOST:PORT "
            "(for example tcp://127.0.0.1:5555, or tcp://[::1]:5555 for IPv6)"
        )
    return m.group(1).strip("[]"), int(m.group(2))


# one rule from a field to its TOML key, variable and flag ---------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``NodeOptions`` field, as each source of settings names it."""

    name: str  # the field, and its TOML key
    env: str  # CATGA_PUB_PORT
    flags: tuple[str, ...]  # --pub-port (and any alias)
    shape: Literal["value", "list", "table"]  # how a flag or variable writes it
    choices: tuple[str, ...]  # a Literal's values; () for any value of the type
    type_name: str  # for --help: int, float, str...
    help: str
    range: str  # "0.001 to 3600 s"; "" for a setting with no range


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every setting, in the order of ``NodeOptions``' fields."""
    hints = typing.get_type_hints(NodeOptions, include_extras=True)
    found = []
    for name in NodeOptions.__struct_fields__:
        hint = hints[name]
        annotated = typing.get_origin(hint) is Annotated
        kind, *extras = typing.get_args(hint) if annotated else (hint,)
        origin = typing.get_origin(kind)
        choices = tuple(str(c) for c in typing.get_args(kind)) if origin is Literal else ()
        shape: Literal["value", "list", "table"] = (
            "list" if origin is list else "table" if origin is dict else "value"
        )
        flag = "--" + name.replace("_", "-")
        found.append(
            Setting(
                name=name,
                env=ENV_PREFIX + name.upper(),
                flags=(flag, *FLAG_ALIASES.get(name, ())),
                shape=shape,
                choices=choices,
                type_name=getattr(origin or kind, "__name__", "str"),
                help=next((m.description or "" for m in extras if isinstance(m, msgspec.Meta)), ""),
                range=next((_range_text(m) for m in extras if isinstance(m, msgspec.Meta)), ""),
            )
        )
    return tuple(found)


def _range_text(meta: msgspec.Meta) -> str:
    """A field's range as an error names it: ``0.001 to 3600 s``, ``more than 0, up to 1000``."""
    if meta.le is None or (meta.ge is None and meta.gt is None):
        return ""
    unit = (meta.extra or {}).get("unit", "")
    low = _number(meta.ge) if meta.ge is not None else f"more than {_number(meta.gt)}, up"
    return f"{low} to {_number(meta.le)}" + (f" {unit}" if unit else "")


def _number(value: float | None) -> str:
    # As a flag or TOML takes it: 3600 not 3600.0, 2147483647 not 2.14748e+09.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@functools.cache
def _by_name() -> dict[str, Setting]:
    return {s.name: s for s in settings()}


def _suggest(word: str, names: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.75)
    return close[0] if close else None


# loading ------------------------------------------------------------------------------------

#: How an error names a setting: ``port=`` (a mapping), ``CATGA_PORT=``, ``--port ``.
Label = Callable[[Setting], str]


def _key_label(s: Setting) -> str:
    return f"{s.name}="


def options_from_mapping(
    data: Mapping[str, Any], *, source: str, strict: bool = True, label: Label = _key_label
) -> NodeOptions:
    """Convert a mapping to ``NodeOptions``; errors name the setting and the source."""
    prefix = f"{source}: " if source else ""
    unknown = sorted(set(data) - set(NodeOptions.__struct_fields__))
    if unknown:
        meant = _suggest(unknown[0], NodeOptions.__struct_fields__)
        hint = (
            f"did you mean {meant!r}?"
            if meant
            else "python -m catga_zmq.node --help lists the settings"
        )
        raise ConfigError(f"{prefix}unknown setting {unknown[0]!r}; {hint}")
    try:
        return msgspec.convert(dict(data), NodeOptions, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(prefix + _explain(str(exc), data, label)) from None


#: msgspec's words for a value of the right type outside its range ("Expected `int` <= 5").
_OUT_OF_RANGE = re.compile(r"Expected `\w+` [<>]=? ")


def _explain(msg: str, data: Mapping[str, Any], label: Label) -> str:
    # msgspec says "Invalid enum value 'fast' - at `$.routing`": name the setting instead,
    # as its source names it, and for a choice list the choices.
    m = re.search(r" - at `\$\.(\w+)", msg)
    s = _by_name().get(m.group(1)) if m else None
    if m is None or s is None:
        return msg
    shown = f"{label(s)}{data[s.name]!r}"
    if s.choices:
        return f"{shown} is not one of {', '.join(s.choices)}"
    if s.range and _OUT_OF_RANGE.match(msg):
        return f"{shown} is out of range; use {s.range}"
    return f"{shown}: {msg[: m.start()]}"


def options_from_text(
    values: Mapping[str, Sequence[str]], *, label: Label, source: str = ""
) -> dict[str, Any]:
    """Typed settings from text, as flags and variables give them: name -> its texts.

    A plain setting takes its last text; a list joins every text's comma-separated items;
    a table every text's ``KEY=VALUE`` items.
    """
    by_name = _by_name()
    found: dict[str, Any] = {}
    for name, texts in values.items():
        s = by_name[name]
        items = [i.strip() for text in texts for i in text.split(",") if i.strip()]
        if s.shape == "list":
            found[name] = items
        elif s.shape == "table":
            found[name] = _pairs(items, s, label)
        elif texts:
            found[name] = texts[-1]
    if found:
        typed = options_from_mapping(found, source=source, strict=False, label=label)
        found = {name: getattr(typed, name) for name in found}
    return found


def _pairs(items: list[str], s: Setting, label: Label) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{label(s)}{item!r} is not KEY=VALUE; write zone=a or zone=a,rack=3")
        pairs[key.strip()] = value.strip()
    return pairs


def options_from_toml(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file (its ``[node]`` table, or its top level), type-checked."""
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


def _env_label(s: Setting) -> str:
    return f"{s.env}="


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``CATGA_*`` variables (``os.environ`` by default), typed.

    A variable whose name is close to a setting's (``CATGA_HEARTBEAT_INTERVALL``) is a
    ``ConfigError``: a typo silently ignored would leave the default in force. Other
    ``CATGA_*`` names are left alone, for other tools to use.
    """
    env = os.environ if environ is None else environ
    by_env = {s.env: s.name for s in settings()}
    texts = {by_env[key]: [raw] for key, raw in env.items() if key in by_env}
    for key in env:
        if key.startswith(ENV_PREFIX) and key not in by_env:
            meant = _suggest(key.removeprefix(ENV_PREFIX).lower(), NodeOptions.__struct_fields__)
            if meant is not None:
                raise ConfigError(
                    f"{key} is not a setting; did you mean {ENV_PREFIX}{meant.upper()}? "
                    "Rename it, or unset it"
                )
    return options_from_text(texts, label=_env_label)

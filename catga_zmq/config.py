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
import ipaddress
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

from ._redis_url import check_redis_url, redact
from .errors import ConfigError
from .protocol import (
    MAX_CLUSTER,
    MAX_ENDPOINT,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    NO_CONTROL_PATTERN,
    HeartbeatBody,
    Metadata,
)

DiscoveryName = Literal["mdns", "static", "memory", "dns", "redis", "none"]
DnsRecordName = Literal["auto", "a", "srv"]
RoutingName = Literal[
    "round_robin", "local_first", "weighted", "consistent_hash", "least_connections"
]
RoleName = Literal["member", "client"]
PlaintextAdmin = Literal["loopback", "any", "none"]
CompressionName = Literal["none", "zstd"]

ENV_PREFIX = "CATGA_"
#: Short flags for the settings typed most often, besides the one the rule gives.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {"node_id": ("--id",)}

#: A node id: what the wire's headers take (protocol.MAX_SOURCE characters).
NODE_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
# Matched with fullmatch: ``$`` alone also matches before a final newline ("abc\n").
_NODE_ID = re.compile(NODE_ID_PATTERN)
_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")


def _text(
    text: str, allowed: str, *, pattern: str, max_length: int, min_length: int = 0
) -> msgspec.Meta:
    # As _doc for numbers: msgspec checks length and pattern wherever settings are
    # converted, and ``allowed`` is what an error says to use instead. msgspec matches a
    # pattern with re.search: each one anchors with \A and \Z, never ^ and $ ("$" also
    # matches before a final newline).
    return msgspec.Meta(
        description=text,
        pattern=pattern,
        min_length=min_length,
        max_length=max_length,
        extra={"allowed": allowed},
    )


#: The longest host name (RFC 1035), for ``bind`` and ``advertise``.
MAX_HOST: Final = 253
#: What ``bind`` and ``advertise`` take: a host name, an IPv4 or IPv6 address (with a
#: zone, ``fe80::1%eth0``, or in brackets), an interface name or ``*``.
_HOST_CHARS: Final = r"[A-Za-z0-9._:%*\[\]-]"
_HOST_ALLOWED: Final = (
    f"a host name, an IPv4 or IPv6 address or *, up to {MAX_HOST} letters, digits, "
    "'.', '-', '_', ':', '%', '[' or ']'"
)
#: What ``dns_name`` takes: a DNS name (RFC 1035, with the ``_`` of SRV names), up to
#: 253 characters and a final ``.``; each label's length is checked in ``validated()``.
MAX_DNS_NAME: Final = 254
_DNS_NAME_ALLOWED: Final = (
    f"empty, or a DNS name up to {MAX_DNS_NAME - 1} characters (and a final '.'): "
    "labels of 1-63 letters, digits, '-' or '_', joined by '.'"
)
#: What ``dns_resolver`` takes, checked in ``validated()``: ``HOST[:PORT]``.
_DNS_RESOLVER_ALLOWED: Final = (
    "empty, or an IP address with an optional port: 127.0.0.53, 127.0.0.53:5353, ::1 or [::1]:5353"
)
#: The shortest ``dns_interval`` (s): shorter floods the DNS server.
MIN_DNS_INTERVAL: Final = 0.1  # s
#: Seeds a node greets at most: far past any real list.
MAX_SEEDS: Final = 1024
Seed = Annotated[str, msgspec.Meta(max_length=MAX_ENDPOINT, pattern=NO_CONTROL_PATTERN)]
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: The longest path a file or directory setting takes (Linux's PATH_MAX).
MAX_PATH: Final = 4096
_PATH_ALLOWED: Final = f"empty, or a path up to {MAX_PATH} characters with no control characters"
#: The longest ``redis_url`` taken.
MAX_REDIS_URL: Final = 2048


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
#: Frames an inbound connection may always have queued, whatever max_inbound_bytes says:
#: fewer would make libzmq wake its reader for every frame or two.
MIN_INBOUND_FRAMES: Final = 4
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
      ``metadata`` (free labels other nodes see), ``role`` (a member, or a client that
      follows the cluster without joining it).
    - Sockets: ``bind``, ``port`` (ROUTER, requests), ``pub_port`` (PUB, heartbeats and
      events), ``advertise`` (the host peers connect to), ``max_message_size``.
    - Discovery: ``discovery`` (mdns, static, memory, dns, redis or none), ``seeds`` for
      static; for dns ``dns_name``, ``dns_record``, ``dns_port``, ``dns_interval`` and
      ``dns_resolver``; ``redis_url``, ``redis_key_prefix``, ``redis_refresh_interval``
      and ``redis_ttl`` for redis.
    - Failure detection: ``heartbeat_interval``, ``suspect_after``, ``acceptable_pause``,
      ``phi_threshold``, ``faulted_after``.
    - Resilience: ``breaker_threshold``, ``breaker_cooldown``, ``request_timeout``.
    - Capacity: ``max_concurrency`` (handlers at once), ``max_in_flight`` (own requests),
      ``max_peers`` and ``max_addresses`` (peers and addresses kept, so sockets too).
    - Routing: ``routing`` (the strategy) and ``weight`` (share under weighted routing).
    - Lifecycle: ``drain_timeout``, ``log_level``.
    - Security (CURVE): ``curve_secret_key`` (this node's secret key file; empty:
      plaintext), and whom to trust: ``curve_trust_dir`` (the public keys of the nodes
      allowed) or ``curve_any_key`` (any key: encrypted, not authenticated);
      ``plaintext_admin``: who may drain or reconfigure the node when no trust
      directory authenticates its peers.
    - Metrics: ``metrics_port`` (HTTP: ``/metrics``, ``/livez``, ``/readyz``; 0: off)
      and ``metrics_bind`` (127.0.0.1 unless set).
    - Tracing: ``tracing`` (OpenTelemetry spans, when a tracer provider is set).
    - Compression: ``compression`` (zstd or none), ``compression_threshold`` and
      ``compression_level``.

    Durations are in seconds, sizes in bytes. Every number has a range, stated next to
    its default; ``validated()`` checks each value against it, then the values together.
    """

    node_id: Annotated[
        str,
        _text(
            "node id; empty: host-pid-random",
            "empty, or 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
            pattern=rf"\A(?:{NODE_ID_PATTERN})?\Z",
            max_length=64,
        ),
    ] = ""
    cluster: Annotated[
        str,
        _text(
            "cluster name; nodes of another cluster are ignored",
            f"1-{MAX_CLUSTER - 1} characters, no control characters (newline, NUL...)",
            pattern=NO_CONTROL_PATTERN,
            min_length=1,
            max_length=MAX_CLUSTER - 1,
        ),
    ] = "default"
    bind: Annotated[
        str,
        _text(
            "host or IP (v4 or v6) the ROUTER and PUB sockets bind to",
            _HOST_ALLOWED,
            pattern=rf"\A{_HOST_CHARS}+\Z",
            max_length=MAX_HOST,
        ),
    ] = "127.0.0.1"
    port: Annotated[int, _doc("ROUTER (requests) port; 0: any free port", ge=0, le=65535)] = 0
    pub_port: Annotated[
        int, _doc("PUB (heartbeats and events) port; 0: any free port", ge=0, le=65535)
    ] = 0
    advertise: Annotated[
        str,
        _text(
            "host peers connect to; empty: the bind address",
            "empty, or " + _HOST_ALLOWED,
            pattern=rf"\A{_HOST_CHARS}*\Z",
            max_length=MAX_HOST,
        ),
    ] = ""
    discovery: Annotated[DiscoveryName, _doc("how nodes find each other")] = "mdns"
    seeds: Annotated[
        list[Seed],
        msgspec.Meta(
            description="static discovery: ROUTER endpoints, tcp://HOST:PORT",
            max_length=MAX_SEEDS,
            extra={
                "allowed": f"at most {MAX_SEEDS} endpoints tcp://HOST:PORT, each up to "
                f"{MAX_ENDPOINT} characters with no control characters"
            },
        ),
    ] = []
    dns_name: Annotated[
        str,
        _text(
            "dns discovery: the name to resolve (A/AAAA records, or SRV: see dns_record)",
            _DNS_NAME_ALLOWED,
            pattern=r"\A[A-Za-z0-9._-]*\Z",
            max_length=MAX_DNS_NAME,
        ),
    ] = ""
    dns_record: Annotated[
        DnsRecordName,
        _doc(
            "dns discovery: srv (each record names a host and its ROUTER port), a (A and "
            "AAAA records, at dns_port), or auto (SRV when the name has SRV records, else A)"
        ),
    ] = "auto"
    dns_port: Annotated[
        int,
        _doc(
            "dns discovery: the ROUTER port of the nodes found by A/AAAA records; 0: this "
            "node's own port",
            ge=0,
            le=65535,
        ),
    ] = 0
    dns_interval: Annotated[
        float,
        _doc(
            "dns discovery: s between two resolutions of dns_name (and the longest wait "
            "between two attempts when the DNS server fails)",
            ge=MIN_DNS_INTERVAL,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 5.0
    dns_resolver: Annotated[
        str,
        _text(
            "dns discovery: the DNS server to ask, IP[:PORT] (default port 53); empty: "
            "the system's (/etc/resolv.conf)",
            _DNS_RESOLVER_ALLOWED,
            pattern=r"\A[0-9A-Za-z.:_\[\]%-]*\Z",
            max_length=MAX_HOST,
        ),
    ] = ""
    redis_url: Annotated[
        str,
        _text(
            "redis discovery: the server, redis://HOST:PORT/DB (rediss:// for TLS, "
            "unix:///PATH for a socket)",
            f"empty, or a URL up to {MAX_REDIS_URL} characters with no control characters",
            pattern=NO_CONTROL_PATTERN,
            max_length=MAX_REDIS_URL,
        ),
    ] = ""
    redis_key_prefix: Annotated[
        str,
        _text(
            "redis discovery: the first part of every key (PREFIX:{CLUSTER}:nodes)",
            "1-64 letters, digits, '.', '_' or '-'",
            pattern=r"\A[A-Za-z0-9._-]+\Z",
            min_length=1,
            max_length=64,
        ),
    ] = "catga"
    redis_refresh_interval: Annotated[
        float,
        _doc(
            "s between two refreshes of this node's redis entry (and reads of the others')",
            ge=0.05,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 2.0
    redis_ttl: Annotated[
        float,
        _doc(
            "s a redis entry lives unless refreshed (a crashed node's is gone after it); "
            "more than twice redis_refresh_interval",
            ge=0.2,
            le=MAX_DURATION,
            unit="s",
        ),
    ] = 10.0
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
    max_inbound_bytes: Annotated[
        int,
        _doc(
            "bytes one inbound connection may have queued, unread, before this node "
            "stops reading it (backpressure); whole frames of max_message_size, at "
            f"least {MIN_INBOUND_FRAMES}",
            ge=1,
            le=MAX_MESSAGE_SIZE,
            unit="bytes",
        ),
    ] = 64 * 1024 * 1024
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
    log_level: Annotated[
        str,
        _text(
            "DEBUG, INFO, WARNING, ERROR or CRITICAL",
            "one of " + ", ".join(LOG_LEVELS) + " (any case)",
            pattern=rf"\A(?i:{'|'.join(LOG_LEVELS)})\Z",
            max_length=8,
        ),
    ] = "INFO"
    metadata: Annotated[
        Metadata,
        msgspec.Meta(
            description="labels other nodes see, KEY=VALUE",
            extra={
                "allowed": f"at most {MAX_METADATA_ENTRIES} KEY=VALUE pairs; each key 1-"
                f"{MAX_METADATA_KEY} letters, digits, '.', '_', '/' or '-', starting with a "
                f"letter or digit; each value up to {MAX_METADATA_VALUE} characters, no "
                "control characters"
            },
        ),
    ] = {}
    # Seven sockets a peer (a DEALER and its monitor, two sockets, for members and for
    # addresses alike, and a SUB per member), with a SUB per address (max_addresses at
    # its default), stay under libzmq's 65,535 sockets a context.
    max_peers: Annotated[
        int,
        _doc(
            "members kept (and addresses connected to before they join); more: refused",
            ge=1,
            le=8_000,
        ),
    ] = 256
    max_addresses: Annotated[
        int, _doc("addresses heard of and kept before they join", ge=1, le=MAX_COUNT)
    ] = 1024
    curve_secret_key: Annotated[
        str,
        _text(
            "CURVE: this node's secret key file (python -m catga_zmq keygen NAME writes "
            "NAME.key_secret); empty: plaintext",
            _PATH_ALLOWED,
            pattern=NO_CONTROL_PATTERN,
            max_length=MAX_PATH,
        ),
    ] = ""
    curve_trust_dir: Annotated[
        str,
        _text(
            "CURVE: directory of the public key files (NAME.key) of the nodes trusted, "
            "each named after its node id",
            _PATH_ALLOWED,
            pattern=NO_CONTROL_PATTERN,
            max_length=MAX_PATH,
        ),
    ] = ""
    curve_any_key: Annotated[
        bool,
        msgspec.Meta(
            description="CURVE: encrypt, but accept any key (no authentication; a node id "
            "stays bound to the first key it came with), instead of curve_trust_dir"
        ),
    ] = False
    metrics_port: Annotated[
        int,
        _doc(
            "HTTP port of /metrics (Prometheus), /livez and /readyz; 0: no metrics "
            "(needs pip install 'catga-zmq[prometheus]')",
            ge=0,
            le=65535,
        ),
    ] = 0
    metrics_bind: Annotated[
        str,
        _text(
            "host or IP the metrics port binds to (loopback unless set)",
            _HOST_ALLOWED,
            pattern=rf"\A{_HOST_CHARS}+\Z",
            max_length=MAX_HOST,
        ),
    ] = "127.0.0.1"
    role: Annotated[
        RoleName,
        _doc(
            "member: serves requests, heartbeats, is listed and routed to; client: sends "
            "requests, gets replies and events, follows membership, but binds nothing and "
            "is no member (no heartbeats, no discovery record; nobody lists it)"
        ),
    ] = "member"
    plaintext_admin: Annotated[
        PlaintextAdmin,
        _doc(
            "who may send this node the admin requests (drain, set) when no curve_trust_dir "
            "authenticates its peers (plaintext, or curve_any_key): loopback, only while it "
            "binds a loopback address (the callers are then on this host); any, whoever "
            "reaches it; none, no one. With curve_trust_dir: the keys in its admin/ only"
        ),
    ] = "loopback"
    tracing: Annotated[
        bool,
        msgspec.Meta(
            description="OpenTelemetry spans of requests and events when the application "
            "has set a tracer provider (the otel extra; see catga_zmq.tracing); false: none"
        ),
    ] = True
    compression: Annotated[
        CompressionName,
        _doc(
            "zstd: compress request, reply and event payloads over compression_threshold "
            "for the peers that decode zstd, and decode it (needs pip install "
            "'catga-zmq[zstd]'); none: neither"
        ),
    ] = "none"
    compression_threshold: Annotated[
        int,
        _doc(
            "payloads of more bytes than this are compressed (with compression = zstd)",
            ge=64,
            le=MAX_MESSAGE_SIZE,
            unit="bytes",
        ),
    ] = 1024
    compression_level: Annotated[
        int, _doc("zstd level: 1 fastest, 19 smallest (with compression = zstd)", ge=1, le=19)
    ] = 3

    def inbound_frames(self) -> int:
        """The ROUTER's receive high-water mark: what ``max_inbound_bytes`` allows.

        libzmq bounds a connection's queue in messages, not bytes; a message is at most
        ``max_message_size``, so this many of them stay within ``max_inbound_bytes``.
        """
        frames = self.max_inbound_bytes // self.max_message_size
        return max(MIN_INBOUND_FRAMES, min(frames, max(1000, self.max_in_flight)))

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
        if opts.port and opts.port == opts.pub_port:
            raise ConfigError(f"port and pub_port are both {opts.port}; they must differ")
        for name in ("port", "pub_port"):
            if opts.metrics_port and opts.metrics_port == getattr(opts, name):
                raise ConfigError(
                    f"metrics_port and {name} are both {opts.metrics_port}; they must differ"
                )
        if not opts.heartbeat_interval < opts.suspect_after < opts.faulted_after:
            raise ConfigError(
                "need heartbeat_interval < suspect_after < faulted_after, got "
                f"{opts.heartbeat_interval} / {opts.suspect_after} / {opts.faulted_after} s"
            )
        if opts.metadata:
            _check_heartbeat_fits(opts)
        for seed in opts.seeds:
            try:
                parse_endpoint(split_seed(seed)[0])
            except ConfigError as exc:
                raise ConfigError(f"seeds: {exc.message}") from None
        curve_mode(opts)
        if opts.role == "client":
            _check_client(opts)
        if opts.discovery == "static" and not opts.seeds:
            raise ConfigError(
                "discovery 'static' needs at least one seed (--seeds tcp://host:port)"
            )
        _check_dns(opts)
        _check_redis(opts)
        return opts

    def merged(self, changes: Mapping[str, Any]) -> NodeOptions:
        """Overlay ``changes`` (from a file, the environment or flags), type-checked."""
        if not changes:
            return self
        data = msgspec.structs.asdict(self)
        data.update(changes)
        return options_from_mapping(data, source="")


def _check_redis(opts: NodeOptions) -> None:
    if opts.redis_url:
        check_redis_url(opts.redis_url)
    elif opts.discovery == "redis":
        raise ConfigError(
            "discovery 'redis' needs redis_url, the server (--redis-url redis://HOST:PORT/DB)"
        )
    if not opts.redis_ttl > 2 * opts.redis_refresh_interval:
        # Two refreshes may fail in a row (a blip, a stalled loop) before an entry of a
        # live node expires.
        raise ConfigError(
            f"redis_ttl ({opts.redis_ttl} s) must be more than twice "
            f"redis_refresh_interval ({opts.redis_refresh_interval} s)"
        )


CurveMode = Literal["off", "trust_dir", "any_key"]


def curve_mode(opts: NodeOptions) -> CurveMode:
    """Which CURVE mode the settings ask for, or ``ConfigError`` naming what is missing.

    Only the settings are looked at: the files are read when the node starts.
    """
    if opts.curve_any_key and opts.curve_trust_dir:
        raise ConfigError(
            "curve_any_key and curve_trust_dir exclude each other: curve_trust_dir accepts "
            "only the keys in it, curve_any_key any key; set one of them"
        )
    if not opts.curve_secret_key:
        for name in ("curve_trust_dir", "curve_any_key"):
            if getattr(opts, name):
                raise ConfigError(
                    f"{name} needs curve_secret_key, this node's own secret key file "
                    "(python -m catga_zmq keygen NAME writes one)"
                )
        return "off"
    if opts.curve_trust_dir:
        return "trust_dir"
    if opts.curve_any_key:
        return "any_key"
    raise ConfigError(
        "curve_secret_key is set; now say which peers to trust: curve_trust_dir, or "
        "curve_any_key for encryption without authentication"
    )


def _check_dns(opts: NodeOptions) -> None:
    """The dns_* settings, checked together: a name to resolve, a usable resolver, and a
    port for the nodes found by A/AAAA records."""
    if opts.dns_name:
        check_dns_name(opts.dns_name)
    if opts.dns_resolver:
        parse_resolver(opts.dns_resolver)
    if opts.discovery != "dns":
        return
    if not opts.dns_name:
        raise ConfigError("discovery 'dns' needs a name to resolve (--dns-name NAME)")
    if opts.dns_record != "srv" and not (opts.dns_port or opts.port):
        raise ConfigError(
            f"discovery 'dns' with dns_record {opts.dns_record!r} needs the port of the nodes "
            "its A/AAAA records name: set dns_port (or port, which it defaults to), or "
            "use dns_record 'srv', whose records carry the port"
        )


def check_dns_name(name: str) -> None:
    """``ConfigError`` unless ``name`` is a DNS name: labels of 1-63 characters."""
    labels = name.removesuffix(".").split(".")
    if len(name.removesuffix(".")) > MAX_DNS_NAME - 1 or not all(0 < len(x) <= 63 for x in labels):
        raise ConfigError(
            f"dns_name {_short_repr(name)} is not a DNS name; write labels of 1-63 letters, "
            "digits, '-' or '_' joined by '.' (for example catga.default.svc.cluster.local "
            "or _catga._tcp.example.org)"
        )


def parse_resolver(text: str) -> tuple[str, int]:
    """``dns_resolver`` -> (IP address, port), or ``ConfigError`` saying how to write it.

    ``127.0.0.53``, ``127.0.0.53:5353``, ``::1``, ``[::1]:5353``; the port is 53 when
    none is given.
    """
    host, port = text.strip(), "53"
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        host = inside if bracket and (not rest or rest.startswith(":")) else ""
        port = rest[1:] if rest else port
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(
            f"dns_resolver {_short_repr(text)} is not usable; write the DNS server as "
            "IP[:PORT] (for example 127.0.0.53, 127.0.0.53:5353 or [::1]:5353)"
        )
    return str(address), int(port)


def _check_client(opts: NodeOptions) -> None:
    """A client binds no socket: the settings of its sockets would do nothing."""
    for name in ("port", "pub_port", "advertise"):
        if getattr(opts, name):
            raise ConfigError(
                f"{name} is set, but role 'client' binds no socket (it connects to the "
                f"members only); leave {name} out, or use role 'member'"
            )


def _check_heartbeat_fits(opts: NodeOptions) -> None:
    """Refuse metadata that would make this node's heartbeats larger than the frames
    peers take (max_message_size: libzmq drops the connection of a larger one)."""
    longest = "x" * MAX_ENDPOINT  # the endpoints are not known before the bind
    size = len(
        msgspec.msgpack.encode(
            HeartbeatBody(
                node_id=opts.node_id,
                incarnation=2**63 - 1,
                seq=2**63 - 1,
                status="draining",
                cluster=opts.cluster,
                endpoint=longest,
                pub_endpoint=longest,
                metadata=opts.metadata,
                max_message_size=opts.max_message_size,
            )
        )
    )
    if size > opts.max_message_size:
        raise ConfigError(
            f"metadata makes this node's heartbeats up to {size} bytes, over "
            f"max_message_size={opts.max_message_size} bytes, the largest frame peers "
            "take; use less metadata or raise max_message_size on every node"
        )


def split_seed(seed: str) -> tuple[str, str]:
    """A seed's endpoint, and what names its CURVE key: ``tcp://host:port;KEY`` (the
    key in Z85) or ``tcp://host:port;NAME`` (a certificate in the trust directory);
    ``""`` when the seed has no ``;`` part. ``;`` is not in the Z85 alphabet."""
    endpoint, _, key = seed.strip().partition(";")
    return endpoint.strip(), key.strip()


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
    allowed: str  # what a text, list or table setting takes; "" for the others


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
        metas = [m for m in extras if isinstance(m, msgspec.Meta)]
        found.append(
            Setting(
                name=name,
                env=ENV_PREFIX + name.upper(),
                flags=(flag, *FLAG_ALIASES.get(name, ())),
                shape=shape,
                choices=choices,
                type_name=getattr(origin or kind, "__name__", "str"),
                help=next((m.description for m in metas if m.description), ""),
                range=next((_range_text(m) for m in metas), ""),
                allowed=next(
                    (str(m.extra["allowed"]) for m in metas if m.extra and "allowed" in m.extra), ""
                ),
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
#: ...and for a text, list or table too long or of other characters than it takes.
_NOT_ALLOWED = re.compile(r"Expected `\w+` (of length|matching regex) ")
#: Where msgspec says it found the problem: `$.seeds[2]`, or `key` in `$.metadata`.
_WHERE = re.compile(r" - at `(?:key` in `)?\$\.(\w+)")
#: The most of a bad value an error shows: a value may be megabytes long.
_SHOWN = 80


def _explain(msg: str, data: Mapping[str, Any], label: Label) -> str:
    # msgspec says "Invalid enum value 'fast' - at `$.routing`": name the setting instead,
    # as its source names it, and for a choice list the choices.
    m = _WHERE.search(msg)
    s = _by_name().get(m.group(1)) if m else None
    if m is None or s is None:
        return msg
    value = data[s.name]
    if s.name == "redis_url" and isinstance(value, str):
        value = redact(value)  # errors go to logs and terminals: never the password
    shown = f"{label(s)}{_short_repr(value)}"
    if s.choices:
        return f"{shown} is not one of {', '.join(s.choices)}"
    if s.type_name == "bool":
        return f"{shown} is not a yes or no; use true or false (or 1 or 0)"
    if s.range and _OUT_OF_RANGE.match(msg):
        return f"{shown} is out of range; use {s.range}"
    if s.allowed and _NOT_ALLOWED.match(msg):
        return f"{shown} is not allowed; use {s.allowed}"
    return f"{shown}: {msg[: m.start()]}"


def _short_repr(value: Any) -> str:
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    size = f"{len(value)} " if isinstance(value, str | list | dict) else ""
    what = "characters" if isinstance(value, str) else "items"
    return f"{text[:_SHOWN]}... ({size}{what})" if size else f"{text[:_SHOWN]}..."


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

"""mDNS discovery: each node is a ``_catga._tcp.local.`` service, described in TXT.

TXT keys: ``id`` node id, ``ep`` ROUTER endpoint, ``pub`` PUB endpoint, ``cluster``,
``v`` protocol version, ``pk`` CURVE public key (optional), ``m.<key>`` metadata. The
SRV port is the ROUTER port. mDNS runs only on the interfaces of the node's bind
address (``interfaces_for_bind``), never on every interface unless the node binds
``0.0.0.0``.

Services of another cluster are ignored. Services of another protocol version are
still yielded, with ``version`` set: whether to talk to them is the node's decision,
and it can say why it refused, which discovery cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import ConfigError
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange

__all__ = ["SERVICE_TYPE", "MdnsDiscovery", "interfaces_for_bind"]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_catga._tcp.local."
RESOLVE_TIMEOUT = 3000  # ms, per service; zeroconf retries its queries within it
MAX_INSTANCE_LABEL = 63  # bytes, RFC 6763 section 4.1.1
MAX_TXT_ENTRY = 255  # bytes per "key=value", RFC 6763 section 6.1
METADATA_PREFIX = "m."
_SUFFIX_CHARS = 6  # hex digits of a hash of cluster and node id

# Linux value from <linux/in.h>; Python's socket module does not export it.
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
_WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::"})


def interfaces_for_bind(host: str) -> list[str]:
    """The addresses mDNS should use for a node bound to ``host``.

    Loopback (any ``127.0.0.0/8``, ``::1``, ``localhost``) gives ``["127.0.0.1"]``;
    a specific address gives itself; a wildcard (``0.0.0.0``, ``*``, ``::``) gives
    every IPv4 address of the machine, loopback included so that local nodes still
    find it. A host name other than ``localhost`` is refused: resolve it first.
    """
    host = host.strip("[]")
    if host in _WILDCARD_HOSTS:
        addresses = sorted(
            {
                str(ip.ip)
                for adapter in ifaddr.get_adapters()
                for ip in adapter.ips
                if isinstance(ip.ip, str)  # ifaddr gives IPv6 as a tuple
            },
            key=ipaddress.IPv4Address,
        )
        if not addresses:
            raise ConfigError("no IPv4 address on this machine to run mDNS on")
        return addresses
    if host == "localhost":
        return ["127.0.0.1"]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"mDNS needs an IP address to choose interfaces, got host {host!r}; "
            "pass interfaces= or bind an address"
        ) from None
    if ip.is_loopback:
        # lo is one interface whatever the address; 127.0.0.1 is where every other
        # local node listens.
        return ["127.0.0.1"]
    return [str(ip)]


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    scheme, sep, rest = endpoint.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not port.isdigit():
        raise ConfigError(f"mDNS announces tcp://host:port endpoints, got {endpoint!r}")
    return host.strip("[]"), int(port)


def _with_host(endpoint: str, address: str) -> str:
    """Replace a wildcard host, which a peer cannot connect to, by a resolved address."""
    try:
        host, port = _split_endpoint(endpoint)
    except ConfigError:
        return endpoint
    if host not in _WILDCARD_HOSTS:
        return endpoint
    shown = f"[{address}]" if ":" in address else address
    return f"tcp://{shown}:{port}"


def _instance_label(cluster: str, node_id: str) -> str:
    # Stable, so a restarted node takes over its old name and peers' caches are
    # overwritten instead of holding a stale twin for the PTR's 75 minutes. The hash
    # keeps ids that sanitize alike ("a.b", "a/b") and clusters apart; two live nodes
    # with one id are renamed by zeroconf's probing.
    suffix = hashlib.blake2s(f"{cluster}\0{node_id}".encode()).hexdigest()[:_SUFFIX_CHARS]
    # DNS-SD allows any UTF-8 here, but the label doubles as our host name (SRV
    # target), which must be letters, digits and hyphens.
    base = re.sub(r"[^A-Za-z0-9-]+", "-", node_id).strip("-") or "node"
    return f"{base[: MAX_INSTANCE_LABEL - len(suffix) - 1]}-{suffix}"


def _txt(me: Candidate, cluster: str, version: int) -> dict[str, str]:
    txt = {"id": me.node_id or "", "ep": me.endpoint, "cluster": cluster, "v": str(version)}
    if me.pub_endpoint:
        txt["pub"] = me.pub_endpoint
    if me.public_key:
        txt["pk"] = me.public_key
    for key, value in me.metadata.items():
        if not key or "=" in key:
            raise ConfigError(f"mDNS metadata key {key!r}: TXT keys are non-empty, without '='")
        txt[METADATA_PREFIX + key] = value
    for key, value in txt.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > MAX_TXT_ENTRY:
            raise ConfigError(
                f"mDNS TXT entry {key!r} is {size} bytes; a TXT string holds {MAX_TXT_ENTRY}"
            )
    return txt


def _restrict_multicast(azc: AsyncZeroconf) -> None:
    """Hear only the multicast groups this instance joined itself.

    zeroconf listens on a wildcard socket, and Linux hands such a socket every group
    any process joined on any interface (IP_MULTICAST_ALL defaults to on). If avahi
    has joined 224.0.0.251 on eth0, a loopback-only node would hear the LAN, and
    answer it. zeroconf does not expose its sockets, hence the best effort.
    """
    if not sys.platform.startswith("linux"):
        return
    for reader in getattr(azc.zeroconf.engine, "readers", ()):
        sock: Any = getattr(reader, "sock", None)  # an asyncio.TransportSocket
        if sock is not None and sock.family == socket.AF_INET:
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            except OSError as exc:
                log.debug("cannot restrict mDNS socket %s to its groups: %s", sock, exc)


class MdnsDiscovery(Discovery):
    """Announce this node and find others of ``cluster`` over multicast DNS.

    ``interfaces`` are the IP addresses to run mDNS on; by default those of the
    address the node binds (see ``interfaces_for_bind``). They are fixed when mDNS
    starts (the first ``register`` or ``start``). ``version`` is the wire protocol
    version announced in TXT (``PROTOCOL_VERSION`` when a node makes this backend).

    ``watch()`` first yields every current candidate as ADDED, then changes; an
    update of a known service is another ADDED. REMOVED comes from a goodbye, from
    a restart elsewhere under the same name, or from expired records. A node that
    crashed and stays down remains a candidate until its PTR record expires (75
    minutes): heartbeats, not discovery, notice that it is gone.
    """

    name = "mdns"

    def __init__(
        self, cluster: str, interfaces: list[str] | None = None, *, version: int = 1
    ) -> None:
        self.cluster = cluster
        self.version = version
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._azc: AsyncZeroconf | None = None
        self._active: list[str] = []  # interfaces mDNS runs on, once started
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._me: Candidate | None = None
        self._found: dict[str, Candidate] = {}  # by service name
        # One resolution per service name; held here so the loop cannot drop it.
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._watchers: list[asyncio.Queue[DiscoveryChange | None]] = []
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def service_name(self) -> str | None:
        """Our registered service name (zeroconf may have renamed it on conflict)."""
        return self._info.name if self._info is not None else None

    async def start(self, bind_host: str = "127.0.0.1") -> None:
        """Start browsing without announcing, as an operator tool does."""
        async with self._lock:
            await self._start(bind_host)

    async def register(self, me: Candidate) -> None:
        """Announce ``me`` as a service, starting mDNS first if need be.

        Returns once the name is ours (zeroconf probes for a conflict and may rename
        the service: see ``service_name``) and the first announcement is out. Called
        again, it updates the TXT record under the same name. A ``ConfigError`` names
        an endpoint that is not ``tcp://host:port`` or a TXT entry that does not fit.
        """
        host, port = _split_endpoint(me.endpoint)
        txt = _txt(me, self.cluster, self.version)
        async with self._lock:
            azc = await self._start(host)
            if self._info is not None:
                info = self._service_info(self._info.name, self._info.server or "", port, txt, host)
                self._info, self._me = info, me
                await (await azc.async_update_service(info))
                return
            label = _instance_label(self.cluster, me.node_id or me.endpoint)
            info = self._service_info(f"{label}.{SERVICE_TYPE}", f"{label}.local.", port, txt, host)
            # Our own announcements reach our browser too; _me lets _resolve skip them.
            self._me = me
            try:
                # Probing for a name conflict (zeroconf renames us on one) ends here;
                # the name is final from now on.
                announcing = await azc.async_register_service(info, allow_name_change=True)
            except BaseException:
                self._me = None
                raise
            self._info = info
            await announcing
            log.debug("mDNS: registered %s for %s", info.name, me.endpoint)

    async def unregister(self) -> None:
        """Withdraw the service; returns once the goodbye packets are sent."""
        async with self._lock:
            await self._unregister()

    def candidates(self) -> list[Candidate]:
        """The services of this cluster resolved so far, this node's own left out."""
        return list(self._found.values())

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """Every current candidate as ADDED, then each change (see the class docstring)."""
        # Subscribe here, not at the first __anext__: a change between this call and
        # the first iteration would otherwise be in neither the snapshot nor the queue.
        queue: asyncio.Queue[DiscoveryChange | None] = asyncio.Queue()
        if self._closed:
            queue.put_nowait(None)
        else:
            for candidate in self._found.values():
                queue.put_nowait(DiscoveryChange(ChangeKind.ADDED, candidate))
            self._watchers.append(queue)
        return self._changes(queue)

    async def aclose(self) -> None:
        """Unregister, stop browsing and close zeroconf; every ``watch()`` iterator ends.

        Idempotent. A closed backend does not start again.
        """
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                await self._unregister()
            finally:
                tasks = list(self._resolving.values())
                self._resolving.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                browser, self._browser = self._browser, None
                azc, self._azc = self._azc, None
                try:
                    if browser is not None:
                        await browser.async_cancel()
                    if azc is not None:
                        await azc.async_close()
                finally:
                    self._found.clear()
                    watchers, self._watchers = self._watchers, []
                    for queue in watchers:
                        queue.put_nowait(None)

    # -- inside ----------------------------------------------------------------

    async def _start(self, bind_host: str) -> AsyncZeroconf:
        if self._closed:
            raise RuntimeError("MdnsDiscovery is closed")
        if self._azc is not None:
            return self._azc
        interfaces = self._interfaces
        if interfaces is None:
            interfaces = interfaces_for_bind(await _resolve_host(bind_host))
        v6 = [":" in i for i in interfaces]
        ip_version = (
            IPVersion.V6Only if all(v6) else IPVersion.V4Only if not any(v6) else IPVersion.All
        )
        azc = AsyncZeroconf(interfaces=list(interfaces), ip_version=ip_version)
        try:
            await azc.zeroconf.async_wait_for_start()
            _restrict_multicast(azc)
            self._browser = AsyncServiceBrowser(
                azc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change]
            )
        except BaseException:
            await azc.async_close()
            raise
        self._azc, self._active = azc, list(interfaces)
        log.debug("mDNS: started on %s", interfaces)
        return azc

    async def _unregister(self) -> None:
        info, self._info = self._info, None
        self._me = None
        if info is not None and self._azc is not None:
            # The second await waits until the goodbyes (TTL 0) are sent, so peers
            # see REMOVED now rather than when our records expire.
            await (await self._azc.async_unregister_service(info))

    def _service_info(
        self, name: str, server: str, port: int, txt: dict[str, str], host: str
    ) -> AsyncServiceInfo:
        # A records: the address peers should dial. For a wildcard or a host name the
        # node is reachable on every interface mDNS runs on.
        addresses = [host] if _is_ip(host) and host not in _WILDCARD_HOSTS else self._active
        return AsyncServiceInfo(
            SERVICE_TYPE, name, port=port, properties=txt, server=server, parsed_addresses=addresses
        )

    async def _changes(
        self, queue: asyncio.Queue[DiscoveryChange | None]
    ) -> AsyncIterator[DiscoveryChange]:
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            with contextlib.suppress(ValueError):
                self._watchers.remove(queue)

    def _publish(self, change: DiscoveryChange) -> None:
        for queue in self._watchers:
            queue.put_nowait(change)

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # zeroconf calls this synchronously from its packet handler: do no I/O here.
        pending = self._resolving.pop(name, None)
        if pending is not None:
            # A newer state supersedes it; a late result must not resurrect a removal.
            pending.cancel()
        if self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            self._drop(name)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task
        task.add_done_callback(lambda t: self._resolved(name, t))

    def _resolved(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            log.warning("mDNS: resolving %s failed", name, exc_info=task.exception())

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT):
            log.debug("mDNS: %s did not resolve within %d ms", name, RESOLVE_TIMEOUT)
            return
        if name == self.service_name:
            return
        candidate = self._candidate(name, info)
        if candidate is None:
            self._drop(name)
            return
        me = self._me
        if me is not None and (candidate.node_id, candidate.endpoint) == (
            me.node_id,
            me.endpoint,
        ):
            # Our own service under a name we do not know yet (renamed on conflict).
            return
        old = self._found.get(name)
        if old is not None and old == candidate and old.metadata == candidate.metadata:
            return
        if old is not None and old.endpoint != candidate.endpoint:
            # Same name, new place (a restart on another port): consumers key by
            # endpoint, so the old one must be withdrawn explicitly.
            self._publish(DiscoveryChange(ChangeKind.REMOVED, old))
        self._found[name] = candidate
        self._publish(DiscoveryChange(ChangeKind.ADDED, candidate))

    def _drop(self, name: str) -> None:
        candidate = self._found.pop(name, None)
        if candidate is not None:
            self._publish(DiscoveryChange(ChangeKind.REMOVED, candidate))

    def _candidate(self, name: str, info: AsyncServiceInfo) -> Candidate | None:
        txt = {k: v or "" for k, v in info.decoded_properties.items()}
        cluster = txt.get("cluster")
        if cluster != self.cluster:
            log.debug("mDNS: ignoring %s of cluster %r (ours is %r)", name, cluster, self.cluster)
            return None
        addresses = info.parsed_addresses()
        endpoint = txt.get("ep")
        if not endpoint:
            if not addresses or info.port is None:
                log.debug("mDNS: ignoring %s: no endpoint", name)
                return None
            endpoint = f"tcp://{addresses[0]}:{info.port}"
        pub = txt.get("pub") or None
        if addresses:
            endpoint = _with_host(endpoint, addresses[0])
            pub = _with_host(pub, addresses[0]) if pub else None
        try:
            version: int | None = int(txt["v"])
        except (KeyError, ValueError):
            version = None
        return Candidate(
            endpoint=endpoint,
            node_id=txt.get("id") or None,
            pub_endpoint=pub,
            cluster=cluster,
            version=version,
            public_key=txt.get("pk") or None,
            metadata={
                k[len(METADATA_PREFIX) :]: v
                for k, v in txt.items()
                if k.startswith(METADATA_PREFIX)
            },
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve_host(host: str) -> str:
    if host in _WILDCARD_HOSTS or host == "localhost" or _is_ip(host):
        return host
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    if not infos:
        raise ConfigError(f"cannot resolve bind host {host!r} to choose mDNS interfaces")
    return str(infos[0][4][0])

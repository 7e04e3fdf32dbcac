"""DNS discovery: the addresses a DNS name resolves to, each greeted like a static seed.

The name is resolved when the backend starts and then every ``interval`` seconds:

- SRV records (``record="srv"``): each names a host and the ROUTER port of a node. The
  hosts' A and AAAA records come from the answer's additional section when the server
  put them there, otherwise from a query of their own.
- A and AAAA records (``record="a"``): each address is a node listening on ``port``.
- ``record="auto"``: SRV when the name has SRV records, otherwise A and AAAA.

Each address found is a candidate that knows only its endpoint, as a seed: the node
greets it with ``Info`` and learns the rest (and the cluster) from the answer. An SRV
target's first label names the node there, as a seed's ``;NAME`` does: with CURVE its
key is the certificate of that name in the trust directory. (A Kubernetes headless
Service's SRV records name a StatefulSet's pods so: ``shop-0.shop.default.svc...``.) An
address that leaves the records is REMOVED, which only stops the greetings to it: a
node that heartbeats stays a member whatever DNS says (membership.py decides).

A resolution that fails (the server does not answer, refuses, or says the name has no
such records) is logged as one line, and again only when the failure changes (or
after ``REPEAT_LOG`` of the same); the next attempt comes after a backoff that doubles
from ``BACKOFF_FIRST`` up to ``interval``. Nothing stops the loop but ``aclose()``.
When the server answers that the name has no records, the addresses known so far are
REMOVED; when it does not answer, they are kept.

dnspython (``pip install 'catga-zmq[dns]'``) is imported when the backend is built,
never by ``import catga_zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal

from ..config import (
    MAX_DURATION,
    MIN_DNS_INTERVAL,
    DnsRecordName,
    check_dns_name,
    parse_resolver,
)
from ..errors import ConfigError
from ._fanout import Fanout
from .base import Candidate, ChangeKind, Discovery, DiscoveryChange

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.resolver

__all__ = ["DnsDiscovery", "DnsProblem"]

log = logging.getLogger(__name__)

#: How long one query may take, the resolver's own retries included (at most the interval).
RESOLVE_TIMEOUT: Final = 2.0  # s
#: The first pause after a failed resolution; it doubles, up to the interval.
BACKOFF_FIRST: Final = 0.25  # s
#: A failure that persists unchanged is logged again after this long.
REPEAT_LOG: Final = 300.0  # s
#: Addresses taken from one resolution at most (a node keeps max_addresses anyway).
MAX_RECORDS: Final = 1024
#: SRV targets resolved at once, when the answer did not carry their addresses.
TARGET_QUERIES: Final = 16

_INSTALL: Final = "discovery 'dns' needs dnspython: pip install 'catga-zmq[dns]'"

ProblemKind = Literal["unreachable", "failed", "missing", "config", "unexpected"]


class DnsProblem(Exception):
    """Why a resolution gave no addresses, as one line.

    ``kind`` groups the causes a log line is repeated for only when it changes:
    ``unreachable`` (no answer in time, no route), ``failed`` (the server answered
    with an error: SERVFAIL, REFUSED), ``missing`` (the server says the name, or its
    records, do not exist), ``config`` (no DNS server to ask) and ``unexpected``.
    ``authoritative``: the server said there are no records, so there are no addresses.
    """

    def __init__(self, kind: ProblemKind, text: str, *, authoritative: bool = False) -> None:
        super().__init__(text)
        self.kind: ProblemKind = kind
        self.text = text
        self.authoritative = authoritative


def _dnspython() -> None:
    """Import dnspython's asyncio resolver now, or say how to install it."""
    try:
        import dns.asyncresolver
        import dns.resolver  # noqa: F401
    except ImportError:
        raise ConfigError(_INSTALL) from None


def endpoint_of(address: str, port: int) -> str:
    """``tcp://HOST:PORT`` for an IP address from a record (IPv6 in brackets)."""
    ip = ipaddress.ip_address(address)
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return f"tcp://{host}:{port}"


class DnsDiscovery(Discovery):
    """The nodes whose addresses DNS name ``dns_name`` resolves to (see the module).

    ``record``: ``"srv"``, ``"a"`` (A and AAAA) or ``"auto"``. ``port``: the ROUTER
    port of the nodes that A and AAAA records name (unused with SRV, whose records
    carry it). ``interval``: seconds between two resolutions. ``resolver``: the DNS
    server, ``IP[:PORT]``; empty, the system's (``/etc/resolv.conf``, with its search
    list). A ``ConfigError`` names a bad value, or says to install dnspython.
    """

    name = "dns"

    def __init__(
        self,
        dns_name: str,
        *,
        record: DnsRecordName = "auto",
        port: int = 0,
        interval: float = 5.0,
        resolver: str = "",
    ) -> None:
        check_dns_name(dns_name)
        if record not in ("auto", "a", "srv"):
            raise ConfigError(f"dns_record {record!r} is not one of auto, a, srv")
        if record != "srv" and not 0 < port <= 65535:
            raise ConfigError(
                f"DNS discovery of A/AAAA records needs the nodes' ROUTER port (1-65535), "
                f"got {port!r}; set dns_port, or use dns_record 'srv'"
            )
        if not MIN_DNS_INTERVAL <= interval <= MAX_DURATION:
            raise ConfigError(
                f"dns_interval {interval!r} is out of range; use "
                f"{MIN_DNS_INTERVAL:g} to {MAX_DURATION:g} s"
            )
        self.server = parse_resolver(resolver) if resolver else None
        _dnspython()
        self.dns_name = dns_name
        self.record: DnsRecordName = record
        self.port = port
        self.interval = interval
        self.resolver = resolver
        #: How long one query may take (s).
        self.timeout = min(RESOLVE_TIMEOUT, interval)
        #: What was found by the last resolution that gave an answer, by endpoint.
        self._found: dict[str, Candidate] = {}
        #: The node each endpoint of the last SRV answer names: its target's first label.
        self._names: dict[str, str] = {}
        self._me: Candidate | None = None
        self._fanout = Fanout()
        self._task: asyncio.Task[None] | None = None
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._closed = False
        #: The failure logged last (its kind), when it was, and failures since a success.
        self._problem: ProblemKind | None = None
        self._logged_at = 0.0
        self._failures = 0

    def node_settings(self) -> dict[str, Any]:
        """This backend as ``NodeOptions`` settings (``Node(discovery=DnsDiscovery(...))``)."""
        return {
            "dns_name": self.dns_name,
            "dns_record": self.record,
            "dns_port": self.port,
            "dns_interval": self.interval,
            "dns_resolver": self.resolver,
        }

    @property
    def asked(self) -> str:
        """The DNS server asked, as log lines name it."""
        if self.server is None:
            return "the system's DNS servers"
        host, port = self.server
        return f"{f'[{host}]' if ':' in host else host}:{port}"

    # the interface ---------------------------------------------------------------

    async def register(self, me: Candidate) -> None:
        """Remember this node's address (its own record is no candidate); start resolving.

        Returns at once: a DNS server that is down delays nothing but the finding.
        """
        self._me = me
        self._start()

    async def unregister(self) -> None:
        """Forget this node's address; DNS records are not ours to withdraw."""
        self._me = None

    def candidates(self) -> list[Candidate]:
        """The addresses of the last answer, this node's own endpoint left out."""
        own = self._me.endpoint if self._me else None
        return [c for endpoint, c in self._found.items() if endpoint != own]

    def watch(self) -> AsyncIterator[DiscoveryChange]:
        """The addresses known now as ADDED, then each one added to or removed from DNS."""
        self._start()
        return self._fanout.watch(DiscoveryChange(ChangeKind.ADDED, c) for c in self.candidates())

    async def aclose(self) -> None:
        """Stop resolving; every ``watch()`` iterator ends. Idempotent."""
        self._closed = True
        await self.unregister()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fanout.close()

    # the loop --------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"catga-dns-{self.dns_name}"
            )

    async def _run(self) -> None:
        """Resolve every interval; after a failure, sooner, with backoff. Never ends
        by itself: every failure is caught, logged and tried again."""
        delay = BACKOFF_FIRST
        while True:
            try:
                endpoints = await self.resolve()
            except DnsProblem as problem:
                self._failed(problem)
            except Exception as exc:  # a bug must not end discovery for good
                self._failed(DnsProblem("unexpected", f"resolving failed: {exc!r}"), exc)
            else:
                self._succeeded(endpoints)
                delay = BACKOFF_FIRST
                await asyncio.sleep(self.interval)
                continue
            log.debug("DNS discovery of %s: next attempt in %.2f s", self.dns_name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.interval)

    def _failed(self, problem: DnsProblem, exc: BaseException | None = None) -> None:
        self._failures += 1
        if problem.authoritative:
            self._update(set())
        now = asyncio.get_running_loop().time()
        if problem.kind == self._problem and now - self._logged_at < REPEAT_LOG:
            return
        again = (
            f" ({self._failures} failed attempts so far)" if problem.kind == self._problem else ""
        )
        self._problem, self._logged_at = problem.kind, now
        log.log(
            logging.ERROR if exc is not None else logging.WARNING,
            "DNS discovery of %s: %s%s; trying again with backoff, at most %g s apart",
            self.dns_name,
            problem.text,
            again,
            self.interval,
            exc_info=exc,
        )

    def _succeeded(self, endpoints: set[str]) -> None:
        if self._problem is not None:
            log.info(
                "DNS discovery of %s: resolved again after %d failed attempts (%d listed)",
                self.dns_name,
                self._failures,
                len(endpoints),
            )
        self._problem, self._failures = None, 0
        self._update(endpoints)

    def _update(self, endpoints: set[str]) -> None:
        """Publish the difference between what was found and ``endpoints``."""
        old = set(self._found)
        removed, added = sorted(old - endpoints), sorted(endpoints - old)
        if not removed and not added:
            return
        own = self._me.endpoint if self._me else None
        for endpoint in removed:
            candidate = self._found.pop(endpoint)
            if endpoint != own:
                self._fanout.publish(DiscoveryChange(ChangeKind.REMOVED, candidate))
        for endpoint in added:
            # An SRV target's name stands for a certificate, as a seed's ";NAME" does.
            name = self._names.get(endpoint)
            self._found[endpoint] = candidate = Candidate(endpoint=endpoint, public_key=name)
            if endpoint != own:
                self._fanout.publish(DiscoveryChange(ChangeKind.ADDED, candidate))
        log.info(
            "DNS discovery of %s: %d listed; added %s; removed %s",
            self.dns_name,
            len(self._found),
            _listing(added),
            _listing(removed),
        )

    # resolving -------------------------------------------------------------------

    async def resolve(self) -> set[str]:
        """The endpoints the name gives now, or ``DnsProblem`` saying why there are none."""
        resolver = self._make_resolver()
        if self.record != "a":
            answer = await self._query(
                resolver, self.dns_name, "SRV", none_ok=self.record == "auto"
            )
            if answer is not None:
                return await self._srv_endpoints(resolver, answer)
        addresses = await self._addresses(resolver, self.dns_name)
        if not addresses:
            raise DnsProblem(
                "missing",
                f"{self.dns_name} has no "
                + ("SRV, A or AAAA" if self.record == "auto" else "A or AAAA")
                + f" records ({self.asked} answered)",
                authoritative=True,
            )
        return {endpoint_of(a, self.port) for a in addresses[:MAX_RECORDS]}

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver
        import dns.resolver

        if self._resolver is None:
            if self.server is None:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration:
                    raise DnsProblem(
                        "config",
                        "no DNS server configured (/etc/resolv.conf); set dns_resolver",
                    ) from None
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [self.server[0]]
                resolver.port = self.server[1]
            # A query may not outlast the interval, or resolutions would fall behind it.
            resolver.lifetime = self.timeout
            self._resolver = resolver
        return self._resolver

    async def _query(
        self, resolver: dns.asyncresolver.Resolver, qname: str, rdtype: str, *, none_ok: bool
    ) -> dns.resolver.Answer | None:
        """One query; None when the name has no records of that type and ``none_ok``."""
        import dns.exception
        import dns.resolver

        what = f"{rdtype} {qname} from {self.asked}"
        try:
            # The system's resolver applies its search list, as getaddrinfo would.
            return await resolver.resolve(qname, rdtype, search=self.server is None)
        except dns.resolver.NoAnswer:
            if none_ok:
                return None
            raise DnsProblem(
                "missing",
                f"{qname} has no {rdtype} records ({self.asked} answered)",
                authoritative=True,
            ) from None
        except dns.resolver.NXDOMAIN:
            raise DnsProblem(
                "missing",
                f"{qname} does not exist (NXDOMAIN from {self.asked})",
                authoritative=True,
            ) from None
        except dns.exception.Timeout:
            raise DnsProblem(
                "unreachable",
                f"no answer to {what} within {self.timeout:g} s: is the DNS server up?",
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsProblem("failed", f"asking {what}: {_short(exc)}") from None
        except OSError as exc:
            raise DnsProblem("unreachable", f"asking {what}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsProblem("failed", f"asking {what}: {_short(exc)}") from None

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, qname: str) -> list[str]:
        """The A and AAAA addresses of ``qname`` (both asked at once); [] when it has none."""
        found = await asyncio.gather(
            self._query(resolver, qname, "A", none_ok=True),
            self._query(resolver, qname, "AAAA", none_ok=True),
            return_exceptions=True,
        )
        addresses: list[str] = []
        for answer in found:
            if isinstance(answer, BaseException):
                raise answer
            if answer is not None:
                addresses.extend(str(r.address) for r in answer)
        return addresses

    async def _srv_endpoints(
        self, resolver: dns.asyncresolver.Resolver, answer: dns.resolver.Answer
    ) -> set[str]:
        import dns.rdatatype

        targets: dict[str, list[int]] = {}  # host -> the ports its records name
        for record in list(answer)[:MAX_RECORDS]:
            target = record.target.to_text()
            if target != "." and record.port:  # "." : no service here (RFC 2782)
                targets.setdefault(target, []).append(int(record.port))
        # Servers usually add the targets' addresses; ask only for those they left out.
        known: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                known.setdefault(rrset.name.to_text(), []).extend(str(r.address) for r in rrset)
        missing = [t for t in targets if t not in known]
        if missing:
            known.update(await self._targets(resolver, missing))
        names = {
            endpoint_of(address, port): target.split(".", 1)[0]
            for target, ports in targets.items()
            for address in known.get(target, ())
            for port in ports
        }
        kept = set(sorted(names)[:MAX_RECORDS])
        self._names = {e: n for e, n in names.items() if e in kept}
        return kept

    async def _targets(
        self, resolver: dns.asyncresolver.Resolver, targets: Iterable[str]
    ) -> dict[str, list[str]]:
        """The addresses of SRV targets; a target the server says has none is left out,
        and one it does not answer for fails the whole resolution (so nothing is lost)."""
        gate = asyncio.Semaphore(TARGET_QUERIES)

        async def one(target: str) -> list[str]:
            async with gate:
                return await self._addresses(resolver, target)

        names = list(targets)
        found = await asyncio.gather(*(one(t) for t in names), return_exceptions=True)
        addresses: dict[str, list[str]] = {}
        for target, result in zip(names, found, strict=True):
            if isinstance(result, DnsProblem) and result.authoritative:
                log.debug("DNS discovery of %s: SRV target %s: %s", self.dns_name, target, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                addresses[target] = result
        return addresses


def _listing(endpoints: list[str], shown: int = 8) -> str:
    """Endpoints as a log line names them: the first few, and how many more."""
    if not endpoints:
        return "none"
    more = len(endpoints) - shown
    return ", ".join(endpoints[:shown]) + (f" and {more} more" if more > 0 else "")


def _short(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

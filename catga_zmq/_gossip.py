"""Greetings, the address book, and the discovery loop: how a node hears of its peers.

Discovery and greetings only find addresses and connect to them; membership is decided
by heartbeats (see membership.py). So a discovery record that goes away stops the
greetings to that address, and drops the sockets of an address that never joined,
but never marks a heartbeating node LEFT.

Anyone can greet a node with any address, so what greetings bring is held on
probation: at most ``max_addresses`` addresses are kept, DEALERs are opened to at
most ``max_peers`` endpoints that are not members, an address that has not
heartbeated within ``ADDRESS_PROOF_TIME`` is forgotten with its sockets, and an
``Info`` answer passes on only members heard from and addresses that answered.
Discovery records and seeds were configured, not claimed: they are not on probation.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final

from ._inbound import Rejections
from ._requester import Requester
from .config import NodeOptions, parse_endpoint, split_seed
from .discovery.base import Candidate, ChangeKind, Discovery
from .errors import CatgaError, ConfigError, TransportFailed
from .membership import Membership, NodeStatus, Peer
from .protocol import MAX_INFO_PEERS, PROTOCOL_VERSION, Codec, HeartbeatBody
from .security import KEY_LENGTH, Trust, plaintext_meets_curve
from .system import Info, NodeInfo, PeerAddress
from .transport import Transport

log = logging.getLogger("catga_zmq.node")

#: How long a greeting (``Info``) to a seed or a gossiped peer waits for its answer.
GREETING_TIMEOUT: Final = 1.0  # s
#: Pause before greeting again an endpoint that has no connection yet.
GREETING_RETRY: Final = 0.05  # s
#: Greetings to an address heard of from another node, before it is forgotten.
GOSSIP_ATTEMPTS: Final = 5
#: Greetings to a node whose first heartbeat just arrived (to learn whom it knows).
FRESH_ATTEMPTS: Final = 3
#: A peer that said BYE: its sockets stay this long for the replies still on the way.
LEFT_LINGER: Final = 1.0  # s
#: An address learned from a greeting or from gossip is forgotten, its sockets closed,
#: unless its node heartbeats within this (a real node does within milliseconds).
ADDRESS_PROOF_TIME: Final = 30.0  # s
#: A client with static seeds asks one live member this often whom it knows: nobody
#: greets a client, so this is how it hears of nodes that joined after it started.
CLIENT_REFRESH: Final = 1.0  # s


class Gossip:
    """Turns discovery records, greetings and ``Info`` answers into connections."""

    def __init__(
        self,
        *,
        me: Peer,
        options: NodeOptions,
        membership: Membership,
        transport: Transport,
        requester: Requester,
        codec: Codec,
        reject: Rejections,
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        forget_source: Callable[[str], None],
        trust: Trust | None = None,
    ) -> None:
        self.me = me
        self.options = options
        self.membership = membership
        self.transport = transport
        self.requester = requester
        self.codec = codec
        self.reject = reject
        self.spawn = spawn
        self.forget_source = forget_source
        self.loop = asyncio.get_running_loop()
        #: Static seeds, DNS and no discovery: nodes learn of each other by greeting.
        self.enabled = options.discovery in ("static", "dns", "none")
        self.running = True
        #: Endpoints being greeted now, each with its greeting's token: a greeting goes
        #: on only while its token is there (``withdraw`` takes it away).
        self._greeting: dict[str, object] = {}
        self._greeted: set[str] = set()  # endpoints that answered a greeting
        #: Every address heard of (greetings included, before any heartbeat), by
        #: endpoint: what an ``Info`` answer passes on, so a joiner learns of nodes
        #: that joined a moment before it, not only of those already ALIVE here.
        self.addresses: dict[str, PeerAddress] = {}
        #: Addresses on probation, by endpoint: the timer that forgets them unless
        #: their node heartbeats first.
        self._probation: dict[str, asyncio.TimerHandle] = {}
        self.proof_time = ADDRESS_PROOF_TIME
        #: The seeds' endpoints (without the key a seed may name).
        self._seeds = frozenset(split_seed(s)[0] for s in options.seeds)
        #: Discovery records that give only an endpoint (DNS): greeted like seeds, for
        #: as long as they are listed.
        self._listed: set[str] = set()
        #: CURVE: whose keys to accept (None in plaintext).
        self.trust = trust
        #: A client's greetings carry no address: the greeted node must not take it
        #: for a node to connect to (it has no sockets to connect to, and is no member).
        self.announce = options.role == "member"

    def my_address(self) -> PeerAddress:
        me = self.me
        return PeerAddress(
            me.node_id,
            me.endpoint,
            me.pub_endpoint,
            self.options.cluster,
            PROTOCOL_VERSION,
            me.public_key,
        )

    # discovery -----------------------------------------------------------------------

    async def follow(self, discovery: Discovery) -> None:
        """The discovery loop: connect to what it finds; stop greeting what it loses."""
        async for change in discovery.watch():
            c = change.candidate
            if change.kind is ChangeKind.ADDED:
                if c.node_id is None:
                    self._listed.add(c.endpoint)
                self.add_candidate(c, greet=self.enabled, trusted=True)
            else:
                self.withdraw(c.endpoint)

    def add_candidate(self, c: Candidate, *, greet: bool, trusted: bool = False) -> None:
        """Connect to ``c`` (and greet it if asked). ``trusted``: it comes from discovery
        or the seeds, not from what another node claims, and is not on probation."""
        me = self.me
        if c.endpoint == me.endpoint:
            return
        if not self._usable(c.node_id or c.endpoint, c.endpoint, c.pub_endpoint or None):
            return
        if c.cluster is not None and c.cluster != self.options.cluster:
            log.debug("ignoring %s at %s: cluster %r", c.node_id, c.endpoint, c.cluster)
            return
        if c.version is not None and c.version != PROTOCOL_VERSION:
            self.reject(
                c.node_id or c.endpoint,
                "version",
                f"{c.node_id} at {c.endpoint} speaks protocol version {c.version}, "
                f"this node {PROTOCOL_VERSION}",
            )
            return
        if self.transport.curve is not None:
            if not self._learn_key(c):
                return
        elif c.public_key and len(c.public_key) == KEY_LENGTH:
            # (A seed's ";NAME" is no key: it names a certificate for CURVE nodes.)
            who = c.node_id or c.endpoint
            self.reject(
                who, "curve-peer", plaintext_meets_curve(f"{who} at {c.endpoint}", "it has a key")
            )
            return
        if c.node_id == me.node_id:
            # Another node with this node's id: its heartbeats tell which is younger.
            if c.pub_endpoint:
                self._connect(c.endpoint, c.pub_endpoint, dealer=False)
            return
        trusted = trusted or c.endpoint in self._seeds
        if c.pub_endpoint and c.node_id:
            if not self._keep(c, trusted):
                return
            if not self._connect(c.endpoint, c.pub_endpoint, dealer=self._room_for(c.endpoint)):
                return
        if (
            (greet or not c.pub_endpoint)
            and c.endpoint not in self._greeted
            and (trusted or self._room_for(c.endpoint))
        ):
            self.greet(c.endpoint, attempts=0 if c.node_id is None else GOSSIP_ATTEMPTS)

    def _learn_key(self, c: Candidate) -> bool:
        """CURVE: the key ``c`` serves with, checked against the trust policy, for the
        connections to come; False (rejected) when there is none, or it is not the key
        of the node ``c`` names."""
        trust = self.trust
        assert trust is not None
        claimed = c.public_key or ""
        key = claimed.encode("ascii", "replace")
        by_name = trust.key_of(claimed) if claimed else None  # a seed may name a cert
        if by_name is not None:
            key = by_name
        elif not key and c.node_id:
            key = trust.key_of(c.node_id) or b""
        who = c.node_id or c.endpoint
        if claimed and by_name is None and len(claimed) != KEY_LENGTH:
            # A name (a seed's ";NAME", an SRV target's first label) with no certificate.
            self.reject(
                who,
                "no-key",
                f"{who} at {c.endpoint}: no certificate {claimed}.key in the trust "
                "directory, so no CURVE key to connect with; copy it there",
            )
            return False
        if not key:
            self.reject(
                who,
                "no-key",
                f"{who} at {c.endpoint}: no CURVE key known; give it with the seed "
                f"({c.endpoint};KEY) or put its certificate in the trust directory",
            )
            return False
        if not trust.allows(key) or (c.node_id and not trust.identity_ok(c.node_id, key)):
            self.reject(
                who,
                "untrusted-key",
                f"{who} at {c.endpoint} serves with key {key.decode('ascii', 'replace')}, "
                "which is not trusted for it; not connected",
            )
            return False
        self.transport.learn_key(c.endpoint, key)
        if c.pub_endpoint:
            self.transport.learn_key(c.pub_endpoint, key)
        return True

    def _keep(self, c: Candidate, trusted: bool) -> bool:
        """Write ``c`` into the address book, unless it is full (then reject it)."""
        assert c.node_id is not None and c.pub_endpoint is not None
        if c.endpoint not in self.addresses:
            if len(self.addresses) >= self.options.max_addresses and trusted and self._probation:
                # A configured address (discovery, seeds) takes the place of the oldest
                # claimed one: a flood of greetings must not shut real nodes out.
                self.forget_address(next(iter(self._probation)))
            if len(self.addresses) >= self.options.max_addresses:
                self.reject(
                    "the address book",
                    "full",
                    f"{c.node_id} at {c.endpoint} not kept: this node keeps "
                    f"{self.options.max_addresses} addresses (max_addresses)",
                )
                return False
            if not trusted and not self._is_member_endpoint(c.endpoint):
                self._on_probation(c.endpoint)
        else:
            self._moved(c.endpoint, c.pub_endpoint)
        self.addresses[c.endpoint] = PeerAddress(
            c.node_id,
            c.endpoint,
            c.pub_endpoint,
            self.options.cluster,
            PROTOCOL_VERSION,
            c.public_key or "",
        )
        return True

    def _moved(self, endpoint: str, pub_endpoint: str) -> None:
        """A known address now names another PUB endpoint: unsubscribe from the old one
        unless a member or another address still uses it. Otherwise every re-greeting
        with a new PUB endpoint would add one more SUB connection, without bound."""
        old = self.addresses[endpoint].pub_endpoint
        if old == pub_endpoint:
            return
        in_use = any(p.pub_endpoint == old for p in self.membership.peers.values()) or any(
            a.pub_endpoint == old for e, a in self.addresses.items() if e != endpoint
        )
        if not in_use:
            self.transport.unsubscribe_from(old)

    def _room_for(self, endpoint: str) -> bool:
        """May a DEALER be opened to ``endpoint``, not (yet) a member's? Members have
        their own bound (``max_peers``, heartbeats); addresses share this one, so the
        two together stay under the context's socket limit."""
        dealers = self.transport.dealers
        return endpoint in dealers or len(dealers) < self.options.max_peers

    def _connect(self, endpoint: str, pub_endpoint: str, *, dealer: bool) -> bool:
        """Subscribe to ``pub_endpoint`` (and open a DEALER to ``endpoint``); on failure
        (no socket to be had) log it and forget the address: False."""
        try:
            self.transport.subscribe_to(pub_endpoint)
            if dealer:
                self.transport.dealer(endpoint)
        except TransportFailed as exc:
            log.warning("%s", exc.message)
            self.forget_address(endpoint)
            return False
        return True

    def _is_member_endpoint(self, endpoint: str) -> bool:
        return any(p.endpoint == endpoint for p in self.membership.peers.values())

    # probation -----------------------------------------------------------------------

    def _on_probation(self, endpoint: str) -> None:
        if endpoint not in self._probation:
            self._probation[endpoint] = self.loop.call_later(
                self.proof_time, self._unproven, endpoint
            )

    def _proven(self, endpoint: str) -> None:
        handle = self._probation.pop(endpoint, None)
        if handle is not None:
            handle.cancel()

    def _unproven(self, endpoint: str) -> None:
        """Its probation ended: an address whose node never heartbeated is forgotten."""
        self._probation.pop(endpoint, None)
        if self.running and not self._is_member_endpoint(endpoint):
            self.forget_address(endpoint)

    def _usable(self, who: str, *endpoints: str | None) -> bool:
        for endpoint in endpoints:
            if endpoint is None:
                continue
            try:
                parse_endpoint(endpoint)
            except ConfigError as exc:
                self.reject(who, "endpoint", f"{who} announces {exc.message}")
                return False
        return True

    def on_fresh(self, hb: HeartbeatBody) -> None:
        """A node's first heartbeat (or its new incarnation's): connect now, not on the
        first request, and ask it whom it knows."""
        self._proven(hb.endpoint)
        try:
            self.transport.dealer(hb.endpoint)
        except TransportFailed as exc:
            # A member without a DEALER yet: send() opens one (or says why it cannot).
            log.warning("%s", exc.message)
            return
        if hb.max_message_size:
            self.transport.set_peer_limit(hb.endpoint, hb.max_message_size)
        if self.enabled:
            self.greet(hb.endpoint, attempts=FRESH_ATTEMPTS)

    def on_greeting(self, caller: PeerAddress) -> None:
        """An ``Info`` request that carried its sender's address."""
        if caller.cluster == self.options.cluster:
            self.add_candidate(
                Candidate(
                    caller.endpoint,
                    caller.node_id,
                    caller.pub_endpoint,
                    caller.cluster,
                    caller.version,
                    caller.public_key or None,
                ),
                greet=False,
            )

    def known_addresses(self) -> list[PeerAddress]:
        """What an ``Info`` answer passes on: members heard from (ALIVE) and addresses
        that answered a greeting; never an address only claimed, which may be anyone's."""
        cluster = self.options.cluster
        known = {
            p.endpoint: PeerAddress(
                p.node_id, p.endpoint, p.pub_endpoint, cluster, PROTOCOL_VERSION, p.public_key
            )
            for p in self.membership.peers.values()
            if p.status is NodeStatus.ALIVE
        }
        gone = {
            p.endpoint
            for p in self.membership.peers.values()
            if p.status in (NodeStatus.LEFT, NodeStatus.FAULTED)
        }
        for endpoint in self._greeted:
            address = self.addresses.get(endpoint)
            if address is not None and endpoint not in known and endpoint not in gone:
                known[endpoint] = address
        # Members first: a receiver refuses a longer list (MAX_INFO_PEERS).
        return list(known.values())[:MAX_INFO_PEERS]

    # greetings -----------------------------------------------------------------------

    def greet(self, endpoint: str, attempts: int) -> None:
        """Exchange ``Info`` with ``endpoint`` (0 attempts: until it answers, for seeds)."""
        if endpoint in self._greeting or not self.running:
            return
        token = self._greeting[endpoint] = object()
        self.spawn(self._greet(endpoint, attempts, token), f"greet-{endpoint}")

    async def _greet(self, endpoint: str, attempts: int, token: object) -> None:
        payload = self.codec.encode(Info(caller=self.my_address() if self.announce else None))
        target = Peer(node_id=endpoint, endpoint=endpoint, pub_endpoint="", incarnation=0)
        give_up = self.loop.time() + attempts * GREETING_TIMEOUT if attempts else math.inf

        def wanted() -> bool:
            return self.running and self._greeting.get(endpoint) is token

        try:
            while wanted() and self.loop.time() < give_up:
                deadline = self.loop.time() + GREETING_TIMEOUT
                try:
                    info: NodeInfo = await self.requester.call_remote(
                        target,
                        Info.__wire_name__,
                        payload,
                        deadline,
                        "",
                        self.codec.decoder(NodeInfo),
                    )
                except TransportFailed:
                    # Not connected yet (or not listening): TCP connects in milliseconds.
                    await asyncio.sleep(GREETING_RETRY)
                    continue
                except CatgaError as exc:
                    log.debug("greeting %s: %s", endpoint, exc)
                    await asyncio.sleep(max(0.0, deadline - self.loop.time()))
                    continue
                if wanted():  # not withdrawn while the answer was on its way
                    self._greeted_by(endpoint, info)
                return
            if wanted():
                self.forget_address(endpoint)
        finally:
            if self._greeting.get(endpoint) is token:
                del self._greeting[endpoint]

    def _greeted_by(self, endpoint: str, info: NodeInfo) -> None:
        if info.cluster != self.options.cluster:
            log.warning(
                "%s at %s is in cluster %r, not %r; ignoring it",
                info.node_id,
                endpoint,
                info.cluster,
                self.options.cluster,
            )
            return
        self._greeted.add(endpoint)
        self.add_candidate(
            Candidate(
                endpoint,
                info.node_id,
                info.pub_endpoint,
                info.cluster,
                info.version,
                info.public_key or None,
            ),
            greet=False,
        )
        if endpoint not in self.addresses:  # refused (the book is full): not passed on
            self._greeted.discard(endpoint)
        for p in info.peers:
            self.add_candidate(
                Candidate(
                    p.endpoint,
                    p.node_id,
                    p.pub_endpoint,
                    p.cluster,
                    p.version,
                    p.public_key or None,
                ),
                greet=True,
            )

    async def refresh(self) -> None:
        """A client's loop, with static seeds: every ``CLIENT_REFRESH`` greet one live
        member (each in turn), to learn of the nodes that joined since. A member
        learns of those from their own greetings; a client, which nobody greets and
        whose greetings carry no address, only so."""
        turn = 0
        while True:
            await asyncio.sleep(CLIENT_REFRESH)
            live = [p for p in self.membership.peers.values() if p.status is NodeStatus.ALIVE]
            if live:
                self.greet(live[turn % len(live)].endpoint, attempts=1)
                turn += 1

    # forgetting ----------------------------------------------------------------------

    def withdraw(self, endpoint: str) -> None:
        """A discovery record went away: stop greeting it, and forget the address unless
        its node joined (heartbeats decide about members, not records)."""
        self._listed.discard(endpoint)
        self._greeting.pop(endpoint, None)
        self.forget_address(endpoint)

    def forget_address(self, endpoint: str) -> None:
        """An address that never joined (unanswered greetings, or its discovery record
        went away): stop reconnecting to it, and stop passing it on to others. A node
        that joined stays: heartbeats, not records or greetings, decide that."""
        if any(p.endpoint == endpoint for p in self.membership.peers.values()):
            return
        address = self.addresses.pop(endpoint, None)
        self._proven(endpoint)  # nothing left to prove
        self._greeted.discard(endpoint)
        self.transport.drop_peer(endpoint, address.pub_endpoint if address else "")
        log.info("forgot %s: it never joined", endpoint)

    def peer_silent(self, peer: Peer) -> None:
        """A member turned SUSPECT: perhaps only its SUB's connection went (libzmq does
        not reconnect after an oversized frame). A new SUB costs little; a live node is
        heard again at once."""
        if peer.status is not NodeStatus.SUSPECT or not self.running:
            return
        try:
            self.transport.resubscribe(peer.pub_endpoint)
        except TransportFailed as exc:
            log.warning("%s", exc.message)

    def peer_gone(self, peer: Peer) -> None:
        """Membership let go of ``peer`` (it left, was forgotten, or restarted elsewhere)."""
        if peer.status is NodeStatus.LEFT and self.running:
            # Replies overtaken by its BYE are still on the way to its DEALER: keep the
            # sockets until in-flight requests have had their grace.
            self.loop.call_later(LEFT_LINGER, self._drop_if_left, peer)
        else:
            self._drop(peer)

    def _drop_if_left(self, peer: Peer) -> None:
        if peer.status is NodeStatus.LEFT:  # not if it came back meanwhile
            self._drop(peer)

    def _drop(self, peer: Peer) -> None:
        if not self.running:
            return
        self.forget_source(peer.node_id)
        still_used = any(
            p is not peer and p.endpoint == peer.endpoint and p.status is not NodeStatus.LEFT
            for p in self.membership.peers.values()
        )
        if still_used:
            return
        self.transport.drop_peer(peer.endpoint, peer.pub_endpoint)
        self.addresses.pop(peer.endpoint, None)
        self._proven(peer.endpoint)
        self._greeted.discard(peer.endpoint)
        if self.enabled and (peer.endpoint in self._seeds or peer.endpoint in self._listed):
            # A seed (or a listed address) that comes back at the same address knows
            # nothing of this node.
            self.greet(peer.endpoint, attempts=0)

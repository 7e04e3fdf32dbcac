"""Weighted, consistent-hash and least-connections routing; strategy per node and per type.

The routers are pure and synchronous, so most of these tests are exact. The end-to-end
ones run nodes in one process, found through a ``MemoryHub``, over real loopback ZeroMQ.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from _procs import child_env, python, run
from conftest import PATIENT, MakeNode, member, parts, wait_until

from catga_zmq import HandlerError, Node, Request, RequestTimeout
from catga_zmq.membership import Peer
from catga_zmq.routing import (
    ConsistentHashRouter,
    HashRing,
    LeastConnectionsRouter,
    LocalFirstRouter,
    RoundRobinRouter,
    Router,
    WeightedRouter,
    make_router,
    stable_hash,
)
from catga_zmq.routing import consistent_hash as consistent_hash_module


def peer(
    node_id: str,
    *,
    weight: int = 1,
    load: float = 0.0,
    in_flight: int = 0,
    outstanding: int = 0,
    local: bool = False,
) -> Peer:
    return Peer(
        node_id,
        f"tcp://127.0.0.1:1/{node_id}",
        f"tcp://127.0.0.1:2/{node_id}",
        1,
        weight=weight,
        load=load,
        in_flight=in_flight,
        outstanding=outstanding,
        local=local,
    )


def picks(router: Router, candidates: Sequence[Peer], n: int, key: str | None = None) -> list[str]:
    return [router.select(candidates, None, key).node_id for _ in range(n)]


def spread(router: Router, candidates: Sequence[Peer], n: int) -> Counter[str]:
    return Counter(picks(router, candidates, n))


# weighted round robin ----------------------------------------------------------------------


def test_weighted_5_3_1_over_900_is_exact() -> None:
    peers = [peer("a", weight=5), peer("b", weight=3), peer("c", weight=1)]
    assert spread(WeightedRouter(), peers, 900) == {"a": 500, "b": 300, "c": 100}


def test_weighted_every_cycle_is_exact() -> None:
    peers = [peer("a", weight=5), peer("b", weight=3), peer("c", weight=1)]
    router = WeightedRouter()
    for _ in range(20):
        assert spread(router, peers, 9) == {"a": 5, "b": 3, "c": 1}


def test_weighted_matches_nginx_sequence_for_5_1_1() -> None:
    # The sequence nginx documents for its smooth weighted round robin (ngx_http_upstream_round_robin.c).
    peers = [peer("a", weight=5), peer("b", weight=1), peer("c", weight=1)]
    assert picks(WeightedRouter(), peers, 14) == list("aabacaa" * 2)


def test_weighted_sequence_for_5_3_1() -> None:
    # Worked by hand with nginx's rule (add each weight, take the largest, subtract the total).
    peers = [peer("a", weight=5), peer("b", weight=3), peer("c", weight=1)]
    assert picks(WeightedRouter(), peers, 9) == list("abacababa")


@pytest.mark.parametrize("weights", [(5, 1), (5, 1, 1), (5, 3, 1), (3, 2), (1, 1, 1), (7, 4, 2, 1)])
def test_weighted_is_smooth(weights: tuple[int, ...]) -> None:
    """No bursts: after every pick each node's count is within 1 of its exact share."""
    peers = [peer(chr(ord("a") + i), weight=w) for i, w in enumerate(weights)]
    total = sum(weights)
    router = WeightedRouter()
    counts: Counter[str] = Counter()
    for n in range(1, 4 * total + 1):
        counts[router.select(peers, None, None).node_id] += 1
        for p in peers:
            assert abs(counts[p.node_id] - n * p.weight / total) <= 1.0 + 1e-9, (n, counts)


def test_weighted_5_1_does_not_start_with_a_burst_of_five() -> None:
    seq = picks(WeightedRouter(), [peer("a", weight=5), peer("b", weight=1)], 12)
    assert "b" in seq[:5], seq
    # Across cycles the longest run of the heavy node is its weight over the light one's.
    longest = max(len(run) for run in "".join(seq).split("b"))
    assert longest <= math.ceil(5 / 1), seq


def test_weighted_zero_weight_gets_nothing() -> None:
    peers = [peer("a", weight=5), peer("zero", weight=0), peer("b", weight=1)]
    assert spread(WeightedRouter(), peers, 600) == {"a": 500, "b": 100}


def test_weighted_higher_load_gets_fewer() -> None:
    peers = [peer("idle", load=0.0), peer("busy", load=1.0)]
    got = spread(WeightedRouter(), peers, 300)
    assert got["busy"] < got["idle"]
    assert got == {"idle": 200, "busy": 100}  # effective weights 1 and 1/(1+1)


def test_weighted_more_in_flight_gets_fewer() -> None:
    peers = [peer("idle"), peer("queued", in_flight=256)]
    got = spread(WeightedRouter(), peers, 600)
    assert got["queued"] < got["idle"]


def test_weighted_share_falls_as_load_rises() -> None:
    shares = []
    for load in (0.0, 0.5, 1.0, 2.0, 4.0):
        peers = [peer("steady"), peer("loaded", load=load)]
        shares.append(spread(WeightedRouter(), peers, 600)["loaded"])
    assert shares == sorted(shares, reverse=True) and len(set(shares)) == len(shares), shares


def test_weighted_follows_a_load_change() -> None:
    a, b = peer("a"), peer("b")
    router = WeightedRouter()
    assert spread(router, [a, b], 100) == {"a": 50, "b": 50}
    b.load = 3.0  # b reports it is busy: a quarter of a's share from now on
    got = spread(router, [a, b], 500)
    assert got["a"] == pytest.approx(400, abs=2) and got["b"] == pytest.approx(100, abs=2)


# consistent hash ---------------------------------------------------------------------------

KEYS = [f"user-{i}" for i in range(10_000)]


def test_stable_hash_is_not_pythons_hash() -> None:
    assert stable_hash("user-1") == stable_hash("user-1")
    assert isinstance(stable_hash("user-1"), int) and stable_hash("user-1") >= 0
    assert stable_hash("user-1") != stable_hash("user-2")


def test_consistent_hash_default_has_enough_virtual_nodes() -> None:
    router = ConsistentHashRouter()
    assert router.vnodes >= 128
    ring = router.ring([peer("a"), peer("b"), peer("c")])
    assert len(ring.points) == 3 * router.vnodes
    assert len(set(ring.positions)) == len(ring.positions)  # no two points collide
    with pytest.raises(ValueError):
        ConsistentHashRouter(vnodes=0)


def test_consistent_hash_same_key_same_node() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    router = ConsistentHashRouter()
    first = {k: router.select(peers, None, k).node_id for k in KEYS[:500]}
    for _ in range(3):
        assert {k: router.select(peers, None, k).node_id for k in KEYS[:500]} == first


def test_consistent_hash_ignores_candidate_order() -> None:
    # Two callers may list the same members in different orders; a key must still agree.
    peers = [peer("a"), peer("b"), peer("c"), peer("d")]
    one = ConsistentHashRouter()
    other = ConsistentHashRouter()
    reordered = [peers[2], peers[0], peers[3], peers[1]]
    for k in KEYS[:2000]:
        assert one.select(peers, None, k).node_id == other.select(reordered, None, k).node_id


def test_consistent_hash_spreads_keys_evenly() -> None:
    peers = [peer("node-1"), peer("node-2"), peer("node-3")]
    router = ConsistentHashRouter()
    got = Counter(router.select(peers, None, k).node_id for k in KEYS)
    assert set(got) == {"node-1", "node-2", "node-3"}
    for count in got.values():
        assert 0.25 * len(KEYS) < count < 0.42 * len(KEYS), got


def test_consistent_hash_fourth_node_takes_about_a_quarter_of_the_keys() -> None:
    three = [peer("node-1"), peer("node-2"), peer("node-3")]
    four = [*three, peer("node-4")]
    router = ConsistentHashRouter()
    before = {k: router.select(three, None, k).node_id for k in KEYS}
    after = {k: router.select(four, None, k).node_id for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.20 * len(KEYS) <= len(moved) <= 0.30 * len(KEYS), len(moved)
    assert {after[k] for k in moved} == {"node-4"}  # only to the new node


def test_consistent_hash_leaving_node_moves_only_its_keys() -> None:
    four = [peer("node-1"), peer("node-2"), peer("node-3"), peer("node-4")]
    three = [p for p in four if p.node_id != "node-2"]
    router = ConsistentHashRouter()
    before = {k: router.select(four, None, k).node_id for k in KEYS}
    after = {k: router.select(three, None, k).node_id for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "node-2"}


def test_consistent_hash_ring_is_reused_for_the_same_candidates() -> None:
    peers = (peer("a"), peer("b"), peer("c"))
    router = ConsistentHashRouter()
    ring = router.ring(peers)
    assert isinstance(ring, HashRing)
    for k in KEYS[:100]:
        router.select(peers, None, k)
    assert router.ring(peers) is ring
    assert router.ring(list(peers)) is ring  # an equal candidate tuple, rebuilt by membership
    bigger = router.ring((*peers, peer("d")))
    assert bigger is not ring and len(bigger.nodes) == 4


def test_consistent_hash_without_key_goes_round_robin() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    assert spread(ConsistentHashRouter(), peers, 300) == {"a": 100, "b": 100, "c": 100}


_OTHER_PROCESS = """
import json, sys
from catga_zmq.membership import Peer
from catga_zmq.routing import ConsistentHashRouter
peers = [Peer(n, "tcp://127.0.0.1:1/" + n, "tcp://127.0.0.1:2/" + n, 1) for n in sys.argv[1:]]
router = ConsistentHashRouter()
print(json.dumps({f"key-{i}": router.select(peers, None, f"key-{i}").node_id for i in range(100)}))
"""


@pytest.mark.parametrize("seed", ["1", "4242"])
def test_consistent_hash_agrees_across_processes(seed: str) -> None:
    names = ["alpha", "beta", "gamma", "delta"]
    router = ConsistentHashRouter()
    peers = [peer(n) for n in names]
    here = {f"key-{i}": router.select(peers, None, f"key-{i}").node_id for i in range(100)}
    out = run(python("-c", _OTHER_PROCESS, *reversed(names)), env=child_env(PYTHONHASHSEED=seed))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == here
    assert len(set(here.values())) == 4  # the keys really are spread, not all on one node


# least connections -------------------------------------------------------------------------


def test_least_connections_picks_the_fewest_outstanding() -> None:
    peers = [peer("a", outstanding=3), peer("b", outstanding=1), peer("c", outstanding=2)]
    assert spread(LeastConnectionsRouter(), peers, 30) == {"b": 30}


def test_least_connections_ties_go_round_robin() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    assert spread(LeastConnectionsRouter(), peers, 300) == {"a": 100, "b": 100, "c": 100}


def test_least_connections_avoids_a_node_that_holds_requests() -> None:
    # Simulate the caller: a request raises outstanding; a fast node's comes back at once.
    fast, slow = peer("fast"), peer("slow")
    router = LeastConnectionsRouter()
    got: Counter[str] = Counter()
    for _ in range(100):
        chosen = router.select([fast, slow], None, None)
        got[chosen.node_id] += 1
        chosen.outstanding += 1
        if chosen is fast:
            chosen.outstanding -= 1  # answered before the next request
    assert got == {"fast": 99, "slow": 1}


def test_make_router_knows_every_strategy() -> None:
    expected = {
        "round_robin": RoundRobinRouter,
        "weighted": WeightedRouter,
        "consistent_hash": ConsistentHashRouter,
        "least_connections": LeastConnectionsRouter,
        "local_first": LocalFirstRouter,
    }
    for name, cls in expected.items():
        assert type(make_router(name)) is cls


# end to end --------------------------------------------------------------------------------


class Profile(msgspec.Struct):
    user_id: str
    by: str


class GetProfile(Request[Profile]):
    __routing_key__ = "user_id"
    user_id: str


class Where(msgspec.Struct):
    by: str


class Hit(Request[Where]):
    n: int = 0


class LocalHit(Request[Where]):
    n: int = 0


class RoundHit(Request[Where]):
    n: int = 0


class Hold(Request[Where]):
    seconds: float = 0.0
    fail: bool = False


def serve(node: Node, *types: type[Request[Where]]) -> None:
    async def handle(req: Any) -> Where:
        return Where(by=node.node_id)

    for t in types:
        node.handler(handle, message_type=t)


def serve_profiles(node: Node) -> None:
    @node.handler
    async def get(req: GetProfile) -> Profile:
        return Profile(req.user_id, by=node.node_id)


async def start(*nodes: Node) -> None:
    for node in nodes:
        await node.start()


async def test_consistent_hash_routing_key_field_end_to_end(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[HashRing] = []

    class CountingRing(HashRing):
        __slots__ = ()

        def __init__(self, nodes: Sequence[Peer], vnodes: int) -> None:
            super().__init__(nodes, vnodes)
            built.append(self)

    monkeypatch.setattr(consistent_hash_module, "HashRing", CountingRing)
    servers = [make_node(f"s{i}", **PATIENT) for i in range(3)]
    for s in servers:
        serve_profiles(s)
    callers = [make_node("c1", **PATIENT), make_node("c2", **PATIENT)]
    for c in callers:
        c.route(GetProfile, "consistent_hash")
    await start(*servers, *callers)
    for c in callers:
        await c.wait_for_peers(3, handles=GetProfile)

    users = [f"u{i}" for i in range(40)]
    landed: dict[str, set[str]] = {u: set() for u in users}
    async with asyncio.timeout(20):
        for _ in range(3):
            for c in callers:
                for u in users:
                    reply = await c.send(GetProfile(user_id=u), timeout=2)
                    assert reply.user_id == u
                    landed[u].add(reply.by)
    # The same user id always lands on the same node, whichever caller sends it.
    assert all(len(nodes) == 1 for nodes in landed.values()), landed
    owner = {u: next(iter(nodes)) for u, nodes in landed.items()}
    assert len(set(owner.values())) == 3, owner  # and the users are spread over the nodes
    # ...the node a fresh ring over the same members names for it.
    candidates = parts(callers[0]).membership.candidates(GetProfile.__wire_name__)
    reference = ConsistentHashRouter()
    assert owner == {u: reference.select(candidates, None, u).node_id for u in users}

    # The ring is built on membership change, not per request.
    rings = len(built)
    assert rings <= 2 * len(callers) + 1  # one per caller, one for the reference (+ churn)
    async with asyncio.timeout(10):
        for u in users * 2:
            await callers[0].send(GetProfile(user_id=u), timeout=2)
    assert len(built) == rings


async def test_send_key_overrides_the_routing_key_field(make_node: MakeNode) -> None:
    servers = [make_node(f"s{i}", **PATIENT) for i in range(3)]
    for s in servers:
        serve_profiles(s)
    caller = make_node("c", **PATIENT)
    caller.route(GetProfile, "consistent_hash")
    await start(*servers, caller)
    await caller.wait_for_peers(3, handles=GetProfile)
    candidates = parts(caller).membership.candidates(GetProfile.__wire_name__)
    reference = ConsistentHashRouter()
    async with asyncio.timeout(10):
        for i in range(30):
            key = f"tenant-{i}"
            # The user id varies; the explicit key decides.
            got = {
                (await caller.send(GetProfile(user_id=f"u{i}-{j}"), key=key, timeout=2)).by
                for j in range(4)
            }
            assert got == {reference.select(candidates, None, key).node_id}


async def test_least_connections_outstanding_returns_to_zero(make_node: MakeNode) -> None:
    server = make_node("s", **PATIENT)
    release = asyncio.Event()

    @server.handler
    async def hold(req: Hold) -> Where:
        if req.fail:
            raise RuntimeError("asked to fail")
        if req.seconds:
            await asyncio.sleep(req.seconds)
        else:
            await release.wait()
        return Where(by="s")

    caller = make_node("c", **PATIENT)
    caller.route(Hold, "least_connections")
    await start(server, caller)
    await caller.wait_for_peers(1, handles=Hold)
    remote = member(caller, "s")

    def outstanding() -> int:
        return member(caller, "s").outstanding

    async with asyncio.timeout(20):
        # In flight: counted (and shown in members()).
        tasks = [asyncio.create_task(caller.send(Hold(), timeout=5)) for _ in range(3)]
        await wait_until(lambda: outstanding() == 3)
        shown = {m.node_id: m for m in caller.members()}["s"]
        assert shown.outstanding == 3
        # A reply.
        release.set()
        assert [(await t).by for t in tasks] == ["s"] * 3
        assert outstanding() == 0
        release.clear()

        # A handler error.
        with pytest.raises(HandlerError):
            await caller.send(Hold(fail=True), timeout=2)
        assert outstanding() == 0

        # A timeout.
        with pytest.raises(RequestTimeout):
            await caller.send(Hold(seconds=1.0), timeout=0.1)
        assert outstanding() == 0

        # Cancellation of the calling task.
        task = asyncio.create_task(caller.send(Hold(), timeout=5))
        await wait_until(lambda: outstanding() == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert outstanding() == 0

        # Many at once, every outcome mixed.
        mixed = [
            asyncio.create_task(caller.send(Hold(seconds=0.05), timeout=2)),
            asyncio.create_task(caller.send(Hold(fail=True), timeout=2)),
            asyncio.create_task(caller.send(Hold(seconds=1.0), timeout=0.1)),
            asyncio.create_task(caller.send(Hold(), timeout=5)),
        ]
        await wait_until(lambda: mixed[1].done() and outstanding() >= 1)
        mixed[3].cancel()
        results = await asyncio.gather(*mixed, return_exceptions=True)
        assert [type(r) for r in results] == [
            Where,
            HandlerError,
            RequestTimeout,
            asyncio.CancelledError,
        ], results
        assert outstanding() == 0
    assert remote.incarnation == member(caller, "s").incarnation  # the same node throughout
    assert caller.stats().pending == 0
    release.set()


async def test_least_connections_prefers_the_fast_node(make_node: MakeNode) -> None:
    fast, slow = make_node("fast", **PATIENT), make_node("slow", **PATIENT)

    @fast.handler
    async def quick(req: Hold) -> Where:
        return Where(by="fast")

    @slow.handler
    async def sluggish(req: Hold) -> Where:
        await asyncio.sleep(0.1)
        return Where(by="slow")

    caller = make_node("c", **PATIENT)
    caller.route(Hold, "least_connections")
    await start(fast, slow, caller)
    await caller.wait_for_peers(2, handles=Hold)
    got: Counter[str] = Counter()

    async def worker() -> None:
        for _ in range(50):
            got[(await caller.send(Hold(), timeout=5)).by] += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(worker() for _ in range(4)))
    assert sum(got.values()) == 200
    assert got["fast"] > 4 * got["slow"], got


async def test_strategy_per_node_and_per_type(make_node: MakeNode) -> None:
    heavy = make_node("heavy", weight=3, **PATIENT)
    light = make_node("light", weight=1, **PATIENT)
    idle = make_node("idle", weight=0, **PATIENT)
    for s in (heavy, light, idle):
        serve(s, Hit, LocalHit, RoundHit)
    caller = make_node("c", routing="weighted", **PATIENT)
    serve(caller, LocalHit)
    caller.route(LocalHit, "local_first")
    caller.route(RoundHit, "round_robin")
    await start(heavy, light, idle, caller)
    await caller.wait_for_peers(3, handles=Hit)
    await caller.wait_for_peers(3, handles=RoundHit)
    weights = {m.node_id: m.weight for m in caller.members()}
    assert weights == {"heavy": 3, "light": 1, "idle": 0, "c": 1}

    async def tally(t: type[Request[Where]], n: int) -> Counter[str]:
        got: Counter[str] = Counter()
        async with asyncio.timeout(20):
            for i in range(n):
                got[(await caller.send(t(n=i), timeout=2)).by] += 1
        return got

    # The node's strategy: weighted. Load reported by in-process nodes is about equal,
    # so the split is about 3:1, and weight 0 gets nothing at all.
    hits = await tally(Hit, 400)
    assert hits["idle"] == 0, hits
    assert 250 <= hits["heavy"] <= 350 and hits["heavy"] + hits["light"] == 400, hits
    # Per-type overrides.
    assert await tally(LocalHit, 50) == {"c": 50}
    rr = await tally(RoundHit, 300)
    assert rr == {"heavy": 100, "light": 100, "idle": 100}, rr

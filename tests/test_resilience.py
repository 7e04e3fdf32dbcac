"""The circuit breaker and the phi-accrual failure detector: unit rules, then end to end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import msgspec
import pytest
from conftest import PATIENT, MakeNode, member, wait_until

from catga_zmq import Node, Request, RequestTimeout
from catga_zmq.membership import Membership, NodeStatus, Peer
from catga_zmq.protocol import HeartbeatBody
from catga_zmq.resilience import CircuitBreaker, CircuitState, PhiAccrual

# circuit breaker -----------------------------------------------------------------------------


def test_breaker_starts_closed() -> None:
    b = CircuitBreaker("n", threshold=3, cooldown=1.0)
    assert b.state is CircuitState.CLOSED
    assert all(b.allow(t) for t in (0.0, 1.0, 100.0))


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker("n", threshold=3, cooldown=1.0)
    b.failure(10.0)
    b.failure(10.1)
    assert b.state is CircuitState.CLOSED and b.allow(10.1)
    b.failure(10.2)
    assert b.state is CircuitState.OPEN
    assert not b.allow(10.2)
    assert not b.allow(11.19)  # cooldown counts from the failure that opened it


def test_breaker_counts_only_consecutive_failures() -> None:
    b = CircuitBreaker("n", threshold=3, cooldown=1.0)
    for _ in range(5):
        b.failure(0.0)
        b.failure(0.0)
        b.success()
    assert b.state is CircuitState.CLOSED and b.allow(0.0)


def test_breaker_half_open_allows_exactly_one_probe() -> None:
    b = CircuitBreaker("n", threshold=2, cooldown=1.0)
    b.failure(0.0)
    b.failure(0.0)
    assert not b.allow(0.5)
    assert b.allow(1.0)  # the probe
    assert b.state is CircuitState.HALF_OPEN
    assert [b.allow(1.0 + i / 10) for i in range(10)] == [False] * 10  # one at a time


def test_breaker_probe_success_closes() -> None:
    b = CircuitBreaker("n", threshold=2, cooldown=1.0)
    b.failure(0.0)
    b.failure(0.0)
    assert b.allow(1.5)
    b.success()
    assert b.state is CircuitState.CLOSED
    assert all(b.allow(1.5) for _ in range(5))
    # Closed again means a fresh count: one failure does not reopen it.
    b.failure(2.0)
    assert b.state is CircuitState.CLOSED


def test_breaker_probe_failure_opens_again() -> None:
    b = CircuitBreaker("n", threshold=5, cooldown=1.0)
    for _ in range(5):
        b.failure(0.0)
    assert b.allow(1.0)
    b.failure(1.2)  # a single failure in half-open is enough
    assert b.state is CircuitState.OPEN
    assert not b.allow(1.5)
    assert not b.allow(2.19)  # a new cooldown from the failed probe
    assert b.allow(2.2)  # then another probe
    assert b.state is CircuitState.HALF_OPEN
    assert not b.allow(2.2)


# phi accrual ---------------------------------------------------------------------------------


def regular(interval: float, acceptable_pause: float, beats: int = 20) -> tuple[PhiAccrual, float]:
    """A detector fed ``beats`` heartbeats exactly ``interval`` apart; returns it and the last."""
    d = PhiAccrual(interval, acceptable_pause, min_std=interval / 5)
    t = 100.0
    for _ in range(beats):
        d.heartbeat(t)
        t += interval
    return d, t - interval


def test_phi_grows_with_silence() -> None:
    d, _ = regular(0.5, 1.5)
    phis = [d.phi(s / 10) for s in range(0, 60)]
    assert phis == sorted(phis)
    assert phis[0] < 0.01 and phis[-1] > 8


def test_phi_with_half_second_heartbeats_and_1_5_s_acceptable_pause() -> None:
    d, _ = regular(0.5, 1.5)
    assert d.phi(1.5) < 1
    assert d.phi(3.0) > 8


def test_phi_stays_finite_far_out() -> None:
    d, _ = regular(0.5, 1.5)
    for silence in (10.0, 1e3, 1e9):
        phi = d.phi(silence)
        assert 8 < phi < float("inf")
    assert d.phi(0.0) >= 0.0


def test_phi_with_irregular_heartbeats_is_more_patient() -> None:
    steady, _ = regular(0.5, 0.0)
    jittery = PhiAccrual(0.5, 0.0, min_std=0.1)
    t = 0.0
    for gap in [0.2, 0.8] * 10:
        t += gap
        jittery.heartbeat(t)
    assert jittery.phi(1.2) < steady.phi(1.2)


def test_membership_suspects_then_faults_a_silent_peer() -> None:
    me = Peer("me", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 1, local=True)
    m = Membership(me, suspect_after=1.25, faulted_after=5.0, acceptable_pause=1.5, min_std=0.1)
    hb = HeartbeatBody(
        node_id="p",
        incarnation=1,
        seq=0,
        status="alive",
        cluster="c",
        endpoint="tcp://127.0.0.1:3",
        pub_endpoint="tcp://127.0.0.1:4",
        load=0.0,
        in_flight=0,
        weight=1,
        interval_ms=500,
        handles=[],
        subscribes=[],
        metadata={},
    )
    t = 0.0
    for seq in range(20):
        m.on_heartbeat(msgspec.structs.replace(hb, seq=seq), t)
        t += 0.5
    last = t - 0.5
    peer = m.peers["p"]
    assert m.phi(peer, last + 1.5) < 1
    assert m.phi(peer, last + 3.0) > 8
    m.check(last + 1.0)
    assert peer.status is NodeStatus.ALIVE
    m.check(last + 1.5)
    assert peer.status is NodeStatus.SUSPECT
    m.check(last + 3.0)  # phi past the threshold: faulted before faulted_after
    assert peer.status is NodeStatus.FAULTED


# end to end ----------------------------------------------------------------------------------


class Where(msgspec.Struct):
    by: str


class Work(Request[Where]):
    n: int = 0


class Switch:
    """A handler that stalls past the caller's timeout until made healthy."""

    def __init__(self, node: Node, *, delay_when_healthy: float = 0.0) -> None:
        self.node = node
        self.healthy = asyncio.Event()
        self.delay_when_healthy = delay_when_healthy
        self.calls = 0

        @node.handler
        async def work(req: Work) -> Where:
            self.calls += 1
            if not self.healthy.is_set():
                # Bounded: a stalled handler must not outlive the test.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.healthy.wait(), 3)
            elif self.delay_when_healthy:
                await asyncio.sleep(self.delay_when_healthy)
            return Where(by=node.node_id)


def serve_work(node: Node) -> None:
    @node.handler
    async def work(req: Work) -> Where:
        return Where(by=node.node_id)


def circuit_of(caller: Node, node_id: str) -> CircuitState:
    return {m.node_id: m.circuit for m in caller.members()}[node_id]


async def open_circuit(caller: Node, sick: str, threshold: int) -> Counter[str]:
    """Send until ``sick`` has timed out ``threshold`` times; returns who answered."""
    answered: Counter[str] = Counter()
    timeouts = 0
    for i in range(10 * threshold):
        try:
            answered[(await caller.send(Work(n=i), timeout=0.15)).by] += 1
        except RequestTimeout as exc:
            assert exc.node == sick
            timeouts += 1
        if circuit_of(caller, sick) is CircuitState.OPEN:
            break
    assert timeouts == threshold
    return answered


async def test_breaker_isolates_a_node_that_times_out_and_probes_it_back(
    make_node: MakeNode,
) -> None:
    bad_node, good = make_node("bad", **PATIENT), make_node("good", **PATIENT)
    bad = Switch(bad_node)
    serve_work(good)
    caller = make_node("c", breaker_threshold=3, breaker_cooldown=1.0, **PATIENT)
    await bad_node.start()
    await good.start()
    await caller.start()
    await caller.wait_for_peers(2, handles=Work)
    assert circuit_of(caller, "bad") is CircuitState.CLOSED

    async with asyncio.timeout(30):
        await open_circuit(caller, "bad", threshold=3)
        assert circuit_of(caller, "bad") is CircuitState.OPEN
        # The node is still alive (heartbeats flow): only its circuit isolates it.
        assert {m.node_id: m.status for m in caller.members()}["bad"] is NodeStatus.ALIVE
        opened = asyncio.get_running_loop().time()

        calls = bad.calls
        got: Counter[str] = Counter()
        for i in range(30):
            got[(await caller.send(Work(n=i), timeout=1)).by] += 1
        assert got == {"good": 30}
        assert bad.calls == calls  # not one request reached it
        assert asyncio.get_running_loop().time() - opened < 1.0, "too slow to test the cooldown"

        # After the cooldown it gets a probe, answers it, and the circuit closes.
        bad.healthy.set()
        await asyncio.sleep(max(0.0, opened + 1.05 - asyncio.get_running_loop().time()))
        after: Counter[str] = Counter()
        for i in range(20):
            after[(await caller.send(Work(n=i), timeout=1)).by] += 1
        assert circuit_of(caller, "bad") is CircuitState.CLOSED
        assert after["bad"] >= 9 and after["good"] >= 9, after  # round robin again
    assert caller.stats().pending == 0


async def test_failed_probe_opens_the_circuit_again(make_node: MakeNode) -> None:
    bad_node, good = make_node("bad", **PATIENT), make_node("good", **PATIENT)
    bad = Switch(bad_node)
    serve_work(good)
    caller = make_node("c", breaker_threshold=2, breaker_cooldown=0.5, **PATIENT)
    await bad_node.start()
    await good.start()
    await caller.start()
    await caller.wait_for_peers(2, handles=Work)

    async with asyncio.timeout(30):
        await open_circuit(caller, "bad", threshold=2)
        await asyncio.sleep(0.55)
        # Still sick: the probe times out and the circuit opens again at once.
        probe_failed = False
        for i in range(4):
            try:
                await caller.send(Work(n=i), timeout=0.15)
            except RequestTimeout as exc:
                assert exc.node == "bad" and not probe_failed
                probe_failed = True
        assert probe_failed
        assert circuit_of(caller, "bad") is CircuitState.OPEN
        calls = bad.calls
        for i in range(10):
            assert (await caller.send(Work(n=i), timeout=1)).by == "good"
        assert bad.calls == calls


async def test_half_open_sends_one_probe_at_a_time(make_node: MakeNode) -> None:
    bad_node, good = make_node("bad", **PATIENT), make_node("good", **PATIENT)
    bad = Switch(bad_node, delay_when_healthy=0.3)
    serve_work(good)
    caller = make_node("c", breaker_threshold=2, breaker_cooldown=0.5, **PATIENT)
    await bad_node.start()
    await good.start()
    await caller.start()
    await caller.wait_for_peers(2, handles=Work)

    async with asyncio.timeout(30):
        await open_circuit(caller, "bad", threshold=2)
        bad.healthy.set()  # healthy but slow: the probe is in flight while others go
        await asyncio.sleep(0.55)
        calls = bad.calls
        replies = await asyncio.gather(*(caller.send(Work(n=i), timeout=2) for i in range(20)))
        got = Counter(r.by for r in replies)
        assert got["bad"] == 1 and got["good"] == 19, got
        assert bad.calls == calls + 1
        assert circuit_of(caller, "bad") is CircuitState.CLOSED


async def test_cancelled_probe_does_not_isolate_the_node_for_good(make_node: MakeNode) -> None:
    """A probe whose caller gives up must free the probe slot (or count as a failure).

    Either way the node must get another probe later; otherwise a single cancelled
    probe leaves a healthy node HALF_OPEN with no probe allowed, isolated for ever.
    """
    bad_node, good = make_node("bad", **PATIENT), make_node("good", **PATIENT)
    bad = Switch(bad_node, delay_when_healthy=0.5)
    serve_work(good)
    caller = make_node("c", breaker_threshold=2, breaker_cooldown=0.3, **PATIENT)
    await bad_node.start()
    await good.start()
    await caller.start()
    await caller.wait_for_peers(2, handles=Work)

    async with asyncio.timeout(30):
        await open_circuit(caller, "bad", threshold=2)
        bad.healthy.set()
        await asyncio.sleep(0.35)
        # The probe: whichever concurrent request was routed to "bad".
        calls = bad.calls
        tasks = [asyncio.create_task(caller.send(Work(n=i), timeout=2)) for i in range(4)]
        await wait_until(lambda: bad.calls == calls + 1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert member(caller, "bad").outstanding == 0
        bad.delay_when_healthy = 0.0

        # Within a couple of cooldowns the healthy node must be probed and back in.
        got: Counter[str] = Counter()
        end = asyncio.get_running_loop().time() + 2.0
        while asyncio.get_running_loop().time() < end and got["bad"] == 0:
            got[(await caller.send(Work(), timeout=1)).by] += 1
            await asyncio.sleep(0.02)
        assert got["bad"] >= 1, (
            f"node 'bad' never got another request after its probe was cancelled; "
            f"circuit {circuit_of(caller, 'bad')}"
        )
        assert circuit_of(caller, "bad") is CircuitState.CLOSED


@pytest.mark.parametrize("threshold", [1, 4])
async def test_breaker_threshold_is_the_setting(make_node: MakeNode, threshold: int) -> None:
    bad_node, good = make_node("bad", **PATIENT), make_node("good", **PATIENT)
    Switch(bad_node)
    serve_work(good)
    caller = make_node("c", breaker_threshold=threshold, breaker_cooldown=5.0, **PATIENT)
    await bad_node.start()
    await good.start()
    await caller.start()
    await caller.wait_for_peers(2, handles=Work)
    async with asyncio.timeout(30):
        await open_circuit(caller, "bad", threshold=threshold)
    assert circuit_of(caller, "bad") is CircuitState.OPEN
    assert circuit_of(caller, "good") is CircuitState.CLOSED

"""The peer table and failure detector, driven by fake heartbeats and explicit times."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest

from catga_zmq import NodeFaulted, NodeJoined, NodeLeft, NodeRecovered, NodeStatus, NodeSuspect
from catga_zmq import membership as membership_module
from catga_zmq.membership import Membership, MembershipEvent, Peer
from catga_zmq.protocol import HeartbeatBody

SUSPECT = 1.0  # s
FAULTED = 2.0  # s
TYPE = "shop.GetUser"


def hb(
    node_id: str = "b",
    incarnation: int = 1,
    *,
    status: str = "alive",
    handles: tuple[str, ...] = (TYPE,),
    subscribes: tuple[str, ...] = (),
    endpoint: str | None = None,
    seq: int = 1,
) -> HeartbeatBody:
    return HeartbeatBody(
        node_id=node_id,
        incarnation=incarnation,
        seq=seq,
        status=status,
        cluster="c",
        endpoint=endpoint or f"tcp://127.0.0.1:{1000 + len(node_id)}/{node_id}",
        pub_endpoint=f"tcp://127.0.0.1:{2000 + len(node_id)}/{node_id}",
        load=0.5,
        in_flight=2,
        handles=list(handles),
        subscribes=list(subscribes),
        metadata={"zone": "a"},
    )


def make(*, local_handles: tuple[str, ...] = ()) -> Membership:
    me = Peer(
        "me",
        "tcp://127.0.0.1:1",
        "tcp://127.0.0.1:2",
        1,
        handles=frozenset(local_handles),
        local=True,
    )
    return Membership(me, suspect_after=SUSPECT, faulted_after=FAULTED, forget_after=60.0)


class Watch:
    """Collects ``watch()`` events from a task started (and subscribed) at creation."""

    def __init__(self, m: Membership) -> None:
        self.m = m
        self.got: asyncio.Queue[MembershipEvent] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Watch:
        async def run() -> None:
            async for event in self.m.watch():
                self.got.put_nowait(event)

        self.task = asyncio.create_task(run())
        await asyncio.sleep(0)  # the generator runs up to its first wait: subscribed
        return self

    async def take(self, n: int) -> list[MembershipEvent]:
        async with asyncio.timeout(1):
            return [await self.got.get() for _ in range(n)]

    async def assert_none(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        assert self.got.empty(), [self.got.get_nowait() for _ in range(self.got.qsize())]

    async def close(self) -> None:
        self.m.close_watchers()
        assert self.task is not None
        async with asyncio.timeout(1):
            await self.task


@pytest.fixture
async def m() -> Membership:
    return make()


@pytest.fixture
async def watch(m: Membership) -> AsyncIterator[Watch]:
    w = await Watch(m).start()
    yield w
    await w.close()


def status(m: Membership, node_id: str) -> NodeStatus:
    return {n.node_id: n.status for n in m.members()}[node_id]


def kinds(events: list[MembershipEvent]) -> list[tuple[type, str, NodeStatus]]:
    return [(type(e), e.node.node_id, e.node.status) for e in events]


# joining ------------------------------------------------------------------------------


async def test_first_heartbeat_makes_a_node_alive(m: Membership, watch: Watch) -> None:
    assert [n.node_id for n in m.members()] == ["me"]
    m.on_heartbeat(hb("b"), now=10.0)
    (event,) = await watch.take(1)
    assert isinstance(event, NodeJoined)
    node = event.node
    assert (node.node_id, node.status) == ("b", NodeStatus.ALIVE)
    assert node.handles == frozenset({TYPE})
    assert node.load == 0.5 and node.in_flight == 2 and node.metadata == {"zone": "a"}
    assert node.last_heartbeat > 0
    assert status(m, "b") is NodeStatus.ALIVE
    assert m.live_count() == 1
    # Further heartbeats of the same incarnation change nothing visible.
    m.on_heartbeat(hb("b", seq=2), now=10.5)
    await watch.assert_none()


async def test_members_snapshot_is_a_copy(m: Membership) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    snapshot = next(n for n in m.members() if n.node_id == "b")
    snapshot.metadata["zone"] = "changed"
    assert next(n for n in m.members() if n.node_id == "b").metadata == {"zone": "a"}
    me = m.members()[0]
    assert me.local and me.node_id == "me"


# the failure detector -----------------------------------------------------------------


async def test_silence_makes_suspect_then_faulted(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    await watch.take(1)
    m.check(now=SUSPECT - 0.01)
    assert status(m, "b") is NodeStatus.ALIVE
    await watch.assert_none()

    m.check(now=SUSPECT + 0.01)
    assert status(m, "b") is NodeStatus.SUSPECT
    assert kinds(await watch.take(1)) == [(NodeSuspect, "b", NodeStatus.SUSPECT)]
    assert m.live_count() == 0

    # (phi accrual may fault it earlier; faulted_after is the latest it may take)
    m.check(now=FAULTED + 0.01)
    assert status(m, "b") is NodeStatus.FAULTED
    assert kinds(await watch.take(1)) == [(NodeFaulted, "b", NodeStatus.FAULTED)]
    assert m.candidates(TYPE) == ()  # out of routing

    m.check(now=FAULTED + 5)
    await watch.assert_none()  # no repeated events


async def test_one_long_silence_gives_suspect_then_faulted(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    await watch.take(1)
    m.check(now=FAULTED + 1)
    assert kinds(await watch.take(2)) == [
        (NodeSuspect, "b", NodeStatus.SUSPECT),
        (NodeFaulted, "b", NodeStatus.FAULTED),
    ]


async def test_heartbeats_keep_a_node_alive(m: Membership, watch: Watch) -> None:
    now = 0.0
    m.on_heartbeat(hb("b"), now=now)
    await watch.take(1)
    for _ in range(20):
        now += SUSPECT * 0.9
        m.on_heartbeat(hb("b"), now=now)
        m.check(now=now + 0.05)
    assert status(m, "b") is NodeStatus.ALIVE
    await watch.assert_none()


async def test_any_traffic_counts_as_life(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    await watch.take(1)
    m.on_traffic("b", now=SUSPECT * 0.9)
    m.check(now=SUSPECT * 1.5)  # silent for 0.6 s since the traffic: still alive
    assert status(m, "b") is NodeStatus.ALIVE
    m.on_traffic("nobody", now=1.0)  # unknown sender: ignored
    assert [n.node_id for n in m.members()] == ["me", "b"]
    await watch.assert_none()


async def test_traffic_after_faulted_recovers(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    m.check(now=FAULTED + 1)
    await watch.take(3)
    assert m.candidates(TYPE) == ()
    m.on_traffic("b", now=FAULTED + 2)
    assert kinds(await watch.take(1)) == [(NodeRecovered, "b", NodeStatus.ALIVE)]
    assert [p.node_id for p in m.candidates(TYPE)] == ["b"]
    m.check(now=FAULTED + 2 + SUSPECT * 0.5)
    assert status(m, "b") is NodeStatus.ALIVE


async def test_heartbeat_after_suspect_recovers(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    m.check(now=SUSPECT + 0.1)
    await watch.take(2)
    m.on_heartbeat(hb("b", seq=2), now=SUSPECT + 0.2)
    assert kinds(await watch.take(1)) == [(NodeRecovered, "b", NodeStatus.ALIVE)]


async def test_faulted_node_is_forgotten_after_a_while() -> None:
    m = Membership(
        Peer("me", "e", "p", 1, local=True),
        suspect_after=SUSPECT,
        faulted_after=FAULTED,
        forget_after=10.0,
    )
    gone: list[str] = []
    m.on_gone = lambda peer: gone.append(peer.node_id)
    m.on_heartbeat(hb("b"), now=0.0)
    m.check(now=FAULTED + 1)
    m.check(now=9.0)
    assert "b" in m.peers and gone == []
    m.check(now=10.5)
    assert "b" not in m.peers and gone == ["b"]


# leaving and restarting ---------------------------------------------------------------


async def test_bye_makes_a_node_left(m: Membership, watch: Watch) -> None:
    gone: list[str] = []
    m.on_gone = lambda peer: gone.append(peer.node_id)
    m.on_heartbeat(hb("b"), now=0.0)
    await watch.take(1)
    m.on_bye("b", incarnation=1)
    assert kinds(await watch.take(1)) == [(NodeLeft, "b", NodeStatus.LEFT)]
    assert status(m, "b") is NodeStatus.LEFT
    assert m.candidates(TYPE) == ()
    assert gone == ["b"]
    m.on_bye("b", incarnation=1)  # a second BYE: nothing new
    m.check(now=FAULTED + 1)  # a LEFT node is not suspected or faulted
    await watch.assert_none()
    assert status(m, "b") is NodeStatus.LEFT


async def test_bye_of_an_older_incarnation_is_ignored(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b", incarnation=5), now=0.0)
    await watch.take(1)
    m.on_bye("b", incarnation=4)
    m.on_bye("stranger", incarnation=1)
    await watch.assert_none()
    assert status(m, "b") is NodeStatus.ALIVE


async def test_higher_incarnation_replaces_the_entry(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b", incarnation=1, handles=("old.Type",)), now=0.0)
    await watch.take(1)
    m.on_heartbeat(hb("b", incarnation=2, handles=(TYPE,)), now=1.0)
    events = await watch.take(2)
    assert kinds(events) == [(NodeLeft, "b", NodeStatus.LEFT), (NodeJoined, "b", NodeStatus.ALIVE)]
    assert events[0].node.incarnation == 1 and events[1].node.incarnation == 2
    peer = m.peers["b"]
    assert peer.incarnation == 2
    assert [p.node_id for p in m.candidates(TYPE)] == ["b"]
    assert m.candidates("old.Type") == ()


async def test_lower_incarnation_is_ignored(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b", incarnation=2, handles=(TYPE,)), now=0.0)
    await watch.take(1)
    m.on_heartbeat(
        hb("b", incarnation=1, handles=("old.Type",), status="draining"), now=SUSPECT + 0.5
    )
    await watch.assert_none()
    peer = m.peers["b"]
    assert peer.incarnation == 2 and peer.handles == frozenset({TYPE})
    assert peer.status is NodeStatus.ALIVE
    # ...and it is not proof of life either.
    m.check(now=SUSPECT + 0.6)
    assert status(m, "b") is NodeStatus.SUSPECT


async def test_restart_after_bye_joins_again(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b", incarnation=1), now=0.0)
    m.on_bye("b", incarnation=1)
    await watch.take(2)
    m.on_heartbeat(hb("b", incarnation=2), now=1.0)
    assert kinds(await watch.take(1)) == [(NodeJoined, "b", NodeStatus.ALIVE)]
    assert [p.node_id for p in m.candidates(TYPE)] == ["b"]


# routing view ------------------------------------------------------------------------------


async def test_candidates_only_alive_nodes_handling_the_type() -> None:
    m = make()
    m.on_heartbeat(hb("b", handles=(TYPE,)), now=0.0)
    m.on_heartbeat(hb("c", handles=("other.Type",)), now=0.0)
    m.on_heartbeat(hb("d", handles=(TYPE, "other.Type")), now=0.0)
    assert sorted(p.node_id for p in m.candidates(TYPE)) == ["b", "d"]
    assert sorted(p.node_id for p in m.candidates("other.Type")) == ["c", "d"]
    assert m.candidates("nobody.Handles") == ()
    m.check(now=FAULTED + 1)  # all silent
    assert m.candidates(TYPE) == ()
    m.on_heartbeat(hb("d", handles=(TYPE,), seq=2), now=FAULTED + 1.5)
    assert [p.node_id for p in m.candidates(TYPE)] == ["d"]
    assert m.candidates("other.Type") == ()  # d no longer handles it


async def test_candidates_include_the_local_node_when_it_handles_the_type() -> None:
    m = make(local_handles=(TYPE,))
    assert [(p.node_id, p.local) for p in m.candidates(TYPE)] == [("me", True)]
    m.on_heartbeat(hb("b"), now=0.0)
    assert sorted(p.node_id for p in m.candidates(TYPE)) == ["b", "me"]
    assert "me" not in [p.node_id for p in make().candidates(TYPE)]


async def test_builtins_are_served_by_every_live_node() -> None:
    m = make()
    m.on_heartbeat(hb("b", handles=()), now=0.0)
    assert sorted(p.node_id for p in m.candidates("catga.Ping")) == ["b", "me"]


async def test_draining_node_leaves_routing(m: Membership, watch: Watch) -> None:
    m.on_heartbeat(hb("b"), now=0.0)
    m.on_heartbeat(hb("c"), now=0.0)
    await watch.take(2)
    m.on_heartbeat(hb("b", status="draining", seq=2), now=0.5)
    assert status(m, "b") is NodeStatus.DRAINING
    assert [p.node_id for p in m.candidates(TYPE)] == ["c"]
    assert m.live_count() == 1
    await watch.assert_none()
    m.on_heartbeat(hb("b", status="alive", seq=3), now=0.6)
    assert sorted(p.node_id for p in m.candidates(TYPE)) == ["b", "c"]


async def test_subscribers_of() -> None:
    m = make()
    m.on_heartbeat(hb("b", subscribes=("shop.Renamed",)), now=0.0)
    m.on_heartbeat(hb("c", subscribes=()), now=0.0)
    assert [p.node_id for p in m.subscribers_of("shop.Renamed")] == ["b"]
    m.on_bye("b", 1)
    assert m.subscribers_of("shop.Renamed") == []


async def test_on_change_is_called_on_membership_change() -> None:
    m = make()
    changes: list[int] = []
    m.on_change = lambda: changes.append(1)
    m.on_heartbeat(hb("b"), now=0.0)
    assert len(changes) == 1
    m.on_heartbeat(hb("b", seq=2), now=0.1)  # nothing changed
    assert len(changes) == 1
    m.check(now=SUSPECT + 1)
    assert len(changes) == 2


# watch ---------------------------------------------------------------------------------------


async def test_watch_ends_on_close_watchers(m: Membership) -> None:
    w = await Watch(m).start()
    await w.close()
    assert w.task is not None and w.task.done()


async def test_slow_watcher_keeps_the_newest_events(
    m: Membership, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership_module, "WATCH_QUEUE_LIMIT", 3)
    it = m.watch()
    first = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0)  # subscribed and waiting
    m.on_heartbeat(hb("n0"), now=0.0)
    async with asyncio.timeout(1):
        assert (await first).node.node_id == "n0"
        for i in range(1, 6):
            m.on_heartbeat(hb(f"n{i}"), now=0.0)
        got = [(await anext(it)).node.node_id for _ in range(3)]
    assert got == ["n3", "n4", "n5"]
    await it.aclose()


async def test_watch_sees_events_from_when_it_was_called(m: Membership) -> None:
    events = m.watch()
    m.on_heartbeat(hb("b"), now=0.0)
    try:
        async with asyncio.timeout(0.3):
            event = await anext(events)
    finally:
        await events.aclose()
    assert isinstance(event, NodeJoined)


async def test_a_watch_dropped_unread_unsubscribes_itself(m: Membership) -> None:
    kept = m.watch()
    for _ in range(100):
        m.watch()  # never iterated, never closed
    gc.collect()
    for i in range(5):
        m.on_heartbeat(hb(f"n{i}"), now=0.0)

    assert len(m._watchers) == 1  # only the one still referenced
    async with asyncio.timeout(1):
        assert (await anext(kept)).node.node_id == "n0"


async def test_a_closed_watch_ends_and_takes_no_more_events(m: Membership) -> None:
    it = m.watch()
    waiting = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0)
    await it.aclose()  # wakes the reader
    async with asyncio.timeout(1):
        with pytest.raises(StopAsyncIteration):
            await waiting
    m.on_heartbeat(hb("late"), now=0.0)
    with pytest.raises(StopAsyncIteration):
        await anext(it)

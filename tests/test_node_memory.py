"""Nodes in one process, found through a MemoryHub, talking over real loopback ZeroMQ."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
import zmq
from conftest import MakeNode, parts, unbatch, wait_until

from catga_zmq import (
    Candidate,
    CatgaError,
    Context,
    Event,
    HandlerError,
    HandlerNotFound,
    Info,
    MemoryDiscovery,
    MemoryHub,
    Node,
    NodeInfo,
    NodeLeft,
    NodeNotStarted,
    NodeStats,
    NodeStatus,
    NoNodes,
    Ping,
    Pong,
    Request,
    RequestTimeout,
    StaticDiscovery,
    Stats,
)
from catga_zmq.protocol import (
    PROTOCOL_VERSION,
    Kind,
    decode_error,
    decode_header,
    encode_header,
)


class Echo(msgspec.Struct):
    text: str
    by: str = ""


class Say(Request[Echo]):
    text: str


class Fail(Request[Echo]):
    why: str


class Slow(Request[Echo]):
    seconds: float


class Stall(Request[Echo]):
    pass


class Nobody(Request[Echo]):
    pass


class Seen(msgspec.Struct):
    deadline_left: float | None
    source: str


class Peek(Request[Seen]):
    pass


class Block(Request[Echo]):
    seconds: float


class Record(Request[Echo]):
    n: int


class Renamed(Event):
    id: str


def serve_say(node: Node) -> None:
    @node.handler
    async def say(req: Say) -> Echo:
        return Echo(req.text, by=node.node_id)


async def start(*nodes: Node) -> None:
    for node in nodes:
        await node.start()


async def meet(*nodes: Node, timeout: float = 5.0) -> None:
    """Wait until every node sees every other one ALIVE."""
    for node in nodes:
        await node.wait_for_peers(len(nodes) - 1, timeout=timeout)


# request / response ------------------------------------------------------------------------


async def test_request_response_across_nodes(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")
    serve_say(a)
    await start(a, c)
    await c.wait_for_peers(1, handles=Say)
    async with asyncio.timeout(5):
        reply = await c.send(Say("hello"), timeout=2)
    assert reply == Echo("hello", by="a")
    assert type(reply) is Echo
    assert c.stats().requests_sent == 1 and a.stats().requests_handled == 1
    assert c.stats().pending == 0


async def test_local_handler_is_called_directly(make_node: MakeNode) -> None:
    a = make_node("a")
    serve_say(a)
    await start(a)
    async with asyncio.timeout(5):
        assert await a.send(Say("self")) == Echo("self", by="a")
    assert a.stats().requests_sent == 0  # no socket involved


async def test_handler_error_comes_back_typed(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")

    @a.handler
    async def fail(req: Fail) -> Echo:
        raise ValueError(f"bad id {req.why}")

    await start(a, c)
    await c.wait_for_peers(1, handles=Fail)
    with pytest.raises(HandlerError) as info:
        async with asyncio.timeout(5):
            await c.send(Fail("7"), timeout=2)
    err = info.value
    assert err.code == "HANDLER_FAILED"
    assert err.error_type == "ValueError"
    assert err.message == "bad id 7"
    assert err.node == "a"
    assert err.retryable is False
    assert a.stats().requests_failed == 1


async def test_handler_not_found_on_the_named_node(make_node: MakeNode) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    serve_say(a)
    await start(a, b, c)
    await meet(a, b, c)
    with pytest.raises(HandlerNotFound) as info:
        async with asyncio.timeout(5):
            await c.send(Say("x"), node="b", timeout=2)
    assert info.value.code == "HANDLER_NOT_FOUND"
    assert info.value.node == "b"
    # The same request to the node that has it works.
    async with asyncio.timeout(5):
        assert (await c.send(Say("x"), node="a", timeout=2)).by == "a"


async def test_send_to_an_unknown_node_is_no_nodes(make_node: MakeNode) -> None:
    a = make_node("a")
    serve_say(a)
    await start(a)
    with pytest.raises(NoNodes, match="ghost"):
        await a.send(Say("x"), node="ghost", timeout=2)


async def test_no_nodes_at_once(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")
    serve_say(a)
    await start(a, c)
    await meet(a, c)
    t0 = time.perf_counter()
    with pytest.raises(NoNodes) as info:
        async with asyncio.timeout(5):
            await c.send(Nobody(), timeout=5)
    assert time.perf_counter() - t0 < 0.1  # not the 5 s timeout
    assert info.value.code == "NO_NODES" and info.value.retryable
    assert c.stats().pending == 0


async def test_timeout_clears_pending(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")

    @a.handler
    async def slow(req: Slow) -> Echo:
        await asyncio.sleep(req.seconds)
        return Echo("late")

    await start(a, c)
    await c.wait_for_peers(1, handles=Slow)
    t0 = time.perf_counter()
    with pytest.raises(RequestTimeout) as info:
        async with asyncio.timeout(5):
            await c.send(Slow(1.0), timeout=0.2)
    elapsed = time.perf_counter() - t0
    assert 0.18 <= elapsed < 0.6, elapsed
    assert info.value.code == "TIMEOUT"
    assert c.stats().pending == 0
    # The handler's node cancels it at the same deadline: it never finishes, and its
    # concurrency slot is free again.
    await wait_until(lambda: a.stats().running == 0, timeout=3)
    await asyncio.sleep(1.0)
    assert a.stats().requests_handled == 0 and a.stats().requests_failed == 1
    assert c.stats().pending == 0


async def test_deadline_travels_with_the_request(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")

    @a.handler
    async def peek(req: Peek, ctx: Context) -> Seen:
        return Seen(ctx.remaining(), ctx.source)

    await start(a, c)
    await c.wait_for_peers(1, handles=Peek)
    async with asyncio.timeout(5):
        seen = await c.send(Peek(), timeout=1.5)
    assert seen.source == "c"
    assert seen.deadline_left is not None
    assert 1.0 < seen.deadline_left <= 1.5


async def test_remote_node_does_not_start_expired_work(make_node: MakeNode) -> None:
    """Two requests arrive in one read: the first blocks the loop past the second's deadline."""
    a = make_node("a")
    ran: list[int] = []

    @a.handler
    def block(req: Block) -> Echo:  # sync on purpose: it holds the loop
        time.sleep(req.seconds)
        return Echo("blocked")

    @a.handler
    async def record(req: Record) -> Echo:
        ran.append(req.n)
        return Echo(str(req.n))

    await start(a)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(a.endpoint)
        enc = msgspec.msgpack.encode
        req = int(Kind.REQ)
        dealer.send_multipart(
            [encode_header(req, 1, Block.__wire_name__, "raw", 5000), enc(Block(0.1))]
        )
        dealer.send_multipart(
            [encode_header(req, 2, Record.__wire_name__, "raw", 20), enc(Record(2))]
        )
        dealer.send_multipart(
            [encode_header(req, 3, Record.__wire_name__, "raw", 5000), enc(Record(3))]
        )
        time.sleep(0.1)  # noqa: ASYNC251 - hold the loop so that all three arrive in one read
        replies = {}
        async with asyncio.timeout(5):
            while len(replies) < 3:
                if dealer.poll(0):
                    for header, body in unbatch(dealer.recv_multipart()):
                        replies[decode_header(header).request_id] = (
                            decode_header(header).kind,
                            body,
                        )
                else:
                    await asyncio.sleep(0.01)
    finally:
        dealer.close(0)
        ctx.term()
    assert replies[1][0] == Kind.REP
    assert replies[2][0] == Kind.ERR
    assert decode_error(replies[2][1]).code == "TIMEOUT"
    assert replies[3][0] == Kind.REP
    assert ran == [3]  # request 2 was never started


async def test_cancelling_a_send_leaves_nothing_pending(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c")

    @a.handler
    async def slow(req: Slow) -> Echo:
        await asyncio.sleep(req.seconds)
        return Echo("late")

    await start(a, c)
    await c.wait_for_peers(1, handles=Slow)
    task = asyncio.create_task(c.send(Slow(0.3), timeout=5))
    await wait_until(lambda: c.stats().pending == 1, timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert c.stats().pending == 0
    await wait_until(lambda: c.stats().late_replies == 1, timeout=3)
    assert c.stats().pending == 0


async def test_many_timeouts_leave_pending_empty(make_node: MakeNode) -> None:
    n = 10_000
    release = asyncio.Event()
    a = make_node("a", max_concurrency=n + 10)
    c = make_node("c")

    @a.handler
    async def stall(req: Stall) -> Echo:
        async with asyncio.timeout(10):
            await release.wait()
        return Echo("late")

    await start(a, c)
    await c.wait_for_peers(1, handles=Stall)
    async with asyncio.timeout(30):
        results = await asyncio.gather(
            *(c.send(Stall(), timeout=0.05) for _ in range(n)), return_exceptions=True
        )
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"RequestTimeout": n}, kinds
    assert c.stats().pending == 0
    # Every request gets an answer in the end: TIMEOUT, whether it was read after its
    # deadline (expired, not started) or cancelled at its deadline (none waits for
    # ``release``); nobody waits for it.
    await wait_until(
        lambda: a.stats().requests_failed + a.stats().requests_expired == n, timeout=20
    )
    assert a.stats().running == 0 and a.stats().requests_handled == 0
    release.set()
    assert c.stats().pending == 0


# events ---------------------------------------------------------------------------------


async def test_publish_reaches_subscribers_on_all_nodes(make_node: MakeNode) -> None:
    nodes = [make_node(x) for x in "abc"]
    got: dict[str, list[tuple[str, str]]] = {x: [] for x in "abc"}

    def subscriber(node_id: str) -> Callable[[Renamed, Context], None]:
        def sub(evt: Renamed, ctx: Context) -> None:
            got[node_id].append((evt.id, ctx.source))

        return sub

    for node in nodes:
        node.subscribe(subscriber(node.node_id), message_type=Renamed)
    await start(*nodes)
    await meet(*nodes)
    await asyncio.sleep(0.1)  # one more heartbeat: every SUB has its topics upstream
    async with asyncio.timeout(5):
        await nodes[0].publish(Renamed("7"))
        await wait_until(lambda: all(got[x] for x in "abc"))
    await asyncio.sleep(0.1)  # nothing more arrives
    assert got == {x: [("7", "a")] for x in "abc"}
    assert nodes[0].stats().events_published == 1
    assert nodes[1].stats().events_received == 1 and nodes[2].stats().events_received == 1


async def test_publish_in_order_without_loss(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    got: list[str] = []

    @b.subscribe
    async def on(evt: Renamed) -> None:
        got.append(evt.id)

    await start(a, b)
    await meet(a, b)
    await asyncio.sleep(0.1)
    for i in range(500):
        await a.publish(Renamed(str(i)))
    await wait_until(lambda: len(got) == 500)
    assert got == [str(i) for i in range(500)]
    assert b.stats().events_lost == 0


async def test_publish_without_subscribers_is_fine(make_node: MakeNode) -> None:
    a = make_node("a")
    await start(a)
    await a.publish(Renamed("1"))
    assert a.stats().events_published == 1


# membership ---------------------------------------------------------------------------------


async def test_members_show_peers_alive(make_node: MakeNode) -> None:
    a, b = make_node("a", metadata={"zone": "z1"}), make_node("b")
    serve_say(a)
    assert a.members() == []  # not started
    await start(a, b)
    await meet(a, b)
    view = {m.node_id: m for m in b.members()}
    assert set(view) == {"a", "b"}
    assert view["a"].status is NodeStatus.ALIVE
    assert view["a"].endpoint == a.endpoint
    assert view["a"].metadata == {"zone": "z1"}
    assert Say.__wire_name__ in view["a"].handles
    assert view["a"].last_heartbeat > time.time() - 5
    assert view["b"].local and not view["a"].local


async def test_closing_a_node_makes_it_left_quickly(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    await start(a, b)
    await meet(a, b)
    seen: asyncio.Queue[object] = asyncio.Queue()

    async def watch() -> None:
        async for event in a.watch():
            seen.put_nowait(event)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # subscribed
    t0 = time.perf_counter()
    await b.aclose()
    async with asyncio.timeout(2):
        event = await seen.get()
    assert isinstance(event, NodeLeft)
    assert event.node.node_id == "b"
    # BYE, not the failure detector: well before faulted_after (0.6 s).
    assert time.perf_counter() - t0 < 0.5
    assert {m.node_id: m.status for m in a.members()}["b"] is NodeStatus.LEFT
    await a.aclose()
    async with asyncio.timeout(2):
        await watcher  # watch() ends when the node closes


async def test_builtins_answer(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    serve_say(b)
    await start(a, b)
    await meet(a, b)
    async with asyncio.timeout(5):
        pong = await a.send(Ping(), node="b", timeout=2)
        info = await a.send(Info(), node="b", timeout=2)
        stats = await a.send(Stats(), node="b", timeout=2)
    assert isinstance(pong, Pong) and pong.node_id == "b"
    assert abs(pong.time - time.time()) < 5
    assert isinstance(info, NodeInfo)
    assert info.node_id == "b" and info.endpoint == b.endpoint
    assert info.cluster == b.options.cluster
    assert Say.__wire_name__ in info.handles
    assert "a" in [p.node_id for p in info.peers]
    assert isinstance(stats, NodeStats)
    assert stats.node_id == "b"
    assert stats.requests_handled >= 2  # the Ping and the Info before it
    assert stats.members.get("alive") == 1


async def test_round_robin_across_two_servers(make_node: MakeNode) -> None:
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    serve_say(a)
    serve_say(b)
    await start(a, b, c)
    await c.wait_for_peers(2, handles=Say)
    async with asyncio.timeout(10):
        replies = [await c.send(Say(str(i)), timeout=2) for i in range(100)]
    assert Counter(r.by for r in replies) == {"a": 50, "b": 50}


# lifecycle -----------------------------------------------------------------------------------


async def test_start_twice_and_aclose_idempotent(make_node: MakeNode) -> None:
    a = make_node("a")
    with pytest.raises(NodeNotStarted, match="use `async with node:`"):
        await a.send(Ping())
    await a.start()
    with pytest.raises(CatgaError, match="starts once"):
        await a.start()
    await a.aclose()
    await a.aclose()
    with pytest.raises(CatgaError, match="starts once"):
        await a.start()
    with pytest.raises(CatgaError, match="closed"):
        await a.send(Ping())
    with pytest.raises(CatgaError, match="closed"):
        await a.publish(Renamed("x"))


async def test_concurrent_aclose(make_node: MakeNode) -> None:
    a = make_node("a")
    await a.start()
    async with asyncio.timeout(5):
        await asyncio.gather(a.aclose(), a.aclose(), a.aclose())
    assert a.state == "closed"


async def test_async_with(make_node: MakeNode) -> None:
    a = make_node("a")
    serve_say(a)
    async with a:
        assert a.state == "running"
        assert (await a.send(Say("x"))).by == "a"
    assert a.state == "closed"


async def test_aclose_fails_requests_in_flight(make_node: MakeNode) -> None:
    a, c = make_node("a"), make_node("c", drain_timeout=0.1)

    @a.handler
    async def slow(req: Slow) -> Echo:
        await asyncio.sleep(req.seconds)
        return Echo("late")

    await start(a, c)
    await c.wait_for_peers(1, handles=Slow)
    task = asyncio.create_task(c.send(Slow(2.0), timeout=5))
    await wait_until(lambda: c.stats().pending == 1, timeout=2)
    async with asyncio.timeout(3):
        await c.aclose()
        with pytest.raises(CatgaError):
            await task
    assert c.stats().pending == 0


# static discovery ----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_gossiped_address_that_never_answers_is_forgotten(make_node: MakeNode) -> None:
    a = make_node("a", discovery=None)
    serve_say(a)
    await a.start()
    # The seed knows an address where nothing listens any more (it answered a greeting
    # once, then its node died); it passes it on in its Info reply.
    ghost = f"tcp://127.0.0.1:{_closed_port()}"
    ghost_pub = f"tcp://127.0.0.1:{_closed_port()}"
    parts(a).gossip.add_candidate(
        Candidate(ghost, "ghost", ghost_pub, a.options.cluster, PROTOCOL_VERSION), greet=False
    )
    parts(a).gossip._greeted.add(ghost)
    b = make_node("b", discovery=StaticDiscovery([a.endpoint]))
    await b.start()
    await wait_until(lambda: ghost in parts(b).transport.dealers, timeout=5)
    assert ghost_pub in parts(b).transport.subscribed

    # Five greetings of a second each, unanswered: b stops reconnecting to it.
    await wait_until(lambda: ghost not in parts(b).transport.dealers, timeout=10)
    assert ghost_pub not in parts(b).transport.subscribed
    assert ghost not in parts(b).gossip.addresses  # and no longer passes it on
    assert "ghost" not in {m.node_id for m in b.members()}
    assert (await b.send(Say("x"), node="a", timeout=2)).by == "a"


async def test_a_discovery_record_that_goes_away_before_joining_is_forgotten(
    make_node: MakeNode, hub: MemoryHub
) -> None:
    c = make_node("c")
    await c.start()
    ghost = f"tcp://127.0.0.1:{_closed_port()}"
    ghost_pub = f"tcp://127.0.0.1:{_closed_port()}"
    record = MemoryDiscovery(hub)
    await record.register(Candidate(ghost, "ghost", ghost_pub, c.options.cluster, PROTOCOL_VERSION))
    try:
        await wait_until(lambda: ghost in parts(c).transport.dealers, timeout=5)
        await record.unregister()
        # At once, not after the greetings give up (five of a second each).
        await wait_until(lambda: ghost not in parts(c).transport.dealers, timeout=2)
        assert ghost_pub not in parts(c).transport.subscribed
        assert ghost not in parts(c).gossip.addresses
    finally:
        await record.aclose()


async def test_static_seeds_find_each_other(make_node: MakeNode) -> None:
    a = make_node("a", discovery=None)
    serve_say(a)
    await a.start()
    b = make_node("b", discovery=StaticDiscovery([a.endpoint]))
    serve_say(b)
    await b.start()
    async with asyncio.timeout(10):
        await wait_until(
            lambda: (
                {m.node_id: m.status for m in a.members()}.get("b") is NodeStatus.ALIVE
                and {m.node_id: m.status for m in b.members()}.get("a") is NodeStatus.ALIVE
            ),
            timeout=10,
        )
        assert (await b.send(Say("x"), node="a", timeout=2)).by == "a"
        assert (await a.send(Say("x"), node="b", timeout=2)).by == "b"

"""``Node(role="client")``: it sends, gets replies and events and follows membership, but
is no member: nobody lists it or routes to it, and it binds nothing. In one process, on
real loopback sockets, found through a hub of each test's own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import wait_until

from catga_zmq import ConfigError, Event, MemoryDiscovery, MemoryHub, Node, Request
from catga_zmq.membership import NodeJoined, NodeLeft
from catga_zmq.system import Ping, Stats
from catga_zmq.testing import FAST_TIMINGS


class Hello(Request[str]):
    __wire_name__ = "client_test.Hello"
    name: str


class Fails(Request[str]):
    __wire_name__ = "client_test.Fails"


class Note(Event):
    __wire_name__ = "client_test.Note"
    text: str


def _node(hub: MemoryHub, node_id: str, **settings: Any) -> Node:
    return Node(
        node_id, cluster="client-test", discovery=MemoryDiscovery(hub), **FAST_TIMINGS, **settings
    )


def _server(hub: MemoryHub, node_id: str, notes: list[str]) -> Node:
    node = _node(hub, node_id)

    @node.handler
    async def hello(req: Hello) -> str:
        return f"{node.node_id}: hi {req.name}"

    @node.handler
    async def fails(req: Fails) -> str:
        raise ValueError("no")

    @node.subscribe
    async def note(evt: Note) -> None:
        notes.append(f"{node.node_id}:{evt.text}")

    return node


async def test_a_client_sends_and_follows_but_no_member_lists_it() -> None:
    hub = MemoryHub()
    notes: list[str] = []
    a, b = _server(hub, "a", notes), _server(hub, "b", notes)
    client = _node(hub, "cl", role="client")
    async with a, b, client:
        await client.wait_for_peers(2, handles=Hello, timeout=10)
        assert client.endpoint == "" and client.pub_endpoint == ""  # it bound nothing
        answers = {await client.send(Hello(name="x"), timeout=5) for _ in range(4)}
        assert answers == {"a: hi x", "b: hi x"}
        assert sorted(m.node_id for m in client.members()) == ["a", "b"]  # not itself
        await asyncio.sleep(5 * FAST_TIMINGS["heartbeat_interval"])  # beats it would send
        for member in (a, b):
            assert "cl" not in {m.node_id for m in member.members()}
            assert (await client.send(Stats(), node=member.node_id, timeout=5)).members == {
                "alive": 1
            }
        # Built-ins go to members only: a client answers nobody, not even itself.
        for _ in range(4):
            pong = await client.send(Ping(), timeout=5)
            assert pong.node_id in ("a", "b")


async def test_a_clients_publish_reaches_each_subscribing_member_and_its_own() -> None:
    hub = MemoryHub()
    notes: list[str] = []
    a, b = _server(hub, "a", notes), _server(hub, "b", notes)
    client = _node(hub, "cl", role="client")

    @client.subscribe
    async def note(evt: Note) -> None:
        notes.append(f"cl:{evt.text}")

    async with a, b, client:
        await client.wait_for_peers(2, timeout=10)
        assert await client.hand_over(Note(text="one")) == {"a": 1, "b": 1}
        await client.publish(Note(text="two"))
        await wait_until(lambda: len(notes) == 6)
        assert sorted(notes) == sorted(f"{n}:{t}" for n in ("a", "b", "cl") for t in ("one", "two"))
        # And it receives a member's events on its SUBs, as a member does.
        await a.publish(Note(text="three"))
        await wait_until(lambda: "cl:three" in notes)
        stats = await client.send(Stats(), node="a", timeout=5)
        assert stats.handlers["catga.Deliver"].handled == 2
        assert stats.events_received == 2


async def test_a_client_watches_joins_and_leaves() -> None:
    hub = MemoryHub()
    client = _node(hub, "cl", role="client")
    async with client:
        changes = client.watch()
        a = _server(hub, "a", [])
        async with a:
            joined = await asyncio.wait_for(anext(changes), 10)
            assert isinstance(joined, NodeJoined) and joined.node.node_id == "a"
        left = await asyncio.wait_for(anext(changes), 10)
        assert isinstance(left, NodeLeft) and left.node.node_id == "a"


async def test_a_client_with_handlers_does_not_start() -> None:
    client = _node(MemoryHub(), "cl", role="client")

    @client.handler
    async def hello(req: Hello) -> str:
        return "never"

    with pytest.raises(ConfigError, match=r"client_test\.Hello"):
        await client.start()


@pytest.mark.parametrize("setting", [{"port": 5999}, {"pub_port": 5998}, {"advertise": "10.0.0.1"}])
def test_a_client_takes_no_socket_settings(setting: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=f"{next(iter(setting))} is set, but role 'client'"):
        Node("cl", role="client", **setting)


async def test_handler_stats_per_type_local_calls_too() -> None:
    hub = MemoryHub()
    a = _server(hub, "a", [])
    async with a:
        for _ in range(5):
            await a.send(Hello(name="me"), timeout=5)  # local calls count as remote ones do
        for _ in range(2):
            with pytest.raises(Exception, match="no"):
                await a.send(Fails(), timeout=5)
        handlers = a.stats().handlers
        assert handlers["client_test.Hello"].handled == 5
        assert handlers["client_test.Hello"].errors == 0
        assert handlers["client_test.Fails"].errors == 2
        assert handlers["client_test.Fails"].handled == 0
        assert handlers["client_test.Hello"].processing_time > 0
        assert "catga.Ping" not in handlers  # a type never asked for is left out
        stats = a.stats()
        assert sum(h.handled for h in stats.handlers.values()) == stats.requests_handled
        assert sum(h.errors for h in stats.handlers.values()) == stats.requests_failed

"""The service run by the cluster tests: ``python -m catga_zmq.node --app tests.apps.cluster_app:node``.

The test process imports this module too, so both sides agree on the types; every type
has an explicit ``__wire_name__`` so it does not depend on how the module was imported.
"""

from __future__ import annotations

from catga_zmq import Event, Node, Request


class Where(Request[str]):
    """Answers the id of the node that handled it."""

    __wire_name__ = "cluster.Where"


class Relay(Request[str]):
    """The handling node asks node ``to`` ``Where()`` and answers ``"<self>-><answer>"``."""

    __wire_name__ = "cluster.Relay"
    to: str


class Boom(Request[None]):
    """Always fails with ``ValueError("boom: " + text)``."""

    __wire_name__ = "cluster.Boom"
    text: str


class Notice(Event):
    __wire_name__ = "cluster.Notice"
    token: str


class Emit(Request[int]):
    """The handling node publishes ``Notice(token)`` and answers 0."""

    __wire_name__ = "cluster.Emit"
    token: str


class Seen(Request[list[str]]):
    """The tokens of every ``Notice`` this node's subscriber has received, oldest first."""

    __wire_name__ = "cluster.Seen"


# The node command sets id, cluster, bind and discovery from its flags.
node = Node(cluster="cluster-app", discovery="mdns")

#: Tokens received by ``on_notice``; bounded so a long run cannot grow it forever.
MAX_SEEN = 1000
_seen: list[str] = []


@node.handler
async def where(req: Where) -> str:
    return node.node_id


@node.handler
async def relay(req: Relay) -> str:
    answer = await node.send(Where(), node=req.to, timeout=5.0)
    return f"{node.node_id}->{answer}"


@node.handler
async def boom(req: Boom) -> None:
    raise ValueError("boom: " + req.text)


@node.handler
async def emit(req: Emit) -> int:
    await node.publish(Notice(token=req.token))
    return 0


@node.handler
async def seen(req: Seen) -> list[str]:
    return list(_seen)


@node.subscribe
async def on_notice(evt: Notice) -> None:
    if len(_seen) < MAX_SEEN:
        _seen.append(evt.token)

"""A small service, run by the node command: ``python -m catga_zmq.node --app examples.shop:node``.

Every process that sends these messages imports this module, so the wire names
(``shop.GetUser``...) and the types agree on both sides.
"""

from __future__ import annotations

import logging

import msgspec

from catga_zmq import Event, Node, Request

log = logging.getLogger("examples.shop")


class User(msgspec.Struct):
    id: str
    name: str
    served_by: str


class GetUser(Request[User]):
    __wire_name__ = "shop.GetUser"
    __idempotent__ = True  # a read: safe to retry on another node
    id: str


class RenameUser(Request[User]):
    __wire_name__ = "shop.RenameUser"
    id: str
    name: str


class UserRenamed(Event):
    __wire_name__ = "shop.UserRenamed"
    id: str
    name: str


class Fail(Request[None]):
    """Always fails: shows how a remote exception arrives (as HandlerError)."""

    __wire_name__ = "shop.Fail"
    reason: str


# Discovery stays the default, mDNS (on the bind address's interfaces only), so that the
# README's commands form a cluster as written; the node command's flags, CATGA_* variables
# and --config override these settings.
node = Node(cluster="shop")

_names: dict[str, str] = {"7": "Ada", "8": "Grace"}


@node.handler
async def get_user(req: GetUser) -> User:
    return User(id=req.id, name=_names.get(req.id, "unknown"), served_by=node.node_id)


@node.handler
async def rename_user(req: RenameUser) -> User:
    _names[req.id] = req.name
    await node.publish(UserRenamed(id=req.id, name=req.name))
    return User(id=req.id, name=req.name, served_by=node.node_id)


@node.handler
async def fail(req: Fail) -> None:
    raise ValueError(req.reason)


@node.subscribe
async def on_renamed(evt: UserRenamed) -> None:
    # Every node keeps its own copy of the names: the event keeps them in step.
    _names[evt.id] = evt.name
    log.info("%s saw %s renamed to %s", node.node_id, evt.id, evt.name)

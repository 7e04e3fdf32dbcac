"""The service every host of the LAN tests runs: ``--app tests.apps.lan_app:node``.

The client (``tests/lan_client.py``) imports the same types, so wire names agree.
Node settings come from the command line and ``CATGA_*`` variables; the app sets none,
so the failure-detection tests run with the library's defaults.
"""

from __future__ import annotations

import asyncio
import os
from typing import IO

import msgspec

from catga_zmq import Node, Request


class WorkReply(msgspec.Struct):
    seq: int
    node: str
    running: int = 0  # handlers of this app running on that node when it started this one


class Work(Request[WorkReply]):
    """A read: safe to run twice, so the fabric may retry it on another node."""

    __wire_name__ = "lan.Work"
    __idempotent__ = True
    seq: int
    sleep: float = 0.0  # s


class ChargeReply(msgspec.Struct):
    charge_id: str
    node: str


class Charge(Request[ChargeReply]):
    """A write that must run at most once: never retried after it may have been delivered."""

    __wire_name__ = "lan.Charge"
    charge_id: str
    sleep: float = 0.0  # s, after the charge is recorded


class Slow(Request[WorkReply]):
    """Holds a handler slot for ``sleep`` s: fills a node with ``--max-concurrency``."""

    __wire_name__ = "lan.Slow"
    __idempotent__ = True
    seq: int
    sleep: float = 0.3  # s


class Where(Request[str]):
    """Answers the id of the node that ran it."""

    __wire_name__ = "lan.Where"


# The node command sets id, bind, cluster and discovery from its flags.
node = Node(cluster=os.environ.get("CATGA_CLUSTER", "lan"), discovery="mdns")

_running = 0
_exec_log: IO[str] | None = None


def _record_charge(charge_id: str) -> None:
    """Append ``charge_id`` to ``$LAN_EXEC_LOG``, on disk before the handler goes on."""
    global _exec_log
    if _exec_log is None:
        path = os.environ.get("LAN_EXEC_LOG")
        if not path:
            return
        _exec_log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process' life
    _exec_log.write(charge_id + "\n")
    _exec_log.flush()
    os.fsync(_exec_log.fileno())


@node.handler
async def work(req: Work) -> WorkReply:
    global _running
    _running += 1
    try:
        running = _running
        if req.sleep > 0:
            await asyncio.sleep(req.sleep)
        return WorkReply(req.seq, node.node_id, running)
    finally:
        _running -= 1


@node.handler
async def charge(req: Charge) -> ChargeReply:
    _record_charge(req.charge_id)
    if req.sleep > 0:
        await asyncio.sleep(req.sleep)
    return ChargeReply(req.charge_id, node.node_id)


@node.handler
async def slow(req: Slow) -> WorkReply:
    global _running
    _running += 1
    try:
        running = _running
        await asyncio.sleep(req.sleep)
        return WorkReply(req.seq, node.node_id, running)
    finally:
        _running -= 1


@node.handler
async def where(req: Where) -> str:
    return node.node_id

"""The service killed and restarted by ``bench_failover.py``.

Every node process and the benchmark's client import this module as
``benchmarks._failover_app`` (never by file path), so the wire names of the two request
types agree on both sides. A node process runs it with:

    python -m catga_zmq.node --app benchmarks._failover_app:node --id h1 \\
        --cluster NAME --discovery mdns

Two request types with the same handler, which sleeps ``FAILOVER_WORK_MS`` (default 0)
so that some requests are in flight on the node when it is killed:

- ``IdemWork`` is marked ``__idempotent__``: delivered but unanswered, it may be retried
  on another node;
- ``OnceWork`` is not: delivered but unanswered, the caller gets the error.

With ``FAILOVER_BENCH_EVENTS=1`` in its environment, the process also writes every
membership log record to stdout as ``event <time.time()> <message>`` (microseconds, the
machine's clock), so that the benchmark can time detection against the moment it sent
SIGKILL without parsing the human log format on stderr (which stays as it is).

No ``from __future__ import annotations`` here: the handlers' request types are taken
from their annotations, which stay real classes this way.
"""

import asyncio
import logging
import os
import sys

import msgspec

from catga_zmq import Node, Request

#: Environment variable that turns the stdout event lines on (node processes only).
EVENTS_ENV = "FAILOVER_BENCH_EVENTS"
#: Environment variable with the handler's work time in milliseconds.
WORK_MS_ENV = "FAILOVER_WORK_MS"
#: Prefix of an event line on stdout.
EVENT_PREFIX = "event "


class Served(msgspec.Struct):
    seq: int
    served_by: str


class IdemWork(Request[Served]):
    """Safe to run twice: a delivered, unanswered one may go to another node."""

    __wire_name__ = "bench.failover.IdemWork"
    __idempotent__ = True
    seq: int


class OnceWork(Request[Served]):
    """Not idempotent: delivered and unanswered, the caller gets the error."""

    __wire_name__ = "bench.failover.OnceWork"
    seq: int


# The node command overrides id, cluster, bind, port and discovery from its flags.
node = Node(bind="127.0.0.1", discovery="none")

_WORK_S = max(0.0, float(os.environ.get(WORK_MS_ENV, "0") or 0)) / 1000.0


@node.handler
async def idem_work(req: IdemWork) -> Served:
    if _WORK_S:
        await asyncio.sleep(_WORK_S)
    return Served(seq=req.seq, served_by=node.node_id)


@node.handler
async def once_work(req: OnceWork) -> Served:
    if _WORK_S:
        await asyncio.sleep(_WORK_S)
    return Served(seq=req.seq, served_by=node.node_id)


def _install_event_log() -> None:
    """Membership records -> ``event <epoch seconds> <message>`` lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)  # flushes after every record
    handler.setFormatter(logging.Formatter(EVENT_PREFIX + "%(created).6f %(message)s"))
    handler.setLevel(logging.INFO)
    membership = logging.getLogger("catga_zmq.membership")
    membership.addHandler(handler)
    # SUSPECT and "joined" are INFO records: keep them even under --log-level WARNING.
    membership.setLevel(logging.INFO)


if os.environ.get(EVENTS_ENV) == "1":
    _install_event_log()

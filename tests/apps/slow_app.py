"""A node whose handler takes as long as it is told: ``--app tests.apps.slow_app:node``.

Used to test what a second Ctrl-C does while a drain waits for that handler.
"""

from __future__ import annotations

import asyncio
import logging

from catga_zmq import Node, Request

log = logging.getLogger("tests.apps.slow_app")


class Sleep(Request[str]):
    """Sleeps ``seconds``, then answers the id of the node that slept."""

    __wire_name__ = "slow.Sleep"
    seconds: float


node = Node(cluster="slow-app", discovery="none")


@node.handler
async def sleep(req: Sleep) -> str:
    log.warning("sleeping %s s", req.seconds)
    await asyncio.sleep(req.seconds)
    return node.node_id

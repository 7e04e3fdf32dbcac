"""The Echo request served by the node under benchmark.

Both processes import this module as ``benchmarks._echo_app`` (never by file path), so
the wire name of ``Echo`` is ``benchmarks._echo_app.Echo`` on both sides; the raw
baselines put the same name in their header (``_common.ECHO_TYPE_NAME``). The server
process runs it with:

    python -m catga_zmq.node --app benchmarks._echo_app:node \\
        --bind 127.0.0.1 --port N --discovery none

No ``from __future__ import annotations`` here: the handler's request type is taken
from its annotation, which stays a real class this way.
"""

import msgspec

from catga_zmq import Node, Request


class EchoReply(msgspec.Struct):
    data: bytes


class Echo(Request[EchoReply]):
    data: bytes


node = Node(node_id="srv", bind="127.0.0.1", port=0, discovery=None)


@node.handler
async def echo(req: Echo) -> EchoReply:
    return EchoReply(data=req.data)

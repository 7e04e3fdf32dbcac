"""The service run by the DNS discovery tests: ``--app tests.apps.dns_app:node``.

``Members`` answers the node's own view of the cluster, so a test can ask each node
whom it sees, not only what the test's own client sees.
"""

from __future__ import annotations

from catga_zmq import Node, Request


class Members(Request[dict[str, str]]):
    """This node's view: node id -> status (``alive``, ``suspect``...), itself left out."""

    __wire_name__ = "dns.Members"


# The node command sets id, cluster, bind and discovery from its flags.
node = Node(cluster="dns-app", discovery=None)


@node.handler
async def members(req: Members) -> dict[str, str]:
    return {m.node_id: m.status.value for m in node.members() if not m.local}

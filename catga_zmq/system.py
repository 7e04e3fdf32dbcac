"""Built-in requests every node serves: ping, info, stats.

``Info`` doubles as the greeting of static and gossip discovery: the caller sends its
own address, the answer carries the node's address and the peers it knows.
"""

from __future__ import annotations

import msgspec

from .messages import Request


class Pong(msgspec.Struct):
    node_id: str
    time: float  # time.time() at the node that answered


class Ping(Request[Pong]):
    __wire_name__ = "catga.Ping"


class PeerAddress(msgspec.Struct, array_like=True):
    node_id: str
    endpoint: str
    pub_endpoint: str
    cluster: str
    version: int


class NodeInfo(msgspec.Struct):
    node_id: str
    cluster: str
    version: int
    library_version: str
    endpoint: str
    pub_endpoint: str
    incarnation: int
    status: str
    handles: list[str]
    subscribes: list[str]
    metadata: dict[str, str]
    peers: list[PeerAddress]


class Info(Request[NodeInfo]):
    __wire_name__ = "catga.Info"
    caller: PeerAddress | None = None


class NodeStats(msgspec.Struct):
    node_id: str
    uptime: float  # s
    running: int  # handlers running now
    pending: int  # this node's requests awaiting replies
    requests_handled: int
    requests_failed: int
    requests_refused: int  # answered OVERLOADED (at max_concurrency, or draining)
    requests_sent: int
    events_published: int
    events_received: int
    events_lost: int  # sequence gaps seen on subscribed topics
    events_dropped: int  # dropped here: a local subscriber's queue was full
    frames_rejected: int  # malformed, unknown kind, wrong version, other cluster
    replies_dropped: int
    late_replies: int
    members: dict[str, int]  # status -> count
    batches_sent: int = 0  # frames that carried several requests or replies
    healthy: bool = True  # every background loop of the node runs
    problems: list[str] = []  # what is wrong when it is not healthy


class Stats(Request[NodeStats]):
    __wire_name__ = "catga.Stats"

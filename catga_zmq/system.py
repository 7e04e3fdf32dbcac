"""Built-in requests every node serves: ping, info, stats, deliver, and the admin
requests drain and configure (the runtime settings).

Every live node handles them, whatever its own handlers, so any node (or an operator
tool that is not a member) can ask any other: ``await node.send(Stats(), node="users-1")``.
Their wire names start with ``catga.``, which routing reads as "every node serves it":
keep that prefix out of your own wire names.

``Drain`` and ``Configure`` are admin requests (``__admin__``): a node runs them only
for an admin caller (see ``security.AdminCheck``); others get ``PermissionDenied``.

``Info`` doubles as the greeting of static and gossip discovery: the caller sends its
own address, the answer carries the node's address and the peers it knows.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .messages import Request
from .protocol import (
    MAX_HANDLES,
    MAX_INFO_PEERS,
    MAX_VERSION_TEXT,
    ClusterName,
    Endpoint,
    Metadata,
    NodeId,
    PublicKey,
    Status,
    TypeName,
    TypeNames,
)

#: A ``NodeStats`` answer names at most this many problems (one per background loop
#: that is not running: a handful), each at most MAX_PROBLEM characters, and at most
#: MAX_STATUSES member statuses (``NodeStatus`` has five).
MAX_PROBLEMS: Final = 64
MAX_PROBLEM: Final = 1024
MAX_STATUSES: Final = 16


class Pong(msgspec.Struct):
    """The answer to ``Ping``.

    ``node_id`` is the node that answered; ``time`` its wall clock when it did
    (``time.time()``, seconds since the epoch), which shows a clock far off the
    caller's.
    """

    node_id: NodeId
    time: float  # s since the epoch, at the node that answered


class Ping(Request[Pong]):
    """Is a node there and answering? Answers ``Pong``.

    Routed like any request: ``send(Ping(), node="users-1")`` asks that node, and the
    round trip measures the request path (routing, sockets, the node's event loop)
    rather than the network alone.
    """

    __wire_name__ = "catga.Ping"


class PeerAddress(msgspec.Struct, array_like=True):
    """Where a node listens: what ``Info`` carries to introduce nodes to each other.

    ``node_id`` is the node's id, ``endpoint`` its ROUTER (requests go there) and
    ``pub_endpoint`` its PUB socket (heartbeats and events come from there), both
    ``tcp://host:port``; ``cluster`` its cluster name and ``version`` the wire
    protocol version it speaks (``PROTOCOL_VERSION``). Encoded as an array: the field
    order is part of the wire format.
    """

    node_id: NodeId
    endpoint: Endpoint
    pub_endpoint: Endpoint
    cluster: ClusterName
    version: int
    public_key: PublicKey = ""  # its CURVE key (Z85), when the cluster uses CURVE


class NodeInfo(msgspec.Struct):
    """The answer to ``Info``: who the node is, what it serves, and whom it knows.

    ``node_id`` and ``cluster`` name it; ``version`` is the wire protocol version it
    speaks and ``library_version`` its catga_zmq release. ``endpoint`` (ROUTER) and
    ``pub_endpoint`` (PUB) are where it listens. ``incarnation`` identifies this run
    of the node (``time.time_ns()`` at its start): a restarted node has a higher one.
    ``status`` is its own ``NodeStatus`` value, ``"alive"`` or ``"draining"``.
    ``handles`` and ``subscribes`` are the wire names of the request types it handles
    and the event types it subscribes to, sorted; ``metadata`` is its
    ``NodeOptions.metadata``. ``peers`` are the addresses of the other nodes it knows,
    less those that left or faulted: the gossip that lets one seed introduce a cluster.
    """

    node_id: NodeId
    cluster: ClusterName
    version: int
    library_version: Annotated[str, msgspec.Meta(max_length=MAX_VERSION_TEXT)]
    endpoint: Endpoint
    pub_endpoint: Endpoint
    incarnation: int
    status: Status
    handles: TypeNames
    subscribes: TypeNames
    metadata: Metadata
    peers: Annotated[list[PeerAddress], msgspec.Meta(max_length=MAX_INFO_PEERS)]
    public_key: PublicKey = ""


class Info(Request[NodeInfo]):
    """Who is this node, what does it serve, whom does it know? Answers ``NodeInfo``.

    ``caller`` is the asking node's own address, so that the answering node learns of
    it too (a greeting goes both ways); an operator tool that is not a member leaves it
    None. A caller of another cluster is answered but not remembered.
    """

    __wire_name__ = "catga.Info"
    caller: PeerAddress | None = None


class HandlerStats(msgspec.Struct):
    """What one node's handler of one request type did since the node started (as
    the NATS micro ``$SRV.STATS`` endpoint says per endpoint).

    - ``handled``: requests it answered with a reply; ``errors``: those answered with an
      error once taken (the handler raised, its reply did not encode, its deadline
      passed), as ``requests_handled`` and ``requests_failed`` count them, local calls
      included.
    - ``processing_time``: seconds from the read of each request to its answer (a
      local call: from the call), in total: replies and errors together, and handlers
      a shutdown cancelled; divided by ``handled + errors``, about the mean.
    """

    handled: int = 0
    errors: int = 0
    processing_time: float = 0.0  # s, in total


class NodeStats(msgspec.Struct):
    """The answer to ``Stats``: a node's counters since it started.

    Every count is since the node's start; the first four are the state now.

    - ``node_id``: the node that answered; ``uptime``: seconds since it started.
    - ``running``: its handlers running now; ``pending``: its own requests to other
      nodes awaiting replies.
    - ``requests_handled``: requests (local calls too) its handlers answered with a
      reply; ``requests_failed``: those answered with an error once taken (the
      handler raised, its reply could not be encoded, or its deadline had passed);
      ``requests_refused``: those answered ``OVERLOADED`` without running (at
      ``max_concurrency``, or draining); ``requests_expired``: those answered
      ``TIMEOUT`` without running, because this node read them after their caller's
      deadline (it was stalled: see ``catga_zmq._clock``).
    - ``connections_refused``: CURVE handshakes it refused (a key it does not trust).
    - ``handshakes_failed``: other ZeroMQ handshakes that failed, on connections it made
      (a peer in plaintext while it runs CURVE, or the other way round; a peer that
      refused its key or serves with another key) and on those made to it (a client of
      the other kind, or one that holds another key for it). Each is logged once, with
      what to do.
    - ``requests_sent``: requests it sent to other nodes.
    - ``events_published``: events it published; ``events_received``: events from
      other nodes it delivered to its subscribers; ``events_lost``: events from other
      nodes it never got, seen as gaps in their sequence numbers; ``events_dropped``:
      events it got but dropped because a local subscriber's queue was full.
    - ``frames_rejected``: frames it refused: malformed, of an unknown kind, of
      another protocol version or cluster, or that did not decode as their type;
      and admin requests it refused (``PERMISSION_DENIED``).
    - ``replies_dropped``: replies it could not deliver (the caller had gone, or its
      queue was full); ``late_replies``: replies it got after its request had timed
      out or been cancelled.
    - ``connections_dropped``: inbound connections (to its ROUTER) that ended: a peer
      closed one, or libzmq dropped one whose peer sent a frame over this node's
      ``max_message_size`` (with every request on it; libzmq tells the two apart to
      nobody). A count that grows while peers stay up says: raise ``max_message_size``
      here, or have them send smaller messages.
    - ``members``: how many other nodes it knows in each status, keyed by
      ``NodeStatus`` value (``{"alive": 2, "suspect": 1}``).
    - ``handlers``: per request type it handles (wire name, built-ins included), what
      its handler did (``HandlerStats``); a type not asked for yet is left out.
    - ``remote_handled``: replies to its own requests whose node said how long their
      handler took there; ``remote_handler_us``: the sum of those times (µs, each
      measured on the handler's node), so ``remote_handler_us / remote_handled`` is
      the mean, and a round trip less it the time spent between the nodes.
    - ``payloads_compressed``: requests, replies and events it sent compressed
      (``compression``); ``compression_saved``: the bytes that saved on the wire.
    """

    node_id: NodeId
    uptime: float  # s
    running: int
    pending: int
    requests_handled: int
    requests_failed: int
    requests_refused: int
    requests_sent: int
    events_published: int
    events_received: int
    events_lost: int
    events_dropped: int
    frames_rejected: int
    replies_dropped: int
    late_replies: int
    members: Annotated[dict[Status, int], msgspec.Meta(max_length=MAX_STATUSES)]  # status -> count
    batches_sent: int = 0  # frames that carried several requests or replies
    connections_dropped: int = 0  # inbound connections that ended
    healthy: bool = True  # every background loop of the node runs
    problems: Annotated[  # what is wrong when it is not healthy
        list[Annotated[str, msgspec.Meta(max_length=MAX_PROBLEM)]],
        msgspec.Meta(max_length=MAX_PROBLEMS),
    ] = []
    requests_expired: int = 0
    connections_refused: int = 0
    handshakes_failed: int = 0
    handlers: Annotated[
        dict[TypeName, HandlerStats], msgspec.Meta(max_length=MAX_HANDLES + 16)
    ] = {}
    remote_handled: int = 0
    remote_handler_us: int = 0  # µs
    payloads_compressed: int = 0
    compression_saved: int = 0  # bytes


class Stats(Request[NodeStats]):
    """How is this node doing? Answers ``NodeStats``, its counters since it started."""

    __wire_name__ = "catga.Stats"


class Deliver(Request[int]):
    """Hand one event to the receiving node's subscribers of its type; answers how
    many subscribers it was queued for (0: none there).

    How a client, which has no PUB socket, publishes: its ``publish()`` sends one
    ``Deliver`` to each live member that subscribes to the event's type.
    ``type_name`` is the event's wire name, ``payload`` its msgpack encoding. Delivery
    is as for a published event (at most once; counted in ``events_received``), but
    answered, so the sender knows who took it. An event read so shows nothing about
    its sender's life (anyone may send a request naming any node).
    """

    __wire_name__ = "catga.Deliver"
    type_name: TypeName
    payload: bytes


#: A ``Configure`` request carries at most this many changes, each key (``weight``,
#: ``metadata.zone``) at most MAX_CHANGE_KEY characters and each value at most
#: MAX_CHANGE_VALUE (a whole metadata table written out: 256 pairs of 64 + 1024).
MAX_CHANGES: Final = 512
MAX_CHANGE_KEY: Final = 128
MAX_CHANGE_VALUE: Final = 300_000


class RuntimeSettings(msgspec.Struct):
    """The settings of a node that may change while it runs, as they are now: the
    answer to ``Configure``. ``changed`` names those the request changed, sorted
    (``metadata.zone`` for one label, ``metadata`` for the whole table).

    Each field is the ``NodeOptions`` setting of the same name.
    """

    node_id: NodeId
    weight: int
    metadata: Metadata
    max_concurrency: int
    request_timeout: float  # s
    drain_timeout: float  # s
    log_level: Annotated[str, msgspec.Meta(max_length=8)]
    changed: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_CHANGE_KEY)]],
        msgspec.Meta(max_length=MAX_CHANGES),
    ] = []


class Configure(Request[RuntimeSettings]):
    """Change settings of a running node (``python -m catga_zmq set NODE weight=3``).

    ``changes`` maps a setting to its new value as text, as a flag takes it:
    ``{"weight": "3", "metadata.zone": "b"}``. The settings that may change while a
    node runs are ``catga_zmq._runtime.RUNTIME_SETTINGS``; ``metadata.KEY`` sets one
    label, ``metadata`` (``zone=a,rack=3``, or empty) the whole table. Every value is
    checked as the flag's would be before anything changes: one bad value (or an
    unknown key) is ``ValidationFailed`` naming it, and nothing changes. An admin
    request. Answers ``RuntimeSettings``; the change shows in the node's next
    heartbeat.
    """

    __wire_name__ = "catga.Configure"
    __admin__ = True
    changes: Annotated[
        dict[
            Annotated[str, msgspec.Meta(max_length=MAX_CHANGE_KEY)],
            Annotated[str, msgspec.Meta(max_length=MAX_CHANGE_VALUE)],
        ],
        msgspec.Meta(max_length=MAX_CHANGES),
    ]


class Draining(msgspec.Struct):
    """The answer to ``Drain``, sent before the node goes: ``node_id`` drains now;
    ``running`` handlers were running when it started (this one not counted), and it
    gives them up to ``drain_timeout`` seconds."""

    node_id: NodeId
    running: int
    drain_timeout: float  # s


class Drain(Request[Draining]):
    """Drain a node as SIGTERM would (``python -m catga_zmq drain NODE``): it announces
    DRAINING, takes no new requests, finishes those it runs (within ``drain_timeout``),
    says BYE and closes; the node command then exits 0. Answers ``Draining`` first. An
    admin request.
    """

    __wire_name__ = "catga.Drain"
    __admin__ = True

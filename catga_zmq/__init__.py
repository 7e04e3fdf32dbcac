"""catga_zmq: a brokerless, typed request/event fabric for asyncio services over ZeroMQ.

Users import from here only::

    from catga_zmq import Node, Request, Event
"""

from __future__ import annotations

from ._node import Node
from ._version import __version__
from .config import NodeOptions
from .discovery import Candidate, Discovery, MemoryDiscovery, MemoryHub, StaticDiscovery
from .errors import (
    Cancelled,
    CatgaError,
    ConfigError,
    HandlerError,
    HandlerNotFound,
    NodeClosed,
    NodeNotStarted,
    NodeStateError,
    NoNodes,
    Overloaded,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    SerializationFailed,
    TransportFailed,
    ValidationFailed,
)
from .mediator import Behavior, Context, DeadlineBehavior, LoggingBehavior
from .membership import (
    ClusterNode,
    MembershipEvent,
    NodeFaulted,
    NodeJoined,
    NodeLeft,
    NodeRecovered,
    NodeStatus,
    NodeSuspect,
)
from .messages import Event, Message, Request, registry
from .protocol import PROTOCOL_VERSION
from .system import (
    Configure,
    Deliver,
    Drain,
    Draining,
    HandlerStats,
    Info,
    NodeInfo,
    NodeStats,
    Ping,
    Pong,
    RuntimeSettings,
    Stats,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Behavior",
    "Cancelled",
    "Candidate",
    "CatgaError",
    "ClusterNode",
    "ConfigError",
    "Configure",
    "Context",
    "DeadlineBehavior",
    "Deliver",
    "Discovery",
    "Drain",
    "Draining",
    "Event",
    "HandlerError",
    "HandlerNotFound",
    "HandlerStats",
    "Info",
    "LoggingBehavior",
    "MembershipEvent",
    "MemoryDiscovery",
    "MemoryHub",
    "Message",
    "NoNodes",
    "Node",
    "NodeClosed",
    "NodeFaulted",
    "NodeInfo",
    "NodeJoined",
    "NodeLeft",
    "NodeNotStarted",
    "NodeOptions",
    "NodeRecovered",
    "NodeStateError",
    "NodeStats",
    "NodeStatus",
    "NodeSuspect",
    "Overloaded",
    "PermissionDenied",
    "Ping",
    "Pong",
    "ProtocolError",
    "Request",
    "RequestTimeout",
    "RuntimeSettings",
    "SerializationFailed",
    "StaticDiscovery",
    "Stats",
    "TransportFailed",
    "ValidationFailed",
    "__version__",
    "registry",
]

"""The errors catga_zmq raises. Every one is a ``CatgaError``.

::

    CatgaError                      code                  retryable
    ├── ConfigError                 CONFIG_INVALID        no
    ├── NodeStateError              NOT_RUNNING           no     also a RuntimeError
    │   ├── NodeNotStarted          NOT_RUNNING           no
    │   └── NodeClosed              NOT_RUNNING           no
    ├── HandlerNotFound             HANDLER_NOT_FOUND     no
    ├── NoNodes                     NO_NODES              yes
    ├── HandlerError                HANDLER_FAILED        no
    ├── RequestTimeout              TIMEOUT               yes    also a TimeoutError
    ├── TransportFailed             TRANSPORT_FAILED      yes
    ├── SerializationFailed         SERIALIZATION_FAILED  no
    │   └── ProtocolError           PROTOCOL_ERROR        no
    ├── ValidationFailed            VALIDATION_FAILED     no
    ├── Cancelled                   CANCELLED             no
    ├── Overloaded                  OVERLOADED            yes
    └── PermissionDenied            PERMISSION_DENIED     no

``code`` is stable: it is what travels on the wire and what a program should compare,
rather than a message. ``retryable`` says whether the same request may succeed if sent
again (perhaps to another node); it is a property of the failure, not a promise.
``node`` names the node that failed, when one did. A remote handler's exception
arrives as ``HandlerError`` with the exception's type name and message: never a pickle,
never a traceback object.

``RequestTimeout`` is also the builtin ``TimeoutError``, so ``except TimeoutError``
(and code written for ``asyncio.timeout``) catches it; ``NodeStateError`` is also a
``RuntimeError``, as asyncio's "event loop is closed" is.
"""

from __future__ import annotations

from typing import ClassVar


class CatgaError(Exception):
    """Root of every catga_zmq error: ``except CatgaError`` catches all of them.

    ``code`` names the kind of failure (stable, the same on every node), ``message``
    says what happened, ``node`` which node failed (None when none did), and
    ``retryable`` whether sending the same request again may succeed. An error that
    arrives from another node with a code this version does not know is a plain
    ``CatgaError`` whose message starts with that code.
    """

    code: ClassVar[str] = "CATGA_ERROR"
    default_retryable: ClassVar[bool] = False
    #: The message when none is given: what happened and what to do about it.
    default_message: ClassVar[str] = ""

    def __init__(
        self,
        message: str = "",
        *,
        node: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        message = message or self.default_message
        super().__init__(message)
        self.message = message
        self.node = node
        self.retryable = self.default_retryable if retryable is None else retryable

    def __str__(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        return f"[{self.code}] {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, node={self.node!r})"


class ConfigError(CatgaError):
    """A setting or a definition cannot work; the message says which and why.

    Raised as early as possible, so that a mistake does not show up later as a node
    that never joins: when ``NodeOptions`` or a ``Node`` is built (an unknown setting,
    a value out of range, a bad seed endpoint), when a message class is defined (a wire
    name taken twice or unusable), when a second handler is registered for a request
    type, at the first send of a type whose response type is
    not defined, and when a discovery backend starts. Fix what the message names;
    retrying does not help.
    """

    code = "CONFIG_INVALID"


class NodeStateError(CatgaError, RuntimeError):
    """The node is not in a state that allows the call.

    Catch this to handle both ``NodeNotStarted`` and ``NodeClosed``. It is a mistake
    in the calling program, not a failure of the cluster: retrying the same call on the
    same node does not help.
    """

    code = "NOT_RUNNING"
    default_message = "the node is not running"


class NodeNotStarted(NodeStateError):
    """``send()``, ``publish()``, ``watch()`` or ``wait_for_peers()`` on a node not started.

    A node binds its sockets and joins the cluster when it starts: use
    ``async with node:`` or ``await node.start()`` first.
    """

    default_message = (
        "the node has not started; use `async with node:` or `await node.start()` first"
    )


class NodeClosed(NodeStateError):
    """A call on a node that has been closed: its ``aclose()`` ran, or its start failed.

    A node starts once: once closed its sockets are gone and it does not start again.
    Create a new ``Node`` to rejoin the cluster.
    """

    default_message = "the node is closed; a node starts once: create a new Node"


class HandlerNotFound(CatgaError):
    """The node that received the request has no handler for its type.

    A node answers this at once rather than letting the caller wait. ``send()`` takes
    it as "not run here" and tries another node that handles the type; you see it when
    ``send(node=...)`` names a node without the handler, or when the node that was
    chosen dropped the type before the request arrived. Not retryable on that node.
    """

    code = "HANDLER_NOT_FOUND"


class NoNodes(CatgaError):
    """No live node handles this type right now (NATS' "no responders").

    Raised by ``send()`` at once, without waiting for the timeout, when no member that
    is ALIVE (this node included) handles the request's type, when every one that
    does is isolated by its circuit breaker, or when ``send(node=...)`` names a node
    that is not a live member handling it. Retryable: nodes may join or recover.
    At start-up, ``await node.wait_for_peers(1, handles=MyRequest)`` waits for one.
    """

    code = "NO_NODES"
    default_retryable = True


class HandlerError(CatgaError):
    """The handler ran and raised; ``error_type`` is the name of the exception's class.

    The exception itself stays on the handler's node (the default ``LoggingBehavior``
    logs it there at WARNING); the caller gets its class name and message, never a
    pickle or a traceback. Not retried: the handler may have done part of its work.
    Handle it as the handler's own failure.
    """

    code = "HANDLER_FAILED"

    def __init__(
        self,
        message: str = "",
        *,
        error_type: str = "Exception",
        node: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, node=node, retryable=retryable)
        self.error_type = error_type

    def __str__(self) -> str:
        where = f" (node {self.node})" if self.node else ""
        return f"[{self.code}] {self.error_type}: {self.message}{where}"


class RequestTimeout(CatgaError, TimeoutError):
    """The deadline passed before a reply arrived; also a builtin ``TimeoutError``.

    Raised by ``send()`` when its ``timeout`` (or the ``request_timeout`` setting)
    runs out, by a node that receives a request whose deadline has already passed (it
    does not start it), and by ``wait_for_peers()`` when the peers did not come in
    time. The request may still have run: send it again only if running it twice is
    harmless, or give it a longer timeout.
    """

    code = "TIMEOUT"
    default_retryable = True


class TransportFailed(CatgaError):
    """The request did not get through, or its node was lost while it was in flight.

    ``delivered`` is False when the request never left this node (safe to send
    elsewhere), True when the node failed after it was sent: it may have run, so it is
    only retried elsewhere when its type is idempotent. ``send()`` has already tried
    the other nodes it could when you see this. A node that keeps failing is isolated
    by its circuit breaker for a while.
    """

    code = "TRANSPORT_FAILED"
    default_retryable = True

    def __init__(
        self,
        message: str = "",
        *,
        node: str | None = None,
        retryable: bool | None = None,
        delivered: bool = False,
    ) -> None:
        super().__init__(message, node=node, retryable=retryable)
        self.delivered = delivered
        # Shared by the requests one event failed together (a dropped connection, a
        # lost node): that event counts once against the node's circuit breaker.
        self._incident: object | None = None


class SerializationFailed(CatgaError):
    """A message could not be encoded or decoded as its type.

    Raised when a request, event or reply holds a value msgspec cannot encode, when
    its encoded size is over ``max_message_size``, when the bytes that arrived are not
    the declared type (a reply that is not the ``T`` of ``Request[T]``, a node running
    another version of a message class). Fix the message or its type; retrying sends
    the same bytes again.
    """

    code = "SERIALIZATION_FAILED"


class ProtocolError(SerializationFailed):
    """A frame is not a catga_zmq frame: bad header, unknown kind, wrong version.

    Most often a peer runs a catga_zmq release with another protocol version, or
    something that is not catga_zmq connected to a node's port. The node drops or
    answers such frames and counts them (``frames_rejected`` in ``Stats``); run one
    protocol version on every node of a cluster.
    """

    code = "PROTOCOL_ERROR"


class ValidationFailed(CatgaError):
    """A message, or a call's argument, broke a rule it must follow.

    Raised when a request decoded but broke a constraint of its type (a
    ``msgspec.Meta`` bound, say), and when a call is misused: ``send()`` given an event
    or a timeout out of range, ``publish()`` given a request. Fix the value; retrying
    does not help.
    """

    code = "VALIDATION_FAILED"


class Cancelled(CatgaError):
    """The request was cut short by a shutdown, not by its own failure.

    Raised by ``send()`` when the handler's node shut down before the handler finished
    (the handler was cancelled at the end of that node's drain), or when this node was
    closed while the request waited for its reply. The handler may have done part of
    its work, so it is not retryable by default. This is not ``asyncio.CancelledError``:
    cancelling the task that awaits ``send()`` raises that, as usual.
    """

    code = "CANCELLED"


class Overloaded(CatgaError):
    """A bound on concurrent work was reached; another node, or a later try, may take it.

    Answered by a node at its ``max_concurrency`` running handlers, or that is
    draining (counted as ``requests_refused`` in its ``Stats``). ``send()`` takes it as
    "not run here" and tries another node, backing off within the deadline. Raised by
    ``send()`` too when this node already has ``max_in_flight`` requests awaiting
    replies. Add nodes, raise the bound, or send less at once.
    """

    code = "OVERLOADED"
    default_retryable = True


class PermissionDenied(CatgaError):
    """The node refused a request its caller may not make: an admin request (``Drain``,
    ``Configure``, any type with ``__admin__ = True``) from a caller that is no admin.

    With a CURVE trust directory, admins are the keys under its ``admin/``
    subdirectory; without one, the ``plaintext_admin`` setting of the node decides.
    The message says which rule refused it. Retrying with the same key does not help.
    """

    code = "PERMISSION_DENIED"


_BY_CODE: dict[str, type[CatgaError]] = {
    cls.code: cls
    for cls in (
        CatgaError,
        ConfigError,
        NodeStateError,  # NOT_RUNNING: its subclasses share the code
        HandlerNotFound,
        NoNodes,
        HandlerError,
        RequestTimeout,
        TransportFailed,
        SerializationFailed,
        ProtocolError,
        ValidationFailed,
        Cancelled,
        Overloaded,
        PermissionDenied,
    )
}


def error_from_code(
    code: str,
    message: str,
    *,
    node: str | None = None,
    retryable: bool | None = None,
    error_type: str = "",
) -> CatgaError:
    """Rebuild an error received from the wire. Unknown codes become ``CatgaError``."""
    cls = _BY_CODE.get(code, CatgaError)
    if cls is HandlerError:
        return HandlerError(
            message, error_type=error_type or "Exception", node=node, retryable=retryable
        )
    err = cls(message, node=node, retryable=retryable)
    if cls is CatgaError and code != CatgaError.code:
        err.message = f"{code}: {message}"
    return err

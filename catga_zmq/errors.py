"""The errors catga_zmq raises. Every one is a ``CatgaError``.

::

    CatgaError                      code                  retryable
    ├── ConfigError                 CONFIG_INVALID        no
    ├── HandlerNotFound             HANDLER_NOT_FOUND     no
    ├── NoNodes                     NO_NODES              yes
    ├── HandlerError                HANDLER_FAILED        no
    ├── RequestTimeout              TIMEOUT               yes
    ├── TransportFailed             TRANSPORT_FAILED      yes
    ├── SerializationFailed         SERIALIZATION_FAILED  no
    │   └── ProtocolError           PROTOCOL_ERROR        no
    ├── ValidationFailed            VALIDATION_FAILED     no
    ├── Cancelled                   CANCELLED             no
    └── Overloaded                  OVERLOADED            yes

``retryable`` says whether the same request may succeed if sent again (perhaps to
another node); it is a property of the failure, not a promise. ``node`` names the node
that failed, when one did. A remote handler's exception arrives as ``HandlerError``
with the exception's type name and message: never a pickle, never a traceback object.
"""

from __future__ import annotations

from typing import ClassVar


class CatgaError(Exception):
    """Root of every catga_zmq error."""

    code: ClassVar[str] = "CATGA_ERROR"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        node: str | None = None,
        retryable: bool | None = None,
    ) -> None:
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
    """A setting has a value that cannot work; the message says which and why."""

    code = "CONFIG_INVALID"


class HandlerNotFound(CatgaError):
    """The node that received the request has no handler for its type."""

    code = "HANDLER_NOT_FOUND"


class NoNodes(CatgaError):
    """No live node handles this type right now (NATS' "no responders")."""

    code = "NO_NODES"
    default_retryable = True


class HandlerError(CatgaError):
    """The handler raised. ``error_type`` is the name of the exception's class."""

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


class RequestTimeout(CatgaError):
    """The deadline passed before a reply arrived."""

    code = "TIMEOUT"
    default_retryable = True


class TransportFailed(CatgaError):
    """The request did not get through, or its node was lost while it was in flight.

    ``delivered`` is False when the request never left this node (safe to send
    elsewhere), True when the node failed after it was sent: it may have run, so it is
    only retried elsewhere when its type is idempotent.
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


class SerializationFailed(CatgaError):
    """A message could not be encoded or decoded as its type."""

    code = "SERIALIZATION_FAILED"


class ProtocolError(SerializationFailed):
    """A frame is not a catga_zmq frame: bad header, unknown kind, wrong version."""

    code = "PROTOCOL_ERROR"


class ValidationFailed(CatgaError):
    """The message decoded but broke a constraint of its type."""

    code = "VALIDATION_FAILED"


class Cancelled(CatgaError):
    """The work was cancelled (the caller went away, or the node shut down)."""

    code = "CANCELLED"


class Overloaded(CatgaError):
    """The node is at its bound of concurrent handlers; another node may take it."""

    code = "OVERLOADED"
    default_retryable = True


_BY_CODE: dict[str, type[CatgaError]] = {
    cls.code: cls
    for cls in (
        CatgaError,
        ConfigError,
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

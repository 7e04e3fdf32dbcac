"""Message types and the registry of wire names.

A request names its response type: ``class GetUser(Request[User])``. Every concrete
message class is registered under a stable wire name when it is defined (default
``module.QualName``; set ``__wire_name__`` to choose one). A name that arrives from the
wire is only ever looked up in this registry: never imported, never evaluated.
"""

from __future__ import annotations

import inspect
import sys
import threading
import types
import typing
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from .errors import ConfigError

T = TypeVar("T")

#: Longest wire name accepted, in bytes of UTF-8; bounds what a header may carry.
MAX_WIRE_NAME = 200


class Message(msgspec.Struct):
    """Base of every message. Not sent by itself: subclass ``Request`` or ``Event``."""

    #: The stable name this type travels under. Empty: ``module.QualName``.
    __wire_name__: ClassVar[str] = ""
    #: Safe to run twice: a request delivered but unanswered may be retried elsewhere.
    __idempotent__: ClassVar[bool] = False
    #: Name of the field whose value is the consistent-hash key, if any.
    __routing_key__: ClassVar[str | None] = None
    #: Served only to admin callers (``Drain``, ``Configure``): others get
    #: ``PermissionDenied`` without the handler running.
    __admin__: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__:  # Request and Event themselves
            return
        if "__wire_name__" not in cls.__dict__ or not cls.__dict__["__wire_name__"]:
            cls.__wire_name__ = f"{cls.__module__}.{cls.__qualname__}"
        registry.add(cls)


class Request(Message, Generic[T]):
    """A message that one handler answers with a ``T``: ``class GetUser(Request[User])``.

    ``await node.send(GetUser(id="7"))`` runs it on one node that handles it (this
    one or another, as routing decides) and returns the handler's ``User``. Fields are
    ``msgspec.Struct`` fields. Class settings:

    - ``__wire_name__``: the name it travels under (default ``module.QualName``); set
      it to keep the wire name when the class moves or is renamed.
    - ``__idempotent__``: True if running it twice is harmless; a request that reached
      a node that then failed is only sent to another node when it is.
    - ``__routing_key__``: the field whose value is the consistent-hash key when
      ``send()`` is given no ``key=``.
    - ``__admin__``: True to serve it only to admin callers, as the built-in ``Drain``
      and ``Configure`` are: with a CURVE trust directory, the keys in its ``admin/``
      subdirectory; without one, as the node's ``plaintext_admin`` setting says. Others
      get ``PermissionDenied``, and the handler does not run. A local call (routed to
      this node itself) is always allowed: it comes from the node's own process.
    """


class Event(Message):
    """A message for every subscriber in the cluster: ``class UserRenamed(Event)``.

    ``await node.publish(UserRenamed(...))`` delivers it to each live node's
    subscribers of its type, this node's included, at most once each: a node not
    connected yet misses it, and one too slow to keep up loses some (counted in its
    ``Stats``). Fields and ``__wire_name__`` are as for ``Request``.
    """


def wire_name(cls: type[Message]) -> str:
    """The name ``cls`` travels under."""
    return cls.__wire_name__


def is_request_type(cls: type[Any]) -> bool:
    """Is ``cls`` a ``Request`` class?"""
    return isinstance(cls, type) and issubclass(cls, Request)


def is_event_type(cls: type[Any]) -> bool:
    """Is ``cls`` an ``Event`` class?"""
    return isinstance(cls, type) and issubclass(cls, Event)


_response_types: dict[type[Any], Any] = {}


def response_type(cls: type[Request[Any]]) -> Any:
    """The ``T`` of ``Request[T]`` for ``cls``, resolving forward references once."""
    try:
        return _response_types[cls]
    except KeyError:
        pass
    found: Any = Any
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Request):
                args = typing.get_args(base)
                if args:
                    found = _resolve(args[0], klass)
                    break
        else:
            continue
        break
    if isinstance(found, TypeVar):
        found = Any
    _response_types[cls] = found
    return found


def _resolve(arg: Any, owner: type[Any]) -> Any:
    """``arg`` with its forward references evaluated where ``owner`` was defined."""
    module = sys.modules.get(owner.__module__)
    namespace = dict(vars(module)) if module else {}
    # Names seen from inside the class: its PEP 695 type parameters, then its body.
    local = {param.__name__: param for param in getattr(owner, "__type_params__", ())}
    local.update(vars(owner))
    # typing.get_type_hints is the supported way to evaluate a forward reference (the
    # private typing._eval_type warns from 3.13 on), so ``arg`` is handed to it as the
    # one annotation of a holder; it also resolves names nested in ``list["User"]``.
    holder = types.SimpleNamespace(__annotations__={"response": arg})
    try:
        hints = typing.get_type_hints(holder, namespace, local, include_extras=True)
    except NameError as exc:
        missing = exc.name or (arg.__forward_arg__ if isinstance(arg, typing.ForwardRef) else arg)
        raise ConfigError(
            f"{owner.__qualname__}: response type {missing!r} is not defined "
            f"in module {owner.__module__}; define it before the first send"
        ) from exc
    return hints["response"]


class Registry:
    """Wire name -> message type. Thread safe; names are unique per process."""

    def __init__(self) -> None:
        self._types: dict[str, type[Message]] = {}
        self._lock = threading.Lock()

    def add(self, cls: type[Message]) -> None:
        """Register ``cls`` under its wire name; done for every message class defined.

        A ``ConfigError`` if the name is unusable or another class already has it
        (a class defined again with the same fields, as by a reload, replaces the old).
        """
        name = cls.__wire_name__
        encoded = name.encode()
        if not name or len(encoded) > MAX_WIRE_NAME or "\x00" in name or name.startswith("!"):
            raise ConfigError(
                f"{cls.__qualname__}: wire name {name!r} is not usable; use 1-{MAX_WIRE_NAME} "
                "bytes, no NUL, not starting with '!'"
            )
        with self._lock:
            existing = self._types.get(name)
            if existing is not None and existing is not cls and not _same_definition(existing, cls):
                raise ConfigError(
                    f"wire name {name!r} is already used by {existing.__module__}."
                    f"{existing.__qualname__}; give {cls.__qualname__} its own __wire_name__"
                )
            self._types[name] = cls

    def get(self, name: str) -> type[Message] | None:
        """The class registered under ``name``, or None."""
        return self._types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        """Every registered wire name, sorted."""
        return sorted(self._types)


def _same_definition(a: type[Message], b: type[Message]) -> bool:
    # A module imported twice (as __main__ and by name, or reloaded) defines its classes
    # again; the newer definition wins rather than failing the import. ``b`` is still
    # being built (msgspec sets __struct_fields__ after __init_subclass__), so compare
    # the fields each class declares itself.
    return a.__qualname__ == b.__qualname__ and _own_fields(a) == _own_fields(b)


def _own_fields(cls: type[Message]) -> tuple[str, ...]:
    annotations = inspect.get_annotations(cls)
    return tuple(
        name
        for name, hint in annotations.items()
        if not name.startswith("__") and "ClassVar" not in str(hint)
    )


#: The process's registry: every message class defined so far, by wire name.
registry = Registry()

"""The error tree: stable codes, retryable defaults, builtin bases, and the drawn tree."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import re
from collections.abc import Callable

import msgspec
import pytest

import catga_zmq
from catga_zmq import Node, errors
from catga_zmq.errors import (
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
    error_from_code,
)
from catga_zmq.messages import Request

#: The contract: these codes travel on the wire and programs compare them. Changing
#: one breaks every node of an older release and every caller that checks it.
STABLE: list[tuple[type[CatgaError], str, bool]] = [
    (CatgaError, "CATGA_ERROR", False),
    (ConfigError, "CONFIG_INVALID", False),
    (NodeStateError, "NOT_RUNNING", False),
    (NodeNotStarted, "NOT_RUNNING", False),
    (NodeClosed, "NOT_RUNNING", False),
    (HandlerNotFound, "HANDLER_NOT_FOUND", False),
    (NoNodes, "NO_NODES", True),
    (HandlerError, "HANDLER_FAILED", False),
    (RequestTimeout, "TIMEOUT", True),
    (TransportFailed, "TRANSPORT_FAILED", True),
    (SerializationFailed, "SERIALIZATION_FAILED", False),
    (ProtocolError, "PROTOCOL_ERROR", False),
    (ValidationFailed, "VALIDATION_FAILED", False),
    (Cancelled, "CANCELLED", False),
    (Overloaded, "OVERLOADED", True),
    (PermissionDenied, "PERMISSION_DENIED", False),
]


def error_classes() -> list[type[CatgaError]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, CatgaError) and obj.__module__ == errors.__name__
    ]


def test_every_error_class_has_a_stable_code() -> None:
    assert {cls for cls, _, _ in STABLE} == set(error_classes())


@pytest.mark.parametrize(
    ("cls", "code", "retryable"), STABLE, ids=lambda v: getattr(v, "__name__", None)
)
def test_code_and_retryable_default(cls: type[CatgaError], code: str, retryable: bool) -> None:
    err = cls("what happened", node="n1")
    assert err.code == cls.code == code
    assert err.retryable is retryable
    assert cls("x", retryable=not retryable).retryable is (not retryable)
    assert str(err).startswith(f"[{code}] ")
    assert str(err).endswith("(node n1)")


def test_request_timeout_is_a_builtin_timeout_error() -> None:
    assert issubclass(RequestTimeout, TimeoutError)
    assert issubclass(RequestTimeout, asyncio.TimeoutError)
    with pytest.raises(TimeoutError) as info:
        raise RequestTimeout("no reply before its deadline", node="n1")
    err = info.value
    assert isinstance(err, CatgaError)
    assert err.code == "TIMEOUT"
    assert err.retryable
    # TimeoutError's own str() (an OSError's) does not replace ours.
    assert str(err) == "[TIMEOUT] no reply before its deadline (node n1)"
    assert err.args == ("no reply before its deadline",)


def test_request_timeout_from_the_wire_is_a_timeout_error() -> None:
    err = error_from_code("TIMEOUT", "late", node="n2")
    assert isinstance(err, RequestTimeout)
    assert isinstance(err, TimeoutError)
    assert err.node == "n2"


@pytest.mark.parametrize("cls", [NodeNotStarted, NodeClosed])
def test_node_state_errors(cls: type[NodeStateError]) -> None:
    err = cls(node="users-1")
    assert isinstance(err, NodeStateError)
    assert isinstance(err, CatgaError)
    assert isinstance(err, RuntimeError)  # the builtin for "not in a state to do that"
    assert not isinstance(err, TimeoutError)
    assert err.code == "NOT_RUNNING"
    assert not err.retryable
    assert err.node == "users-1"
    # With no message given, it still says what to do.
    assert err.message == cls.default_message != ""
    assert err.args == (err.message,)
    assert str(err) == f"[NOT_RUNNING] {err.message} (node users-1)"


def test_node_not_started_says_how_to_start() -> None:
    message = NodeNotStarted().message
    assert "`async with node:`" in message
    assert "`await node.start()`" in message


def test_node_closed_says_a_node_starts_once() -> None:
    assert "new Node" in NodeClosed().message


def test_a_given_message_replaces_the_default() -> None:
    assert NodeNotStarted("node a is new").message == "node a is new"
    assert CatgaError().message == ""


def test_node_state_errors_are_exported() -> None:
    for cls in (NodeStateError, NodeNotStarted, NodeClosed):
        assert getattr(catga_zmq, cls.__name__) is cls
        assert cls.__name__ in catga_zmq.__all__


@pytest.mark.parametrize(
    ("cls", "code", "retryable"), STABLE, ids=lambda v: getattr(v, "__name__", None)
)
def test_from_the_wire(cls: type[CatgaError], code: str, retryable: bool) -> None:
    err = error_from_code(code, "m", node="n", retryable=not retryable)
    assert err.code == code
    assert err.node == "n"
    assert err.retryable is (not retryable)
    # A code shared by a family comes back as the family's root: the receiver knows
    # what failed, not which of the sender's classes raised it.
    expected = NodeStateError if issubclass(cls, NodeStateError) else cls
    assert type(err) is expected


def test_unknown_code_from_the_wire() -> None:
    err = error_from_code("FROM_THE_FUTURE", "m")
    assert type(err) is CatgaError
    assert err.message == "FROM_THE_FUTURE: m"


@pytest.mark.parametrize("cls", [cls for cls, _, _ in STABLE], ids=lambda c: c.__name__)
def test_pickles(cls: type[CatgaError]) -> None:
    # Errors cross process boundaries in users' programs (executors, multiprocessing);
    # RequestTimeout's OSError base pickles differently from Exception.
    err = cls("m", node="n", retryable=True)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.message, back.node, back.retryable, str(back)) == ("m", "n", True, str(err))


def test_pickles_with_extra_fields() -> None:
    back = pickle.loads(pickle.dumps(TransportFailed("m", delivered=True)))
    assert back.delivered
    back = pickle.loads(pickle.dumps(HandlerError("boom", error_type="KeyError")))
    assert back.error_type == "KeyError"


@pytest.mark.parametrize("cls", [cls for cls, _, _ in STABLE], ids=lambda c: c.__name__)
def test_each_error_has_its_own_docstring(cls: type[CatgaError]) -> None:
    doc = cls.__dict__.get("__doc__")
    assert doc, f"{cls.__name__} has no docstring of its own"
    if cls is not CatgaError:
        assert len(inspect.cleandoc(doc).splitlines()) >= 3, (
            f"{cls.__name__}: say when it is raised and what to do"
        )


def test_cancelled_says_what_it_is() -> None:
    doc = Cancelled.__doc__ or ""
    assert "shut down" in doc
    assert "asyncio.CancelledError" in doc  # and what it is not


def test_module_docstring_draws_the_tree() -> None:
    """Every class is in the drawn tree, under its parent, with its code and retryable."""
    # The root heads the table; each other class is a row of the tree below it.
    drawn: dict[str, tuple[int, str, bool]] = {"CatgaError": (0, "CATGA_ERROR", False)}
    for line in (errors.__doc__ or "").splitlines():
        m = re.match(r"^\s*([│├└─ ]*)(\w+)\s+([A-Z_]+)\s+(yes|no)\b", line)
        if m:
            drawn[m[2]] = (len(m[1]), m[3], m[4] == "yes")
    classes = error_classes()
    assert set(drawn) == {cls.__name__ for cls in classes}
    for cls in classes:
        depth, code, retryable = drawn[cls.__name__]
        assert (code, retryable) == (cls.code, cls.default_retryable), cls.__name__
        if cls is not CatgaError:
            parent = next(b for b in cls.__mro__[1:] if issubclass(b, CatgaError))
            assert depth > drawn[parent.__name__][0], f"{cls.__name__} not drawn under {parent}"


# A nested send that times out inside a handler: the same error both ways -----------


class Answer(msgspec.Struct):
    value: str


class NestedOuter(Request[Answer]):
    pass


class NestedSlow(Request[Answer]):
    pass


MakeNode = Callable[..., Node]


@pytest.mark.parametrize("path", ["local", "remote"])
async def test_nested_timeout_reaches_the_caller_as_a_timeout(
    make_node: MakeNode, path: str
) -> None:
    # The outer handler's own send times out long before the outer deadline; the
    # outer caller must see that RequestTimeout whether the handler ran on its own
    # node or another one (now that RequestTimeout is also a TimeoutError, a local
    # path that treats every TimeoutError not from its own deadline as the handler's
    # failure turns it into HandlerError).
    outer_node, slow_node = make_node("outer"), make_node("slow")
    release = asyncio.Event()

    @slow_node.handler
    async def slow(req: NestedSlow) -> Answer:
        async with asyncio.timeout(10):
            await release.wait()
        return Answer("late")

    @outer_node.handler
    async def outer(req: NestedOuter) -> Answer:
        return await outer_node.send(NestedSlow(), timeout=0.2)

    async with asyncio.timeout(30):
        await outer_node.start()
        await slow_node.start()
        await outer_node.wait_for_peers(1, handles=NestedSlow, timeout=10)
        await slow_node.wait_for_peers(1, handles=NestedOuter, timeout=10)
        caller = outer_node if path == "local" else slow_node
        try:
            with pytest.raises(RequestTimeout) as info:
                await caller.send(NestedOuter(), timeout=10)
        finally:
            release.set()
    assert "NestedSlow" in info.value.message

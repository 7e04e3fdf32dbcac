"""Message types, wire names and the registry (which never imports what the wire names)."""

import sys
import typing

import msgspec
import pytest

from catga_zmq import ConfigError, Event, Request, registry
from catga_zmq.messages import (
    MAX_WIRE_NAME,
    Registry,
    is_event_type,
    is_request_type,
    response_type,
    wire_name,
)


class User(msgspec.Struct):
    id: str
    name: str


class GetUser(Request[User]):
    id: str


class GetUserAgain(GetUser):
    """A subclass inherits its parent's response type."""


class GetLater(Request["Later"]):
    id: str


class GetMissing(Request["NotDefinedAnywhere"]):
    pass


class GetLaters(Request[list["Later"]]):
    """A forward reference inside a generic response type."""


class GetMissingList(Request[list["NotDefinedEither"]]):  # noqa: F821 - on purpose
    pass


class Later(msgspec.Struct):
    value: int


class Untyped(Request):  # type: ignore[type-arg]
    pass


class UserRenamed(Event):
    id: str
    name: str


class Outer:
    class Inner(Event):
        pass


class Named(Request[User]):
    __wire_name__ = "tests.messages.Named"


# wire names -------------------------------------------------------------------------


def test_default_wire_name_is_module_and_qualname() -> None:
    assert wire_name(GetUser) == f"{__name__}.GetUser"
    assert wire_name(UserRenamed) == f"{__name__}.UserRenamed"
    assert wire_name(Outer.Inner) == f"{__name__}.Outer.Inner"


def test_subclass_gets_its_own_default_wire_name() -> None:
    assert wire_name(GetUserAgain) == f"{__name__}.GetUserAgain"
    assert registry.get(wire_name(GetUserAgain)) is GetUserAgain
    assert registry.get(wire_name(GetUser)) is GetUser


def test_wire_name_override() -> None:
    assert wire_name(Named) == "tests.messages.Named"
    assert registry.get("tests.messages.Named") is Named
    assert registry.get(f"{__name__}.Named") is None


def test_classes_are_registered_when_defined() -> None:
    names = registry.names()
    assert names == sorted(names)
    for cls in (GetUser, UserRenamed, Outer.Inner, Named):
        assert wire_name(cls) in registry
        assert registry.get(wire_name(cls)) is cls


def test_request_and_event_kinds() -> None:
    assert is_request_type(GetUser) and not is_event_type(GetUser)
    assert is_event_type(UserRenamed) and not is_request_type(UserRenamed)
    assert not is_request_type(User)
    assert not is_request_type(GetUser(id="1"))  # type: ignore[arg-type]  # an instance


def test_local_class_wire_name_includes_locals() -> None:
    class Local(Event):
        pass

    assert (
        wire_name(Local) == f"{__name__}.test_local_class_wire_name_includes_locals.<locals>.Local"
    )


# duplicates -------------------------------------------------------------------------


def test_duplicate_wire_name_with_a_different_definition_raises() -> None:
    class First(Event):
        __wire_name__ = "tests.messages.dup"
        a: int

    with pytest.raises(ConfigError, match=r"tests\.messages\.dup.*already used") as info:

        class Second(Event):
            __wire_name__ = "tests.messages.dup"
            a: int

    assert info.value.code == "CONFIG_INVALID"
    assert registry.get("tests.messages.dup") is First


def _define_thing(second: bool) -> type:
    # Both branches define a class of the same qualname: only the fields differ.
    if second:

        class Thing(Event):
            __wire_name__ = "tests.messages.thing"
            y: int

    else:

        class Thing(Event):  # type: ignore[no-redef]
            __wire_name__ = "tests.messages.thing"
            x: int

    return Thing


def test_same_name_same_qualname_different_fields_raises() -> None:
    first = _define_thing(second=False)
    with pytest.raises(ConfigError, match="already used"):
        _define_thing(second=True)
    assert registry.get("tests.messages.thing") is first


def test_redefinition_of_the_same_class_replaces_it() -> None:
    # A module imported twice defines its classes again; the newer one wins.
    def define() -> type:
        class Again(Event):
            __wire_name__ = "tests.messages.again"
            x: int

        return Again

    first, second = define(), define()
    assert first is not second
    assert registry.get("tests.messages.again") is second


# invalid names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["!hb", "!", "a\x00b", "x" * (MAX_WIRE_NAME + 1), "é" * (MAX_WIRE_NAME // 2 + 1)],
    ids=["bang-hb", "bang", "nul", "too-long-ascii", "too-long-utf8"],
)
def test_invalid_wire_name_raises_at_definition(name: str) -> None:
    with pytest.raises(ConfigError, match="not usable"):

        class Bad(Event):
            __wire_name__ = name

    assert registry.get(name) is None


def test_longest_wire_name_is_accepted() -> None:
    name = "é" * (MAX_WIRE_NAME // 2)  # exactly MAX_WIRE_NAME bytes of UTF-8
    assert len(name.encode()) == MAX_WIRE_NAME

    class Longest(Event):
        __wire_name__ = name

    assert registry.get(name) is Longest


def test_empty_wire_name_means_default() -> None:
    class Blank(Event):
        __wire_name__ = ""

    assert wire_name(Blank) == f"{__name__}.test_empty_wire_name_means_default.<locals>.Blank"


def test_registry_refuses_an_empty_name() -> None:
    # The class statement turns "" into the default; the registry itself still refuses it.
    fake = type("Fake", (), {"__wire_name__": ""})
    with pytest.raises(ConfigError, match="not usable"):
        Registry().add(fake)  # type: ignore[arg-type]


# response types ---------------------------------------------------------------------


def test_response_type_of_request() -> None:
    assert response_type(GetUser) is User


def test_response_type_is_inherited() -> None:
    assert response_type(GetUserAgain) is User


def test_response_type_forward_reference() -> None:
    # "Later" is defined after GetLater in this module: resolved on first use.
    assert response_type(GetLater) is Later


def test_response_type_undefined_forward_reference_raises() -> None:
    with pytest.raises(ConfigError, match="NotDefinedAnywhere"):
        response_type(GetMissing)


def test_response_type_nested_forward_reference() -> None:
    assert response_type(GetLaters) == list[Later]


def test_response_type_undefined_nested_forward_reference_raises() -> None:
    with pytest.raises(ConfigError, match="NotDefinedEither"):
        response_type(GetMissingList)


def test_response_type_without_parameter_is_any() -> None:
    assert response_type(Untyped) is typing.Any


def test_response_type_of_builtin_requests() -> None:
    from catga_zmq import Info, NodeInfo, NodeStats, Ping, Pong, Stats

    assert response_type(Ping) is Pong
    assert response_type(Info) is NodeInfo
    assert response_type(Stats) is NodeStats


# the registry never imports -----------------------------------------------------------


def test_registry_never_imports() -> None:
    assert registry.get("os.system") is None
    assert "os.system" not in registry
    assert registry.get("builtins.eval") is None


def test_registry_lookup_does_not_import_a_module() -> None:
    assert "antigravity" not in sys.modules
    assert registry.get("antigravity.fly") is None
    assert registry.get("antigravity") is None
    assert "antigravity" not in sys.modules


def test_registry_lookup_of_a_real_class_name_that_is_not_a_message() -> None:
    # A real, importable class path that is not registered stays unknown.
    assert registry.get("msgspec.Struct") is None
    assert registry.get(f"{__name__}.User") is None  # a Struct, not a Message

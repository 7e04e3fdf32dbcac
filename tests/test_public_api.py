"""The public surface: what ``from catga_zmq import ...`` gives, and that help() reads well."""

from __future__ import annotations

import importlib
import inspect
import pydoc
import re
from types import ModuleType
from typing import Any

import pytest

import catga_zmq

#: Modules whose ``__all__`` is public API (optional backends live in their own).
PUBLIC_MODULES = [
    "catga_zmq",
    "catga_zmq.discovery",
    "catga_zmq.discovery.mdns",
    "catga_zmq.discovery.redis",
    "catga_zmq.routing",
]

#: Classes whose methods are documented by the parts that own them; their own
#: docstring is still checked (see test_every_public_name_has_a_docstring).
METHODS_CHECKED_ELSEWHERE = {"Node", "NodeOptions"}


def isort_key(name: str) -> tuple[int, list[int | str]]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then the rest; natural within each."""
    group = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return group, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def public_names() -> list[tuple[str, str, Any]]:
    found = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            found.append((module_name, name, getattr(module, name)))
    return found


def documented(obj: Any) -> bool:
    # A class's own __doc__, not one inherited (help() would show msgspec's or
    # Exception's text as if it were ours).
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return bool(doc and doc.strip())


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_unique(module_name: str) -> None:
    names = importlib.import_module(module_name).__all__
    assert names == sorted(names, key=isort_key)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_imports(module_name: str) -> None:
    module = importlib.import_module(module_name)
    namespace: dict[str, Any] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    for name in module.__all__:
        assert namespace[name] is getattr(module, name)


def test_root_exports_what_the_submodules_define() -> None:
    """A name the root re-exports is the very object of its home module."""
    for name in catga_zmq.__all__:
        obj = getattr(catga_zmq, name)
        home: ModuleType | None = inspect.getmodule(obj)
        if home is not None and home.__name__.startswith("catga_zmq.") and hasattr(obj, "__name__"):
            assert getattr(home, obj.__name__) is obj, name


def documented_names() -> list[Any]:
    params: list[Any] = []
    for module_name, name, obj in public_names():
        if isinstance(obj, str | int | float | bool):
            continue  # a constant: documented by a comment where it is defined
        params.append(pytest.param(module_name, name, obj, id=f"{module_name}.{name}"))
    return params


@pytest.mark.parametrize(("module_name", "name", "obj"), documented_names())
def test_every_public_name_has_a_docstring(module_name: str, name: str, obj: Any) -> None:
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    assert documented(target), f"{module_name}.{name} has no docstring of its own"


def public_methods() -> list[tuple[str, str]]:
    """(Class, attribute) for each public method and property a public class defines."""
    found = set()
    for _, name, obj in public_names():
        if not inspect.isclass(obj) or name in METHODS_CHECKED_ELSEWHERE:
            continue
        if not obj.__module__.startswith("catga_zmq"):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if inspect.isfunction(value) or isinstance(value, property):
                found.add((obj.__qualname__, attr))
    return sorted(found)


@pytest.mark.parametrize(("cls", "attr"), public_methods(), ids=lambda v: v)
def test_every_public_method_has_a_docstring(cls: str, attr: str) -> None:
    owner = next(o for _, n, o in public_names() if inspect.isclass(o) and o.__qualname__ == cls)
    # Through inspect.getdoc: an override may rely on the interface's docstring.
    assert inspect.getdoc(getattr(owner, attr)), f"{cls}.{attr} has no docstring"


def test_public_methods_were_found() -> None:
    # The walk above must not silently find nothing.
    methods = set(public_methods())
    assert {("Discovery", "watch"), ("Router", "select"), ("MdnsDiscovery", "register")} <= methods


@pytest.mark.parametrize(
    "name",
    [n for n in catga_zmq.__all__ if inspect.isclass(getattr(catga_zmq, n)) and n != "Node"],
)
def test_help_shows_no_object_addresses(name: str) -> None:
    text = pydoc.render_doc(getattr(catga_zmq, name), renderer=pydoc.plaintext)
    assert "object at 0x" not in text, name


def test_help_node_shows_no_object_addresses() -> None:
    # The default of Node(discovery=...) is a sentinel; an object() shows in the
    # signature as <object object at 0x7f...>, which tells the reader nothing.
    text = pydoc.render_doc(catga_zmq.Node, renderer=pydoc.plaintext)
    assert "object at 0x" not in text

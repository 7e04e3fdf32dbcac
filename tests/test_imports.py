"""No import cycles among the package's modules (as python-zeroconf's test_circular_imports).

Every import counts, at module level or inside a function (a lazy import only hides a
cycle), except those under ``if TYPE_CHECKING:``. Each module is also imported alone in
a fresh interpreter, so a module that only works when another one was imported first
fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "catga_zmq"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str) -> set[str]:
    """The package's modules that ``name`` imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    # A package's own __init__ may re-export its modules; a module importing its
    # package's __init__ back is the cycle (catga_zmq.x doing `from . import name`).
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    # Packages re-exporting their modules are edges downward; only a cycle through
    # a non-package module back to a package that contains it would be listed above.
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_alone(name: str) -> None:
    if name.endswith("pytest_plugin"):
        pytest.importorskip("pytest_asyncio")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


#: A child that imports the package and every module, runs a node without metrics and
#: says which optional libraries got imported.
WITHOUT_EXTRAS = textwrap.dedent(
    """
    import asyncio, importlib, sys
    import catga_zmq
    for name in sys.argv[1:]:
        importlib.import_module(name)
    async def main():
        async with catga_zmq.Node("a", discovery=None) as node:
            node.stats()
    asyncio.run(main())
    print(",".join(m for m in ("prometheus_client", "redis", "dns", "zstandard") if m in sys.modules))
    """
)


def test_optional_libraries_are_imported_only_when_used() -> None:
    # catga_zmq.metrics itself imports prometheus_client only when a node turns metrics on.
    modules = [m for m in MODULES if not m.endswith("pytest_plugin")]
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", WITHOUT_EXTRAS, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported without being used: {done.stdout.strip()}"


def test_dnspython_is_imported_only_when_dns_discovery_is_chosen() -> None:
    # A fresh interpreter: the suite's own imports (test_dns_discovery) must not count.
    code = """if True:
        import asyncio, sys
        from catga_zmq import Node, NodeOptions
        from catga_zmq._wiring import make_discovery

        async def run() -> None:
            async with Node("a", discovery=None):
                pass

        asyncio.run(run())
        assert "dns" not in sys.modules, "a node without DNS discovery imported dnspython"
        make_discovery(NodeOptions(discovery="dns", dns_name="x.test", dns_record="srv"))
        assert "dns.asyncresolver" in sys.modules
    """
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_redis_is_imported_only_by_a_node_that_uses_it() -> None:
    # A node without Redis discovery (and the package itself) must not need redis-py.
    code = (
        "import asyncio, sys\n"
        "import catga_zmq, catga_zmq.node, catga_zmq.discovery\n"
        "from catga_zmq import Node\n"
        "async def main():\n"
        "    async with Node('a', discovery='memory'):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "assert 'redis' not in sys.modules, 'redis imported'\n"
        "from catga_zmq.discovery.redis import RedisDiscovery\n"
        "assert 'redis' not in sys.modules, 'redis imported by the module alone'\n"
        "RedisDiscovery('redis://127.0.0.1:6379/0', 'c')\n"
        "assert 'redis' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


#: A node that serves, sends to itself and publishes, then lists the OpenTelemetry
#: modules imported. With ``missing``, OpenTelemetry cannot be imported at all, as when
#: the ``otel`` extra is not installed.
_TRACING_UNUSED = """
import asyncio, sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

if sys.argv[1] == "missing":
    sys.meta_path.insert(0, Missing())

from catga_zmq import Event, Node, Request
from catga_zmq import tracing

class Ask(Request[str]):
    __wire_name__ = "imports.Ask"

class Told(Event):
    __wire_name__ = "imports.Told"

async def main():
    node = Node("solo", discovery=None)
    got = []

    @node.handler
    async def ask(req: Ask) -> str:
        return "here"

    @node.subscribe
    async def told(evt: Told) -> None:
        got.append(evt)

    async with node:
        assert await node.send(Ask(), timeout=5) == "here"
        await node.publish(Told())
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        # What the node's look-again loop asks, once a second.
        assert tracing.spans_for(node.node_id, None) is None
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))

asyncio.run(main())
"""


@pytest.mark.parametrize("otel", ["installed", "missing"])
def test_a_node_that_does_not_trace_never_imports_opentelemetry(otel: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _TRACING_UNUSED, otel],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

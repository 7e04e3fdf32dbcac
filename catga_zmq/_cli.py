"""The command lines: ``python -m catga_zmq.node`` and ``python -m catga_zmq``.

Every bad value ends the program with one line on stderr saying what is wrong, and exit
code 2 (as argparse does for a bad flag).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from typing import Any

from ._version import __version__
from .config import NodeOptions, options_from_env, options_from_toml
from .errors import CatgaError

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad value given to a command; printed as one line, exit code 2."""


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"catga_zmq {__version__}")


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m catga_zmq.node",
        description="Run one catga_zmq node until SIGTERM or Ctrl-C (both drain, then exit 0).",
        epilog="Every flag also reads from CATGA_<NAME> (e.g. CATGA_CLUSTER) and from --config.",
    )
    _version(p)
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the Node object of your service, like uvicorn's module:app",
    )
    p.add_argument(
        "--config", metavar="FILE", help="TOML file with the settings ([node] table or top level)"
    )
    p.add_argument("--id", dest="node_id", help="node id (default: host-pid-random)")
    p.add_argument("--cluster", help="cluster name; nodes of other clusters are ignored")
    p.add_argument("--bind", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="ROUTER port (default: any free port)")
    p.add_argument(
        "--pub-port", dest="pub_port", type=int, help="PUB port (default: any free port)"
    )
    p.add_argument("--advertise", help="address peers connect to (default: the bind address)")
    p.add_argument("--discovery", help="mdns, static, memory or none (default mdns)")
    p.add_argument("--seeds", help="static seeds, comma separated: tcp://HOST:PORT,...")
    p.add_argument(
        "--routing",
        help="round_robin, weighted, consistent_hash, least_connections or local_first",
    )
    p.add_argument("--weight", type=int, help="share of traffic under weighted routing")
    p.add_argument(
        "--heartbeat-interval",
        dest="heartbeat_interval",
        type=float,
        help="seconds between heartbeats",
    )
    p.add_argument(
        "--max-concurrency",
        dest="max_concurrency",
        type=int,
        help="handlers running at once; past it: OVERLOADED",
    )
    p.add_argument(
        "--drain-timeout",
        dest="drain_timeout",
        type=float,
        help="seconds to finish in-flight work on shutdown",
    )
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING or ERROR")
    return p


def load_app(spec: str) -> Any:
    """``module:attr`` -> the object, or ``UsageError`` saying what is wrong."""
    from ._node import Node

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--app {spec!r}: write it as MODULE:ATTR, e.g. myservice:node")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--app {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(
                f"--app {spec!r}: module {module_name} has no attribute {attr!r}"
            ) from None
    if not isinstance(obj, Node):
        raise UsageError(f"--app {spec!r} is a {type(obj).__name__}, not a catga_zmq.Node")
    return obj


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("app", "config")}
    if "seeds" in flags:
        flags["seeds"] = [s.strip() for s in flags["seeds"].split(",") if s.strip()]
        flags.setdefault("discovery", "static")
    return flags


def build_node(argv: list[str] | None) -> Any:
    from ._node import Node

    args = _node_parser().parse_args(argv)
    node = load_app(args.app) if args.app else None
    base: NodeOptions = node.options if node is not None else NodeOptions()
    changes: dict[str, Any] = {}
    if args.config:
        changes.update(options_from_toml(args.config))
    changes.update(options_from_env())
    changes.update(_settings_from_args(args))
    options = base.merged(changes).validated() if changes else base.validated()
    if node is None:
        return Node(options=options)
    node.configure(**{k: getattr(options, k) for k in NodeOptions.__struct_fields__})
    return node


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # Windows, or a platform without a wheel: asyncio's loop works too
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_node(argv: list[str] | None = None) -> int:
    prog = "catga-node"
    try:
        node = build_node(argv)
    except (UsageError, CatgaError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(node.options.log_level)
    _install_loop()
    try:
        asyncio.run(_serve(node))
    except CatgaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


async def _serve(node: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with node:
        # One machine-readable line on stdout: scripts and tests wait for it.
        print(
            f"ready node={node.node_id} endpoint={node.transport.endpoint} "
            f"pub={node.transport.pub_endpoint} cluster={node.options.cluster}",
            flush=True,
        )
        await stop.wait()
        logging.getLogger("catga_zmq.node").info("draining %s", node.node_id)


# python -m catga_zmq ---------------------------------------------------------------------


def _ops_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m catga_zmq", description="catga_zmq operator commands"
    )
    _version(p)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("nodes", "list the cluster's members as a table"),
        ("ping", "ping every member (or --node) and print round-trip times"),
    ):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--cluster", help="cluster name (default: default, or CATGA_CLUSTER)")
        c.add_argument("--discovery", help="mdns, static or none (default mdns)")
        c.add_argument("--seeds", help="static seeds: tcp://HOST:PORT,...")
        c.add_argument("--bind", help="address to bind the observer to (default 127.0.0.1)")
        c.add_argument(
            "--wait", type=float, default=3.0, help="seconds to listen before answering (default 3)"
        )
        c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "ping":
            c.add_argument("--node", help="ping only this node id")
    return p


def ops_main(argv: list[str] | None = None) -> int:
    args = _ops_parser().parse_args(argv)
    prog = "catga_zmq"
    try:
        changes: dict[str, Any] = options_from_env()
        for key in ("cluster", "discovery", "bind"):
            if getattr(args, key):
                changes[key] = getattr(args, key)
        if args.seeds:
            changes["seeds"] = [s.strip() for s in args.seeds.split(",") if s.strip()]
            changes.setdefault("discovery", "static")
        changes["node_id"] = f"observer-{os.getpid()}"
        changes["metadata"] = {"role": "observer"}
        changes.pop("port", None)
        changes.pop("pub_port", None)
        options = NodeOptions().merged(changes).validated()
        if args.wait <= 0:
            raise UsageError(f"--wait must be > 0 seconds, got {args.wait}")
    except (UsageError, CatgaError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _install_loop()
    try:
        return asyncio.run(_ops(args, options))
    except CatgaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


async def _ops(args: argparse.Namespace, options: NodeOptions) -> int:
    import msgspec

    from ._node import Node
    from .system import Ping

    async with Node(options=options) as observer:
        await asyncio.sleep(args.wait)
        members = [m for m in observer.members() if not m.local]
        if args.command == "nodes":
            rows = [
                {
                    "node": m.node_id,
                    "status": m.status.value,
                    "endpoint": m.endpoint,
                    "load": m.load,
                    "in_flight": m.in_flight,
                    "age_s": round(time.time() - m.last_heartbeat, 2) if m.last_heartbeat else None,
                    "handles": sorted(m.handles),
                }
                for m in sorted(members, key=lambda m: m.node_id)
                if m.metadata.get("role") != "observer"
            ]
        else:
            rows = []
            for m in sorted(members, key=lambda m: m.node_id):
                if m.metadata.get("role") == "observer" or (args.node and m.node_id != args.node):
                    continue
                start = time.perf_counter()
                try:
                    await observer.send(Ping(), node=m.node_id, timeout=2.0)
                    rtt: float | str = round((time.perf_counter() - start) * 1e3, 3)
                except CatgaError as exc:
                    rtt = exc.code
                rows.append({"node": m.node_id, "endpoint": m.endpoint, "rtt_ms": rtt})
        if args.json:
            print(msgspec.json.encode(rows).decode())
        else:
            print(
                _table(rows)
                if rows
                else f"no nodes seen in cluster {options.cluster!r} within {args.wait} s"
            )
        return 0 if rows else 1


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return ",".join(v) if isinstance(v, list) else ("-" if v is None else str(v))

    headers = list(rows[0])
    cells = [[cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)

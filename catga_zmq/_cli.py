"""The command lines: ``python -m catga_zmq.node`` and ``python -m catga_zmq``.

Every bad value ends the program with one line on stderr saying what is wrong, and exit
code 2 (as argparse does for a bad flag). The node command's flags are made from
``NodeOptions``' fields by ``config.settings()``: one flag per setting, none by hand.
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
from collections.abc import Iterable
from typing import Any

from ._version import __version__
from .config import (
    NodeOptions,
    Setting,
    options_from_env,
    options_from_text,
    options_from_toml,
    settings,
)
from .errors import CatgaError

EXIT_USAGE = 2
#: drain and set: the node refused the caller (PERMISSION_DENIED: no admin key).
EXIT_REFUSED = 3
#: A second Ctrl-C cut the drain short: 128 + SIGINT, what a shell reports for it.
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: The settings an operator command takes: those that decide which cluster it sees.
#: With CURVE on, the observer's node id names its certificate in the nodes' trust
#: directories (``--node-id ops --curve-secret-key ops.key_secret``).
OBSERVER_SETTINGS = (
    "cluster",
    "discovery",
    "seeds",
    "bind",
    "advertise",
    "node_id",
    "curve_secret_key",
    "curve_trust_dir",
    "curve_any_key",
)

log = logging.getLogger("catga_zmq.node")


class UsageError(Exception):
    """A bad value given to a command; printed as one line, exit code 2."""


def _version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"catga_zmq {__version__}")


def _metavar(s: Setting) -> str:
    if s.choices:
        return "{" + ",".join(s.choices) + "}"
    if s.type_name == "bool":
        return "{true,false}"
    shown = {"list": "A,B", "table": "KEY=VALUE", "value": s.type_name.upper()}[s.shape]
    return "TEXT" if shown == "STR" else shown


def add_setting_flags(p: argparse.ArgumentParser, chosen: Iterable[Setting]) -> None:
    """One flag per setting; lists and tables may be repeated (values are checked later)."""
    group = p.add_argument_group(
        "settings",
        "each is also read from the CATGA_* variable its help names, and from --config "
        "(a key of the same name as the setting: pub_port for --pub-port)",
    )
    defaults = NodeOptions()
    for s in chosen:
        default = getattr(defaults, s.name)
        shown = f"default {default!r}; " if default not in ("", [], {}) else ""
        # A yes-or-no setting alone means yes: --curve-any-key (or --curve-any-key false).
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if s.type_name == "bool" else {}
        group.add_argument(
            *s.flags,
            dest=s.name,
            action="store" if s.shape == "value" else "append",
            metavar=_metavar(s),
            help=f"{s.help} ({shown}{s.env})".replace("%", "%%"),
            **switch,
        )


def _flag_label(s: Setting) -> str:
    return f"{s.flags[0]} "


def _flag_settings(args: argparse.Namespace, chosen: Iterable[Setting]) -> dict[str, Any]:
    texts: dict[str, list[str]] = {}
    for s in chosen:
        given = getattr(args, s.name, None)
        if given is not None:
            texts[s.name] = given if isinstance(given, list) else [given]
    found = options_from_text(texts, label=_flag_label)
    if "seeds" in found:  # seeds on the command line mean: use them
        found.setdefault("discovery", "static")
    return found


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m catga_zmq.node",
        description="Run one catga_zmq node until SIGTERM or Ctrl-C (both drain, then exit 0; "
        f"a second Ctrl-C stops at once, exit {EXIT_INTERRUPTED}).",
        epilog="Precedence, lowest first: the app's Node, --config, CATGA_* variables, flags. "
        "A list is comma separated or its flag repeated; a table is KEY=VALUE pairs "
        "(--metadata zone=a --metadata rack=3, CATGA_METADATA=zone=a,rack=3). "
        "--seeds implies --discovery static.",
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
    add_setting_flags(p, settings())
    return p


def settings_from_argv(argv: list[str]) -> dict[str, Any]:
    """The settings the node command's flags give (typed), without building a node."""
    return _flag_settings(_node_parser().parse_args(argv), settings())


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


def build_node(argv: list[str] | None) -> Any:
    """The node the command line describes: the app's, with the other settings over it."""
    from ._node import Node

    args = _node_parser().parse_args(argv)
    node = load_app(args.app) if args.app else None
    base: NodeOptions = node.options if node is not None else NodeOptions()
    changes: dict[str, Any] = {}
    if args.config:
        changes.update(options_from_toml(args.config))
    changes.update(options_from_env())
    changes.update(_flag_settings(args, settings()))
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
    """``python -m catga_zmq.node``: 0 after a drain, 2 for a bad setting, 130 if cut short."""
    prog = "catga-node"
    try:
        node = build_node(argv)
    except (UsageError, CatgaError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(node.options.log_level)
    _install_loop()
    try:
        return asyncio.run(_serve(node))
    except CatgaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _serve(node: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    forced = False

    def on_signal(sig: signal.Signals) -> None:
        # As uvicorn: the first signal drains; a second Ctrl-C gives up on the drain.
        # A second SIGTERM does not: a supervisor that repeats it still wants the drain.
        nonlocal forced
        if not stop.is_set():
            stop.set()
        elif sig is signal.SIGINT and not forced:
            forced = True
            log.warning("second Ctrl-C: stopping %s without finishing the drain", node.node_id)
            serving.cancel()  # aclose() is safe to cancel: the node still closes

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with node:
            # One machine-readable line on stdout: scripts and tests wait for it.
            print(
                f"ready node={node.node_id} endpoint={node.endpoint} "
                f"pub={node.pub_endpoint} cluster={node.options.cluster}",
                flush=True,
            )
            # Until a signal, or until the node closes itself (a duplicate node id).
            waits = [loop.create_task(stop.wait()), loop.create_task(node.wait_closed())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if node.failure is None and stop.is_set():
                log.info("draining %s (Ctrl-C again to stop at once)", node.node_id)
    except asyncio.CancelledError:
        if not forced:
            raise
        return EXIT_INTERRUPTED
    if node.failure is not None:
        print(f"catga-node: error: {node.failure.message}", file=sys.stderr)
        return EXIT_USAGE
    return 0


# python -m catga_zmq ---------------------------------------------------------------------


def _ops_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m catga_zmq",
        description="catga_zmq operator commands: nodes and ping join the cluster as an "
        "observer (not a member that serves), listen for --wait seconds, then answer; "
        "drain and set send one node an admin request (drain it; change its settings while "
        "it runs); keygen writes a CURVE key pair.",
        epilog="exit codes: 0 done (nodes, ping: nodes found); 1 no node found, or it did "
        "not answer; 2 a bad value; "
        f"{EXIT_REFUSED} refused (drain, set: the caller is no admin).",
    )
    _version(p)
    sub = p.add_subparsers(dest="command", required=True)
    by_name = {s.name: s for s in settings()}
    for name, help_ in (
        ("nodes", "list the cluster's members as a table"),
        ("ping", "ping every member (or --node) and print round-trip times"),
    ):
        c = sub.add_parser(name, help=help_)
        add_setting_flags(c, (by_name[n] for n in OBSERVER_SETTINGS))
        c.add_argument(
            "--wait", type=float, default=3.0, help="seconds to listen before answering (default 3)"
        )
        c.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "ping":
            c.add_argument("--node", help="ping only this node id")
    _add_admin_parsers(sub, by_name)
    k = sub.add_parser(
        "keygen",
        help="write a CURVE key pair: NAME.key (public) and NAME.key_secret (secret, mode 0600)",
        description="Write a CURVE key pair in the certificate format of pyzmq's zmq.auth: "
        "DIR/NAME.key, the public certificate to copy into the curve_trust_dir of the nodes "
        "that may talk to this one, and DIR/NAME.key_secret, this node's curve_secret_key "
        "(mode 0600). Existing files are never overwritten. Prints the public key (Z85) on "
        "stdout and the files written on stderr.",
    )
    k.add_argument("name", metavar="NAME", help="the key's name: the node id it is for")
    k.add_argument(
        "--dir", default=".", metavar="DIR", help="directory to write to (default: this one)"
    )
    k.add_argument(
        "--json", action="store_true", help="print the key and the files as one JSON object"
    )
    return p


#: What drain and set exit with, for their --help.
_ADMIN_EXITS = (
    "exit codes: 0 done; 1 the node was not seen within --wait, or did not answer; "
    f"2 a bad value or unknown setting (nothing changed); {EXIT_REFUSED} refused: the "
    "caller is no admin (with CURVE: its key is not in the trust directory's admin/; "
    "without: the node's plaintext_admin setting)"
)


def _add_admin_parsers(sub: Any, by_name: dict[str, Setting]) -> None:
    """drain and set: admin requests to one node (``Drain``, ``Configure``)."""
    from ._runtime import settable

    d = sub.add_parser(
        "drain",
        help="make a node drain and close, as SIGTERM would",
        description="Make NODE drain: it announces DRAINING, takes no new requests, finishes "
        "those it runs (within its drain_timeout), says BYE and closes (its node command exits "
        "0). The answer comes before it goes. An admin request.",
        epilog=_ADMIN_EXITS,
    )
    s = sub.add_parser(
        "set",
        help="change settings of a running node: set NODE weight=3 metadata.zone=b",
        description="Change settings of NODE while it runs; the change shows in its next "
        f"heartbeat (nodes lists it). Settings: {settable()}. metadata.KEY=VALUE sets one "
        "label, metadata=zone=a,rack=3 the whole table (metadata= clears it). Each value is "
        "checked as its flag's: one bad value changes nothing. An admin request.",
        epilog=_ADMIN_EXITS,
    )
    for c in (d, s):
        c.add_argument("node", metavar="NODE", help="the node id")
        add_setting_flags(c, (by_name[n] for n in OBSERVER_SETTINGS))
        c.add_argument(
            "--wait",
            type=float,
            default=5.0,
            help="seconds to wait for NODE to be seen (default 5)",
        )
        c.add_argument("--json", action="store_true", help="print the answer as JSON")
    s.add_argument("changes", metavar="KEY=VALUE", nargs="+", help="a setting and its value")


def _changes(texts: list[str]) -> dict[str, str]:
    """``set``'s KEY=VALUE words, checked as the node will check them."""
    from ._runtime import parse_changes

    changes: dict[str, str] = {}
    for text in texts:
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{text!r} is not KEY=VALUE; write weight=3 or metadata.zone=b")
        changes[key.strip()] = value.strip()
    parse_changes(changes)
    return changes


def _keygen(args: argparse.Namespace) -> int:
    from .security import generate, load_secret

    public_file, secret_file = generate(args.name, args.dir)
    public = load_secret(secret_file).public.decode()
    if args.json:
        import msgspec

        found = {
            "name": args.name,
            "public_key": public,
            "public_file": str(public_file),
            "secret_file": str(secret_file),
        }
        print(msgspec.json.encode(found).decode())
    else:
        print(public)
    print(
        f"wrote {public_file} (public: copy it into the curve_trust_dir of each peer) and "
        f"{secret_file} (secret, mode 0600: this node's curve_secret_key)",
        file=sys.stderr,
    )
    return 0


def ops_main(argv: list[str] | None = None) -> int:
    """``python -m catga_zmq``: 0 if it found nodes (keygen: wrote the keys; drain, set:
    done), 1 if none (or it did not answer), 2 for a bad value, 3 refused (drain, set)."""
    args = _ops_parser().parse_args(argv)
    prog = "catga_zmq"
    if args.command == "keygen":  # no cluster, no settings: files only
        try:
            return _keygen(args)
        except CatgaError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        changes: dict[str, Any] = options_from_env()
        changes.update(_flag_settings(args, settings()))
        # Its own id unless one is given (with CURVE, the name of its certificate).
        if not changes.get("node_id"):
            changes["node_id"] = f"observer-{os.getpid()}"
        changes["metadata"] = {"role": "observer"}
        changes.pop("port", None)  # an observer takes any free ports, whatever the env says
        changes.pop("pub_port", None)
        options = NodeOptions().merged(changes).validated()
        if args.wait <= 0:
            raise UsageError(f"--wait must be > 0 seconds, got {args.wait}")
        if args.command == "set":
            args.changes = _changes(args.changes)
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
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _ops(args: argparse.Namespace, options: NodeOptions) -> int:
    import msgspec

    from ._node import Node
    from .system import Ping

    async with Node(options=options) as observer:
        if args.command in ("drain", "set"):
            return await _admin(args, observer)
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
                    "weight": m.weight,
                    "metadata": m.metadata,
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


async def _admin(args: argparse.Namespace, observer: Any) -> int:
    """drain NODE, set NODE KEY=VALUE...: one admin request to NODE once it is seen."""
    import msgspec

    from .errors import PermissionDenied, ValidationFailed
    from .membership import NodeStatus
    from .system import Configure, Drain

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    seen = None
    while loop.time() < deadline:  # bounded by --wait
        seen = next((m for m in observer.members() if m.node_id == args.node), None)
        if seen is not None and seen.status in (NodeStatus.ALIVE, NodeStatus.DRAINING):
            break
        await asyncio.sleep(0.05)
    if seen is None or seen.status not in (NodeStatus.ALIVE, NodeStatus.DRAINING):
        what = "not seen" if seen is None else f"{seen.status.value}"
        print(
            f"catga_zmq: error: node {args.node!r} {what} in cluster "
            f"{observer.options.cluster!r} within {args.wait} s",
            file=sys.stderr,
        )
        return 1
    if seen.status is NodeStatus.DRAINING:
        if args.command == "drain":
            print(f"{args.node} is draining already")
            return 0
        print(f"catga_zmq: error: node {args.node!r} is draining", file=sys.stderr)
        return 1
    message = Drain() if args.command == "drain" else Configure(changes=args.changes)
    try:
        answer = await observer.send(message, node=args.node, timeout=10.0)
    except PermissionDenied as exc:
        print(f"catga_zmq: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ValidationFailed as exc:
        print(f"catga_zmq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CatgaError as exc:
        print(f"catga_zmq: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(answer).decode())
    elif args.command == "drain":
        print(
            f"{answer.node_id} drains: {answer.running} running, given up to "
            f"{answer.drain_timeout} s"
        )
    else:
        fields = msgspec.structs.asdict(answer)
        fields.pop("node_id")
        changed = fields.pop("changed")
        shown = "  ".join(f"{k}={_cell(v)}" for k, v in fields.items())
        print(f"{answer.node_id}: changed {', '.join(changed)}\n  {shown}")
    return 0


def _cell(v: Any) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items()) or "-"
    return ",".join(v) if isinstance(v, list) else ("-" if v is None else str(v))


def _table(rows: list[dict[str, Any]]) -> str:
    cell = _cell

    headers = list(rows[0])
    cells = [[cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)

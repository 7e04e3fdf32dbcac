"""The command lines: ``python -m catga_zmq.node`` and ``python -m catga_zmq``.

Every bad value ends the program with one line on stderr saying what is wrong, and exit
code 2 (as argparse does for a bad flag). The node command's flags are made from
``NodeOptions``' fields by ``config.settings()``: one flag per setting, none by hand.
The operator commands are parsed here, one function a command, and run by ``_ops``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Iterable
from typing import Any, TypeAlias

from ._ops import EXIT_CODES, UsageError
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
#: A second Ctrl-C cut the drain short: 128 + SIGINT, what a shell reports for it.
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: The settings an operator command takes: those that decide which cluster it sees.
#: With CURVE on, the client's node id names its certificate in the nodes' trust
#: directories (``--node-id ops --curve-secret-key ops.key_secret``). ``bind`` chooses
#: the interfaces of mDNS and the IP version; a client binds nothing.
OBSERVER_SETTINGS = (
    "cluster",
    "discovery",
    "seeds",
    "dns_name",
    "dns_record",
    "dns_port",
    "dns_interval",
    "dns_resolver",
    "redis_url",
    "redis_key_prefix",
    "bind",
    "node_id",
    "curve_secret_key",
    "curve_trust_dir",
    "curve_any_key",
)

log = logging.getLogger("catga_zmq.node")


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


def _wrapped(text: str) -> str:
    # The epilog (the exit codes) keeps its lines, so argparse wraps no text: this does.
    return textwrap.fill(text, width=79)


def _ops_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m catga_zmq",
        description=_wrapped(
            "catga_zmq operator commands. Each but keygen runs as a client of the cluster: "
            "it hears the members' heartbeats and sends them requests, but is no member, "
            "so no node lists it or logs it joining or leaving."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _version(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _nodes_parser(sub)
    _ping_parser(sub)
    _watch_parser(sub)
    _info_parser(sub)
    _stats_parser(sub)
    _request_parser(sub)
    _publish_parser(sub)
    _drain_parser(sub)
    _set_parser(sub)
    _keygen_parser(sub)
    return p


#: The subcommands of ``python -m catga_zmq``, as argparse holds them.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _client_command(
    sub: Commands, name: str, help_: str, description: str
) -> argparse.ArgumentParser:
    """A command run by a client: the settings that choose the cluster, and --json."""
    c = sub.add_parser(
        name,
        help=help_,
        description=_wrapped(description),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    by_name = {s.name: s for s in settings()}
    add_setting_flags(c, (by_name[n] for n in OBSERVER_SETTINGS))
    c.add_argument("--json", action="store_true", help="print JSON (one object a line for watch)")
    return c


def _wait_flag(c: argparse.ArgumentParser, what: str) -> None:
    c.add_argument("--wait", type=float, default=3.0, metavar="S", help=f"{what} (default 3)")


def _timeout_flag(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds each request may take (default 5)",
    )


def _nodes_parser(sub: Commands) -> None:
    c = _client_command(
        sub,
        "nodes",
        "list the cluster's members as a table",
        "List the members heard within --wait seconds: status, endpoint, load, handled types.",
    )
    _wait_flag(c, "seconds to listen before answering")


def _ping_parser(sub: Commands) -> None:
    c = _client_command(
        sub,
        "ping",
        "ping every member (or --node) and print round-trip times",
        "Send the built-in Ping to each member heard within --wait seconds (or to --node "
        "as soon as it is heard) and print the round-trip times in ms.",
    )
    _wait_flag(c, "seconds to listen before pinging")
    _timeout_flag(c)
    c.add_argument("--node", help="ping only this node id")


def _watch_parser(sub: Commands) -> None:
    _client_command(
        sub,
        "watch",
        "print membership changes as they happen, until Ctrl-C",
        "Print one line for each change of membership (joined, suspect, faulted, "
        "recovered, left), members already there as joined first, until Ctrl-C or "
        "SIGTERM, which end it with exit code 0. --json: one JSON object a line.",
    )


def _info_parser(sub: Commands) -> None:
    c = _client_command(
        sub,
        "info",
        "what one node says of itself (the built-in Info)",
        "Ask NODE the built-in Info: its endpoints, versions, status, the types it "
        "handles and subscribes to, its metadata and the peers it knows.",
    )
    c.add_argument("node", metavar="NODE", help="the node id")
    _wait_flag(c, "seconds to wait for NODE to be heard")
    _timeout_flag(c)


def _stats_parser(sub: Commands) -> None:
    c = _client_command(
        sub,
        "stats",
        "counters of every member (or NODE), per node and per request type",
        "Ask each member heard within --wait seconds (or NODE, as soon as it is heard) "
        "the built-in Stats: its counters, and per request type it handles the requests "
        "handled, the errors and the processing time.",
    )
    c.add_argument("node", metavar="NODE", nargs="?", help="only this node id")
    _wait_flag(c, "seconds to listen before asking (for NODE: to wait for it)")
    _timeout_flag(c)


def _message_command(
    sub: Commands, name: str, help_: str, description: str
) -> argparse.ArgumentParser:
    c = _client_command(sub, name, help_, description)
    c.add_argument(
        "type",
        metavar="TYPE",
        help="the message type: its wire name (cluster.Where) or its class name in --app",
    )
    c.add_argument("json_text", metavar="JSON", help="its fields as a JSON object ('{}': none)")
    c.add_argument(
        "--app",
        metavar="MODULE",
        help="the module that defines the message types (MODULE:ATTR as for the node "
        "command is taken too); without it, only the built-ins (catga.Ping...)",
    )
    _timeout_flag(c)
    return c


def _request_parser(sub: Commands) -> None:
    c = _message_command(
        sub,
        "request",
        "send one request built from JSON and print its reply as JSON",
        "Build TYPE from JSON, send it as soon as a node that handles it is heard (or "
        "to --node), and print the reply as JSON on stdout; an error answer goes to "
        "stderr (with --json, both are one JSON object on stdout).",
    )
    _wait_flag(c, "seconds to wait for a node that handles TYPE")
    c.add_argument("--node", help="send it to this node id")


def _publish_parser(sub: Commands) -> None:
    c = _message_command(
        sub,
        "publish",
        "publish one event built from JSON to every member that subscribes to it",
        "Build the event TYPE from JSON and hand it to each member heard within --wait "
        "seconds that subscribes to it (the built-in Deliver); print who took it.",
    )
    _wait_flag(c, "seconds to listen for subscribers before publishing")


def _keygen_parser(sub: Commands) -> None:
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


def _drain_parser(sub: Commands) -> None:
    c = _client_command(
        sub,
        "drain",
        "make a node drain and close, as SIGTERM would (an admin request)",
        "Make NODE drain: it announces DRAINING, takes no new requests, finishes those it "
        "runs (within its drain_timeout), says BYE and closes (its node command exits 0). "
        "The answer comes before it goes. An admin request: with CURVE, only a key in the "
        "trust directory's admin/ may send it; without, the node's plaintext_admin "
        "setting decides (exit code 3 when refused).",
    )
    c.add_argument("node", metavar="NODE", help="the node id")
    _wait_flag(c, "seconds to wait for NODE to be heard")
    _timeout_flag(c)


def _set_parser(sub: Commands) -> None:
    from ._runtime import settable

    c = _client_command(
        sub,
        "set",
        "change settings of a running node: set NODE weight=3 metadata.zone=b",
        f"Change settings of NODE while it runs: {settable()}. metadata.KEY=VALUE sets "
        "one label, metadata=zone=a,rack=3 the whole table (metadata= clears it). Each "
        "value is checked as its flag's, here and on the node: one bad value changes "
        "nothing (exit code 2). The change shows in the node's next heartbeat (nodes "
        "lists it) and lasts until it restarts. An admin request, as for drain.",
    )
    c.add_argument("node", metavar="NODE", help="the node id")
    c.add_argument("changes", metavar="KEY=VALUE", nargs="+", help="a setting and its value")
    _wait_flag(c, "seconds to wait for NODE to be heard")
    _timeout_flag(c)


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
    """``python -m catga_zmq``: the exit codes are ``_ops.EXIT_CODES`` (``--help``)."""
    from . import _ops

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
        options = _ops.client_options(changes)
        _ops.prepare(args)
    except (UsageError, CatgaError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _install_loop()
    try:
        return asyncio.run(_ops.run(args, options))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

"""The operator commands of ``python -m catga_zmq``, each run by a client node.

A command starts a ``Node(role="client")``: it follows the cluster (discovery,
heartbeats) and sends requests, but is no member, so no node lists it, routes to it or
logs its coming and going. ``nodes``, ``ping``, ``stats`` (of all) and ``publish``
listen ``--wait`` seconds first, to hear every member; ``info``, ``stats NODE`` and
``request`` go on as soon as the node they need is heard; ``watch`` runs until Ctrl-C.

What a command is given (its ``TYPE`` and ``JSON``, its ``--app``) is checked by
``prepare`` before any socket is made: a bad value costs no wait.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from .config import NodeOptions
from .errors import CatgaError, ConfigError, HandlerError, NoNodes
from .membership import ClusterNode, MembershipEvent, NodeStatus
from .messages import Event, Message, Request, registry

EXIT_OK: Final = 0
#: Nothing to act on: no member heard, the node named is none, nobody handles the type.
EXIT_NONE: Final = 1
EXIT_USAGE: Final = 2
#: A request failed: an error answer, or no answer in time.
EXIT_FAILED: Final = 3
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT

EXIT_CODES: Final = f"""exit codes:
  {EXIT_OK}    done (watch: stopped by Ctrl-C or SIGTERM)
  {EXIT_NONE}    nothing to act on: no member heard within --wait, NODE is not a live
       member, no live node handles TYPE, no member subscribes to the event
  {EXIT_USAGE}    a bad value (a flag, a setting, TYPE, JSON, --app; set: a value the
       node refused, and nothing changed), or this client could not start (a key
       file, say); one line on stderr
  {EXIT_FAILED}    a request failed: an error answer, or none within --timeout (ping,
       stats, publish: for one node or more); drain, set: refused, the caller is no
       admin (CURVE: its key is not in the trust directory's admin/; plaintext: the
       node's plaintext_admin setting)
  {EXIT_INTERRUPTED}  interrupted by Ctrl-C (but watch, which it ends with 0)"""

#: The statuses of a member that answers requests (a draining one still does).
_ANSWERS: Final = (NodeStatus.ALIVE, NodeStatus.DRAINING)
#: What ``watch`` calls each change.
_CHANGES: Final = {
    "NodeJoined": "joined",
    "NodeSuspect": "suspect",
    "NodeFaulted": "faulted",
    "NodeRecovered": "recovered",
    "NodeLeft": "left",
}
#: The most of a bad JSON argument an error shows.
_SHOWN: Final = 60


class UsageError(Exception):
    """A bad value given to a command; printed as one line, exit code 2."""


def client_options(changes: dict[str, Any]) -> NodeOptions:
    """The settings of the command's client: ``changes`` (the environment's and the
    flags'), as a client, with an id of its own unless one is given (with CURVE, it
    names the client's certificate in the members' trust directories)."""
    changes = dict(changes)
    if not changes.get("node_id"):
        changes["node_id"] = f"ops-{os.getpid()}"
    changes["role"] = "client"
    # A client binds nothing: the sockets of a member on this machine are not its own.
    for name in ("port", "pub_port", "advertise"):
        changes.pop(name, None)
    return NodeOptions().merged(changes).validated()


# checked before anything starts ---------------------------------------------------------


def prepare(args: argparse.Namespace) -> None:
    """Check what the command was given; for ``request`` and ``publish``, build the
    message (``args.message``). ``UsageError`` says what is wrong."""
    for name in ("wait", "timeout"):
        value = getattr(args, name, None)
        if value is not None and not 0 < value <= 3600:
            raise UsageError(f"--{name} must be more than 0 and at most 3600 s, got {value}")
    if args.command == "set":
        args.changes = set_changes(args.changes)
    if args.command in ("request", "publish"):
        base: type[Message] = Request if args.command == "request" else Event
        cls = find_type(args.type, args.app, base)
        args.message = build(cls, args.json_text)


def set_changes(words: list[str]) -> dict[str, str]:
    """``set``'s KEY=VALUE words, checked as the node will check them (``UsageError``)."""
    from ._runtime import parse_changes

    changes: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{word!r} is not KEY=VALUE; write weight=3 or metadata.zone=b")
        changes[key.strip()] = value.strip()
    try:
        parse_changes(changes)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    return changes


def _import_app(spec: str) -> Any:
    module_name = spec.partition(":")[0]
    if not module_name:
        raise UsageError(f"--app {spec!r}: name a module, e.g. myservice")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--app {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}"
        ) from None


def find_type(name: str, app: str | None, base: type[Message]) -> type[Message]:
    """The ``base`` subclass named ``name``: by wire name (``cluster.Where``, or a
    built-in's, ``catga.Ping``), or by class name among the types ``app``'s module
    holds, then among every type defined so far."""
    module = _import_app(app) if app else None
    what = "request" if base is Request else "event"
    found = registry.get(name)
    if found is not None and issubclass(found, base):
        return found
    own: list[type[Message]] = [
        v for v in (vars(module).values() if module else ()) if _is(v, base) and _named(v, name)
    ]
    if not own:
        own = [
            t
            for t in (registry.get(n) for n in registry.names())
            if t is not None and issubclass(t, base) and _named(t, name)
        ]
    if len(own) == 1:
        return own[0]
    if len(own) > 1:
        names = ", ".join(sorted(t.__wire_name__ for t in own))
        raise UsageError(f"{what} type {name!r} is ambiguous: give its wire name, one of {names}")
    known = sorted(
        v.__wire_name__ for v in (vars(module).values() if module else ()) if _is(v, base)
    )
    where = f"in {app}" if app else "(without --app, only the built-ins are known)"
    listed = f"; its {what} types: {', '.join(known[:20])}" if known else ""
    raise UsageError(f"no {what} type {name!r} {where}{listed}")


def _is(value: Any, base: type[Message]) -> bool:
    return isinstance(value, type) and issubclass(value, base) and value is not base


def _named(cls: type[Message], name: str) -> bool:
    return name in (cls.__name__, cls.__qualname__)


def build(cls: type[Message], text: str) -> Message:
    """``cls`` from ``text``, a JSON object of its fields; ``UsageError`` for text that
    is no JSON, a field it does not have, or a value of the wrong type."""
    wire = cls.__wire_name__
    shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise UsageError(f"{wire}: {shown!r} is not JSON ({exc})") from None
    fields = [f.encode_name for f in msgspec.structs.fields(cls)]
    if not isinstance(raw, dict):
        raise UsageError(
            f"{wire}: give a JSON object of its fields ({', '.join(fields) or 'none'}), "
            f"not {shown!r}"
        )
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UsageError(
            f"{wire} has no field {unknown[0]!r}; its fields: {', '.join(fields) or 'none'}"
        )
    try:
        message: Message = msgspec.json.decode(text, type=cls)
    except msgspec.ValidationError as exc:
        raise UsageError(f"{wire}: {exc}") from None
    return message


# running -----------------------------------------------------------------------------------

Command = Callable[[Any, argparse.Namespace], Awaitable[int]]


async def run(args: argparse.Namespace, options: NodeOptions) -> int:
    """Start the client, run the command, close the client; the exit code."""
    from ._node import Node

    command = COMMANDS[args.command]
    try:
        async with Node(options=options) as client:
            return await command(client, args)
    except ConfigError as exc:  # the client's own settings or files (a key, say)
        _fail(f"error: {exc.message}")
        return EXIT_USAGE
    except NoNodes as exc:
        _fail(f"error: {exc.message}")
        return EXIT_NONE
    except CatgaError as exc:
        _fail(f"error: {_error_text(exc)}")
        return EXIT_FAILED


def _fail(text: str) -> None:
    print(f"catga_zmq: {text}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)


def _error(exc: CatgaError) -> dict[str, Any]:
    found: dict[str, Any] = {
        "code": exc.code,
        "message": exc.message,
        "node": exc.node,
        "retryable": exc.retryable,
    }
    if isinstance(exc, HandlerError):
        found["error_type"] = exc.error_type
    return found


def _error_text(exc: CatgaError) -> str:
    kind = f" {exc.error_type}" if isinstance(exc, HandlerError) else ""
    where = f" from {exc.node}" if exc.node else ""
    return f"{exc.code}{kind}{where}: {exc.message}"


def _members(client: Any) -> list[ClusterNode]:
    found: list[ClusterNode] = client.members()
    return sorted((m for m in found if not m.local), key=lambda m: m.node_id)


def _answering(client: Any, node_id: str) -> ClusterNode | None:
    for m in _members(client):
        if m.node_id == node_id and m.status in _ANSWERS:
            return m
    return None


async def _await_node(client: Any, node_id: str, seconds: float) -> bool:
    """Wait up to ``seconds`` until ``node_id`` is a member that answers; say so if not."""
    changes = client.watch()  # subscribed now: no change is missed
    try:
        async with asyncio.timeout(seconds):
            while _answering(client, node_id) is None:
                await anext(changes)
    except (TimeoutError, StopAsyncIteration):
        _fail(
            f"node {node_id!r} not heard in cluster {client.options.cluster!r} within {seconds} s"
        )
        return False
    return True


def _none_heard(client: Any, args: argparse.Namespace) -> int:
    _fail(f"no nodes heard in cluster {client.options.cluster!r} within {args.wait} s")
    if args.json:
        _print_json([])
    return EXIT_NONE


# the commands ------------------------------------------------------------------------------


async def nodes(client: Any, args: argparse.Namespace) -> int:
    await asyncio.sleep(args.wait)
    rows = [
        {
            "node": m.node_id,
            "status": m.status.value,
            "endpoint": m.endpoint,
            "weight": m.weight,
            "load": m.load,
            "in_flight": m.in_flight,
            "metadata": m.metadata,
            "age_s": round(time.time() - m.last_heartbeat, 2) if m.last_heartbeat else None,
            "handles": sorted(m.handles),
        }
        for m in _members(client)
    ]
    if not rows:
        return _none_heard(client, args)
    if args.json:
        _print_json(rows)
    else:
        print(table(rows))
    return EXIT_OK


async def ping(client: Any, args: argparse.Namespace) -> int:
    from .system import Ping

    if args.node:
        if not await _await_node(client, args.node, args.wait):
            return EXIT_NONE
    else:
        await asyncio.sleep(args.wait)
    rows: list[dict[str, Any]] = []
    failed = False
    for m in _members(client):
        if args.node and m.node_id != args.node:
            continue
        start = time.perf_counter()
        try:
            await client.send(Ping(), node=m.node_id, timeout=args.timeout)
            rtt: float | str = round((time.perf_counter() - start) * 1e3, 3)
        except CatgaError as exc:
            rtt, failed = exc.code, True
        rows.append({"node": m.node_id, "endpoint": m.endpoint, "rtt_ms": rtt})
    if not rows:
        return _none_heard(client, args)
    if args.json:
        _print_json(rows)
    else:
        print(table(rows))
    return EXIT_FAILED if failed else EXIT_OK


async def watch(client: Any, args: argparse.Namespace) -> int:
    """Print each membership change until SIGINT or SIGTERM (then 0), or until the
    client closes by itself (2: it says why)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    changes = client.watch()
    stopping = loop.create_task(stop.wait())
    if not args.json:
        print(f"watching cluster {client.options.cluster!r}; Ctrl-C to stop", file=sys.stderr)
    try:
        while True:
            upcoming = asyncio.ensure_future(anext(changes))
            await asyncio.wait((upcoming, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not upcoming.done():
                upcoming.cancel()
                return EXIT_OK
            try:
                change = upcoming.result()
            except StopAsyncIteration:
                break  # the client closed by itself
            if args.json:
                _print_json(change_row(change))
            else:
                print(change_line(change), flush=True)
    finally:
        stopping.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    failure = client.failure
    _fail(f"error: {failure.message if failure is not None else 'the client closed'}")
    return EXIT_USAGE


def change_row(change: MembershipEvent) -> dict[str, Any]:
    """One membership change as ``watch --json`` prints it."""
    m = change.node
    return {
        "time": round(time.time(), 3),
        "change": _CHANGES.get(type(change).__name__, type(change).__name__),
        "node": m.node_id,
        "status": m.status.value,
        "endpoint": m.endpoint,
        "incarnation": m.incarnation,
        "handles": sorted(m.handles),
    }


def change_line(change: MembershipEvent) -> str:
    """One membership change as ``watch`` prints it: time, change, node, status, endpoint."""
    row = change_row(change)
    stamp = time.strftime("%H:%M:%S", time.localtime(row["time"]))
    millis = int(row["time"] * 1000) % 1000
    return (
        f"{stamp}.{millis:03d} {row['change']:<9} {row['node']} "
        f"status={row['status']} endpoint={row['endpoint']}"
    )


async def info(client: Any, args: argparse.Namespace) -> int:
    from .system import Info

    if not await _await_node(client, args.node, args.wait):
        return EXIT_NONE
    found = await client.send(Info(), node=args.node, timeout=args.timeout)
    if args.json:
        row = msgspec.to_builtins(found)
        # PeerAddress travels as an array (its field order is wire format): named here.
        row["peers"] = [{f: getattr(p, f) for f in p.__struct_fields__} for p in found.peers]
        _print_json(row)
        return EXIT_OK
    peers = ", ".join(f"{p.node_id} {p.endpoint}" for p in found.peers)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.incarnation / 1e9))
    rows = [
        ("node_id", found.node_id),
        ("cluster", found.cluster),
        ("status", found.status),
        ("endpoint", found.endpoint),
        ("pub_endpoint", found.pub_endpoint),
        ("version", f"protocol {found.version}, catga_zmq {found.library_version}"),
        ("incarnation", f"{found.incarnation} (started {started})"),
        ("handles", ", ".join(found.handles)),
        ("subscribes", ", ".join(found.subscribes)),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(found.metadata.items()))),
        ("peers", peers),
        ("public_key", found.public_key),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v or '-'}" for k, v in rows))
    return EXIT_OK


async def stats(client: Any, args: argparse.Namespace) -> int:
    from .system import Stats

    if args.node:
        if not await _await_node(client, args.node, args.wait):
            return EXIT_NONE
        ids = [args.node]
    else:
        await asyncio.sleep(args.wait)
        ids = [m.node_id for m in _members(client) if m.status in _ANSWERS]
        if not ids:
            return _none_heard(client, args)
    answers = await asyncio.gather(
        *(client.send(Stats(), node=i, timeout=args.timeout) for i in ids),
        return_exceptions=True,
    )
    got = [a for a in answers if not isinstance(a, BaseException)]
    failed = {i: a for i, a in zip(ids, answers, strict=True) if isinstance(a, BaseException)}
    for exc in failed.values():
        if not isinstance(exc, CatgaError):
            raise exc
    if args.json:
        rows: list[Any] = list(got)
        rows += [{"node_id": i, "error": _error(e)} for i, e in failed.items()]  # type: ignore[arg-type]
        _print_json(rows)
    else:
        print(stats_tables(got))
        for i, exc in failed.items():
            _fail(f"{i}: {_error_text(exc)}")  # type: ignore[arg-type]
    return EXIT_FAILED if failed else EXIT_OK


def stats_tables(answers: list[Any]) -> str:
    """``NodeStats`` answers as two tables: one row a node, then one a request type."""
    nodes_rows = [
        {
            "node": s.node_id,
            "uptime_s": round(s.uptime, 1),
            "handled": s.requests_handled,
            "failed": s.requests_failed,
            "refused": s.requests_refused,
            "expired": s.requests_expired,
            "sent": s.requests_sent,
            "running": s.running,
            "healthy": "yes" if s.healthy else "no: " + "; ".join(s.problems),
        }
        for s in answers
    ]
    type_rows = [
        {
            "node": s.node_id,
            "type": name,
            "handled": h.handled,
            "errors": h.errors,
            "mean_ms": round(h.processing_time * 1e3 / max(1, h.handled + h.errors), 3),
            "total_ms": round(h.processing_time * 1e3, 3),
        }
        for s in answers
        for name, h in sorted(s.handlers.items())
    ]
    parts = [table(nodes_rows)] if nodes_rows else []
    if type_rows:
        parts.append(table(type_rows))
    return "\n\n".join(parts)


async def request(client: Any, args: argparse.Namespace) -> int:
    message = args.message
    cls = type(message)
    if args.node:
        if not await _await_node(client, args.node, args.wait):
            return EXIT_NONE
    else:
        try:
            await client.wait_for_peers(1, timeout=args.wait, handles=cls)
        except CatgaError:
            _fail(
                f"no live node handles {cls.__wire_name__} in cluster "
                f"{client.options.cluster!r} (none heard within {args.wait} s)"
            )
            return EXIT_NONE
    start = time.perf_counter()
    try:
        reply = await client.send(message, timeout=args.timeout, node=args.node)
    except CatgaError as exc:
        if args.json:
            _print_json({"type": cls.__wire_name__, "error": _error(exc)})
        else:
            _fail(f"error: {_error_text(exc)}")
        return EXIT_NONE if isinstance(exc, NoNodes) else EXIT_FAILED
    took = round((time.perf_counter() - start) * 1e3, 3)
    _print_json({"type": cls.__wire_name__, "reply": reply, "ms": took} if args.json else reply)
    return EXIT_OK


async def publish(client: Any, args: argparse.Namespace) -> int:
    event = args.message
    name = type(event).__wire_name__
    await asyncio.sleep(args.wait)
    answers: dict[str, int | CatgaError] = await client.hand_over(event)
    delivered = {n: a for n, a in answers.items() if isinstance(a, int)}
    failed = {n: a for n, a in answers.items() if isinstance(a, CatgaError)}
    if args.json:
        _print_json(
            {
                "type": name,
                "delivered": delivered,
                "failed": {n: _error(e) for n, e in failed.items()},
            }
        )
    elif delivered:
        print(
            f"{name} delivered to "
            + ", ".join(
                f"{n} ({count} subscriber{'' if count == 1 else 's'})"
                for n, count in sorted(delivered.items())
            )
        )
    for n, exc in sorted(failed.items()):
        if not args.json:
            _fail(f"{n}: {_error_text(exc)}")
    if not answers:
        _fail(
            f"no member subscribes to {name} in cluster {client.options.cluster!r} "
            f"(none heard within {args.wait} s)"
        )
        return EXIT_NONE
    return EXIT_FAILED if failed else EXIT_OK


#: The commands that run a client, by name.
async def drain(client: Any, args: argparse.Namespace) -> int:
    """drain NODE: the admin request ``Drain``; NODE answers, then drains."""
    from .system import Drain

    if not await _await_node(client, args.node, args.wait):
        return EXIT_NONE
    seen = _answering(client, args.node)
    if seen is not None and seen.status is NodeStatus.DRAINING:
        print(f"{args.node} is draining already")
        return EXIT_OK
    answer, code = await _admin(client, args, Drain())
    if answer is None:
        return code
    if args.json:
        _print_json(msgspec.to_builtins(answer))
    else:
        print(
            f"{answer.node_id} drains: {answer.running} running, given up to "
            f"{answer.drain_timeout} s"
        )
    return EXIT_OK


async def set_(client: Any, args: argparse.Namespace) -> int:
    """set NODE KEY=VALUE...: the admin request ``Configure``; prints the settings now."""
    from .system import Configure

    if not await _await_node(client, args.node, args.wait):
        return EXIT_NONE
    if (seen := _answering(client, args.node)) is not None and seen.status is NodeStatus.DRAINING:
        _fail(f"error: node {args.node!r} is draining; its settings no longer matter")
        return EXIT_NONE
    answer, code = await _admin(client, args, Configure(changes=args.changes))
    if answer is None:
        return code
    if args.json:
        _print_json(msgspec.to_builtins(answer))
        return EXIT_OK
    fields = msgspec.structs.asdict(answer)
    fields.pop("node_id")
    changed = fields.pop("changed")
    shown = "  ".join(f"{k}={table_cell(v)}" for k, v in fields.items())
    print(f"{answer.node_id}: changed {', '.join(changed)}\n  {shown}")
    return EXIT_OK


async def _admin(client: Any, args: argparse.Namespace, message: Request[Any]) -> tuple[Any, int]:
    """Send an admin request: (its answer, 0), or (None, the exit code) when the node
    refused the caller (3) or found a value bad (2); other failures go to ``run``."""
    from .errors import PermissionDenied, ValidationFailed

    try:
        return await client.send(message, node=args.node, timeout=args.timeout), EXIT_OK
    except PermissionDenied as exc:
        _fail(f"error: {_error_text(exc)}")
        return None, EXIT_FAILED
    except ValidationFailed as exc:
        _fail(f"error: {_error_text(exc)}")
        return None, EXIT_USAGE


COMMANDS: Final[dict[str, Command]] = {
    "nodes": nodes,
    "ping": ping,
    "watch": watch,
    "info": info,
    "stats": stats,
    "request": request,
    "publish": publish,
    "drain": drain,
    "set": set_,
}


def table(rows: list[dict[str, Any]]) -> str:
    """Rows of one shape as a text table, a column a key, headers in capitals."""

    headers = list(rows[0])
    cells = [[table_cell(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def table_cell(v: Any) -> str:
    """A value as a table shows it: lists and tables joined by commas, None as ``-``."""
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items())) or "-"
    return ",".join(v) if isinstance(v, list) else ("-" if v is None else str(v))

"""Load generator run inside a LAN host namespace by ``tests/lan.py``.

    python tests/lan_client.py --bind 10.213.7.14 --cluster C --mode work \\
        --rate 100 --duration 8 --concurrency 1000 --timeout 5 --wait-peers 3 --out r.json

It starts a catga_zmq node (mDNS on the ``--bind`` interface), waits for
``--wait-peers`` peers that handle the mode's request type, prints ``ready``, then sends
requests at a steady ``--rate`` for ``--duration`` s (``--rate 0``: ``--count`` requests
at once, ``--concurrency`` at a time). SIGTERM stops the sending early; requests in
flight still finish. Stdout carries ``ready`` and one ``event <Name> <node> <time>``
line per membership change, for the test to follow live.

The report (JSON, to ``--out`` or stdout): ``requests`` (per request ``seq``, ``id``,
``outcome`` = ``ok`` or an error code, ``node``, ``latency`` s, ``late`` = finished more
than ``LATE_GRACE`` after its deadline, ``sent``/``done`` as ``time.time()``),
``events`` (membership changes with ``time.time()``), ``stats`` (``Stats`` of every
peer handling the type, by node id), ``client_stats`` (this node's counters).

Exits by itself: the whole run is bounded by a watchdog of
``--wait-timeout + --duration + --timeout + 10`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from catga_zmq import CatgaError, Node, NodeStatus, Request, Stats  # noqa: E402
from tests.apps.lan_app import Charge, Slow, Where, Work  # noqa: E402

#: A request is ``late`` if it finished this long (s) after its deadline.
LATE_GRACE = 0.1
#: A ``send()`` still running this long (s) after its deadline is recorded as HUNG.
HANG_GRACE = 2.0
#: Bound (s) on closing the client's own node.
CLOSE_TIMEOUT = 5.0

TYPES: dict[str, type[Request[Any]]] = {
    "work": Work,
    "charge": Charge,
    "slow": Slow,
    "where": Where,
}

log = logging.getLogger("lan_client")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lan_client", description=__doc__.split("\n")[0])
    p.add_argument("--bind", required=True, help="this host's address (mDNS runs there)")
    p.add_argument("--cluster", required=True)
    p.add_argument("--id", default=f"client-{os.getpid()}", help="this client's node id")
    p.add_argument("--mode", choices=sorted(TYPES), default="work")
    p.add_argument("--rate", type=float, default=100.0, help="requests/s; 0: all at once")
    p.add_argument("--duration", type=float, default=5.0, help="s of sending")
    p.add_argument("--count", type=int, help="requests (default rate * duration)")
    p.add_argument("--concurrency", type=int, default=1000, help="requests in flight at most")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline of each request, s")
    p.add_argument("--sleep", type=float, help="s each handler sleeps (work/charge 0, slow 0.3)")
    p.add_argument("--wait-peers", type=int, default=1, help="peers handling the type to wait for")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="s to wait for them")
    p.add_argument("--out", help="write the JSON report here (default stdout)")
    p.add_argument("--curve-secret-key", help="CURVE: this client's secret key file")
    p.add_argument("--curve-trust-dir", help="CURVE: the trusted nodes' certificates")
    return p


def _message(mode: str, seq: int, client: str, sleep: float | None) -> tuple[str, Request[Any]]:
    if mode == "work":
        return str(seq), Work(seq=seq, sleep=sleep or 0.0)
    if mode == "charge":
        charge_id = f"{client}-{seq}"
        return charge_id, Charge(charge_id=charge_id, sleep=sleep or 0.0)
    if mode == "slow":
        return str(seq), Slow(seq=seq, sleep=0.3 if sleep is None else sleep)
    return str(seq), Where()


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.stopping = asyncio.Event()

    async def watch(self, node: Node) -> None:
        async for change in node.watch():
            t = time.time()
            name, peer = type(change).__name__, change.node
            self.events.append(
                {
                    "t": t,
                    "event": name,
                    "node": peer.node_id,
                    "status": peer.status.value,
                    "incarnation": peer.incarnation,
                }
            )
            print(f"event {name} {peer.node_id} {t:.3f}", flush=True)

    async def one(
        self, node: Node, seq: int, ident: str, message: Request[Any], target: str | None
    ) -> None:
        timeout = self.args.timeout
        record: dict[str, Any] = {"seq": seq, "id": ident, "target": target, "sent": time.time()}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout + HANG_GRACE):
                reply = await node.send(message, timeout=timeout, node=target)
            record["outcome"] = "ok"
            if isinstance(reply, str):
                record["node"] = reply
            else:
                record["node"] = getattr(reply, "node", None)
                record["running"] = getattr(reply, "running", None)
        except CatgaError as exc:
            record["outcome"] = exc.code
            record["node"] = exc.node
            record["error"] = str(exc)
            record["retryable"] = exc.retryable
        except TimeoutError:
            record["outcome"] = "HUNG"
            record["node"] = None
            record["error"] = f"send() still running {HANG_GRACE} s after its deadline"
        except Exception as exc:  # a bug, not a fabric error: report it, do not die
            record["outcome"] = f"EXCEPTION:{type(exc).__name__}"
            record["node"] = None
            record["error"] = str(exc)
        latency = time.perf_counter() - start
        record["latency"] = latency
        record["done"] = time.time()
        record["late"] = latency > timeout + LATE_GRACE
        self.requests.append(record)

    async def send_all(self, node: Node) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(max(1, args.concurrency))
        tasks: list[asyncio.Task[None]] = []

        def launch(seq: int, ident: str, message: Request[Any], target: str | None) -> None:
            task = loop.create_task(self.one(node, seq, ident, message, target))
            task.add_done_callback(lambda _t: sem.release())
            tasks.append(task)

        if args.mode == "where":
            targets = sorted(
                p.node_id
                for p in node.members()
                if not p.local and p.status is NodeStatus.ALIVE and Where.__wire_name__ in p.handles
            )
            for seq, target in enumerate(targets):
                await sem.acquire()
                launch(seq, target, Where(), target)
        else:
            count = args.count if args.count is not None else int(args.rate * args.duration)
            start = loop.time()
            for seq in range(count):
                if args.rate > 0:
                    delay = start + seq / args.rate - loop.time()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    break
                # Bounded: each holder finishes within timeout + HANG_GRACE.
                await sem.acquire()
                ident, message = _message(args.mode, seq, args.id, args.sleep)
                launch(seq, ident, message, None)
        if tasks:
            # one() bounds itself; this only guards against a bug in it.
            _done, stuck = await asyncio.wait(tasks, timeout=args.timeout + HANG_GRACE + 2)
            for task in stuck:
                task.cancel()
            if stuck:
                log.error("%d requests did not finish; cancelled", len(stuck))

    async def peer_stats(self, node: Node, type_name: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for peer in node.members():
            if peer.local or peer.status is not NodeStatus.ALIVE or type_name not in peer.handles:
                continue
            try:
                stats = await node.send(Stats(), node=peer.node_id, timeout=2.0)
                found[peer.node_id] = msgspec.structs.asdict(stats)
            except CatgaError as exc:
                found[peer.node_id] = {"error": str(exc)}
        return found


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    run = Run(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, run.stopping.set)
    wanted = TYPES[args.mode]
    curve = {}
    if args.curve_secret_key:
        curve = {"curve_secret_key": args.curve_secret_key, "curve_trust_dir": args.curve_trust_dir}
    node = Node(
        **curve,  # type: ignore[arg-type]
        node_id=args.id,
        cluster=args.cluster,
        bind=args.bind,
        discovery="mdns",
        drain_timeout=1.0,
        metadata={"role": "client"},
    )
    report: dict[str, Any] = {"client": args.id, "mode": args.mode, "args": vars(args)}
    async with node:
        watcher = loop.create_task(run.watch(node))
        await asyncio.sleep(0)  # let the watcher subscribe before any peer appears
        try:
            await node.wait_for_peers(args.wait_peers, timeout=args.wait_timeout, handles=wanted)
            report["ready_at"] = time.time()
            print("ready", flush=True)
            await run.send_all(node)
            report["ended_at"] = time.time()
            report["client_stats"] = msgspec.structs.asdict(
                node.stats()
            )  # before the Stats requests below
            report["stats"] = await run.peer_stats(node, wanted.__wire_name__)
            report["members"] = [
                {"node": m.node_id, "status": m.status.value, "incarnation": m.incarnation}
                for m in node.members()
                if not m.local
            ]
        finally:
            report["requests"] = sorted(run.requests, key=lambda r: r["seq"])
            report["events"] = run.events
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            _write(args, report)  # before closing the node: the watchdog bounds that
    return report


def _write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        tmp = Path(args.out + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    else:
        print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    limit = args.wait_timeout + args.duration + args.timeout + 10.0

    def give_up() -> None:
        print(f"lan_client: still running after {limit:.0f} s; exiting", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    watchdog = threading.Timer(limit, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        import uvloop
    except ImportError:
        asyncio.run(amain(args))
    else:
        uvloop.run(amain(args))
    watchdog.cancel()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Three nodes on this machine, a client that sends them requests and an event.

    python -m examples.demo                 # mDNS discovery on 127.0.0.1
    python -m examples.demo --discovery static

Starts three ``python -m catga_zmq.node --app examples.shop:node`` processes, joins them
as a client, sends requests and prints which node served each, publishes an event,
shows a remote error, then stops the nodes with SIGTERM (they drain and exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from catga_zmq import CatgaError, HandlerError, Node, NodeStatus, StaticDiscovery
from examples.shop import Fail, GetUser, RenameUser

READY_TIMEOUT = 20.0  # s for a node process to print its ready line


def start_node(node_id: str, discovery: str, seeds: list[str]) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "catga_zmq.node", "--app", "examples.shop:node", "--id", node_id]
    cmd += ["--cluster", "demo", "--discovery", discovery, "--log-level", "WARNING"]
    if seeds:
        cmd += ["--seeds", ",".join(seeds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + READY_TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ready "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            return proc, fields["endpoint"]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"node {node_id} did not start (exit code {proc.poll()})")


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


async def client(discovery: str, seeds: list[str]) -> None:
    node = Node(
        node_id=f"demo-client-{os.getpid()}",
        cluster="demo",
        discovery=StaticDiscovery(seeds) if discovery == "static" else discovery,
    )
    async with node:
        print("waiting for the three nodes ...")
        await node.wait_for_peers(3, timeout=15, handles=GetUser)
        for m in node.members():
            if not m.local:
                print(
                    f"  {m.node_id:8} {m.status.value:6} {m.endpoint}  handles {', '.join(sorted(m.handles))}"
                )

        served: Counter[str] = Counter()
        for i in range(9):
            user = await node.send(GetUser(id=str(7 + i % 2)))
            served[user.served_by] += 1
            print(f"GetUser #{i + 1}: {user.name!r} served by {user.served_by}")
        print("spread:", dict(sorted(served.items())))

        renamed = await node.send(RenameUser(id="7", name="Ada Lovelace"))
        print(f"RenameUser served by {renamed.served_by}; the event reaches every node")
        await asyncio.sleep(0.3)
        seen = {(await node.send(GetUser(id="7"))).name for _ in range(6)}
        print("every node now says:", seen)

        try:
            await node.send(Fail(reason="out of stock"))
        except HandlerError as exc:
            print(
                f"remote error arrives typed: {exc.code} {exc.error_type}: {exc.message} (node {exc.node})"
            )

        alive = sum(1 for m in node.members() if not m.local and m.status is NodeStatus.ALIVE)
        print(f"{alive} nodes alive; stopping them with SIGTERM")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discovery", choices=["mdns", "static"], default="mdns")
    args = parser.parse_args()
    procs: list[subprocess.Popen[str]] = []
    try:
        seeds: list[str] = []
        for i in (1, 2, 3):
            # Static: the first node is the seed (it learns the others when they greet it).
            how = "none" if args.discovery == "static" and not seeds else args.discovery
            proc, endpoint = start_node(f"shop-{i}", how, seeds if how == "static" else [])
            procs.append(proc)
            if args.discovery == "static" and not seeds:
                seeds = [endpoint]
        asyncio.run(client(args.discovery, seeds))
    except CatgaError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        codes = [stop(p) for p in procs]
        with contextlib.suppress(Exception):
            print("node exit codes:", codes)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())

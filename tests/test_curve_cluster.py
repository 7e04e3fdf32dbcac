"""Three CURVE node processes on loopback, found by mDNS (keys in their TXT records),
driven by a CURVE client: requests, events, relays between the nodes, and SIGKILL.

The processes are the cluster tests' (``tests.apps.cluster_app``) with two more flags.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import uuid
from pathlib import Path

import pytest
from _net import loopback_multicast_problem
from _procs import stop_all
from test_cluster import EXIT_TIMEOUT, IDS, READY_TIMEOUT, spawn, until

from catga_zmq import Node, NodeStatus
from catga_zmq.security import generate
from tests.apps.cluster_app import Emit, Notice, Relay, Where

_problem = loopback_multicast_problem()
pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(_problem is not None, reason=_problem or ""),
]


async def test_three_curve_processes_serve_relay_publish_and_survive_sigkill(
    tmp_path: Path,
) -> None:
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    keys.mkdir()
    trust.mkdir()
    for name in (*IDS, "client"):
        public, _ = generate(name, keys)
        shutil.copy(public, trust / public.name)

    def curve(name: str) -> dict[str, str]:
        return {
            "curve_secret_key": str(keys / f"{name}.key_secret"),
            "curve_trust_dir": str(trust),
        }

    cluster = f"ct-curve-{uuid.uuid4().hex[:10]}"
    procs = {
        n: spawn(
            n,
            cluster,
            tmp_path,
            "--curve-secret-key",
            curve(n)["curve_secret_key"],
            "--curve-trust-dir",
            str(trust),
        )
        for n in IDS
    }
    try:
        for proc in procs.values():
            proc.wait_ready(READY_TIMEOUT)
        client = Node(node_id="client", cluster=cluster, discovery="mdns", **curve("client"))  # type: ignore[arg-type]
        notices: list[str] = []

        @client.subscribe
        async def on_notice(evt: Notice) -> None:
            notices.append(evt.token)

        async with client:
            await client.wait_for_peers(len(IDS), timeout=30, handles=Where)
            served = {await client.send(Where(), timeout=10) for _ in range(12)}
            assert served == set(IDS)
            # Node to node, over their own CURVE connections.
            assert await client.send(Relay(to="n2"), node="n1", timeout=10) == "n1->n2"
            async with asyncio.timeout(30):
                while "t1" not in notices:
                    await client.send(Emit(token="t1"), node="n3", timeout=10)
                    await asyncio.sleep(0.2)
            procs["n3"].send_signal(signal.SIGKILL)
            assert await procs["n3"].await_exit(EXIT_TIMEOUT) == -signal.SIGKILL
            answers = [await client.send(Where(), timeout=10) for _ in range(20)]
            assert set(answers) <= {"n1", "n2"}, answers

            def n3_out() -> bool:
                status = next((m.status for m in client.members() if m.node_id == "n3"), None)
                return status in (NodeStatus.FAULTED, NodeStatus.LEFT, None)

            await until(n3_out, 15, "n3 out of routing")
            assert client.stats().frames_rejected == 0
    finally:
        stop_all(list(procs.values()), EXIT_TIMEOUT)

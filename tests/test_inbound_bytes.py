"""An inbound connection's queue is bounded in bytes, not only in messages.

Anyone may connect to a node's ROUTER. libzmq's I/O thread reads a connection into its
queue while the node's loop is busy, up to the receive high-water mark, which counts
messages: at 10,000 messages of 64 KiB one connection held 640 MiB. The node sets it from
``max_inbound_bytes`` / ``max_message_size``, so a connection queues at most about
``max_inbound_bytes``; past it libzmq stops reading (the sender waits, or fails over).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
import zmq
from _procs import Proc, python

from catga_zmq import ConfigError, Node, NodeOptions

MIB = 1024 * 1024

_BUSY_SERVER = """
import asyncio, sys, time
from catga_zmq import Node

async def main() -> None:
    node = Node("busy", discovery=None, max_message_size=256 * 1024,
                max_inbound_bytes=1024 * 1024)
    async with node:
        print("ready", node.endpoint, flush=True)
        await asyncio.sleep(0.5)
        print("busy", flush=True)
        time.sleep(8)  # the loop does not read; libzmq's I/O thread still does
        print("free", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert found is not None
    return int(found[1]) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
async def test_a_flood_while_the_loop_is_busy_queues_about_max_inbound_bytes(
    tmp_path: Path, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    proc = Proc.start("busy", python("-c", _BUSY_SERVER), tmp_path / "busy")
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)  # this side queues what the server does not take
    try:
        ready = await proc.await_line(r"^ready (?P<endpoint>\S+)", timeout=30)
        sock.connect(ready["endpoint"])
        await proc.await_line("^busy", timeout=30)
        before = rss(proc.pid)
        frame = b"\x00" * (64 * 1024)
        for _ in range(1000):  # 64 MiB, each frame under max_message_size
            sock.send(frame, zmq.NOBLOCK)
        await asyncio.sleep(2.0)  # the server's I/O thread reads what it may
        grown = rss(proc.pid) - before
        assert "free" not in proc.stdout()  # still busy: this was measured in the stall
        # 1 MiB of queue (4 frames of 256 KiB at most) and libzmq's buffers; not 64 MiB.
        assert grown < 16 * MIB, f"the server grew {grown / MIB:.1f} MiB"
    finally:
        sock.close(0)
        proc.stop()


def test_the_queue_is_whole_frames_within_the_bytes_and_never_fewer_than_four() -> None:
    assert NodeOptions(max_inbound_bytes=64 * MIB).inbound_frames() == 4  # 16 MiB frames
    small = NodeOptions(max_message_size=64 * 1024, max_inbound_bytes=64 * MIB)
    assert small.inbound_frames() == 1024
    assert NodeOptions(max_inbound_bytes=1).inbound_frames() == 4
    # Never more than the message bound it had before.
    assert NodeOptions(max_message_size=1, max_inbound_bytes=MIB).inbound_frames() == 10_000


def test_a_bad_max_inbound_bytes_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_inbound_bytes"):
        Node("n", max_inbound_bytes=0)

"""What the machine's network allows, for tests that need it."""

from __future__ import annotations

import socket


def loopback_multicast_problem() -> str | None:
    """Why multicast over 127.0.0.1 (what mDNS needs here) does not work, or None."""
    group = "224.0.0.251"
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            rx.bind(("", 0))  # an ephemeral port: the probe must not disturb port 5353
            rx.settimeout(1.0)
            mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            tx.sendto(b"probe", (group, rx.getsockname()[1]))
            if rx.recv(16) != b"probe":
                return "a multicast datagram on 127.0.0.1 came back altered"
    except OSError as exc:
        return f"multicast on 127.0.0.1 does not work here ({exc})"
    return None

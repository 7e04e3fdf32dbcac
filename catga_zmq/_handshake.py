"""ZeroMQ handshakes that fail: what they mean, said once, and counted.

A node that meets a peer of the other kind (CURVE against plaintext), or a CURVE peer
that holds another key for it, learns of it only from libzmq: the handshake fails, the
connection ends, and nothing is read. The socket monitors (``Dealer``, ``Subscriber``,
the ROUTER's in ``Transport``) hand each such event here.

- ``outbound_failed(endpoint, event, value)``: a connection this node made (DEALER, SUB)
  failed its handshake; one WARNING per endpoint until a handshake with it succeeds
  again (``outbound_ok``).
- ``inbound_failed(event, value)``: a client of the ROUTER failed its handshake. libzmq's
  monitor names only the bound endpoint, never the client's address, so it is logged
  once per kind of failure, and every ``LOG_EVERY``-th time after.

Each failure counts in ``failed`` (``NodeStats.handshakes_failed``), but a key refused by
this node's ZAP handler, which counts and logs it itself (``connections_refused``).

How often a failed connection is tried again (``retry_delay``): libzmq would retry at
once, about ten times a second (``RECONNECT_IVL``; its back-off starts over with every
TCP connection that succeeds, and the handshake's does). So with libzmq >= 4.3.5 the
DEALER and SUB set ``RECONNECT_STOP_HANDSHAKE_FAILED`` and connect again themselves,
after ``RETRY_FIRST`` s, doubling up to ``RETRY_MAX`` s: a peer whose key or trust is
fixed is reached within ``RETRY_MAX`` s, and one that never is costs a handshake every
``RETRY_MAX`` s.
"""

from __future__ import annotations

import logging
from typing import Final

import zmq

log = logging.getLogger("catga_zmq.security")

_NO_DETAIL: Final = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_PROTOCOL: Final = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_AUTH: Final = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_SUCCEEDED: Final = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
#: The monitor events of a failed handshake.
FAILED: Final = _NO_DETAIL | _PROTOCOL | _AUTH
#: What a DEALER's or SUB's monitor listens for: failures, and the success that ends them.
OUTBOUND_EVENTS: Final = FAILED | _SUCCEEDED
_MISMATCH: Final = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
_CRYPTOGRAPHIC: Final = int(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)

RETRY_FIRST: Final = 1.0  # s after a failed handshake before connecting again
RETRY_MAX: Final = 10.0  # s, the most it backs off to
#: Endpoints warned about, at most (then no more warnings, still counted).
MAX_WARNED: Final = 1024
#: An inbound failure of a kind already logged is logged again every this many.
LOG_EVERY: Final = 1000

_CURVE_FLAGS: Final = (
    "give it --curve-secret-key and --curve-trust-dir "
    "(python -m catga_zmq keygen NAME writes a key pair)"
)
_PLAIN_FLAGS: Final = (
    "set curve_secret_key and curve_trust_dir (or curve_any_key) on this node, "
    "or run the peer without CURVE"
)


def is_failure(event: int) -> bool:
    """Whether a monitor event is a failed handshake."""
    return bool(event & FAILED)


def is_success(event: int) -> bool:
    return event == _SUCCEEDED


def retry_delay(failures: int) -> float:
    """Seconds before connecting again after ``failures`` (>= 1) handshakes in a row failed."""
    return min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(failures - 1, 16))


def stop_reconnect_option() -> tuple[int, int] | None:
    """(option, value) that stops libzmq's own reconnects after a failed handshake, or
    None where this libzmq has none (before 4.3.5)."""
    return _STOP


def _probe_stop() -> tuple[int, int] | None:
    option = getattr(zmq, "RECONNECT_STOP", None)
    value = getattr(zmq, "RECONNECT_STOP_HANDSHAKE_FAILED", None)
    if option is None or value is None or zmq.zmq_version_info() < (4, 3, 5):
        return None
    return int(option), int(value)


_STOP: Final = _probe_stop()


def explain_outbound(curve: bool, endpoint: str, event: int, value: int) -> str:
    """What a failed handshake on a connection to ``endpoint`` means, and what to do."""
    if event == _PROTOCOL and value == _MISMATCH:
        if curve:
            return (
                f"peer {endpoint} does not speak CURVE: it runs in plaintext and this node "
                f"cannot talk to it; {_CURVE_FLAGS}"
            )
        return (
            f"peer {endpoint} uses CURVE (its handshake asks for it); this node runs in "
            f"plaintext and cannot talk to it: {_PLAIN_FLAGS}"
        )
    if event == _AUTH:
        return (
            f"peer {endpoint} refused this node's CURVE key (ZAP status {value}): it does "
            "not trust it; copy this node's NAME.key certificate into the peer's trust "
            "directory"
        )
    if curve and event == _NO_DETAIL:
        # libzmq says no more when the peer resets the connection before its greeting
        # is read: a plaintext peer does, depending on timing, as well as one that
        # cannot decrypt the hello.
        return (
            f"the CURVE handshake with {endpoint} failed: the peer runs in plaintext "
            f"({_CURVE_FLAGS.replace('give it', 'then give it')}), or serves with another "
            "key than the one this node holds for it (a stale certificate in the trust "
            "directory, or a wrong seed key?)"
        )
    if event == _NO_DETAIL:
        return (
            f"the handshake with {endpoint} failed: the peer closed the connection before "
            "it ended; it uses CURVE, which this node, in plaintext, does not speak (then "
            f"{_PLAIN_FLAGS}), or it is no ZeroMQ peer"
        )
    return f"the handshake with {endpoint} failed: ZeroMQ protocol error {value:#x}"


def explain_inbound(curve: bool, event: int, value: int) -> str:
    """What a client's failed handshake with this node's ROUTER means."""
    if event == _PROTOCOL and value == _MISMATCH:
        if curve:
            return f"refused a client that does not speak CURVE (a plaintext node?): {_CURVE_FLAGS}"
        return f"refused a client that uses CURVE: this node runs in plaintext; {_PLAIN_FLAGS}"
    if event == _PROTOCOL and value == _CRYPTOGRAPHIC:
        return (
            "refused a client whose CURVE handshake does not decrypt: it holds another "
            "key for this node than this node's (a stale certificate?)"
        )
    if event == _NO_DETAIL:
        other = f"a plaintext node ({_CURVE_FLAGS})" if curve else f"a CURVE node ({_PLAIN_FLAGS})"
        return (
            "a client closed its connection before the handshake ended: a node of the "
            f"other kind, {other}, or a port check"
        )
    return f"a client's handshake failed (ZeroMQ event {event:#x}, value {value:#x})"


class Handshakes:
    """Failed handshakes of one node's sockets: counted, and each said once."""

    __slots__ = ("_inbound_seen", "_warned", "curve", "failed")

    def __init__(self, curve: bool) -> None:
        self.curve = curve
        #: Handshakes that failed (``NodeStats.handshakes_failed``).
        self.failed = 0
        self._warned: set[str] = set()
        self._inbound_seen: dict[tuple[int, int], int] = {}

    def outbound_failed(self, endpoint: str, event: int, value: int) -> None:
        self.failed += 1
        if endpoint in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(endpoint)
        log.warning("%s", explain_outbound(self.curve, endpoint, event, value))

    def outbound_ok(self, endpoint: str) -> None:
        """A handshake with ``endpoint`` succeeded: a later failure is news again."""
        self._warned.discard(endpoint)

    def inbound_failed(self, event: int, value: int) -> None:
        if event == _AUTH:
            return  # the ZAP handler refused a key: counted and logged there
        self.failed += 1
        # NO_DETAIL's value is an errno (EPIPE, ECONNRESET...): one kind, whichever.
        kind = (event, value if event == _PROTOCOL else 0)
        seen = self._inbound_seen.get(kind, 0) + 1
        if len(self._inbound_seen) < 64 or kind in self._inbound_seen:
            self._inbound_seen[kind] = seen
        if seen == 1 or seen % LOG_EVERY == 0:
            log.warning("%s (%d so far)", explain_inbound(self.curve, event, value), seen)

"""CURVE authentication (ZAP, RFC 27) on the node's own ZeroMQ context, driven by its loop.

pyzmq's ``zmq.auth.Authenticator`` does the protocol: it answers each handshake's
request on the context's ZAP socket (``inproc://zeromq.zap.01``). Its ready-made
drivers run it on a thread (``zmq.auth.thread``) or through ``zmq.asyncio``
(``zmq.auth.asyncio``); here the transport binds the ZAP socket and reads it from the
node's event loop like every other socket (``Transport.open_zap``), and the key check is
a plain call.

Fail closed: a CURVE transport does not bind its ROUTER and PUB until the ZAP socket is
bound, and every CURVE server socket sets ``ZAP_ENFORCE_DOMAIN``, so that with no handler
bound libzmq refuses the handshake instead of letting everyone in (its default).

A connection's ZAP User-Id is the client's public key (Z85): every frame read on it
carries it, and the node checks it against the node id the frame names
(``Trust.identity_ok``).
"""

from __future__ import annotations

import logging

import zmq
import zmq.auth

from .security import Trust
from .transport import ZAP_DOMAIN

log = logging.getLogger("catga_zmq.security")


class Authenticator(zmq.auth.Authenticator):
    """The node's ZAP handler: pyzmq's protocol, this node's trust, this node's loop."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], trust: Trust, stats: dict[str, int]
    ) -> None:
        super().__init__(ctx, log=logging.getLogger("catga_zmq.zap"))
        self.trust = trust
        #: ``connections_refused``: handshakes refused (a key not trusted).
        self.stats = stats
        self._refused_keys: set[bytes] = set()
        self.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=self)

    def attach(self, sock: zmq.Socket[bytes]) -> None:
        """Answer on ``sock``, the ZAP socket the transport bound and reads."""
        self.zap_socket = sock

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq asks: may the client with this public key (Z85) connect?"""
        if self.trust.allows(key):
            return True
        self.stats["connections_refused"] += 1
        if len(self._refused_keys) < 1024 and key not in self._refused_keys:
            self._refused_keys.add(key)  # logged once per key (a bounded number of keys)
            log.warning(
                "refused a CURVE connection from key %s: not in the trust directory; "
                "add its certificate there to let it in",
                key.decode("ascii", "replace"),
            )
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id every frame of the connection carries: its key, in Z85."""
        return zmq.utils.z85.encode(client_public_key).decode("ascii")

    def on_request(self, frames: list[bytes]) -> None:
        """One ZAP request, as the transport read it."""
        # Our callback never waits, so the coroutine ends at its first step.
        coro = self.handle_zap_message(frames)
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()
        log.error("a ZAP request could not be answered at once; the handshake fails")

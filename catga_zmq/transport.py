"""Sockets only: ROUTER in, one DEALER per peer out, PUB out, one SUB per peer in, batching.

It knows frames, not message types, and nothing of membership. It does know which
connection a frame came on: a reply is handed on with the endpoint of the DEALER it was
read on, a broadcast with the endpoint of the PUB its SUB is connected to (one SUB a
publisher, so that a heartbeat, a BYE or an event can be told apart by publisher: a node
can be heard only on the PUB it announced, not on anyone else's).

Why not ``zmq.asyncio``: its per-call futures and poller cost about five times the
throughput of plain sockets read from the event loop (measured: ~7k vs ~37k requests/s
echo at 64 in flight on 2 cores). So every socket here is a plain ``zmq.Socket``; the
loop watches its ``FD`` with ``add_reader``, and a reader reads it with ``NOBLOCK``
until ``EVENTS`` has no ``POLLIN``.

ZeroMQ's FD is edge-triggered and any operation on the socket (a send included) may
consume the edge. So after a send we read that socket again at once (unless a pass over
it is already under way), rather than wait for an edge that already went.

Batching (write coalescing, as NATS and HTTP/2 clients do): a request (or reply) to a
peer that has nothing else of ours in flight is sent at once, so a lone request waits
for nothing. Under load (others in flight), it waits for the end of the loop iteration
in the peer's outbox, and the outbox goes as one batch frame, or as soon as it holds
``BATCH_RECORDS``. Like Nagle's algorithm, but it never waits for an acknowledgement:
at most for the rest of the current iteration. A ZeroMQ message costs more than the
rest of a small request's path, so under load one message carries many requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import weakref
from collections.abc import Callable, KeysView, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import zmq

from ._handshake import (
    FAILED as HANDSHAKE_FAILED,
)
from ._handshake import (
    OUTBOUND_EVENTS,
    Handshakes,
    is_failure,
    is_success,
    retry_delay,
    stop_reconnect_option,
)
from .config import DEFAULT_MAX_MESSAGE_SIZE
from .errors import ConfigError, TransportFailed
from .protocol import encode_batch

log = logging.getLogger("catga_zmq.transport")

#: Messages read per pass before yielding to the loop, so one busy socket cannot
#: starve the others (or the timers).
READ_BATCH: Final = 256
#: Passes over one socket per loop callback (a pass that sent replies reads again).
READ_PASSES: Final = 4
#: Messages all readers of one event loop handle in one loop iteration, at most. Reads
#: after a send happen inside the iteration that sent, so without a shared bound one
#: iteration could read for seconds under a flood, and heartbeats and timers would wait.
#: A multiple of ``CLOCK_EVERY``.
LOOP_MESSAGES: Final = 1024
#: Time (s) the readers of one loop spend in one iteration before they yield, at most
#: (give or take ``CLOCK_EVERY`` messages): a 10 ms timer runs about on time.
LOOP_SECONDS: Final = 0.010
#: Messages between two reads of the clock: a clock read costs more than a message's
#: share of the budget check should.
CLOCK_EVERY: Final = 64
#: The ZAP domain of every CURVE server socket of a node (``catga_zmq._zap``).
ZAP_DOMAIN: Final = b"catga"
RECONNECT_IVL: Final = 100  # ms, libzmq's first reconnect delay
RECONNECT_IVL_MAX: Final = 2000  # ms, the most it backs off to
LINGER: Final = 0  # ms: unsent frames of a closing node are dropped, not flushed

# Plain ints: pyzmq's constants are enums, and enum arithmetic on every send and every
# EVENTS check costs more than the rest of the hot path's bookkeeping.
_NOBLOCK: Final = int(zmq.NOBLOCK)
_EVENT_DISCONNECTED: Final = int(zmq.EVENT_DISCONNECTED)
#: What a DEALER's and a SUB's monitors report (a SUB's connection ending is no news:
#: heartbeats tell).
_DEALER_EVENTS: Final = _EVENT_DISCONNECTED | OUTBOUND_EVENTS
_ROUTER_EVENTS: Final = _EVENT_DISCONNECTED | HANDSHAKE_FAILED
_MORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_STOP_RECONNECT: Final = stop_reconnect_option()

# pyzmq's own send/recv methods are Python wrappers (keyword handling, enum flags) over
# the compiled socket's; on the hot path we call the compiled ones directly.
_send: Final[Callable[[zmq.Socket[bytes], bytes, int], object]] = zmq.backend.Socket.send
_recv: Final[Callable[[zmq.Socket[bytes], int, bool], zmq.Frame]] = zmq.backend.Socket.recv  # type: ignore[assignment]
_get: Final[Callable[[zmq.Socket[bytes], int], int]] = zmq.backend.Socket.get  # type: ignore[assignment]
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[bytes]) -> None:
    """Send a multipart message without blocking; ``zmq.Again`` when it cannot go now.

    libzmq checks its queue limit at a message's first part only, so a message is never
    cut in half by ``Again``.
    """
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], _MORE_NOBLOCK)
    _send(sock, frames[last], _NOBLOCK)


@dataclass(frozen=True, slots=True)
class Curve:
    """This node's CURVE key pair (Z85): with it, every socket is encrypted, ROUTER and
    PUB as CURVE servers (ZAP decides who may connect), DEALER and SUB as clients that
    check the server's key (``Transport.keys``)."""

    public: bytes
    secret: bytes


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Receive one multipart message; ``zmq.Again`` when there is none.

    Frames, not ``getsockopt(RCVMORE)``: pyzmq looks every socket option up in an enum,
    which costs more than the receive itself.
    """
    frame = _recv(sock, _NOBLOCK, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        parts.append(frame.bytes)
    return parts


class LoopBudget:
    """What the readers of one event loop may still read in this loop iteration.

    The first reader to read in an iteration arms it (``LOOP_MESSAGES``, and a deadline
    ``LOOP_SECONDS`` on); a callback scheduled then re-arms it in the next iteration. A
    reader that finds it spent reschedules itself (``Reader.kick``) rather than read on:
    the timers, heartbeats and other callbacks of the loop run first.
    """

    __slots__ = ("__weakref__", "_armed", "_loop", "deadline", "left")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the budget is a value of a dict keyed weakly by its loop.
        self._loop = weakref.ref(loop)
        self._armed = False
        #: Messages left in this iteration.
        self.left = 0
        #: ``time.monotonic()`` after which this iteration reads no more.
        self.deadline = 0.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopBudget:
        """The budget every reader of ``loop`` shares (several nodes in one loop too)."""
        found = _BUDGETS.get(loop)
        if found is None:
            found = _BUDGETS[loop] = cls(loop)
        return found

    def take(self, wanted: int, now: float) -> int:
        """Reserve up to ``wanted`` messages of this iteration (``now`` is
        ``time.monotonic()``); 0 when it is spent.

        What a reader does not use it gives back (``left += unused``): reads nested in a
        handler (a send's ``after_send``) see only what remains.
        """
        if not self._armed:
            self._armed = True
            self.left = LOOP_MESSAGES
            self.deadline = now + LOOP_SECONDS
            loop = self._loop()
            if loop is not None:
                loop.call_soon(self._rearm)
        elif self.left <= 0 or now > self.deadline:
            return 0
        granted = wanted if wanted < self.left else self.left
        self.left -= granted
        return granted

    def _rearm(self) -> None:
        self._armed = False


#: One budget per running loop; it goes with its loop.
_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBudget] = (
    weakref.WeakKeyDictionary()
)


class Reader:
    """Reads one socket from the event loop; ``handle`` gets each multipart message.

    ``after_pass``, if set, runs after each pass over the socket and returns whether it
    sent something on it (which may have consumed the FD's edge: the socket is then
    read again, a bounded number of times per callback).

    Every reader of a loop draws on one ``LoopBudget``: when it is spent, a reader
    leaves the rest for the next loop iteration.
    """

    __slots__ = (
        "_budget",
        "_busy",
        "_loop",
        "_scheduled",
        "after_pass",
        "batch_started",
        "handle",
        "reading",
        "recv",
        "sock",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket[bytes],
        handle: Callable[[list[bytes]], None],
        after_pass: Callable[[], bool] | None = None,
        recv: Callable[[zmq.Socket[bytes]], list[bytes]] = recv_frames,
    ) -> None:
        self._loop = loop
        self._budget = LoopBudget.of(loop)
        self.sock = sock
        self.handle = handle
        self.recv = recv
        self.after_pass = after_pass
        self._scheduled = False
        #: True while a pass over the socket is under way (inside ``handle``).
        self.reading = False
        self._busy = False
        #: When the current batch began to be read: the arrival time of its messages,
        #: even when a handler run in the batch holds the loop for a while.
        self.batch_started = 0.0
        loop.add_reader(sock.FD, self.read)
        self.kick()

    def kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.read)

    def after_send(self) -> None:
        """Read what waits now: a send may have consumed the FD's edge.

        At once rather than on the next loop iteration (one iteration less per round
        trip), as far as the loop's budget lasts; past it, in the next iteration.
        Inside a pass (a reply sent by a handler of the message being read) nothing is
        needed: that pass reads on until nothing is left.
        """
        if not self.reading:
            self.read()

    def read(self) -> None:
        self._scheduled = False
        after_pass, budget = self.after_pass, self._budget
        for _ in range(READ_PASSES):
            now = time.monotonic()
            full = self._pass(budget.take(READ_BATCH, now), now)
            sent = after_pass is not None and after_pass()
            if full:
                break  # more may be waiting: go on in the next loop iteration
            if not sent:
                return
        self.kick()

    def read_all(self) -> None:
        """Read everything that waits now, past the loop's budget (bounded by the
        socket's queue): for the replies that came in before a connection dropped."""
        budget = self._budget
        for _ in range(READ_PASSES * 64):
            budget.left -= READ_BATCH  # charged to this iteration all the same
            if not self._pass(READ_BATCH, time.monotonic()):
                return
        self.kick()

    def _pass(self, limit: int, now: float) -> bool:
        """Read until nothing waits, or ``limit`` messages (or the loop's time is up);
        True in the latter case: more may wait. ``limit`` was taken from the budget."""
        if limit <= 0:
            return True
        sock, handle, budget, recv = self.sock, self.handle, self._budget, self.recv
        self.batch_started = now
        self.reading = True
        # Two ways to know when to stop, both of which re-arm the FD's edge: ask EVENTS
        # before each message, or receive until EAGAIN. EVENTS costs about a third of
        # a failed receive (pyzmq builds an exception object for EAGAIN), so it wins
        # when a read finds one message or none: a lone request, or a batch. A socket
        # whose last read found several (a subscriber in a burst) reads until EAGAIN.
        busy = self._busy
        count = 0
        try:
            for count in range(limit):
                # The clock every CLOCK_EVERY messages only: a few slow frames in a row
                # (each handler's cost is the sender's choice) end the iteration too.
                # Past the deadline, ``take`` grants nothing more in this iteration.
                if count & (CLOCK_EVERY - 1) == CLOCK_EVERY - 1 and (
                    time.monotonic() > budget.deadline
                ):
                    return True
                if not busy and not _get(sock, _EVENTS) & _POLLIN:
                    return False
                frames = recv(sock)
                try:
                    handle(frames)
                except Exception:
                    # A frame the handler did not expect must not stop the reading of
                    # the rest (nor reach the loop's exception handler as if fatal).
                    log.exception("a frame on %s could not be handled; dropped", self.sock)
            count = limit
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ENOTSOCK or self.sock.closed:
                return False
            raise
        finally:
            self.reading = False
            self._busy = count >= 2
            budget.left += limit - count  # what this pass did not read goes back
        return True

    def close(self) -> None:
        if not self.sock.closed:
            self._loop.remove_reader(self.sock.FD)
            self.sock.close(LINGER)


#: Bytes a batch spends on one record beyond its header and payload (msgpack array and
#: bin headers), and on the batch itself: a bound, used to keep batches under the limit.
RECORD_OVERHEAD: Final = 16
#: Records per batch frame: a full batch goes at once rather than at the end of the
#: iteration, so the peer starts on it while this side still works (pipelining). At 64
#: requests in flight, 16-32 measured best (about 1.4x as many requests/s as one
#: batch per iteration, which leaves each side idle while the other works).
BATCH_RECORDS: Final = 16


class Outbox:
    """Records waiting for the end of the loop iteration, for one destination.

    Its existence means a message to that destination already went out in this
    iteration (the next ones are batched); ``records`` may be empty.
    """

    __slots__ = ("records", "rids", "size")

    def __init__(self) -> None:
        self.records: list[tuple[msgspec.Raw, msgspec.Raw]] = []
        self.rids: list[int] = []
        self.size = 0

    def add(self, header: bytes, payload: bytes, limit: int, rid: int = 0) -> bool:
        """Queue a record; False when it would take the batch over ``limit`` bytes."""
        size = self.size + len(header) + len(payload) + RECORD_OVERHEAD
        if size > limit:
            return False
        self.size = size
        self.records.append((msgspec.Raw(header), msgspec.Raw(payload)))
        if rid:
            self.rids.append(rid)
        return True

    def clear(self) -> list[int]:
        """Drop the records; returns their request ids (never sent)."""
        rids = self.rids
        self.records, self.rids, self.size = [], [], 0
        return rids

    def take(self) -> tuple[bytes, list[int]]:
        """The batch frame and its request ids; leaves the box empty (still corked)."""
        frame = encode_batch(self.records)
        return frame, self.clear()


class _Outbound:
    """What a DEALER and a SUB share: a monitor, and what follows a failed handshake.

    A handshake that fails (a peer of the other kind, a key refused) is said once and
    counted (``Transport.handshakes``); libzmq's own reconnects are off for it
    (``_handshake.stop_reconnect_option``), and the socket connects again after a delay
    that doubles with each failure in a row (``_handshake.retry_delay``), instead of ten
    times a second.
    """

    __slots__ = ("_after_failure", "_retry", "endpoint", "failures", "monitor", "sock", "transport")

    transport: Transport
    endpoint: str
    sock: zmq.Socket[bytes]
    monitor: Reader | None
    #: Handshakes with the peer that failed in a row (0 after one succeeds).
    failures: int
    _after_failure: bool
    _retry: asyncio.TimerHandle | None

    def _registered(self) -> bool:
        raise NotImplementedError

    def _watch(self, events: int) -> None:
        """Start the monitor (before ``connect``): its events go to ``_on_monitor``."""
        self.failures = 0
        self._after_failure = False
        self._retry = None
        mon = self.sock.get_monitor_socket(events)
        self.monitor = Reader(self.transport.loop, mon, self._on_monitor)

    def _on_monitor(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or len(frames[0]) < 6:
            return
        event = int.from_bytes(frames[0][:2], "little")
        if is_failure(event):
            self._handshake_failed(event, int.from_bytes(frames[0][2:6], "little"))
        elif is_success(event):
            self.failures = 0
            self.transport.handshakes.outbound_ok(self.endpoint)
        elif event == _EVENT_DISCONNECTED:
            if self._after_failure:
                # The end of the connection whose handshake failed: it never carried a
                # frame, and its retry is set.
                self._after_failure = False
                return
            self._disconnected()

    def _handshake_failed(self, event: int, value: int) -> None:
        self.transport.handshakes.outbound_failed(self.endpoint, event, value)
        self.failures += 1
        self._after_failure = True
        if self._retry is None:
            delay = retry_delay(self.failures)
            self._retry = self.transport.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._reconnect()

    def _disconnected(self) -> None:
        """A connection that had been up ended."""

    def _reconnect(self) -> None:
        """Connect afresh (after a disconnection, or a failed handshake).

        libzmq reconnects by itself after a peer closed the connection, but not after
        it dropped one for a protocol error (a frame over this side's MAXMSGSIZE, a
        failed handshake): the socket then takes every later message and sends it
        nowhere. A fresh connect revives it; after a peer that closed, it takes the
        place of libzmq's own retry.
        """
        if self.sock.closed or not self._registered():
            return
        with contextlib.suppress(zmq.ZMQError):  # not connected in libzmq's view: no-op
            self.sock.disconnect(self.endpoint)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            log.warning("cannot reconnect to %s: %s", self.endpoint, exc)

    def _close_monitor(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.sock.disable_monitor()
            self.monitor.close()
            self.monitor = None


class Dealer(_Outbound):
    """The DEALER to one peer, with a monitor that reports its disconnections.

    A peer process that dies closes its TCP connections at once; the monitor tells us
    in milliseconds, long before heartbeats fall silent, so requests in flight to it
    can be failed over (or failed) at once instead of at the failure detector's pace.
    It reports failed handshakes too (``_Outbound``).
    """

    __slots__ = ("limit", "outbox", "reader")

    def __init__(self, transport: Transport, endpoint: str) -> None:
        self.transport = transport
        self.endpoint = endpoint
        #: A batch to this peer stays under this: its MAXMSGSIZE would drop the connection.
        #: Until it advertises its own, the default is assumed (see ``set_peer_limit``).
        self.limit = min(transport.batch_limit, DEFAULT_MAX_MESSAGE_SIZE)
        sock = self.sock = transport._socket(zmq.DEALER, endpoint)
        # Queue only on a live connection: to a dead or unreachable peer, send fails at
        # once (EAGAIN) and the request goes to another node, never run late or twice.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if endpoint.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)  # an IPv4-bound node can still reach an IPv6 peer
        self.monitor = None
        #: Set once a request went out in this loop iteration (see the module docstring).
        self.outbox: Outbox | None = None
        try:
            self._watch(_DEALER_EVENTS)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._close_monitor()
            sock.close(LINGER)
            raise TransportFailed(transport._no_socket(endpoint, exc)) from None
        self.reader = Reader(transport.loop, sock, self._on_reply)

    def _registered(self) -> bool:
        return self.transport.dealers.get(self.endpoint) is self

    def _on_reply(self, frames: list[bytes]) -> None:
        # With this DEALER's endpoint: a reply counts only for a request that went
        # through this connection (see ``PendingMap.resolve``).
        self.transport.on_reply(frames, self.endpoint)

    def _disconnected(self) -> None:
        if self.transport.on_disconnect is not None:
            # Replies that came in before the connection went are read first, and
            # requests still in the outbox were never sent: they may go elsewhere.
            self.reader.read_all()
            self.transport.unsend(self, "dropped the connection before they were sent")
            self.transport.on_disconnect(self.endpoint)
            self.transport.loop.call_later(RECONNECT_IVL / 1000, self._reconnect)

    def close(self) -> None:
        self._close_monitor()
        self.reader.close()


class Subscriber(_Outbound):
    """The SUB socket connected to one peer's PUB: what it reads comes from that PUB.

    A socket a publisher, not one socket for all: ZeroMQ does not say which connection
    a SUB read a message on, and a heartbeat or an event proves something only when it
    comes from the PUB its node announced. Its reader draws on the loop's one
    ``LoopBudget`` like every other: many publishers together are read no more in an
    iteration than one. Its monitor reports failed handshakes (``_Outbound``).
    """

    __slots__ = ("reader",)

    def __init__(self, transport: Transport, endpoint: str) -> None:
        self.transport = transport
        self.endpoint = endpoint
        sock = self.sock = transport._socket(zmq.SUB, endpoint)
        self.monitor = None
        try:
            self._watch(OUTBOUND_EVENTS)
            if endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)  # an IPv4-bound node can still reach an IPv6 peer
            for topic in transport.topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self._close_monitor()
            sock.close(LINGER)
            raise TransportFailed(transport._no_socket(endpoint, exc)) from None
        self.reader = Reader(transport.loop, sock, self._on_broadcast)

    def _registered(self) -> bool:
        return self.transport.subscribers.get(self.endpoint) is self

    def _on_broadcast(self, frames: list[bytes]) -> None:
        # With this SUB's endpoint: heartbeats and events are judged by the PUB they
        # came from.
        self.transport.on_broadcast(frames, self.endpoint)

    def set_topics(self, topics: set[bytes], previous: set[bytes]) -> None:
        for topic in previous - topics:
            self.sock.setsockopt(zmq.UNSUBSCRIBE, topic)
        for topic in topics - previous:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.reader.kick()

    def close(self) -> None:
        self._close_monitor()
        self.reader.close()


def sockets_needed(max_peers: int, max_addresses: int = 0) -> int:
    """Sockets a node may hold at once: its context's limit.

    A monitor is two sockets (libzmq's end and ours). Per member and per address not
    yet joined (each at most ``max_peers``): a DEALER and its monitor, 3; a SUB and its
    monitor, 3, per member and per address heard of (``max_peers + max_addresses``). The
    node's own:
    ROUTER and its monitor, PUB, 4; and room for the few short-lived ones (the ZAP
    handler, a bind that failed).
    """
    return 2 * max_peers * 3 + (max_peers + max_addresses) * 3 + 4 + 64


def _unset(frames: list[bytes]) -> None:
    raise RuntimeError("a transport's frame handlers are set before bind()")


def _unset_with_endpoint(frames: list[bytes], endpoint: str) -> None:
    _unset(frames)


class Transport:
    """The node's sockets. Knows frames, not message types."""

    def __init__(
        self,
        node_id: str,
        *,
        max_message_size: int,
        hwm: int,
        inbound_hwm: int | None = None,
        max_peers: int = 256,
        max_addresses: int = 1024,
        curve: Curve | None = None,
    ) -> None:
        self.node_id = node_id
        self.loop = asyncio.get_running_loop()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        #: SUB sockets open at most: one per member and one per address heard of
        #: (the address book keeps at most max_addresses); past it ``subscribe_to``
        #: fails, so SUBs cannot take the sockets the DEALERs need.
        self.max_subscriptions = max_peers + max_addresses
        # libzmq's default of 1,023 sockets ran out at about 340 peers. Capped at what
        # this libzmq can take.
        self.ctx.set(
            zmq.MAX_SOCKETS,
            min(sockets_needed(max_peers, max_addresses), self.ctx.get(zmq.SOCKET_LIMIT)),
        )
        self.max_message_size = max_message_size
        self.hwm = hwm
        #: The ROUTER's receive queue, per connection: anyone may connect to it, so it is
        #: bounded in bytes (``NodeOptions.inbound_frames``), not only in messages.
        self.inbound_hwm = hwm if inbound_hwm is None else inbound_hwm
        #: Where frames go; set before ``bind()``. A reply handler sees replies from
        #: every DEALER; ``on_disconnect`` gets the endpoint whose connection dropped;
        #: ``on_unsent`` the request ids of a batch that could not be sent.
        self.on_request: Callable[[list[bytes]], None] = _unset
        #: (frames, endpoint of the PUB whose SUB they were read on)
        self.on_broadcast: Callable[[list[bytes], str], None] = _unset_with_endpoint
        #: (frames, endpoint of the DEALER they were read on)
        self.on_reply: Callable[[list[bytes], str], None] = _unset_with_endpoint
        self.on_disconnect: Callable[[str], None] | None = None
        self.on_unsent: Callable[[list[int], str], None] | None = None
        # Destinations written to in this loop iteration, flushed at its end.
        self._corked: list[Dealer] = []
        self._reply_boxes: dict[bytes, Outbox] = {}
        self._flush_scheduled = False
        #: A batch stays under this: the receiver's MAXMSGSIZE would drop the connection.
        self.batch_limit = max_message_size
        self.batches_sent = 0
        #: Batches sent by how many records each carried (index: records; the last
        #: slot also takes any larger one, though a batch goes out at BATCH_RECORDS).
        self.batch_records = [0] * (BATCH_RECORDS + 1)
        self.router: zmq.Socket[bytes] | None = None
        self.pub: zmq.Socket[bytes] | None = None
        self._router_reader: Reader | None = None
        self._zap_reader: Reader | None = None
        self.dealers: dict[str, Dealer] = {}
        #: The SUB to each PUB endpoint subscribed to.
        self.subscribers: dict[str, Subscriber] = {}
        #: The topics every SUB is subscribed to (heartbeats, the events handled here).
        self.topics: set[bytes] = set()
        self.endpoint = ""
        self.pub_endpoint = ""
        self.dropped_replies = 0
        self.curve = curve
        #: CURVE: the server key (Z85) of each endpoint this node connects to, as
        #: discovery, seeds, greetings and heartbeats tell it (``learn_key``).
        self.keys: dict[str, bytes] = {}
        #: CURVE: the client key (Z85) of the connection the request being handled
        #: came on (its ZAP User-Id).
        self.peer_key = b""
        #: Inbound connections (to the ROUTER) that ended; see ``_on_router_monitor``.
        self.connections_dropped = 0
        #: Handshakes that failed, both ways: counted and said once.
        self.handshakes = Handshakes(curve is not None)
        # ROUTER connections whose handshake failed and whose end is still to come.
        self._failed_unended = 0
        self._router_monitor: Reader | None = None
        #: True once bound (a member) or opened without binding (a client): SUBs may
        #: be opened from then on.
        self.connecting = False

    # setup --------------------------------------------------------------------------

    def _socket(self, kind: int, endpoint: str = "") -> zmq.Socket[bytes]:
        """A socket with the node's options; one that connects to ``endpoint`` (DEALER,
        SUB) checks, with CURVE, the key it must find there: ``TransportFailed`` before
        any socket is made when none is known."""
        curve = self.curve
        server_key = self._server_key(endpoint) if curve is not None and endpoint else None
        sock = self.ctx.socket(kind)
        if curve is not None:
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
            if server_key is not None:
                # libzmq takes a socket's options at each connect: set before it.
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            if kind in (zmq.ROUTER, zmq.PUB):
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
                # With no ZAP handler bound, refuse the handshake (libzmq's default
                # lets everyone in): fail closed.
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.LINGER, LINGER)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX)
        if endpoint and _STOP_RECONNECT is not None:
            # After a failed handshake the socket connects again itself, backing off
            # (``_Outbound``): libzmq would retry ten times a second, forever.
            sock.setsockopt(*_STOP_RECONNECT)
        return sock

    def bind(self, host: str, port: int, pub_port: int, advertise: str) -> None:
        """Bind ROUTER and PUB; a port in use or a bad address is a ``ConfigError``.

        A node bound to an IPv6 address gets IPv6 on every socket it makes (the
        context's default), so its DEALERs and SUBs reach IPv6 peers too; such sockets
        are dual-stack and still reach IPv4 peers. IPv4 nodes keep IPv4-only sockets:
        with IPv6 on, libzmq resolves host names to IPv6 addresses first.
        """
        if self.curve is not None and self._zap_reader is None:
            raise TransportFailed(
                "no ZAP handler runs on this node's context: a CURVE node does not bind "
                "without one (it would let every key in)"
            )
        host = host.strip("[]")
        if ":" in host:
            self.ctx.setsockopt(zmq.IPV6, 1)
        router = self._socket(zmq.ROUTER)
        # Unroutable replies (the caller is gone) raise instead of vanishing silently,
        # and a full queue raises EAGAIN instead of dropping: both are counted.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.RCVHWM, self.inbound_hwm)
        pub = self._socket(zmq.PUB)
        self.router, self.pub = router, pub
        self.endpoint = self._bind(router, host, port, advertise, "--port", "ROUTER (requests)")
        self.pub_endpoint = self._bind(
            pub, host, pub_port, advertise, "--pub-port", "PUB (heartbeats and events)"
        )
        self.connecting = True

    def connect_only(self, host: str) -> None:
        """A client's transport: nothing is bound, so there is no ROUTER and no PUB.

        Its DEALERs and SUBs connect to the members: replies come back on the DEALER a
        request went out on, heartbeats and events on the SUBs. ``host`` is the bind
        setting, which decides, as for ``bind()``, whether sockets speak IPv6.
        """
        if ":" in host.strip("[]"):
            self.ctx.setsockopt(zmq.IPV6, 1)
        self.connecting = True

    def open_zap(self, handle: Callable[[list[bytes]], None]) -> zmq.Socket[bytes]:
        """Bind this context's ZAP socket (RFC 27) and hand each request to ``handle``,
        read from the loop; before ``bind()``. ``TransportFailed`` if it cannot bind."""
        sock = self.ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, LINGER)
        try:
            sock.bind("inproc://zeromq.zap.01")
        except zmq.ZMQError as exc:
            sock.close(LINGER)
            raise TransportFailed(f"cannot bind the ZAP handler: {exc}") from None
        self._zap_reader = Reader(self.loop, sock, handle)
        return sock

    def start_reading(self) -> None:
        """Hand what the ROUTER reads to ``on_request`` (set it first; each SUB hands
        what it reads to ``on_broadcast`` from the start)."""
        assert self.router is not None
        mon = self.router.get_monitor_socket(_ROUTER_EVENTS)
        self._router_monitor = Reader(self.loop, mon, self._on_router_monitor)
        self._router_reader = Reader(
            self.loop,
            self.router,
            self.on_request,
            self._flush_replies,
            recv_frames if self.curve is None else self._recv_with_key,
        )

    @property
    def subscribed(self) -> KeysView[str]:
        """The PUB endpoints subscribed to (each has its SUB)."""
        return self.subscribers.keys()

    def _recv_with_key(self, sock: zmq.Socket[bytes]) -> list[bytes]:
        """``recv_frames``, and the sender's key (its ZAP User-Id) in ``peer_key``."""
        frame = _recv(sock, _NOBLOCK, False)
        parts = [frame.bytes]  # the ROUTER's identity frame: no metadata of the peer's
        key = b""
        while frame.more:
            frame = _recv(sock, _NOBLOCK, False)
            if not key:
                key = str(frame.get("User-Id")).encode("ascii", "replace")
            parts.append(frame.bytes)
        self.peer_key = key
        return parts

    def learn_key(self, endpoint: str, key: bytes) -> None:
        """CURVE: ``endpoint`` is served with ``key`` (Z85); later connections check it.

        Not while a socket to ``endpoint`` is open: its key is what that connection
        proved (a heartbeat read on a SUB is judged by it), and anyone may name any
        endpoint in a greeting. Once the socket is closed, the next key heard counts.
        """
        if self.curve is not None and key:
            if endpoint in self.dealers or endpoint in self.subscribers:
                return
            self.keys[endpoint] = key

    def _server_key(self, endpoint: str) -> bytes:
        """CURVE: the key a connection to ``endpoint`` must find there."""
        key = self.keys.get(endpoint)
        if key is None:
            raise TransportFailed(
                f"no CURVE key known for {endpoint}: give it with the seed "
                f"({endpoint};KEY), or put the node's certificate in the trust directory"
            )
        return key

    def _on_router_monitor(self, frames: list[bytes]) -> None:
        """A client's handshake failed (``Handshakes.inbound_failed``), or a connection
        to the ROUTER ended. libzmq ends one whose peer sends a frame
        over MAXMSGSIZE (its decoder fails, and the engine drops the connection with
        every request on it) and says so only as this event, the same as when the peer
        closed it: the two cannot be told apart, so both are counted, and the log line
        names what to check. INFO, not WARNING: most connections that end were closed
        by their peer (an operator command that has its answer, say)."""
        if len(frames) != 2 or len(frames[0]) < 6:
            return
        event = int.from_bytes(frames[0][:2], "little")
        if is_failure(event):
            self._failed_unended += 1
            self.handshakes.inbound_failed(event, int.from_bytes(frames[0][2:6], "little"))
            return
        if event != _EVENT_DISCONNECTED:
            return
        if self._failed_unended:
            # Its handshake failed (events name no connection: one end per failure is
            # left out, whichever connection it is): it was never up, so not dropped.
            self._failed_unended -= 1
            return
        self.connections_dropped += 1
        count = self.connections_dropped
        if count == 1 or count % 1000 == 0:
            log.info(
                "an inbound connection ended (%d so far): its peer closed it, or it sent a "
                "frame over max_message_size=%d, which libzmq drops with its connection and "
                "every request on it; if peers send larger messages, raise max_message_size "
                "on this node or send smaller ones",
                count,
                self.max_message_size,
            )

    @staticmethod
    def _bind(
        sock: zmq.Socket[bytes], host: str, port: int, advertise: str, flag: str, what: str
    ) -> str:
        # Not retryable: the same settings fail the same way, so the message names the
        # setting to change (as the node command's flag; the setting has the same name).
        addr = f"[{host}]" if ":" in host else host
        try:
            sock.bind(f"tcp://{addr}:{port or '*'}")
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE:
                raise ConfigError(
                    f"port {port} for the {what} socket is in use on {host}; choose another "
                    f"{flag}, or 0 for any free port"
                ) from None
            raise ConfigError(
                f"cannot bind the {what} socket to {host}:{port or '*'} "
                f"({zmq.strerror(exc.errno or 0)}); is --bind an address of this host?"
            ) from None
        bound_port = sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
        shown = (advertise or host).strip("[]")
        if shown in ("0.0.0.0", "*", "::"):
            raise ConfigError(
                f"bound to {host}: peers cannot connect to that; set --advertise to this "
                "host's address on the LAN"
            )
        shown = f"[{shown}]" if ":" in shown else shown
        return f"tcp://{shown}:{bound_port}"

    # outbound requests ----------------------------------------------------------------

    def dealer(self, endpoint: str) -> Dealer:
        """The DEALER to ``endpoint``, made on first use; ``TransportFailed`` if it cannot be."""
        found = self.dealers.get(endpoint)
        if found is None:
            try:
                found = Dealer(self, endpoint)
            except zmq.ZMQError as exc:
                raise TransportFailed(self._no_socket(endpoint, exc)) from None
            self.dealers[endpoint] = found
        return found

    def _no_socket(self, endpoint: str, exc: zmq.ZMQError) -> str:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return (
                f"cannot open a socket for {endpoint}: too many sockets ({exc}); "
                "raise max_peers, or the open-file limit (ulimit -n)"
            )
        return f"cannot connect to {endpoint!r}: {exc}"

    def set_peer_limit(self, endpoint: str, max_message_size: int) -> None:
        """The largest message the peer at ``endpoint`` takes (it advertises it)."""
        self.dealer(endpoint).limit = min(self.batch_limit, max_message_size)

    def send_request(
        self, endpoint: str, header: bytes, payload: bytes, rid: int, now: bool = True
    ) -> None:
        """Hand a request to the peer's DEALER, or raise ``TransportFailed`` (not sent).

        ``now``: send at once (nothing else is in flight to that peer); otherwise the
        request joins the peer's batch, sent at the end of the loop iteration, and if
        that send fails ``on_unsent`` gets its ``rid`` instead of this raising.
        """
        found = self.dealers.get(endpoint)
        if found is None:
            found = self.dealer(endpoint)
        box = found.outbox
        if box is None and not now:
            box = found.outbox = Outbox()
            self._corked.append(found)
            self._schedule_flush()
        if box is not None:
            if box.add(header, payload, found.limit, rid):
                if len(box.records) >= BATCH_RECORDS:
                    self._flush_dealer(found)
                return
            self._flush_dealer(found)  # full: send what it holds, then this one alone
        try:
            send_frames(found.sock, (header, payload))
        except zmq.ZMQError as exc:
            raise TransportFailed(self._not_sent(endpoint, exc)) from None
        found.reader.after_send()

    def _not_sent(self, endpoint: str, exc: zmq.ZMQError) -> str:
        if exc.errno == zmq.EAGAIN:
            return f"no connection to {endpoint}, or its queue is full ({self.hwm} messages)"
        return f"sending to {endpoint} failed: {exc}"

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def unsend(self, dealer: Dealer, why: str) -> None:
        """Fail the requests waiting in ``dealer``'s outbox as not delivered."""
        box = dealer.outbox
        if box is not None and box.records:
            rids = box.clear()
            if self.on_unsent is not None:
                self.on_unsent(rids, f"{dealer.endpoint} {why}")

    def _flush_dealer(self, dealer: Dealer) -> None:
        box = dealer.outbox
        if box is None or not box.records:
            return
        count = len(box.records)
        frame, rids = box.take()
        try:
            if dealer.sock.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK)
            _send(dealer.sock, frame, _NOBLOCK)
        except zmq.ZMQError as exc:
            if self.on_unsent is not None:
                self.on_unsent(rids, self._not_sent(dealer.endpoint, exc))
            return
        self.batches_sent += 1
        self.batch_records[min(count, BATCH_RECORDS)] += 1
        dealer.reader.after_send()

    def flush(self) -> None:
        """Send every batch that waits for the end of this loop iteration."""
        self._flush_scheduled = False
        corked, self._corked = self._corked, []
        for dealer in corked:
            self._flush_dealer(dealer)
            dealer.outbox = None
        if self._flush_replies() and self._router_reader is not None:
            self._router_reader.after_send()

    def drop_peer(self, endpoint: str, pub_endpoint: str) -> None:
        found = self.dealers.pop(endpoint, None)
        if found is not None:
            found.close()
        self.unsubscribe_from(pub_endpoint)

    def resubscribe(self, pub_endpoint: str) -> None:
        """Open ``pub_endpoint``'s SUB afresh, after reading what its old one holds.

        libzmq does not reconnect a connection it ended on a protocol error (a frame
        over this node's MAXMSGSIZE, say): that publisher would never be heard again.
        """
        found = self.subscribers.pop(pub_endpoint, None)
        if found is None:
            return
        found.reader.read_all()
        found.close()
        self.subscribe_to(pub_endpoint)

    def unsubscribe_from(self, pub_endpoint: str) -> None:
        """Close the SUB to ``pub_endpoint`` (what it had queued unread goes with it)."""
        found = self.subscribers.pop(pub_endpoint, None)
        if found is not None:
            found.close()

    # inbound requests -------------------------------------------------------------------

    @property
    def arrival(self) -> float:
        """Monotonic time at which the request being handled was read."""
        assert self._router_reader is not None
        return self._router_reader.batch_started

    def reply(self, ident: bytes, header: bytes, payload: bytes, now: bool = True) -> bool:
        """Send ``[identity, header, payload]`` back; False when the caller is gone.

        ``now`` as for ``send_request``. While the ROUTER is being read (a handler that
        finished without waiting, as eager tasks do), the first reply to a caller goes
        at once and the next ones to it join a batch that goes at the end of that pass.
        A reply that joins a batch returns True; a batch that cannot go is counted with
        the other undelivered replies.
        """
        reader = self._router_reader
        if reader is None or self.router is None:
            self._undelivered(zmq.ZMQError(zmq.ENOTSOCK), 1)
            return False
        box = self._reply_boxes.get(ident)
        if box is None and not now:
            box = self._reply_boxes[ident] = Outbox()
            self._schedule_flush()
        elif box is None and reader.reading:
            # The first reply to that caller in this pass goes at once; an empty box
            # makes the next ones wait for the end of the pass, as one batch.
            self._reply_boxes[ident] = Outbox()
        if box is not None:
            if box.add(header, payload, self.batch_limit):
                if len(box.records) >= BATCH_RECORDS:
                    self._flush_reply(ident, box)
                    reader.after_send()
                return True
            self._flush_reply(ident, box)  # full: send what it holds, then this one alone
        try:
            send_frames(self.router, (ident, header, payload))
        except zmq.ZMQError as exc:
            self._undelivered(exc, 1)
            return False
        finally:
            reader.after_send()
        return True

    def _flush_replies(self) -> bool:
        """Send every reply batch now; True if anything was sent."""
        if not self._reply_boxes:
            return False
        boxes, self._reply_boxes = self._reply_boxes, {}
        sent = False
        for ident, box in boxes.items():
            sent = self._flush_reply(ident, box) or sent
        return sent

    def _flush_reply(self, ident: bytes, box: Outbox) -> bool:
        count = len(box.records)
        if not count:
            return False
        frame, _ = box.take()
        if self.router is None or self.router.closed:
            self._undelivered(zmq.ZMQError(zmq.ENOTSOCK), count)
            return False
        try:
            send_frames(self.router, (ident, frame))
        except zmq.ZMQError as exc:
            self._undelivered(exc, count)
            return False
        self.batches_sent += 1
        self.batch_records[min(count, BATCH_RECORDS)] += 1
        return True

    def _undelivered(self, exc: zmq.ZMQError, count: int) -> None:
        # EHOSTUNREACH: the caller disconnected; EAGAIN: its queue is full.
        before = self.dropped_replies
        self.dropped_replies += count
        if before == 0 or before // 1000 != self.dropped_replies // 1000:
            log.warning("reply not delivered (%s); %d so far", exc, self.dropped_replies)

    # PUB/SUB ------------------------------------------------------------------------------

    def subscribe_to(self, pub_endpoint: str) -> None:
        """Open a SUB to ``pub_endpoint`` (subscribed to ``topics``); ``TransportFailed``
        if it cannot be."""
        if pub_endpoint in self.subscribers or not self.connecting:
            return
        if len(self.subscribers) >= self.max_subscriptions:
            raise TransportFailed(
                f"cannot subscribe to {pub_endpoint}: {len(self.subscribers)} PUB endpoints "
                "subscribed to already, as many as max_peers + max_addresses allow; raise them"
            )
        try:
            found = Subscriber(self, pub_endpoint)
        except zmq.ZMQError as exc:  # no socket to be had
            raise TransportFailed(self._no_socket(pub_endpoint, exc)) from None
        self.subscribers[pub_endpoint] = found

    def set_topics(self, topics: set[bytes], previous: set[bytes]) -> None:
        """Subscribe every SUB, and those opened later, to ``topics`` instead of
        ``previous``."""
        self.topics = set(topics)
        for found in self.subscribers.values():
            found.set_topics(topics, previous)

    def broadcast(self, topic: bytes, header: bytes, payload: bytes) -> None:
        """Publish. PUB never blocks: a subscriber whose queue is full misses the frame."""
        assert self.pub is not None
        with contextlib.suppress(zmq.Again):  # PUB drops rather than refuse; kept for safety
            send_frames(self.pub, (topic, header, payload))

    # shutdown -----------------------------------------------------------------------------

    def close(self) -> None:
        self.flush()  # best effort: LINGER=0 drops what the I/O thread has not sent
        for dealer in self.dealers.values():
            dealer.close()
        self.dealers.clear()
        for found in self.subscribers.values():
            found.close()
        self.subscribers.clear()
        if self._router_monitor is not None and self.router is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.router.disable_monitor()
        for reader in (self._router_monitor, self._router_reader, self._zap_reader):
            if reader is not None:
                reader.close()
        # destroy(), not term(): it first closes every socket still open on the context
        # (those of a failed bind have no reader; one whose setsockopt raised has not
        # even a name here), where term() would wait for them forever.
        self.ctx.destroy(LINGER)


__all__ = ["Dealer", "LoopBudget", "Outbox", "Reader", "Subscriber", "Transport", "sockets_needed"]

"""Events: publish, receive, count the sequence gaps, keep the SUB sockets' topics."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from ._inbound import Rejections
from .errors import CatgaError, ProtocolError, SerializationFailed, ValidationFailed
from .mediator import Context, Mediator
from .messages import Event
from .protocol import (
    DECODE_ERRORS,
    ENCODE_ERRORS,
    FLAG_ZSTD,
    HEARTBEAT_TOPIC,
    TRACE_ID_LIMIT,
    Codec,
    Header,
    Kind,
    encode_failure,
    encode_header,
    topic_for,
)
from .system import Deliver
from .transport import Transport

if TYPE_CHECKING:
    from ._compression import Zstd
    from .tracing import Outgoing, Spans

#: publish() yields to the event loop once per this many events.
PUBLISH_YIELD: Final = 64

#: Sequence numbers tracked for gap counting, one per (member, event type); a pair past
#: this is not tracked (its gaps go uncounted) until a member goes and frees its pairs.
MAX_SEEN: Final = 65_536
#: A jump further ahead than this is no loss but a broken or forged frame: a publisher
#: at 100,000 events/s whose subscriber missed 10 s of them gets this far.
MAX_SEQ_JUMP: Final = 1_000_000

_EVT: Final = int(Kind.EVT)


class EventBus:
    """This node's side of publish/subscribe, local subscribers included."""

    def __init__(
        self,
        *,
        node_id: str,
        max_message_size: int,
        mediator: Mediator,
        codec: Codec,
        transport: Transport,
        reject: Rejections,
        stats: dict[str, int],
        is_member: Callable[[str], bool],
        on_traffic: Callable[[str, str], bool],
    ) -> None:
        self.node_id = node_id
        self.max_message_size = max_message_size
        self.mediator = mediator
        self.codec = codec
        self.transport = transport
        self.reject = reject
        self.stats = stats
        #: Gaps are counted only for members: anyone can claim any ``source`` on PUB/SUB,
        #: and a table keyed by claims grows with them.
        self.is_member = is_member
        #: (source, PUB endpoint the event was read from): proof of life for a member
        #: heard on the PUB it announced, and only then; False for a member's id read
        #: from another PUB (a forgery: dropped).
        self.on_traffic = on_traffic
        self._seq: dict[str, int] = {}  # type name -> last sequence number published
        self._seen: dict[tuple[str, str], int] = {}  # (source, type) -> last received
        self._topics: set[bytes] = set()
        #: OpenTelemetry spans of this node's publishes; None: it does not trace.
        self.spans: Spans | None = None
        #: Events of more bytes than this are compressed (see ``compress``): the one
        #: compare a publish costs when compression is off.
        self.compress_over = sys.maxsize
        self.zstd: Zstd | None = None
        self._all_decode: Callable[[], bool] = bool
        self.update_topics()

    def compress(self, zstd: Zstd, all_decode: Callable[[], bool]) -> None:
        """Compress large events when ``all_decode()`` (every member decodes zstd: a PUB
        frame goes to every subscriber alike), and decode events compressed with it."""
        self.zstd = zstd
        self.compress_over = zstd.threshold
        self._all_decode = all_decode

    async def publish(self, event: Event, trace: str, span: Outgoing | None = None) -> None:
        """Publish ``event`` (see ``Node.publish``); ``span``: its PRODUCER span, whose
        W3C context goes in the header (None: no tracing)."""
        if not isinstance(event, Event):
            raise ValidationFailed(
                f"publish() takes an Event, got {type(event).__qualname__}; use send() for requests"
            )
        if type(trace) is not str and not isinstance(trace, str):
            # Receivers could not decode its header: they would drop it unseen.
            raise ValidationFailed(
                f"current_trace must be a str, got {type(trace).__qualname__} {trace!r:.80}"
            )
        if len(trace) > TRACE_ID_LIMIT:
            raise ValidationFailed(
                f"current_trace is {len(trace)} characters, over the {TRACE_ID_LIMIT} "
                "a frame header takes"
            )
        name = type(event).__wire_name__
        try:
            payload = self.codec.encode(event)
        except ENCODE_ERRORS as exc:
            raise SerializationFailed(
                f"{name} could not be encoded: {encode_failure(event, exc)}"
            ) from None
        if len(payload) > self.max_message_size:
            raise SerializationFailed(
                f"{name} is {len(payload)} bytes, over max_message_size "
                f"{self.max_message_size}; publish less or raise it on every node"
            )
        flags = 0
        if len(payload) > self.compress_over and self.zstd is not None and self._all_decode():
            packed = self.zstd.pack(payload)
            if packed is not None:
                payload, flags = packed, FLAG_ZSTD
        seq = self._seq.get(name, 0) + 1
        if span is None:
            header = encode_header(_EVT, seq, name, self.node_id, 0, flags, trace)
        else:
            header = encode_header(
                _EVT,
                seq,
                name,
                self.node_id,
                0,
                flags,
                trace,
                0,
                0,
                span.traceparent,
                span.tracestate,
            )
        # Only once the header encoded: a number never sent would be a gap to subscribers.
        self._seq[name] = seq
        self.transport.broadcast(topic_for(name), header, payload)
        self.stats["events_published"] += 1
        if name in self.mediator.subscribers:
            ctx = Context(name, self.node_id, self.node_id, seq, trace)
            if span is not None:
                ctx.traceparent, ctx.tracestate = span.traceparent, span.tracestate
            self.mediator.deliver(name, event, ctx)
        if self.stats["events_published"] % PUBLISH_YIELD == 0:
            await asyncio.sleep(0)

    def on_event(self, header: Header, payload: bytes, pub_endpoint: str) -> None:
        """An event read from the PUB socket at ``pub_endpoint``."""
        name = header.type_name
        subs = self.mediator.subscribers.get(name)
        # Anyone's PUB may name any node as an event's source: only one read from the
        # source's own PUB shows it alive (``on_traffic`` checks which), and one that
        # names a member but comes from another PUB is not that member's.
        if not self.on_traffic(header.source, pub_endpoint):
            self.reject(
                header.source,
                "event-connection",
                f"an event {name} naming {header.source!r} read from the PUB at "
                f"{pub_endpoint}, which is not that member's; dropped",
            )
            return
        if not subs:
            return
        if self.is_member(header.source) and not self._sequence_ok(header, name):
            return
        if header.flags & FLAG_ZSTD:
            try:
                if self.zstd is None:
                    raise ProtocolError(
                        f"event {name} came compressed with zstd, which this node does not "
                        "decode (compression = none)"
                    )
                payload = self.zstd.unpack(payload)
            except ProtocolError as exc:
                self.reject(header.source, f"decompress:{name}", exc.message)
                return
        try:
            event = self.mediator.decoder(subs[0].message_type).decode(payload)
        except DECODE_ERRORS as exc:
            self.reject(header.source, f"event:{name}", f"event {name} does not decode: {exc}")
            return
        self.stats["events_received"] += 1
        self.mediator.deliver(
            name,
            event,
            Context(
                name,
                self.node_id,
                header.source,
                header.request_id,
                header.trace_id,
                0.0,
                header.traceparent,
                header.tracestate,
            ),
        )

    def _sequence_ok(self, header: Header, name: str) -> bool:
        """Note a member's sequence number and count the events missed before it; False
        (and a rejection) for a jump no real gap explains."""
        key = (header.source, name)
        seq = header.request_id
        last = self._seen.get(key)
        if last is not None and seq > last + 1:
            missed = seq - last - 1
            if missed > MAX_SEQ_JUMP:
                self.reject(
                    header.source,
                    f"event-seq:{name}",
                    f"event {name} sequence jumps from {last} to {seq}",
                )
                return False
            self.stats["events_lost"] += missed
        if last is not None or len(self._seen) < MAX_SEEN:
            self._seen[key] = seq
        return True

    # a client's events: handed over by request ---------------------------------------

    async def hand_over(
        self,
        event: Event,
        trace: str,
        targets: list[str],
        send: Callable[[Deliver, str, str], Awaitable[int]],
    ) -> dict[str, int | CatgaError]:
        """Publish as a client does, with no PUB socket: a ``Deliver`` request to each
        node in ``targets`` (the live members subscribing to the type), at once, and to
        this node's own subscribers. Per target node: the subscribers it queued the
        event for, or the error that kept it from them. ``send(request, node, trace)``
        sends a request to one node."""
        if not isinstance(event, Event):
            raise ValidationFailed(
                f"publish() takes an Event, got {type(event).__qualname__}; use send() for requests"
            )
        name = type(event).__wire_name__
        try:
            payload = self.codec.encode(event)
        except ENCODE_ERRORS as exc:
            raise SerializationFailed(
                f"{name} could not be encoded: {encode_failure(event, exc)}"
            ) from None
        request = Deliver(type_name=name, payload=payload)
        answers = await asyncio.gather(
            *(send(request, node, trace) for node in targets), return_exceptions=True
        )
        self.stats["events_published"] += 1
        if name in self.mediator.subscribers:
            self.mediator.deliver(name, event, Context(name, self.node_id, self.node_id, 0, trace))
        found: dict[str, int | CatgaError] = {}
        for node, answer in zip(targets, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, CatgaError):
                raise answer  # not a node's answer: a bug, or this task's cancellation
            found[node] = answer
        return found

    def on_handed(self, name: str, payload: bytes, source: str, trace: str) -> int:
        """An event handed over by a ``Deliver`` request: to this node's subscribers of
        ``name``; how many it was queued for. Not read from a PUB, so it proves nothing
        about ``source`` and has no sequence number to check."""
        subs = self.mediator.subscribers.get(name)
        if not subs:
            return 0
        try:
            event = self.mediator.decoder(subs[0].message_type).decode(payload)
        except DECODE_ERRORS as exc:
            raise ValidationFailed(f"event {name} does not decode: {exc}") from None
        self.stats["events_received"] += 1
        return self.mediator.deliver(name, event, Context(name, self.node_id, source, 0, trace))

    def forget_source(self, node_id: str) -> None:
        """A node is gone: its sequence numbers start again if it comes back."""
        for key in [k for k in self._seen if k[0] == node_id]:
            del self._seen[key]

    def update_topics(self) -> None:
        """Subscribe the SUB sockets to heartbeats and to the types subscribed here."""
        topics = {HEARTBEAT_TOPIC} | {topic_for(n) for n in self.mediator.subscribers}
        self.transport.set_topics(topics, self._topics)
        self._topics = topics

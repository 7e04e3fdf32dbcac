"""The wire: frame layout, envelope structs, encode and decode.

Requests, replies and errors travel DEALER -> ROUTER -> DEALER as ZMTP multipart
``[header, payload]`` (the ROUTER adds and strips the peer identity frame), or, several
to one peer at once, as a single batch frame: a msgpack array of ``[header, payload]``
records, with each payload embedded as its own msgpack value (see ``transport``). Events and
heartbeats travel PUB -> SUB as ``[topic, header, payload]``; the topic is the event's
wire name plus a NUL, so ZeroMQ's prefix filter at the publisher cannot confuse
``shop.Order`` with ``shop.OrderLine``.

The header is an array-like msgpack struct: small and fast to decode, and a node can
route a request by ``type_name`` without decoding its payload. The payload is the
message's own msgpack bytes.

Every decode here is typed and bounded: a frame that does not decode raises
``ProtocolError`` (never anything else) and the caller counts and drops or answers it.
"""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Annotated, Any, Final

import msgspec
import msgspec.inspect

from .errors import ProtocolError, ValidationFailed

#: Bumped on any incompatible change of the header or of a built-in body.
PROTOCOL_VERSION: Final = 4

#: Topic of heartbeat and BYE frames on the PUB socket. Wire names cannot start with "!".
HEARTBEAT_TOPIC: Final = b"!hb\x00"


class Kind(IntEnum):
    REQ = 1
    REP = 2
    ERR = 3
    EVT = 4
    HB = 5
    BYE = 6


_KINDS: Final = frozenset(int(k) for k in Kind)

#: Header flags.
FLAG_NONE: Final = 0
#: The payload is a msgpack bin holding a zstd frame (see ``_compression``). Sent only to
#: a node whose heartbeats list "zstd" in ``codecs``: a node that does not decode it, of
#: this release or an older one, never sees the flag, so it needs no new protocol version.
FLAG_ZSTD: Final = 1


#: The longest string each header field takes; a longer one fails the header's decode, so
#: it is a counted rejection and never reaches a table or a log line. A node id is at most
#: 64 characters (config), a wire name ``module.QualName`` fits in 256, a W3C
#: ``traceparent`` is 55 (version 00; later versions may add fields, hence 128) and a
#: ``tracestate`` is what W3C asks a vendor to pass on, 512 (OpenTelemetry's bound too).
MAX_TYPE_NAME: Final = 256
MAX_SOURCE: Final = 64
MAX_TRACE_ID: Final = 128
MAX_TRACEPARENT: Final = 128
MAX_TRACESTATE: Final = 512
#: The same for a heartbeat's strings: ``tcp://`` + a 253-character host name + a port
#: fits in an endpoint, a cluster name is at most 63 characters (config).
MAX_ENDPOINT: Final = 300
MAX_CLUSTER: Final = 64
MAX_STATUS: Final = 16

TypeName = Annotated[str, msgspec.Meta(max_length=MAX_TYPE_NAME)]
NodeId = Annotated[str, msgspec.Meta(max_length=MAX_SOURCE)]
Endpoint = Annotated[str, msgspec.Meta(max_length=MAX_ENDPOINT)]
ClusterName = Annotated[str, msgspec.Meta(max_length=MAX_CLUSTER)]
Status = Annotated[str, msgspec.Meta(max_length=MAX_STATUS)]

#: Metadata are labels (zone, rack, version): at most MAX_METADATA_ENTRIES pairs, each
#: key a name of up to MAX_METADATA_KEY characters, each value up to MAX_METADATA_VALUE
#: characters with no control character. Config refuses other metadata when a node is
#: built, and heartbeats and ``Info`` answers are decoded with the same bounds.
MAX_METADATA_ENTRIES: Final = 256
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 1024

#: A metadata key: a name, as a label key is (``zone``, ``app.kubernetes.io/name``).
#: ``\A`` and ``\Z``: msgspec matches with re.search, and ``$`` would also match
#: before a final newline ("zone\n").
METADATA_KEY_PATTERN: Final = r"\A[A-Za-z0-9][A-Za-z0-9._/-]*\Z"
#: No C0 or C1 control character (newline, NUL, ESC...) nor a Unicode line separator:
#: such text would break the log lines and the tables it is shown in.
NO_CONTROL_PATTERN: Final = r"\A[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z"
MetadataKey = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_METADATA_KEY, pattern=METADATA_KEY_PATTERN),
]
MetadataValue = Annotated[
    str, msgspec.Meta(max_length=MAX_METADATA_VALUE, pattern=NO_CONTROL_PATTERN)
]
Metadata = Annotated[
    dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=MAX_METADATA_ENTRIES)
]

#: The bodies' other strings and lists, bounded the same way: a frame over a bound fails
#: its decode, so it is a counted rejection (or, for an ERR reply, a ProtocolError that
#: ends the caller's request) and is never stored. Generous for real use:
#: - an error message of 8 KiB holds any useful exception text; a node cuts longer
#:   messages of its own to fit (``encode_error``), so peers never refuse them;
#: - an error code is a name such as ``SERIALIZATION_FAILED``; an error type is an
#:   exception's class name;
#: - a node handles (and subscribes to) at most MAX_HANDLES message types: the
#:   mediator refuses more, so a heartbeat never carries more names than peers take;
#: - an ``Info`` answer passes on at most MAX_INFO_PEERS addresses (the sender cuts its
#:   list to that), over the 8,000 members a node keeps at most (``max_peers``).
MAX_ERROR_MESSAGE: Final = 8192
MAX_ERROR_CODE: Final = 64
MAX_ERROR_TYPE: Final = 256
MAX_HANDLES: Final = 4096
MAX_INFO_PEERS: Final = 16_384
MAX_VERSION_TEXT: Final = 64
#: Shown where a message was cut to fit MAX_ERROR_MESSAGE.
TRUNCATED: Final = "… (truncated)"

TypeNames = Annotated[list[TypeName], msgspec.Meta(max_length=MAX_HANDLES)]


#: A CURVE public key in Z85: 40 characters (or "" for none).
PublicKey = Annotated[str, msgspec.Meta(max_length=40)]


class Header(msgspec.Struct, array_like=True, gc=False):
    """Every frame's first part (after the topic on PUB/SUB).

    ``budget_ms`` is the time the sender had left when it sent the frame, not an
    absolute time: like gRPC's ``grpc-timeout``, a relative budget survives clocks that
    disagree between hosts. 0 means no deadline.

    For REQ/REP/ERR ``request_id`` pairs a reply with its request; for EVT it is the
    publisher's sequence number for that topic, so subscribers can count gaps.

    ``sent_ms`` (REQ, HB) is the sender's monotonic clock when it sent the frame, in ms:
    never compared with another node's clock, only with the same sender's heartbeats,
    which tell a receiver how late it reads that sender's frames (see ``ClockOffset``).
    0: not given.

    ``trace_id`` is the caller's own correlation id (``send(trace_id=)``); ``traceparent``
    and ``tracestate`` (REQ, EVT) are the W3C trace context of the sender's span, when
    it traces (see ``catga_zmq.tracing``), "" otherwise.

    ``handled_us`` (REP) is how long the handler's node took to answer, from the start
    of its handling to the reply, in µs of its monotonic clock; 0: not given.
    """

    version: int
    kind: int
    request_id: int
    type_name: TypeName
    source: NodeId
    budget_ms: int = 0
    flags: int = 0
    trace_id: Annotated[str, msgspec.Meta(max_length=MAX_TRACE_ID)] = ""
    sent_ms: int = 0
    handled_us: int = 0
    traceparent: Annotated[str, msgspec.Meta(max_length=MAX_TRACEPARENT)] = ""
    tracestate: Annotated[str, msgspec.Meta(max_length=MAX_TRACESTATE)] = ""


class ErrorBody(msgspec.Struct, array_like=True, gc=False):
    """Payload of an ERR frame."""

    code: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_CODE)]
    message: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_MESSAGE)]
    error_type: Annotated[str, msgspec.Meta(max_length=MAX_ERROR_TYPE)] = ""
    retryable: bool = False


class HeartbeatBody(msgspec.Struct, array_like=True, gc=False):
    """Payload of an HB or BYE frame.

    Carries everything a peer needs to route to this node, so membership never waits
    on discovery once the first heartbeat has arrived.
    """

    node_id: NodeId
    incarnation: int
    seq: int
    status: Status
    cluster: ClusterName
    endpoint: Endpoint
    pub_endpoint: Endpoint
    load: float = 0.0
    in_flight: int = 0
    weight: int = 1
    interval_ms: int = 500
    handles: TypeNames = []
    subscribes: TypeNames = []
    metadata: Metadata = {}
    #: The largest message this node takes (its MAXMSGSIZE): a caller refuses a larger
    #: request before sending it, since libzmq would drop the whole connection.
    max_message_size: int = 0
    #: Its CURVE public key (Z85), when its cluster uses CURVE: the key its ROUTER and
    #: PUB serve with.
    public_key: PublicKey = ""
    #: The payload codecs this node decodes ("zstd"); a sender compresses for it only
    #: with one of these.
    codecs: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=16)]], msgspec.Meta(max_length=8)
    ] = []


#: What decoding untrusted bytes may raise: msgspec reports bad UTF-8 in a str field
#: as UnicodeDecodeError, not as DecodeError, and a value nested deeper than the
#: interpreter's recursion limit (about a thousand one-byte arrays, even where a Raw
#: only skips over it) as RecursionError. Lengths are checked against the frame before
#: anything is allocated, so a forged length is a DecodeError, never a MemoryError.
DECODE_ERRORS: Final = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    UnicodeDecodeError,
    RecursionError,
)

_header_encoder: Final = msgspec.msgpack.Encoder()
#: Decodes a header without checking version or kind (the node answers those itself).
header_decoder: Final = msgspec.msgpack.Decoder(Header)
_error_decoder: Final = msgspec.msgpack.Decoder(ErrorBody)
_heartbeat_decoder: Final = msgspec.msgpack.Decoder(HeartbeatBody)

encode = _header_encoder.encode

#: A batch frame, decoded in one call; payloads stay undecoded views into the frame.
batch_decoder: Final = msgspec.msgpack.Decoder(list[tuple[Header, msgspec.Raw]])
#: The same, when one header in it does not decode: the good records are still served.
raw_batch_decoder: Final = msgspec.msgpack.Decoder(list[tuple[msgspec.Raw, msgspec.Raw]])


def encode_batch(records: list[tuple[msgspec.Raw, msgspec.Raw]]) -> bytes:
    """A batch frame from ``(header, payload)`` records, both already msgpack."""
    return _header_encoder.encode(records)


#: What encoding a value may raise besides msgspec.EncodeError: TypeError for a type it
#: does not know, UnicodeEncodeError for a str that is not valid UTF-8 (a lone surrogate
#: such as "\ud800"), OverflowError for an int outside the 64-bit range, RecursionError
#: for a value nested deeper than the interpreter's recursion limit.
ENCODE_ERRORS: Final = (
    msgspec.EncodeError,
    TypeError,
    UnicodeEncodeError,
    OverflowError,
    RecursionError,
)


def encode_failure(value: Any, exc: BaseException) -> str:
    """Why ``value`` did not encode, naming its first field that fails alone, if any.

    Only called once encoding has failed: the search costs nothing on the way that works.
    """
    fields = getattr(type(value), "__struct_fields__", ())
    for name in fields:
        try:
            _header_encoder.encode(getattr(value, name))
        except ENCODE_ERRORS as field_exc:
            return f"field {name!r}: {field_exc}"
    return str(exc)


def encode_header(
    kind: int,
    request_id: int,
    type_name: str,
    source: str,
    budget_ms: int = 0,
    flags: int = 0,
    trace_id: str = "",
    sent_ms: int = 0,
    handled_us: int = 0,
    traceparent: str = "",
    tracestate: str = "",
) -> bytes:
    """A frame's header; ``ValidationFailed`` naming the field that does not encode."""
    try:
        # A tuple encodes to the same msgpack array as the array-like Header, at half the cost.
        return _header_encoder.encode(
            (
                PROTOCOL_VERSION,
                kind,
                request_id,
                type_name,
                source,
                budget_ms,
                flags,
                trace_id,
                sent_ms,
                handled_us,
                traceparent,
                tracestate,
            )
        )
    except ENCODE_ERRORS as exc:
        # Only what a caller passed can fail here (a trace id, in practice): name it.
        fields: tuple[tuple[str, object], ...] = (
            ("request_id", request_id),
            ("type_name", type_name),
            ("source", source),
            ("budget_ms", budget_ms),
            ("flags", flags),
            ("trace_id", trace_id),
            ("traceparent", traceparent),
            ("tracestate", tracestate),
        )
        for name, value in fields:
            try:
                _header_encoder.encode(value)
            except ENCODE_ERRORS as field_exc:
                raise ValidationFailed(
                    f"{name} {value!r:.80} cannot go in a frame header: {field_exc}"
                ) from None
        raise ValidationFailed(f"a frame header does not encode: {exc}") from None


def header_max_length(field: str) -> int | None:
    """The longest str a receiver's ``Header`` takes in ``field`` (None: any length).

    A sender checks what it puts in a header against this same bound: a longer value
    fails the receiver's decode, and the frame is dropped there unanswered.
    """
    info = msgspec.inspect.type_info(Header)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.name == field:
            return f.type.max_length if isinstance(f.type, msgspec.inspect.StrType) else None
    raise KeyError(field)


#: The longest trace id a sender puts in a header: what the receiver's decode takes.
TRACE_ID_LIMIT: Final = header_max_length("trace_id") or sys.maxsize


def decode_header(data: bytes | memoryview) -> Header:
    """Decode and check a header; ``ProtocolError`` says what is wrong with it."""
    try:
        header = header_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"header does not decode: {exc}") from None
    if header.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"peer {header.source!r} speaks protocol version {header.version}, this node "
            f"speaks {PROTOCOL_VERSION}; run the same catga_zmq protocol on every node"
        )
    if header.kind not in _KINDS:
        raise ProtocolError(f"unknown frame kind {header.kind} from {header.source!r}")
    return header


def decode_error(data: bytes | memoryview) -> ErrorBody:
    try:
        return _error_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"error body does not decode: {exc}") from None


def encode_error(code: str, message: str, error_type: str = "", retryable: bool = False) -> bytes:
    """An ERR body, its strings cut to what a receiver's ``ErrorBody`` takes (a handler's
    exception message can be any length): a longer one would fail the caller's decode."""
    if len(message) > MAX_ERROR_MESSAGE:
        message = truncated(message, MAX_ERROR_MESSAGE)
    if len(error_type) > MAX_ERROR_TYPE or len(code) > MAX_ERROR_CODE:
        error_type = truncated(error_type, MAX_ERROR_TYPE)
        code = code[:MAX_ERROR_CODE]
    return _header_encoder.encode(ErrorBody(code, message, error_type, retryable))


def truncated(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with TRUNCATED."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def decode_heartbeat(data: bytes | memoryview) -> HeartbeatBody:
    try:
        return _heartbeat_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise ProtocolError(f"heartbeat does not decode: {exc}") from None


def topic_for(type_name: str) -> bytes:
    return type_name.encode() + b"\x00"


def type_from_topic(topic: bytes) -> str:
    if not topic.endswith(b"\x00"):
        raise ProtocolError("topic frame does not end with NUL")
    try:
        return topic[:-1].decode()
    except UnicodeDecodeError:
        raise ProtocolError("topic frame is not UTF-8") from None


class Codec:
    """Typed payload encode/decode with decoders cached per type."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self.encode = self._encoder.encode

    def decoder(self, tp: Any) -> msgspec.msgpack.Decoder[Any]:
        try:
            return self._decoders[tp]
        except KeyError:
            dec = self._decoders[tp] = msgspec.msgpack.Decoder(tp)
            return dec

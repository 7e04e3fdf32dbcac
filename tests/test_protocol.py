"""The wire format: headers, error and heartbeat bodies, topics; decoding never crashes."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from catga_zmq.errors import ProtocolError, SerializationFailed
from catga_zmq.protocol import (
    HEARTBEAT_TOPIC,
    PROTOCOL_VERSION,
    ErrorBody,
    Header,
    HeartbeatBody,
    Kind,
    decode_error,
    decode_header,
    decode_heartbeat,
    encode_error,
    encode_header,
    topic_for,
    type_from_topic,
)

_raw = msgspec.msgpack.Encoder()


def _header(version: int = PROTOCOL_VERSION, kind: int = 1, source: str = "peer-1") -> bytes:
    return _raw.encode(Header(version, kind, 7, "shop.GetUser", source))


# headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_header_round_trip(kind: Kind) -> None:
    data = encode_header(int(kind), 2**40 + 3, "shop.GetUser", "users-1", 1500, 0, "trace-9")
    header = decode_header(data)
    assert header == Header(
        PROTOCOL_VERSION, int(kind), 2**40 + 3, "shop.GetUser", "users-1", 1500, 0, "trace-9"
    )
    assert header.kind == kind


def test_header_trace_context_and_handler_time_round_trip() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    data = encode_header(int(Kind.REQ), 1, "t", "s", 0, 0, "", 0, 0, parent, "vendor=x")
    header = decode_header(data)
    assert (header.traceparent, header.tracestate) == (parent, "vendor=x")
    assert (
        decode_header(encode_header(int(Kind.REP), 1, "", "s", handled_us=1234)).handled_us == 1234
    )


def test_header_defaults_round_trip() -> None:
    header = decode_header(encode_header(int(Kind.REQ), 1, "t", "s"))
    assert (header.budget_ms, header.flags, header.trace_id) == (0, 0, "")


def test_header_is_array_like_and_small() -> None:
    data = encode_header(int(Kind.REQ), 1, "a.B", "n")
    assert msgspec.msgpack.decode(data) == [
        PROTOCOL_VERSION,
        1,
        1,
        "a.B",
        "n",
        0,
        0,
        "",
        0,
        0,
        "",
        "",
    ]
    assert len(data) < 20


def test_decode_header_accepts_memoryview() -> None:
    data = encode_header(int(Kind.EVT), 5, "a.B", "n")
    assert decode_header(memoryview(data)).request_id == 5


def test_decode_header_wrong_version() -> None:
    with pytest.raises(ProtocolError, match=r"peer 'old-node' speaks protocol version 99") as info:
        decode_header(_header(version=99, source="old-node"))
    assert info.value.code == "PROTOCOL_ERROR"
    assert isinstance(info.value, SerializationFailed)
    assert f"speaks {PROTOCOL_VERSION}" in info.value.message


@pytest.mark.parametrize("kind", [0, 7, 99, -1])
def test_decode_header_unknown_kind(kind: int) -> None:
    with pytest.raises(ProtocolError, match=rf"unknown frame kind {kind} from 'peer-1'"):
        decode_header(_header(kind=kind))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe garbage",
        b"\xc1",  # never used in msgpack
        _raw.encode([1, 1]),  # too few fields
        _raw.encode(["1", 1, 1, "t", "s"]),  # wrong type
        _raw.encode({"version": 1}),  # a map, not an array
        _header() + b"\x00",  # trailing bytes
        _header()[:-3],  # truncated
    ],
    ids=["empty", "garbage", "reserved", "short", "type", "map", "trailing", "truncated"],
)
def test_decode_header_garbage(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="header does not decode"):
        decode_header(data)


# bodies -------------------------------------------------------------------------------


def test_error_body_round_trip() -> None:
    data = encode_error("HANDLER_FAILED", "bad id 7", "ValueError", True)
    assert decode_error(data) == ErrorBody("HANDLER_FAILED", "bad id 7", "ValueError", True)


def test_error_body_garbage() -> None:
    with pytest.raises(ProtocolError, match="error body does not decode"):
        decode_error(b"\x93\x01\x02\x03")


def test_heartbeat_body_round_trip() -> None:
    body = HeartbeatBody(
        node_id="users-1",
        incarnation=1_700_000_000_123_456_789,
        seq=42,
        status="draining",
        cluster="shop",
        endpoint="tcp://127.0.0.1:5555",
        pub_endpoint="tcp://127.0.0.1:5556",
        load=0.75,
        in_flight=3,
        weight=2,
        interval_ms=250,
        handles=["shop.GetUser", "shop.GetOrder"],
        subscribes=["shop.UserRenamed"],
        metadata={"zone": "a", "version": "1.2"},
    )
    assert decode_heartbeat(msgspec.msgpack.encode(body)) == body


def test_heartbeat_body_defaults() -> None:
    body = HeartbeatBody("n", 1, 1, "alive", "c", "tcp://h:1", "tcp://h:2")
    back = decode_heartbeat(msgspec.msgpack.encode(body))
    assert back.handles == [] and back.subscribes == [] and back.metadata == {}
    assert back.interval_ms == 500 and back.weight == 1


def test_heartbeat_body_wrong_field_type() -> None:
    raw = _raw.encode(["n", "not-an-int", 1, "alive", "c", "e", "p"])
    with pytest.raises(ProtocolError, match="heartbeat does not decode"):
        decode_heartbeat(raw)


# invalid UTF-8 in a str field ------------------------------------------------------------


#: Each is valid msgpack of the right shape except for one str holding the byte 0x80.
BAD_UTF8_HEADER = b"\x95\x01\x01\x07\xa1\x80\xa1s"  # [1, 1, 7, <0x80>, "s"]
BAD_UTF8_ERROR = b"\x92\xa4\x00\x00\x00\x80\xa0"  # [<00 00 00 80>, ""]
BAD_UTF8_HEARTBEAT = _raw.encode(HeartbeatBody("n", 1, 1, "alive", "c", "e", "p")).replace(
    b"\xa1c", b"\xa1\x80", 1
)


def test_bad_utf8_samples_are_well_formed_msgpack() -> None:
    # The samples below are rejected for their UTF-8 only, not for their shape.
    assert msgspec.msgpack.decode(BAD_UTF8_HEADER.replace(b"\x80", b"t")) == [1, 1, 7, "t", "s"]
    assert decode_heartbeat(BAD_UTF8_HEARTBEAT.replace(b"\xa1\x80", b"\xa1c", 1)).cluster == "c"


def test_decode_header_invalid_utf8_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_header(BAD_UTF8_HEADER)


def test_decode_error_invalid_utf8_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_error(BAD_UTF8_ERROR)


def test_decode_heartbeat_invalid_utf8_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_heartbeat(BAD_UTF8_HEARTBEAT)


# hypothesis: decoding arbitrary bytes raises ProtocolError or nothing ------------------------

_DECODERS = (decode_header, decode_error, decode_heartbeat)

_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=10) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=256))
@example(data=BAD_UTF8_ERROR)
def test_decoders_raise_only_protocol_error_on_bytes(data: bytes) -> None:
    for decode in _DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(value=_msgpack_values)
@example(value=[1, 1, 7, b"\x80", "s"])  # bin where str goes: must be ProtocolError too
def test_decoders_raise_only_protocol_error_on_msgpack(value: object) -> None:
    # Well-formed msgpack of the wrong shape goes further into the decoders than noise.
    data = _raw.encode(value)
    for decode in _DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(
        st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=10)),
        min_size=0,
        max_size=10,
    )
)
def test_decode_header_on_header_like_arrays(fields: list[object]) -> None:
    try:
        header = decode_header(_raw.encode(fields))
    except ProtocolError:
        return
    # Whatever got through is a checked header.
    assert header.version == PROTOCOL_VERSION
    assert header.kind in {int(k) for k in Kind}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=1, max_size=64), cut=st.integers(min_value=0, max_value=200))
@example(data=b"\x80", cut=5)
def test_decode_header_on_corrupted_valid_header(data: bytes, cut: int) -> None:
    valid = encode_header(int(Kind.REQ), 1, "shop.GetUser", "users-1", 100, 0, "t")
    cut %= len(valid)
    mangled = valid[:cut] + data + valid[cut + len(data) :]
    with contextlib.suppress(ProtocolError):
        decode_header(mangled)


# topics -------------------------------------------------------------------------------


def test_topic_for_and_back() -> None:
    assert topic_for("shop.Order") == b"shop.Order\x00"
    assert type_from_topic(topic_for("shop.Order")) == "shop.Order"
    assert type_from_topic(topic_for("café.Ünïcode")) == "café.Ünïcode"


def test_topic_prefix_filter_cannot_confuse_types() -> None:
    # ZeroMQ filters by prefix: the NUL ends one name before another may go on.
    assert not topic_for("shop.OrderLine").startswith(topic_for("shop.Order"))


def test_heartbeat_topic_is_not_a_wire_name_topic() -> None:
    assert HEARTBEAT_TOPIC.startswith(b"!")
    assert type_from_topic(HEARTBEAT_TOPIC) == "!hb"


def test_type_from_topic_without_nul() -> None:
    with pytest.raises(ProtocolError, match="does not end with NUL"):
        type_from_topic(b"shop.Order")


def test_type_from_topic_not_utf8() -> None:
    with pytest.raises(ProtocolError, match="not UTF-8"):
        type_from_topic(b"\xff\xfe\x00")


@given(name=st.text(min_size=1, max_size=50))
def test_topic_round_trip_property(name: str) -> None:
    assert type_from_topic(topic_for(name)) == name

"""The request body of the single-frame peers (NATS, gRPC, zerorpc).

The raw baselines send ``[header, payload]`` as two ZeroMQ frames. NATS messages, gRPC
messages and zerorpc arguments are one byte string each, so the peers carry the same
two parts as one msgpack array ``[header, payload]``: the header is ``_common.Envelope``
(array-like, the size of the node's own header) and the payload the 100-byte body.

The server decodes the header, checks it is a request and answers with a reply header
(``kind=REP``, its own source) and the same payload: the same work as the raw echo
servers. The client checks the reply's kind, type name and request id before it hands
the payload to the measurement, which checks the payload itself.
"""

from __future__ import annotations

import msgspec

from benchmarks._common import (
    ECHO_TYPE_NAME,
    KIND_REP,
    KIND_REQ,
    BenchError,
    Envelope,
    ReplyMismatch,
    reply_envelope,
    request_envelope,
)


class Framed(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """``[header, payload]`` as one msgpack array."""

    header: Envelope
    payload: bytes


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Framed).decode


class BadRequest(BenchError):
    """A server got a body that is not an echo request."""


def encode_request(request_id: int, source: str, payload: bytes) -> bytes:
    return _encode(Framed(request_envelope(request_id, source), payload))


def echo_body(body: bytes, source: str) -> bytes:
    """Server side: the reply body for a request body (raises ``BadRequest``)."""
    try:
        framed = _decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed request body: {exc}") from None
    if framed.header.kind != KIND_REQ:
        raise BadRequest(f"not a request: kind {framed.header.kind}")
    return _encode(Framed(reply_envelope(framed.header, source), framed.payload))


def decode_reply(body: bytes, request_id: int) -> bytes:
    """Client side: the payload of a reply body, after checking its header."""
    try:
        framed = _decode(body)
    except msgspec.DecodeError as exc:
        raise ReplyMismatch(f"malformed reply body: {exc}") from None
    header = framed.header
    if (
        header.kind != KIND_REP
        or header.request_id != request_id
        or header.type_name != ECHO_TYPE_NAME
    ):
        raise ReplyMismatch(f"unexpected reply header {header!r} for request {request_id}")
    return framed.payload

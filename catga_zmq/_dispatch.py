"""Frames read from peers' PUB sockets go to the event bus or to the heartbeats, with the
endpoint of the PUB they were read from (each PUB has its own SUB here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ._inbound import Rejections
from .protocol import DECODE_ERRORS, PROTOCOL_VERSION, Header, Kind, header_decoder

_EVT: Final = int(Kind.EVT)
_BEATS: Final = (int(Kind.HB), int(Kind.BYE))

#: (header, payload, endpoint of the PUB it was read from)
Sink = Callable[[Header, bytes, str], None]


def broadcast_dispatcher(
    reject: Rejections, on_event: Sink, on_beat: Sink
) -> Callable[[list[bytes], str], None]:
    """The SUB sockets' frame handler: checks the frame, then hands it on by kind."""

    def dispatch(frames: list[bytes], pub_endpoint: str) -> None:
        if len(frames) != 3:
            reject(pub_endpoint, "pub-frames", f"a broadcast of {len(frames)} frames, expected 3")
            return
        try:
            header = header_decoder.decode(frames[1])
        except DECODE_ERRORS as exc:
            reject(pub_endpoint, "pub-header", f"broadcast header does not decode: {exc}")
            return
        if header.version != PROTOCOL_VERSION:
            reject(
                header.source,
                "version",
                f"protocol version {header.version}, this node speaks {PROTOCOL_VERSION}",
            )
        elif header.kind == _EVT:
            on_event(header, frames[2], pub_endpoint)
        elif header.kind in _BEATS:
            on_beat(header, frames[2], pub_endpoint)
        else:
            reject(header.source, "kind", f"frame kind {header.kind} on PUB/SUB")

    return dispatch

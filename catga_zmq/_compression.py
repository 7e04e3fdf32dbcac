"""Payload compression: zstd for payloads over a threshold, decoded within a bound.

A compressed payload travels as a msgpack bin holding one zstd frame, and its header
carries ``FLAG_ZSTD``: a bin is a msgpack value, so it embeds in a batch record as any
payload does, and the header (routing, tracing) stays readable without decompressing.

A node decodes zstd only when it compresses itself (``compression = "zstd"``), says so in
its heartbeats (``HeartbeatBody.codecs``), and a sender compresses for a peer only when
that peer's last heartbeat named the codec: a peer that runs without the library, or an
older release, never gets a frame it cannot read.

Decompression is bounded by ``max_message_size``: a frame must state its decompressed
size, and one that states more than the bound (a decompression bomb) or none is refused
before anything is allocated. ``zstandard`` is imported only by ``Zstd()``, made only
when a node compresses.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .errors import ConfigError, ProtocolError
from .protocol import DECODE_ERRORS

#: The codec names a heartbeat advertises.
ZSTD: Final = "zstd"

_bin_decoder: Final = msgspec.msgpack.Decoder(bytes)
_bin_encoder: Final = msgspec.msgpack.Encoder()


class Zstd:
    """One node's compressor and decompressor, made once and reused for every frame."""

    __slots__ = (
        "_compress",
        "_content_size",
        "_decompress",
        "_error",
        "max_size",
        "stats",
        "threshold",
    )

    def __init__(self, *, threshold: int, max_size: int, level: int, stats: dict[str, int]) -> None:
        #: Payloads of more bytes than this are compressed.
        self.threshold = threshold
        #: The most a payload may decompress to (the node's ``max_message_size``).
        self.max_size = max_size
        #: The node's counters: ``payloads_compressed`` and ``compression_saved``.
        self.stats = stats
        try:
            import zstandard  # the zstd extra: imported only by a node that compresses
        except ImportError:
            raise ConfigError(
                "compression = zstd needs the zstandard package, which is not installed: "
                "pip install 'catga-zmq[zstd]' (or set compression to none)"
            ) from None

        # write_content_size: receivers refuse a frame that does not state its size.
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        self._compress: Any = compressor.compress
        self._decompress: Any = zstandard.ZstdDecompressor().decompress
        self._content_size: Any = zstandard.frame_content_size
        self._error: type[Exception] = zstandard.ZstdError

    def pack(self, payload: bytes) -> bytes | None:
        """``payload`` compressed, as a msgpack bin; None when that is not smaller."""
        packed = _bin_encoder.encode(self._compress(payload))
        if len(packed) >= len(payload):
            return None
        self.stats["payloads_compressed"] += 1
        self.stats["compression_saved"] += len(payload) - len(packed)
        return packed

    def unpack(self, data: bytes | memoryview | msgspec.Raw) -> bytes:
        """The payload a packed one holds; ``ProtocolError`` saying why it is refused."""
        try:
            frame = _bin_decoder.decode(data)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"a compressed payload is not a msgpack bin: {exc}") from None
        try:
            size: int = self._content_size(frame)
        except self._error as exc:
            raise ProtocolError(f"a compressed payload is not a zstd frame: {exc}") from None
        if size < 0:
            raise ProtocolError(
                "a zstd frame does not state its decompressed size; refused unread "
                "(senders write it)"
            )
        if size > self.max_size:
            raise ProtocolError(
                f"a zstd frame would decompress to {size} bytes, over max_message_size "
                f"{self.max_size}; refused unread"
            )
        try:
            # Allocates the stated size (at most max_size); a frame that holds more or
            # less than it states fails here.
            payload: bytes = self._decompress(frame, max_output_size=self.max_size)
        except self._error as exc:
            raise ProtocolError(f"a zstd frame does not decompress: {exc}") from None
        return payload

"""What every inbound path shares: rejected frames counted and logged once per peer, and
batch frames decoded record by record (a bad record costs only itself)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import msgspec

from .protocol import DECODE_ERRORS, Header, batch_decoder, header_decoder, raw_batch_decoder

log = logging.getLogger("catga_zmq.node")

#: Distinct (peer, problem) pairs remembered to log each problem once per peer.
LOG_ONCE_LIMIT: Final = 4096


class Rejections:
    """Counts rejected frames (``stats["frames_rejected"]``) and logs each problem once
    per peer, so a flood of bad frames cannot flood the log."""

    __slots__ = ("_logged", "stats")

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, peer: str, problem: str, detail: str) -> None:
        self.stats["frames_rejected"] += 1
        key = (peer, problem)
        if key not in self._logged and len(self._logged) < LOG_ONCE_LIMIT:
            self._logged.add(key)
            log.warning("rejected a frame from %s: %s (logged once per peer)", peer, detail)


def decode_batch(
    frame: bytes,
    peer: str,
    what: str,
    reject: Rejections,
    on_traffic: Callable[[str], None],
) -> list[tuple[Header, msgspec.Raw]]:
    """The records of a batch frame, each sender's traffic noted once; a record whose
    header does not decode is rejected, and the others are still served (or resolved)."""
    try:
        records = batch_decoder.decode(frame)
    except RecursionError:
        # Skipping over a Raw recurses too: decoding record by record would only fail
        # the same way a second time, at the same cost.
        reject(peer, f"{what}-batch", f"a {what} batch is nested too deep")
        return []
    except DECODE_ERRORS:
        records = _decode_records(frame, peer, what, reject)
    last = ""
    for header, _ in records:
        if header.source != last:  # one proof of life per sender and batch
            last = header.source
            on_traffic(last)
    return records


def _decode_records(
    frame: bytes, peer: str, what: str, reject: Rejections
) -> list[tuple[Header, msgspec.Raw]]:
    try:
        raw_records = raw_batch_decoder.decode(frame)
    except DECODE_ERRORS as exc:
        reject(peer, f"{what}-batch", f"a {what} batch does not decode: {exc}")
        return []
    good = []
    for raw_header, payload in raw_records:
        try:
            good.append((header_decoder.decode(raw_header), payload))
        except DECODE_ERRORS as exc:
            reject(peer, f"{what}-header", f"a {what} header does not decode: {exc}")
    return good

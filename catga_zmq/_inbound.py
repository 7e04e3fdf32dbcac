"""What every inbound path shares: rejected frames counted and logged once per peer, and
batch frames decoded record by record (a bad record costs only itself)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec

from .protocol import DECODE_ERRORS, Header, batch_decoder, header_decoder, raw_batch_decoder

log = logging.getLogger("catga_zmq.node")

#: Distinct (peer, problem) pairs remembered to log each problem once per peer.
LOG_ONCE_LIMIT: Final = 4096
#: Peer names, problems and details come off the wire: each is cut to this many
#: characters before it is kept or logged, so a table entry or a log line stays small
#: whatever a sender declares.
MAX_PEER: Final = 64
MAX_PROBLEM: Final = 96
MAX_DETAIL: Final = 200
#: At most LOG_BURST lines about new (peer, problem) pairs per LOG_WINDOW (s); the
#: rest are counted and summed up in one line when the window is over.
LOG_BURST: Final = 100
LOG_WINDOW: Final = 10.0


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with the length it had."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


class Rejections:
    """Counts rejected frames (``stats["frames_rejected"]``) and logs each problem once
    per peer, so a flood of bad frames cannot flood the log.

    The pairs already logged are a bounded table, oldest out first: a flood of invented
    peers pushes out old pairs rather than filling the table for good, so a real
    problem that comes after it is still logged. What a flood brings beyond
    ``LOG_BURST`` new pairs in ``LOG_WINDOW`` is counted and logged as one summary line.
    """

    __slots__ = (
        "_clock",
        "_logged",
        "_suppressed",
        "_window_lines",
        "_window_start",
        "reasons",
        "stats",
    )

    def __init__(self, stats: dict[str, int], clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        #: Rejected frames by reason: the problem up to its first ":" ("payload" for
        #: "payload:shop.GetUser"), a word the code chose, so the table stays small.
        self.reasons: dict[str, int] = {}
        self._clock = clock
        # A dict keeps insertion order: the first key is the oldest.
        self._logged: dict[tuple[str, str], None] = {}
        self._window_start = clock()
        self._window_lines = 0
        self._suppressed = 0

    def __call__(self, peer: str, problem: str, detail: str) -> None:
        self.stats["frames_rejected"] += 1
        reason = problem.partition(":")[0][:MAX_PROBLEM]
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        # Slicing a short str returns it unchanged: a known pair costs no copy.
        key = (peer[:MAX_PEER], problem[:MAX_PROBLEM])
        if key in self._logged:
            return
        now = self._clock()
        if now - self._window_start >= LOG_WINDOW:
            if self._suppressed:
                log.warning(
                    "rejected %d more frames with new problems in the last %.0f s, not "
                    "logged one by one",
                    self._suppressed,
                    now - self._window_start,
                )
            self._window_start = now
            self._window_lines = 0
            self._suppressed = 0
        if self._window_lines >= LOG_BURST:
            self._suppressed += 1
            return
        self._window_lines += 1
        if len(self._logged) >= LOG_ONCE_LIMIT:
            del self._logged[next(iter(self._logged))]
        self._logged[key] = None
        log.warning(
            "rejected a frame from %s: %s (logged once per peer)",
            clip(peer, MAX_PEER),
            clip(detail, MAX_DETAIL),
        )


def decode_batch(
    frame: bytes, peer: str, what: str, reject: Rejections
) -> list[tuple[Header, msgspec.Raw]]:
    """The records of a batch frame; a record whose header does not decode is rejected,
    and the others are still served (or resolved). No record is proof of life here:
    each is, once its own checks pass (see ``Membership.on_traffic``)."""
    try:
        return batch_decoder.decode(frame)
    except RecursionError:
        # Skipping over a Raw recurses too: decoding record by record would only fail
        # the same way a second time, at the same cost.
        reject(peer, f"{what}-batch", f"a {what} batch is nested too deep")
        return []
    except DECODE_ERRORS:
        return _decode_records(frame, peer, what, reject)


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

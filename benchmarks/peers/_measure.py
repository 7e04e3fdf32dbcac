"""Latency summary shared by the benchmark process and the zerorpc client process."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks._common import percentile

# Percentiles kept for every latency run (nearest rank, as ``_common.percentile``);
# p50 and p99 go to the table, all of them to the chart and the JSON.
PERCENTILES: tuple[float, ...] = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9)


def pkey(p: float) -> str:
    """JSON key of a percentile: ``p50``, ``p99``, ``p99.9``."""
    return f"p{p:g}"


def summarize_latency(samples_ns: Sequence[int], seconds: float) -> dict[str, float]:
    """Percentiles (µs), min/max/mean (µs), count and wall time of a latency run."""
    us = sorted(s / 1000.0 for s in samples_ns)
    out = {f"{pkey(p)}_us": percentile(us, p) for p in PERCENTILES}
    out.update(
        min_us=us[0],
        max_us=us[-1],
        mean_us=sum(us) / len(us),
        count=float(len(us)),
        seconds=seconds,
    )
    return out

"""A fixed-bucket histogram (Prometheus' cumulative buckets), cheap enough to observe every request."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

LATENCY_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)   # a Modbus transaction
PERIOD_BOUNDS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)    # between two reads of a device


class Histogram:
    """Counts of observations at or below each bound (and in all), and their sum."""

    __slots__ = ("bounds", "counts", "n", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * len(self.bounds)   # per bucket (not cumulative)
        self.n = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.n += 1
        self.total += value

    def snapshot(self) -> dict[str, Any]:
        """`{"buckets": [[le, cumulative count], ...], "sum": s, "count": n}`; +Inf is `count`."""
        out, running = [], 0
        for bound, c in zip(self.bounds, self.counts, strict=True):
            running += c
            out.append([bound, running])
        return {"buckets": out, "sum": self.total, "count": self.n}

"""The fixed-bucket histogram behind the Modbus latency and poll-period metrics."""

from __future__ import annotations

import pytest

from edge.core.histogram import Histogram


def test_buckets_are_cumulative_with_the_bound_included() -> None:
    h = Histogram((0.1, 0.5, 1.0))
    for v in (0.05, 0.1, 0.3, 0.5, 0.9, 7.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap["buckets"] == [[0.1, 2], [0.5, 4], [1.0, 5]]   # le: a value equal to the bound is in it
    assert snap["count"] == 6                                   # +Inf: the 7.0 too
    assert snap["sum"] == pytest.approx(8.85)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram((1.0, 1.0))

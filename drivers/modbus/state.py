"""What a bus knows about each of its devices: latest values, health, backoff, poll periods."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.modbus.model import Sink
from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import Table
from edge.core.backoff import Backoff
from edge.core.clock import Clock
from edge.core.histogram import LATENCY_BOUNDS_S, PERIOD_BOUNDS_S, Histogram

PERIOD_WINDOW = 1024  # poll intervals kept per device for the jitter stats

RawWords = dict[tuple[int, Table, int], int]
"""Last word read at (unit, table, address): what a bit-field write starts from."""


@dataclass(eq=False)
class DeviceState:
    spec: DeviceSpec
    online: bool | None = None
    reason: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    last_ok: float | None = None
    last_poll: float | None = None
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=PERIOD_WINDOW))
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS_S))   # each attempt, seconds
    period: Histogram = field(default_factory=lambda: Histogram(PERIOD_BOUNDS_S))     # between two reads
    rejected: Counter[str] = field(default_factory=Counter)
    warned: set[str] = field(default_factory=set)
    backoff: Backoff | None = None  # set while the device answers its reads with exceptions
    solo: bool = False  # its reads failed only when merged with a neighbour's: read it alone
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write at a time


@dataclass(frozen=True, slots=True)
class BusContext:
    """What the parts of one bus share."""

    bus_id: str
    devices: dict[str, DeviceState]
    sink: Sink  # guarded: a failing sink is logged, never raised
    clock: Clock  # timestamps of readings and health
    now: Callable[[], float]  # monotonic seconds that backoff and the poll schedule count in
    raw: RawWords = field(default_factory=dict)


def period_stats(intervals: Sequence[float]) -> dict[str, float | int]:
    if not intervals:
        return {"n": 0}
    s = sorted(intervals)
    return {"n": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2],
            "p99": s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)], "max": s[-1]}

"""Injectable clocks: control and scheduling code asks a clock, never `time` directly.

`SystemClock` runs in real time (the daemon). `ScaledClock` runs `speed` simulated seconds per
real second from a chosen start (the virtual school). `ManualClock` only moves when told (tests,
the EMS bench).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, tzinfo
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Unix seconds of the (possibly simulated) wall clock."""

    def monotonic(self) -> float:
        """Seconds that never go backwards, on the clock's own time scale."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time: `speed` simulated seconds pass per real second, from `start` (unix s)."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._real0 = time.monotonic()
        self._start = time.time() if start is None else start

    def time(self) -> float:
        return self._start + (time.monotonic() - self._real0) * self.speed

    def monotonic(self) -> float:
        return (time.monotonic() - self._real0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """Moves only when `advance` is called; `sleep` returns at once after advancing."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = start
        self._mono = 0.0

    def time(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._t += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


def iso(ts: float, tz: tzinfo | None = None) -> str:
    """ISO 8601 with offset (CONTRACT.md: times carry their offset)."""
    return datetime.fromtimestamp(ts, tz or datetime.now().astimezone().tzinfo).isoformat(timespec="milliseconds")

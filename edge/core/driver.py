"""The driver seam: how a kind of hardware plugs into the gateway.

A driver (the Modbus engine, a serial RFID reader, a Bluetooth scanner) owns device ids, starts
and stops as an async context manager, applies a desired state and returns the verified one, and
delivers readings, health and events into the core through a `DriverSink`. The daemon keeps a
list of drivers and routes by device id; it knows no driver's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from edge.core.clock import Clock
from edge.core.config import Config
from edge.core.model import DeviceState, Kind

PULSE = "pulse"   # capability: a hardware-timed on-pulse that ends by itself (a door's unlock)


class ApplyError(Exception):
    """A device could not be driven; `code` is a result code of CONTRACT.md section 3."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DriverSink(Protocol):
    """Where a driver delivers what it learns (the daemon)."""

    def on_state(self, device_id: str, state: DeviceState, online: bool, ts: float) -> None:
        """A complete, fresh reading of a device."""

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        """A device went offline or came back."""

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        """Something happened (a card tap, a beacon sighting): published as an event of `kind`."""


class Driver(Protocol):
    name: str

    def devices(self) -> Mapping[str, Kind]:
        """The device ids this driver owns, with their kinds."""

    def capabilities(self, device_id: str) -> frozenset[str]:
        """Optional abilities of a device, e.g. {PULSE}."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None: ...

    async def apply(self, device_id: str, desired: Mapping[str, Any]) -> Mapping[str, Any]:
        """Write `desired`, read it back, return the verified values; raise ApplyError."""

    async def pulse(self, device_id: str, seconds: float) -> None:
        """Switch on for `seconds`, ended by the hardware itself; raise ApplyError."""

    def stats(self) -> Mapping[str, Any]:
        """Counters for /status and /metrics."""

    def stuck(self, limit_s: float) -> list[str]:
        """What of the driver's loops made no progress for `limit_s` (the watchdog asks): [] while alive."""


DriverFactory = Callable[[Config, DriverSink, Clock], "Driver | None"]
"""Builds a driver for the devices of a config it handles (None when the config has none)."""

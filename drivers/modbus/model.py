"""What the Modbus engine hands out: readings, health transitions, the sink that takes them, write errors."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

WriteErrorCode = Literal["device_offline", "write_failed", "out_of_range", "bad_request"]


@dataclass(frozen=True, slots=True)
class Reading:
    """Fields read from one device by one transaction (merge into the device's state)."""

    device_id: str
    ts: float
    values: Mapping[str, Any]
    rejected: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """A device went online or offline (reported on transitions only)."""

    device_id: str
    online: bool
    reason: str | None
    ts: float


class Sink(Protocol):
    """Receives the engine's output; called from the bus loop, so it must not block."""

    def on_reading(self, reading: Reading) -> None: ...

    def on_health(self, health: DeviceHealth) -> None: ...


class GuardedSink:
    """A sink whose failures are logged, never raised into the bus loop."""

    def __init__(self, sink: Sink, bus_id: str) -> None:
        self._sink = sink
        self._bus_id = bus_id

    def on_reading(self, reading: Reading) -> None:
        try:
            self._sink.on_reading(reading)
        except Exception:  # a faulty sink must not stop the bus
            log.exception("bus %s: sink failed", self._bus_id)

    def on_health(self, health: DeviceHealth) -> None:
        try:
            self._sink.on_health(health)
        except Exception:  # a faulty sink must not stop the bus
            log.exception("bus %s: sink failed", self._bus_id)


class WriteError(Exception):
    """A write or pulse was not carried out; `code` is the CONTRACT result code."""

    def __init__(self, code: WriteErrorCode, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")

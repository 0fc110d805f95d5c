"""The Modbus engine: every bus of a site, and the one entry that routes a device id to its bus.

The work is done per bus by `drivers.modbus.bus.ModbusBus` (scheduler, loops), with `polling`,
`health`, `compose`, `verify` and `pulse` beside it.  The names callers use are re-exported here.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from drivers.modbus.bus import ModbusBus
from drivers.modbus.model import DeviceHealth, Reading, Sink, WriteError
from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import Profile, load_profile
from edge.core.clock import Clock
from edge.core.config import Config, RtuBus, TcpBus

__all__ = ["DeviceHealth", "ModbusBus", "ModbusEngine", "Reading", "Sink", "WriteError"]


class ModbusEngine:
    """Every bus of a site; routes writes and pulses to the bus that owns the device."""

    def __init__(self, buses: Iterable[tuple[TcpBus | RtuBus, Sequence[DeviceSpec]]], sink: Sink, *,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.buses = [ModbusBus(bus, specs, sink, clock=clock, rng=rng) for bus, specs in buses]
        self._route = {dev_id: b for b in self.buses for dev_id in b.device_ids}
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_config(cls, config: Config, sink: Sink, *, clock: Clock | None = None) -> ModbusEngine:
        """Buses and devices of a validated site config (profiles loaded from its profile_dirs)."""
        specs: dict[str, list[DeviceSpec]] = {b.id: [] for b in config.buses}
        for dev in config.modbus_devices():
            profile = load_profile(dev.profile, config.profile_dirs)
            specs[dev.bus].append(DeviceSpec(dev.id, profile, dev.unit, dev.index, dev.offset,
                                             dev.poll_period_s, dev.timeout_s))
        return cls([(b, specs[b.id]) for b in config.buses if specs[b.id]], sink, clock=clock)

    def profile(self, device_id: str) -> Profile:
        """The register map a device is driven by (`profile(d).pulse` says whether it can pulse)."""
        return self.bus_of(device_id).spec(device_id).profile

    async def __aenter__(self) -> ModbusEngine:
        async with contextlib.AsyncExitStack() as stack:
            for bus in self.buses:
                await stack.enter_async_context(bus)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    def bus_of(self, device_id: str) -> ModbusBus:
        try:
            return self._route[device_id]
        except KeyError:
            raise WriteError("bad_request", f"unknown Modbus device {device_id!r}") from None

    async def write(self, device_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        return await self.bus_of(device_id).write(device_id, values)

    async def pulse(self, device_id: str, channel: int, seconds: float, *, on: bool = True) -> None:
        """Switch a relay channel on (or off) for `seconds`; the board switches it back by itself."""
        await self.bus_of(device_id).pulse(device_id, channel, seconds, on=on)

    async def flash(self, device_id: str, channel: int, *, on: bool = True, seconds: float = 5.0) -> None:
        """Older name of `pulse`, kept for its callers (the daemon, the Modbus driver)."""
        await self.pulse(device_id, channel, seconds, on=on)

    def online(self, device_id: str) -> bool:
        return self.bus_of(device_id).online(device_id)

    def stuck(self, limit_s: float) -> list[str]:
        """Buses whose loops look hung (see ModbusBus.stuck)."""
        now = time.monotonic()
        return [why for b in self.buses if (why := b.stuck(now, limit_s)) is not None]

    def stats(self) -> dict[str, Any]:
        return {b.bus.id: b.stats() for b in self.buses}

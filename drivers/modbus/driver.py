"""The Modbus driver: the engine behind the core's `Driver` seam.

It owns every Modbus device of a site (ACs, meters, relay boards) and the relay channels wired to
its boards (lights, fans, doors), turns a profile's decoded fields into the typed STATE of
`edge.core.model`, and routes a channel's request to its board. A device's STATE is delivered
once its whole first cycle has been read (the SDM630 needs three requests), not half-filled.

A door's `on` means unlocked, whatever its wiring. A fail-secure strike unlocks while its relay is
on; a fail-safe magnetic lock holds while its relay is on, so for it the driver inverts: unlock is
a timed *off* pulse the board reverts by itself, and a fail-safe door found with its relay off
(the board lost power and came back with every relay off) is switched back on, unless someone
asked for it open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from drivers.modbus.engine import DeviceHealth, ModbusEngine, Reading, WriteError
from drivers.modbus.profile import Profile
from edge.core.clock import Clock
from edge.core.config import Config, RelayChannel
from edge.core.driver import ApplyError, DriverSink
from edge.core.model import (
    NO_COMMUNICATION_FAULT,
    AcMode,
    AcState,
    DeviceState,
    FanSpeed,
    Kind,
    MeterState,
    RelayBoardState,
    SwitchState,
)

log = logging.getLogger(__name__)

NO_COMMUNICATION = 65535  # Intesis: the interface has lost its indoor unit
RELOCK_GRACE_S = 2.0      # a fail-safe door's off pulse may read back as off for this long after it ends
RELOCK_RETRY_S = 10.0     # a failed relock is tried again after this


def channel_field(channel: int) -> str:
    """The profile field of relay channel `channel`."""
    return f"ch{channel}"


def _enum(cls: type[AcMode] | type[FanSpeed], v: Any) -> Any:
    try:
        return cls(v) if v is not None else None
    except ValueError:
        return None


def ac_state(values: Mapping[str, Any]) -> AcState:
    code = values.get("fault_code")
    fault = None if code in (None, 0) else (NO_COMMUNICATION_FAULT if code == NO_COMMUNICATION else str(code))
    on = values.get("power_on")
    return AcState(power_on=None if on is None else bool(on), mode=_enum(AcMode, values.get("mode")),
                   setpoint_c=values.get("setpoint_c"), fan=_enum(FanSpeed, values.get("fan")),
                   room_temp_c=values.get("room_temp_c"), fault=fault, power_w=values.get("power_w"))


def _phases(values: Mapping[str, Any], prefix: str, unit: str) -> tuple[float | None, ...] | None:
    got = tuple(values.get(f"{prefix}_l{n}_{unit}") for n in (1, 2, 3))
    return None if all(v is None for v in got) else got


def meter_state(values: Mapping[str, Any]) -> MeterState:
    return MeterState(
        power_w=values.get("power_w"), energy_kwh=values.get("energy_kwh", values.get("import_energy_kwh")),
        voltage_v=_phases(values, "voltage", "v"), current_a=_phases(values, "current", "a"),
        power_phase_w=_phases(values, "power", "w"), pf=values.get("pf"), freq_hz=values.get("freq_hz"),
        demand_w=values.get("demand_w"))


def board_state(values: Mapping[str, Any], channels: int) -> RelayBoardState:
    return RelayBoardState(tuple(None if values.get(channel_field(n)) is None else bool(values[channel_field(n)])
                                 for n in range(channels)))


def typed_state(kind: Kind, values: Mapping[str, Any], channels: int = 0) -> DeviceState:
    if kind == Kind.AC:
        return ac_state(values)
    if kind == Kind.METER:
        return meter_state(values)
    if kind == Kind.RELAY:
        return board_state(values, channels)
    raise ValueError(f"no Modbus state for kind {kind!r}")


@dataclass(frozen=True, slots=True)
class _Channel:
    device: RelayChannel
    field: str

    @property
    def inverted(self) -> bool:
        """A fail-safe door: locked while its relay is on."""
        return self.device.kind == Kind.DOOR and self.device.lock == "fail_safe"


class ModbusDriver:
    """`edge.core.driver.Driver` over a `ModbusEngine`."""

    name = "modbus"

    def __init__(self, cfg: Config, sink: DriverSink, clock: Clock) -> None:
        self.sink = sink
        self.clock = clock
        self.engine = ModbusEngine.from_config(cfg, self, clock=clock)
        self._kinds: dict[str, Kind] = {}
        self._profiles: dict[str, Profile] = {}
        self._values: dict[str, dict[str, Any]] = {}
        self._unread: dict[str, set[str]] = {}
        self._channels_of: dict[str, list[_Channel]] = {}
        self._channel: dict[str, _Channel] = {}
        self._open_until: dict[str, float] = {}   # fail-safe doors: open on purpose (a pulse or a held "on") until
        self._relocks: set[asyncio.Task[None]] = set()
        self._relock_after: dict[str, float] = {}
        for dev in cfg.modbus_devices():
            self._kinds[dev.id] = Kind(dev.kind)
            self._profiles[dev.id] = self.engine.profile(dev.id)
            self._unread[dev.id] = {p.field for p in self._profiles[dev.id].points if p.poll}
        for ch in cfg.relay_channels():
            c = _Channel(ch, channel_field(ch.channel))
            self._channels_of.setdefault(ch.relay, []).append(c)
            self._channel[ch.id] = c
            self._kinds[ch.id] = Kind(ch.kind)

    @classmethod
    def from_config(cls, cfg: Config, sink: DriverSink, clock: Clock) -> ModbusDriver | None:
        return cls(cfg, sink, clock) if cfg.modbus_devices() else None

    # -- the seam ---------------------------------------------------------------------------------
    def devices(self) -> Mapping[str, Kind]:
        return self._kinds

    def channels(self, device_id: str) -> int:
        prof = self._profiles.get(device_id)
        return (prof.channels or 0) if prof is not None else 0

    def capabilities(self, device_id: str) -> frozenset[str]:
        ch = self._channel.get(device_id)
        if ch is not None and self._profiles[ch.device.relay].pulse is not None:
            return frozenset({"pulse"})
        return frozenset()

    async def __aenter__(self) -> Self:
        await self.engine.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in list(self._relocks):
            task.cancel()
        await asyncio.gather(*self._relocks, return_exceptions=True)
        await self.engine.__aexit__(exc_type, exc, tb)

    async def apply(self, device_id: str, desired: Mapping[str, Any]) -> Mapping[str, Any]:
        ch = self._channel.get(device_id)
        try:
            if ch is not None:
                if set(desired) != {"on"} or not isinstance(desired["on"], bool):
                    raise ApplyError("bad_request", f"{device_id} takes only on: true|false")
                if ch.inverted:
                    self._open_until[device_id] = float("inf") if desired["on"] else 0.0
                got = await self.engine.write(ch.device.relay, {ch.field: desired["on"] != ch.inverted})
                return {"on": bool(got[ch.field]) != ch.inverted}
            if self._kinds.get(device_id) != Kind.AC:
                raise ApplyError("unknown_target", f"{device_id} takes no writes")
            return await self.engine.write(device_id, dict(desired))
        except WriteError as exc:
            raise ApplyError(exc.code, str(exc)) from exc

    async def pulse(self, device_id: str, seconds: float) -> None:
        ch = self._channel.get(device_id)
        if ch is None or "pulse" not in self.capabilities(device_id):
            raise ApplyError("bad_request", f"{device_id} cannot pulse")
        if ch.inverted:
            self._open_until[device_id] = max(self._open_until.get(device_id, 0.0),
                                              self.clock.time() + seconds + RELOCK_GRACE_S)
        try:
            await self.engine.pulse(ch.device.relay, ch.device.channel, seconds, on=not ch.inverted)
        except WriteError as exc:
            raise ApplyError(exc.code, str(exc)) from exc

    def stats(self) -> Mapping[str, Any]:
        return self.engine.stats()

    def stuck(self, limit_s: float) -> list[str]:
        return self.engine.stuck(limit_s)

    # -- the engine's sink ------------------------------------------------------------------------
    def on_reading(self, r: Reading) -> None:
        vals = self._values.setdefault(r.device_id, {})
        vals.update(r.values)
        missing = self._unread.get(r.device_id)
        if missing:
            missing.difference_update(r.values, r.rejected)
            if missing:
                return
        kind = self._kinds[r.device_id]
        typed = typed_state(kind, vals, self.channels(r.device_id))
        online = not (isinstance(typed, AcState) and typed.fault == NO_COMMUNICATION_FAULT)
        self.sink.on_state(r.device_id, typed, online, r.ts)
        for ch in self._channels_of.get(r.device_id, []):
            if ch.field in vals:
                coil = bool(vals[ch.field])
                self.sink.on_state(ch.device.id, SwitchState(coil != ch.inverted), True, r.ts)
                if ch.inverted and not coil:
                    self._relock(ch)

    def _relock(self, ch: _Channel) -> None:
        """A fail-safe door reads unpowered (open) though nobody opened it: power it again (lock)."""
        now = self.clock.time()
        dev = ch.device.id
        if (now < self._open_until.get(dev, 0.0) or now < self._relock_after.get(dev, 0.0)
                or any(t.get_name() == f"relock-{dev}" for t in self._relocks)):
            return

        async def write() -> None:
            try:
                await self.engine.write(ch.device.relay, {ch.field: True})
                log.warning("%s: fail-safe door found unpowered (relay board restarted?): locked it again", dev)
            except WriteError as exc:
                self._relock_after[dev] = self.clock.time() + RELOCK_RETRY_S
                log.warning("%s: fail-safe door is open and could not be locked: %s", dev, exc)

        task = asyncio.get_running_loop().create_task(write(), name=f"relock-{dev}")
        self._relocks.add(task)
        task.add_done_callback(self._relocks.discard)

    def on_health(self, h: DeviceHealth) -> None:
        for dev_id in [h.device_id] + [c.device.id for c in self._channels_of.get(h.device_id, [])]:
            self.sink.on_health(dev_id, h.online, h.reason)

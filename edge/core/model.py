"""The typed model: device kinds, the AC vocabulary and each kind's STATE (CONTRACT.md section 3).

Written once here; drivers, the simulator, the cloud link and the CLI all use it. `dict[str, Any]`
appears only at the JSON edges (`as_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    AC = "ac"
    METER = "meter"
    RELAY = "relay"            # a relay board
    LIGHT = "light"            # a relay channel
    FAN = "fan"                # a relay channel
    DOOR = "door"              # a relay channel driving a lock; opened only by a timed pulse
    RFID = "rfid"
    BEACON_SCANNER = "beacon_scanner"


SWITCH_KINDS = frozenset({Kind.LIGHT, Kind.FAN})            # on/off through the arbiter
CHANNEL_KINDS = frozenset({Kind.LIGHT, Kind.FAN, Kind.DOOR})
CONTROLLABLE_KINDS = frozenset({Kind.AC, *SWITCH_KINDS})     # what schedules, teachers and staff may set


class AcMode(StrEnum):
    COOL = "cool"
    HEAT = "heat"
    DRY = "dry"
    FAN = "fan"
    AUTO = "auto"


class FanSpeed(StrEnum):
    AUTO = "auto"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


AC_WRITABLE = ("power_on", "mode", "setpoint_c", "fan")
SWITCH_WRITABLE = ("on",)
NO_COMMUNICATION_FAULT = "no_communication"


def writable(kind: Kind) -> tuple[str, ...]:
    """The fields a control source may set on a device of `kind` (none for doors: they pulse)."""
    if kind == Kind.AC:
        return AC_WRITABLE
    if kind in SWITCH_KINDS:
        return SWITCH_WRITABLE
    return ()


class _State:
    """A STATE's JSON form (tuples become lists): the one `as_json` of every kind's state."""

    __slots__ = ()

    def as_json(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AcState(_State):
    power_on: bool | None = None
    mode: AcMode | None = None
    setpoint_c: float | None = None
    fan: FanSpeed | None = None
    room_temp_c: float | None = None
    fault: str | None = None
    power_w: float | None = None



@dataclass(frozen=True, slots=True)
class MeterState(_State):
    power_w: float | None = None
    energy_kwh: float | None = None
    voltage_v: tuple[float | None, ...] | None = None
    current_a: tuple[float | None, ...] | None = None
    power_phase_w: tuple[float | None, ...] | None = None
    pf: float | None = None
    freq_hz: float | None = None
    demand_w: float | None = None



@dataclass(frozen=True, slots=True)
class RelayBoardState(_State):
    channels: tuple[bool | None, ...] = ()



@dataclass(frozen=True, slots=True)
class SwitchState(_State):
    """A light, fan or door: one relay channel (`on` is None until its board has been read)."""

    on: bool | None = None



@dataclass(frozen=True, slots=True)
class ReaderState(_State):
    """An RFID reader or a beacon scanner: whether its port or radio is open."""

    port_open: bool | None = None



DeviceState = AcState | MeterState | RelayBoardState | SwitchState | ReaderState


def blank_state(kind: Kind, channels: int = 0) -> DeviceState:
    """The STATE of a device nothing has been read from yet."""
    if kind == Kind.AC:
        return AcState()
    if kind == Kind.METER:
        return MeterState()
    if kind == Kind.RELAY:
        return RelayBoardState((None,) * channels)
    if kind in CHANNEL_KINDS:
        return SwitchState()
    return ReaderState()


def same(a: Any, b: Any) -> bool:
    """A requested value and a read-back one agree (setpoints to the device's 0.1 °C resolution)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) < 0.05
    return bool(a == b)


def voltage_imbalance_pct(volts: list[float] | tuple[float, ...]) -> float | None:
    """Phase voltage imbalance: the largest deviation from the mean, in % of the mean (NEMA's definition)."""
    if len(volts) < 2:
        return None
    mean = sum(volts) / len(volts)
    return max(abs(v - mean) for v in volts) / mean * 100.0 if mean > 0 else None

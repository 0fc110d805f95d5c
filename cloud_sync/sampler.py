"""STATE messages to telemetry points, and how often: at most one point per device and sample window.

A window keeps its last value (so a change that is not followed by another still lands), a flip of
`on` or `online` is written at once, and an unchanged device is repeated every HEARTBEAT_S.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloud_sync.lineproto import Point
from edge.core.config import Config, ModbusDevice, RelayChannel
from edge.core.model import Kind, voltage_imbalance_pct

# Sampling. Meters feed demand analysis (15-min blocks): 10 s keeps the shape of a compressor start
# at 8,640 points a day. Classroom AC: room temperature moves over minutes and a change of on/off
# is written at once anyway, so 60 s (80 units: ~115k points a day, not ~3.5M at the 2 s poll).
# Relay channels only change on command: every change is written (on/off is always forced).
DEFAULT_SAMPLE_S: Mapping[str, float] = {"meter": 10.0, "ac": 60.0, "relay": 60.0, "ems": 10.0}
# An unchanged device publishes no state; without a repeat its series would look stale (VictoriaMetrics
# and Grafana stop drawing a series after ~5 min without samples).
HEARTBEAT_S = 240.0


# -- STATE -> points ----------------------------------------------------------------------------
def state_ts_ms(payload: Mapping[str, Any], fallback_s: float) -> int:
    """The STATE's own `ts` (ISO 8601 with offset) in ms; the message time if it has none."""
    ts = payload.get("ts")
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            return round(datetime.fromisoformat(ts).timestamp() * 1000)
    return round(fallback_s * 1000)


def _phases(fields: dict[str, Any], values: Any, name: str, unit: str) -> None:
    if isinstance(values, list):
        for n, v in enumerate(values[:3], start=1):
            fields[f"{name}_l{n}_{unit}"] = v


def state_fields(kind: str, st: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric fields of one device's STATE; an offline device reports only `online=0`."""
    if not st.get("online", True):
        return {"online": False}
    f: dict[str, Any] = {"online": st.get("online")}
    if kind == "meter":
        demand_w = st.get("demand_w")
        f |= {k: st.get(k) for k in ("power_w", "energy_kwh", "pf", "freq_hz")}
        if isinstance(demand_w, int | float) and not isinstance(demand_w, bool):
            f["demand_kw"] = demand_w / 1000
        _phases(f, st.get("voltage_v"), "voltage", "v")
        volts = st.get("voltage_v")
        if isinstance(volts, list) and all(isinstance(v, int | float) for v in volts):
            f["voltage_imbalance_pct"] = voltage_imbalance_pct(volts)
        _phases(f, st.get("current_a"), "current", "a")
        _phases(f, st.get("power_phase_w"), "power", "w")
    elif kind == "ems":
        f |= {k: st.get(k) for k in ("block_avg_kw", "projected_kw", "allow_kw", "contract_kw", "shed_units")}
    elif kind == "ac":
        f |= {"on": st.get("power_on"), "power_w": st.get("power_w"), "room_temp_c": st.get("room_temp_c"),
              "setpoint_c": st.get("setpoint_c")}
        if "fault" in st:
            f["fault"] = st["fault"] is not None
    else:  # relay channels: light, fan, door
        f["on"] = st.get("on")
    return f


@dataclass(frozen=True, slots=True)
class Device:
    measurement: str
    kind: str
    tags: dict[str, str | None]


def devices_of(cfg: Config) -> dict[str, Device]:
    """Which devices become telemetry, with their measurement and tags."""
    site = {"school": cfg.site.school_id, "gateway": cfg.site.gateway_id}
    names = {r.id: r.name for r in cfg.rooms}
    out: dict[str, Device] = {}
    for d in cfg.devices:
        room = getattr(d, "room", None)
        where = {"room": room, "room_name": names.get(room or "")}
        if isinstance(d, ModbusDevice) and d.kind == Kind.METER:
            out[d.id] = Device("meter", "meter", {**site, "device": d.id})
        elif isinstance(d, ModbusDevice) and d.kind == Kind.AC:
            out[d.id] = Device("ac", "ac", {**site, "device": d.id, **where})
        elif isinstance(d, RelayChannel):
            out[d.id] = Device("relay", "relay", {**site, "device": d.id, "kind": d.kind, **where})
    if cfg.ems is not None:   # the energy manager's block figures (CONTRACT.md section 4)
        out["ems"] = Device("ems", "ems", dict(site))
    return out  # relay boards publish a list of channels; their channel devices carry the telemetry


# -- sampling -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Sampler:
    """One device: at most one point per aligned window (its last value); on/online flips go out at once."""

    window_ms: int
    pending: Point | None = None       # the newest point of the current window, not yet handed out
    last: Point | None = None          # the last point handed out
    flags: tuple[float | None, float | None] | None = None
    replaced: int = 0                  # points superseded by a newer one in their window

    def offer(self, p: Point) -> list[Point]:
        fields = dict(p.fields)
        flags = (fields.get("on"), fields.get("online"))
        flipped = self.flags is not None and flags != self.flags
        self.flags = flags
        if flipped or self.last is None:   # a flip, or a device's first point: now
            return self._out([*self.take(), p])
        if self.pending is not None and self.pending.ts_ms // self.window_ms != p.ts_ms // self.window_ms:
            out = self._out(self.take())
            self.pending = p
            return out
        if self.pending is not None:
            self.replaced += 1
        self.pending = p
        return []

    def due(self, now_ms: int, heartbeat_ms: int) -> list[Point]:
        """The pending point once its window is over; a repeat of the last one after `heartbeat_ms` of silence."""
        if self.pending is not None and now_ms // self.window_ms != self.pending.ts_ms // self.window_ms:
            return self._out(self.take())
        if self.pending is None and self.last is not None and now_ms - self.last.ts_ms >= heartbeat_ms:
            return self._out([Point(self.last.measurement, self.last.tags, self.last.fields, now_ms)])
        return []

    def take(self) -> list[Point]:
        """The pending point now, its window over or not (at shutdown)."""
        p, self.pending = self.pending, None
        return [] if p is None else [p]

    def _out(self, points: list[Point]) -> list[Point]:
        if points:
            self.last = points[-1]
        return points


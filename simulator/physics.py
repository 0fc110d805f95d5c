"""Physics of the virtual school: classroom heat balance, inverter AC units, relays and the main meter.

Pure and clock-free: `SchoolPhysics.step_to(t)` advances the state to unix time `t` in fixed
sub-steps, so a test can drive it with any clock and the same steps give the same state.

Room model (ISO 13790-like, DOMAIN.md section 5): an air node (small capacity) and a mass node
(C_m = 165 kJ/m2K for a medium building), joined by H_is and H_ms in series; the air exchanges
heat with outdoors through windows and ventilation, the mass through walls and, on the top floor,
the roof. Pupils, lights and fans heat the air, the sun heats mass and air, the AC cools the air.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Literal

from edge.core.model import AcMode, FanSpeed, Kind
from simulator.timetable import away_lessons, occupied, pupil_heat_w

Mode = AcMode                    # the AC vocabulary is the core's (edge.core.model), written once
Fan = FanSpeed
ChannelKind = Literal[Kind.LIGHT, Kind.FAN, Kind.DOOR]

MODES: tuple[Mode, ...] = tuple(AcMode)
FANS: tuple[Fan, ...] = tuple(FanSpeed)

MAX_SUBSTEP_S = 10.0  # air node time constant is ~350 s: 10 s explicit steps are stable and accurate

# ISO 13790 per floor area (DOMAIN.md section 5)
H_IS_W_M2K = 3.45 * 4.5  # h_is over A_t = 4.5 A_f
H_MS_W_M2K = 9.1 * 2.5  # h_ms over A_m = 2.5 A_f
C_MASS_J_M2K = 165e3  # medium construction
C_AIR_J_M2K = 3.9e3  # air and furniture: 0.27 MJ/K for 70 m2
# Envelope: single glazing (U 5.8) on ~20 % of the floor area, concrete walls, flat concrete roof.
H_WINDOW_W_M2K = 5.8 * 0.2
H_WALL_W_M2K = 0.65
H_ROOF_W_M2K = 1.0
# Ventilation: windows shut while an AC runs, open when a class is in without one.
ACH_CLOSED = 0.5
ACH_OPEN = 3.0
ROOM_HEIGHT_M = 3.2
AIR_J_M3K = 1200.0

# Sun, peak watts for a 70 m2 room
SUN_DIFFUSE_W = 250.0
SUN_WEST_W = 2000.0  # ~14 m2 west glazing, shaded: afternoon peak
SUN_ROOF_W = 900.0  # top floor: sun on the roof slab
SUN_TO_MASS = 0.7

# Relay-driven loads (per channel): a classroom's lights, its ceiling fans, a door strike
CHANNEL_W: dict[ChannelKind, float] = {Kind.LIGHT: 420.0, Kind.FAN: 240.0, Kind.DOOR: 8.0}


@dataclass(frozen=True, slots=True)
class RoomParams:
    """Thermal parameters of one classroom."""

    area_m2: float = 70.0
    west_facing: bool = False
    top_floor: bool = False
    pupils: int = 28

    @property
    def c_air(self) -> float:
        return C_AIR_J_M2K * self.area_m2

    @property
    def c_mass(self) -> float:
        return C_MASS_J_M2K * self.area_m2

    @property
    def h_air_mass(self) -> float:
        """H_is and H_ms in series (the star node of 5R1C folded away)."""
        h_is, h_ms = H_IS_W_M2K * self.area_m2, H_MS_W_M2K * self.area_m2
        return h_is * h_ms / (h_is + h_ms)

    @property
    def h_window(self) -> float:
        return H_WINDOW_W_M2K * self.area_m2

    @property
    def h_mass_out(self) -> float:
        return (H_WALL_W_M2K + (H_ROOF_W_M2K if self.top_floor else 0.0)) * self.area_m2

    def h_vent(self, ach: float) -> float:
        return ach * self.area_m2 * ROOM_HEIGHT_M * AIR_J_M3K / 3600.0


@dataclass(frozen=True, slots=True)
class Weather:
    """Diurnal outdoor temperature: minimum at 05:00, maximum at `peak_hour`."""

    min_c: float = 27.0
    max_c: float = 34.0
    peak_hour: float = 14.0
    min_hour: float = 5.0

    def outdoor_c(self, hour: float) -> float:
        lo, hi = self.min_c, self.max_c
        rise = self.peak_hour - self.min_hour
        if self.min_hour <= hour < self.peak_hour:
            frac = (hour - self.min_hour) / rise
            return lo + (hi - lo) * (1 - math.cos(math.pi * frac)) / 2
        frac = ((hour - self.peak_hour) % 24) / (24 - rise)
        return hi - (hi - lo) * (1 - math.cos(math.pi * frac)) / 2


def daylight(hour: float) -> float:
    """0..1 sun intensity on a horizontal surface (sunrise 06:00, sunset 18:30)."""
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.5))


def west_sun(hour: float) -> float:
    """0..1 sun on a west facade: nothing before noon, peak around 15:15."""
    return max(0.0, math.sin(math.pi * (hour - 12.0) / 6.5)) if 12.0 <= hour <= 18.5 else 0.0


def solar_gains_w(params: RoomParams, hour: float) -> tuple[float, float]:
    """(to air, to mass) solar gains of a room at local `hour`."""
    scale = params.area_m2 / 70.0
    total = SUN_DIFFUSE_W * daylight(hour)
    if params.west_facing:
        total += SUN_WEST_W * west_sun(hour)
    roof = SUN_ROOF_W * daylight(hour) if params.top_floor else 0.0
    total *= scale
    return total * (1 - SUN_TO_MASS), total * SUN_TO_MASS + roof * scale


@dataclass(frozen=True, slots=True)
class AcParams:
    """An inverter split unit (DOMAIN.md sections 3-4); capacities at the rated outdoor temperature."""

    cooling_w: float = 5000.0
    rated_power_w: float = 1700.0
    rated_outdoor_c: float = 35.0
    min_modulation: float = 0.3
    restart_lockout_s: float = 180.0
    min_run_s: float = 30.0
    standby_w: float = 3.0
    thermo_off_k: float = 1.0  # compressor stops this far past the setpoint
    thermo_on_k: float = 0.3  # and starts again this far on the other side
    gain_per_k: float = 0.6  # part-load controller: output change per kelvin of error
    ramp_tau_s: float = 60.0  # compressor speed follows its target with this time constant
    dry_max_output: float = 0.4
    fan_w: Mapping[str, float] = field(
        default_factory=lambda: {"low": 20.0, "medium": 30.0, "high": 45.0, "auto": 30.0}
    )

    def capacity_w(self, t_out: float) -> float:
        """Available output, derated as it gets hotter outside."""
        factor = min(1.1, max(0.8, 1.0 + 0.01 * (self.rated_outdoor_c - t_out)))
        return self.cooling_w * factor

    def cop(self, t_out: float, part_load: float) -> float:
        """Coefficient of performance: better at part load and in cooler weather."""
        rated = self.cooling_w / self.rated_power_w
        weather = 1.0 + 0.03 * (self.rated_outdoor_c - t_out)
        plf = 1.0 + 0.8 * part_load * (1.0 - part_load)
        return min(8.0, max(1.2, rated * weather * plf))


@dataclass(frozen=True, slots=True)
class AcSnapshot:
    """What an AC unit is doing, as the server and tests see it."""

    power_on: bool
    mode: Mode
    setpoint_c: float
    fan: Fan
    room_temp_c: float
    fault_code: int
    compressor_on: bool
    output: float
    heat_w: float
    power_w: float
    starts: int


class AcUnit:
    """One indoor unit: commanded state, compressor with restart lock-out and minimum run."""

    def __init__(self, params: AcParams, *, sensor_offset_c: float = 0.0) -> None:
        self.params = params
        self.power_on = False
        self.mode: Mode = AcMode.COOL
        self.setpoint_c = 26.0
        self.fan: Fan = FanSpeed.AUTO
        self.fault_code = 0
        self.sensor_offset_c = sensor_offset_c
        self.compressor_on = False
        self.output = 0.0
        self.heat_w = 0.0  # heat into the room air: negative when cooling
        self.power_w = params.standby_w
        self.starts = 0
        self.last_start = -math.inf
        self.last_stop = -math.inf
        self.room_temp_c = 0.0

    def command(self, *, power_on: bool | None = None, mode: Mode | None = None,
                setpoint_c: float | None = None, fan: Fan | None = None) -> None:
        """Apply a master's write; the compressor follows at the next step."""
        if power_on is not None:
            self.power_on = power_on
        if mode is not None:
            self.mode = mode
        if setpoint_c is not None:
            self.setpoint_c = round(setpoint_c, 1)
        if fan is not None:
            self.fan = fan

    def _direction(self, t_room: float) -> int:
        """-1 to cool, +1 to heat, 0 for no compressor."""
        if not self.power_on or self.fault_code or self.mode == "fan":
            return 0
        if self.mode == "heat":
            return 1
        if self.mode == "auto":
            return 1 if t_room < self.setpoint_c - self.params.thermo_off_k else -1
        return -1

    def step(self, now: float, dt: float, t_room: float, t_out: float) -> None:
        """Advance by `dt` seconds ending at `now` given room and outdoor temperatures."""
        p = self.params
        self.room_temp_c = t_room + self.sensor_offset_c
        direction = self._direction(t_room)
        error = (t_room - self.setpoint_c) * -direction if direction else 0.0  # > 0: needs the compressor
        if self.compressor_on:
            call = direction != 0 and error > -p.thermo_off_k
        else:
            call = direction != 0 and error > p.thermo_on_k
        if self.compressor_on and not call and now - self.last_start >= p.min_run_s:
            self.compressor_on = False
            self.last_stop = now
        elif not self.compressor_on and call and now - self.last_stop >= p.restart_lockout_s:
            self.compressor_on = True
            self.last_start = now
            self.starts += 1
        if self.compressor_on:
            ceiling = p.dry_max_output if self.mode == "dry" else 1.0
            target = min(ceiling, max(p.min_modulation, 0.5 + p.gain_per_k * error))
            self.output += (target - self.output) * min(1.0, dt / p.ramp_tau_s)
            self.output = min(ceiling, max(p.min_modulation, self.output))
            heat = self.output * p.capacity_w(t_out)
            self.heat_w = heat * (1 if direction > 0 else -1)
            self.power_w = heat / p.cop(t_out, self.output) + p.fan_w[self.fan]
        else:
            self.output = 0.0
            self.heat_w = 0.0
            self.power_w = p.fan_w[self.fan] if self.power_on and not self.fault_code else p.standby_w

    def snapshot(self) -> AcSnapshot:
        return AcSnapshot(self.power_on, self.mode, self.setpoint_c, self.fan, round(self.room_temp_c, 2),
                          self.fault_code, self.compressor_on, round(self.output, 4), round(self.heat_w, 1),
                          round(self.power_w, 1), self.starts)


class RoomState:
    """Air and mass temperatures of one classroom."""

    def __init__(self, params: RoomParams, t0: float, away_seed: int, key: str) -> None:
        self.params = params
        self.t_air = t0
        self.t_mass = t0
        self.key = key
        self.away_seed = away_seed
        self.gains_w = 0.0

    def away(self, local: datetime) -> frozenset[int]:
        return away_lessons(self.away_seed, self.key, local.timetuple().tm_yday)

    def step(self, dt: float, t_out: float, hour: float, internal_w: float, ac_w: float, ac_running: bool,
             class_in: bool) -> None:
        """Explicit Euler step of the two-node network."""
        p = self.params
        sun_air, sun_mass = solar_gains_w(p, hour)
        ach = ACH_OPEN if class_in and not ac_running else ACH_CLOSED
        q_air = (sun_air + 0.6 * internal_w + ac_w
                 + (p.h_window + p.h_vent(ach)) * (t_out - self.t_air)
                 + p.h_air_mass * (self.t_mass - self.t_air))
        q_mass = (sun_mass + 0.4 * internal_w
                  + p.h_mass_out * (t_out - self.t_mass)
                  + p.h_air_mass * (self.t_air - self.t_mass))
        self.gains_w = sun_air + sun_mass + internal_w
        self.t_air += dt * q_air / p.c_air
        self.t_mass += dt * q_mass / p.c_mass


class RelayBoard:
    """Relay coils, with the vendor's timed flash (revert after a time)."""

    def __init__(self, channels: int) -> None:
        self.coils = [False] * channels
        self.revert_at: dict[int, tuple[float, bool]] = {}

    def set(self, channel: int, on: bool) -> None:
        self.coils[channel] = on
        self.revert_at.pop(channel, None)

    def flash(self, channel: int, on: bool, seconds: float, now: float) -> None:
        """Switch `channel` to `on` now and back to the opposite after `seconds`."""
        self.coils[channel] = on
        self.revert_at[channel] = (now + seconds, not on)

    def step(self, now: float) -> None:
        for ch, (when, value) in list(self.revert_at.items()):
            if now >= when:
                self.coils[ch] = value
                del self.revert_at[ch]


# base load as a share of base_load_kw by local hour on school days
BASE_SHAPE_SCHOOL = ((0.0, 0.35), (6.0, 0.35), (7.5, 0.8), (8.0, 1.0), (11.5, 1.1), (12.5, 1.15),
                     (13.5, 1.0), (16.0, 0.9), (17.5, 0.5), (19.0, 0.35), (24.0, 0.35))
BASE_SHAPE_OFF = ((0.0, 0.35), (24.0, 0.35))
AC_PF = 0.97  # inverter units with PFC
BASE_PF = 0.9
NOMINAL_V = 230.0
NOMINAL_HZ = 60.0
DEMAND_WINDOW_S = 900.0


def interpolate(points: Iterable[tuple[float, float]], x: float) -> float:
    pts = list(points)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return pts[-1][1]


def base_load_w(base_kw: float, local: datetime) -> float:
    shape = BASE_SHAPE_SCHOOL if local.weekday() < 5 else BASE_SHAPE_OFF
    return base_kw * 1000.0 * interpolate(shape, local.hour + local.minute / 60 + local.second / 3600)


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """The SDM630's view of the site (the names are the profile's fields)."""

    voltage_v: tuple[float, float, float]
    current_a: tuple[float, float, float]
    power_phase_w: tuple[float, float, float]
    pf_phase: tuple[float, float, float]
    power_w: float
    pf: float
    freq_hz: float
    energy_kwh: float
    demand_w: float
    max_demand_w: float

    def fields(self) -> dict[str, float]:
        """Values by the eastron-sdm630 profile's point names."""
        out: dict[str, float] = {"power_w": self.power_w, "pf": self.pf, "freq_hz": self.freq_hz,
                                 "import_energy_kwh": self.energy_kwh, "energy_kwh": self.energy_kwh,
                                 "demand_w": self.demand_w, "max_demand_w": self.max_demand_w}
        for i in range(3):
            n = i + 1
            out[f"voltage_l{n}_v"] = self.voltage_v[i]
            out[f"current_l{n}_a"] = self.current_a[i]
            out[f"power_l{n}_w"] = self.power_phase_w[i]
            out[f"pf_l{n}"] = self.pf_phase[i]
        return out


class Meter:
    """Three-phase main meter: sums the loads per phase, integrates energy, keeps a 15-min demand."""

    def __init__(self, rng: random.Random, energy_kwh: float) -> None:
        self.rng = rng
        self.energy_kwh = energy_kwh
        self.volts = [NOMINAL_V + rng.uniform(-2, 2) for _ in range(3)]
        self.freq = NOMINAL_HZ
        self.p = [0.0, 0.0, 0.0]
        self.q = [0.0, 0.0, 0.0]
        self.history: deque[tuple[float, float]] = deque()
        self.demand_w = 0.0
        self.max_demand_w = 0.0

    def step(self, now: float, dt: float, p_phase: list[float], q_phase: list[float]) -> None:
        self.p, self.q = p_phase, q_phase
        self.energy_kwh += sum(p_phase) * dt / 3.6e6
        # slow bounded random walk: a grid that is never quite nominal
        self.volts = [min(NOMINAL_V + 6, max(NOMINAL_V - 6, v + self.rng.gauss(0, 0.05) * math.sqrt(dt)
                                              - 0.002 * (v - NOMINAL_V) * dt)) for v in self.volts]
        self.freq = min(NOMINAL_HZ + 0.05, max(NOMINAL_HZ - 0.05, self.freq + self.rng.gauss(0, 0.002)
                                                 - 0.01 * (self.freq - NOMINAL_HZ)))
        self.history.append((now, self.energy_kwh))
        while len(self.history) > 2 and now - self.history[1][0] >= DEMAND_WINDOW_S:
            self.history.popleft()
        t0, e0 = self.history[0]
        self.demand_w = (self.energy_kwh - e0) * 3.6e6 / (now - t0) if now > t0 else sum(p_phase)
        self.max_demand_w = max(self.max_demand_w, self.demand_w)

    def snapshot(self) -> MeterSnapshot:
        s = [math.hypot(p, q) for p, q in zip(self.p, self.q, strict=True)]
        # SDM630 sign convention: negative power factor = inductive
        pf_phase = tuple(-p / si if si > 0 else 1.0 for p, si in zip(self.p, s, strict=True))
        p_tot, q_tot = sum(self.p), sum(self.q)
        s_tot = math.hypot(p_tot, q_tot)
        return MeterSnapshot(
            voltage_v=(self.volts[0], self.volts[1], self.volts[2]),
            current_a=(s[0] / self.volts[0], s[1] / self.volts[1], s[2] / self.volts[2]),
            power_phase_w=(self.p[0], self.p[1], self.p[2]),
            pf_phase=(pf_phase[0], pf_phase[1], pf_phase[2]),
            power_w=p_tot, pf=-p_tot / s_tot if s_tot > 0 else 1.0, freq_hz=self.freq,
            energy_kwh=self.energy_kwh, demand_w=self.demand_w, max_demand_w=self.max_demand_w,
        )


def _q(p: float, pf: float) -> float:
    return p * math.tan(math.acos(pf))


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A relay channel that draws power and heats a room."""

    relay: str
    channel: int
    kind: ChannelKind
    room: str | None


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """Everything the physics needs to know about the school, independent of Modbus."""

    rooms: Mapping[str, RoomParams]
    acs: Mapping[str, str | None]  # AC device id -> room id
    relays: Mapping[str, int]  # relay board id -> channels
    channels: tuple[ChannelSpec, ...] = ()
    weather: Weather = Weather()
    base_load_kw: float = 25.0
    seed: int = 7
    initial_room_c: float | None = None
    ac_params: AcParams = AcParams()


class SchoolPhysics:
    """The whole site: rooms, AC units, relays and the main meter, advanced by `step_to`."""

    def __init__(self, spec: SiteSpec, start: float, tz: tzinfo) -> None:
        self.spec = spec
        self.tz = tz
        self.now = start
        rng = random.Random(spec.seed)
        local = self.local(start)
        t_out = spec.weather.outdoor_c(self._hour(local))
        self.rooms: dict[str, RoomState] = {}
        for key, params in spec.rooms.items():
            t0 = spec.initial_room_c if spec.initial_room_c is not None else t_out + 1.0 + rng.uniform(-0.5, 0.5)
            self.rooms[key] = RoomState(params, t0, spec.seed, key)
        self.acs: dict[str, AcUnit] = {}
        for ac_id in spec.acs:
            unit = AcUnit(spec.ac_params, sensor_offset_c=round(rng.uniform(-0.3, 0.3), 2))
            unit.setpoint_c = 26.0
            self.acs[ac_id] = unit
        self.relays = {rid: RelayBoard(n) for rid, n in spec.relays.items()}
        self.meter = Meter(random.Random(spec.seed + 1), energy_kwh=round(rng.uniform(20000, 90000), 1))
        self.t_out = t_out
        self.base_w = base_load_w(spec.base_load_kw, local)
        self.ac_w = 0.0
        self.channel_w = 0.0
        # AC units are single-phase: spread them over the phases by their order in the config
        self._phase = {ac_id: i % 3 for i, ac_id in enumerate(spec.acs)}
        for ac_id, unit in self.acs.items():
            room = spec.acs[ac_id]
            unit.room_temp_c = (self.rooms[room].t_air if room in self.rooms else t_out) + unit.sensor_offset_c
        self._sample_meter(0.0)

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    @staticmethod
    def _hour(local: datetime) -> float:
        return local.hour + local.minute / 60 + local.second / 3600

    @property
    def site_power_w(self) -> float:
        return self.base_w + self.ac_w + self.channel_w

    def room_temp_c(self, room: str) -> float:
        return self.rooms[room].t_air

    def step_to(self, t: float) -> None:
        """Advance the whole site to unix time `t` (never backwards)."""
        while self.now < t - 1e-9:
            dt = min(MAX_SUBSTEP_S, t - self.now)
            self._step(dt)

    def _step(self, dt: float) -> None:
        now = self.now + dt
        local = self.local(now)
        hour = self._hour(local)
        t_out = self.spec.weather.outdoor_c(hour)
        self.t_out = t_out
        for relay in self.relays.values():
            relay.step(now)
        channel_heat: dict[str, float] = {}
        channel_w = 0.0
        for ch in self.spec.channels:
            board = self.relays.get(ch.relay)
            if board is not None and ch.channel < len(board.coils) and board.coils[ch.channel]:
                channel_w += CHANNEL_W[ch.kind]
                if ch.room is not None:
                    channel_heat[ch.room] = channel_heat.get(ch.room, 0.0) + CHANNEL_W[ch.kind]
        ac_heat: dict[str, float] = {}
        ac_running: set[str] = set()
        for ac_id, unit in self.acs.items():
            room = self.spec.acs[ac_id]
            t_room = self.rooms[room].t_air if room in self.rooms else t_out
            unit.step(now, dt, t_room, t_out)
            if room is not None:
                ac_heat[room] = ac_heat.get(room, 0.0) + unit.heat_w
                if unit.power_on:
                    ac_running.add(room)
        for key, room_state in self.rooms.items():
            away = room_state.away(local)
            people = pupil_heat_w(local, room_state.params.pupils, away)
            room_state.step(dt, t_out, hour, people + channel_heat.get(key, 0.0), ac_heat.get(key, 0.0),
                            key in ac_running, occupied(local, away))
        self.ac_w = sum(u.power_w for u in self.acs.values())
        self.channel_w = channel_w
        self.base_w = base_load_w(self.spec.base_load_kw, local)
        self.now = now
        self._sample_meter(dt)

    def _sample_meter(self, dt: float) -> None:
        p = [self.base_w / 3 * f for f in (1.04, 0.98, 0.98)]  # a slightly unbalanced building
        q = [_q(x, BASE_PF) for x in p]
        for ac_id, unit in self.acs.items():
            ph = self._phase[ac_id]
            p[ph] += unit.power_w
            q[ph] += _q(unit.power_w, AC_PF)
        for i in range(3):  # relay loads (lights, fans) sit on L1..L3 in turn; resistive enough
            p[i] += self.channel_w / 3
        if dt > 0:
            self.meter.step(self.now, dt, p, q)
        else:
            self.meter.p, self.meter.q = p, q

"""Learned room models for the daemon: exported coefficients, pure-Python inference, habits.

`ems.train` fits them offline with scikit-learn; the daemon only multiplies and adds (no numpy:
the daemon stays under 60 MB). Each room's temperature T changes per step (`step_s`, the
history's sample interval) by a linear function of what the controller knows:

    dT = bias + k_temp*T + k_slow*S + k_outdoor*T_out + k_ac_kw*ac_kw + k_on*[units on]
         + k_occupied*occ + k_occupied_open*occ*[no unit on] + sum_k (a_k sin(2 pi k h/24) + b_k cos(2 pi k h/24))

S is the room's slow temperature, an exponential average of T over `slow_tau_s` (hours). It
stands in for the building's mass, which the sensors do not see: after hours of cooling the walls
are cool and the room warms slowly when the AC stops; after a short run it warms fast. The
harmonics of the local hour h stand in for the sun and, where the gateway has no outdoor sensor,
for the outdoor temperature; `[no unit on]` with a class in is the windows-open case. Predictions
roll that step forward (`predict`); a room's headroom is how long it takes, AC off, to reach the
comfort limit (`headroom_s`).

A room with no trained model yet gets `default_model`: a 70 m2 classroom after DOMAIN.md section 5.
Its air (0.27 MJ/K) meets the building's mass, seen through the slow temperature, through H_is and
H_ms in series (0.65 kW/K) and outdoors through glazing and closed-window ventilation (0.12 kW/K),
outdoors being a warm Taipei summer day (27-34 degC, warmest at 14:00); a class puts 0.84 kW into
the air (28 pupils x 50 W, 60 % of it convective) and 0.5 kW more with the windows open (no AC on);
each kW of AC electrical power takes out 3 kW (COP 3). From 26 degC, the mass at 26 degC, a class
in at 10:00, it reaches 28 degC in about 7 minutes with the AC off: the air has little capacity, so
a classroom warms fast once the AC stops, and the learned models of the virtual school agree.

`Habits` say when a room's AC usually first goes on each weekday and at what room temperature,
for pre-cooling before the rush.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ConfigDict, TypeAdapter, ValidationError

log = logging.getLogger(__name__)

MODEL_VERSION = 1
HARMONICS = 2                    # daily and half-daily
DEFAULT_STEP_S = 60.0
DEFAULT_SLOW_TAU_S = 4 * 3600.0
HEADROOM_MAX_S = 2 * 3600.0      # look no further ahead for the comfort limit

# the default model (module docstring)
DEFAULT_AIR_KJ_PER_K = 270.0
DEFAULT_AIR_MASS_KW_PER_K = 1.09 * 1.59 / (1.09 + 1.59)   # H_is and H_ms in series
DEFAULT_AIR_OUT_KW_PER_K = 0.12
DEFAULT_OUTDOOR_MEAN_C = 30.5
DEFAULT_OUTDOOR_SWING_C = 3.5
DEFAULT_WARMEST_H = 14.0
DEFAULT_PUPILS_KW = 0.84
DEFAULT_OPEN_WINDOWS_KW = 0.5
DEFAULT_COP = 3.0

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ModelFileError(ValueError):
    """A room-model file that cannot be used (says which file and which field)."""


def _harmonics(hour: float) -> list[float]:
    out = []
    for k in range(1, HARMONICS + 1):
        w = 2 * math.pi * k * hour / 24
        out += [math.sin(w), math.cos(w)]
    return out


@dataclass(frozen=True, slots=True)
class RoomModel:
    """One room's one-step temperature model (coefficients per step of `step_s`)."""

    __pydantic_config__ = _STRICT

    room: str
    bias: float
    k_temp: float
    k_slow: float
    k_outdoor: float
    k_ac_kw: float
    k_on: float
    k_occupied: float
    k_occupied_open: float
    k_hour: tuple[float, ...]            # (sin, cos) of the daily harmonics 1..HARMONICS
    step_s: float = DEFAULT_STEP_S
    slow_tau_s: float = DEFAULT_SLOW_TAU_S
    outdoor_mean_c: float = DEFAULT_OUTDOOR_MEAN_C  # used for outdoor_c when the model has k_outdoor and none is given
    version: int = MODEL_VERSION
    trained_at: float | None = None      # None: the default model
    rmse_15min_c: float | None = None    # held-out error of the 15-minute prediction
    n_samples: int = 0

    def __post_init__(self) -> None:
        where = f"room model {self.room!r}"
        if self.version != MODEL_VERSION:
            raise ValueError(f"{where}: version {self.version}, this gateway reads version {MODEL_VERSION}")
        if len(self.k_hour) != 2 * HARMONICS:
            raise ValueError(f"{where}: k_hour has {len(self.k_hour)} values, needs {2 * HARMONICS}")
        if not (self.step_s > 0 and self.slow_tau_s > 0):
            raise ValueError(f"{where}: step_s ({self.step_s}) and slow_tau_s ({self.slow_tau_s}) must be > 0")
        values = [self.bias, self.k_temp, self.k_slow, self.k_outdoor, self.k_ac_kw, self.k_on, self.k_occupied,
                  self.k_occupied_open, *self.k_hour, self.outdoor_mean_c]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{where}: a coefficient is not a finite number")

    @property
    def trained(self) -> bool:
        return self.trained_at is not None

    def step_c(self, temp_c: float, slow_c: float, *, units_on: int, ac_kw: float, occupied: bool | None,
               hour: float, outdoor_c: float | None = None) -> float:
        """Temperature change over one step of `step_s` (occupied None counts as empty)."""
        occ = 1.0 if occupied else 0.0
        on = 1.0 if units_on > 0 else 0.0
        t_out = self.outdoor_mean_c if outdoor_c is None else outdoor_c
        d = (self.bias + self.k_temp * temp_c + self.k_slow * slow_c + self.k_outdoor * t_out
             + self.k_ac_kw * ac_kw + self.k_on * on + self.k_occupied * occ + self.k_occupied_open * occ * (1 - on))
        for k, h in zip(self.k_hour, _harmonics(hour), strict=True):
            d += k * h
        return d

    def track_slow(self, slow_c: float, temp_c: float, dt_s: float) -> float:
        """The slow temperature after `dt_s` seconds ending at `temp_c` (what the daemon keeps per room)."""
        return slow_c + (temp_c - slow_c) * (1 - math.exp(-max(0.0, dt_s) / self.slow_tau_s))

    def _roll(self, temp_c: float, horizon_s: float, *, units_on: int, ac_kw: float, occupied: bool | None,
              hour: float, outdoor_c: float | None, slow_c: float | None,
              stop_at_c: float | None = None) -> tuple[float, float]:
        """(temperature after horizon_s, seconds until stop_at_c was reached or horizon_s)."""
        if not (horizon_s >= 0 and math.isfinite(horizon_s)):
            raise ValueError(f"room model {self.room!r}: horizon_s must be >= 0, got {horizon_s}")
        t, s, h, elapsed = temp_c, (temp_c if slow_c is None else slow_c), hour, 0.0
        while elapsed < horizon_s:
            dt = min(self.step_s, horizon_s - elapsed)
            d = self.step_c(t, s, units_on=units_on, ac_kw=ac_kw, occupied=occupied, hour=h % 24,
                            outdoor_c=outdoor_c) * dt / self.step_s
            if stop_at_c is not None and d > 0 and t + d >= stop_at_c:
                return stop_at_c, elapsed + dt * (stop_at_c - t) / d
            t += d
            s = self.track_slow(s, t, dt)
            h += dt / 3600
            elapsed += dt
        return t, elapsed

    def predict(self, temp_c: float, horizon_s: float, *, units_on: int, ac_kw: float, occupied: bool | None,
                hour: float, outdoor_c: float | None = None, slow_c: float | None = None) -> float:
        """Room temperature `horizon_s` from now with these inputs held (slow_c None: as if steady at temp_c)."""
        return self._roll(temp_c, horizon_s, units_on=units_on, ac_kw=ac_kw, occupied=occupied, hour=hour,
                          outdoor_c=outdoor_c, slow_c=slow_c)[0]

    def rise_c_per_h(self, temp_c: float, *, occupied: bool | None, hour: float, outdoor_c: float | None = None,
                     slow_c: float | None = None, horizon_s: float = 900.0) -> float:
        """Predicted rate of rise with every AC off, averaged over `horizon_s`."""
        if horizon_s <= 0:
            raise ValueError(f"room model {self.room!r}: horizon_s must be > 0, got {horizon_s}")
        end = self.predict(temp_c, horizon_s, units_on=0, ac_kw=0.0, occupied=occupied, hour=hour,
                           outdoor_c=outdoor_c, slow_c=slow_c)
        return (end - temp_c) * 3600 / horizon_s

    def headroom_s(self, temp_c: float, limit_c: float, *, occupied: bool | None, hour: float,
                   outdoor_c: float | None = None, slow_c: float | None = None,
                   max_s: float = HEADROOM_MAX_S) -> float:
        """Seconds until the room reaches `limit_c` with every AC off: 0 at or above it, inf if not within max_s."""
        if temp_c >= limit_c:
            return 0.0
        end, elapsed = self._roll(temp_c, max_s, units_on=0, ac_kw=0.0, occupied=occupied, hour=hour,
                                  outdoor_c=outdoor_c, slow_c=slow_c, stop_at_c=limit_c)
        return elapsed if end >= limit_c else math.inf


def default_model(room: str, step_s: float = DEFAULT_STEP_S) -> RoomModel:
    """The untrained model (module docstring); explicit steps stay accurate up to a few minutes."""
    g = step_s / DEFAULT_AIR_KJ_PER_K            # K per step for each kW into the air
    out = g * DEFAULT_AIR_OUT_KW_PER_K
    w = 2 * math.pi * DEFAULT_WARMEST_H / 24
    swing = out * DEFAULT_OUTDOOR_SWING_C         # out * swing * cos(w_h - w): warmest at DEFAULT_WARMEST_H
    return RoomModel(
        room=room, bias=out * DEFAULT_OUTDOOR_MEAN_C,
        k_temp=-g * (DEFAULT_AIR_MASS_KW_PER_K + DEFAULT_AIR_OUT_KW_PER_K), k_slow=g * DEFAULT_AIR_MASS_KW_PER_K,
        k_outdoor=0.0, k_ac_kw=-g * DEFAULT_COP, k_on=0.0,
        k_occupied=g * DEFAULT_PUPILS_KW, k_occupied_open=g * DEFAULT_OPEN_WINDOWS_KW,
        k_hour=(swing * math.sin(w), swing * math.cos(w), 0.0, 0.0), step_s=step_s,
        outdoor_mean_c=DEFAULT_OUTDOOR_MEAN_C)


class SlowTemps:
    """Each room's slow temperature, kept by the daemon from its samples (seed it from the history at start)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}    # room -> (slow_c, when)

    def update(self, model: RoomModel, temp_c: float, now: float) -> float:
        """Feed a reading of `model.room` at unix time `now`; returns the new slow temperature."""
        prev = self._state.get(model.room)
        slow = temp_c if prev is None else model.track_slow(prev[0], temp_c, now - prev[1])
        self._state[model.room] = (slow, max(now, prev[1]) if prev is not None else now)
        return slow

    def get(self, room: str) -> float | None:
        found = self._state.get(room)
        return None if found is None else found[0]


@dataclass(frozen=True, slots=True)
class Habits:
    """When a room's AC usually first goes on, per weekday, and how warm the room is when someone switches on."""

    __pydantic_config__ = _STRICT

    room: str
    first_on_min: tuple[float | None, ...]   # Monday..Sunday: minutes after local midnight; None = no habit
    on_temp_c: float | None                   # median room temperature at a switch-on
    days: int                                 # days of history behind them
    switch_ons: int                           # switch-ons counted

    def __post_init__(self) -> None:
        if len(self.first_on_min) != 7:
            raise ValueError(f"habits of {self.room!r}: first_on_min needs 7 days (Monday..Sunday), "
                             f"got {len(self.first_on_min)}")

    def first_on(self, weekday: int) -> float | None:
        """The usual first switch-on on `weekday` (0 = Monday), minutes after local midnight."""
        return self.first_on_min[weekday]


@dataclass(frozen=True, slots=True)
class RoomModels:
    """What `campus-edge ems train` writes (models/rooms.json) and the daemon reads."""

    __pydantic_config__ = _STRICT

    rooms: Mapping[str, RoomModel] = field(default_factory=dict)
    habits: Mapping[str, Habits] = field(default_factory=dict)
    trained_at: float | None = None
    tz: str = "Asia/Taipei"                   # the zone of the hours and weekdays above
    version: int = MODEL_VERSION

    def model(self, room: str) -> RoomModel:
        """The room's trained model, else the default one."""
        found = self.rooms.get(room)
        return found if found is not None else default_model(room)

    def habits_of(self, room: str) -> Habits | None:
        return self.habits.get(room)

    def to_json(self) -> str:
        return _ADAPTER.dump_json(self, indent=1).decode()

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "room models") -> RoomModels:
        """Parse and check a models document; ModelFileError says where and what."""
        try:
            found = _ADAPTER.validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise ModelFileError(f"{where}: {problems}") from None
        if found.version != MODEL_VERSION:
            raise ModelFileError(f"{where}: version {found.version}, this gateway reads version {MODEL_VERSION}")
        for name, m in found.rooms.items():
            if m.room != name:
                raise ModelFileError(f"{where}: rooms.{name} holds the model of room {m.room!r}")
        return found

    @classmethod
    def load(cls, path: Path | str) -> RoomModels:
        """Read a models file; OSError when it cannot be read, ModelFileError when it is not valid."""
        return cls.from_json(Path(path).read_bytes(), str(path))

    def save(self, path: Path | str) -> None:
        """Write atomically (temp file, fsync, rename, fsync of the folder): a crash leaves the old file or the new."""
        write_atomic(Path(path), self.to_json() + "\n")


_ADAPTER: TypeAdapter[RoomModels] = TypeAdapter(RoomModels)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see either the old content or the new, even after a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_models(path: Path | str) -> RoomModels:
    """The daemon's read: no file means no training yet; a bad one is logged and every room gets the default."""
    try:
        return RoomModels.load(path)
    except FileNotFoundError:
        return RoomModels()
    except (OSError, ModelFileError) as exc:
        log.error("room models %s cannot be used (%s): every room runs on the default model", path, exc)
        return RoomModels()

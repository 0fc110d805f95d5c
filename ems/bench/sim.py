"""The virtual school the bench runs a controller against: the simulator's room and AC physics, the
scenario's weather, base load and timetable, and a site meter (power and an energy counter).

Built from a `Scenario` alone, deterministic given its seed. The classrooms are spread over the
floors (the top one under the roof, with the roof's sun), a seeded share faces west (afternoon sun);
each has `units_per_room` inverter split units (`simulator.physics.AcUnit`). Before `start` the rooms
run `spinup_h` hours without AC (the nights and days before), so the morning begins from a warmed
building mass rather than from a guess. Site power = base load + the AC units (nothing else).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, tzinfo

from ems.scenario import ConstantLoad, ElementaryTimetable, Scenario, SeriesWeather, minutes, room_layout, series_at
from simulator.physics import MAX_SUBSTEP_S, AcParams, AcUnit, RoomParams, RoomState, Weather
from simulator.timetable import ELEMENTARY_DAY, SCHOOL_DAYS, Slot

SPINUP_STEP_S = 60.0       # rooms only, no AC: the air node's time constant is ~300 s, 60 s Euler steps stay stable
SENSOR_OFFSET_C = 0.3      # each unit's room sensor reads off by up to this (seeded), as in the simulator


@dataclass(frozen=True, slots=True)
class BenchRoom:
    """One classroom of the bench school."""

    id: str
    floor: int
    params: RoomParams
    units: tuple[str, ...]
    priority: int = 0
    empty: bool = False        # the class is away all day (its ACs were left on)


def timetable_day(sc: Scenario) -> tuple[Slot, ...]:
    """The scenario's school day as timetable slots."""
    tt = sc.timetable
    if isinstance(tt, ElementaryTimetable):
        return ELEMENTARY_DAY
    return tuple(Slot(minutes(p.start), minutes(p.end), p.name, p.presence, p.pupil_w, p.lesson) for p in tt.periods)


def away_lessons(seed: int, room: str, day_of_year: int, lessons: int, share: float) -> frozenset[int]:
    """Lessons (1..`lessons`) a class spends elsewhere (PE, music): the simulator's recipe with a share."""
    rng = random.Random(f"{seed}/{room}/{day_of_year}")
    return frozenset(n for n in range(1, lessons + 1) if rng.random() < share)


class BenchSchool:
    """The rooms, their AC units, the weather and the site meter, advanced by `advance_to(t)`."""

    def __init__(self, sc: Scenario) -> None:
        self.scenario = sc
        tz = sc.start.tzinfo
        assert tz is not None  # the scenario model insists on an offset
        self.tz: tzinfo = tz
        self.start = sc.start_ts
        self.end = sc.end_ts
        self.day = timetable_day(sc)
        self._lesson_no: dict[int, int] = {}
        for i, slot in enumerate(self.day):
            if slot.lesson:
                self._lesson_no[i] = len(self._lesson_no) + 1
        self._away_share = sc.timetable.away_share
        self._away: dict[tuple[str, int], frozenset[int]] = {}
        self._occ_at: float | None = None
        self._occ: dict[str, bool] = {}
        rng = random.Random(sc.seed)
        layout = room_layout(sc.rooms)
        west = set(rng.sample(range(len(layout)), round(sc.rooms.west_facing_share * len(layout))))
        ac = AcParams(cooling_w=sc.rooms.unit_cooling_kw * 1000.0, rated_power_w=sc.rooms.unit_rated_kw * 1000.0)
        empty = set(sc.empty_rooms)
        self.rooms: dict[str, BenchRoom] = {}
        self.units: dict[str, AcUnit] = {}
        self.unit_room: dict[str, str] = {}
        for i, (rid, floor) in enumerate(layout):
            params = RoomParams(area_m2=sc.rooms.area_m2, west_facing=i in west, top_floor=floor == sc.rooms.floors,
                                pupils=sc.rooms.pupils)
            uids = tuple(f"ac-{rid}{chr(ord('a') + k)}" for k in range(sc.rooms.units_per_room))
            self.rooms[rid] = BenchRoom(rid, floor, params, uids, sc.room_priority.get(rid, 0), rid in empty)
            for uid in uids:
                self.units[uid] = AcUnit(ac, sensor_offset_c=round(rng.uniform(-SENSOR_OFFSET_C, SENSOR_OFFSET_C), 2))
                self.unit_room[uid] = rid
        self.now = self.start - sc.spinup_h * 3600.0
        t_out = self.outdoor_c(self.hour(self.now))
        self.air: dict[str, RoomState] = {}
        for rid, room in self.rooms.items():
            t0 = t_out + 1.0 + rng.uniform(-0.5, 0.5)
            self.air[rid] = RoomState(room.params, t0, sc.seed, rid)
        self._spin_up()
        self.energy_kwh = 0.0                       # the site meter's import counter
        self.room_ac_kwh = dict.fromkeys(self.rooms, 0.0)
        self.site_kw = self.base_kw(self.now) + self.ac_kw()
        for uid, unit in self.units.items():
            unit.room_temp_c = self.air[self.unit_room[uid]].t_air + unit.sensor_offset_c

    # -- time, weather, load -----------------------------------------------------------------------
    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def hour(self, t: float) -> float:
        d = self.local(t)
        return d.hour + d.minute / 60 + (d.second + d.microsecond / 1e6) / 3600

    def outdoor_c(self, hour: float) -> float:
        w = self.scenario.weather
        if isinstance(w, SeriesWeather):
            return series_at(w.points, hour)
        return Weather(w.min_c, w.max_c, w.peak_hour).outdoor_c(hour)

    def base_kw(self, t: float) -> float:
        b = self.scenario.base_load_kw
        return b.kw if isinstance(b, ConstantLoad) else series_at(b.points, self.hour(t))

    def ac_kw(self) -> float:
        return sum(u.power_w for u in self.units.values()) / 1000.0

    # -- the timetable -----------------------------------------------------------------------------
    def slot_index(self, local: datetime) -> int | None:
        """Index in the day of the slot at `local`, None outside school hours."""
        if local.weekday() not in SCHOOL_DAYS:
            return None
        minute = local.hour * 60 + local.minute
        for i, slot in enumerate(self.day):
            if slot.start_min <= minute < slot.end_min:
                return i
        return None

    def away(self, room: str, local: datetime) -> frozenset[int]:
        key = (room, local.timetuple().tm_yday)
        got = self._away.get(key)
        if got is None:
            got = away_lessons(self.scenario.seed, room, key[1], len(self._lesson_no), self._away_share)
            self._away[key] = got
        return got

    def _present(self, room: str, local: datetime, i: int | None) -> float:
        """Share of the class in the room (0 when away for the lesson or all day)."""
        if i is None or self.rooms[room].empty:
            return 0.0
        lesson = self._lesson_no.get(i)
        if lesson is not None and lesson in self.away(room, local):
            return 0.0
        return self.day[i].presence

    def occupancy(self, t: float) -> dict[str, bool]:
        """Room -> the class is (mostly) in the room at `t` (the last answer is kept: asked every step)."""
        if self._occ_at != t:
            local = self.local(t)
            i = self.slot_index(local)
            self._occ = {rid: self._present(rid, local, i) >= 0.5 for rid in self.rooms}
            self._occ_at = t
        return self._occ

    def occupied(self, room: str, t: float) -> bool:
        """The class is (mostly) in the room at `t`."""
        return self.occupancy(t)[room]

    def back_at(self, room: str, t: float) -> float | None:
        """When the class of an empty room is (mostly) back today, from the timetable; None if not today."""
        local = self.local(t)
        if local.weekday() not in SCHOOL_DAYS:
            return None
        minute = local.hour * 60 + local.minute
        midnight = t - (local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6)
        for j, s in enumerate(self.day):
            if s.start_min > minute and self._present(room, local, j) >= 0.5:
                return midnight + s.start_min * 60
        return None

    def leaving_for(self, room: str, t: float) -> str | None:
        """Why a class that just left is out at `t`: "away" (a lesson elsewhere), "home" (the day is over), or None."""
        local = self.local(t)
        i = self.slot_index(local)
        if i is not None and i in self._lesson_no and self._present(room, local, i) == 0.0:
            return "away"
        minute = local.hour * 60 + local.minute
        if any(s.start_min > minute and self._present(room, local, j) >= 0.5 for j, s in enumerate(self.day)):
            return None
        return "home"

    # -- physics -----------------------------------------------------------------------------------
    def _spin_up(self) -> None:
        while self.now < self.start - 1e-9:
            dt = min(SPINUP_STEP_S, self.start - self.now)
            self._rooms_step(dt, with_ac=False)

    def advance_to(self, t: float) -> None:
        """Advance rooms, units and meter to unix time `t` in sub-steps of at most 10 s."""
        while self.now < t - 1e-9:
            self._rooms_step(min(MAX_SUBSTEP_S, t - self.now), with_ac=True)

    def _rooms_step(self, dt: float, *, with_ac: bool) -> None:
        now = self.now + dt
        local = self.local(now)
        hour = local.hour + local.minute / 60 + (local.second + local.microsecond / 1e6) / 3600
        t_out = self.outdoor_c(hour)
        i = self.slot_index(local)
        slot = self.day[i] if i is not None else None
        ac_w = 0.0
        for rid, room in self.rooms.items():
            state = self.air[rid]
            heat = 0.0
            running = False
            if with_ac:
                room_w = 0.0
                for uid in room.units:
                    unit = self.units[uid]
                    unit.step(now, dt, state.t_air, t_out)
                    heat += unit.heat_w
                    running = running or unit.power_on
                    room_w += unit.power_w
                self.room_ac_kwh[rid] += room_w * dt / 3.6e6
                ac_w += room_w
            present = self._present(rid, local, i)
            people = room.params.pupils * present * slot.watts_per_pupil if slot is not None else 0.0
            state.step(dt, t_out, hour, people, heat, running, present >= 0.5)
        self.now = now
        if with_ac:
            self.site_kw = self.base_kw(now) + ac_w / 1000.0
            self.energy_kwh += self.site_kw * dt / 3600.0

    def room_temp_c(self, room: str) -> float:
        """The room's air temperature (the truth; the units' sensors read slightly off)."""
        return self.air[room].t_air

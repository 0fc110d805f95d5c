"""An EMS bench scenario (CONTRACT.md section 5): a school day to run a controller on, as strict models.

Unknown keys are an error; every omitted key takes the default written next to it here. A scenario
is loaded with `load_scenario(path)`, which reports every problem at once with file, line and field
path (the loader of site configs does the same for `campus-edge check-config`).

Defaults, for a key left out:
    name: the file's name without `.yaml`          duration_h: 11       step_s: 10 (control period)
    seed: 7                                        spinup_h: 48 (days before `start` without AC)
    tariff: {basic_twd_per_kw: 236.2, school_leniency: true}
    weather: {kind: diurnal, min_c: 27, max_c: 34, peak_hour: 14}
    base_load_kw: {kind: series, points: [["07:00", 20], ["12:00", 35], ["17:00", 12]]}
    rooms: {count: 40, units_per_room: 2, unit_cooling_kw: 5.0, unit_rated_kw: 1.7, area_m2: 70,
            floors: 4, west_facing_share: 0.3, pupils: 28}
    timetable: {kind: elementary, away_share: 0.2}
    teachers: {on_above_c: 28, setpoint_choices_c: [26, 27, 28], override_per_h: 0.2,
               forget_share: 0.2, reaction_s: 120, retry_s: 300}
    comfort: {upper_c: 28}
    room_priority: {}      empty_rooms: []
`start` and `contract_kw` have no default. Series hold their first value before the first point and
their last after the last, and are linear in between (times of day, local).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.core.loader import ConfigError, problem_at, pydantic_problems, read_mapping

HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"
Clock = Annotated[str, Field(pattern=HHMM)]
_UNIONS = frozenset({"weather", "base_load_kw", "timetable"})   # pydantic puts the chosen kind after these in paths
_TAGS = frozenset({"diurnal", "series", "constant", "elementary", "periods"})


def _readable(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The file's path: the union's kind (diurnal, series, ...) left out after weather, base_load_kw, timetable."""
    return (loc[0], *loc[2:]) if len(loc) > 1 and loc[0] in _UNIONS and loc[1] in _TAGS else loc


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def minutes(hhmm: str) -> int:
    """Minutes after midnight of "HH:MM"."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _increasing(points: Sequence[tuple[str, float]]) -> None:
    for (a, _), (b, _) in itertools.pairwise(points):
        if minutes(b) <= minutes(a):
            raise ValueError(f"times must increase: {b} comes after {a}")


def series_at(points: Sequence[tuple[str, float]], hour: float) -> float:
    """A daily series at local `hour`: linear between points, held before the first and after the last."""
    x = hour * 60.0
    first_m, first_v = minutes(points[0][0]), points[0][1]
    if x <= first_m:
        return first_v
    prev_m, prev_v = first_m, first_v
    for t, v in points[1:]:
        m = minutes(t)
        if x <= m:
            return prev_v + (v - prev_v) * (x - prev_m) / (m - prev_m)
        prev_m, prev_v = m, v
    return prev_v


class DiurnalWeather(_Model):
    """Outdoor temperature: minimum at 05:00, maximum at `peak_hour` (cosine in between)."""

    kind: Literal["diurnal"]
    min_c: float = Field(27.0, ge=-20, le=50)
    max_c: float = Field(34.0, ge=-20, le=50)
    peak_hour: float = Field(14.0, gt=5, lt=24)

    @model_validator(mode="after")
    def _order(self) -> DiurnalWeather:
        if self.max_c < self.min_c:
            raise ValueError(f"max_c {self.max_c:g} is below min_c {self.min_c:g}")
        return self


class SeriesWeather(_Model):
    """Outdoor temperature by time of day: [["07:00", 28.1], ...]."""

    kind: Literal["series"]
    points: list[tuple[Clock, Annotated[float, Field(ge=-20, le=50)]]] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _inc(cls, v: list[tuple[str, float]]) -> list[tuple[str, float]]:
        _increasing(v)
        return v


class SeriesLoad(_Model):
    """The building's load without the classroom ACs (lights, fans, computers, kitchen) by time of day."""

    kind: Literal["series"]
    points: list[tuple[Clock, Annotated[float, Field(ge=0, le=100000)]]] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _inc(cls, v: list[tuple[str, float]]) -> list[tuple[str, float]]:
        _increasing(v)
        return v


class ConstantLoad(_Model):
    kind: Literal["constant"]
    kw: float = Field(ge=0, le=100000)


class Rooms(_Model):
    """The classrooms: spread over `floors` (the top one under the roof), a share facing west."""

    count: int = Field(40, ge=1, le=1000)
    units_per_room: int = Field(2, ge=1, le=8)
    unit_cooling_kw: float = Field(5.0, gt=0, le=50)
    unit_rated_kw: float = Field(1.7, gt=0, le=20)   # electrical input at full output
    area_m2: float = Field(70.0, gt=5, le=1000)
    floors: int = Field(4, ge=1, le=50)
    west_facing_share: float = Field(0.3, ge=0, le=1)
    pupils: int = Field(28, ge=0, le=100)

    @model_validator(mode="after")
    def _fit(self) -> Rooms:
        if self.floors > self.count:
            raise ValueError(f"{self.floors} floors for {self.count} rooms: at least one room per floor")
        return self


class ElementaryTimetable(_Model):
    """The elementary day of `simulator.timetable` (40-minute periods, breaks, lunch and nap)."""

    kind: Literal["elementary"]
    away_share: float = Field(0.2, ge=0, le=1)   # chance a class spends a lesson elsewhere (PE, music)


class Period(_Model):
    """One part of a day of one's own: the share of the class present and the heat per pupil."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: Clock = Field(alias="from")
    end: Clock = Field(alias="to")
    name: str = Field(min_length=1, max_length=40)
    presence: float = Field(1.0, ge=0, le=1)
    lesson: bool = False                  # a lesson may be spent elsewhere (away_share)
    pupil_w: float = Field(50.0, ge=0, le=200)

    @model_validator(mode="after")
    def _order(self) -> Period:
        if minutes(self.end) <= minutes(self.start):
            raise ValueError(f"to {self.end} is not after from {self.start}")
        return self


class PeriodsTimetable(_Model):
    kind: Literal["periods"]
    periods: list[Period] = Field(min_length=1)
    away_share: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> PeriodsTimetable:
        for a, b in itertools.pairwise(self.periods):
            if minutes(b.start) < minutes(a.end):
                raise ValueError(f"period {b.name!r} starts at {b.start}, before {a.name!r} ends at {a.end}")
        return self


class Teachers(_Model):
    """How teachers use the AC: on when the class is in and it is hot, with a setpoint of their choice."""

    on_above_c: float = Field(28.0, ge=15, le=40)
    setpoint_choices_c: list[Annotated[float, Field(ge=16, le=32)]] = Field([26.0, 27.0, 28.0], min_length=1)
    override_per_h: float = Field(0.2, ge=0, le=60)   # setpoint changes per hour while on
    forget_share: float = Field(0.2, ge=0, le=1)      # share of switch-offs forgotten (leaving for PE, home)
    reaction_s: float = Field(120.0, ge=0, le=3600)   # mean delay before a teacher reaches for the app
    retry_s: float = Field(300.0, gt=0, le=3600)      # a refused start is asked again after about this


class Comfort(_Model):
    upper_c: float = Field(28.0, ge=15, le=40)


class Tariff(_Model):
    basic_twd_per_kw: float = Field(236.2, gt=0, le=10000)
    school_leniency: bool = True      # DOMAIN.md section 2: the first 5 % over the contract at 1x


Weather = Annotated[DiurnalWeather | SeriesWeather, Field(discriminator="kind")]
BaseLoad = Annotated[SeriesLoad | ConstantLoad, Field(discriminator="kind")]
Timetable = Annotated[ElementaryTimetable | PeriodsTimetable, Field(discriminator="kind")]


class Scenario(_Model):
    """A bench scenario: the school, its day and its contract."""

    name: str | None = Field(None, min_length=1, max_length=80)
    start: datetime
    duration_h: float = Field(11.0, gt=0, le=72)
    step_s: float = Field(10.0, ge=1, le=60)
    seed: int = 7
    spinup_h: float = Field(48.0, ge=0, le=240)
    contract_kw: float = Field(gt=0, le=100000)
    tariff: Tariff = Tariff()
    weather: Weather = DiurnalWeather(kind="diurnal")
    base_load_kw: BaseLoad = SeriesLoad(kind="series", points=[("07:00", 20.0), ("12:00", 35.0), ("17:00", 12.0)])
    rooms: Rooms = Rooms()
    timetable: Timetable = ElementaryTimetable(kind="elementary")
    teachers: Teachers = Teachers()
    comfort: Comfort = Comfort()
    room_priority: dict[str, int] = Field(default_factory=dict)   # room id -> priority (higher: shed later)
    empty_rooms: list[str] = Field(default_factory=list)          # classes away all day; ACs left on overnight

    @field_validator("start")
    @classmethod
    def _offset(cls, v: datetime) -> datetime:
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("needs a UTC offset, e.g. 2026-06-16T07:00:00+08:00")
        return v

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.start_ts + self.duration_h * 3600.0

    def base_kw(self, hour: float) -> float:
        """The building's load without classroom ACs at local `hour`."""
        b = self.base_load_kw
        return b.kw if isinstance(b, ConstantLoad) else series_at(b.points, hour)


def room_layout(rooms: Rooms) -> list[tuple[str, int]]:
    """(room id, floor) of every classroom: spread evenly over the floors, ids FLOOR + two digits ("101")."""
    out: list[tuple[str, int]] = []
    per_floor: dict[int, int] = {}
    for i in range(rooms.count):
        floor = i * rooms.floors // rooms.count + 1
        per_floor[floor] = per_floor.get(floor, 0) + 1
        out.append((f"{floor}{per_floor[floor]:02d}", floor))
    return out


def _cross_checks(sc: Scenario) -> Iterator[tuple[tuple[str | int, ...], str]]:
    ids = {rid for rid, _ in room_layout(sc.rooms)}
    for rid in sc.room_priority:
        if rid not in ids:
            yield ("room_priority", rid), f"no room {rid!r} (rooms are {_id_range(sc.rooms)})"
    seen: set[str] = set()
    for i, rid in enumerate(sc.empty_rooms):
        if rid not in ids:
            yield ("empty_rooms", i), f"no room {rid!r} (rooms are {_id_range(sc.rooms)})"
        elif rid in seen:
            yield ("empty_rooms", i), f"room {rid!r} listed twice"
        seen.add(rid)


def _id_range(rooms: Rooms) -> str:
    layout = room_layout(rooms)
    return f"{layout[0][0]}..{layout[-1][0]} by floor"


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load and validate a scenario file; raise ConfigError listing every problem (file:line: field: what)."""
    p = Path(path)
    name = str(path)
    data, lines, problems = read_mapping(p)
    if problems:
        raise ConfigError(problems)
    data.setdefault("name", p.name.removesuffix(".yaml").removesuffix(".yml"))
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(pydantic_problems(name, exc, lines, _readable)) from None
    found = [problem_at(name, loc, lines, msg) for loc, msg in _cross_checks(sc)]
    if found:
        raise ConfigError(found)
    return sc

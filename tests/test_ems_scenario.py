"""ems.scenario: the bench's scenario files — strict keys, documented defaults, every problem with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.core.loader import ConfigError
from ems.scenario import (
    DiurnalWeather,
    ElementaryTimetable,
    PeriodsTimetable,
    SeriesLoad,
    load_scenario,
    room_layout,
    series_at,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "ems" / "scenarios"

MINIMAL = 'start: "2026-06-16T07:00:00+08:00"\ncontract_kw: 150\n'


def write(tmp_path: Path, text: str, name: str = "day.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_scenario(path)
    return [str(p) for p in ei.value.problems]


def test_defaults_for_every_omitted_key(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, MINIMAL, "quiet-day.yaml"))
    assert sc.name == "quiet-day"                       # the file's name
    assert (sc.duration_h, sc.step_s, sc.seed, sc.spinup_h) == (11.0, 10.0, 7, 48.0)
    assert sc.contract_kw == 150.0
    assert sc.start_ts == 1781564400.0                  # 2026-06-15T23:00Z
    assert sc.end_ts - sc.start_ts == 11 * 3600
    assert (sc.tariff.basic_twd_per_kw, sc.tariff.school_leniency) == (236.2, True)
    assert sc.weather == DiurnalWeather(kind="diurnal", min_c=27.0, max_c=34.0, peak_hour=14.0)
    assert isinstance(sc.base_load_kw, SeriesLoad)
    assert sc.base_kw(12.0) == 35.0
    r = sc.rooms
    assert (r.count, r.units_per_room, r.unit_cooling_kw, r.unit_rated_kw, r.area_m2, r.floors,
            r.west_facing_share, r.pupils) == (40, 2, 5.0, 1.7, 70.0, 4, 0.3, 28)
    assert sc.timetable == ElementaryTimetable(kind="elementary", away_share=0.2)
    t = sc.teachers
    assert (t.on_above_c, t.setpoint_choices_c, t.override_per_h, t.forget_share, t.reaction_s, t.retry_s) == (
        28.0, [26.0, 27.0, 28.0], 0.2, 0.2, 120.0, 300.0)
    assert sc.comfort.upper_c == 28.0
    assert (sc.room_priority, sc.empty_rooms) == ({}, [])


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rooms:\n  count: 10\n  colour: blue\nextra_thing: 1\n")
    found = problems(path)
    assert f"{path}:5: rooms.colour: unknown key" in found
    assert f"{path}:6: extra_thing: unknown key" in found
    assert len(found) == 2


def test_every_problem_at_once_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'start: "2026-06-16T07:00:00"\ncontract_kw: -5\nstep_s: ten\n'
                           "weather: {kind: diurnal, min_c: warm}\n")
    found = problems(path)
    assert len(found) == 4
    assert any(f.startswith(f"{path}:1: start: ") and "UTC offset" in f for f in found)
    assert any(f.startswith(f"{path}:2: contract_kw: ") for f in found)
    assert any(f.startswith(f"{path}:3: step_s: ") for f in found)
    assert any(f.startswith(f"{path}:4: weather.min_c: ") for f in found)   # no "diurnal" in the path


def test_missing_contract_is_named(tmp_path: Path) -> None:
    found = problems(write(tmp_path, 'start: "2026-06-16T07:00:00+08:00"\n'))
    assert len(found) == 1
    assert "contract_kw: Field required" in found[0]


def test_series_weather_and_its_checks(tmp_path: Path) -> None:
    ok = load_scenario(write(tmp_path, MINIMAL + 'weather: {kind: series, points: [["07:00", 28], ["13:00", 34]]}\n'))
    assert ok.weather.kind == "series"
    found = problems(write(tmp_path, MINIMAL + 'weather:\n  kind: series\n  points: [["13:00", 28], ["07:00", 34]]\n'))
    assert len(found) == 1
    assert ":5: weather.points: " in found[0]
    assert "times must increase" in found[0]
    bad_time = problems(write(tmp_path, MINIMAL + 'weather: {kind: series, points: [["7:00", 28]]}\n'))
    assert "weather.points[0][0]" in bad_time[0]
    unknown_kind = problems(write(tmp_path, MINIMAL + "weather: {kind: tropical}\n"))
    assert ":3: weather: " in unknown_kind[0]


def test_constant_base_load(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, MINIMAL + "base_load_kw: {kind: constant, kw: 42}\n"))
    assert sc.base_kw(3.0) == sc.base_kw(15.0) == 42.0


def test_series_interpolates_and_holds_its_ends() -> None:
    pts = [("07:00", 20.0), ("12:00", 35.0), ("17:00", 12.0)]
    assert series_at(pts, 6.0) == 20.0
    assert series_at(pts, 7.0) == 20.0
    assert series_at(pts, 9.5) == pytest.approx(27.5)
    assert series_at(pts, 12.0) == 35.0
    assert series_at(pts, 14.5) == pytest.approx(23.5)
    assert series_at(pts, 23.0) == 12.0
    assert series_at([("10:00", 5.0)], 0.0) == series_at([("10:00", 5.0)], 20.0) == 5.0


def test_periods_timetable(tmp_path: Path) -> None:
    text = MINIMAL + ("timetable:\n  kind: periods\n  periods:\n"
                      "    - {from: '08:00', to: '08:45', name: maths, lesson: true}\n"
                      "    - {from: '08:55', to: '09:40', name: art, presence: 0.9, lesson: true}\n")
    sc = load_scenario(write(tmp_path, text))
    assert isinstance(sc.timetable, PeriodsTimetable)
    assert [p.start for p in sc.timetable.periods] == ["08:00", "08:55"]
    overlap = text.replace("'08:55'", "'08:30'")
    found = problems(write(tmp_path, overlap))
    assert len(found) == 1
    assert "timetable: " in found[0]
    assert "before 'maths' ends" in found[0]
    backwards = problems(write(tmp_path, text.replace("to: '08:45'", "to: '07:45'")))
    assert ":6: timetable.periods[0]: " in backwards[0]


def test_room_references_must_exist(tmp_path: Path) -> None:
    text = MINIMAL + ("rooms: {count: 8, floors: 2}\nroom_priority:\n  '101': 2\n  '999': 1\n"
                      "empty_rooms: ['204', '305', '204']\n")
    found = problems(write(tmp_path, text))
    assert len(found) == 3
    assert any(":6: room_priority.999: no room '999'" in f for f in found)
    assert any(":7: empty_rooms[1]: no room '305'" in f for f in found)
    assert any("empty_rooms[2]: room '204' listed twice" in f for f in found)
    good = load_scenario(write(tmp_path, MINIMAL + "rooms: {count: 8, floors: 2}\nroom_priority: {'101': 2}\n"))
    assert good.room_priority == {"101": 2}


def test_more_floors_than_rooms_is_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + "rooms: {count: 3, floors: 4}\n"))
    assert ":3: rooms: " in found[0]


def test_room_layout_spreads_rooms_over_floors() -> None:
    from ems.scenario import Rooms

    layout = room_layout(Rooms(count=10, floors=4))
    assert [r for r, _ in layout] == ["101", "102", "103", "201", "202", "301", "302", "303", "401", "402"]
    assert [f for _, f in layout] == [1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert len({r for r, _ in room_layout(Rooms(count=80, floors=5))}) == 80


def test_yaml_syntax_error_is_a_problem(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + "rooms: {count: 10\n"))
    assert "YAML syntax error" in found[0]


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.contract_kw > 0


def test_the_shipped_set_is_complete() -> None:
    names = {p.stem for p in SCENARIOS.glob("*.yaml")}
    assert {f"{kind}-day-{n}" for kind in ("hot", "mild") for n in (20, 40, 80)} | {"hard-40"} <= names

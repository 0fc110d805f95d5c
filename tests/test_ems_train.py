"""The trainer on the virtual school: ten days of one-minute history with the AC switched on and off."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from ems.history import RoomHistory, Sample
from ems.roommodel import RoomModel, RoomModels, default_model
from ems.train import (
    RoomSeries,
    choose_slow_tau,
    covered_days,
    fit_room,
    habits_of,
    main,
    rmse,
    rollout_errors,
    series_from,
    starts,
    train,
)
from simulator import physics
from simulator.physics import RoomParams, SchoolPhysics, SiteSpec
from simulator.timetable import occupied

TZ = ZoneInfo("Asia/Taipei")
START = datetime(2026, 6, 15, tzinfo=TZ).timestamp()     # a Monday, local midnight
SUBSTEP_S = 30.0        # coarser than the simulator's 10 s (still stable: the air's time constant is ~6 min)


def simulate(days: float, seed: int = 11, rooms: int = 3) -> list[Sample]:
    """One sample per room per minute from the virtual school; teachers and a rotation switch the ACs."""
    params = {f"r{i + 1}": RoomParams(west_facing=i % 3 == 1, top_floor=i % 3 == 2) for i in range(rooms)}
    units = {f"{room}{u}": room for room in params for u in "ab"}
    school = SchoolPhysics(SiteSpec(rooms=params, acs=units, relays={}, seed=seed), START, TZ)
    rng = random.Random(seed)
    off_until = dict.fromkeys(params, 0.0)       # a shed: the AC is held off until then
    wanted = dict.fromkeys(params, False)
    out: list[Sample] = []
    for minute in range(1, int(days * 1440) + 1):
        now = START + minute * 60.0
        local = school.local(now)
        for room in params:
            inside = occupied(local, school.rooms[room].away(local))
            if not wanted[room] and inside and school.room_temp_c(room) > 28.0 and rng.random() < 0.1:
                wanted[room] = True
                setpoint = rng.choice((26.0, 27.0, 28.0))
                for uid in (u for u, r in units.items() if r == room):
                    school.acs[uid].command(setpoint_c=setpoint)
            elif wanted[room] and not inside and rng.random() < 0.2:
                wanted[room] = False
            elif wanted[room] and now >= off_until[room] and rng.random() < 0.02:
                off_until[room] = now + rng.choice((600.0, 900.0))
            run = wanted[room] and now >= off_until[room]
            for uid in (u for u, r in units.items() if r == room):
                school.acs[uid].command(power_on=run)
        school.step_to(now)
        for room in params:
            acs = [school.acs[u] for u, r in units.items() if r == room]
            out.append(Sample(
                ts=now, room=room, temp_c=sum(round(a.room_temp_c, 1) for a in acs) / len(acs),  # Modbus: 0.1 degC
                setpoint_c=acs[0].setpoint_c, units_on=sum(a.power_on for a in acs),
                ac_kw=sum(a.power_w for a in acs) / 1000, occupied=occupied(local, school.rooms[room].away(local))))
    return out


@pytest.fixture(scope="module")
def ten_days() -> list[Sample]:
    mp = pytest.MonkeyPatch()
    mp.setattr(physics, "MAX_SUBSTEP_S", SUBSTEP_S)
    try:
        return simulate(10)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def history_db(ten_days: list[Sample], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.db"
    history = RoomHistory(path)
    for i in range(0, len(ten_days), 600):
        assert history.add(ten_days[i:i + 600])
    history.close()
    return path


def test_the_data_has_ac_off_periods_in_school_hours(ten_days: list[Sample]) -> None:
    school = [s for s in ten_days if s.occupied]
    assert 0.2 < sum(s.units_on > 0 for s in school) / len(school) < 0.9
    assert any(s.units_on == 0 for s in school)


def test_training_meets_the_target_on_held_out_days(history_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "rooms.json"
    report = train(history_db, out, days=14, progress=False, now=1.8e9)
    assert report.days == 10
    assert report.held_out_days == 2
    assert report.rmse_15min_c <= 0.4
    assert report.rmse_15min_c < 0.5 * report.persistence_rmse_15min_c
    assert {r.room for r in report.rooms} == {"r1", "r2", "r3"}
    assert all(r.rmse_15min_c <= 0.4 and r.evaluated > 2000 for r in report.rooms)
    models = RoomModels.load(out)
    assert set(models.rooms) == {"r1", "r2", "r3"}
    m = models.model("r1")
    assert m.trained_at == 1.8e9
    assert m.rmse_15min_c == pytest.approx(report.rooms[0].rmse_15min_c, abs=1e-4)
    assert m.step_s == 60.0
    assert m.k_outdoor == 0.0                  # no outdoor sensor in this history
    assert m.k_ac_kw < 0 < m.k_occupied_open   # the AC cools; a class with the windows open warms
    print(json.dumps(report.as_json()["rooms"]), f"rmse {report.rmse_15min_c:.3f} in {report.train_s:.2f} s")


Split = tuple[dict[str, RoomSeries], list[int], list[int]]   # rooms, 8 fitting days, 2 held-out days


@pytest.fixture(scope="module")
def split(ten_days: list[Sample]) -> Split:
    rooms = series_from(ten_days, TZ)
    days = covered_days(rooms.values())
    return rooms, days[:8], days[8:]


def test_a_model_without_its_ac_gain_is_clearly_worse(split: Split) -> None:
    rooms, fit_days, hold = split
    for series in rooms.values():
        model = fit_room(series, np.isin(series.day, fit_days), choose_slow_tau(series, fit_days))
        at = starts(series, np.isin(series.day, hold))
        good = rmse(rollout_errors(model, series, at)[0])
        assert good <= 0.4
        assert rmse(rollout_errors(replace(model, k_ac_kw=0.0), series, at)[0]) > 3 * good
        assert rmse(rollout_errors(replace(model, k_slow=0.0), series, at)[0]) > 3 * good


def test_the_exported_model_predicts_like_the_trainer(split: Split) -> None:
    """RoomModel.predict (pure Python, the daemon's) rolls the same numbers as the trainer's numpy rollout."""
    rooms, fit_days, hold = split
    series = rooms["r2"]
    model = fit_room(series, np.isin(series.day, fit_days), 4 * 3600.0)
    at = starts(series, np.isin(series.day, hold))
    k = int(at[len(at) // 2])
    span = range(k, k + 15)
    steady = [i for i in span if series.units_on[i] == series.units_on[k] and series.ac_kw[i] == series.ac_kw[k]]
    assert len(steady) >= 1
    slow = series.slow(4 * 3600.0)[k]
    held = replace(series, ac_kw=np.full(series.n, series.ac_kw[k]), units_on=np.full(series.n, series.units_on[k]),
                   occupied=np.full(series.n, series.occupied[k]),
                   hour=(series.hour[k] + (np.arange(series.n) - k) / 60) % 24)
    err, _ = rollout_errors(model, held, np.array([k]))
    trainer = float(err[0] + series.temp_c[k + 15])
    daemon = model.predict(float(series.temp_c[k]), 900, units_on=int(series.units_on[k]), ac_kw=float(series.ac_kw[k]),
                           occupied=bool(series.occupied[k]), hour=float(series.hour[k]), slow_c=float(slow))
    assert daemon == pytest.approx(trainer, abs=1e-9)


def synthetic(model: RoomModel, days: int, seed: int = 5, outdoor: bool = True, ac: bool = True) -> list[Sample]:
    """Samples that follow `model` exactly, with random inputs (and outdoor temperatures off the daily curve)."""
    rng = random.Random(seed)
    temp = slow = 27.0
    on, occ = 0, False
    out: list[Sample] = []
    for minute in range(days * 1440):
        now = START + minute * 60.0
        hour = (minute % 1440) / 60
        if rng.random() < 0.03:
            on = rng.choice((0, 1, 2)) if ac else 0
        if rng.random() < 0.02:
            occ = not occ
        ac_kw = on * rng.uniform(0.5, 1.7)
        t_out = 30 + 3 * math.cos(2 * math.pi * (hour - 14) / 24) + rng.gauss(0, 1.5) if outdoor else None
        out.append(Sample(now, model.room, temp, 26.0, on, ac_kw, occ, t_out))
        temp += model.step_c(temp, slow, units_on=on, ac_kw=ac_kw, occupied=occ, hour=hour, outdoor_c=t_out)
        slow = model.track_slow(slow, temp, 60.0)
    return out


TRUE = RoomModel(room="lab", bias=0.3, k_temp=-0.09, k_slow=0.06, k_outdoor=0.02, k_ac_kw=-0.4, k_on=0.05,
                 k_occupied=0.07, k_occupied_open=0.03, k_hour=(0.02, -0.01, 0.005, 0.004), slow_tau_s=4 * 3600.0,
                 outdoor_mean_c=30.0)


def test_the_fit_recovers_the_coefficients_it_is_given() -> None:
    """Data made by a known model gives that model back: each feature reaches its own coefficient."""
    series = series_from(synthetic(TRUE, 4), TZ)["lab"]
    got = fit_room(series, np.ones(series.n, dtype=bool), TRUE.slow_tau_s)
    for name in ("bias", "k_temp", "k_slow", "k_outdoor", "k_ac_kw", "k_on", "k_occupied", "k_occupied_open"):
        assert getattr(got, name) == pytest.approx(getattr(TRUE, name), abs=1e-6), name
    assert got.k_hour == pytest.approx(TRUE.k_hour, abs=1e-6)
    assert got.step_s == 60.0
    assert got.outdoor_mean_c == pytest.approx(30.0, abs=0.3)


def test_without_an_outdoor_sensor_the_outdoor_gain_is_zero() -> None:
    no_sensor = replace(TRUE, k_outdoor=0.0)
    series = series_from(synthetic(no_sensor, 3, outdoor=False), TZ)["lab"]
    got = fit_room(series, np.ones(series.n, dtype=bool), TRUE.slow_tau_s)
    assert got.k_outdoor == 0.0
    assert got.k_ac_kw == pytest.approx(TRUE.k_ac_kw, abs=1e-6)


def test_a_room_whose_ac_never_ran_keeps_the_default_ac_gain(tmp_path: Path) -> None:
    history = RoomHistory(tmp_path / "history.db")
    assert history.add(synthetic(replace(TRUE, k_outdoor=0.0), 4, outdoor=False, ac=False))
    history.close()
    report = train(tmp_path / "history.db", tmp_path / "rooms.json", progress=False)
    model = RoomModels.load(tmp_path / "rooms.json").model("lab")
    assert model.k_ac_kw == default_model("lab").k_ac_kw
    assert report.rooms[0].warning is not None
    assert "never ran" in report.rooms[0].warning


def switching_series(first_on: dict[int, list[int | None]], temps: dict[int, float] | None = None) -> RoomSeries:
    """Whole days (day number -> [minute of a switch-on or None, ...]): each switch-on runs 20 minutes."""
    samples = []
    for day, ons in first_on.items():
        on_minutes: set[int] = set()
        for m in ons:
            if m is not None:
                on_minutes |= set(range(m, m + 20))
        for minute in range(0, 1440, 1):
            ts = day * 86400.0 + minute * 60
            temp = (temps or {}).get(minute, 27.0)
            samples.append(Sample(ts, "101", temp, 26.0, 2 if minute in on_minutes else 0, 0.0, None, None))
    return series_from(samples, ZoneInfo("UTC"))["101"]


def test_habits_take_the_usual_first_switch_on_of_each_weekday() -> None:
    # day 4 of 1970 was a Monday: days 4, 11, 18 are Mondays, 5, 12, 19 Tuesdays, ...
    series = switching_series({
        4: [480, 800], 11: [490], 18: [530],             # Monday: every week -> median 490
        5: [470], 12: [None], 19: [None],                # Tuesday: once in three -> no habit
        6: [450], 13: [None],                            # Wednesday: half the days, but only once -> none
        7: [440], 14: [460],                             # Thursday: twice in two -> 450
        8: [430], 15: [None], 22: [450], 29: [None],     # Friday: twice in four (half) -> 440
    })
    h = habits_of(series)
    assert h.first_on_min == (490.0, None, None, 450.0, 440.0, None, None)
    assert h.days == 14


def test_habit_temperatures_skip_quick_restarts() -> None:
    # on at 08:00 (29.5 degC) for 20 min; on again at 08:30 (27.5) after 11 min off: the energy manager's
    # rotation, not a person; on again at 09:19 (28.5) after exactly 30 min off: a person
    temps = {479: 29.5, 509: 27.5, 558: 28.5}
    h = habits_of(switching_series({4: [480, 510, 559]}, temps))
    assert h.switch_ons == 2
    assert h.on_temp_c == pytest.approx(29.0)    # the median of 29.5 and 28.5


def test_main_writes_the_models_and_prints_json(history_db: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rooms.json"
    code = main(["--history", str(history_db), "--out", str(out), "--days", "8", "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["days"] == 8
    assert report["held_out_days"] == 2         # 20 % of 8 days, rounded
    assert set(report["rooms"]) == {"r1", "r2", "r3"}
    assert report["rmse_15min_c"] == pytest.approx(
        math.sqrt(sum(r["rmse_15min_c"] ** 2 * r["evaluated"] for r in report["rooms"].values())
                  / sum(r["evaluated"] for r in report["rooms"].values())), abs=1e-3)
    habits = RoomModels.load(out).habits
    assert set(habits) == {"r1", "r2", "r3"}


def test_main_says_how_much_history_it_needs(history_db: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--history", str(history_db), "--out", str(tmp_path / "rooms.json"), "--days", "2", "--no-progress"])
    assert code == 2
    assert "need at least 3 days" in capsys.readouterr().err
    assert not (tmp_path / "rooms.json").exists()
    assert main(["--history", str(tmp_path / "none.db"), "--out", str(tmp_path / "rooms.json")]) == 2
    assert "no history" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "rooms.json")]) == 2                     # --history is required
    assert main(["--history", str(history_db), "--out", "x", "--days", "0"]) == 2
    assert main(["--history", str(history_db), "--out", "x", "--tz", "Mars/Olympus"]) == 2


def test_main_fails_with_1_when_it_cannot_write(history_db: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    code = main(["--history", str(history_db), "--out", str(blocker / "rooms.json"), "--days", "3", "--no-progress"])
    assert code == 1
    assert "failed" in capsys.readouterr().err


def test_a_room_short_of_data_keeps_its_last_model(history_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "rooms.json"
    kept = replace(default_model("gym"), trained_at=1.7e9, rmse_15min_c=0.3)
    RoomModels(rooms={"gym": kept}).save(out)
    db = tmp_path / "history.db"
    shutil.copy(history_db, db)                 # the module's history stays as it is for the other tests
    gym = RoomHistory(db)
    newest = gym.span()
    assert newest is not None
    assert gym.add([Sample(newest[1] - 60 * i, "gym", 27.0, 26.0, 0, 0.0) for i in range(30)])
    gym.close()
    report = train(db, out, days=3, progress=False)
    assert "gym" in report.skipped
    assert RoomModels.load(out).rooms["gym"] == kept
    assert RoomModels.load(out).rooms["r1"].trained


def test_progress_goes_to_stderr_and_the_report_to_stdout(history_db: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--history", str(history_db), "--out", str(tmp_path / "rooms.json"), "--days", "3"]) == 0
    out, err = capsys.readouterr()
    assert "reading history" in err
    assert "fitting rooms" in err
    assert "3/3" in err
    assert "fitting" not in out
    assert "15-minute RMSE" in out

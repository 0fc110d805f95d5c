"""Room models as the daemon uses them: the file, prediction, headroom, the default model, habits."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from ems import roommodel
from ems.roommodel import (
    Habits,
    ModelFileError,
    RoomModel,
    RoomModels,
    SlowTemps,
    default_model,
    load_models,
)


def zero(room: str = "101", **kw: object) -> RoomModel:
    fields: dict[str, object] = {"bias": 0.0, "k_temp": 0.0, "k_slow": 0.0, "k_outdoor": 0.0, "k_ac_kw": 0.0,
                                 "k_on": 0.0, "k_occupied": 0.0, "k_occupied_open": 0.0,
                                 "k_hour": (0.0, 0.0, 0.0, 0.0), **kw}
    return RoomModel(room=room, **fields)  # type: ignore[arg-type]


def models() -> RoomModels:
    trained = replace(default_model("101"), k_outdoor=0.01, slow_tau_s=7200.0, trained_at=1.8e9,
                      rmse_15min_c=0.213, n_samples=14000)
    habits = Habits("101", (470.0, 482.5, None, 455.0, None, None, None), 29.4, 14, 21)
    return RoomModels(rooms={"101": trained, "三年二班": default_model("三年二班")}, habits={"101": habits},
                      trained_at=1.8e9, tz="Asia/Taipei")


def test_a_models_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "models" / "rooms.json"
    models().save(path)
    assert RoomModels.load(path) == models()
    assert load_models(path) == models()
    assert not [p for p in path.parent.iterdir() if p.name != "rooms.json"]   # no temp file left


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    path = tmp_path / "rooms.json"
    old = RoomModels(rooms={"101": default_model("101")})
    old.save(path)
    before = path.read_bytes()

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(roommodel.os, fail, broken)
    with pytest.raises(OSError, match="No space"):
        models().save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert RoomModels.load(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["rooms.json"]


@pytest.mark.parametrize(("edit", "where"), [
    (lambda t: t.replace('"k_temp": ', '"k_temp": NaN, "x": ', 1), "rooms.101.k_temp"),
    (lambda t: t.replace('"k_on": ', '"k_surprise": 1, "k_on": ', 1), "rooms.101.k_surprise"),
    (lambda t: t.replace('"k_on": ', '"k_on": "0.1", "y": ', 1), "rooms.101.k_on"),
    (lambda t: t.replace('"version": 1', '"version": 2'), "version 2"),
    (lambda t: t.replace('"room": "101"', '"room": "102"', 1), "rooms.101 holds the model of room '102'"),
    (lambda t: t.replace("470.0,", "470.0, 1.0,", 1), "habits.101"),
    (lambda t: t[: len(t) // 2], "Invalid JSON"),
])
def test_a_bad_file_says_where(tmp_path: Path, edit: object, where: str) -> None:
    path = tmp_path / "rooms.json"
    path.write_text(edit(models().to_json()))  # type: ignore[operator]
    with pytest.raises(ModelFileError) as err:
        RoomModels.load(path)
    assert str(path) in str(err.value)
    assert where in str(err.value)


def test_the_daemon_runs_on_defaults_without_a_usable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_models(tmp_path / "missing.json") == RoomModels()
    bad = tmp_path / "rooms.json"
    bad.write_text("{")
    with caplog.at_level(logging.ERROR, logger="ems.roommodel"):
        loaded = load_models(bad)
    assert loaded == RoomModels()
    assert "default model" in caplog.text
    assert loaded.model("101") == default_model("101")
    assert not loaded.model("101").trained
    assert models().model("101").trained
    assert models().habits_of("102") is None


@pytest.mark.parametrize("hour", [0.0, 9.5, 14.0, 23.9])
def test_zero_coefficients_predict_persistence(hour: float) -> None:
    m = zero()
    for horizon in (0.0, 30.0, 60.0, 900.0, 3600.0):
        assert m.predict(27.3, horizon, units_on=2, ac_kw=3.0, occupied=True, hour=hour, outdoor_c=33.0,
                         slow_c=25.0) == 27.3
    assert m.rise_c_per_h(27.3, occupied=True, hour=hour) == 0.0
    assert m.headroom_s(27.3, 28.0, occupied=True, hour=hour) == math.inf


def test_a_constant_rise_rolls_step_by_step() -> None:
    m = zero(bias=0.1)                                   # 0.1 K per 60 s step
    assert m.predict(26.0, 900, units_on=0, ac_kw=0, occupied=None, hour=10) == pytest.approx(27.5)
    assert m.predict(26.0, 90, units_on=0, ac_kw=0, occupied=None, hour=10) == pytest.approx(26.15)  # a half step
    assert m.rise_c_per_h(26.0, occupied=None, hour=10) == pytest.approx(6.0)
    assert m.headroom_s(26.0, 28.0, occupied=None, hour=10) == pytest.approx(1200.0)
    assert m.headroom_s(26.0, 26.05, occupied=None, hour=10) == pytest.approx(30.0)
    assert m.headroom_s(28.0, 28.0, occupied=None, hour=10) == 0.0
    assert m.headroom_s(26.0, 28.0, occupied=None, hour=10, max_s=1140.0) == math.inf
    assert zero(bias=-0.1).headroom_s(26.0, 28.0, occupied=True, hour=10) == math.inf
    with pytest.raises(ValueError, match="horizon_s"):
        m.predict(26.0, -1, units_on=0, ac_kw=0, occupied=None, hour=10)


def test_each_input_drives_its_own_coefficient() -> None:
    """One step of each coefficient alone: a feature wired to the wrong input fails here."""
    kw = {"units_on": 0, "ac_kw": 0.0, "occupied": False, "hour": 0.0, "outdoor_c": None, "slow_c": None}

    def step(m: RoomModel, **change: object) -> float:
        return m.predict(20.0, 60.0, **{**kw, **change}) - 20.0  # type: ignore[arg-type]

    assert step(zero(k_temp=0.01)) == pytest.approx(0.2)
    assert step(zero(k_slow=0.01)) == pytest.approx(0.2)
    assert step(zero(k_slow=0.01), slow_c=30.0) == pytest.approx(0.3)
    assert step(zero(k_outdoor=0.01), outdoor_c=33.0) == pytest.approx(0.33)
    assert step(zero(k_outdoor=0.01, outdoor_mean_c=29.0)) == pytest.approx(0.29)   # no sensor: the mean
    assert step(zero(k_ac_kw=-0.5), ac_kw=2.0, units_on=1) == pytest.approx(-1.0)
    assert step(zero(k_on=0.2), units_on=1) == pytest.approx(0.2)
    assert step(zero(k_on=0.2), units_on=0) == 0.0
    assert step(zero(k_occupied=0.3), occupied=True) == pytest.approx(0.3)
    assert step(zero(k_occupied=0.3), occupied=None) == 0.0
    assert step(zero(k_occupied_open=0.4), occupied=True) == pytest.approx(0.4)
    assert step(zero(k_occupied_open=0.4), occupied=True, units_on=1) == 0.0
    assert step(zero(k_hour=(1.0, 0.0, 0.0, 0.0)), hour=6.0) == pytest.approx(1.0)     # sin(2 pi 6/24)
    assert step(zero(k_hour=(0.0, 1.0, 0.0, 0.0)), hour=12.0) == pytest.approx(-1.0)   # cos(2 pi 12/24)
    assert step(zero(k_hour=(0.0, 0.0, 1.0, 0.0)), hour=3.0) == pytest.approx(1.0)     # sin(4 pi 3/24)
    assert step(zero(k_hour=(0.0, 0.0, 0.0, 1.0)), hour=6.0) == pytest.approx(-1.0)    # cos(4 pi 6/24)


def test_the_slow_temperature_follows_with_its_time_constant() -> None:
    m = zero(slow_tau_s=3600.0)
    assert m.track_slow(20.0, 30.0, 3600.0) == pytest.approx(20.0 + 10 * (1 - math.exp(-1)))
    assert m.track_slow(20.0, 30.0, 0.0) == 20.0
    assert m.track_slow(20.0, 30.0, -60.0) == 20.0                       # a clock step back changes nothing
    slow = SlowTemps()
    assert slow.get("101") is None
    assert slow.update(m, 26.0, 1000.0) == 26.0
    assert slow.update(m, 30.0, 1000.0 + 3600) == pytest.approx(26.0 + 4 * (1 - math.exp(-1)))
    assert slow.get("101") == pytest.approx(26.0 + 4 * (1 - math.exp(-1)))
    # in the rollout the slow temperature trails the room: with k_slow alone the rise slows down
    pulled = zero(bias=0.1, k_slow=0.0)
    trailing = zero(bias=0.1, k_temp=-0.05, k_slow=0.05, slow_tau_s=600.0)
    assert trailing.predict(26.0, 900, units_on=0, ac_kw=0, occupied=None, hour=0) < pulled.predict(
        26.0, 900, units_on=0, ac_kw=0, occupied=None, hour=0)


def test_the_default_model_is_physically_sane() -> None:
    m = default_model("101")
    assert not m.trained
    kw = {"hour": 10.0, "slow_c": 26.0}
    # AC off with a class in: a classroom warms past the comfort limit within minutes, not hours or seconds
    minutes = m.headroom_s(26.0, 28.0, occupied=True, **kw) / 60
    assert 3 < minutes < 30
    assert m.rise_c_per_h(26.0, occupied=True, **kw) > m.rise_c_per_h(26.0, occupied=False, **kw) > 0
    # a warm building (slow temperature) warms the room faster
    assert m.rise_c_per_h(26.0, occupied=True, hour=10.0, slow_c=29.0) > m.rise_c_per_h(26.0, occupied=True, **kw)
    # the afternoon is warmer than the small hours
    assert m.rise_c_per_h(26.0, occupied=False, hour=14.0, slow_c=26.0) > m.rise_c_per_h(
        26.0, occupied=False, hour=4.0, slow_c=26.0)
    # two units running pull a warm room down; more power pulls harder
    one = m.predict(29.0, 900, units_on=1, ac_kw=1.5, occupied=True, hour=10.0, slow_c=29.0)
    two = m.predict(29.0, 900, units_on=2, ac_kw=3.0, occupied=True, hour=10.0, slow_c=29.0)
    assert two < one < 29.0
    assert two > 15.0
    # left alone for two days it settles in a plausible band
    free = m.predict(26.0, 2 * 86400, units_on=0, ac_kw=0.0, occupied=False, hour=0.0)
    assert 27.0 < free < 36.0
    assert RoomModels().model("x") == default_model("x")


def test_a_model_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="k_hour has 3"):
        zero(k_hour=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="step_s"):
        zero(step_s=0.0)
    with pytest.raises(ValueError, match="finite"):
        zero(bias=math.inf)
    with pytest.raises(ValueError, match="version"):
        zero(version=99)


def test_habits_by_weekday() -> None:
    h = Habits("101", (470.0, None, None, None, 455.0, None, None), 29.4, 14, 12)
    assert h.first_on(0) == 470.0
    assert h.first_on(1) is None
    assert h.first_on(4) == 455.0
    with pytest.raises(ValueError, match="7 days"):
        Habits("101", (470.0,), None, 1, 1)


def test_the_atomic_write_fsyncs_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def rename(a: object, b: object) -> None:
        calls.append("replace")
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(roommodel.os, "fsync", fsync)
    monkeypatch.setattr(roommodel.os, "replace", rename)
    models().save(tmp_path / "rooms.json")
    assert calls == ["fsync", "replace", "fsync"]   # the data, the rename, the folder

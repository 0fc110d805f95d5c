"""Physics of the virtual school, driven step by step without any clock or server."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from simulator.physics import (
    AcParams,
    AcUnit,
    ChannelSpec,
    RoomParams,
    SchoolPhysics,
    SiteSpec,
    Weather,
    base_load_w,
)
from simulator.timetable import occupied, pupil_heat_w

TZ = ZoneInfo("Asia/Taipei")
TUESDAY_0700 = datetime(2026, 6, 16, 7, 0, tzinfo=TZ).timestamp()


def site(**kw: object) -> SchoolPhysics:
    spec = SiteSpec(**{"rooms": {"r": RoomParams()}, "acs": {}, "relays": {}, **kw})  # type: ignore[arg-type]
    return SchoolPhysics(spec, TUESDAY_0700, TZ)


def test_outdoor_temperature_is_diurnal() -> None:
    w = Weather(min_c=27.0, max_c=34.0)
    assert w.outdoor_c(5.0) == pytest.approx(27.0)
    assert w.outdoor_c(14.0) == pytest.approx(34.0)
    assert w.outdoor_c(9.0) < w.outdoor_c(12.0) < w.outdoor_c(14.0)
    assert w.outdoor_c(20.0) < w.outdoor_c(14.0)
    assert max(w.outdoor_c(h / 4) for h in range(96)) == pytest.approx(34.0)


def test_timetable_occupancy() -> None:
    at = datetime(2026, 6, 16, 8, 50, tzinfo=TZ)  # Tuesday, period 1
    assert occupied(at)
    assert pupil_heat_w(at, 30, frozenset()) == pytest.approx(30 * 50.0)
    assert pupil_heat_w(at, 30, frozenset({1})) == 0.0  # the class is at PE
    assert not occupied(datetime(2026, 6, 16, 6, 30, tzinfo=TZ))
    assert not occupied(datetime(2026, 6, 21, 10, 0, tzinfo=TZ))  # Sunday
    nap = pupil_heat_w(datetime(2026, 6, 16, 12, 50, tzinfo=TZ), 30, frozenset())
    assert pytest.approx(30 * 40.0) == nap


def test_room_warms_with_pupils_and_afternoon_sun() -> None:
    rooms = {"empty": RoomParams(pupils=0), "class": RoomParams(pupils=30),
             "west": RoomParams(pupils=0, west_facing=True), "top": RoomParams(pupils=0, top_floor=True)}
    ph = site(rooms=rooms, initial_room_c=29.0)
    ph.step_to(TUESDAY_0700 + 3 * 3600)  # 10:00
    assert ph.room_temp_c("class") > ph.room_temp_c("empty") + 0.3
    morning_gap = ph.room_temp_c("west") - ph.room_temp_c("empty")
    ph.step_to(TUESDAY_0700 + 9 * 3600)  # 16:00
    assert ph.room_temp_c("west") - ph.room_temp_c("empty") > morning_gap + 1.0
    assert ph.room_temp_c("top") > ph.room_temp_c("empty") + 0.5


def test_ac_cools_the_room_and_draws_power() -> None:
    ph = site(rooms={"a": RoomParams(), "b": RoomParams()}, acs={"ac1": "a", "ac2": "a"}, initial_room_c=31.0)
    ph.step_to(TUESDAY_0700 + 3 * 3600)
    for unit in ("ac1", "ac2"):
        ph.acs[unit].command(power_on=True, mode="cool", setpoint_c=26.0)
    ph.step_to(TUESDAY_0700 + 3 * 3600 + 600)
    running = ph.acs["ac1"].snapshot()
    assert running.compressor_on
    assert 300.0 < running.power_w < 1800.0
    ph.step_to(TUESDAY_0700 + 5 * 3600)
    assert ph.room_temp_c("a") < 27.0
    assert ph.room_temp_c("b") > 29.0
    assert ph.room_temp_c("a") > 25.0  # it holds the setpoint, it does not run away below it


def test_full_output_draws_about_rated_power() -> None:
    p = AcParams()
    assert p.capacity_w(35.0) / p.cop(35.0, 1.0) == pytest.approx(1700.0)
    assert p.cop(30.0, 0.5) > p.cop(35.0, 1.0)  # part load and cooler air are both cheaper


def test_restart_lockout_and_minimum_run() -> None:
    unit = AcUnit(AcParams())
    t = 1000.0

    def run(seconds: float, room: float = 30.0) -> None:
        nonlocal t
        for _ in range(int(seconds)):
            t += 1.0
            unit.step(t, 1.0, room, 33.0)

    unit.command(power_on=True, setpoint_c=26.0)
    run(1)
    assert unit.compressor_on
    assert unit.starts == 1
    unit.command(power_on=False)
    run(10)
    assert unit.compressor_on, "minimum run: a compressor that just started keeps running ~30 s"
    run(25)
    assert not unit.compressor_on
    stopped_at = unit.last_stop
    unit.command(power_on=True)
    run(150)
    assert not unit.compressor_on, "3-minute lock-out: no restart even though commanded on"
    assert unit.power_w < 100.0  # fan only
    run(40)
    assert unit.compressor_on, "it starts by itself once allowed"
    assert unit.last_start - stopped_at == pytest.approx(180.0, abs=1.0)
    assert unit.starts == 2


def test_meter_is_sum_of_acs_relays_and_base_load() -> None:
    ph = site(rooms={"a": RoomParams()}, acs={"ac1": "a", "ac2": "a", "ac3": "a"}, relays={"rel": 8},
              channels=(ChannelSpec("rel", 0, "light", "a"),), base_load_kw=30.0, initial_room_c=31.0)
    for unit in ph.acs.values():
        unit.command(power_on=True, setpoint_c=26.0)
    ph.relays["rel"].set(0, True)
    ph.step_to(TUESDAY_0700 + 2 * 3600)
    snap = ph.meter.snapshot()
    ac_w = sum(u.power_w for u in ph.acs.values())
    base = base_load_w(30.0, ph.local(ph.now))
    assert snap.power_w == pytest.approx(ac_w + base + 420.0, rel=1e-9)
    assert sum(snap.power_phase_w) == pytest.approx(snap.power_w)
    assert all(225.0 < v < 235.0 for v in snap.voltage_v)
    assert snap.freq_hz == pytest.approx(60.0, abs=0.1)
    assert -1.0 < snap.pf < -0.85  # inductive: negative on the SDM630
    for i in range(3):
        s = snap.voltage_v[i] * snap.current_a[i]
        assert abs(snap.power_phase_w[i]) <= s + 1e-6
    energy0 = snap.energy_kwh
    ph.step_to(ph.now + 900)
    snap2 = ph.meter.snapshot()
    assert snap2.energy_kwh - energy0 == pytest.approx(snap2.demand_w / 1000 * 0.25, rel=1e-6)
    assert snap2.max_demand_w >= snap2.demand_w


def test_flash_reverts_after_its_time() -> None:
    ph = site(relays={"rel": 8})
    ph.relays["rel"].flash(0, True, 0.7, ph.now)
    ph.step_to(ph.now + 0.5)
    assert ph.relays["rel"].coils[0]
    ph.step_to(ph.now + 0.3)
    assert not ph.relays["rel"].coils[0]


def test_same_seed_same_day() -> None:
    def day(seed: int) -> tuple[float, float, float]:
        ph = site(rooms={"a": RoomParams(west_facing=True), "b": RoomParams()}, acs={"ac": "a"}, seed=seed)
        ph.acs["ac"].command(power_on=True)
        ph.step_to(TUESDAY_0700 + 8 * 3600)
        return ph.room_temp_c("a"), ph.meter.energy_kwh, ph.meter.snapshot().voltage_v[0]

    assert day(7) == day(7)
    assert day(7) != day(8)

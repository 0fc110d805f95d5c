"""Each class's AC use against the virtual school's own energy (issue 9: usage accounting against the
simulator): the UsageMeter sees what the daemon sees (a reading every 10 s) and must agree with the
energy the simulated units drew (integrated at the physics' own 10 s sub-steps, which the meter
never sees)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from ems.usage import UsageMeter
from simulator.physics import AcParams, RoomParams, SchoolPhysics, SiteSpec, Weather

TZ = ZoneInfo("Asia/Taipei")
START = datetime(2026, 6, 16, 8, 0, tzinfo=TZ).timestamp()     # a hot Tuesday morning
READ_S = 10.0


def school() -> SchoolPhysics:
    spec = SiteSpec(rooms={"101": RoomParams(pupils=28), "102": RoomParams(pupils=28, west_facing=True)},
                    acs={"ac-101a": "101", "ac-101b": "101", "ac-102a": "102"}, relays={},
                    weather=Weather(min_c=28.0, max_c=34.0), ac_params=AcParams())
    return SchoolPhysics(spec, START, TZ)


def run(use_power: bool) -> tuple[dict[str, float], dict[str, float]]:
    """(UsageMeter kWh per room, the physics' own kWh per room) over two hours with units switched."""
    phys = school()
    meter = UsageMeter(TZ)
    truth = {"101": 0.0, "102": 0.0}
    plan = {"ac-101a": (0, 7200), "ac-101b": (1800, 5400), "ac-102a": (600, 3000)}   # seconds on
    t = START
    while t < START + 7200:
        for ac, (on, off) in plan.items():
            phys.acs[ac].command(power_on=on <= t - START < off, setpoint_c=26.0)
        for ac, unit in phys.acs.items():
            room = phys.spec.acs[ac]
            assert room is not None
            meter.feed(t, ac, room, unit.power_on, unit.power_w / 1000 if use_power else None, 1.7)
        for _ in range(int(READ_S)):      # the physics at 1 s steps: the truth the meter never sees
            phys.step_to(phys.now + 1.0)
            for ac, u in phys.acs.items():
                room = phys.spec.acs[ac]
                assert room is not None
                truth[room] += u.power_w / 1000 / 3600
        t += READ_S
    for ac, unit in phys.acs.items():
        room = phys.spec.acs[ac]
        assert room is not None
        meter.feed(t, ac, room, unit.power_on, unit.power_w / 1000 if use_power else None, 1.7)
    return {r: meter.today(r).kwh for r in truth}, truth


def test_reported_power_gives_each_class_the_energy_its_units_drew() -> None:
    got, truth = run(use_power=True)
    assert truth["101"] > 2.0        # two units for most of two hours on a hot morning
    for room in truth:
        assert got[room] == pytest.approx(truth[room], rel=0.03), room


def test_without_reported_power_run_time_times_rated_power_is_an_upper_estimate() -> None:
    got, truth = run(use_power=False)
    run_h = {"101": 2.0 + 1.0, "102": 40 / 60}
    for room in truth:
        assert got[room] == pytest.approx(run_h[room] * 1.7, rel=0.02), room   # run time x rated, exactly
        assert got[room] >= truth[room] * 0.95, room                            # an inverter rarely runs flat out

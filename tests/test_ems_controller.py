"""The demand controller's rules on a small plant: units draw their rated power when on, the
meter is ideal, a shed setpoint cuts a third. The arbiter is the real one (`edge.core.arbiter`):
the teacher's wish and the EMS's hold resolve as in the daemon. The bench (tests/test_ems_bench.py)
runs the same controller against the physics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.core.arbiter import Arbiter, Request, Source
from edge.core.clock import ManualClock
from edge.core.control import Denial, Queued
from ems.blocks import DemandMeter
from ems.controller import EmsController, EmsPolicy
from ems.types import BLOCK_S, ActionKind, BlockStatus, UnitView

T0 = 1_781_571_600.0   # 2026-06-16 09:00 +08:00, a block boundary
RATED_KW = 2.0


@dataclass
class Unit:
    power_on: bool = False
    setpoint_c: float = 26.0
    off_since: float | None = None
    starts: list[float] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)


class Plant:
    """Units behind the real arbiter; EMS actions and teachers' wishes go through it."""

    def __init__(self, n: int, base_kw: float, contract_kw: float, policy: EmsPolicy | None = None) -> None:
        self.clock = ManualClock(T0)
        self.units = {f"ac-{i:02d}": Unit() for i in range(n)}
        self.rooms = {uid: f"r{i // 2}" for i, uid in enumerate(self.units)}
        self.temps = dict.fromkeys(self.units, 27.0)
        self.occupied: dict[str, bool | None] = dict.fromkeys(self.units, True)
        self.base_kw = base_kw
        self.arbiter = Arbiter(self, clock=self.clock, min_off=lambda _a: 180.0)
        self.meter = DemandMeter(contract_kw)
        self.ctl = EmsController(policy)
        self.energy_kwh = 0.0
        self.block_avgs: list[float] = []
        self.log: list[tuple[float, Any]] = []

    # Actuators
    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        u = self.units[actuator]
        now = self.clock.time()
        if "power_on" in fields and fields["power_on"] != u.power_on:
            (u.starts if fields["power_on"] else u.stops).append(now)
            u.off_since = None if fields["power_on"] else now
            u.power_on = bool(fields["power_on"])
        if "setpoint_c" in fields:
            u.setpoint_c = float(fields["setpoint_c"])
        return self.actual(actuator)

    async def pulse(self, actuator: str, seconds: float) -> None:
        raise AssertionError("no doors here")

    def actual(self, actuator: str) -> Mapping[str, Any]:
        u = self.units[actuator]
        return {"power_on": u.power_on, "setpoint_c": u.setpoint_c}

    def power_kw(self) -> float:
        return self.base_kw + sum(self.unit_kw(u) for u in self.units.values())

    @staticmethod
    def unit_kw(u: Unit) -> float:
        return 0.0 if not u.power_on else RATED_KW * (1 - 0.15 * (u.setpoint_c - 26.0))

    def wanted(self, uid: str) -> dict[str, Any]:
        return self.arbiter.effective(uid, below=Source.EMS)

    def views(self) -> list[UnitView]:
        out = []
        for uid, u in self.units.items():
            w = self.wanted(uid)
            out.append(UnitView(uid, self.rooms[uid], 1, RATED_KW, self.unit_kw(u), u.power_on, u.setpoint_c,
                                self.temps[uid], bool(w.get("power_on", False)), float(w.get("setpoint_c", 26.0)),
                                u.off_since, self.occupied[uid], 0, uid in self.ctl.shed_units()))
        return out

    def block(self) -> BlockStatus:
        return self.meter.status(self.clock.time())

    async def teacher_on(self, uid: str) -> str | None:
        view = next(v for v in self.views() if v.id == uid)
        reason = self.ctl.admit(self.clock.time(), self.block(), view, {"power_on": True})
        if reason is None:
            await self.arbiter.submit(Request(uid, Source.TEACHER, {"power_on": True, "setpoint_c": 26.0},
                                              None, "teacher"))
        return reason

    async def run(self, seconds: float, step_s: float = 10.0) -> list[Any]:
        actions = []
        end = self.clock.time() + seconds
        while self.clock.time() < end:
            p = self.power_kw()
            self.clock.advance(step_s)
            now = self.clock.time()
            before = math.floor((now - step_s) / BLOCK_S)
            self.energy_kwh += p * step_s / 3600
            self.meter.update(now, self.power_kw(), self.energy_kwh)
            if math.floor(now / BLOCK_S) != before:
                self.block_avgs.append(self.meter.completed[-1][1] if self.meter.completed else p)
            for a in self.ctl.step(now, self.block(), self.views()):
                actions.append(a)
                self.log.append((now, a))
                if a.kind == ActionKind.RESTORE:
                    await self.arbiter.release(a.unit, Source.EMS)
                elif a.kind == ActionKind.SWITCH_OFF:
                    await self.arbiter.set_baseline(a.unit, a.fields, "ems")
                else:
                    await self.arbiter.submit(Request(a.unit, Source.EMS, dict(a.fields), None, "ems"))
            await self.arbiter.tick()
        return actions


async def all_on(plant: Plant) -> None:
    for uid in plant.units:
        await plant.arbiter.submit(Request(uid, Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}, None, "t"))


async def test_sheds_setpoints_first_then_units_and_keeps_the_block_under_the_target() -> None:
    plant = Plant(n=20, base_kw=20.0, contract_kw=50.0)      # 20 units × 2 kW + 20 kW = 60 kW uncontrolled
    await all_on(plant)
    actions = await plant.run(2 * BLOCK_S)
    kinds = [a.kind for a in actions]
    assert ActionKind.SHED_SETPOINT in kinds
    assert ActionKind.SHED_OFF in kinds
    assert kinds.index(ActionKind.SHED_SETPOINT) < kinds.index(ActionKind.SHED_OFF)
    assert all(avg <= 50.0 for avg in plant.block_avgs), plant.block_avgs
    # setpoints go to the policy's top and no further
    assert {a.fields["setpoint_c"] for a in actions if a.kind == ActionKind.SHED_SETPOINT} == {28.0}


async def test_no_shedding_while_the_block_has_room() -> None:
    plant = Plant(n=10, base_kw=10.0, contract_kw=60.0)      # 30 kW of 60
    await all_on(plant)
    assert await plant.run(BLOCK_S) == []


async def test_a_room_is_never_off_longer_than_its_hourly_cap_and_turns_rotate() -> None:
    policy = EmsPolicy()
    plant = Plant(n=12, base_kw=16.0, contract_kw=37.0, policy=policy)   # ~2 of 12 units off at any time
    await all_on(plant)
    actions = await plant.run(2 * 3600)
    for uid in plant.units:
        off_log = [(a.unit, a.kind) for a in actions if a.unit == uid]
        assert off_log, f"{uid} never took a turn: the rotation does not share the shedding"
    # off time per unit within any hour, from the EMS's own actions
    for uid, u in plant.units.items():
        for t in range(int(T0), int(T0 + 7200 - 3600) + 1, 60):
            off = _off_within(u, t, t + 3600, end=plant.clock.time())
            assert off <= policy.max_off_s_per_h + 10.0, (uid, t, off)


def _off_within(u: Unit, a: float, b: float, end: float) -> float:
    total = 0.0
    for stop in u.stops:
        start = next((s for s in u.starts if s > stop), end)
        total += max(0.0, min(b, start) - max(a, stop))
    return total


async def test_no_restart_inside_the_minimum_off_time() -> None:
    plant = Plant(n=12, base_kw=16.0, contract_kw=34.0)
    await all_on(plant)
    await plant.run(3600)
    for uid, u in plant.units.items():
        for stop in u.stops:
            later = [s for s in u.starts if s > stop]
            if later:
                assert later[0] - stop >= 180.0, uid


async def test_the_teachers_wish_comes_back_when_the_shed_ends() -> None:
    plant = Plant(n=10, base_kw=20.0, contract_kw=30.0)
    await all_on(plant)
    await plant.run(600)
    shed_off = [uid for uid, k in plant.ctl.shed_units().items() if k == "shed_off"]
    assert shed_off
    plant.base_kw = 0.0     # the kitchen closes: plenty of room
    await plant.run(1800)
    assert plant.ctl.shed_units() == {}
    assert all(u.power_on and u.setpoint_c == 26.0 for u in plant.units.values())


async def test_restores_are_staggered() -> None:
    plant = Plant(n=10, base_kw=20.0, contract_kw=30.0)
    await all_on(plant)
    await plant.run(600)
    plant.base_kw = 0.0
    plant.log.clear()
    await plant.run(1800)
    times = [t for t, a in plant.log if a.kind == ActionKind.RESTORE]
    assert len(times) >= 4
    assert min(b - a for a, b in itertools.pairwise(times)) >= 30.0


async def test_a_start_that_does_not_fit_is_denied_with_a_reason_and_one_that_fits_is_granted() -> None:
    plant = Plant(n=4, base_kw=40.0, contract_kw=45.0)
    await plant.run(60)
    assert await plant.teacher_on("ac-00") is None          # 40 + 2 under 43.65
    reason = await plant.teacher_on("ac-01")                 # 40 + 2 + 2 over the target: the grant is reserved
    assert reason is not None
    assert "15-minute block" in reason
    plant.base_kw = 30.0
    await plant.run(120)
    assert await plant.teacher_on("ac-01") is None


async def test_stale_meter_data_grants_no_new_start() -> None:
    plant = Plant(n=2, base_kw=5.0, contract_kw=100.0)
    await plant.run(60)
    plant.clock.advance(120)          # the meter has not been read for two minutes
    reason = await plant.teacher_on("ac-00")
    assert reason is not None
    assert "meter" in reason


async def test_an_ac_left_on_in_an_empty_room_is_switched_off_once_after_the_grace() -> None:
    plant = Plant(n=2, base_kw=5.0, contract_kw=100.0)
    await all_on(plant)
    plant.occupied["ac-00"] = False
    actions = await plant.run(590)
    assert not [a for a in actions if a.kind == ActionKind.SWITCH_OFF]
    actions = await plant.run(30)
    assert [(a.unit, a.kind) for a in actions] == [("ac-00", ActionKind.SWITCH_OFF)]
    assert plant.units["ac-00"].power_on is False
    assert plant.units["ac-01"].power_on is True
    # once, not held: the class comes back and switches it on again
    await plant.arbiter.submit(Request("ac-00", Source.TEACHER, {"power_on": True}, None, "t"))
    await plant.run(200)
    assert plant.units["ac-00"].power_on is True


async def test_empty_rooms_are_shed_before_occupied_ones() -> None:
    plant = Plant(n=6, base_kw=20.0, contract_kw=30.0)
    plant.ctl.policy = EmsPolicy(empty_grace_s=0)
    await all_on(plant)
    plant.occupied["ac-05"] = False
    actions = await plant.run(30)
    first_off = next(a for a in actions if a.kind == ActionKind.SHED_SETPOINT)
    assert first_off.unit == "ac-05"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 16), base=st.floats(5, 40), share=st.floats(0.5, 1.2))
async def test_property_min_off_always_and_the_cap_and_the_contract_where_they_can_be_kept(
        n: int, base: float, share: float) -> None:
    contract = max(5.0, (base + n * RATED_KW) * share)
    plant = Plant(n=n, base_kw=base, contract_kw=contract)
    await all_on(plant)
    await plant.run(3600, step_s=10.0)
    target = contract * plant.ctl.policy.target_share
    for u in plant.units.values():
        for stop in u.stops:
            later = [s for s in u.starts if s > stop]
            if later:
                assert later[0] - stop >= 180.0          # never, whatever the plant
    # the contract first: whenever the units alone can be shed enough, no block ends over it
    if base + RATED_KW <= target:
        assert all(avg <= contract + 1e-6 for avg in plant.block_avgs[1:]), plant.block_avgs
    # the rooms' turns: when a quarter of the units off is enough (the cap is 15 min an hour), none waits longer
    if base + 0.75 * n * RATED_KW <= target - RATED_KW:
        for u in plant.units.values():
            assert _off_within(u, T0, T0 + 3600, end=plant.clock.time()) <= 900.0 + 10.0


# -- queued starts, the room's cap, empty rooms with their class due back ------------------------------
def view(uid: str, room: str, **kw: Any) -> UnitView:
    base: dict[str, Any] = {"id": uid, "room": room, "floor": 1, "rated_kw": RATED_KW, "power_kw": 0.0, "on": False,
                            "setpoint_c": 26.0, "room_temp_c": 27.0, "wanted_on": False, "wanted_setpoint_c": 26.0,
                            "off_since": None, "occupied": True}
    return UnitView(**{**base, **kw})


def block(power_kw: float, contract_kw: float = 50.0, elapsed_s: float = 0.0) -> BlockStatus:
    e = power_kw * elapsed_s / 3600
    return BlockStatus(start=T0, elapsed_s=elapsed_s, energy_kwh=e, avg_kw=power_kw, projected_kw=power_kw,
                       allow_kw=contract_kw, power_kw=power_kw, contract_kw=contract_kw, stale=False)


def test_a_start_that_does_not_fit_is_queued_and_its_turn_comes_when_the_cap_is_reached() -> None:
    ctl = EmsController()
    # 47.5 kW of a 48.5 kW target: no room for 2 kW, no running unit to raise
    answer = ctl.admission(T0, block(47.5), view("ac-1", "r1"), {"power_on": True})
    assert isinstance(answer, Queued)
    assert "in turn" in answer.message
    assert ctl.shed_units() == {"ac-1": "shed_off"}
    # with the queue off, the same start is denied with a retry hint
    denied = EmsController(EmsPolicy(queue_starts=False)).admission(T0, block(47.5), view("ac-1", "r1"),
                                                                     {"power_on": True})
    assert isinstance(denied, Denial)
    assert denied.code == "denied_by_ems"
    assert denied.retry_after_s is not None
    # still no room, but the room reaches its hourly cap and another room can be shed in its place:
    # the queued unit starts, in turn (and the other room is shed)
    waiting = view("ac-1", "r1", wanted_on=True, shed=True)
    other = view("ac-9", "r9", on=True, wanted_on=True, power_kw=2.0, setpoint_c=28.0)
    acts = ctl.step(T0 + 900 - 59, block(47.5), [waiting, other])
    assert [(a.unit, a.kind) for a in acts] == [("ac-1", ActionKind.RESTORE), ("ac-9", ActionKind.SHED_OFF)]
    assert "its turn" in acts[0].reason
    # nobody to take its turn and no room under the contract itself: the contract comes first, the room waits
    lone = EmsController()
    lone.admission(T0, block(49.0), view("ac-1", "r1"), {"power_on": True})
    assert lone.step(T0 + 900 - 59, block(49.0), [waiting]) == []
    # under the contract (not the target) there is room for it: its turn comes
    assert [a.kind for a in lone.step(T0 + 900 - 49, block(47.5), [waiting])] == [ActionKind.RESTORE]


def test_a_start_fits_when_raising_running_setpoints_makes_the_room() -> None:
    ctl = EmsController()
    running = [view(f"ac-r{i}", f"r{i}", on=True, wanted_on=True, power_kw=2.0) for i in range(10)]
    ctl.step(T0, block(47.5), running)   # 10 units at 26 °C: 10 x 2 kW x 0.35 of reserve
    assert ctl.admission(T0, block(47.5), view("ac-new", "rn"), {"power_on": True}) is None


def test_the_hourly_cap_is_the_rooms_not_each_units() -> None:
    ctl = EmsController()
    a = view("ac-a", "r1", on=False, wanted_on=True, shed=True)
    b = view("ac-b", "r1", on=False, wanted_on=True, shed=True)
    ctl.admission(T0, block(49.0), view("ac-a", "r1"), {"power_on": True})            # queued at T0
    ctl.admission(T0 + 600, block(49.0), view("ac-b", "r1"), {"power_on": True})      # queued 10 min later
    assert ctl.off_s_last_hour("r1", T0 + 600) == 600          # one room off for 10 min, not 10 + 0
    acts = ctl.step(T0 + 900 - 59, block(40.0), [a, b])     # room for both again
    assert {x.unit for x in acts if x.kind == ActionKind.RESTORE} == {"ac-a", "ac-b"}   # the whole room


def test_an_empty_room_is_switched_off_only_when_its_class_is_away_long_and_on_again_before_it_returns() -> None:
    ctl = EmsController()
    back = T0 + 2400                      # a 40-minute PE lesson
    on = view("ac-1", "r1", on=True, wanted_on=True, power_kw=1.5, occupied=False, back_at=back)
    assert ctl.step(T0, block(10.0), [on]) == []
    acts = ctl.step(T0 + 600, block(10.0), [on])
    assert [(x.kind, x.fields) for x in acts] == [(ActionKind.SWITCH_OFF, {"power_on": False})]
    off = view("ac-1", "r1", on=False, wanted_on=False, occupied=False, back_at=back)
    assert ctl.step(back - 601, block(10.0), [off]) == []
    acts = ctl.step(back - 600, block(10.0), [off])
    assert [(x.kind, x.fields) for x in acts] == [(ActionKind.PRECOOL, {"power_on": True, "setpoint_c": 26.0})]
    # a break: the class is back in 10 minutes, the unit stays on
    ctl2 = EmsController()
    brief = view("ac-2", "r2", on=True, wanted_on=True, power_kw=1.5, occupied=False, back_at=T0 + 1200)
    ctl2.step(T0, block(10.0), [brief])
    assert ctl2.step(T0 + 600, block(10.0), [brief]) == []
    # the day is over (not back today): switched off and left off
    ctl3 = EmsController()
    home = view("ac-3", "r3", on=True, wanted_on=True, power_kw=1.5, occupied=False, back_at=None)
    ctl3.step(T0, block(10.0), [home])
    assert [x.kind for x in ctl3.step(T0 + 600, block(10.0), [home])] == [ActionKind.SWITCH_OFF]
    assert ctl3.step(T0 + 9000, block(10.0), [view("ac-3", "r3", occupied=False)]) == []


def test_a_unit_offline_for_a_turn_keeps_its_shed_and_is_restored_when_it_returns() -> None:
    ctl = EmsController(EmsPolicy(restore_gap_s=0))
    units = [view(f"ac-{i}", f"r{i}", on=True, wanted_on=True, power_kw=2.0, setpoint_c=28.0) for i in range(3)]
    acts = ctl.step(T0, block(49.5), units)
    shed = {a.unit for a in acts if a.kind == ActionKind.SHED_OFF}
    assert shed
    gone = next(iter(shed))
    ctl.step(T0 + 10, block(49.5), [u for u in units if u.id != gone])      # one RS-485 timeout
    assert gone in ctl.shed_units()                                          # not forgotten
    back = [view(u.id, u.room, on=u.id not in shed, wanted_on=True, power_kw=2.0 if u.id not in shed else 0.0,
                 setpoint_c=28.0, shed=u.id in shed) for u in units]
    acts = ctl.step(T0 + 900 + 300, block(30.0, elapsed_s=300), back)       # plenty of room, past min off
    assert gone in {a.unit for a in acts if a.kind == ActionKind.RESTORE}

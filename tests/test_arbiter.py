"""The arbiter's resolution rules, on an in-memory actuator (the Modbus path is tested end to end elsewhere)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.core.arbiter import ApplyError, Arbiter, Request, Source
from edge.core.clock import ManualClock
from edge.core.store import Store


class Unit:
    """An actuator that remembers what it was told, like a device that always obeys."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.offline: set[str] = set()

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        if actuator in self.offline:
            raise ApplyError("device_offline", f"{actuator} does not answer")
        self.writes.append((actuator, dict(fields)))
        self.state.setdefault(actuator, {}).update(fields)
        return dict(fields)

    def actual(self, actuator: str) -> Mapping[str, Any]:
        return self.state.get(actuator, {})


async def test_higher_source_wins_and_teacher_returns_after_ems_expiry() -> None:
    clock, unit = ManualClock(1000.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26}))
    assert unit.state["ac-1"] == {"power_on": True, "setpoint_c": 26}
    out = await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, expires=clock.time() + 600))
    assert out.ok
    assert unit.state["ac-1"]["power_on"] is False
    assert arb.effective("ac-1") == {"power_on": False, "setpoint_c": 26}
    # a teacher asking again while shed changes nothing: the EMS holds the field
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 27}))
    assert unit.state["ac-1"] == {"power_on": False, "setpoint_c": 27}
    clock.advance(601)
    await arb.tick()
    assert unit.state["ac-1"]["power_on"] is True


async def test_restore_point_brings_back_the_state_before_an_override() -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.state["ac-2"] = {"power_on": True}  # switched on at the wall, nobody asked us
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-2", Source.EMS, {"power_on": False}, expires=300.0))
    assert unit.state["ac-2"]["power_on"] is False
    clock.advance(301)
    await arb.tick()
    assert unit.state["ac-2"]["power_on"] is True
    assert Source.RESTORE not in {r.source for r in arb.requests("ac-2")}


async def test_restore_point_does_not_erase_a_schedule_baseline() -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.state["ac-8"] = {"power_on": True, "setpoint_c": 26}
    arb = Arbiter(unit, clock=clock)
    await arb.set_baseline("ac-8", {"setpoint_c": 27}, "schedule:noon")
    await arb.submit(Request("ac-8", Source.EMS, {"power_on": False}, expires=60.0))
    clock.advance(61)
    await arb.tick()
    assert unit.state["ac-8"] == {"power_on": True, "setpoint_c": 27}
    assert arb.effective("ac-8") == {"setpoint_c": 27}
    assert [r.source for r in arb.requests("ac-8")] == [Source.DEFAULT]


async def test_minimum_off_time_defers_a_restart() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-3", Source.TEACHER, {"power_on": True}))
    clock.advance(60)
    await arb.submit(Request("ac-3", Source.TEACHER, {"power_on": False}))
    clock.advance(30)
    out = await arb.submit(Request("ac-3", Source.TEACHER, {"power_on": True, "setpoint_c": 27}))
    assert out.deferred_until == 60 + 180
    assert unit.state["ac-3"] == {"power_on": False, "setpoint_c": 27}
    clock.advance(149)
    await arb.tick()
    assert unit.state["ac-3"]["power_on"] is False
    clock.advance(2)
    await arb.tick()
    assert unit.state["ac-3"]["power_on"] is True
    assert sum(1 for a, f in unit.writes if a == "ac-3" and f.get("power_on") is True) == 2


async def test_failed_apply_is_reported_and_retried_later() -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.offline.add("light-1")
    arb = Arbiter(unit, clock=clock)
    out = await arb.submit(Request("light-1", Source.LOCAL, {"on": True}))
    assert not out.ok
    assert out.code == "device_offline"
    unit.offline.clear()
    out = await arb.reconcile("light-1")
    assert out.ok
    assert unit.state["light-1"] == {"on": True}


async def test_requests_survive_a_restart(tmp_path: Path) -> None:
    clock, unit = ManualClock(0.0), Unit()
    store = Store(tmp_path / "s.db")
    arb = Arbiter(unit, store=store, clock=clock)
    await arb.submit(Request("ac-4", Source.FACILITY, {"setpoint_c": 27}, expires=500.0, requester="F1"))
    store.close()
    store2 = Store(tmp_path / "s.db")
    arb2 = Arbiter(Unit(), store=store2, clock=clock)
    assert arb2.effective("ac-4") == {"setpoint_c": 27}
    assert arb2.requests("ac-4")[0].requester == "F1"
    clock.advance(501)
    await arb2.tick()
    assert arb2.effective("ac-4") == {}
    store2.close()
    store3 = Store(tmp_path / "s.db")
    assert list(store3.load_requests()) == []
    store3.close()


async def test_schedule_switch_replaces_teacher_wish_but_not_ems() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-5", Source.TEACHER, {"power_on": True, "setpoint_c": 26}))
    await arb.submit(Request("ac-6", Source.EMS, {"power_on": False}, expires=100.0))
    await arb.set_baseline("ac-5", {"power_on": False}, "schedule:evening")
    await arb.set_baseline("ac-6", {"power_on": True}, "schedule:morning")
    assert unit.state["ac-5"] == {"power_on": False, "setpoint_c": 26}
    assert arb.effective("ac-5") == {"power_on": False, "setpoint_c": 26}
    assert unit.state["ac-6"]["power_on"] is False  # the EMS still holds it
    clock.advance(101)
    await arb.tick()
    assert unit.state["ac-6"]["power_on"] is True


async def test_a_unit_seen_off_at_start_may_start_at_once_but_a_wall_stop_counts() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    arb.observe("ac-7", {"power_on": False})  # first reading after a restart: no known stop time
    out = await arb.submit(Request("ac-7", Source.TEACHER, {"power_on": True}))
    assert out.deferred_until is None
    assert unit.state["ac-7"]["power_on"] is True
    arb.observe("ac-7", {"power_on": True})
    clock.advance(100)
    unit.state["ac-7"]["power_on"] = False  # someone used the wall remote
    arb.observe("ac-7", {"power_on": False})
    clock.advance(10)
    out = await arb.submit(Request("ac-7", Source.FACILITY, {"power_on": True}))
    assert out.deferred_until == 100 + 180

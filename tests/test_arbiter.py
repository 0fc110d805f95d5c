"""The arbiter's resolution rules, on an in-memory actuator (the Modbus path is tested end to end elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.core.arbiter import Arbiter, Request, Source
from edge.core.clock import ManualClock
from edge.core.driver import ApplyError
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

    async def pulse(self, actuator: str, seconds: float) -> None:
        if actuator in self.offline:
            raise ApplyError("device_offline", f"{actuator} does not answer")
        self.writes.append((actuator, {"pulse": seconds}))

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


async def test_a_failed_request_is_withdrawn_not_applied_later_unannounced() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("light-1", Source.FACILITY, {"on": False}, expires=1000.0, requester="F1"))
    unit.offline.add("light-1")
    out = await arb.submit(Request("light-1", Source.FACILITY, {"on": True}, expires=1000.0, requester="F2"))
    assert not out.ok
    assert out.code == "device_offline"
    unit.offline.clear()
    arb.forget_applied("light-1")  # the device comes back: the effective state is applied again
    out = await arb.reconcile("light-1")
    assert out.ok
    assert unit.state["light-1"] == {"on": False}  # the earlier request, not the failed one
    assert [r.requester for r in arb.requests("light-1")] == ["F1"]
    unit.offline.add("light-2")
    await arb.submit(Request("light-2", Source.TEACHER, {"on": True}))
    assert arb.requests("light-2") == []


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


# -- rules pinned: priorities, holders, minimum off time, pulses --------------------------------------
# Every source against every other, typed from the architecture (STYLE.md), not from the enum:
# safety > EMS > facility = local operator > booking > schedule > teacher > default.
RANK = {"TEACHER": 1, "SCHEDULE": 2, "BOOKING": 3, "FACILITY": 4, "LOCAL": 4, "EMS": 5, "SAFETY": 6}


@pytest.mark.parametrize("first", sorted(RANK))
@pytest.mark.parametrize("second", sorted(RANK))
async def test_pairwise_priority(first: str, second: str) -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source[first], {"setpoint_c": 26.0}, expires=100.0, requester=first))
    out = await arb.submit(Request("ac-1", Source[second], {"setpoint_c": 28.0}, expires=100.0, requester=second))
    # the later request wins unless the earlier one ranks strictly higher (one tier: the later wins)
    later_wins = RANK[second] >= RANK[first]
    assert unit.state["ac-1"]["setpoint_c"] == (28.0 if later_wins else 26.0)
    assert arb.effective("ac-1") == {"setpoint_c": 28.0 if later_wins else 26.0}
    if later_wins:
        assert dict(out.held) == {}
    else:
        assert out.held["setpoint_c"].source == Source[first]
        assert out.held["setpoint_c"].until == 100.0


def test_local_operator_is_the_facility_tier() -> None:
    assert Source.LOCAL is Source.FACILITY
    assert Source.TEACHER < Source.SCHEDULE < Source.BOOKING < Source.FACILITY < Source.EMS < Source.SAFETY


@pytest.mark.parametrize("start", [True, 1, "true", "off", 2.0])
async def test_minimum_off_time_holds_for_any_true_value(start: Any) -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    clock.advance(1)
    out = await arb.submit(Request("ac-1", Source.FACILITY, {"power_on": start}))
    assert out.deferred_until == 190.0
    assert unit.state["ac-1"]["power_on"] is False


async def test_run_fires_a_deferred_start_on_time() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    runner = asyncio.create_task(arb.run())
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        assert unit.state["ac-1"]["power_on"] is False
        clock.advance(181)
        for _ in range(20):
            await asyncio.sleep(0)
            if unit.state["ac-1"]["power_on"]:
                break
        assert unit.state["ac-1"]["power_on"] is True
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_pulse_is_vetoed_by_a_higher_holder_only() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    assert (await arb.pulse("door-1", Source.TEACHER, 5)).ok
    await arb.submit(Request("door-1", Source.SAFETY, {"on": False}, expires=60.0, requester="fire-alarm"))
    out = await arb.pulse("door-1", Source.FACILITY, 5)
    assert not out.ok
    assert out.code == "forbidden"
    assert out.held["on"].source == Source.SAFETY
    assert sum(1 for a, f in unit.writes if a == "door-1" and "pulse" in f) == 1
    clock.advance(61)
    await arb.tick()
    assert (await arb.pulse("door-1", Source.FACILITY, 5)).ok


# -- property: any sequence of requests --------------------------------------------------------------
SOURCES = [Source.TEACHER, Source.SCHEDULE, Source.BOOKING, Source.FACILITY, Source.EMS, Source.SAFETY]
step = st.tuples(st.sampled_from(SOURCES), st.sampled_from(["power_on", "setpoint_c"]),
                 st.integers(0, 1), st.one_of(st.none(), st.integers(1, 400)), st.integers(0, 200))


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=1, max_size=25))
def test_effective_state_is_the_highest_live_request(steps: list[tuple[Source, str, int, int | None, int]]) -> None:
    asyncio.run(_check_sequence(steps))


async def _check_sequence(steps: list[tuple[Source, str, int, int | None, int]]) -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    model: dict[Source, tuple[dict[str, Any], float | None]] = {}
    last_stop: float | None = None
    for src, fld, v, hold, wait in steps:
        value: Any = bool(v) if fld == "power_on" else 26.0 + 2 * v
        expires = None if hold is None else clock.time() + hold
        fields = {fld: value}
        model[src] = (fields, expires)
        was_on = unit.state.get("ac", {}).get("power_on")
        out = await arb.submit(Request("ac", src, fields, expires))
        now = clock.time()
        live = {s: f for s, (f, e) in model.items() if e is None or e > now}
        # the arbiter's own restore point (what the unit did before an EMS/safety override) ranks lowest
        live.update({r.source: dict(r.fields) for r in arb.requests("ac") if r.source == Source.RESTORE})
        want: dict[str, Any] = {}
        for s in sorted(live, reverse=True):
            for k, val in live[s].items():
                want.setdefault(k, val)
        assert arb.effective("ac") == {k: want[k] for k in want}
        is_on = unit.state.get("ac", {}).get("power_on")
        if was_on and is_on is False:
            last_stop = now
        if not was_on and is_on:
            assert last_stop is None or now - last_stop >= 180.0, "a start inside the minimum off time"
        # an ok is true: each asked field is held by the device, or the result names its holder or defers it
        assert out.ok
        for k, val in fields.items():
            if k in out.held:
                assert out.held[k].source > src
            elif k == "power_on" and val and out.deferred_until is not None:
                assert unit.state["ac"].get("power_on") is not True or was_on
            else:
                assert unit.state["ac"][k] == val
        clock.advance(wait)
        before = unit.state.get("ac", {}).get("power_on")
        await arb.tick()
        after = unit.state.get("ac", {}).get("power_on")
        if before and after is False:
            last_stop = clock.time()
        if not before and after:
            assert last_stop is None or clock.time() - last_stop >= 180.0, "a start inside the minimum off time"

"""The arbiter's rules that mutation testing found unpinned (docs/mutation-results.md).

Exact boundaries (a request ends at its expiry second, a start is allowed at the end of the minimum
off time), the order of sources, what a withdrawn request leaves behind, what survives a restart,
the run loop's deadlines, and the whole `Outcome` of a change. Driven through the public API over the
in-memory actuator of test_arbiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_arbiter import Unit

from edge.core.arbiter import Arbiter, Holder, Outcome, Request, Source
from edge.core.clock import ManualClock
from edge.core.store import Store


class Gated(Unit):
    """Writes wait until the gate opens: a write still in flight while something else happens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        await self.gate.wait()
        return await super().apply(actuator, fields)


class Stamped(Unit):
    """Remembers the clock's time of every write."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[tuple[float, str, dict[str, Any]]] = []

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        self.at.append((self.clock.time(), actuator, dict(fields)))
        return await super().apply(actuator, fields)


class CountingClock(ManualClock):
    """A manual clock that refuses to be read endlessly: a loop that spins without waiting fails fast."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.reads = 0

    def time(self) -> float:
        self.reads += 1
        if self.reads > 5000:
            raise RuntimeError("the clock was read 5000 times: a loop is spinning")
        return super().time()


ACTUATORS = ("ac-0", "ac-1", "ac-2", "light-1", "light-2")


def stored(store_path: Path, clock: ManualClock) -> list[tuple[str, Source, dict[str, Any], float | None, str | None,
                                                                float]]:
    """The requests a restarted arbiter finds in the store."""
    store = Store(store_path)
    try:
        arb = Arbiter(Unit(), store=store, clock=clock)
        return [(r.actuator, r.source, dict(r.fields), r.expires, r.requester, r.ts)
                for a in ACTUATORS for r in arb.requests(a)]
    finally:
        store.close()


# -- priorities --------------------------------------------------------------------------------------
async def test_requests_are_listed_highest_source_first() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    for src in (Source.TEACHER, Source.SAFETY, Source.SCHEDULE, Source.EMS, Source.BOOKING):
        await arb.submit(Request("ac-1", src, {"setpoint_c": 27.0}, expires=100.0))
    assert [r.source for r in arb.requests("ac-1")] == [Source.SAFETY, Source.EMS, Source.BOOKING, Source.SCHEDULE,
                                                        Source.TEACHER]


async def test_an_expired_higher_request_does_not_hide_the_lower_ones() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}))
    await arb.submit(Request("ac-1", Source.EMS, {"setpoint_c": 28.0}, expires=100.0))
    clock.advance(101)   # not ticked yet: the EMS request is still recorded, but over
    assert arb.effective("ac-1") == {"power_on": True, "setpoint_c": 26.0}


async def test_held_names_every_held_field_with_its_holder() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.EMS, {"setpoint_c": 28.0}, expires=100.0, requester="ems:shed"))
    # the first field is free, the second held: both are looked at
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}, requester="T1"))
    assert out.ok
    assert dict(out.held) == {"setpoint_c": Holder(Source.EMS, 100.0, "ems:shed")}
    assert unit.state["ac-1"] == {"power_on": True, "setpoint_c": 28.0}


async def test_a_source_is_not_held_by_its_own_request() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("door-1", Source.FACILITY, {"on": False}, expires=100.0, requester="F1"))
    assert arb.holders("door-1", Source.FACILITY, {"on": True}) == {}
    out = await arb.pulse("door-1", Source.LOCAL, 5)   # the local operator is the facility tier
    assert out.ok
    assert arb.holders("door-1", Source.TEACHER, {"on": True}) == {"on": Holder(Source.FACILITY, 100.0, "F1")}


async def test_a_request_is_stamped_with_the_time_it_was_made() -> None:
    clock, unit = ManualClock(500.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 26.0}))
    await arb.submit(Request("ac-1", Source.FACILITY, {"setpoint_c": 27.0}, ts=123.0))
    assert [(r.source, r.ts) for r in arb.requests("ac-1")] == [(Source.FACILITY, 123.0), (Source.TEACHER, 500.0)]


# -- a failed write is withdrawn ---------------------------------------------------------------------
async def test_a_withdrawn_request_stays_withdrawn_after_a_restart(tmp_path: Path) -> None:
    clock, unit = ManualClock(0.0), Unit()
    store = Store(tmp_path / "s.db")
    arb = Arbiter(unit, store=store, clock=clock)
    await arb.submit(Request("light-1", Source.FACILITY, {"on": False}, expires=1000.0, requester="F1", ts=1.0))
    unit.offline |= {"light-1", "light-2"}
    assert not (await arb.submit(Request("light-1", Source.FACILITY, {"on": True}, 1000.0, "F2"))).ok
    assert not (await arb.submit(Request("light-2", Source.TEACHER, {"on": True}, requester="T1"))).ok
    store.close()
    assert stored(tmp_path / "s.db", clock) == [("light-1", Source.FACILITY, {"on": False}, 1000.0, "F1", 1.0)]


async def test_a_request_that_expires_while_its_failing_write_is_in_flight() -> None:
    clock, unit = ManualClock(0.0), Gated()
    arb = Arbiter(unit, clock=clock)
    unit.offline.add("light-1")
    submit = asyncio.create_task(arb.submit(Request("light-1", Source.TEACHER, {"on": True}, expires=10.0)))
    for _ in range(3):
        await asyncio.sleep(0)
    clock.advance(10)
    ticker = asyncio.create_task(arb.tick())   # drops the expired request while the write waits
    await asyncio.sleep(0)
    unit.gate.set()
    out = await submit
    await ticker
    assert (out.ok, out.code) == (False, "device_offline")
    assert arb.requests("light-1") == []


# -- expiry ------------------------------------------------------------------------------------------
async def test_a_request_ends_at_its_expiry_second() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 26.0}))
    await arb.submit(Request("ac-1", Source.EMS, {"setpoint_c": 28.0}, expires=100.0, requester="ems"))
    clock.advance(99.5)
    assert arb.effective("ac-1") == {"setpoint_c": 28.0}
    assert arb.holders("ac-1", Source.TEACHER, {"setpoint_c": 26.0}) == {
        "setpoint_c": Holder(Source.EMS, 100.0, "ems")}
    clock.advance(0.5)   # exactly 100: over, even before the next tick
    assert arb.effective("ac-1") == {"setpoint_c": 26.0}
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 27.0}))
    assert dict(out.held) == {}
    assert unit.state["ac-1"]["setpoint_c"] == 27.0


async def test_tick_at_the_expiry_second_gives_the_field_back() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, expires=100.0))
    clock.advance(100)
    await arb.tick()
    assert unit.state["ac-1"]["power_on"] is True
    assert [r.source for r in arb.requests("ac-1")] == [Source.TEACHER]


async def test_the_restore_point_goes_when_the_override_ends_at_its_second() -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.state["ac-1"] = {"power_on": True}
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, expires=100.0))
    assert Source.RESTORE in {r.source for r in arb.requests("ac-1")}
    clock.advance(100)
    out = await arb.reconcile("ac-1")   # not ticked: the EMS request is recorded, but over
    assert out.ok
    assert unit.state["ac-1"]["power_on"] is True
    assert Source.RESTORE not in {r.source for r in arb.requests("ac-1")}


async def test_a_request_already_expired_when_it_arrives_changes_nothing() -> None:
    clock, unit = ManualClock(100.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 26.0}))
    out = await arb.submit(Request("ac-1", Source.FACILITY, {"power_on": True}, expires=100.0))
    assert out.ok
    assert unit.writes == [("ac-1", {"setpoint_c": 26.0})]
    assert arb.effective("ac-1") == {"setpoint_c": 26.0}


async def test_run_wakes_at_the_next_expiry_not_before_or_after() -> None:
    clock = CountingClock(1000.0)
    unit = Stamped(clock)
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, expires=1000.5))
    before = time.monotonic()
    runner = asyncio.create_task(arb.run())
    try:
        for _ in range(30):
            await asyncio.sleep(0)
            if unit.state["ac-1"]["power_on"] or runner.done():
                break
        assert not runner.done(), runner.exception()
        # a manual clock's sleep jumps to the end: the write is stamped with the moment run woke up
        assert unit.at[-1] == (1000.5, "ac-1", {"power_on": True})
        assert arb.last_turn >= before
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


# -- minimum off time --------------------------------------------------------------------------------
async def test_the_minimum_off_time_is_per_unit() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda a: 180.0 if a == "ac-1" else 0.0)
    for a in ("ac-1", "ac-2"):
        await arb.submit(Request(a, Source.TEACHER, {"power_on": True}))
        await arb.submit(Request(a, Source.TEACHER, {"power_on": False}))
    clock.advance(1)
    out1 = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    out2 = await arb.submit(Request("ac-2", Source.TEACHER, {"power_on": True}))
    assert (out1.deferred_until, unit.state["ac-1"]["power_on"]) == (180.0, False)
    assert (out2.deferred_until, unit.state["ac-2"]["power_on"]) == (None, True)


async def test_without_a_minimum_off_time_a_unit_restarts_at_once() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    out = await arb.submit(Request("ac-1", Source.FACILITY, {"power_on": True}))
    assert out.deferred_until is None
    assert unit.state["ac-1"]["power_on"] is True


async def test_a_start_exactly_at_the_end_of_the_minimum_off_time_goes_ahead() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    clock.advance(180)
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    assert out.deferred_until is None
    assert unit.state["ac-1"]["power_on"] is True


async def test_a_deferred_start_fires_at_its_second() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    clock.advance(10)
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    assert out.deferred_until == 190.0
    clock.advance(170)   # exactly 190
    await arb.tick()
    assert unit.state["ac-1"]["power_on"] is True


async def test_readings_without_power_on_or_a_second_off_keep_the_stop_time() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    unit.state["ac-1"] = {"power_on": True}
    arb.observe("ac-1", {"power_on": True})
    clock.advance(100)
    unit.state["ac-1"]["power_on"] = False
    arb.observe("ac-1", {"power_on": False})      # stopped at the wall at 100
    clock.advance(10)
    arb.observe("ac-1", {"setpoint_c": 26.0})     # a reading that does not say
    clock.advance(10)
    arb.observe("ac-1", {"power_on": False})      # still off: not a new stop, not a start
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    assert out.deferred_until == 280.0
    assert unit.state["ac-1"]["power_on"] is False


async def test_a_start_at_the_wall_ends_the_previous_stop() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))   # our stop at 10
    arb.observe("ac-1", {"power_on": False})
    clock.advance(40)
    unit.state["ac-1"]["power_on"] = True
    arb.observe("ac-1", {"power_on": True})       # started at the wall at 50
    clock.advance(250)
    unit.state["ac-1"]["power_on"] = False
    arb.observe("ac-1", {"power_on": False})      # stopped at the wall at 300: the time that counts
    clock.advance(10)
    out = await arb.submit(Request("ac-1", Source.FACILITY, {"power_on": True}))
    assert out.deferred_until == 480.0


async def test_our_own_start_ends_the_previous_stop() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    arb.observe("ac-1", {"power_on": True})
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))   # our stop at 10
    clock.advance(190)
    assert (await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))).deferred_until is None
    clock.advance(100)
    unit.state["ac-1"]["power_on"] = False
    arb.observe("ac-1", {"power_on": False})      # stopped at the wall at 300
    clock.advance(10)
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    assert out.deferred_until == 480.0
    assert unit.state["ac-1"]["power_on"] is False


# -- what is written, and what an outcome says ----------------------------------------------------------
async def test_only_what_changed_is_written() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}))
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 27.0}))
    assert unit.writes[-1] == ("ac-1", {"setpoint_c": 27.0})
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 27.0}))
    assert len(unit.writes) == 2
    assert out == Outcome(True, "ok", "nothing to change", {"power_on": True, "setpoint_c": 27.0}, {}, None)


async def test_a_device_that_restarted_gets_the_whole_state_again() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}))
    unit.state["ac-1"] = {}
    arb.forget_applied("ac-1")
    await arb.reconcile("ac-1")
    assert unit.state["ac-1"] == {"power_on": True, "setpoint_c": 26.0}


async def test_outcomes_of_changes() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    want = {"power_on": True, "setpoint_c": 26.0}
    assert await arb.submit(Request("ac-1", Source.TEACHER, want)) == Outcome(True, "ok", "applied", want, want)
    clock.advance(10)
    off = {"power_on": False}   # the teacher's new request replaces her first one
    assert await arb.submit(Request("ac-1", Source.TEACHER, off)) == Outcome(True, "ok", "applied", off, off)
    clock.advance(10)
    out = await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 27.0}))
    assert out == Outcome(True, "ok", "applied; start deferred 170 s", {"power_on": True, "setpoint_c": 27.0},
                          {"setpoint_c": 27.0}, 190.0)
    unit.offline.add("ac-1")
    out = await arb.submit(Request("ac-1", Source.FACILITY, {"power_on": True, "setpoint_c": 28.0}))
    assert out == Outcome(False, "device_offline", "ac-1 does not answer", {"power_on": True, "setpoint_c": 28.0},
                          {}, 190.0)


async def test_outcomes_of_pulses() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("door-1", Source.TEACHER, {"on": False}))
    assert await arb.pulse("door-1", Source.FACILITY, 5) == Outcome(True, "ok", "pulsed for 5 s", {"on": False},
                                                                    {"on": True})
    assert unit.writes[-1] == ("door-1", {"pulse": 5})
    unit.offline.add("door-1")
    assert await arb.pulse("door-1", Source.FACILITY, 5) == Outcome(False, "device_offline", "door-1 does not answer",
                                                                    {"on": False}, {})
    unit.offline.clear()
    await arb.submit(Request("door-1", Source.SAFETY, {"on": False}, expires=60.0, requester="fire"))
    assert await arb.pulse("door-1", Source.FACILITY, 5) == Outcome(
        False, "forbidden", "door-1 is held closed by safety", {"on": False}, {},
        held={"on": Holder(Source.SAFETY, 60.0, "fire")})


# -- schedules (the baseline) ------------------------------------------------------------------------
async def test_a_schedule_switch_keeps_schedule_holds_and_merges_into_the_baseline() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.set_baseline("ac-1", {"setpoint_c": 27.0}, "schedule:morning")
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "mode": "cool"}, requester="T1"))
    await arb.submit(Request("ac-1", Source.SCHEDULE, {"fan": "low"}, expires=500.0, requester="schedule:hold"))
    clock.advance(5)
    await arb.set_baseline("ac-1", {"power_on": False, "fan": "high"}, "schedule:noon")
    assert [(r.source, dict(r.fields), r.requester) for r in arb.requests("ac-1")] == [
        (Source.SCHEDULE, {"fan": "low"}, "schedule:hold"),
        (Source.TEACHER, {"mode": "cool"}, "T1"),
        (Source.DEFAULT, {"setpoint_c": 27.0, "power_on": False, "fan": "high"}, "schedule:noon"),
    ]
    assert arb.requests("ac-1")[-1].ts == 5.0
    assert unit.state["ac-1"] == {"setpoint_c": 27.0, "power_on": False, "mode": "cool", "fan": "low"}


async def test_a_schedule_switch_reasserts_its_fields_on_the_device() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.set_baseline("ac-1", {"power_on": False}, "schedule:evening")
    unit.state["ac-1"]["power_on"] = True   # switched on at the wall
    await arb.set_baseline("ac-1", {"power_on": False}, "schedule:evening")
    assert unit.state["ac-1"]["power_on"] is False


async def test_a_schedule_switch_survives_a_restart(tmp_path: Path) -> None:
    clock, unit = ManualClock(0.0), Unit()
    store = Store(tmp_path / "s.db")
    arb = Arbiter(unit, store=store, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True, "setpoint_c": 26.0}, 900.0, "T1", 1.0))
    await arb.submit(Request("ac-2", Source.TEACHER, {"power_on": True}, 900.0, "T2", 2.0))
    clock.advance(3)
    await arb.set_baseline("ac-1", {"power_on": False}, "schedule:evening")
    await arb.set_baseline("ac-2", {"power_on": False}, "schedule:evening")
    store.close()
    assert stored(tmp_path / "s.db", clock) == [
        ("ac-1", Source.TEACHER, {"setpoint_c": 26.0}, 900.0, "T1", 1.0),
        ("ac-1", Source.DEFAULT, {"power_on": False}, None, "schedule:evening", 3.0),
        ("ac-2", Source.DEFAULT, {"power_on": False}, None, "schedule:evening", 3.0),
    ]


# -- restore points and restarts ---------------------------------------------------------------------
async def test_no_restore_point_for_a_field_another_source_asked_for() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 26.0}))
    await arb.submit(Request("ac-1", Source.EMS, {"setpoint_c": 28.0}, expires=100.0))
    assert [r.source for r in arb.requests("ac-1")] == [Source.EMS, Source.TEACHER]


async def test_restore_points_of_two_overrides_add_up() -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.state["ac-1"] = {"power_on": True, "setpoint_c": 26.0}
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, expires=100.0))
    await arb.submit(Request("ac-1", Source.SAFETY, {"setpoint_c": 28.0}, expires=100.0))
    [restore] = [r for r in arb.requests("ac-1") if r.source == Source.RESTORE]
    assert (dict(restore.fields), restore.requester) == ({"power_on": True, "setpoint_c": 26.0}, "restore")
    clock.advance(100)
    await arb.tick()
    assert unit.state["ac-1"] == {"power_on": True, "setpoint_c": 26.0}


async def test_a_restore_point_survives_a_restart_and_goes_when_applied(tmp_path: Path) -> None:
    clock, unit = ManualClock(0.0), Unit()
    unit.state["ac-1"] = {"power_on": True}
    store = Store(tmp_path / "s.db")
    arb = Arbiter(unit, store=store, clock=clock)
    clock.advance(7)
    await arb.submit(Request("ac-1", Source.EMS, {"power_on": False}, 100.0, "ems", 7.0))
    assert stored(tmp_path / "s.db", clock) == [
        ("ac-1", Source.EMS, {"power_on": False}, 100.0, "ems", 7.0),
        ("ac-1", Source.RESTORE, {"power_on": True}, None, "restore", 7.0),
    ]
    clock.advance(100)
    await arb.tick()
    store.close()
    assert stored(tmp_path / "s.db", clock) == []


async def test_a_restart_reads_every_known_request_past_an_unknown_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save_request("ac-0", "ABBOT", {"power_on": True}, None, "x", 1.0)   # a source this version does not know
    store.save_request("ac-1", "TEACHER", {"setpoint_c": 26.0}, 900.0, "T1", 2.0)
    store.save_request("ac-1", "EMS", {"power_on": False}, 800.0, "ems", 3.0)
    store.close()
    assert stored(tmp_path / "s.db", ManualClock(0.0)) == [
        ("ac-1", Source.EMS, {"power_on": False}, 800.0, "ems", 3.0),
        ("ac-1", Source.TEACHER, {"setpoint_c": 26.0}, 900.0, "T1", 2.0),
    ]


async def test_release_gives_the_lower_wish_back_and_forgets_the_request(tmp_path: Path) -> None:
    clock, unit = ManualClock(0.0), Unit()
    store = Store(tmp_path / "s.db")
    arb = Arbiter(unit, store=store, clock=clock)
    await arb.submit(Request("ac-1", Source.TEACHER, {"setpoint_c": 26.0}, None, "T1", 1.0))
    await arb.submit(Request("ac-1", Source.FACILITY, {"setpoint_c": 28.0}, 900.0, "F1", 2.0))
    out = await arb.release("ac-1", Source.FACILITY)
    assert out == Outcome(True, "ok", "applied", {"setpoint_c": 26.0}, {"setpoint_c": 26.0})
    assert unit.state["ac-1"] == {"setpoint_c": 26.0}
    try:
        assert stored(tmp_path / "s.db", clock) == [("ac-1", Source.TEACHER, {"setpoint_c": 26.0}, None, "T1", 1.0)]
    finally:
        store.close()


async def test_release_without_a_store() -> None:
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock)
    await arb.submit(Request("light-1", Source.TEACHER, {"on": False}))
    await arb.submit(Request("light-1", Source.LOCAL, {"on": True}, expires=900.0))
    assert (await arb.release("light-1", Source.LOCAL)).ok
    assert unit.state["light-1"] == {"on": False}
    out = await arb.release("light-1", Source.LOCAL)
    assert (out.ok, out.message) == (True, "nothing to change")


# -- what the logs and the watchdog see ----------------------------------------------------------------
def test_a_new_arbiter_counts_as_just_turned() -> None:
    arb = Arbiter(Unit(), clock=ManualClock(0.0))
    assert 0 <= time.monotonic() - arb.last_turn < 5


async def test_log_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.core.arbiter")
    store = Store(tmp_path / "s.db")
    store.save_request("ac-9", "ABBOT", {"power_on": True}, None, "x", 1.0)
    Arbiter(Unit(), store=store, clock=ManualClock(0.0))
    store.close()
    clock, unit = ManualClock(0.0), Unit()
    arb = Arbiter(unit, clock=clock, min_off=lambda _a: 180.0)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": False}))
    clock.advance(10)
    await arb.submit(Request("ac-1", Source.TEACHER, {"power_on": True}))
    unit.offline.add("ac-1")
    await arb.submit(Request("ac-1", Source.FACILITY, {"setpoint_c": 27.0}))
    assert [r.getMessage() for r in caplog.records if r.name == "edge.core.arbiter"] == [
        "dropping stored request of unknown source ABBOT for ac-9",
        "start of ac-1 deferred 170 s (minimum off time)",
        "start of ac-1 deferred 170 s (minimum off time)",
        "apply ac-1 {'setpoint_c': 27.0} failed: device_offline ac-1 does not answer",
    ]

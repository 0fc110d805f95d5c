"""The control entry's rules that mutation testing found unpinned (docs/mutation-results.md).

Holds to the exact end of the school day (a request made at 10:00:17 holds until 18:00:00, one made at
18:00:00 until tomorrow's), the limits of an explicit hold, and the whole `Result` of every path:
who holds a field and until when, a deferred start, a refusal with the device's state, a schedule's
baseline, a release and a door pulse. Built with test_control_entry's `entry` over test_arbiter's `Unit`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
from test_arbiter import Unit
from test_control_entry import MORNING, TZ, entry

from edge.core.arbiter import Holder, Request, Source
from edge.core.clock import iso
from edge.core.control import Ask, Refused, Result
from edge.core.model import Kind


def at(day: int, hh: int, mm: int, ss: float = 0.0) -> float:
    return datetime(2026, 6, day, hh, mm, tzinfo=TZ).timestamp() + ss


class TwoLies(Unit):
    """Reports another setpoint and another fan speed than the ones written."""

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        out = dict(await super().apply(actuator, fields))
        for k, v in (("setpoint_c", 25.0), ("fan", "low")):
            if k in out:
                self.state[actuator][k] = out[k] = v
        return out


# -- holds -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("now", "until"), [
    (at(16, 10, 0, 17.25), at(16, 18, 0)),    # the end of the day to the second, whatever the seconds now
    (at(16, 17, 59, 59.5), at(16, 18, 0)),
    (at(16, 18, 0), at(17, 18, 0)),           # at the end of the day exactly: tomorrow's
    (at(16, 18, 0, 17.25), at(17, 18, 0)),
])
async def test_default_holds_end_at_the_end_of_the_school_day_to_the_second(now: float, until: float) -> None:
    ctl, _unit, _clock, _seen = entry(start=now)
    for source in (Source.TEACHER, Source.FACILITY, Source.BOOKING):
        assert ctl.default_until(source, now) == until
        out = await ctl.ask(Ask("light-1", {"on": True}, source, "x"))
        assert out.until == until


@pytest.mark.parametrize(("hold_s", "ok"), [(1, True), (0.5, True), (7 * 86400, True), (7 * 86400 + 1, False),
                                            (0, False)])
async def test_an_explicit_hold_is_up_to_seven_days(hold_s: float, ok: bool) -> None:
    ctl, unit, clock, _seen = entry()
    out = await ctl.ask(Ask("light-1", {"on": True}, Source.FACILITY, "f", hold_s=hold_s))
    if ok:
        assert (out.status, out.until) == ("ok", clock.time() + hold_s)
    else:
        assert out == Result("rejected", "out_of_range", f"hold {hold_s:g} s; 1 s to 7 days", "light-1")
        assert unit.writes == []


# -- answers to ask --------------------------------------------------------------------------------------
async def test_a_refusal_carries_the_target_and_its_state() -> None:
    ctl, _unit, _clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "t"))
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 30}, Source.TEACHER, "t"))
    assert out == Result("rejected", "out_of_range", "setpoint 30 °C outside the policy range 26–28 °C", "ac-1",
                         {"setpoint_c": 27})
    assert await ctl.ask(Ask("nope", {"on": True}, Source.TEACHER, "t")) == Result(
        "rejected", "unknown_target", "no device 'nope'", "nope")


async def test_offline_and_admission_are_asked_about_the_device_itself() -> None:
    ctl, unit, _clock, _seen = entry()
    ctl.online = lambda d: d != "light-1"
    kinds: list[tuple[str, Kind, Source]] = []

    def admit(target: str, kind: Kind, _fields: Mapping[str, Any], source: Source) -> str | None:
        kinds.append((target, kind, source))
        return None

    ctl.admission = admit
    assert await ctl.ask(Ask("light-1", {"on": True}, Source.TEACHER, "t")) == Result(
        "failed", "device_offline", "light-1 is offline", "light-1")
    assert (await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "t"))).ok
    assert (await ctl.baseline("ac-1", {"setpoint_c": 27}, "schedule:x")).ok
    assert kinds == [("ac-1", Kind.AC, Source.TEACHER), ("ac-1", Kind.AC, Source.SCHEDULE)]
    assert unit.writes == [("ac-1", {"power_on": True}), ("ac-1", {"setpoint_c": 27})]


async def test_a_withdrawn_request_says_so_with_the_state() -> None:
    ctl, unit, _clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "t"))
    unit.offline.add("ac-1")
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 26}, Source.FACILITY, "f"))
    assert out == Result("failed", "device_offline", "ac-1 does not answer (the request was withdrawn)", "ac-1",
                         {"setpoint_c": 27})


async def test_every_field_the_device_does_not_hold_is_named() -> None:
    ctl, _unit, _clock, _seen = entry(TwoLies())
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 27, "fan": "high", "mode": "cool"}, Source.FACILITY, "f"))
    state = {"setpoint_c": 25.0, "fan": "low", "mode": "cool"}
    assert out == Result("failed", "write_failed", "the device reports setpoint_c=25.0, fan='low' after the write",
                         "ac-1", state)


async def test_applied_is_the_whole_answer() -> None:
    ctl, _unit, _clock, _seen = entry()
    out = await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    assert out == Result("ok", "ok", "applied", "ac-1", {"power_on": False}, until=at(16, 18, 0))


async def test_the_highest_holder_is_named_with_every_held_field() -> None:
    ctl, _unit, _clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.FACILITY, "facility:F1"))       # until 18:00
    await ctl.ask(Ask("ac-1", {"setpoint_c": 26}, Source.EMS, "ems", hold_s=600))        # until 10:10
    out = await ctl.ask(Ask("ac-1", {"power_on": False, "setpoint_c": 28}, Source.TEACHER, "teacher:T1"))
    ems = Holder(Source.EMS, MORNING + 600, "ems")
    assert out == Result("ok", "ok", f"recorded; power_on, setpoint_c held by ems until {iso(MORNING + 600, TZ)};"
                                     " yours applies when that ends", "ac-1", {"power_on": True, "setpoint_c": 26},
                         overridden_by=ems, held_fields=("power_on", "setpoint_c"), until=at(16, 18, 0))


async def test_a_holder_without_an_end_is_named_without_one() -> None:
    ctl, _unit, _clock, _seen = entry()
    await ctl.arbiter.submit(Request("light-1", Source.SAFETY, {"on": False}, None, "fire"))
    out = await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "l", hold_s=60))
    assert out == Result("ok", "ok", "recorded; on held by safety; yours applies when that ends", "light-1",
                         {"on": False}, overridden_by=Holder(Source.SAFETY, None, "fire"), held_fields=("on",),
                         until=MORNING + 60)


async def test_a_deferred_start_is_the_whole_answer() -> None:
    ctl, _unit, clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "t"))
    await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    clock.advance(30)
    out = await ctl.ask(Ask("ac-1", {"power_on": True, "setpoint_c": 27}, Source.TEACHER, "t"))
    assert out == Result("ok", "ok", f"applied; start deferred until {iso(MORNING + 180, TZ)} (compressor minimum"
                                     " off time)", "ac-1", {"power_on": False, "setpoint_c": 27},
                         deferred_until=MORNING + 180, until=at(16, 18, 0))
    # another field asked for while the start waits: applied, and no deferral of its own to report
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 26}, Source.FACILITY, "f"))
    assert out == Result("ok", "ok", "applied", "ac-1", {"power_on": False, "setpoint_c": 26}, until=at(16, 18, 0))


async def test_a_request_held_against_a_deferred_start_reports_no_deferral_of_its_own() -> None:
    ctl, _unit, _clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "t"))
    await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    out = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.FACILITY, "facility:F1", hold_s=60))
    assert out.deferred_until == MORNING + 180                     # the facility's start waits
    out = await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    assert out.overridden_by == Holder(Source.FACILITY, MORNING + 60, "facility:F1")
    assert out.deferred_until is None                               # the teacher asked for off: nothing of hers waits


# -- the schedule's baseline ---------------------------------------------------------------------------
async def test_a_baseline_is_answered_like_a_request() -> None:
    ctl, _unit, _clock, seen = entry()
    out = await ctl.baseline("ac-1", {"setpoint_c": 27, "power_on": True}, "schedule:morning")
    assert out == Result("ok", "ok", "applied", "ac-1", {"setpoint_c": 27, "power_on": True})
    assert seen == [("ac-1", {"setpoint_c": 27, "power_on": True}, Source.SCHEDULE)]
    [req] = ctl.arbiter.requests("ac-1")
    assert (req.source, dict(req.fields), req.requester) == (Source.DEFAULT, {"power_on": True, "setpoint_c": 27},
                                                             "schedule:morning")
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "teacher:T1", hold_s=60))
    out = await ctl.baseline("ac-1", {"power_on": False}, "schedule:evening")   # a switch replaces the teacher's wish
    assert out == Result("ok", "ok", "applied", "ac-1", {"setpoint_c": 27, "power_on": False})
    await ctl.ask(Ask("ac-1", {"setpoint_c": 28}, Source.FACILITY, "facility:F1", hold_s=60))
    out = await ctl.baseline("ac-1", {"setpoint_c": 26}, "schedule:evening")
    assert out == Result("ok", "ok", f"recorded; setpoint_c held by facility until {iso(MORNING + 60, TZ)}; yours"
                                     " applies when that ends", "ac-1", {"setpoint_c": 28, "power_on": False},
                         overridden_by=Holder(Source.FACILITY, MORNING + 60, "facility:F1"),
                         held_fields=("setpoint_c",))
    assert await ctl.baseline("ac-1", {"setpoint_c": 30}, "schedule:x") == Result(
        "rejected", "out_of_range", "setpoint 30 °C outside the policy range 26–28 °C", "ac-1",
        {"setpoint_c": 28, "power_on": False})


# -- release ---------------------------------------------------------------------------------------------
async def test_release_is_answered_with_the_state_it_leaves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.core.control")
    ctl, unit, _clock, _seen = entry()
    await ctl.ask(Ask("light-1", {"on": False}, Source.TEACHER, "t"))
    await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "local:root"))
    assert await ctl.release("light-1", Source.LOCAL, "local:root") == Result("ok", "ok", "released", "light-1",
                                                                              {"on": False})
    assert [r.getMessage() for r in caplog.records if r.name == "edge.core.control"] == [
        "light-1: released by local:root (facility)"]
    assert await ctl.release("nope", Source.LOCAL, "l") == Result("rejected", "unknown_target", "no device 'nope'",
                                                                  "nope")
    await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "local:root"))
    unit.offline.add("light-1")
    assert await ctl.release("light-1", Source.LOCAL, "local:root") == Result(
        "failed", "device_offline", "released, but the device could not be set back: light-1 does not answer",
        "light-1", {"on": True})


# -- door pulses -----------------------------------------------------------------------------------------
async def test_every_pulse_refusal_is_the_whole_answer() -> None:
    ctl, unit, _clock, _seen = entry(max_unlock_s=30)
    unit.state["door-1"] = {"on": False}
    assert await ctl.pulse("nope", 5, Source.FACILITY, "f") == Result("rejected", "unknown_target", "no device 'nope'",
                                                                      "nope")
    assert await ctl.pulse("light-1", 5, Source.FACILITY, "f") == Result(
        "rejected", "bad_request", "light-1 is a light: only doors on a pulse-capable board open", "light-1")
    assert await ctl.pulse("door-1", 31, Source.FACILITY, "f") == Result("rejected", "out_of_range",
                                                                         "seconds 31; 1–30", "door-1")
    ctl.can_pulse = lambda _d: False   # a door on a board without hardware-timed pulses
    assert (await ctl.pulse("door-1", 5, Source.FACILITY, "f")).code == "bad_request"
    ctl.can_pulse = lambda d: d == "door-1"
    ctl.online = lambda d: d != "door-1"
    assert await ctl.pulse("door-1", 5, Source.FACILITY, "f") == Result("failed", "device_offline",
                                                                        "door-1 is offline", "door-1")
    ctl.online = lambda _d: True
    kinds: list[Kind] = []
    ctl.admission = lambda _t, kind, _f, _s: kinds.append(kind) or "no unlocks during the exam"   # type: ignore[func-returns-value]
    assert await ctl.pulse("door-1", 5, Source.FACILITY, "f") == Result("rejected", "denied_by_ems",
                                                                        "no unlocks during the exam", "door-1")
    assert kinds == [Kind.DOOR]
    assert unit.writes == []


@pytest.mark.parametrize("seconds", [1, 30])
async def test_a_pulse_may_last_from_one_second_to_the_maximum(seconds: float) -> None:
    ctl, unit, _clock, _seen = entry(max_unlock_s=30)
    assert (await ctl.pulse("door-1", seconds, Source.FACILITY, "f")).ok
    assert unit.writes == [("door-1", {"pulse": float(seconds)})]


async def test_pulse_answers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.core.control")
    ctl, unit, clock, _seen = entry()
    unit.state["door-1"] = {"on": False}
    assert await ctl.pulse("door-1", 5, Source.TEACHER, "teacher:T1") == Result(
        "ok", "ok", "door-1 unlocked for 5 s", "door-1", {"on": False}, until=clock.time() + 5)
    assert [r.getMessage() for r in caplog.records if r.name == "edge.core.control"] == [
        "door-1 unlocked for 5 s by teacher:T1"]
    unit.offline.add("door-1")
    assert await ctl.pulse("door-1", 5, Source.TEACHER, "teacher:T1") == Result(
        "failed", "device_offline", "door-1 does not answer", "door-1", {"on": False})
    unit.offline.clear()
    await ctl.arbiter.submit(Request("door-1", Source.SAFETY, {"on": False}, clock.time() + 60, "fire"))
    fire = Holder(Source.SAFETY, clock.time() + 60, "fire")
    assert await ctl.pulse("door-1", 5, Source.FACILITY, "f") == Result(
        "rejected", "forbidden", "door-1 is held closed by safety", "door-1", {"on": False}, overridden_by=fire,
        held_fields=("on",))


# -- the JSON form and the validation messages ---------------------------------------------------------
def test_the_payload_renders_every_time_in_the_sites_zone() -> None:
    full = Result("ok", "ok", "m", "ac-1", {"power_on": False}, deferred_until=MORNING + 180,
                  overridden_by=Holder(Source.EMS, MORNING + 600, "ems"), held_fields=("setpoint_c",),
                  until=MORNING + 3600)
    assert full.payload(TZ) == {
        "status": "ok", "code": "ok", "message": "m", "state": {"power_on": False},
        "deferred_until": "2026-06-16T10:03:00.000+08:00",
        "overridden_by": {"source": "ems", "by": "ems", "until": "2026-06-16T10:10:00.000+08:00",
                          "fields": ["setpoint_c"]},
        "until": "2026-06-16T11:00:00.000+08:00",
    }
    bare = Result("ok", "ok", "m", "light-1", overridden_by=Holder(Source.SAFETY, None, "fire"), held_fields=("on",))
    assert bare.payload(TZ) == {"status": "ok", "code": "ok", "message": "m",
                                "overridden_by": {"source": "safety", "by": "fire", "until": None, "fields": ["on"]}}


async def test_validation_messages() -> None:
    ctl, _unit, _clock, _seen = entry()
    out = await ctl.ask(Ask("ac-1", {"power_on": "x", "setpoint_c": "y", "mode": 1, "fan": 2}, Source.TEACHER, "t"))
    parts = out.message.split("; ")
    assert [p.split(": ")[0] for p in parts] == ["power_on", "mode", "setpoint_c"]   # the first three of four
    out = await ctl.ask(Ask("ac-1", {}, Source.TEACHER, "t"))
    assert out.message == "Value error, at least one of power_on, mode, setpoint_c, fan"   # a model error: no location
    out = await ctl.ask(Ask("door-1", {"on": True}, Source.TEACHER, "t"))
    assert out.message == "a door is not set: it opens with a timed unlock (door.unlock, pulse)"
    out = await ctl.ask(Ask("meter-1", {"on": True}, Source.TEACHER, "t"))
    assert out.message == "a meter device takes no commands"
    assert str(Refused("bad_request", "why")) == "why"

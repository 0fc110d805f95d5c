"""The one way in (edge.core.control): the same models, policies, holds and answers for every source."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_arbiter import Unit

from edge.core.arbiter import Arbiter, Request, Source
from edge.core.clock import ManualClock
from edge.core.config import ControlConfig
from edge.core.control import Ask, Control, Denial, Queued, Result
from edge.core.model import Kind

TZ = ZoneInfo("Asia/Taipei")
# Tuesday 2026-06-16 10:00 in Taipei
MORNING = datetime(2026, 6, 16, 10, 0, tzinfo=TZ).timestamp()
KINDS = {"ac-1": Kind.AC, "light-1": Kind.LIGHT, "door-1": Kind.DOOR, "meter-1": Kind.METER}


class Lying(Unit):
    """A device that reports another setpoint than the one written."""

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        out = dict(await super().apply(actuator, fields))
        if "setpoint_c" in out:
            self.state[actuator]["setpoint_c"] = out["setpoint_c"] = 25.0
        return out


def entry(unit: Unit | None = None, *, start: float = MORNING, online: bool = True,
          **policy: Any) -> tuple[Control, Unit, ManualClock, list[tuple[str, Any, Source]]]:
    unit = unit or Unit()
    clock = ManualClock(start)
    seen: list[tuple[str, Any, Source]] = []

    def admit(target: str, _kind: Kind, fields: Mapping[str, Any], source: Source) -> str | None:
        seen.append((target, dict(fields), source))
        return None

    ctl = Control(Arbiter(unit, clock=clock, min_off=lambda a: 180.0 if a == "ac-1" else 0.0), KINDS,
                  lambda _d: online, unit.actual, lambda d: d == "door-1", ControlConfig(**policy), clock, TZ,
                  admission=admit)
    return ctl, unit, clock, seen


@pytest.mark.parametrize(("fields", "code"), [
    ({"power_on": "off"}, "bad_request"), ({"power_on": "true"}, "bad_request"), ({"power_on": 1}, "bad_request"),
    ({"power_on": 0}, "bad_request"), ({"setpoint_c": "26"}, "bad_request"), ({"setpoint_c": True}, "bad_request"),
    ({"setpoint_c": float("nan")}, "bad_request"), ({"mode": "COOL"}, "bad_request"),
    ({"mode": "freeze"}, "bad_request"), ({"fan": "turbo"}, "bad_request"), ({"colour": "red"}, "bad_request"),
    ({}, "bad_request"), ({"setpoint_c": 25.9}, "out_of_range"), ({"setpoint_c": 28.1}, "out_of_range"),
    ({"setpoint_c": 16}, "out_of_range"),
])
async def test_every_source_gets_the_same_strict_models(fields: dict[str, Any], code: str) -> None:
    for source in (Source.TEACHER, Source.SCHEDULE, Source.BOOKING, Source.FACILITY, Source.EMS, Source.SAFETY):
        ctl, unit, _clock, seen = entry()
        out = await ctl.ask(Ask("ac-1", fields, source, "x"))
        assert (out.status, out.code) == ("rejected", code), (source, out)
        assert unit.writes == []
        assert seen == []   # refused before the admission hook


@pytest.mark.parametrize("fields", [{"power_on": True, "setpoint_c": 26, "mode": "cool", "fan": "high"},
                                    {"setpoint_c": 28.0}, {"setpoint_c": 26}, {"mode": "heat"}, {"fan": "auto"}])
async def test_valid_values_are_written_and_the_answer_is_true(fields: dict[str, Any]) -> None:
    ctl, unit, _clock, seen = entry()
    out = await ctl.ask(Ask("ac-1", fields, Source.TEACHER, "teacher:T1"))
    assert (out.status, out.code) == ("ok", "ok"), out
    for k, v in fields.items():
        assert unit.state["ac-1"][k] == v
        assert type(unit.state["ac-1"][k]) in (bool, float, int, str)
    assert seen == [("ac-1", fields, Source.TEACHER)]


async def test_switches_take_on_only_and_doors_take_nothing() -> None:
    ctl, unit, _clock, _seen = entry()
    assert (await ctl.ask(Ask("light-1", {"on": False}, Source.TEACHER, "t"))).ok
    assert unit.state["light-1"] == {"on": False}
    for target, fields in (("light-1", {"on": "off"}), ("light-1", {"power_on": True}), ("door-1", {"on": True}),
                           ("meter-1", {"on": True})):
        out = await ctl.ask(Ask(target, fields, Source.FACILITY, "f"))
        assert (out.status, out.code) == ("rejected", "bad_request"), (target, out)
    out = await ctl.ask(Ask("nope", {"on": True}, Source.FACILITY, "f"))
    assert out.code == "unknown_target"


async def test_an_offline_device_is_refused_and_nothing_is_kept() -> None:
    ctl, _unit, _clock, _seen = entry(online=False)
    out = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.FACILITY, "f"))
    assert (out.status, out.code) == ("failed", "device_offline")
    assert ctl.arbiter.requests("ac-1") == []


async def test_the_admission_hook_sees_every_source_and_can_deny() -> None:
    ctl, unit, _clock, _seen = entry()
    ctl.admission = lambda target, kind, fields, source: "over the contract" if fields.get("power_on") else None
    for source in (Source.TEACHER, Source.FACILITY, Source.SCHEDULE, Source.BOOKING):
        out = await ctl.ask(Ask("ac-1", {"power_on": True}, source, "x"))
        assert (out.status, out.code, out.message) == ("rejected", "denied_by_ems", "over the contract")
    out = await ctl.baseline("ac-1", {"power_on": True}, "schedule:x")
    assert out.code == "denied_by_ems"
    assert unit.writes == []
    assert (await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "x"))).ok


async def test_default_holds_end_with_the_school_day() -> None:
    ctl, _unit, clock, _seen = entry(day_end="17:30")
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "t"))
    assert out.until == datetime(2026, 6, 16, 17, 30, tzinfo=TZ).timestamp()
    out = await ctl.ask(Ask("light-1", {"on": True}, Source.FACILITY, "f"))
    assert out.until == datetime(2026, 6, 16, 17, 30, tzinfo=TZ).timestamp()
    clock.advance(8 * 3600)   # 18:00: past today's end, the hold runs to tomorrow's
    out = await ctl.ask(Ask("light-1", {"on": False}, Source.LOCAL, "l"))
    assert out.until == datetime(2026, 6, 17, 17, 30, tzinfo=TZ).timestamp()
    out = await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "l", hold_s=600))
    assert out.until == clock.time() + 600
    assert ctl.default_until(Source.EMS, 100.0) == 1000.0
    assert ctl.default_until(Source.SCHEDULE, 100.0) is None
    for bad in (0, -5, 8 * 86400):
        out = await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "l", hold_s=bad))
        assert out.code == "out_of_range"


async def test_a_hold_ends_and_the_lower_wish_comes_back() -> None:
    ctl, unit, clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"setpoint_c": 26}, Source.TEACHER, "t"))
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 28}, Source.FACILITY, "f", hold_s=60))
    assert out.ok
    assert unit.state["ac-1"]["setpoint_c"] == 28
    clock.advance(61)
    await ctl.arbiter.tick()
    assert unit.state["ac-1"]["setpoint_c"] == 26


async def test_overridden_by_says_who_and_until_when() -> None:
    ctl, unit, _clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True, "setpoint_c": 26}, Source.FACILITY, "facility:F1", hold_s=600))
    out = await ctl.ask(Ask("ac-1", {"power_on": False, "setpoint_c": 26}, Source.TEACHER, "teacher:T1"))
    assert out.ok
    assert out.overridden_by is not None
    assert (out.overridden_by.source, out.overridden_by.requester) == (Source.FACILITY, "facility:F1")
    assert out.held_fields == ("power_on",)   # the setpoint agrees: not held against her
    body = out.payload(TZ)
    assert body["overridden_by"] == {"source": "facility", "by": "facility:F1", "fields": ["power_on"],
                                     "until": body["overridden_by"]["until"]}
    assert body["overridden_by"]["until"].endswith("+08:00")
    assert unit.state["ac-1"]["power_on"] is True


async def test_a_start_inside_the_minimum_off_time_is_deferred_for_any_source() -> None:
    ctl, unit, clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "t"))
    clock.advance(30)
    await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    clock.advance(5)
    for source in (Source.TEACHER, Source.FACILITY, Source.SAFETY):
        out = await ctl.ask(Ask("ac-1", {"power_on": True, "setpoint_c": 27}, source, "x"))
        assert out.ok
        assert out.deferred_until == MORNING + 30 + 180
        assert "deferred_until" in out.payload(TZ)
        assert unit.state["ac-1"]["power_on"] is False
        assert unit.state["ac-1"]["setpoint_c"] == 27


async def test_a_device_that_does_not_hold_the_value_is_not_ok() -> None:
    ctl, _unit, _clock, _seen = entry(Lying())
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.FACILITY, "f"))
    assert (out.status, out.code) == ("failed", "write_failed")
    assert "25.0" in out.message


async def test_a_failed_write_is_withdrawn_and_said() -> None:
    ctl, unit, _clock, _seen = entry()
    unit.offline.add("ac-1")
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.FACILITY, "f"))
    assert (out.status, out.code) == ("failed", "device_offline")
    assert "withdrawn" in out.message
    assert ctl.arbiter.requests("ac-1") == []


async def test_release_gives_the_field_back() -> None:
    ctl, unit, _clock, _seen = entry()
    await ctl.ask(Ask("light-1", {"on": False}, Source.TEACHER, "t"))
    await ctl.ask(Ask("light-1", {"on": True}, Source.LOCAL, "l"))
    assert unit.state["light-1"]["on"] is True
    out = await ctl.release("light-1", Source.LOCAL, "l")
    assert (out.status, out.message) == ("ok", "released")
    assert unit.state["light-1"]["on"] is False
    assert (await ctl.release("light-1", Source.LOCAL, "l")).message == "nothing to release"
    assert (await ctl.release("nope", Source.LOCAL, "l")).code == "unknown_target"


async def test_a_door_pulse_is_bounded_and_vetoed_by_a_higher_holder() -> None:
    ctl, unit, clock, seen = entry(max_unlock_s=30)
    events: list[tuple[str, Any]] = []
    ctl.events = lambda kind, body: events.append((kind, dict(body)))
    out = await ctl.pulse("door-1", 5, Source.TEACHER, "teacher:T1")
    assert out.ok
    assert out.until == clock.time() + 5
    assert events == [("door", {"door": "door-1", "action": "unlock", "seconds": 5, "by": "teacher:T1",
                                "source": "teacher"})]
    assert seen[-1] == ("door-1", {"on": True, "seconds": 5}, Source.TEACHER)
    for seconds in (0, 0.5, 31, "5", True, None):
        assert (await ctl.pulse("door-1", seconds, Source.FACILITY, "f")).code == "out_of_range", seconds
    assert (await ctl.pulse("light-1", 5, Source.FACILITY, "f")).code == "bad_request"
    await ctl.arbiter.submit(Request("door-1", Source.SAFETY, {"on": False}, clock.time() + 60, "fire"))
    out = await ctl.pulse("door-1", 5, Source.FACILITY, "f")
    assert (out.status, out.code) == ("rejected", "forbidden")
    assert out.overridden_by is not None
    assert out.overridden_by.source == Source.SAFETY
    assert sum(1 for _a, f in unit.writes if "pulse" in f) == 1


async def test_an_explicit_null_is_refused() -> None:
    ctl, unit, _clock, _seen = entry()
    for fields in ({"power_on": None}, {"setpoint_c": None, "mode": "cool"}, {"fan": None}):
        out = await ctl.ask(Ask("ac-1", fields, Source.FACILITY, "f"))
        assert (out.status, out.code) == ("rejected", "bad_request"), fields
    assert unit.writes == []


async def test_an_off_request_under_a_held_deferred_start_does_not_say_deferred() -> None:
    ctl, unit, clock, _seen = entry()
    await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "t"))
    await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    clock.advance(5)
    held_on = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.FACILITY, "f", hold_s=600))
    assert held_on.deferred_until is not None
    out = await ctl.ask(Ask("ac-1", {"power_on": False}, Source.TEACHER, "t"))
    assert out.ok
    assert out.deferred_until is None
    assert "deferred" not in out.message
    assert out.overridden_by is not None
    assert unit.state["ac-1"]["power_on"] is False


async def test_a_teachers_pulse_is_capped_lower_than_staffs() -> None:
    ctl, _unit, _clock, _seen = entry(max_unlock_s=600)
    assert ctl.policy.teacher_max_unlock_s == 10
    assert (await ctl.pulse("door-1", 10, Source.TEACHER, "teacher:T1")).ok
    out = await ctl.pulse("door-1", 11, Source.TEACHER, "teacher:T1")
    assert out.code == "out_of_range"
    assert "book the room" in out.message
    assert (await ctl.pulse("door-1", 11, Source.FACILITY, "f")).ok
    assert (await ctl.pulse("door-1", 11, Source.BOOKING, "booking:b1")).ok


def test_a_teachers_cap_above_staffs_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="teacher_max_unlock_s is above max_unlock_s"):
        ControlConfig(max_unlock_s=30, teacher_max_unlock_s=60)


async def test_a_person_changing_their_own_request_keeps_what_they_did_not_change() -> None:
    ctl, _unit, _clock, _seen = entry()
    assert (await ctl.ask(Ask("ac-1", {"power_on": True, "setpoint_c": 26}, Source.TEACHER, "teacher:T1"))).ok
    assert (await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "teacher:T1"))).ok
    (mine,) = ctl.arbiter.requests("ac-1")
    assert dict(mine.fields) == {"power_on": True, "setpoint_c": 27}     # still wants it on
    # a colleague of the same tier changes the same standing request: it stays on at their setpoint
    assert (await ctl.ask(Ask("ac-1", {"setpoint_c": 28}, Source.TEACHER, "teacher:T2"))).ok
    (theirs,) = ctl.arbiter.requests("ac-1")
    assert (theirs.requester, dict(theirs.fields)) == ("teacher:T2", {"power_on": True, "setpoint_c": 28})


async def test_a_setpoint_change_that_would_restart_a_unit_meets_the_admission() -> None:
    """The merged request is what gets written: if it starts the unit, the energy manager decides."""
    ctl, unit, _clock, _seen = entry()
    assert (await ctl.ask(Ask("ac-1", {"power_on": True, "setpoint_c": 26}, Source.TEACHER, "teacher:T1"))).ok
    unit.state["ac-1"]["power_on"] = False            # switched off by hand at the unit since
    ctl.arbiter.observe("ac-1", {"power_on": False})
    asked: list[Mapping[str, Any]] = []

    def quota(_t: str, _k: Kind, fields: Mapping[str, Any], _s: Source) -> Denial | None:
        asked.append(dict(fields))
        return Denial("denied_by_quota", "room 101 has used its quota") if fields.get("power_on") else None

    ctl.admission = quota
    out = await ctl.ask(Ask("ac-1", {"setpoint_c": 27}, Source.TEACHER, "teacher:T1"))
    assert asked == [{"power_on": True, "setpoint_c": 27}]
    assert (out.status, out.code) == ("rejected", "denied_by_quota")


async def test_a_queued_start_is_taken_under_an_ems_hold_and_the_ems_itself_is_never_queued() -> None:
    ctl, unit, clock, _seen = entry()
    ctl.admission = lambda _t, _k, fields, _s: Queued("the block is full", 600.0) if fields.get("power_on") else None
    out = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "teacher:T1"))
    assert (out.status, out.code) == ("ok", "ok")
    assert out.message.startswith("queued: the block is full")
    assert out.overridden_by is not None
    assert out.overridden_by.source == Source.EMS
    assert out.overridden_by.until == clock.time() + 600.0
    holds = {r.source: r for r in ctl.arbiter.requests("ac-1")}
    assert holds[Source.EMS].requester == "ems:queue"
    assert dict(holds[Source.EMS].fields) == {"power_on": False}
    assert dict(holds[Source.TEACHER].fields) == {"power_on": True}   # kept: it starts when the EMS lets go
    assert unit.actual("ac-1").get("power_on") is not True
    # a source at or above the EMS is never queued: refused with the same words
    ems = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.EMS, "ems"))
    assert (ems.status, ems.code) == ("rejected", "denied_by_ems")
    assert ems.message == "the block is full"
    # a one-shot switch cannot queue either
    switch = await ctl.baseline("ac-1", {"power_on": True}, "schedule:x")
    assert switch.code == "denied_by_ems"


async def test_a_denial_carries_its_code_and_retry_hint_to_the_payload() -> None:
    ctl, _unit, _clock, _seen = entry()
    ctl.admission = lambda *_a: Denial("denied_by_quota", "room 101 has used its quota", 120.0)
    out = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "teacher:T1"))
    assert (out.status, out.code, out.retry_after_s) == ("rejected", "denied_by_quota", 120.0)
    assert out.payload(TZ)["retry_after_s"] == 120
    door = await ctl.pulse("door-1", 5, Source.TEACHER, "teacher:T1")
    assert (door.code, door.retry_after_s) == ("denied_by_quota", 120.0)
    ctl.admission = lambda *_a: "the meter is stale"
    plain = await ctl.ask(Ask("ac-1", {"power_on": True}, Source.TEACHER, "teacher:T1"))
    assert (plain.code, plain.message, plain.retry_after_s) == ("denied_by_ems", "the meter is stale", None)
    assert "retry_after_s" not in plain.payload(TZ)


async def test_site_actions_go_to_the_service_that_offers_them() -> None:
    ctl, _unit, _clock, _seen = entry()
    missing = await ctl.site("alarm.ack", {"level": "warning"}, "facility:F1")
    assert (missing.status, missing.code) == ("rejected", "bad_request")
    assert "energy manager" in missing.message
    calls: list[tuple[dict[str, Any], str]] = []

    async def ack(params: Mapping[str, Any], requester: str) -> Result:
        calls.append((dict(params), requester))
        return Result("ok", "ok", "1 alarm(s) acknowledged", "site")

    ctl.site_actions["alarm.ack"] = ack
    out = await ctl.site("alarm.ack", {"level": "warning"}, "facility:F1")
    assert out.ok
    assert calls == [({"level": "warning"}, "facility:F1")]

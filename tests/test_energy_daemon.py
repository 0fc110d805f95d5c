"""The energy manager in the daemon, end to end: the virtual school's meter over real Modbus (RTU pty),
teachers' starts through the one way in, sheds written to the ACs and given back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import free_port, until
from helpers.sites import two_bus_school

from edge.config import load_config
from edge.core.alarms import DOCUMENT as ALARMS
from edge.core.arbiter import Source
from edge.core.config import Config
from edge.core.control import Ask
from edge.core.loader import ConfigError
from edge.core.store import StorageError
from edge.core.timetable import occupied
from edge.daemon import Daemon
from edge.energy import EnergyService
from ems.alarms import AlarmEvent
from ems.roommodel import Habits, RoomModels
from ems.usage import DayUsage
from simulator.app import VirtualSchool

FAST = {"period_s": 1.0, "min_on_s": 0.0, "restore_gap_s": 0.0, "stale_after_s": 5.0}


def with_contract(base: dict[str, Any], contract_kw: float) -> Config:
    cfg = dict(base)
    cfg["ems"] = {"meter": "meter-main", "contract_kw": contract_kw, **FAST}
    cfg["control"] = {"min_off_s": 5.0}
    return Config.model_validate(cfg)


@pytest.fixture
async def school(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Any], VirtualSchool]]:
    base = two_bus_school(tmp_path, free_port())
    base["simulation"] = {"seed": 5, "initial_room_c": 30.0}
    async with VirtualSchool(Config.model_validate(base)) as sim:
        yield base, sim


def ems_of(daemon: Daemon) -> EnergyService:
    return next(s for s in daemon.services if isinstance(s, EnergyService))


async def test_a_start_that_fits_is_granted_and_one_that_does_not_is_denied_with_a_reason(
        school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    site_kw = sim.site_power_w / 1000
    # room for one 1.7 kW unit under the target (97 % of the contract), not for two
    base = {**base}
    cfg = with_contract(base, (site_kw + 2.6) / 0.97)
    assert cfg.ems is not None
    cfg = cfg.model_copy(update={"ems": cfg.ems.model_copy(update={"queue_starts": False})})
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        ems = ems_of(daemon)
        await until(lambda: not ems.block().stale, what="the meter read into the block")
        first = await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.TEACHER, "teacher:T1"))
        assert first.ok, first.message
        second = await daemon.control.ask(Ask("ac-101b", {"power_on": True}, Source.TEACHER, "teacher:T1"))
        assert (second.status, second.code) == ("rejected", "denied_by_ems")
        assert "15-minute block" in second.message
        assert second.retry_after_s is not None
        assert second.payload(daemon.tz)["retry_after_s"] > 0
        assert sim.ac("ac-101b").power_on is False
        # staff are below the EMS too: the same answer
        staff = await daemon.control.ask(Ask("ac-101b", {"power_on": True}, Source.FACILITY, "facility:F1"))
        assert staff.code == "denied_by_ems"
        status = daemon.status()["ems"]
        assert status["contract_kw"] == pytest.approx(cfg.ems.contract_kw if cfg.ems else 0)
        assert status["stale"] is False


async def test_over_the_contract_the_ems_sheds_and_gives_the_teachers_wish_back(
        school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    site_kw = sim.site_power_w / 1000
    cfg = with_contract(base, (site_kw + 12.0) / 0.97)
    events: list[dict[str, Any]] = []
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        sub = daemon.bus.subscribe("event", name="test")
        ems = ems_of(daemon)
        await until(lambda: not ems.block().stale, what="the meter read into the block")
        for ac in ("ac-101a", "ac-101b", "ac-401a"):
            out = await daemon.control.ask(Ask(ac, {"power_on": True, "setpoint_c": 26}, Source.TEACHER, "t"))
            assert out.ok, out.message
        await until(lambda: all(sim.ac(a).power_on for a in ("ac-101a", "ac-101b", "ac-401a")), what="ACs on")
        # the kitchen opens: 20 kW more than the contract allows
        sim.physics.spec = dataclasses.replace(sim.physics.spec, base_load_kw=sim.physics.spec.base_load_kw + 30)
        await until(ems.controller.shed_units, within=20, what="the EMS sheds")
        await until(lambda: any(sim.ac(a).setpoint_c == 28.0 or not sim.ac(a).power_on
                                for a in ("ac-101a", "ac-101b", "ac-401a")), what="a shed written to an AC")

        def ems_events() -> list[dict[str, Any]]:
            while not sub.queue.empty():
                msg = sub.queue.get_nowait()
                if msg.key == "ems":
                    events.append(msg.payload)
            return events

        await until(ems_events, what="every shed is an `ems` event")
        assert events[0]["action"] in ("shed_setpoint", "shed_off")
        assert "contract" in events[0]["reason"]
        assert daemon.status()["holds"]
        # the kitchen closes: the EMS lets go and the teacher's 26 °C comes back
        sim.physics.spec = dataclasses.replace(sim.physics.spec, base_load_kw=sim.physics.spec.base_load_kw - 30)
        await until(lambda: not ems.controller.shed_units(), within=30, what="the EMS gives back")
        await until(lambda: all(sim.ac(a).power_on and sim.ac(a).setpoint_c == 26.0
                                for a in ("ac-101a", "ac-101b", "ac-401a")), within=30,
                    what="the teacher's wish back on every unit")


async def test_overload_alarms_raise_are_acknowledged_and_clear(school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    site_kw = sim.site_power_w / 1000
    cfg_data = dict(base)
    cfg_data["ems"] = {"meter": "meter-main", "contract_kw": site_kw * 3, **FAST,
                       "alarm_raise_s": 1.0, "alarm_clear_s": 1.0}
    cfg = Config.model_validate(cfg_data)
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        sub = daemon.bus.subscribe("event", name="test")
        ems = ems_of(daemon)
        await until(lambda: not ems.block().stale, what="the meter read into the block")
        # staff set two levels: the site is above the notice level and below the critical one
        daemon.store.set(ALARMS, json.dumps({"levels": [{"level": "notice", "demand_kw": site_kw * 0.5},
                                                        {"level": "critical", "demand_kw": site_kw * 2}],
                                             "by": "facility:F1"}))
        seen: list[dict[str, Any]] = []

        def alarms() -> list[dict[str, Any]]:
            while not sub.queue.empty():
                msg = sub.queue.get_nowait()
                if msg.key == "alarm":
                    seen.append(msg.payload)
            return seen

        await until(alarms, what="an alarm event")
        assert [(a["level"], a["state"]) for a in seen] == [("notice", "raised")]
        assert daemon.status()["ems"]["alarms"][0]["level"] == "notice"
        # acknowledged through the one way in, as the cloud's alarm.ack does
        out = await daemon.control.site("alarm.ack", {"level": "notice"}, "facility:F1")
        assert out.ok, out.message
        await until(lambda: len(alarms()) == 2, what="the acknowledgement event")
        assert (seen[1]["state"], seen[1]["by"]) == ("acknowledged", "facility:F1")
        nothing = await daemon.control.site("alarm.ack", {"level": "critical"}, "facility:F1")
        assert (nothing.status, nothing.code) == ("rejected", "bad_request")
        # the notice level goes away: the raised alarm is cleared with an event
        daemon.store.set(ALARMS, json.dumps({"levels": [{"level": "critical", "demand_kw": site_kw * 2}]}))
        await until(lambda: len(alarms()) == 3, what="the clear event")
        assert seen[2]["state"] == "cleared"
        assert daemon.status()["ems"]["alarms"] == []


async def test_alarm_ack_without_an_energy_manager_says_so(tmp_path: Path) -> None:
    base = two_bus_school(tmp_path, free_port())
    base.pop("ems")
    cfg = Config.model_validate(base)
    async with VirtualSchool(cfg), Daemon(cfg, status_port=0) as daemon:
        out = await daemon.control.site("alarm.ack", {"level": "notice"}, "facility:F1")
        assert (out.status, out.code) == ("rejected", "bad_request")
        assert "energy manager" in out.message


async def test_a_class_that_used_its_quota_is_denied_starts_until_staff_top_it_up(
        school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    cfg = with_contract(base, sim.site_power_w / 1000 * 3)
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        sub = daemon.bus.subscribe("event", name="test")
        ems = ems_of(daemon)
        await until(lambda: not ems.block().stale, what="the meter read into the block")
        out = await daemon.control.site("quota.topup", {"target": "101", "kwh": 0.002}, "facility:F1")
        assert out.ok, out.message
        assert (await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.TEACHER, "teacher:T1"))).ok
        await until(lambda: ems.usage.exhausted("101"), within=30, what="room 101's quota used up")
        denied = await daemon.control.ask(Ask("ac-101b", {"power_on": True}, Source.TEACHER, "teacher:T1"))
        assert (denied.status, denied.code) == ("rejected", "denied_by_quota")
        assert "top it up" in denied.message
        # another room, and staff, are not held to room 101's quota
        assert (await daemon.control.ask(Ask("ac-401a", {"power_on": True}, Source.TEACHER, "teacher:T2"))).ok
        assert (await daemon.control.ask(Ask("ac-101b", {"power_on": True}, Source.FACILITY, "facility:F1"))).ok
        topped = await daemon.control.site("quota.topup", {"target": "101", "kwh": 5}, "facility:F1")
        assert topped.ok
        assert (await daemon.control.ask(Ask("ac-101b", {"power_on": False}, Source.TEACHER, "teacher:T1"))).ok
        assert not ems.usage.exhausted("101")
        usage = daemon.status()["ems"]["usage"]["rooms"]["101"]
        assert usage["today_kwh"] > 0.002
        assert usage["balance_kwh"] > 4.9
        kinds = set()
        while not sub.queue.empty():
            kinds.add(sub.queue.get_nowait().key)
        assert "quota" in kinds
        bad = await daemon.control.site("quota.topup", {"target": "999", "kwh": 5}, "facility:F1")
        assert bad.code == "unknown_target"


async def test_an_ac_left_on_in_an_empty_room_is_switched_off_with_a_notice(
        school: tuple[dict[str, Any], VirtualSchool], monkeypatch: pytest.MonkeyPatch) -> None:
    base, sim = school
    data = dict(base)
    data["ems"] = {"meter": "meter-main", "contract_kw": sim.site_power_w / 1000 * 3, **FAST, "empty_grace_min": 0.02}
    data["timetable"] = {"kind": "elementary"}
    cfg = Config.model_validate(data)
    empty = {"101"}
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        ems = ems_of(daemon)
        monkeypatch.setattr(ems, "occupied", lambda room, now: room not in empty)
        sub = daemon.bus.subscribe("event", name="test")
        for ac in ("ac-101a", "ac-401a"):
            assert (await daemon.control.ask(Ask(ac, {"power_on": True}, Source.TEACHER, "t"))).ok
        await until(lambda: not sim.ac("ac-101a").power_on, within=15, what="the AC in the empty room switched off")
        assert sim.ac("ac-401a").power_on is True
        notes = []
        while not sub.queue.empty():
            msg = sub.queue.get_nowait()
            if msg.key == "ems":
                notes.append(msg.payload)
        assert [(n["action"], n["device"]) for n in notes] == [("switch_off", "ac-101a")]
        assert "empty room" in notes[0]["reason"]
        # a switch, not a hold: the class is back and switches it on again
        empty.clear()
        assert (await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.TEACHER, "t"))).ok


def test_occupancy_comes_from_the_timetable_and_the_class_s_away_lessons() -> None:
    tz = ZoneInfo("Asia/Taipei")
    tue_p3 = datetime(2026, 6, 16, 10, 45, tzinfo=tz)     # a Tuesday, period 3
    assert occupied(tue_p3) is True
    assert occupied(tue_p3, frozenset({3})) is False        # at PE
    assert occupied(datetime(2026, 6, 16, 17, 0, tzinfo=tz)) is False      # after the last period
    assert occupied(datetime(2026, 6, 20, 10, 45, tzinfo=tz)) is False     # Saturday
    lunch = datetime(2026, 6, 16, 12, 10, tzinfo=tz)
    assert occupied(lunch) is True
    assert occupied(lunch, lunch_in_room=False) is False


def test_ems_settings_name_real_units_and_rooms(tmp_path: Path) -> None:
    base = two_bus_school(tmp_path, 1)
    base["ems"] = {"meter": "meter-main", "contract_kw": 100, "unit_rated_kw": {"ac-999": 2.0, "light-401": 1.0},
                   "room_priority": {"999": 5}}
    base["ems"]["precool_setpoint_c"] = 25.0
    base["rooms"][0]["away"] = {"someday": [3]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "ems.unit_rated_kw.ac-999: 'ac-999' is not an AC device" in text
    assert "ems.unit_rated_kw.light-401" in text
    assert "ems.room_priority.999: unknown room '999'" in text
    assert "rooms[0].away.someday" in text
    assert "ems.precool_setpoint_c: 25 °C is outside the setpoint policy 26-28 °C" in text


async def test_a_room_is_pre_cooled_before_its_teachers_usual_start(school: tuple[dict[str, Any], VirtualSchool],
                                                                    tmp_path: Path) -> None:
    base, sim = school
    cfg = with_contract(base, sim.site_power_w / 1000 * 3)
    local = datetime.now(ZoneInfo(cfg.site.timezone))
    minute = local.hour * 60 + local.minute
    if minute + 5 >= 24 * 60:
        pytest.skip("the usual start would fall on tomorrow")
    first: list[float | None] = [None] * 7
    first[local.weekday()] = float(minute + 5)          # the teachers of 101 usually switch on in 5 minutes
    habits = Habits(room="101", first_on_min=tuple(first), on_temp_c=28.5, days=10, switch_ons=10)
    RoomModels(habits={"101": habits}).save(Path(cfg.storage.path) / "models" / "rooms.json")
    async with Daemon(cfg, status_port=0) as daemon:
        sub = daemon.bus.subscribe("event", name="test")
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        await until(lambda: sim.ac("ac-101a").power_on and sim.ac("ac-101b").power_on, within=20,
                    what="room 101 pre-cooled")
        assert sim.ac("ac-101a").setpoint_c == 27.0
        assert sim.ac("ac-401a").power_on is False          # no habit, no pre-cooling
        notes: list[dict[str, Any]] = []
        while not sub.queue.empty():
            msg = sub.queue.get_nowait()
            if msg.key == "ems":
                notes.append(msg.payload)
        assert {n["action"] for n in notes} == {"precool"}
        assert "usual" in notes[0]["reason"]
        # once a day: switched off again, it stays off
        for ac in ("ac-101a", "ac-101b"):
            assert (await daemon.control.ask(Ask(ac, {"power_on": False}, Source.TEACHER, "t"))).ok
        await asyncio.sleep(2.5)
        assert sim.ac("ac-101a").power_on is False


async def test_a_start_that_does_not_fit_is_queued_and_starts_by_itself_when_there_is_room(
        school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    site_kw = sim.site_power_w / 1000
    cfg = with_contract(base, (site_kw + 2.6) / 0.97)
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        ems = ems_of(daemon)
        await until(lambda: not ems.block().stale, what="the meter read into the block")
        assert (await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.TEACHER, "teacher:T1"))).ok
        queued = await daemon.control.ask(Ask("ac-101b", {"power_on": True}, Source.TEACHER, "teacher:T1"))
        assert (queued.status, queued.code) == ("ok", "ok")                     # taken: nobody has to ask again
        assert queued.message.startswith("queued:")
        assert queued.overridden_by is not None
        assert queued.overridden_by.source == Source.EMS                          # ... held back by the EMS
        assert queued.overridden_by.until is not None
        assert sim.ac("ac-101b").power_on is False
        # room again (the first unit's teacher switches it off): the queued one starts by itself
        assert (await daemon.control.ask(Ask("ac-101a", {"power_on": False}, Source.TEACHER, "teacher:T1"))).ok
        await until(lambda: sim.ac("ac-101b").power_on, within=20, what="the queued start")
        assert daemon.status()["holds"].get("ac-101b", [{}])[0].get("source") == "teacher"


def test_the_energy_managers_events_match_the_published_contract() -> None:
    """The bodies edge.energy sends, as the daemon frames them, against docs/asyncapi.yaml."""
    from test_cloud_e2e import asyncapi_validator  # the published contract

    base = {"id": "x1", "ts": "2026-06-16T08:00:00+08:00"}
    alarm = AlarmEvent("a1", "warning", "raised", "demand", "projected_kw", 93.5, 85.5, 0.0).as_event()
    day = DayUsage("101", datetime(2026, 6, 16).date(), 12.5, 6.0).as_event()
    cases = {
        "AlarmEvent": {**base, "kind": "alarm", **alarm},
        "EmsEvent": {**base, "kind": "ems", "action": "shed_off", "device": "ac-101a", "reason": "101: switched off",
                     "fields": {"power_on": False}, "result": "ok"},
        "UsageEvent": {**base, "kind": "usage", **day},
        "QuotaEvent": {**base, "kind": "quota", "room": "101", "top_up_kwh": 5, "balance_kwh": 5.0,
                       "by": "facility:F1"},
        "EmsState": {"online": True, "block_avg_kw": 1.0, "projected_kw": 2.0, "allow_kw": 3.0, "contract_kw": 4.0,
                     "shed_units": 0, "stale": False},
    }
    for schema, body in cases.items():
        assert [e.message for e in asyncapi_validator(schema).iter_errors(body)] == [], schema
    wrong = {**cases["EmsEvent"], "action": "shed"}
    assert list(asyncapi_validator("EmsEvent").iter_errors(wrong))


async def test_a_restart_lets_go_of_the_ems_holds_of_the_last_run(school: tuple[dict[str, Any], VirtualSchool]) -> None:
    base, sim = school
    cfg = with_contract(base, sim.site_power_w / 1000 * 3)
    async with Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        out = await daemon.control.ask(Ask("ac-101a", {"power_on": False}, Source.EMS, "ems", hold_s=3600))
        assert out.ok
        assert Source.EMS in [r.source for r in daemon.arbiter.requests("ac-101a")]
    async with Daemon(cfg, status_port=0) as daemon:      # the same storage: the hold was kept on disk
        assert Source.EMS not in [r.source for r in daemon.arbiter.requests("ac-101a")]


async def test_a_top_up_that_cannot_be_stored_is_not_answered_ok_nor_kept(
        school: tuple[dict[str, Any], VirtualSchool], monkeypatch: pytest.MonkeyPatch) -> None:
    base, sim = school
    cfg = with_contract(base, sim.site_power_w / 1000 * 3)
    async with Daemon(cfg, status_port=0) as daemon:
        ems = ems_of(daemon)
        assert (await daemon.control.site("quota.topup", {"target": "101", "kwh": 5}, "facility:F1")).ok

        def full(_key: str, _value: str) -> None:
            raise StorageError("disk full")

        monkeypatch.setattr(daemon.store, "set", full)
        out = await daemon.control.site("quota.topup", {"target": "101", "kwh": 5}, "facility:F1")
        assert (out.status, out.code) == ("failed", "storage_full")
        assert ems.usage.balance("101") == pytest.approx(5.0)
        report = await daemon.control.site("usage.report", {"target": "site"}, "facility:F1")
        assert report.ok

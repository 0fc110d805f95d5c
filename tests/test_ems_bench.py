"""ems.bench: the simulated school day, the teachers, the baselines, the arbiter's part, determinism and the CLI."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.core.clock import ManualClock
from ems.bench import CONTROLLERS, ControllerUnavailable, compute_kpis, main, run_bench, simulate
from ems.bench import kpis as K
from ems.bench.baselines import NoControl, Staggered, Threshold
from ems.bench.runner import MIN_OFF_S, SimActuators
from ems.bench.sim import BenchSchool
from ems.scenario import Scenario, load_scenario
from ems.types import Action, ActionKind, BlockStatus, UnitView

ROOT = Path(__file__).resolve().parent.parent
KPI_KEYS = ["scenario", "controller", "peak_block_kw", "overrun_blocks", "max_overrun_kw", "penalty_twd",
            "energy_kwh", "discomfort_kh_per_room", "discomfort_kh_worst_room", "compressor_starts_per_unit_h",
            "min_off_violations", "max_off_min_per_h", "requests_granted_ratio", "compute_ratio"]


def scenario_text(start: str = "07:20", hours: float = 1.0, contract: float = 40.0, extra: str = "") -> str:
    """A 10-room school on a hot day; the rush at 07:30 falls in the default hour."""
    return (f'start: "2026-06-16T{start}:00+08:00"\nduration_h: {hours}\ncontract_kw: {contract}\nseed: 3\n'
            "rooms: {count: 10, floors: 3}\n"
            'base_load_kw: {kind: series, points: [["07:00", 4], ["08:00", 8]]}\n' + extra)


def scenario(tmp_path: Path, name: str = "short.yaml", **kw: Any) -> Path:
    p = tmp_path / name
    p.write_text(scenario_text(**kw))
    return p


def block(power_kw: float | None, contract_kw: float = 100.0, *, stale: bool = False) -> BlockStatus:
    return BlockStatus(start=0.0, elapsed_s=300.0, energy_kwh=0.0, avg_kw=power_kw or 0.0,
                       projected_kw=power_kw or 0.0, allow_kw=contract_kw, power_kw=power_kw,
                       contract_kw=contract_kw, stale=stale)


def unit(uid: str, *, floor: int = 1, on: bool = True, power_kw: float | None = 1.5, shed: bool = False) -> UnitView:
    return UnitView(id=uid, room=uid[:3], floor=floor, rated_kw=1.7, power_kw=power_kw, on=on, setpoint_c=26.0,
                    room_temp_c=27.0, wanted_on=True, wanted_setpoint_c=26.0, off_since=None, occupied=True,
                    shed=shed)


def without_compute(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "compute_ratio"}


# -- baselines, by hand ----------------------------------------------------------------------------
def test_none_grants_everything_and_never_acts() -> None:
    c = NoControl()
    assert c.step(0.0, block(500.0), [unit("101a")]) == []
    assert c.admit(0.0, block(500.0), unit("101a", on=False), {"power_on": True}) is None


def test_threshold_sheds_only_above_95_percent() -> None:
    c = Threshold()
    units = [unit("101a", power_kw=1.0), unit("102a", power_kw=2.0), unit("103a", power_kw=1.5),
             unit("104a", on=False, power_kw=0.0), unit("105a", power_kw=3.0, shed=True)]
    assert c.step(0.0, block(95.0), units) == []                 # at 95 %: not above
    acts = c.step(10.0, block(96.0), units)                      # 1 kW over: the biggest running one covers it
    assert [(a.unit, a.kind, dict(a.fields)) for a in acts] == [("102a", ActionKind.SHED_OFF, {"power_on": False})]
    acts = Threshold().step(10.0, block(98.0), units)           # 3 kW over: 2.0 + 1.5 (then covered)
    assert [a.unit for a in acts] == ["102a", "103a"]
    acts = Threshold().step(10.0, block(200.0), units)          # never an off, or an already shed unit
    assert [a.unit for a in acts] == ["102a", "103a", "101a"]
    assert Threshold().step(10.0, block(200.0, stale=True), units) == []
    assert Threshold().step(10.0, block(None), units) == []


def test_threshold_restores_below_85_percent_one_at_a_time_oldest_first() -> None:
    c = Threshold()
    running = [unit("101a", power_kw=2.0), unit("102a", power_kw=1.0)]
    assert [a.unit for a in c.step(0.0, block(97.5), running)] == ["101a", "102a"]   # 2.5 kW over
    shed = [unit("101a", on=False, power_kw=0.0, shed=True), unit("102a", on=False, power_kw=0.0, shed=True)]
    assert c.step(10.0, block(90.0), shed) == []                 # between 85 and 95 %: hold
    assert c.step(20.0, block(85.0), shed) == []                 # at 85 %: not below
    acts = c.step(30.0, block(84.9), shed)
    assert [(a.unit, a.kind, dict(a.fields)) for a in acts] == [("101a", ActionKind.RESTORE, {})]
    shed2 = [unit("101a", on=False, power_kw=0.0), unit("102a", on=False, power_kw=0.0, shed=True)]
    assert [a.unit for a in c.step(40.0, block(80.0), shed2)] == ["102a"]
    assert c.step(50.0, block(80.0), [unit("101a"), unit("102a")]) == []   # nothing held any more
    assert c.admit(0.0, block(200.0), unit("101a", on=False), {"power_on": True}) is None


def test_threshold_needs_restore_below_shed() -> None:
    with pytest.raises(ValueError, match="restore_below"):
        Threshold(shed_above=0.9, restore_below=0.9)


def test_staggered_starts_floor_by_floor_top_first() -> None:
    c = Staggered(floor_delay_s=300.0, rush_s=3600.0)
    c.step(0.0, block(10.0), [unit("101a", floor=1), unit("401a", floor=4)])
    t0 = 1000.0
    start = {"power_on": True, "setpoint_c": 26.0}
    assert c.admit(t0, block(10.0), unit("401a", floor=4, on=False), start) is None       # opens the rush
    reason = c.admit(t0 + 10, block(10.0), unit("301a", floor=3, on=False), start)
    assert reason is not None
    assert "floor 3" in reason
    assert "290 s" in reason
    assert c.admit(t0 + 299, block(10.0), unit("301a", floor=3, on=False), start) is not None
    assert c.admit(t0 + 300, block(10.0), unit("301a", floor=3, on=False), start) is None
    assert c.admit(t0 + 899, block(10.0), unit("101a", floor=1, on=False), start) is not None
    assert c.admit(t0 + 900, block(10.0), unit("101a", floor=1, on=False), start) is None
    # not a start: a setpoint change, a unit already on
    assert c.admit(t0 + 1, block(10.0), unit("101a", floor=1, on=True), {"setpoint_c": 27.0}) is None
    assert c.admit(t0 + 1, block(10.0), unit("101a", floor=1, on=True), start) is None
    # after the rush every start goes
    assert c.admit(t0 + 3600, block(10.0), unit("101b", floor=1, on=False), start) is None
    # the next day opens a new rush
    t1 = t0 + 86400
    assert c.admit(t1, block(10.0), unit("101a", floor=1, on=False), start) is not None
    assert c.admit(t1 + 1, block(10.0), unit("401a", floor=4, on=False), start) is None


# -- the simulated school ---------------------------------------------------------------------------
def test_school_layout_units_and_orientation(tmp_path: Path) -> None:
    text = scenario_text().replace("rooms: {count: 10, floors: 3}",
                                   "rooms: {count: 10, floors: 3, units_per_room: 3, unit_cooling_kw: 6.0, "
                                   "unit_rated_kw: 2.0, west_facing_share: 0.3}")
    (tmp_path / "s.yaml").write_text(text)
    school = BenchSchool(load_scenario(tmp_path / "s.yaml"))
    assert len(school.rooms) == 10
    assert len(school.units) == 30
    assert school.rooms["101"].units == ("ac-101a", "ac-101b", "ac-101c")
    assert sum(r.params.west_facing for r in school.rooms.values()) == 3
    assert {rid for rid, r in school.rooms.items() if r.params.top_floor} == {"301", "302", "303"}
    p = school.units["ac-101a"].params
    assert (p.cooling_w, p.rated_power_w) == (6000.0, 2000.0)
    assert not any(u.power_on for u in school.units.values())


def test_site_energy_is_base_plus_acs(tmp_path: Path) -> None:
    run = simulate(scenario(tmp_path), "none")
    sc = run.scenario
    school = BenchSchool(sc)
    base = 0.0
    for i in range(1, run.steps + 1):   # the base load at each 10 s step's end, as the school integrates it
        base += school.base_kw(run.t0 + i * run.step_s) * run.step_s / 3600.0
    total = K.energy_kwh(run.step_s, run.site_kw)
    assert total == pytest.approx(base + sum(run.room_ac_kwh.values()), rel=1e-9)
    assert sum(run.room_ac_kwh.values()) > 5.0         # ten rooms' ACs ran for most of the hour


# -- a short run of each controller ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONTROLLERS))
def test_each_controller_runs_an_hour_with_sane_kpis(tmp_path: Path, name: str) -> None:
    # the oracle plans in 5-minute slots of the clock-aligned blocks: its day starts on a block
    path = scenario(tmp_path, contract=35.0, **({"start": "07:15"} if name == "oracle" else {}))
    if name == "ems" and importlib.util.find_spec("ems.controller") is None:
        with pytest.raises(ControllerUnavailable, match=r"ems/controller\.py with class EmsController"):
            run_bench(path, name)
        return
    doc = run_bench(path, name)
    assert list(doc)[:len(KPI_KEYS)] == KPI_KEYS
    assert doc["scenario"] == "short"
    assert doc["controller"] == name
    assert doc["min_off_violations"] == 0
    assert 0.0 < doc["energy_kwh"] < 35.0 * 2         # site power never near twice the contract for an hour
    assert doc["peak_block_kw"] > 0.0
    assert doc["overrun_blocks"] >= 0
    assert doc["max_overrun_kw"] == pytest.approx(max(0.0, doc["peak_block_kw"] - 35.0), abs=2e-3)
    assert 0.0 <= doc["discomfort_kh_per_room"] <= doc["discomfort_kh_worst_room"]
    assert 0.0 <= doc["max_off_min_per_h"] <= 60.0
    assert 0.0 <= doc["requests_granted_ratio"] <= 1.0
    assert doc["requests_asked"] >= 20                # ten hot rooms, two units each, asked at 07:30
    assert doc["compute_ratio"] >= 0.0
    assert doc["compressor_starts_per_unit_h"] > 0
    assert doc["ac_energy_kwh"] == pytest.approx(sum(doc["usage_kwh_by_room"].values()), abs=0.02)


def test_none_grants_all_and_threshold_sheds_and_restores(tmp_path: Path) -> None:
    path = scenario(tmp_path, contract=16.0)
    none = run_bench(path, "none")
    assert none["requests_granted_ratio"] == 1.0
    assert not any(none["ems_actions"].values())
    assert none["overrun_blocks"] >= 1                # 16 kW binds at the rush (none peaks at ~18.5)
    th = run_bench(path, "threshold")
    assert th["ems_actions"]["shed_off"] > 0
    assert th["peak_block_kw"] < none["peak_block_kw"]
    assert th["discomfort_kh_per_room"] > none["discomfort_kh_per_room"]


# -- the arbiter's part: holds, release, the minimum off time -------------------------------------
class ShedThenRelease:
    """Sheds ac-101a once it runs, lets go 60 s later; records what it saw."""

    name = "scripted"

    def __init__(self) -> None:
        self.shed_at: float | None = None
        self.released_at: float | None = None
        self.seen: list[tuple[float, UnitView]] = []

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        u = next(x for x in units if x.id == "ac-101a")
        self.seen.append((now, u))
        if self.shed_at is None and u.on:
            self.shed_at = now
            return [Action(u.id, ActionKind.SHED_OFF, {"power_on": False}, "test")]
        if self.shed_at is not None and self.released_at is None and now >= self.shed_at + 60:
            self.released_at = now
            return [Action(u.id, ActionKind.RESTORE, {}, "test")]
        return []

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        return None


def test_a_shed_holds_and_a_release_brings_the_wish_back_after_the_minimum_off_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = ShedThenRelease()
    monkeypatch.setitem(CONTROLLERS, "scripted", lambda _sc, _school: ctl)
    run = simulate(scenario(tmp_path), "scripted")
    assert ctl.shed_at is not None
    assert ctl.released_at == ctl.shed_at + 60
    during = [u for t, u in ctl.seen if ctl.shed_at < t < ctl.released_at]
    assert during
    assert all(u.shed and not u.on and u.wanted_on for u in during)     # the teacher still wants it
    assert all(u.off_since == ctl.shed_at for u in during)
    mine = [(t, on) for t, uid, on in run.commands if uid == "ac-101a"]
    assert mine[1] == (ctl.shed_at, False)
    t_on, on = mine[2]
    assert on
    assert t_on >= ctl.shed_at + MIN_OFF_S                              # deferred by the arbiter, not at release
    assert t_on <= ctl.shed_at + MIN_OFF_S + 10                          # and started at the first period due
    after = [u for t, u in ctl.seen if t > t_on]
    assert after
    assert all(u.on and not u.shed for u in after)
    assert K.min_off_violations(run.commands, MIN_OFF_S) == 0
    assert {k: n for k, n in compute_kpis(run)["ems_actions"].items() if n} == {"shed_off": 1, "restore": 1}


class Scripted:
    """Runs `plan(now, views) -> actions` each step; records the views of ac-101a."""

    name = "scripted"

    def __init__(self, plan: Any) -> None:
        self.plan = plan
        self.seen: list[tuple[float, UnitView]] = []

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        views = {u.id: u for u in units}
        self.seen.append((now, views["ac-101a"]))
        return list(self.plan(now, views))

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        return None


def test_a_shed_nobody_releases_ends_after_an_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shed_at: list[float] = []

    def plan(now: float, views: Mapping[str, UnitView]) -> list[Action]:
        if not shed_at and views["ac-101a"].on:
            shed_at.append(now)
            return [Action("ac-101a", ActionKind.SHED_OFF, {"power_on": False}, "test")]
        return []

    ctl = Scripted(plan)
    monkeypatch.setitem(CONTROLLERS, "scripted", lambda _sc, _school: ctl)
    run = simulate(scenario(tmp_path, hours=1.5), "scripted")
    mine = [(t, on) for t, uid, on in run.commands if uid == "ac-101a"]
    assert mine[1] == (shed_at[0], False)
    assert mine[2] == (shed_at[0] + 3600.0, True)        # the hold expired: the teacher's wish is back
    assert all(u.shed for t, u in ctl.seen if shed_at[0] < t < shed_at[0] + 3600)
    assert not any(u.shed for t, u in ctl.seen if t > shed_at[0] + 3600)


def test_switch_off_replaces_the_wish_once_and_the_teacher_asks_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[float] = []

    def plan(now: float, views: Mapping[str, UnitView]) -> list[Action]:
        if not done and views["ac-101a"].on and views["ac-101b"].on:
            done.append(now)
            return [Action("ac-101a", ActionKind.SWITCH_OFF, {"power_on": False}, "test")]
        return []

    ctl = Scripted(plan)
    monkeypatch.setitem(CONTROLLERS, "scripted", lambda _sc, _school: ctl)
    run = simulate(scenario(tmp_path, extra="teachers: {reaction_s: 60}\n"), "scripted")
    after = [u for t, u in ctl.seen if t > done[0]]
    assert not after[0].on
    assert not after[0].shed                       # not held: a baseline
    assert not after[0].wanted_on                  # the teacher's "on" is gone
    mine = [(t, on) for t, uid, on in run.commands if uid == "ac-101a"]
    assert mine[1] == (done[0], False)
    # the class is in and the room hot: the teacher asks again (within the reaction time) and it starts
    # once the minimum off time is over
    assert mine[2][1]
    assert done[0] + MIN_OFF_S <= mine[2][0] <= done[0] + MIN_OFF_S + 2 * 60 + 10
    assert K.min_off_violations(run.commands, MIN_OFF_S) == 0


def test_precool_is_a_baseline_and_the_teacher_leaves_it_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[float] = []

    def plan(now: float, views: Mapping[str, UnitView]) -> list[Action]:
        if not done:
            done.append(now)
            return [Action("ac-101a", ActionKind.PRECOOL, {"power_on": True, "setpoint_c": 27.0}, "test")]
        return []

    ctl = Scripted(plan)
    asked: list[tuple[str, dict[str, object]]] = []

    def admit(now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        asked.append((unit.id, dict(fields)))
        return None

    ctl.admit = admit   # type: ignore[method-assign]
    monkeypatch.setitem(CONTROLLERS, "scripted", lambda _sc, _school: ctl)
    run = simulate(scenario(tmp_path), "scripted")
    assert asked[0] == ("ac-101a", {"power_on": True, "setpoint_c": 27.0})   # admission, as the daemon's baseline
    mine = [(t, on) for t, uid, on in run.commands if uid == "ac-101a"]
    assert mine == [(done[0], True)]
    after = [u for t, u in ctl.seen if t > done[0]]
    assert all(u.on and u.wanted_on and not u.shed for u in after)
    assert [f for uid, f in asked[1:] if uid == "ac-101a"] == []              # the teacher found it on
    assert any(uid == "ac-102a" for uid, _f in asked[1:])                    # the other rooms' teachers asked


def test_an_action_outside_the_policy_is_refused_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[float] = []

    def plan(now: float, views: Mapping[str, UnitView]) -> list[Action]:
        if not sent and views["ac-101a"].on:
            sent.append(now)
            return [Action("ac-101a", ActionKind.SHED_SETPOINT, {"setpoint_c": 31.0}, "too warm a setpoint")]
        return []

    monkeypatch.setitem(CONTROLLERS, "scripted", lambda _sc, _school: Scripted(plan))
    doc = run_bench(scenario(tmp_path, hours=0.5), "scripted")
    assert sent
    assert doc["ems_actions"]["shed_setpoint"] == 1
    assert doc["ems_actions_refused"] == 1


def test_the_adapter_logs_changes_and_a_quick_restart_counts(tmp_path: Path) -> None:
    school = BenchSchool(load_scenario(scenario(tmp_path)))
    clock = ManualClock(school.start)
    log: list[tuple[float, str, bool]] = []
    act = SimActuators(school, clock, log)

    async def drive() -> None:
        assert await act.apply("ac-101a", {"power_on": True, "setpoint_c": 27.0}) == {"power_on": True,
                                                                                      "setpoint_c": 27.0}
        await act.apply("ac-101a", {"power_on": True})           # no change: not logged
        clock.advance(60)
        await act.apply("ac-101a", {"power_on": False})
        clock.advance(179)
        await act.apply("ac-101a", {"power_on": True})

    asyncio.run(drive())
    t = school.start
    assert log == [(t, "ac-101a", True), (t + 60, "ac-101a", False), (t + 239, "ac-101a", True)]
    assert act.off_at == {"ac-101a": t + 60}
    assert school.units["ac-101a"].setpoint_c == 27.0
    assert K.min_off_violations(log, MIN_OFF_S) == 1


# -- teachers -------------------------------------------------------------------------------------
class DenyAll:
    name = "deny"

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        return []

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        return "no"


def test_refused_teachers_retry_and_rooms_count_as_held_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CONTROLLERS, "deny", lambda _sc, _school: DenyAll())
    path = scenario(tmp_path, start="07:50", extra="teachers: {reaction_s: 0, retry_s: 300}\n")
    doc = run_bench(path, "deny")
    assert doc["requests_granted_ratio"] == 0.0
    assert doc["requests_granted"] == 0
    # each hot room asks for its 2 units every ~5 min (retry_s +-20 %) while the class is in
    assert doc["requests_asked"] >= 10 * 2 * 9
    assert doc["max_off_min_per_h"] == 60.0        # a class in all hour, refused all hour
    assert doc["ac_energy_kwh"] < 0.1                # 20 units on standby (3 W) for an hour: 0.06 kWh


def test_teachers_stay_off_when_the_room_is_cool(tmp_path: Path) -> None:
    path = scenario(tmp_path, extra="weather: {kind: diurnal, min_c: 18, max_c: 22}\n")
    doc = run_bench(path, "none")
    assert doc["requests_asked"] == 0
    assert doc["requests_granted_ratio"] is None


@pytest.mark.parametrize(("forget", "left_on"), [(0.0, False), (1.0, True)])
def test_at_the_end_of_the_day_teachers_switch_off_unless_they_forget(tmp_path: Path, forget: float,
                                                                       left_on: bool) -> None:
    path = scenario(tmp_path, start="15:00", hours=1.5, extra=f"teachers: {{forget_share: {forget}}}\n")
    run = simulate(path, "none")
    last = {uid: on for _, uid, on in run.commands}
    assert len(last) >= 10
    assert all(on == left_on for on in last.values())
    assert not any(run.occupied[r][-1] for r in run.rooms)   # 16:30: the class has gone home


def test_empty_rooms_keep_the_acs_left_on(tmp_path: Path) -> None:
    path = scenario(tmp_path, extra="empty_rooms: ['102']\n")
    run = simulate(path, "none")
    assert not any(run.occupied["102"])
    assert run.commands[0][1:] == ("ac-102a", True)
    assert run.room_ac_kwh["102"] > 0.3
    assert not any(uid.startswith("ac-102") and not on for _, uid, on in run.commands)


# -- determinism -----------------------------------------------------------------------------------
def test_same_scenario_and_seed_same_kpis(tmp_path: Path) -> None:
    path = scenario(tmp_path)
    a = run_bench(path, "threshold")
    b = run_bench(path, "threshold")
    assert json.dumps(without_compute(a)) == json.dumps(without_compute(b))
    other = tmp_path / "other.yaml"
    other.write_text(scenario_text().replace("seed: 3", "seed: 4"))
    c = run_bench(other, "threshold")
    assert without_compute(c) != without_compute(a) | {"scenario": "other"}


def test_byte_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    path = scenario(tmp_path, hours=0.5)
    out = tmp_path / "kpis.json"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    code = ("import sys; from ems.bench import main; "
            f"sys.exit(main([{str(path)!r}, '--controller', 'staggered', '--json', {str(out)!r}]))")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, timeout=60)
    theirs = json.loads(out.read_text())
    mine = run_bench(path, "staggered")
    assert json.dumps(without_compute(theirs)) == json.dumps(without_compute(mine))


# -- the command line ------------------------------------------------------------------------------
def test_cli_writes_json_and_a_plot(tmp_path: Path) -> None:
    path = scenario(tmp_path, hours=0.5)
    out, png = tmp_path / "out.json", tmp_path / "plot.png"
    assert main([str(path), "--controller", "none", "--json", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert without_compute(doc) == without_compute(run_bench(path, "none"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_json_without_an_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(scenario(tmp_path, hours=0.25)), "--controller", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["controller"] == "none"


def test_cli_bad_scenario_exits_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(scenario_text() + "teachers: {on_above: 28}\n")
    assert main([str(path), "--controller", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7: teachers.on_above: unknown key" in err


def test_cli_unknown_controller_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(scenario(tmp_path)), "--controller", "psychic"]) == 2
    assert "unknown controller 'psychic'" in capsys.readouterr().err


def test_scenario_object_or_path(tmp_path: Path) -> None:
    path = scenario(tmp_path, hours=0.25)
    sc = load_scenario(path)
    assert isinstance(sc, Scenario)
    assert without_compute(run_bench(sc, "none")) == without_compute(run_bench(path, "none"))

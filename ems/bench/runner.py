"""`campus-edge ems bench`: a scenario's school day, far faster than real time, under one controller.

Each control period (`step_s`, 10 s) at simulated time t:
1. the arbiter drops expired holds and starts units whose deferred start fell due (minimum off time);
2. the site meter's reading at t (power and energy counter) goes into `ems.blocks.DemandMeter`;
3. the controller's `step(t, block, units)` runs and its actions go through the daemon's one way in
   (`edge.core.control.Control`) as the daemon's energy manager sends them (edge/energy.py): a shed
   is a request of the energy manager's priority (`Source.EMS`) holding `Action.fields` for at most
   an hour, RESTORE releases it (the lower holders' wish comes back), SWITCH_OFF and PRECOOL are
   baselines (they replace the teacher's wish, once; they are not held);
4. the teachers act: every ask goes through the same entry, whose admission hook is the
   controller's `admit`; a granted one is the teacher's request (`Source.TEACHER`, until 18:00);
5. the school's physics advances to t + step_s.
The arbiter (`edge.core.arbiter.Arbiter`) runs on a manual clock with a 180 s minimum off time and
drives the simulated units through an `Actuators` adapter, which also counts every command that
switches a unit on within 180 s of switching it off (`min_off_violations`: the arbiter should keep
it at 0). The policy's setpoint range is the Ministry's 26-28 °C, widened to the teachers' choices.

KPIs (`ems.bench.kpis`, on traces sampled every step): blocks from the meter's exact energy;
discomfort over the room air temperature while the class is in; compressor starts as the
simulated compressors count them (thermostat cycling included); `max_off_min_per_h`: the longest
time within any hour that a room was "held off": its class in, its teacher having asked for cooling
(granted or refused since), and not all its units switched on; `requests_granted_ratio`: every
teacher request (starts, setpoint changes, switch-offs) answered ok / asked (null if none asked).
The controller's compute time is measured with `time.perf_counter` around `step` and `admit` only;
`compute_ratio` = that time / the simulated time. Every other KPI depends on the scenario and its
seed alone: the same inputs give the same JSON, byte for byte, apart from `compute_ratio`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from edge.core.arbiter import Arbiter, Source
from edge.core.clock import ManualClock
from edge.core.config import ControlConfig
from edge.core.control import Ask, Control, Denial, Queued
from edge.core.driver import ApplyError
from edge.core.loader import ConfigError
from edge.core.model import Kind
from ems.bench import kpis as K
from ems.bench.registry import CONTROLLERS, ControllerUnavailable, make_controller
from ems.bench.sim import BenchSchool
from ems.bench.teachers import Teachers
from ems.blocks import DemandMeter
from ems.scenario import Scenario, load_scenario
from ems.types import ActionKind, BlockStatus, Controller, UnitView

MIN_OFF_S = 180.0            # the compressor's minimum off time (DOMAIN.md section 4), as the daemon's arbiter
SHED_HOLD_S = 3600.0         # the daemon's shed hold (edge/energy.py): a shed nobody releases ends by itself
EMPTY_ROOM_SETPOINT_C = 26.0
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class BenchError(Exception):
    """The run cannot go on (a controller acted on a unit that does not exist, ...)."""


@dataclass
class BenchRun:
    """Everything a run recorded: the traces the KPIs and the plot are computed from."""

    scenario: Scenario
    controller: str
    rooms: list[str]
    units: int
    t0: float
    step_s: float
    site_kw: array[float] = field(default_factory=lambda: array("d"))            # mean over each interval
    temps_c: dict[str, array[float]] = field(default_factory=dict)               # air, one more than intervals
    occupied: dict[str, bytearray] = field(default_factory=dict)
    held_off: dict[str, bytearray] = field(default_factory=dict)
    room_ac_kwh: dict[str, float] = field(default_factory=dict)
    commands: list[tuple[float, str, bool]] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in ActionKind})
    actions_refused: int = 0                 # controller actions the one way in answered other than ok
    compressor_starts: int = 0
    asks: int = 0
    grants: int = 0
    compute_s: float = 0.0
    plan: dict[str, Any] | None = None    # a controller that plans the day first (the oracle): how the plan went

    @property
    def steps(self) -> int:
        return len(self.site_kw)


class SimActuators:
    """The arbiter's `Actuators` onto the simulated units; logs each change of commanded power."""

    def __init__(self, school: BenchSchool, clock: ManualClock, commands: list[tuple[float, str, bool]]) -> None:
        self.school = school
        self.clock = clock
        self.commands = commands
        self.off_at: dict[str, float] = {}

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        unit = self.school.units.get(actuator)
        if unit is None:
            raise ApplyError("unknown_target", f"no unit {actuator!r}")
        on = fields.get("power_on")
        if on is not None and bool(on) != unit.power_on:
            now = self.clock.time()
            self.commands.append((now, actuator, bool(on)))
            if not on:
                self.off_at[actuator] = now
        sp = fields.get("setpoint_c")
        unit.command(power_on=None if on is None else bool(on), setpoint_c=None if sp is None else float(sp))
        actual = self.actual(actuator)
        return {k: actual[k] for k in fields if k in actual}

    async def pulse(self, actuator: str, seconds: float) -> None:
        raise ApplyError("bad_request", f"{actuator} is an AC unit: it has no pulse")

    def actual(self, actuator: str) -> Mapping[str, Any]:
        u = self.school.units[actuator]
        return {"power_on": u.power_on, "mode": u.mode, "setpoint_c": u.setpoint_c, "fan": u.fan}


class _Bench:
    """One run: the school, the arbiter, the meter, the teachers and the controller under test."""

    def __init__(self, sc: Scenario, controller_name: str) -> None:
        self.sc = sc
        self.school = BenchSchool(sc)
        self.controller: Controller = make_controller(controller_name, sc, self.school)
        self.clock = ManualClock(self.school.start)
        self.run = BenchRun(sc, controller_name, list(self.school.rooms), len(self.school.units), self.school.start,
                            sc.step_s)
        report = getattr(self.controller, "report", None)
        self.run.plan = report.as_json() if report is not None else None
        self.act = SimActuators(self.school, self.clock, self.run.commands)
        self.arbiter = Arbiter(self.act, clock=self.clock, min_off=lambda _a: MIN_OFF_S)
        choices = sc.teachers.setpoint_choices_c
        policy = ControlConfig(setpoint_min_c=min(26.0, *choices), setpoint_max_c=max(28.0, *choices),
                               min_off_s=MIN_OFF_S)
        # Control reads its zone only through datetime (fromtimestamp, isoformat): the scenario's fixed offset serves
        self.control = Control(self.arbiter, dict.fromkeys(self.school.units, Kind.AC), lambda _d: True,
                               self.act.actual, lambda _d: False, policy, self.clock,
                               cast(ZoneInfo, self.school.tz), self._admission)
        self.meter = DemandMeter(sc.contract_kw, stale_after_s=max(15.0, 2 * sc.step_s))
        self.teachers = Teachers(sc.teachers, self.school, sc.seed)
        self.block: BlockStatus = self.meter.status(self.school.start)
        self._occ: dict[str, bool] = {}
        self.run.temps_c = {r: array("d") for r in self.school.rooms}
        self.run.occupied = {r: bytearray() for r in self.school.rooms}
        self.run.held_off = {r: bytearray() for r in self.school.rooms}

    # -- what the controller sees ------------------------------------------------------------------
    def _lower(self, uid: str) -> tuple[dict[str, Any], bool]:
        """What the sources below the energy manager want of `uid`, field by field; whether the EMS holds it."""
        now = self.clock.time()
        shed = any(r.source == Source.EMS and (r.expires is None or r.expires > now)
                   for r in self.arbiter.requests(uid))
        return self.arbiter.effective(uid, below=Source.EMS), shed

    def wanted_on(self, unit: str) -> bool:
        wanted, _shed = self._lower(unit)
        return bool(wanted.get("power_on", self.school.units[unit].power_on))

    def view(self, uid: str) -> UnitView:
        unit = self.school.units[uid]
        rid = self.school.unit_room[uid]
        room = self.school.rooms[rid]
        wanted, shed = self._lower(uid)
        wanted_on = wanted.get("power_on")
        wanted_sp = wanted.get("setpoint_c")
        return UnitView(
            id=uid, room=rid, floor=room.floor, rated_kw=self.sc.rooms.unit_rated_kw, power_kw=unit.power_w / 1000.0,
            on=unit.power_on, setpoint_c=unit.setpoint_c, room_temp_c=unit.room_temp_c,
            wanted_on=bool(unit.power_on if wanted_on is None else wanted_on),
            wanted_setpoint_c=float(unit.setpoint_c if wanted_sp is None else wanted_sp),
            off_since=None if unit.power_on else self.act.off_at.get(uid),
            occupied=self._occ[rid], priority=room.priority, shed=shed,
            back_at=None if self._occ[rid] else self.school.back_at(rid, self.clock.time()))

    # -- the one way in ----------------------------------------------------------------------------
    def _admission(self, target: str, _kind: Kind, fields: Mapping[str, Any],
                   source: Source) -> str | Denial | Queued | None:
        """The controller's admission on every source below it, as the daemon's energy manager seats it
        (a controller with a richer `admission` answers with it: a queued start, a retry hint)."""
        if source >= Source.EMS:
            return None
        view = self.view(target)
        t = time.perf_counter()
        rich = getattr(self.controller, "admission", None)
        answer = rich(self.clock.time(), self.block, view, fields) if rich is not None else \
            self.controller.admit(self.clock.time(), self.block, view, fields)
        self.run.compute_s += time.perf_counter() - t
        return cast("str | Denial | Queued | None", answer)

    async def ask(self, unit: str, fields: Mapping[str, object]) -> bool:
        """A teacher's request from the app (ems.bench.teachers.Desk)."""
        room = self.school.unit_room[unit]
        out = await self.control.ask(Ask(unit, dict(fields), Source.TEACHER, f"teacher:{room}"))
        return out.status == "ok"

    # -- the day -----------------------------------------------------------------------------------
    async def go(self, progress: bool) -> BenchRun:
        sc, school, run = self.sc, self.school, self.run
        for room in school.rooms.values():   # left on yesterday in the rooms whose class is away: nobody's request now
            if room.empty:
                for uid in room.units:
                    await self.act.apply(uid, {"power_on": True, "setpoint_c": EMPTY_ROOM_SETPOINT_C})
        starts0 = sum(u.starts for u in school.units.values())
        n = max(1, round(sc.duration_h * 3600.0 / sc.step_s))
        bar = _progress(n, f"{sc.name} / {run.controller}", progress)
        t = school.start
        self.meter.update(t, school.site_kw, school.energy_kwh)
        try:
            for i in range(n):
                await self.arbiter.tick()
                self.block = self.meter.status(t)
                self._occ = school.occupancy(t)
                views = [self.view(uid) for uid in school.units]
                c0 = time.perf_counter()
                actions = self.controller.step(t, self.block, views)
                run.compute_s += time.perf_counter() - c0
                await self._apply(actions)
                await self.teachers.act(t, self)
                self._record(t)
                e0 = school.energy_kwh
                t = school.start + (i + 1) * sc.step_s
                school.advance_to(t)
                run.site_kw.append((school.energy_kwh - e0) * 3600.0 / sc.step_s)
                self.clock.advance(t - self.clock.time())
                self.meter.update(t, school.site_kw, school.energy_kwh)
                if bar is not None and (i + 1) % 60 == 0:
                    bar.update(60)
        finally:
            if bar is not None:
                bar.close()
        for rid in school.rooms:
            run.temps_c[rid].append(school.room_temp_c(rid))
        run.room_ac_kwh = dict(school.room_ac_kwh)
        run.compressor_starts = sum(u.starts for u in school.units.values()) - starts0
        run.asks, run.grants = self.teachers.asks, self.teachers.grants
        return run

    async def _apply(self, actions: Sequence[Any]) -> None:
        """The controller's actions, as the daemon's energy manager applies them (edge/energy.py)."""
        for a in actions:
            if a.unit not in self.school.units:
                raise BenchError(f"controller {self.run.controller!r} acted on unknown unit {a.unit!r}")
            kind = ActionKind(a.kind)
            self.run.actions[kind.value] += 1
            if kind == ActionKind.RESTORE:
                out = await self.control.release(a.unit, Source.EMS, "ems")
            elif kind in (ActionKind.SWITCH_OFF, ActionKind.PRECOOL):   # once, not held
                out = await self.control.baseline(a.unit, dict(a.fields), "ems")
            else:
                out = await self.control.ask(Ask(a.unit, dict(a.fields), Source.EMS, "ems", hold_s=SHED_HOLD_S))
            if out.status != "ok":
                self.run.actions_refused += 1

    def _record(self, t: float) -> None:
        """Temperatures at t; occupancy and "held off" over [t, t + step_s)."""
        run, school = self.run, self.school
        for rid, room in school.rooms.items():
            run.temps_c[rid].append(school.room_temp_c(rid))
            occ = self._occ[rid]
            run.occupied[rid].append(occ)
            held = occ and self.teachers.wants_cooling(rid) and not all(school.units[u].power_on for u in room.units)
            run.held_off[rid].append(held)


def _progress(total: int, desc: str, on: bool) -> Any:
    if not on:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped]  # lazy: only a run with a progress bar needs it

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=0.5)


def simulate(scenario: Scenario | str | Path, controller_name: str, *, progress: bool = False) -> BenchRun:
    """Run `scenario` under the controller `controller_name`; return the recorded traces."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    return asyncio.run(_Bench(sc, controller_name).go(progress))


def _r(x: float, nd: int = 3) -> float:
    return round(x, nd) + 0.0   # + 0.0: never "-0.0" in the JSON


def compute_kpis(run: BenchRun) -> dict[str, Any]:
    """The KPI document of CONTRACT.md section 5 (and the usage totals) from a run's traces."""
    sc = run.scenario
    c = sc.contract_kw
    step = run.step_s
    hours = run.steps * step / 3600.0
    blocks = K.block_demands(run.t0, step, run.site_kw)
    peak = max((avg for _, avg in blocks), default=0.0)
    n_over, max_over = K.overruns(blocks, c)
    disc = [K.discomfort_kh(step, run.temps_c[r], run.occupied[r], sc.comfort.upper_c) for r in run.rooms]
    held = [K.max_held_off_min(step, run.held_off[r]) for r in run.rooms]
    usage = [run.room_ac_kwh[r] for r in run.rooms]
    return {
        "scenario": sc.name,
        "controller": run.controller,
        "peak_block_kw": _r(peak),
        "overrun_blocks": n_over,
        "max_overrun_kw": _r(max_over),
        "penalty_twd": _r(K.penalty_twd(peak, c, sc.tariff.basic_twd_per_kw, sc.tariff.school_leniency), 2),
        "energy_kwh": _r(K.energy_kwh(step, run.site_kw)),
        "discomfort_kh_per_room": _r(math.fsum(disc) / len(disc), 4),
        "discomfort_kh_worst_room": _r(max(disc), 4),
        "compressor_starts_per_unit_h": _r(K.starts_per_unit_h(run.compressor_starts, run.units, hours), 4),
        "min_off_violations": K.min_off_violations(run.commands, MIN_OFF_S),
        "max_off_min_per_h": _r(max(held), 2),
        "requests_granted_ratio": _r(run.grants / run.asks, 4) if run.asks else None,
        "compute_ratio": float(f"{run.compute_s / (hours * 3600.0):.3g}") if hours > 0 else 0.0,
        "contract_kw": c,
        "peak_sliding_kw": _r(K.sliding_peak_kw(step, run.site_kw)),
        "ac_energy_kwh": _r(math.fsum(usage)),
        "usage_kwh_per_room": {k: _r(v) for k, v in K.summary(usage).items()},
        "usage_kwh_by_room": {r: _r(run.room_ac_kwh[r]) for r in run.rooms},
        "requests_asked": run.asks,
        "requests_granted": run.grants,
        "ems_actions": dict(run.actions),
        "ems_actions_refused": run.actions_refused,
        "compressor_starts": run.compressor_starts,
        "rooms": len(run.rooms),
        "units": run.units,
        "duration_h": _r(hours, 4),
        "step_s": step,
        "seed": sc.seed,
        **({"plan": run.plan} if run.plan is not None else {}),
    }


def run_bench(scenario: Scenario | str | Path, controller_name: str, *, progress: bool = False) -> dict[str, Any]:
    """The KPIs of `scenario` under `controller_name` (CONTRACT.md section 5)."""
    return compute_kpis(simulate(scenario, controller_name, progress=progress))


def kpi_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def median_and_worst(run: BenchRun) -> tuple[list[float], list[float]]:
    """Per sample: the median and the hottest room's air temperature."""
    cols = [run.temps_c[r] for r in run.rooms]
    med, worst = [], []
    for i in range(len(cols[0])):
        row = [c[i] for c in cols]
        med.append(statistics.median(row))
        worst.append(max(row))
    return med, worst


def main(argv: Sequence[str] | None = None) -> int:
    """`campus-edge ems bench SCENARIO.yaml --controller NAME [--json OUT] [--plot PNG] [--progress]`."""
    ap = argparse.ArgumentParser(prog="campus-edge ems bench",
                                 description="Run an EMS scenario faster than real time and print its KPIs.")
    ap.add_argument("scenario", help="scenario file (YAML, CONTRACT.md section 5)")
    ap.add_argument("--controller", default="ems", help=f"one of {', '.join(CONTROLLERS)} (default: ems)")
    ap.add_argument("--json", metavar="OUT", help="write the KPIs to this file (default: standard output)")
    ap.add_argument("--plot", metavar="PNG", help="draw site demand and room temperatures into this PNG")
    ap.add_argument("--progress", action="store_true", help="show a progress bar (default: when stderr is a terminal)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.controller not in CONTROLLERS:
        print(f"campus-edge ems bench: unknown controller {args.controller!r}; known: {', '.join(CONTROLLERS)}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        sc = load_scenario(args.scenario)
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{args.scenario}: invalid scenario ({n} problem{'s' if n != 1 else ''}):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_USAGE
    try:
        run = simulate(sc, args.controller, progress=args.progress or sys.stderr.isatty())
    except (ControllerUnavailable, BenchError) as exc:
        print(f"campus-edge ems bench: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    text = kpi_json(compute_kpis(run))
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.plot:
        from ems.bench.plot import plot_run  # lazy: matplotlib only when a plot is asked for

        plot_run(run, Path(args.plot))
    return EXIT_OK

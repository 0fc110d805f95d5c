"""The bench's `oracle` controller: the optimum planned on the bench school itself, then replayed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ems.bench.oracle_plan import OraclePlan, oracle_input
from ems.bench.runner import run_bench
from ems.bench.sim import BenchSchool
from ems.scenario import load_scenario

SMALL = """name: oracle-4
start: "2026-06-16T08:00:00+08:00"
duration_h: 1.5
contract_kw: {contract}
base_load_kw: {{kind: constant, kw: 4}}
rooms: {{count: 4, floors: 2}}
"""


def scenario(tmp_path: Path, contract: float) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(SMALL.format(contract=contract), encoding="utf-8")
    return path


def test_the_oracle_sees_the_bench_school_as_it_is(tmp_path: Path) -> None:
    sc = load_scenario(scenario(tmp_path, 40))
    school = BenchSchool(sc)
    inp = oracle_input(sc, school)
    assert inp.n_slots == 18                                   # 1.5 h of 5-minute slots
    assert len(inp.rooms) == 4
    assert all(r.units == 2 for r in inp.rooms)
    assert inp.base_kw == (4.0,) * 18
    first = next(iter(school.air.values()))
    assert inp.rooms[0].t_air0_c == first.t_air                # starts from the spun-up rooms
    assert any(inp.rooms[0].occupied)                          # 08:00-09:30 on a Tuesday: classes are in


def test_a_scenario_off_the_block_grid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SMALL.format(contract=40).replace("08:00:00", "08:07:00"), encoding="utf-8")
    sc = load_scenario(path)
    with pytest.raises(ValueError, match="aligned to the 15-minute blocks"):
        oracle_input(sc, BenchSchool(sc))


def test_the_oracle_plans_then_replays_within_the_contract(tmp_path: Path) -> None:
    path = scenario(tmp_path, 7.5)         # binding: the uncontrolled day peaks near 9 kW
    kpis = run_bench(path, "oracle")
    assert kpis["controller"] == "oracle"
    assert kpis["plan"]["status"] in ("optimal", "limit", "local")
    assert kpis["plan"]["lp_bound"] <= kpis["plan"]["objective"] + 1e-6
    assert kpis["min_off_violations"] == 0
    assert kpis["plan"]["model"]["overrun_blocks"] == 0        # on its own model the plan keeps the contract
    assert kpis["plan"]["planned_under_kw"] == pytest.approx(7.5 * 0.97)
    none = run_bench(path, "none")
    assert none["overrun_blocks"] > 0                          # the contract binds without control
    # replayed on the physics the plan comes close (the units' own controllers ramp as the model cannot see)
    assert kpis["peak_block_kw"] < none["peak_block_kw"]
    assert OraclePlan.name == "oracle"

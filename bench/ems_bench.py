"""The EMS bench over the shipped scenarios: every controller's KPIs, its compute ratio and the run's speed.

For each scenario in `ems/scenarios/` and each controller of `ems.bench.CONTROLLERS` (none, staggered,
threshold, ems, and the oracle once it is registered) the school day is simulated exactly as
`campus-edge ems bench SCENARIO --controller NAME` does, and reported:
- the KPI document of CONTRACT.md section 5 (without the per-room usage list), and each KPI as a
  ratio to the `none` run of the same scenario (and to the oracle's, where it ran);
- `compute_ratio`: the controller's own compute time (`step` + `admit`, perf_counter) / simulated time;
- `wall_s` and `speedup` (simulated seconds per wall second) of the whole run: physics, teachers,
  arbiter and controller together;
- the scenario's contract as a share of the `none` run's peak block (the shipped contracts were
  chosen as 95 % of it on hot days, 90 % on hard-40: a drift after a physics change shows here).
A controller that is not there (ems/controller.py missing) is reported as unavailable, not run.

    .venv/bin/python bench/ems_bench.py [--scenarios hot-day-40,hard-40] [--controllers none,threshold]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import document, emit, self_peak_rss_mib

from ems.bench import CONTROLLERS, BenchError, ControllerUnavailable, compute_kpis, simulate
from ems.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "ems" / "scenarios"
RATIO_KEYS = ("peak_block_kw", "overrun_blocks", "penalty_twd", "energy_kwh", "discomfort_kh_per_room",
              "discomfort_kh_worst_room", "compressor_starts_per_unit_h", "max_off_min_per_h")


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    return round(a / b, 4)


def run_one(path: Path, controller: str) -> dict[str, Any]:
    sc = load_scenario(path)
    t0 = time.perf_counter()
    try:
        run = simulate(sc, controller)
    except (ControllerUnavailable, BenchError) as exc:
        return {"unavailable": str(exc)}
    wall = time.perf_counter() - t0
    doc = compute_kpis(run)
    doc.pop("usage_kwh_by_room")
    simulated = sc.duration_h * 3600.0
    return {"kpis": doc, "wall_s": round(wall, 2), "speedup": round(simulated / wall),
            "controller_compute_s": round(run.compute_s, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", help="comma list of scenario names (default: every file in ems/scenarios)")
    ap.add_argument("--controllers", help=f"comma list (default: {','.join(CONTROLLERS)})")
    args = ap.parse_args()
    started = time.time()
    paths = sorted(SCENARIOS.glob("*.yaml"))
    if args.scenarios:
        wanted = [s.strip() for s in args.scenarios.split(",")]
        paths = [SCENARIOS / f"{s}.yaml" for s in wanted]
    names = [c.strip() for c in args.controllers.split(",")] if args.controllers else list(CONTROLLERS)
    if "none" not in names:
        names.insert(0, "none")        # the ratios' reference
    results: dict[str, Any] = {}
    for path in paths:
        sc = load_scenario(path)
        runs: dict[str, Any] = {}
        for name in names:
            print(f"{path.stem} / {name} ...", file=sys.stderr, flush=True)
            runs[name] = run_one(path, name)
        base = runs["none"]["kpis"]
        oracle = runs.get("oracle", {}).get("kpis")
        for r in runs.values():
            if "kpis" in r:
                r["vs_none"] = {k: ratio(r["kpis"][k], base[k]) for k in RATIO_KEYS}
                if oracle is not None:
                    r["vs_oracle"] = {k: ratio(r["kpis"][k], oracle[k]) for k in RATIO_KEYS}
        results[path.stem] = {"contract_kw": sc.contract_kw, "rooms": sc.rooms.count,
                              "units": sc.rooms.count * sc.rooms.units_per_room,
                              "contract_share_of_none_peak": ratio(sc.contract_kw, base["peak_block_kw"]),
                              "controllers": runs}
    doc = document("ems_bench", started, scenarios=results, peak_rss_mib=self_peak_rss_mib(),
                   notes=["compute_ratio is the controller's own time (step + admit) over simulated time; "
                          "wall_s/speedup are the whole simulation's (physics, teachers, arbiter, controller)",
                          "ratios: this controller's KPI / the same KPI of `none` (or of the oracle); None where "
                          "the reference is 0"])
    emit("ems_bench", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

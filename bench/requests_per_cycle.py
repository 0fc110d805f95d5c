"""Modbus requests per poll cycle: our planner vs one request per value vs contiguous-only merging.

(a) the peer benchmark's layout (150 CoolMasterNet units on one unit id, VA 1..150, + an SDM630),
(b) config/example-school.yaml, both from the pure planners; (c) on the wire: our engine polls the
virtual school of the example config (in-process, TCP + socat ptys, no wire emulation) for
--window s and the simulator's request counters give requests per cycle per bus.

    .venv/bin/python bench/requests_per_cycle.py [--window 10] [--warmup 3] [--no-wire]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import document, emit, run_guarded, runnable_example

from drivers.modbus.engine import DeviceHealth, ModbusEngine, Reading
from drivers.modbus.planner import DeviceSpec, ReadRequest, plan, plan_contiguous, plan_per_value
from drivers.modbus.profile import load_profile
from edge.config import load_config
from edge.core.config import Config

PLANNERS: dict[str, Callable[[Sequence[DeviceSpec]], list[ReadRequest]]] = {
    "ours": plan, "per_value": plan_per_value, "contiguous": plan_contiguous}


def peer_layout(units: int = 150) -> list[DeviceSpec]:
    cmn, sdm = load_profile("coolmasternet"), load_profile("eastron-sdm630")
    specs = [DeviceSpec(f"ac-{va:03d}", cmn, 1, va, 0, 2.0) for va in range(1, units + 1)]
    return [*specs, DeviceSpec("meter-main", sdm, 2, None, 0, 1.0)]


def config_specs(cfg: Config) -> dict[str, list[DeviceSpec]]:
    by_bus: dict[str, list[DeviceSpec]] = defaultdict(list)
    for dev in cfg.modbus_devices():
        prof = load_profile(dev.profile, cfg.profile_dirs)
        by_bus[dev.bus].append(DeviceSpec(dev.id, prof, dev.unit, dev.index, dev.offset, dev.poll_period_s,
                                          dev.timeout_s))
    return by_bus


def describe(requests: Sequence[ReadRequest]) -> dict[str, Any]:
    """Requests per cycle (per poll period), per second, registers per request, useful share."""
    by_period: dict[float, list[ReadRequest]] = defaultdict(list)
    for r in requests:
        by_period[r.poll_s].append(r)
    regs = [r.count for r in requests]
    useful = sum(p.point.words for r in requests for p in r.parts)
    return {
        "requests_per_cycle_by_period_s": {str(p): len(rs) for p, rs in sorted(by_period.items())},
        "requests_per_s": round(sum(1 / r.poll_s for r in requests), 2),
        "registers_per_request_mean": round(sum(regs) / len(regs), 2) if regs else 0,
        "registers_per_request_min_max": [min(regs), max(regs)] if regs else None,
        "registers_read_per_cycle": sum(regs),
        "registers_useful_per_cycle": useful,
    }


def compare_planners(specs: Sequence[DeviceSpec]) -> dict[str, Any]:
    out = {name: describe(fn(specs)) for name, fn in PLANNERS.items()}
    ours = out["ours"]["requests_per_s"]
    out["ratio_requests_ours_over"] = {name: round(ours / out[name]["requests_per_s"], 4)
                                       for name in ("per_value", "contiguous")}
    return out


def ac_lower_bound(units: int) -> int:
    """Fewest reads that carry every polled CoolMasterNet word without splitting a unit (cap 125)."""
    prof = load_profile("coolmasternet")
    polled = [p for p in prof.points if p.poll]
    span = max(p.offset + p.words for p in polled) - min(p.offset for p in polled)
    stride = prof.blocks[polled[0].block].stride
    return math.ceil(units / ((prof.limits.max_read_registers - span) // stride + 1))


class _Sink:
    def __init__(self) -> None:
        self.readings = 0
        self.health: list[DeviceHealth] = []

    def on_reading(self, reading: Reading) -> None:
        self.readings += 1

    def on_health(self, health: DeviceHealth) -> None:
        self.health.append(health)


async def on_the_wire(cfg: Config, window: float, warmup: float) -> dict[str, Any]:
    """Our engine against the in-process virtual school; the simulator counts what arrives."""
    from simulator.app import VirtualSchool

    sink = _Sink()
    async with VirtualSchool(cfg) as school, ModbusEngine.from_config(cfg, sink) as engine:
        await asyncio.sleep(warmup)
        before = dict(school.counters.requests)
        regs_before = dict(school.counters.registers)
        t0 = time.monotonic()
        await asyncio.sleep(window)
        after = dict(school.counters.requests)
        regs_after = dict(school.counters.registers)
        elapsed = time.monotonic() - t0
        stats = engine.stats()
        planned = {b.bus.id: list(b.plan) for b in engine.buses}
    out: dict[str, Any] = {"window_s": round(elapsed, 2), "warmup_s": warmup, "readings": sink.readings,
                           "devices_offline_at_end": sorted({h.device_id for h in sink.health if not h.online}
                                                            - {h.device_id for h in sink.health if h.online}),
                           "buses": {}}
    for bus_id, reqs in planned.items():
        n = sum(v - before.get(k, 0) for k, v in after.items() if k[0] == bus_id)
        nregs = sum(v - regs_before.get(k, 0) for k, v in regs_after.items() if k[0] == bus_id)
        periods = sorted({r.poll_s for r in reqs})
        planned_per_s = sum(1 / r.poll_s for r in reqs)
        row: dict[str, Any] = {
            "planned_requests_per_cycle": len(reqs), "poll_periods_s": periods,
            "planned_requests_per_s": round(planned_per_s, 3),
            "wire_requests": n, "wire_requests_per_s": round(n / elapsed, 3),
            "wire_over_planned": round(n / elapsed / planned_per_s, 3) if planned_per_s else None,
            "wire_registers_per_request": round(nregs / n, 2) if n else None,
            "engine_errors": stats[bus_id]["errors"],
        }
        if len(periods) == 1:
            row["wire_requests_per_cycle"] = round(n / (elapsed / periods[0]), 2)
        out["buses"][bus_id] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=10.0, help="seconds counted on the wire")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--no-wire", action="store_true", help="planners only")
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp:
        cfg = load_config(runnable_example(Path(tmp)))
        peer = peer_layout()
        ac = [s for s in peer if s.device_id.startswith("ac-")]
        result: dict[str, Any] = {
            "a_peer_layout": {
                "devices": "150 coolmasternet (unit 1, VA 1..150, poll 2 s) + eastron-sdm630 (unit 2, poll 1 s)",
                "ac_lower_bound_requests_per_cycle": ac_lower_bound(len(ac)),
                "ac_only": compare_planners(ac),
                "all": compare_planners(peer),
            },
            "b_example_school": {
                bus: compare_planners(specs) for bus, specs in config_specs(cfg).items()
            },
        }
        result["b_example_school"]["all_buses"] = compare_planners(
            [s for specs in config_specs(cfg).values() for s in specs])
        if not args.no_wire:
            result["c_wire_example_school"] = run_guarded(on_the_wire(cfg, args.window, args.warmup),
                                                           args.window + args.warmup + 60)
    doc = document("requests_per_cycle", started, **result,
                   notes=["ours = drivers.modbus.planner.plan (gap-fill, caps, even rules); per_value = one request "
                          "per polled point; contiguous = merge only adjacent points",
                          "wire counts come from the simulator's per-(bus, unit, fc) counters; +-1 request per "
                          "read at the window's edges"])
    emit("requests_per_cycle", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

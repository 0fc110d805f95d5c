"""The bench's KPIs (CONTRACT.md section 5, DOMAIN.md section 6) as pure functions over traces.

Traces are sampled every `step_s` from the run's start: a power or a flag at index i holds over
[t0 + i*step_s, t0 + (i+1)*step_s); a temperature list has one more sample (the interval ends).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ems.blocks import block_start
from ems.tariff import overrun_penalty_twd
from ems.types import BLOCK_S

HOUR_S = 3600.0


def block_demands(t0: float, step_s: float, power_kw: Sequence[float],
                  block_s: float = BLOCK_S) -> list[tuple[float, float]]:
    """(start, average kW) of each clock-aligned block the trace touches, in order.

    An interval that straddles a boundary is split in proportion; a block the run covers only in
    part (a run starting or ending inside it) is averaged over the covered part.
    """
    energy: dict[float, float] = {}     # block start -> kW*s
    covered: dict[float, float] = {}
    for i, p in enumerate(power_kw):
        a, b = t0 + i * step_s, t0 + (i + 1) * step_s
        while b - a > 1e-9:
            start = block_start(a, block_s)
            end = min(b, start + block_s)
            energy[start] = energy.get(start, 0.0) + p * (end - a)
            covered[start] = covered.get(start, 0.0) + (end - a)
            a = end
    return [(s, energy[s] / covered[s]) for s in sorted(energy)]


def overruns(blocks: Sequence[tuple[float, float]], contract_kw: float) -> tuple[int, float]:
    """(blocks whose average is above the contract, the largest excess in kW or 0)."""
    over = [avg - contract_kw for _, avg in blocks if avg > contract_kw]
    return len(over), max(over, default=0.0)


def sliding_peak_kw(step_s: float, power_kw: Sequence[float], window_s: float = BLOCK_S) -> float:
    """The highest average over any window of `window_s` (the whole run when it is shorter)."""
    if not power_kw:
        return 0.0
    n = max(1, round(window_s / step_s))
    if len(power_kw) <= n:
        return sum(power_kw) / len(power_kw)
    acc = sum(power_kw[:n])
    best = acc
    for i in range(n, len(power_kw)):
        acc += power_kw[i] - power_kw[i - n]
        best = max(best, acc)
    return best / n


def penalty_twd(peak_kw: float, contract_kw: float, basic_twd_per_kw: float, school_leniency: bool) -> float:
    """The overrun penalty of a peak block over the contract (DOMAIN.md section 2, `ems.tariff`)."""
    return overrun_penalty_twd(peak_kw, contract_kw, basic_twd_per_kw, school_leniency=school_leniency)


def energy_kwh(step_s: float, power_kw: Sequence[float]) -> float:
    """The integral of power over the trace."""
    return sum(power_kw) * step_s / HOUR_S


def discomfort_kh(step_s: float, temps_c: Sequence[float], occupied: Sequence[int], upper_c: float) -> float:
    """One room's K*h above `upper_c` while occupied: trapezoids over the occupied intervals."""
    if len(temps_c) != len(occupied) + 1:
        raise ValueError(f"discomfort_kh: {len(temps_c)} temperatures for {len(occupied)} intervals (need one more)")
    total = 0.0
    for i, occ in enumerate(occupied):
        if occ:
            total += (max(0.0, temps_c[i] - upper_c) + max(0.0, temps_c[i + 1] - upper_c)) / 2 * step_s
    return total / HOUR_S


def starts_per_unit_h(starts: int, units: int, hours: float) -> float:
    """Compressor starts per unit-hour."""
    return starts / (units * hours) if units and hours > 0 else 0.0


def min_off_violations(commands: Sequence[tuple[float, str, bool]], min_off_s: float) -> int:
    """Commands that switch a unit on within `min_off_s` of the command that switched it off.

    `commands` are (time, unit, on) in time order, one per change of a unit's commanded power.
    """
    off_at: dict[str, float] = {}
    bad = 0
    for t, unit, on in commands:
        if not on:
            off_at[unit] = t
        elif unit in off_at and t - off_at.pop(unit) < min_off_s:
            bad += 1
    return bad


def max_held_off_min(step_s: float, held: Sequence[int], window_s: float = HOUR_S) -> float:
    """The longest time, in minutes, a room was held off within any window of `window_s` (one hour).

    Windows start at the samples (exact when `window_s` is a multiple of `step_s`); a run shorter
    than the window counts as one window.
    """
    n = max(1, round(window_s / step_s))
    if len(held) <= n:
        return sum(held) * step_s / 60.0
    acc = sum(held[:n])
    best = acc
    for i in range(n, len(held)):
        acc += held[i] - held[i - n]
        best = max(best, acc)
    return best * step_s / 60.0


def summary(values: Sequence[float]) -> dict[str, float]:
    """min, mean, max (0s for no values)."""
    if not values:
        return {"min": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": min(values), "mean": math.fsum(values) / len(values), "max": max(values)}

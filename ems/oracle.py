"""The bench's perfect-foresight oracle: a mixed-integer optimum of a school day over 5-minute slots.

Every room is a linear two-node heat balance (air, mass) discretised exactly over one slot
(`linear_room`); the solver chooses, per room and slot, how many AC units run (`n_on`, an integer)
and how much they cool (`q_kw`), knowing the whole day in advance: weather, sun, pupils, base load.
It minimises the overrun penalty of DOMAIN.md section 2 on the day's peak 15-minute block, the
number and size of blocks over the contract, discomfort above `upper_c` in occupied time, and AC
energy, in that order of weight. HiGHS (through scipy.optimize.milp) solves it, whole for small days
and two rooms at a time for large ones; the same model with integrality relaxed gives the lower bound.
The formulation, its approximations and the solve are written out in docs/oracle.md.

Offline only (the bench): numpy and scipy are fine here, the daemon never imports this module. It
knows nothing of the simulator: the caller turns its room parameters into plain numbers.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.linalg import expm  # type: ignore[import-untyped]
from scipy.optimize import Bounds, LinearConstraint, milp  # type: ignore[import-untyped]
from scipy.sparse import csr_array  # type: ignore[import-untyped]

from ems.types import BLOCK_S

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Matrix2 = tuple[tuple[float, float], tuple[float, float]]

OVER_TOL_KW: Final = 1e-3  # a block counts as over the contract above C + this (solver tolerances)
# Beyond this many room-slots HiGHS spends minutes on the root LP of the whole day (100 rooms x 132 slots:
# ~260 s) and finds little in 10 minutes: the rounded relaxation is improved a few rooms at a time instead.
FULL_MILP_MAX_ROOM_SLOTS: Final = 2000
LNS_GROUP_ROOMS: Final = 2     # rooms re-solved together in one neighbourhood
LNS_SOLVE_S: Final = 10.0      # time cap of one neighbourhood's MILP
LNS_MIN_S: Final = 5.0         # less time than this left: stop searching
_INF: Final = math.inf
# Rounding the LP relaxation (tuned on a 30- and a 100-room hot day): a unit runs where the relaxation cools
# at least 70 % of its minimum; below that, a pulse at the minimum once this much of it is owed (sooner while
# the class is in: late cooling is discomfort).
_ROUND_UP: Final = 0.7
_PULSE: Final = 0.5
_PULSE_OCCUPIED: Final = 0.3


class OracleError(ValueError):
    """Bad oracle input, or the solver found no schedule (the message says what and where)."""


# -- the room model ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinearRoom:
    """One slot of a room: (air, mass)' = ad·(air, mass) + bd·(heat to air, heat to mass), heat held over the slot."""

    slot_s: float
    ad: Matrix2
    bd_k_per_kw: Matrix2

    def step(self, t_air_c: float, t_mass_c: float, heat_air_kw: float, heat_mass_kw: float) -> tuple[float, float]:
        """Temperatures one slot later."""
        (a00, a01), (a10, a11) = self.ad
        (b00, b01), (b10, b11) = self.bd_k_per_kw
        return (a00 * t_air_c + a01 * t_mass_c + b00 * heat_air_kw + b01 * heat_mass_kw,
                a10 * t_air_c + a11 * t_mass_c + b10 * heat_air_kw + b11 * heat_mass_kw)


def linear_room(*, c_air_j_k: float, c_mass_j_k: float, h_air_mass_w_k: float, h_air_out_w_k: float,
                h_mass_out_w_k: float, slot_s: float = 300.0) -> LinearRoom:
    """Exact zero-order-hold discretisation of the two-node network (air and mass capacities, conductances).

    Continuous model (heat in W, the caller folds outdoor coupling h·t_out into the heat inputs):
    c_air·dT_air/dt = -(h_air_out + h_air_mass)·T_air + h_air_mass·T_mass + heat_air
    c_mass·dT_mass/dt = h_air_mass·T_air - (h_air_mass + h_mass_out)·T_mass + heat_mass
    """
    for name, value in (("c_air_j_k", c_air_j_k), ("c_mass_j_k", c_mass_j_k), ("slot_s", slot_s)):
        if not value > 0:
            raise OracleError(f"linear_room: {name} must be > 0, got {value}")
    for name, value in (("h_air_mass_w_k", h_air_mass_w_k), ("h_air_out_w_k", h_air_out_w_k),
                        ("h_mass_out_w_k", h_mass_out_w_k)):
        if not value >= 0:
            raise OracleError(f"linear_room: {name} must be >= 0, got {value}")
    a = np.array([[-(h_air_out_w_k + h_air_mass_w_k) / c_air_j_k, h_air_mass_w_k / c_air_j_k],
                  [h_air_mass_w_k / c_mass_j_k, -(h_air_mass_w_k + h_mass_out_w_k) / c_mass_j_k]])
    b = np.diag([1000.0 / c_air_j_k, 1000.0 / c_mass_j_k])  # inputs in kW
    aug = np.zeros((4, 4))
    aug[:2, :2], aug[:2, 2:] = a, b
    e = np.asarray(expm(aug * slot_s), dtype=np.float64)
    return LinearRoom(slot_s, _m2(e[:2, :2]), _m2(e[:2, 2:]))


def _m2(m: FloatArray) -> Matrix2:
    return ((float(m[0, 0]), float(m[0, 1])), (float(m[1, 0]), float(m[1, 1])))


# -- the input ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OracleRoom:
    """One classroom over the horizon: its model, start state, per-slot heat and occupancy, and its AC units."""

    model: LinearRoom
    t_air0_c: float
    t_mass0_c: float
    heat_air_kw: tuple[float, ...]          # per slot: sun to air, pupils' share, h_air_out·t_out (kW)
    heat_mass_kw: tuple[float, ...]         # per slot: sun to mass, pupils' share, h_mass_out·t_out (kW)
    occupied: tuple[bool, ...]              # per slot: the class is in (discomfort counts, windows open)
    units: int
    unit_cooling_kw: tuple[float, ...]      # per slot: one unit's thermal capacity, derated with t_out
    elec_per_cooling_kw: tuple[float, ...]  # per slot: kW electrical per kW of cooling (1/COP)
    window_gain_kw: tuple[float, ...] = ()  # per slot: extra heat to air while occupied with every unit off; () = 0
    unit_fan_kw: float = 0.0                # electrical draw of a unit that is on, besides its compressor
    min_modulation: float = 0.3             # a running compressor's least output, share of capacity


@dataclass(frozen=True, slots=True)
class Tariff:
    """The contract's basic charge and whether the school leniency of DOMAIN.md section 2 applies."""

    basic_twd_per_kw: float = 236.2
    school_leniency: bool = True


@dataclass(frozen=True, slots=True)
class Weights:
    """Objective weights in TWD: overrun first, then comfort, then energy, then compressor starts."""

    overrun_block_twd: float = 1000.0        # per 15-minute block over the contract
    overrun_kw_block_twd: float = 100.0      # per kW over the contract, per block (every block, not only the peak)
    comfort_twd_per_kh: float = 100.0        # per K·h above upper_c in occupied time (summed over rooms)
    overcool_twd_per_kh: float = 1000.0      # per K·h of air below min_air_c (setpoints stop at 26 °C)
    energy_twd_per_kwh: float = 1.0          # AC electricity: a tie-breaker, below the real price on purpose
    start_twd: float = 0.2                   # per compressor start: keeps the schedule from chattering


@dataclass(frozen=True, slots=True)
class OracleInput:
    """A whole day for the oracle; slot 0 starts a clock-aligned 15-minute block."""

    slot_s: float
    n_slots: int
    rooms: tuple[OracleRoom, ...]
    base_kw: tuple[float, ...]              # per slot: the site's load besides the ACs (kW)
    contract_kw: float
    upper_c: float = 28.0
    min_air_c: float | None = 25.0          # cooling below this is penalised (None: not at all)
    tariff: Tariff = Tariff()
    weights: Weights = Weights()
    off_cap_slots: int | None = 3           # at most this many off slots per window where the room runs hot
    off_window_slots: int = 12              # the window: 12 slots of 5 min = one hour


# -- the result --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ObjectiveParts:
    """A schedule's score on the oracle's model, part by part (`objective` is their weighted sum)."""

    objective: float
    penalty_twd: float             # DOMAIN.md section 2 on the peak block
    peak_block_kw: float
    overrun_blocks: int
    overrun_kw_blocks: float       # sum over blocks of max(0, D_b - C)
    discomfort_kh: float           # summed over rooms, occupied time, trapezoidal at slot boundaries
    discomfort_kh_per_room: float
    discomfort_kh_worst_room: float
    overcool_kh: float
    energy_kwh: float              # AC only (compressors and fans), base load excluded
    starts: int                    # compressor starts, every unit off before the first slot
    max_off_slots_per_window: int  # the most off slots in one window where the room runs hot (the off cap)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A schedule replayed on the oracle's model: its score, temperatures and block demands."""

    parts: ObjectiveParts
    t_air_c: tuple[tuple[float, ...], ...]   # per room, n_slots + 1 boundaries
    t_mass_c: tuple[tuple[float, ...], ...]
    block_kw: tuple[float, ...]
    room_discomfort_kh: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class OracleResult:
    """The solved day: the schedule, what the model predicts for it, and how sure the solver is."""

    status: str                    # "optimal": gap <= mip_rel_gap; "limit": time or node limit; "local": see solve
    message: str                   # HiGHS's own words about the MILP
    source: str                    # which schedule won: "milp", "rounding" (the LP relaxation's) or "lns"
    objective: float               # the schedule's score on the model (TWD): parts.objective
    solver_objective: float        # HiGHS's value for it: higher when a stopped incumbent left a slack loose
    lp_bound: float                # the LP relaxation's optimum: no schedule scores lower
    dual_bound: float              # the best lower bound: the MILP's final bound, at least lp_bound
    mip_gap: float                 # (objective - dual_bound) / |objective|
    highs_mip_gap: float | None    # HiGHS's own gap for its incumbent (None: it found none)
    lp_wall_s: float
    rounding_wall_s: float
    mip_wall_s: float
    wall_s: float
    variables: int
    constraints: int
    slot_s: float
    n_on: tuple[tuple[int, ...], ...]       # per room, per slot
    q_kw: tuple[tuple[float, ...], ...]     # per room, per slot: thermal kW removed from the air
    share: tuple[tuple[float, ...], ...]    # per room, per slot: q / (n_on · unit capacity), 0 when off
    t_air_c: tuple[tuple[float, ...], ...]  # per room, n_slots + 1 boundaries
    block_kw: tuple[float, ...]
    parts: ObjectiveParts = field(repr=False)


def schedule_at(result: OracleResult, room_index: int, t_s_from_start: float) -> tuple[int, float]:
    """(units on, cooling share of their capacity) for a room at a time into the horizon (the bench replays this)."""
    if not 0 <= room_index < len(result.n_on):
        raise OracleError(f"schedule_at: room_index {room_index} outside 0..{len(result.n_on) - 1}")
    n_slots = len(result.n_on[room_index])
    horizon_s = n_slots * result.slot_s
    if not 0.0 <= t_s_from_start <= horizon_s:
        raise OracleError(f"schedule_at: t_s_from_start {t_s_from_start} outside 0..{horizon_s} s")
    k = min(n_slots - 1, int(t_s_from_start // result.slot_s))
    return result.n_on[room_index][k], result.share[room_index][k]


# -- the penalty (DOMAIN.md section 2) ---------------------------------------------------------------
def penalty_twd(over_kw: float, contract_kw: float, basic_twd_per_kw: float, school_leniency: bool) -> float:
    """Overrun penalty on X = over_kw above contract C, written as DOMAIN.md section 2 gives it."""
    x, c = max(0.0, over_kw), contract_kw
    if school_leniency:
        return basic_twd_per_kw * (1 * min(x, 0.05 * c) + 2 * min(max(x - 0.05 * c, 0.0), 0.05 * c)
                                   + 3 * max(0.0, x - 0.1 * c))
    return basic_twd_per_kw * (2 * min(x, 0.1 * c) + 3 * max(0.0, x - 0.1 * c))


def _penalty_pieces(contract_kw: float, school_leniency: bool) -> tuple[tuple[float, float], ...]:
    """(slope, intercept) pairs whose maximum is the penalty per TWD of basic rate (it is convex)."""
    c = contract_kw
    if school_leniency:
        return (1.0, 0.0), (2.0, -0.05 * c), (3.0, -0.15 * c)
    return (2.0, 0.0), (3.0, -0.1 * c)


# -- validation --------------------------------------------------------------------------------------
def _check(inp: OracleInput) -> None:
    k = inp.n_slots
    if not inp.slot_s > 0:
        raise OracleError(f"slot_s must be > 0, got {inp.slot_s}")
    per_block = BLOCK_S / inp.slot_s
    if abs(per_block - round(per_block)) > 1e-9:
        raise OracleError(f"slot_s {inp.slot_s} does not divide the {BLOCK_S:g} s demand block")
    if k < 1:
        raise OracleError(f"n_slots must be >= 1, got {k}")
    if len(inp.base_kw) != k:
        raise OracleError(f"base_kw has {len(inp.base_kw)} values, expected n_slots = {k}")
    if not inp.contract_kw > 0:
        raise OracleError(f"contract_kw must be > 0, got {inp.contract_kw}")
    if inp.off_cap_slots is not None and (inp.off_cap_slots < 0 or inp.off_window_slots < 1):
        raise OracleError(f"off cap {inp.off_cap_slots} per {inp.off_window_slots} slots is not a cap")
    for name in ("overrun_block_twd", "overrun_kw_block_twd", "comfort_twd_per_kh", "overcool_twd_per_kh",
                 "energy_twd_per_kwh", "start_twd"):
        if getattr(inp.weights, name) < 0:
            raise OracleError(f"weights.{name} must be >= 0")
    if not inp.rooms:
        raise OracleError("rooms is empty")
    for i, room in enumerate(inp.rooms):
        where = f"rooms[{i}]"
        if abs(room.model.slot_s - inp.slot_s) > 1e-9:
            raise OracleError(f"{where}.model is discretised for {room.model.slot_s} s, slots are {inp.slot_s} s")
        for name in ("heat_air_kw", "heat_mass_kw", "occupied", "unit_cooling_kw", "elec_per_cooling_kw"):
            n = len(getattr(room, name))
            if n != k:
                raise OracleError(f"{where}.{name} has {n} values, expected n_slots = {k}")
        if len(room.window_gain_kw) not in (0, k):
            raise OracleError(f"{where}.window_gain_kw has {len(room.window_gain_kw)} values, expected 0 or {k}")
        if room.units < 0:
            raise OracleError(f"{where}.units must be >= 0, got {room.units}")
        if not 0.0 <= room.min_modulation <= 1.0:
            raise OracleError(f"{where}.min_modulation must be within 0..1, got {room.min_modulation}")
        if min(room.unit_cooling_kw) < 0 or min(room.elec_per_cooling_kw) < 0 or room.unit_fan_kw < 0:
            raise OracleError(f"{where}: capacities and electrical powers must be >= 0")
        values = (room.t_air0_c, room.t_mass0_c, *room.heat_air_kw, *room.heat_mass_kw, *room.window_gain_kw,
                  *room.unit_cooling_kw, *room.elec_per_cooling_kw)
        if not all(math.isfinite(v) for v in values):
            raise OracleError(f"{where} has a value that is not a finite number")


# -- shared arithmetic -------------------------------------------------------------------------------
def _blocks(inp: OracleInput) -> list[range]:
    per = round(BLOCK_S / inp.slot_s)
    return [range(s, min(s + per, inp.n_slots)) for s in range(0, inp.n_slots, per)]


def _window_gain(room: OracleRoom, n_slots: int) -> FloatArray:
    """Extra heat to air per slot when every unit is off: only while the class is in (windows open)."""
    if not room.window_gain_kw:
        return np.zeros(n_slots)
    return np.asarray(room.window_gain_kw, dtype=np.float64) * np.asarray(room.occupied, dtype=np.float64)


def _simulate(room: OracleRoom, n_slots: int, q_kw: Sequence[float], all_off: Sequence[bool]) -> tuple[
        list[float], list[float]]:
    win = _window_gain(room, n_slots)
    ta, tm = [room.t_air0_c], [room.t_mass0_c]
    for k in range(n_slots):
        heat_air = room.heat_air_kw[k] - q_kw[k] + (float(win[k]) if all_off[k] else 0.0)
        a, m = room.model.step(ta[-1], tm[-1], heat_air, room.heat_mass_kw[k])
        ta.append(a)
        tm.append(m)
    return ta, tm


def _runs_hot(inp: OracleInput, room: OracleRoom) -> list[bool]:
    """Slots where the class is in and the room, never cooled, would end the slot above upper_c."""
    ta, _ = _simulate(room, inp.n_slots, [0.0] * inp.n_slots, [True] * inp.n_slots)
    return [room.occupied[k] and ta[k + 1] > inp.upper_c for k in range(inp.n_slots)]


def _windows(inp: OracleInput, hot: Sequence[bool]) -> list[list[int]]:
    """The hot slots of every window that holds more of them than the cap allows off (deduplicated)."""
    if inp.off_cap_slots is None:
        return []
    w, out = inp.off_window_slots, []
    last: list[int] = []
    for start in range(max(1, inp.n_slots - w + 1)):
        slots = [k for k in range(start, min(start + w, inp.n_slots)) if hot[k]]
        if len(slots) > inp.off_cap_slots and slots != last:
            out.append(slots)
        last = slots
    return out


def _comfort_weights_h(inp: OracleInput, room: OracleRoom) -> list[float]:
    """Hours each slot boundary stands for in the trapezoidal discomfort integral over occupied slots."""
    half_h = inp.slot_s / 7200.0
    w = [0.0] * (inp.n_slots + 1)
    for k, occ in enumerate(room.occupied):
        if occ:
            w[k] += half_h
            w[k + 1] += half_h
    return w


def evaluate(inp: OracleInput, n_on: Sequence[Sequence[int]], q_kw: Sequence[Sequence[float]]) -> Evaluation:
    """Score any schedule on the oracle's model with the oracle's objective (bounds checked, 1e-6 kW slack)."""
    _check(inp)
    if len(n_on) != len(inp.rooms) or len(q_kw) != len(inp.rooms):
        raise OracleError(f"schedule has {len(n_on)}/{len(q_kw)} rooms, expected {len(inp.rooms)}")
    k_n, dt_h, wt = inp.n_slots, inp.slot_s / 3600.0, inp.weights
    ac_kw = np.zeros(k_n)
    t_air: list[tuple[float, ...]] = []
    t_mass: list[tuple[float, ...]] = []
    disc, overcool, energy, starts, worst_off = [], 0.0, 0.0, 0, 0
    for i, room in enumerate(inp.rooms):
        if len(n_on[i]) != k_n or len(q_kw[i]) != k_n:
            raise OracleError(f"schedule of rooms[{i}] has {len(n_on[i])}/{len(q_kw[i])} slots, expected {k_n}")
        prev = 0
        for k in range(k_n):
            n, q, cap = n_on[i][k], q_kw[i][k], room.unit_cooling_kw[k]
            if not 0 <= n <= room.units:
                raise OracleError(f"rooms[{i}] slot {k}: {n} units on, the room has {room.units}")
            if not room.min_modulation * cap * n - 1e-6 <= q <= cap * n + 1e-6:
                raise OracleError(f"rooms[{i}] slot {k}: {q} kW of cooling from {n} units of {cap} kW")
            starts += max(0, n - prev)
            prev = n
            ac_kw[k] += room.elec_per_cooling_kw[k] * q + room.unit_fan_kw * n
        off = [n == 0 for n in n_on[i]]
        ta, tm = _simulate(room, k_n, q_kw[i], off)
        t_air.append(tuple(ta))
        t_mass.append(tuple(tm))
        cw = _comfort_weights_h(inp, room)
        disc.append(sum(w * max(0.0, t - inp.upper_c) for w, t in zip(cw, ta, strict=True)))
        if inp.min_air_c is not None:
            overcool += sum(max(0.0, inp.min_air_c - t) for t in ta[1:]) * dt_h
        energy += sum(room.elec_per_cooling_kw[k] * q_kw[i][k] + room.unit_fan_kw * n_on[i][k]
                      for k in range(k_n)) * dt_h
        for slots in _windows(inp, _runs_hot(inp, room)):
            worst_off = max(worst_off, sum(off[k] for k in slots))
    base = np.asarray(inp.base_kw, dtype=np.float64)
    block_kw = tuple(float(np.mean(base[b] + ac_kw[b])) for b in (list(r) for r in _blocks(inp)))
    c = inp.contract_kw
    peak = max(block_kw)
    pen = penalty_twd(peak - c, c, inp.tariff.basic_twd_per_kw, inp.tariff.school_leniency)
    over_blocks = sum(d > c + OVER_TOL_KW for d in block_kw)
    over_kw = sum(max(0.0, d - c) for d in block_kw)
    disc_kh = sum(disc)
    objective = (pen + wt.overrun_block_twd * over_blocks + wt.overrun_kw_block_twd * over_kw
                 + wt.comfort_twd_per_kh * disc_kh + wt.overcool_twd_per_kh * overcool
                 + wt.energy_twd_per_kwh * energy + wt.start_twd * starts)
    parts = ObjectiveParts(objective=objective, penalty_twd=pen, peak_block_kw=peak, overrun_blocks=over_blocks,
                           overrun_kw_blocks=over_kw, discomfort_kh=disc_kh,
                           discomfort_kh_per_room=disc_kh / len(inp.rooms), discomfort_kh_worst_room=max(disc),
                           overcool_kh=overcool, energy_kwh=energy, starts=starts, max_off_slots_per_window=worst_off)
    return Evaluation(parts, tuple(t_air), tuple(t_mass), block_kw, tuple(disc))


# -- the MILP ----------------------------------------------------------------------------------------
class _Model:
    """Columns and sparse rows of a MILP, added a vector at a time."""

    def __init__(self) -> None:
        self.lb: list[FloatArray] = []
        self.ub: list[FloatArray] = []
        self.cost: list[FloatArray] = []
        self.integer: list[FloatArray] = []
        self.n = 0
        self.rows = 0
        self.ri: list[IntArray] = []
        self.ci: list[IntArray] = []
        self.vals: list[FloatArray] = []
        self.row_lo: list[FloatArray] = []
        self.row_hi: list[FloatArray] = []
        self._rows: Any = None

    def var(self, count: int, lb: Any, ub: Any, cost: Any = 0.0, *, integer: bool = False) -> IntArray:
        idx = np.arange(self.n, self.n + count, dtype=np.int64)
        self.lb.append(np.broadcast_to(np.asarray(lb, dtype=np.float64), (count,)).copy())
        self.ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), (count,)).copy())
        self.cost.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), (count,)).copy())
        self.integer.append(np.full(count, 1.0 if integer else 0.0))
        self.n += count
        return idx

    def rows_of(self, count: int, lo: Any, hi: Any,
                terms: Sequence[tuple[IntArray | None, IntArray, Any]]) -> None:
        """`count` rows lo <= sum of terms <= hi; a term is (local rows or None for all, columns, coefficients)."""
        for rows, cols, coef in terms:
            local = np.arange(count, dtype=np.int64) if rows is None else rows
            self.ri.append(local + self.rows)
            self.ci.append(np.asarray(cols, dtype=np.int64))
            self.vals.append(np.broadcast_to(np.asarray(coef, dtype=np.float64), (len(local),)).copy())
        self.row_lo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (count,)).copy())
        self.row_hi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (count,)).copy())
        self.rows += count

    def solve(self, *, relax: bool, options: dict[str, Any],
              bounds: tuple[FloatArray, FloatArray] | None = None) -> Any:
        if self._rows is None:   # built once: the neighbourhood search solves the same rows many times
            a = csr_array((np.concatenate(self.vals), (np.concatenate(self.ri), np.concatenate(self.ci))),
                          shape=(self.rows, self.n))
            self._rows = LinearConstraint(a, np.concatenate(self.row_lo), np.concatenate(self.row_hi))
        integrality = np.zeros(self.n) if relax else np.concatenate(self.integer)
        lb, ub = bounds if bounds is not None else (np.concatenate(self.lb), np.concatenate(self.ub))
        return milp(np.concatenate(self.cost), integrality=integrality, bounds=Bounds(lb, ub),
                    constraints=self._rows, options=options)


@dataclass(slots=True)
class _RoomCols:
    n: IntArray
    q: IntArray
    off_of: IntArray   # per slot: the column of `off`, -1 where the slot has none (the class is out)


def _build(inp: OracleInput) -> tuple[_Model, list[_RoomCols]]:
    m, wt, k_n = _Model(), inp.weights, inp.n_slots
    dt_h = inp.slot_s / 3600.0
    ks = np.arange(k_n, dtype=np.int64)
    cols: list[_RoomCols] = []
    block_terms: list[tuple[IntArray, IntArray, FloatArray]] = []   # (block row, column, coefficient)
    blocks = _blocks(inp)
    block_of = np.empty(k_n, dtype=np.int64)
    for b, r in enumerate(blocks):
        block_of[list(r)] = b
    block_len = np.array([len(r) for r in blocks], dtype=np.float64)
    for room in inp.rooms:
        cap = np.asarray(room.unit_cooling_kw, dtype=np.float64)
        elec = np.asarray(room.elec_per_cooling_kw, dtype=np.float64)
        occ = np.asarray(room.occupied, dtype=bool)
        win = _window_gain(room, k_n)
        units = room.units
        n = m.var(k_n, 0.0, units, wt.energy_twd_per_kwh * room.unit_fan_kw * dt_h, integer=True)
        q = m.var(k_n, 0.0, cap * units, wt.energy_twd_per_kwh * elec * dt_h)
        ta = m.var(k_n + 1, np.r_[room.t_air0_c, np.full(k_n, -_INF)], np.r_[room.t_air0_c, np.full(k_n, _INF)])
        tm = m.var(k_n + 1, np.r_[room.t_mass0_c, np.full(k_n, -_INF)], np.r_[room.t_mass0_c, np.full(k_n, _INF)])
        occ_k = ks[occ]
        off = m.var(len(occ_k), 1.0 if units == 0 else 0.0, 1.0, integer=True)
        off_of = np.full(k_n, -1, dtype=np.int64)
        off_of[occ_k] = off
        # state equations: T[k+1] = ad·T[k] + bd·(heat - q + window gain·off)
        (a00, a01), (a10, a11) = room.model.ad
        (b00, b01), (b10, b11) = room.model.bd_k_per_kw
        ha, hm = np.asarray(room.heat_air_kw), np.asarray(room.heat_mass_kw)
        wk = occ_k[win[occ_k] != 0.0]
        for (c0, c1), (d0, d1), nxt in (((a00, a01), (b00, b01), ta), ((a10, a11), (b10, b11), tm)):
            rhs = d0 * ha + d1 * hm
            m.rows_of(k_n, rhs, rhs, [(None, nxt[1:], 1.0), (None, ta[:-1], -c0), (None, tm[:-1], -c1),
                                      (None, q, d0), (wk, off_of[wk], -d0 * win[wk])])
        # min_modulation·cap·n <= q <= cap·n
        m.rows_of(k_n, -_INF, 0.0, [(None, q, 1.0), (None, n, -cap)])
        m.rows_of(k_n, 0.0, _INF, [(None, q, 1.0), (None, n, -room.min_modulation * cap)])
        # off = 1 exactly when no unit runs (occupied slots only: that is where it matters)
        if units > 0 and len(occ_k):
            m.rows_of(len(occ_k), 1.0, _INF, [(None, off, 1.0), (None, n[occ_k], 1.0)])
            m.rows_of(len(occ_k), -_INF, 1.0, [(None, off, 1.0), (None, n[occ_k], 1.0 / units)])
        # discomfort slack at slot boundaries weighted by the trapezoid
        cw = np.asarray(_comfort_weights_h(inp, room))
        js = np.flatnonzero(cw > 0)
        if len(js):
            s = m.var(len(js), 0.0, _INF, wt.comfort_twd_per_kh * cw[js])
            m.rows_of(len(js), -inp.upper_c, _INF, [(None, s, 1.0), (None, ta[js], -1.0)])
        if inp.min_air_c is not None:
            u = m.var(k_n, 0.0, _INF, wt.overcool_twd_per_kh * dt_h)
            m.rows_of(k_n, inp.min_air_c, _INF, [(None, u, 1.0), (None, ta[1:], 1.0)])
        if wt.start_twd > 0 and units > 0:
            st = m.var(k_n, 0.0, _INF, wt.start_twd)
            m.rows_of(k_n, 0.0, _INF, [(None, st, 1.0), (None, n, -1.0), (ks[1:], n[:-1], 1.0)])
        for slots in _windows(inp, _runs_hot(inp, room)):
            m.rows_of(1, -_INF, float(inp.off_cap_slots or 0), [(np.zeros(len(slots), dtype=np.int64),
                                                                  off_of[slots], 1.0)])
        per_block = 1.0 / block_len[block_of]
        block_terms.append((block_of, q, elec * per_block))
        if room.unit_fan_kw > 0:
            block_terms.append((block_of, n, room.unit_fan_kw * per_block))
        cols.append(_RoomCols(n, q, off_of))
    # block demand D_b = mean over its slots of base + AC
    nb = len(blocks)
    base = np.asarray(inp.base_kw, dtype=np.float64)
    base_mean = np.array([base[list(r)].mean() for r in blocks])
    d = m.var(nb, -_INF, _INF)
    m.rows_of(nb, base_mean, base_mean, [(None, d, 1.0), *((rows, c, -v) for rows, c, v in block_terms)])
    c = inp.contract_kw
    excess = m.var(nb, 0.0, _INF, wt.overrun_kw_block_twd)
    m.rows_of(nb, -c, _INF, [(None, excess, 1.0), (None, d, -1.0)])
    if wt.overrun_block_twd > 0:
        ac_max = np.zeros(k_n)
        for room in inp.rooms:
            ac_max += room.units * (np.asarray(room.unit_cooling_kw) * np.asarray(room.elec_per_cooling_kw)
                                    + room.unit_fan_kw)
        big_m = max(1.0, max(float((base[list(r)] + ac_max[list(r)]).max()) for r in blocks) - c)
        over = m.var(nb, 0.0, 1.0, wt.overrun_block_twd, integer=True)
        m.rows_of(nb, -_INF, c, [(None, d, 1.0), (None, over, -big_m)])
    x = m.var(1, 0.0, _INF)
    m.rows_of(nb, 0.0, _INF, [(None, np.repeat(x, nb), 1.0), (None, excess, -1.0)])
    pen = m.var(1, 0.0, _INF, 1.0)
    rate = inp.tariff.basic_twd_per_kw
    for slope, intercept in _penalty_pieces(c, inp.tariff.school_leniency):
        m.rows_of(1, rate * intercept, _INF, [(None, pen, 1.0), (None, x, -rate * slope)])
    return m, cols


def _round(inp: OracleInput, cols: Sequence[_RoomCols], x: FloatArray) -> list[IntArray]:
    """Units on per room and slot, rounded from the LP relaxation's cooling."""
    # Whole units where the relaxation cools about a unit's minimum or more; sigma-delta pulses at the
    # minimum where it cools less, their phases staggered over the rooms so they do not switch on together;
    # then slots switched on where a room would break the hourly cap.
    out = []
    for r, (room, rc) in enumerate(zip(inp.rooms, cols, strict=True)):
        cap = np.asarray(room.unit_cooling_kw, dtype=np.float64)
        q, n_lp = x[rc.q], x[rc.n]
        n = np.zeros(inp.n_slots, dtype=np.int64)
        owed = r / len(inp.rooms)   # cooling owed, in units of the least a running unit gives
        for k in range(inp.n_slots):
            least = room.min_modulation * cap[k]
            if room.units == 0 or cap[k] <= 0:
                continue
            if q[k] >= max(_ROUND_UP * least, 1e-6):
                n[k] = min(room.units, max(1, math.ceil(q[k] / cap[k] - 1e-6)))
                while n[k] > 1 and q[k] < least * n[k]:
                    n[k] -= 1
                owed += min(0.0, q[k] - least) / least if least > 0 else 0.0
            elif least > 0:
                owed += q[k] / least
                if owed >= (_PULSE_OCCUPIED if room.occupied[k] else _PULSE):
                    n[k], owed = 1, owed - 1.0
        if room.units > 0:
            for slots in _windows(inp, _runs_hot(inp, room)):
                off = [k for k in slots if n[k] == 0]
                for k in sorted(off, key=lambda k: -n_lp[k])[:max(0, len(off) - (inp.off_cap_slots or 0))]:
                    n[k] = 1
        out.append(n)
    return out


def _fixed(model: _Model, cols: Sequence[_RoomCols], n_on: Sequence[Sequence[int] | IntArray],
           q_kw: Sequence[Sequence[float]] | None = None,
           free: Sequence[int] = ()) -> tuple[FloatArray, FloatArray]:
    """The model's bounds with each room's units (so its windows) and, if given, its cooling fixed; not `free` rooms."""
    lb, ub = np.concatenate(model.lb), np.concatenate(model.ub)
    for r, (rc, n_seq) in enumerate(zip(cols, n_on, strict=True)):
        if r in free:
            continue
        n = np.asarray(n_seq, dtype=np.int64)
        lb[rc.n] = ub[rc.n] = n
        has = rc.off_of >= 0
        lb[rc.off_of[has]] = ub[rc.off_of[has]] = (n[has] == 0)
        if q_kw is not None:
            lb[rc.q] = ub[rc.q] = q_kw[r]
    return lb, ub


def _highs(model: _Model, *, relax: bool, options: dict[str, Any],
           bounds: tuple[FloatArray, FloatArray] | None = None) -> Any:
    with warnings.catch_warnings():
        # "solver" is a HiGHS option scipy passes on verbatim, and says so with a warning
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        return model.solve(relax=relax, options=options, bounds=bounds)


@dataclass(frozen=True, slots=True)
class _Candidate:
    source: str
    x: FloatArray
    solver_objective: float
    evaluation: Evaluation
    n_on: tuple[tuple[int, ...], ...]
    q_kw: tuple[tuple[float, ...], ...]


def _candidate(inp: OracleInput, cols: Sequence[_RoomCols], source: str, res: Any) -> _Candidate:
    x = np.asarray(res.x, dtype=np.float64)
    n_on, q_kw = [], []
    for room, rc in zip(inp.rooms, cols, strict=True):
        n = np.rint(x[rc.n]).astype(np.int64)
        cap = np.asarray(room.unit_cooling_kw, dtype=np.float64)
        n_on.append(tuple(int(v) for v in n))
        q_kw.append(tuple(float(v) for v in np.clip(x[rc.q], room.min_modulation * cap * n, cap * n)))
    return _Candidate(source, x, float(res.fun), evaluate(inp, n_on, q_kw), tuple(n_on), tuple(q_kw))


def _room_costs(inp: OracleInput, cand: _Candidate) -> list[float]:
    """What each room adds to the objective beyond its energy: discomfort and compressor starts (TWD)."""
    w = inp.weights
    return [w.comfort_twd_per_kh * d + w.start_twd * sum(max(0, b - a) for a, b in zip((0, *n), n, strict=False))
            for d, n in zip(cand.evaluation.room_discomfort_kh, cand.n_on, strict=True)]


def _improve(inp: OracleInput, model: _Model, cols: Sequence[_RoomCols], best: _Candidate, left: Any,
             options: dict[str, Any]) -> tuple[_Candidate, int]:
    """Large-neighbourhood search: re-solve a few rooms at a time as a MILP, the others' units held."""
    group = max(1, min(LNS_GROUP_ROOMS, len(inp.rooms)))
    rounds = 0
    while left() > LNS_MIN_S:
        costs = _room_costs(inp, best)
        order = sorted(range(len(inp.rooms)), key=lambda r: -costs[r])
        improved = False
        for g in range(0, len(order), group):
            if left() <= LNS_MIN_S:
                break
            # the other rooms are held whole (units and cooling): presolve removes them, the MILP is small
            bounds = _fixed(model, cols, best.n_on, best.q_kw, free=order[g:g + group])
            res = _highs(model, relax=False, options={**options, "time_limit": min(left(), LNS_SOLVE_S)},
                         bounds=bounds)
            rounds += 1
            if res.x is not None:
                cand = _candidate(inp, cols, "lns", res)
                if cand.evaluation.parts.objective < best.evaluation.parts.objective - 1e-9:
                    best, improved = cand, True
        if not improved:
            break
    return best, rounds


def solve(inp: OracleInput, *, time_limit_s: float = 600.0, mip_rel_gap: float = 1e-3,
          node_limit: int | None = None, lns: bool | None = None) -> OracleResult:
    """The perfect-foresight optimum and the LP relaxation's bound; a limit with a schedule is a result."""
    # HiGHS solves share `time_limit_s`: the LP relaxation (interior point: the bound, and a schedule to
    # round), the rounded schedule with its units fixed (its cooling re-optimised), then with the time left
    # either the full MILP (small days) or, when `lns` or beyond FULL_MILP_MAX_ROOM_SLOTS, MILPs over two
    # rooms at a time. The best schedule is the result; its gap is against the best bound proven.
    _check(inp)
    if not time_limit_s > 0:
        raise OracleError(f"time_limit_s must be > 0, got {time_limit_s}")
    model, cols = _build(inp)
    start = time.perf_counter()

    def left() -> float:
        return max(0.0, time_limit_s - (time.perf_counter() - start))

    lp = _highs(model, relax=True, options={"time_limit": left(), "solver": "ipm"})
    lp_wall = time.perf_counter() - start
    if lp.status != 0 or lp.x is None:
        raise OracleError(f"the LP relaxation did not solve within {time_limit_s} s: {lp.message}")
    lp_bound = float(lp.fun)
    candidates: list[_Candidate] = []
    t0 = time.perf_counter()
    rounded = _highs(model, relax=False, options={"time_limit": left(), "mip_rel_gap": mip_rel_gap},
                     bounds=_fixed(model, cols, _round(inp, cols, np.asarray(lp.x, dtype=np.float64))))
    if rounded.x is not None:
        candidates.append(_candidate(inp, cols, "rounding", rounded))
    rounding_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    options: dict[str, Any] = {"mip_rel_gap": mip_rel_gap}
    if node_limit is not None:
        options["node_limit"] = node_limit
    message, dual, highs_gap, rounds = "no time left for the MILP", lp_bound, None, 0
    if lns is None:
        lns = len(inp.rooms) * inp.n_slots > FULL_MILP_MAX_ROOM_SLOTS
    if lns and candidates:
        best, rounds = _improve(inp, model, cols, candidates[0], left, options)
        candidates.append(best)
        message = f"{rounds} neighbourhoods of {LNS_GROUP_ROOMS} rooms re-solved"
    elif left() > 0:
        res = _highs(model, relax=False, options={**options, "time_limit": left()})
        message = str(res.message)
        if res.x is not None:
            candidates.append(_candidate(inp, cols, "milp", res))
            highs_gap = float(res.mip_gap) if res.mip_gap is not None else None
        if res.mip_dual_bound is not None and math.isfinite(res.mip_dual_bound):
            dual = max(dual, float(res.mip_dual_bound))
    mip_wall = time.perf_counter() - t0
    if not candidates:
        raise OracleError(f"no feasible schedule within {time_limit_s} s: {message}")
    best = min(candidates, key=lambda c: c.evaluation.parts.objective)
    objective = best.evaluation.parts.objective
    gap = max(0.0, (objective - dual) / abs(objective)) if objective else 0.0
    if gap <= mip_rel_gap:
        status = "optimal"
    elif left() <= LNS_MIN_S or node_limit is not None:
        status = "limit"
    else:
        status = "local"   # the neighbourhood search stopped improving before the time ran out
    share = tuple(tuple(float(q / (c * n)) if n > 0 and c > 0 else 0.0
                        for q, c, n in zip(qs, room.unit_cooling_kw, ns, strict=True))
                  for qs, ns, room in zip(best.q_kw, best.n_on, inp.rooms, strict=True))
    return OracleResult(status=status, message=message, source=best.source, objective=objective,
                        solver_objective=best.solver_objective, lp_bound=lp_bound, dual_bound=dual, mip_gap=gap,
                        highs_mip_gap=highs_gap, lp_wall_s=lp_wall, rounding_wall_s=rounding_wall,
                        mip_wall_s=mip_wall, wall_s=time.perf_counter() - start, variables=model.n,
                        constraints=model.rows, slot_s=inp.slot_s, n_on=best.n_on, q_kw=best.q_kw, share=share,
                        t_air_c=best.evaluation.t_air_c, block_kw=best.evaluation.block_kw,
                        parts=best.evaluation.parts)

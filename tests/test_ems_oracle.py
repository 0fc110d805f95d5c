"""The bench's perfect-foresight oracle (ems.oracle): room model, penalty, and the MILP on small days."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ems.oracle import (
    LinearRoom,
    OracleError,
    OracleInput,
    OracleResult,
    OracleRoom,
    Tariff,
    evaluate,
    linear_room,
    penalty_twd,
    schedule_at,
    solve,
)
from simulator.physics import (
    ACH_CLOSED,
    ACH_OPEN,
    AcParams,
    RoomParams,
    RoomState,
    Weather,
    solar_gains_w,
)
from simulator.timetable import away_lessons, occupied, pupil_heat_w

TZ = ZoneInfo("Asia/Taipei")
TUESDAY_0800 = datetime(2026, 6, 16, 8, 0, tzinfo=TZ)
SLOT_S = 300.0
HOT_DAY = Weather()
UNIT = AcParams()


def model_of(p: RoomParams, ach: float = ACH_CLOSED, slot_s: float = SLOT_S) -> LinearRoom:
    return linear_room(c_air_j_k=p.c_air, c_mass_j_k=p.c_mass, h_air_mass_w_k=p.h_air_mass,
                       h_air_out_w_k=p.h_window + p.h_vent(ach), h_mass_out_w_k=p.h_mass_out, slot_s=slot_s)


def physics_room(p: RoomParams, key: str, n_slots: int, *, start: datetime = TUESDAY_0800, units: int = 2,
                 weather: Weather = HOT_DAY, ac: AcParams = UNIT, upper_c: float = 28.0) -> OracleRoom:
    """A classroom of the virtual school as the oracle sees it (a mapping a bench can use)."""
    h_out = p.h_window + p.h_vent(ACH_CLOSED)
    away = away_lessons(7, key, start.timetuple().tm_yday)
    cols: dict[str, list[float]] = {k: [] for k in ("ha", "hm", "cap", "elec", "win")}
    occ: list[bool] = []
    for k in range(n_slots):
        mid = start + timedelta(seconds=(k + 0.5) * SLOT_S)
        hour = mid.hour + mid.minute / 60 + mid.second / 3600
        t_out = weather.outdoor_c(hour)
        sun_air, sun_mass = solar_gains_w(p, hour)
        samples = [start + timedelta(seconds=k * SLOT_S + 10 * j + 5) for j in range(30)]
        people = sum(pupil_heat_w(s, p.pupils, away) for s in samples) / len(samples)
        cols["ha"].append((sun_air + 0.6 * people + h_out * t_out) / 1000)
        cols["hm"].append((sun_mass + 0.4 * people + p.h_mass_out * t_out) / 1000)
        cols["cap"].append(ac.capacity_w(t_out) / 1000)
        cols["elec"].append(1 / ac.cop(t_out, 0.6))
        cols["win"].append((p.h_vent(ACH_OPEN) - p.h_vent(ACH_CLOSED)) * (t_out - upper_c) / 1000)
        occ.append(occupied(mid, away))
    t0 = weather.outdoor_c(start.hour) + 1.0
    return OracleRoom(model_of(p), t0, t0, tuple(cols["ha"]), tuple(cols["hm"]), tuple(occ), units,
                      tuple(cols["cap"]), tuple(cols["elec"]), tuple(cols["win"]), ac.fan_w["auto"] / 1000,
                      ac.min_modulation)


def steady_room(n_slots: int, *, units: int = 1, t_out: float = 33.0, people_w: float = 1400.0,
                t0: float = 27.5, min_modulation: float = 0.3, cap_kw: float = 5.0,
                elec_per_kw: float = 0.3) -> OracleRoom:
    """A room in constant weather, occupied throughout: the hand-checkable cases."""
    p = RoomParams()
    h_out = p.h_window + p.h_vent(ACH_CLOSED)
    return OracleRoom(model_of(p), t0, t0, (((0.6 * people_w + h_out * t_out) / 1000),) * n_slots,
                      (((0.4 * people_w + p.h_mass_out * t_out) / 1000),) * n_slots, (True,) * n_slots, units,
                      (cap_kw,) * n_slots, (elec_per_kw,) * n_slots, min_modulation=min_modulation)


def day(rooms: list[OracleRoom], contract_kw: float, base_kw: float | list[float], **kw: object) -> OracleInput:
    n = len(rooms[0].occupied)
    base = tuple(base_kw) if isinstance(base_kw, list) else (base_kw,) * n
    return OracleInput(slot_s=SLOT_S, n_slots=n, rooms=tuple(rooms), base_kw=base, contract_kw=contract_kw,
                       **kw)  # type: ignore[arg-type]


# -- the room model ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("ac_w", "ac_running", "class_in"), [(-4000.0, True, True), (0.0, False, False),
                                                              (0.0, False, True), (-9000.0, True, False)])
def test_linear_room_matches_the_simulators_heat_balance_over_one_slot(
        ac_w: float, ac_running: bool, class_in: bool) -> None:
    p = RoomParams(west_facing=True, top_floor=True)
    t_out, hour, people = 33.0, 15.0, 1400.0
    state = RoomState(p, 30.0, 0, "r")
    state.t_mass = 29.0
    for _ in range(30):  # the simulator's explicit 10 s steps
        state.step(10.0, t_out, hour, people, ac_w, ac_running, class_in)
    ach = ACH_OPEN if class_in and not ac_running else ACH_CLOSED
    h_out = p.h_window + p.h_vent(ach)
    sun_air, sun_mass = solar_gains_w(p, hour)
    air, mass = model_of(p, ach).step(30.0, 29.0, (sun_air + 0.6 * people + ac_w + h_out * t_out) / 1000,
                                      (sun_mass + 0.4 * people + p.h_mass_out * t_out) / 1000)
    assert abs(air - 30.0) > 0.5  # the slot moves the air: the comparison means something
    # the simulator's explicit 10 s steps lag the exact solution by about dt/(2·tau) ~ 1.4 % of the change
    assert air == pytest.approx(state.t_air, abs=0.015 * abs(air - 30.0) + 0.005)
    assert mass == pytest.approx(state.t_mass, abs=0.005)


def test_linear_room_is_the_exact_solution_not_one_euler_step() -> None:
    p = RoomParams()
    fine = linear_room(c_air_j_k=p.c_air, c_mass_j_k=p.c_mass, h_air_mass_w_k=p.h_air_mass,
                       h_air_out_w_k=100.0, h_mass_out_w_k=p.h_mass_out, slot_s=1.0)
    slot = linear_room(c_air_j_k=p.c_air, c_mass_j_k=p.c_mass, h_air_mass_w_k=p.h_air_mass,
                       h_air_out_w_k=100.0, h_mass_out_w_k=p.h_mass_out, slot_s=300.0)
    a, m = 31.0, 29.0
    for _ in range(300):
        a, m = fine.step(a, m, -2.0, 1.0)
    assert slot.step(31.0, 29.0, -2.0, 1.0) == pytest.approx((a, m), abs=1e-9)
    euler_air = 31.0 + 300.0 * (-2000.0 - 100.0 * 31.0 + p.h_air_mass * (29.0 - 31.0)) / p.c_air
    assert abs(slot.step(31.0, 29.0, -2.0, 1.0)[0] - euler_air) > 1.0


def test_linear_room_at_equilibrium_stays_put() -> None:
    room = linear_room(c_air_j_k=3e5, c_mass_j_k=1e7, h_air_mass_w_k=600.0, h_air_out_w_k=100.0,
                       h_mass_out_w_k=50.0)
    # both nodes at 30 °C with outdoor 30 °C: the heat inputs are exactly the outdoor couplings
    assert room.step(30.0, 30.0, 0.1 * 30.0, 0.05 * 30.0) == pytest.approx((30.0, 30.0), abs=1e-9)


@pytest.mark.parametrize("bad", [{"c_air_j_k": 0.0}, {"c_mass_j_k": -1.0}, {"h_air_out_w_k": -0.1},
                                 {"slot_s": 0.0}])
def test_linear_room_refuses_nonsense(bad: dict[str, float]) -> None:
    args = {"c_air_j_k": 3e5, "c_mass_j_k": 1e7, "h_air_mass_w_k": 600.0, "h_air_out_w_k": 100.0,
            "h_mass_out_w_k": 50.0, **bad}
    with pytest.raises(OracleError, match=next(iter(bad))):
        linear_room(**args)


# -- the penalty -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("over", "school", "expected"), [
    (0.0, True, 0.0), (-5.0, False, 0.0),
    (3.0, True, 3 * 236.2), (3.0, False, 2 * 3 * 236.2),
    (5.0, True, 5 * 236.2), (10.0, False, 20 * 236.2),
    (8.0, True, (5 + 2 * 3) * 236.2), (8.0, False, 16 * 236.2),
    (15.0, True, (5 + 10 + 3 * 5) * 236.2), (15.0, False, (20 + 3 * 5) * 236.2),
])
def test_penalty_is_domain_section_2_on_a_hand_case(over: float, school: bool, expected: float) -> None:
    assert penalty_twd(over, 100.0, 236.2, school) == pytest.approx(expected)


@given(st.floats(0.0, 80.0), st.floats(10.0, 500.0), st.booleans())
def test_penalty_pieces_the_milp_uses_are_the_formula(over: float, contract: float, school: bool) -> None:
    from ems.oracle import _penalty_pieces  # the private epigraph the MILP is built from
    pieces = max(s * over + i for s, i in _penalty_pieces(contract, school))
    assert max(0.0, pieces) * 236.2 == pytest.approx(penalty_twd(over, contract, 236.2, school), abs=1e-6)


# -- blocks and evaluation ---------------------------------------------------------------------------
def test_blocks_are_three_slots_from_the_first_and_a_short_last_block_averages_what_it_has() -> None:
    room = steady_room(7)
    ev = evaluate(day([room], 100.0, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), [[0] * 7], [[0.0] * 7])
    assert ev.block_kw == pytest.approx((2.0, 5.0, 7.0))
    assert ev.parts.overrun_blocks == 0
    assert ev.parts.peak_block_kw == pytest.approx(7.0)


def test_evaluation_counts_a_block_over_only_above_the_contract() -> None:
    room = steady_room(6)
    ev = evaluate(day([room], 5.0, [5.0, 5.0, 5.0, 5.0, 5.0, 5.06]), [[0] * 6], [[0.0] * 6])
    assert ev.parts.overrun_blocks == 1          # block 2 averages 5.02 kW; block 1 is exactly at C
    assert ev.parts.overrun_kw_blocks == pytest.approx(0.02)
    assert ev.parts.penalty_twd == pytest.approx(penalty_twd(0.02, 5.0, 236.2, True))


def test_the_parts_of_a_hand_schedule() -> None:
    model = linear_room(c_air_j_k=3e5, c_mass_j_k=1e7, h_air_mass_w_k=600.0, h_air_out_w_k=100.0,
                        h_mass_out_w_k=50.0)
    # room A: at equilibrium at 30 °C (outdoor 30 °C, no gains), occupied in slots 1..4 of 6, never cooled
    warm = OracleRoom(model, 30.0, 30.0, (3.0,) * 6, (1.5,) * 6, (False, True, True, True, True, False), 1,
                      (5.0,) * 6, (0.3,) * 6)
    # room B: empty all day, two units run in a hand pattern
    empty = OracleRoom(model, 30.0, 30.0, (3.0,) * 6, (1.5,) * 6, (False,) * 6, 2, (5.0,) * 6, (0.25,) * 6,
                       unit_fan_kw=0.04)
    inp = day([warm, empty], 100.0, 0.0, min_air_c=None)
    n_b, q_b = [1, 0, 1, 1, 2, 0], [2.0, 0.0, 4.0, 1.5, 10.0, 0.0]
    parts = evaluate(inp, [[0] * 6, n_b], [[0.0] * 6, q_b]).parts
    assert parts.discomfort_kh == pytest.approx(2.0 * 4 * 300 / 3600)       # 2 K over 4 occupied slots
    assert parts.discomfort_kh_per_room == pytest.approx(parts.discomfort_kh / 2)
    assert parts.discomfort_kh_worst_room == pytest.approx(parts.discomfort_kh)
    energy = (0.25 * sum(q_b) + 0.04 * sum(n_b)) * 300 / 3600
    assert parts.energy_kwh == pytest.approx(energy)
    assert parts.starts == 3                                                  # 0->1, 0->1, 1->2
    assert parts.overcool_kh == 0.0
    w = inp.weights
    assert parts.objective == pytest.approx(w.comfort_twd_per_kh * parts.discomfort_kh
                                            + w.energy_twd_per_kwh * energy + w.start_twd * 3)
    cold = evaluate(dataclasses.replace(inp, min_air_c=31.0), [[0] * 6, [0] * 6], [[0.0] * 6] * 2).parts
    assert cold.overcool_kh == pytest.approx(2 * 1.0 * 6 * 300 / 3600)      # 1 K under, both rooms, 6 boundaries


def test_open_windows_heat_an_occupied_room_only_while_every_unit_is_off() -> None:
    base = steady_room(2, units=1)
    windowed = dataclasses.replace(base, window_gain_kw=(1.0, 1.0))
    off = evaluate(day([windowed], 100.0, 0.0), [[0, 0]], [[0.0, 0.0]]).t_air_c[0]
    closed = evaluate(day([base], 100.0, 0.0), [[0, 0]], [[0.0, 0.0]]).t_air_c[0]
    assert off[1] - closed[1] == pytest.approx(base.model.bd_k_per_kw[0][0] * 1.0)
    on = evaluate(day([windowed], 100.0, 0.0), [[1, 1]], [[2.0, 2.0]]).t_air_c[0]
    on_closed = evaluate(day([base], 100.0, 0.0), [[1, 1]], [[2.0, 2.0]]).t_air_c[0]
    assert on == pytest.approx(on_closed)
    empty = dataclasses.replace(windowed, occupied=(False, False))
    assert evaluate(day([empty], 100.0, 0.0), [[0, 0]], [[0.0, 0.0]]).t_air_c[0] == pytest.approx(closed)


def test_evaluation_refuses_a_schedule_the_units_cannot_run() -> None:
    inp = day([steady_room(2, units=1)], 100.0, 0.0)
    with pytest.raises(OracleError, match="slot 1"):
        evaluate(inp, [[1, 1]], [[2.0, 0.5]])    # below min_modulation · 5 kW
    with pytest.raises(OracleError, match="2 units on"):
        evaluate(inp, [[2, 0]], [[2.0, 0.0]])


@pytest.mark.parametrize(("change", "where"), [
    ({"base_kw": (1.0,)}, "base_kw has 1 values"),
    ({"slot_s": 420.0}, "does not divide"),
    ({"contract_kw": 0.0}, "contract_kw"),
    ({"rooms": ()}, "rooms is empty"),
])
def test_bad_input_says_what_and_where(change: dict[str, object], where: str) -> None:
    inp = dataclasses.replace(day([steady_room(4)], 10.0, 1.0), **change)  # type: ignore[arg-type]
    with pytest.raises(OracleError, match=where):
        solve(inp)


def test_a_bad_room_is_named_by_its_index() -> None:
    good = steady_room(4)
    short = dataclasses.replace(good, heat_air_kw=good.heat_air_kw[:3])
    with pytest.raises(OracleError, match=r"rooms\[1\]\.heat_air_kw has 3 values"):
        solve(day([good, short], 10.0, 1.0))
    other_slot = dataclasses.replace(good, model=model_of(RoomParams(), slot_s=150.0))
    with pytest.raises(OracleError, match=r"rooms\[0\]\.model is discretised for 150"):
        solve(day([other_slot], 10.0, 1.0))


# -- the MILP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generous() -> tuple[OracleInput, OracleResult]:
    rooms = [physics_room(RoomParams(west_facing=i == 1, top_floor=i == 2), f"r{i}", 48) for i in range(3)]
    inp = day(rooms, 500.0, 10.0)
    return inp, solve(inp, time_limit_s=60)


def test_generous_contract_no_overrun_and_rooms_kept_cool(generous: tuple[OracleInput, OracleResult]) -> None:
    inp, res = generous
    left_alone = evaluate(inp, [[0] * 48] * 3, [[0.0] * 48] * 3)
    assert left_alone.parts.discomfort_kh_per_room > 0.5   # the rooms do need cooling
    assert res.status == "optimal"
    assert res.parts.overrun_blocks == 0
    assert res.parts.penalty_twd == 0.0
    # the rooms start warm, so some discomfort is unavoidable: every unit flat out is the least there is
    flat_out = evaluate(inp, [[2] * 48] * 3, [[2 * c for c in r.unit_cooling_kw] for r in inp.rooms])
    assert res.parts.discomfort_kh <= flat_out.parts.discomfort_kh + 0.01
    assert max(res.block_kw) <= inp.contract_kw
    assert res.parts.energy_kwh > 1.0


def test_the_solver_objective_is_the_schedules_score(generous: tuple[OracleInput, OracleResult]) -> None:
    inp, res = generous
    assert res.solver_objective == pytest.approx(res.objective, rel=1e-6, abs=1e-6)   # optimal: no loose slack
    assert res.objective == res.parts.objective
    assert res.mip_gap == pytest.approx((res.objective - res.dual_bound) / res.objective)
    ev = evaluate(inp, res.n_on, res.q_kw)
    assert ev.t_air_c == res.t_air_c
    assert res.lp_bound <= res.objective + 1e-6
    assert res.dual_bound <= res.objective + 1e-6
    assert 0.0 <= res.mip_gap <= 1e-3 + 1e-9


def test_cooling_stops_at_min_air(generous: tuple[OracleInput, OracleResult]) -> None:
    inp, res = generous
    assert inp.min_air_c is not None
    assert min(min(t[1:]) for t in res.t_air_c) >= inp.min_air_c - 0.05


def test_schedule_at_replays_slot_by_slot(generous: tuple[OracleInput, OracleResult]) -> None:
    inp, res = generous
    assert len(set(zip(res.n_on[0], res.share[0], strict=True))) > 5   # the schedule changes over the day
    for k in range(1, 48):
        assert schedule_at(res, 0, k * SLOT_S - 1) == (res.n_on[0][k - 1], res.share[0][k - 1])
        assert schedule_at(res, 0, k * SLOT_S) == (res.n_on[0][k], res.share[0][k])
    assert schedule_at(res, 2, 48 * SLOT_S) == (res.n_on[2][47], res.share[2][47])
    for r in range(3):
        for n, q, share, cap in zip(res.n_on[r], res.q_kw[r], res.share[r], inp.rooms[r].unit_cooling_kw,
                                    strict=True):
            assert (share == 0.0) if n == 0 else (0.3 - 1e-9 <= share <= 1.0 + 1e-9)
            assert q == pytest.approx(share * n * cap)
    with pytest.raises(OracleError, match="t_s_from_start"):
        schedule_at(res, 0, 48 * SLOT_S + 1)
    with pytest.raises(OracleError, match="t_s_from_start"):
        schedule_at(res, 0, -1.0)
    with pytest.raises(OracleError, match="room_index"):
        schedule_at(res, 3, 0.0)


def stagger_day(n: int) -> OracleInput:
    """Two rooms, one unit each that must run at >= 60 %, and a contract that fits one unit at a time."""
    rooms = [steady_room(n, min_modulation=0.6), steady_room(n, min_modulation=0.6, people_w=1200.0)]
    return day(rooms, 10.0 + 1.05 * 5.0 * 0.3, 10.0, off_cap_slots=None)


def test_tight_contract_staggers_rooms_instead_of_going_over() -> None:
    n = 12
    inp = stagger_day(n)
    both = evaluate(inp, [[1] * n] * 2, [[3.0] * n] * 2)
    assert both.parts.overrun_blocks == n // 3          # running together at the minimum: every block over
    left_alone = evaluate(inp, [[0] * n] * 2, [[0.0] * n] * 2)
    assert left_alone.parts.discomfort_kh > 0.2         # and not cooling at all is uncomfortable
    # by hand: one unit at a time at full output, the rooms taking turns slot by slot
    by_hand = evaluate(inp, [[1 - k % 2 for k in range(n)], [k % 2 for k in range(n)]],
                       [[5.0 * (1 - k % 2) for k in range(n)], [5.0 * (k % 2) for k in range(n)]])
    assert by_hand.parts.overrun_blocks == 0
    res = solve(inp, time_limit_s=60)
    assert res.parts.overrun_blocks == 0
    assert max(res.block_kw) <= inp.contract_kw + 1e-3
    assert res.objective <= by_hand.parts.objective + 1e-6
    assert res.parts.discomfort_kh <= by_hand.parts.discomfort_kh + 1e-6
    assert all(sum(n_on) > 0 for n_on in res.n_on)      # both rooms were cooled, in turn


def test_overrun_outranks_comfort_until_the_hourly_off_cap_forces_cooling() -> None:
    n = 24
    hot = steady_room(n)                                     # occupied, far above 28 °C without cooling
    free = dataclasses.replace(day([hot], 10.0, 10.0), off_cap_slots=None)
    res_free = solve(free, time_limit_s=60)
    assert sum(res_free.n_on[0]) == 0                        # any cooling would go over: it stays off
    assert res_free.parts.overrun_blocks == 0
    assert res_free.parts.discomfort_kh > 1.0
    capped = day([hot], 10.0, 10.0)                          # default: at most 3 of 12 slots off
    res = solve(capped, time_limit_s=60)
    assert res.parts.max_off_slots_per_window <= 3
    for start in range(n - 11):
        assert sum(1 for v in res.n_on[0][start:start + 12] if v == 0) <= 3
    assert res.parts.overrun_blocks > 0                      # below base + the least cooling: over
    assert res.parts.penalty_twd == pytest.approx(
        penalty_twd(res.parts.peak_block_kw - 10.0, 10.0, 236.2, True))
    assert res.parts.penalty_twd > 0
    assert res.lp_bound <= res.objective + 1e-6
    assert res.solver_objective == pytest.approx(res.objective, rel=1e-6)


def test_open_windows_reach_the_milp() -> None:
    n = 12
    shut = steady_room(n)
    windows = dataclasses.replace(shut, window_gain_kw=(0.8,) * n)
    plain = solve(day([shut], 10.0, 10.0, off_cap_slots=None), time_limit_s=60)
    aired = solve(day([windows], 10.0, 10.0, off_cap_slots=None), time_limit_s=60)
    assert sum(plain.n_on[0]) == sum(aired.n_on[0]) == 0        # no cooling fits the contract
    assert aired.parts.discomfort_kh > plain.parts.discomfort_kh + 0.1
    assert aired.solver_objective == pytest.approx(aired.objective, rel=1e-6)   # the MILP's rooms are evaluate's


def test_windows_are_never_open_while_a_unit_runs() -> None:
    # cooler outside than upper_c: open windows would cool the room, a unit must run anyway (many pupils)
    n = 12
    room = dataclasses.replace(steady_room(n, t_out=24.0, people_w=5000.0, t0=28.0), window_gain_kw=(-0.75,) * n)
    res = solve(day([room], 100.0, 5.0), time_limit_s=60)
    assert sum(res.n_on[0]) > 0
    # the MILP's bound would fall below any real schedule if it could have windows and units at once
    assert res.status == "optimal"
    assert res.mip_gap <= 1e-3


def test_the_tariff_switch_reaches_the_objective() -> None:
    hot = steady_room(12)
    school = solve(day([hot], 9.0, 10.0), time_limit_s=60)    # base alone is over: overrun is certain
    standard = solve(day([hot], 9.0, 10.0, tariff=Tariff(school_leniency=False)), time_limit_s=60)
    assert school.parts.penalty_twd == pytest.approx(penalty_twd(school.parts.peak_block_kw - 9.0, 9.0, 236.2, True))
    assert standard.parts.penalty_twd == pytest.approx(
        penalty_twd(standard.parts.peak_block_kw - 9.0, 9.0, 236.2, False))
    assert standard.objective > school.objective


def test_a_node_limit_stop_is_a_result_with_its_gap() -> None:
    inp = stagger_day(24)                 # its LP relaxation is weak: one node does not close the gap
    res = solve(inp, node_limit=1)
    assert res.status == "limit"
    assert res.lp_bound <= res.dual_bound + 1e-9 <= res.objective + 1e-6
    assert res.objective <= res.solver_objective + 1e-6   # an incumbent may carry a loose slack; the score not
    assert res.objective == pytest.approx(evaluate(inp, res.n_on, res.q_kw).parts.objective, rel=1e-9)
    assert res.mip_gap == pytest.approx((res.objective - res.dual_bound) / res.objective, rel=1e-9)
    assert res.mip_gap > 1e-3
    assert res.highs_mip_gap is not None
    assert res.highs_mip_gap > 1e-3


def test_without_the_milp_the_rounded_relaxation_is_the_schedule() -> None:
    inp = stagger_day(24)
    res = solve(inp, node_limit=0)        # HiGHS stops before its first incumbent
    assert res.status == "limit"
    assert res.source == "rounding"
    assert res.highs_mip_gap is None
    assert res.parts.overrun_blocks == 0  # the rounding staggers too: its pulses start out of phase
    assert res.lp_bound <= res.objective
    assert res.objective == pytest.approx(res.solver_objective, rel=1e-6)   # its cooling is re-optimised


def test_the_neighbourhood_search_improves_the_rounded_schedule() -> None:
    inp = stagger_day(12)
    rounded = solve(inp, node_limit=0)
    searched = solve(inp, lns=True)
    assert searched.source == "lns"
    assert searched.objective < rounded.objective - 1.0
    assert searched.parts.overrun_blocks == 0
    assert searched.objective == pytest.approx(evaluate(inp, searched.n_on, searched.q_kw).parts.objective)
    assert searched.objective == pytest.approx(solve(inp).objective, rel=2e-3)   # the MILP's optimum


def test_rounding_leaves_units_off_where_the_relaxation_does_not_cool() -> None:
    cool = steady_room(12, t_out=20.0, people_w=0.0, t0=22.0, min_modulation=0.0)
    res = solve(day([cool], 50.0, 5.0), node_limit=0)
    assert res.source == "rounding"
    assert sum(res.n_on[0]) == 0
    assert res.parts.energy_kwh == 0.0


def test_a_time_limit_must_leave_time() -> None:
    with pytest.raises(OracleError, match="time_limit_s"):
        solve(stagger_day(3), time_limit_s=0.0)

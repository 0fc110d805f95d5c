"""ems.controller: the rules that survived mutation testing (docs/mutation-results.md), each pinned by behaviour.

The controller is driven directly with hand-made blocks and unit views (no plant): the numbers by hand,
reservations in flight, the setpoint reserve, queues the entry did not take, which room is shed first
(priority, empty rooms, time already off, headroom from the learned rise), the hourly budget and minimum
on time at their boundaries, the contract pass, rotation (minimum off time, spare against the contract and
other rooms' sheddable kW), restores (order, gap, minimum off and shed times, the kW they need), empty rooms
and the admission (stale meter, waiting starts, exact fit, a room at its cap, retry hints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from edge.core.control import Denial, Queued
from ems.controller import EmsController, EmsPolicy
from ems.types import ActionKind, BlockStatus, UnitView

T0 = 1_781_571_600.0   # 2026-06-16 09:00 +08:00, a block boundary
SETPOINT, OFF, RESTORE = ActionKind.SHED_SETPOINT, ActionKind.SHED_OFF, ActionKind.RESTORE
EXACT = EmsPolicy(target_share=1.0, setpoint_shed_share=0.5)   # round numbers: the target is the contract


def view(uid: str, room: str, **kw: Any) -> UnitView:
    """A unit running at 2 kW for its teacher at 26 °C in a 27 °C occupied room, unless told otherwise."""
    base: dict[str, Any] = {"id": uid, "room": room, "floor": 1, "rated_kw": 2.0, "power_kw": 2.0, "on": True,
                            "setpoint_c": 26.0, "room_temp_c": 27.0, "wanted_on": True, "wanted_setpoint_c": 26.0,
                            "off_since": None, "occupied": True}
    return UnitView(**{**base, **kw})


def idle(uid: str, room: str, **kw: Any) -> UnitView:
    return view(uid, room, on=False, wanted_on=False, power_kw=0.0, **kw)


def waiting(uid: str, room: str, **kw: Any) -> UnitView:
    """Wanted on by its teacher, held off by the EMS."""
    return view(uid, room, on=False, wanted_on=True, power_kw=0.0, shed=True, **kw)


def block(power_kw: float | None, *, contract_kw: float = 100.0, elapsed_s: float = 0.0, energy_kwh: float = 0.0,
          projected_kw: float | None = None, stale: bool = False) -> BlockStatus:
    p = power_kw if power_kw is not None else 0.0
    return BlockStatus(start=T0, elapsed_s=elapsed_s, energy_kwh=energy_kwh, avg_kw=p,
                       projected_kw=p if projected_kw is None else projected_kw, allow_kw=contract_kw,
                       power_kw=power_kw, contract_kw=contract_kw, stale=stale)


STALE = block(100.0, stale=True)


def queue(ctl: EmsController, t: float, uid: str, room: str, **kw: Any) -> None:
    """A start asked for while the block is full: queued."""
    answer = ctl.admission(t, block(100.0), idle(uid, room, **kw), {"power_on": True})
    assert isinstance(answer, Queued), answer


def held_off(ctl: EmsController, spans: dict[str, tuple[str, float, float]]) -> list[UnitView]:
    """Give rooms EMS off time: unit `uid` of `room` is queued at t_from and no longer wanted at t_to.

    The views to pass to every later step (a unit missing from a step is forgotten, its off time too).
    """
    idles = {uid: idle(uid, room) for uid, (room, _a, _b) in spans.items()}
    events = sorted([(a, uid, True) for uid, (_r, a, _b) in spans.items()] +
                    [(b, uid, False) for uid, (_r, _a, b) in spans.items()])
    holding: set[str] = set()
    for t, uid, start in events:
        room = spans[uid][0]
        if start:
            queue(ctl, t, uid, room)
            holding.add(uid)
        else:
            holding.discard(uid)
        ctl.step(t, STALE, [waiting(u, spans[u][0]) if u in holding else v for u, v in idles.items()])
    assert not ctl.shed_units()
    return list(idles.values())


def kinds(actions: list[Any]) -> list[tuple[str, ActionKind]]:
    return [(a.unit, a.kind) for a in actions]


# -- the numbers ----------------------------------------------------------------------------------------------
def test_the_numbers_by_hand() -> None:
    ctl = EmsController()
    b = block(120.0, elapsed_s=300.0, energy_kwh=10.0)
    # P_allow for the target 97 kW: (97 * 0.25 - 10) kWh over the 600 s left = 14.25 * 6 = 85.5 kW
    assert ctl.allow_kw(b) == pytest.approx(85.5)
    assert ctl.need_kw(T0, b) == pytest.approx(120.0 - 85.5)
    assert ctl.lasting_room_kw(T0, b) == pytest.approx(85.5 - 120.0)
    # against the contract: min((25 - 10) * 6 = 90, 100) - 120
    assert ctl.contract_room_kw(T0, b) == pytest.approx(-30.0)
    # half a second before the end counts as one second: (24.25 - 24.99) * 3600 and (25 - 24.99) * 3600
    late = block(90.0, elapsed_s=899.5, energy_kwh=24.99)
    assert ctl.allow_kw(late) == pytest.approx(-0.74 * 3600)
    assert ctl.contract_room_kw(T0, late) == pytest.approx(0.01 * 3600 - 90.0)
    mid = block(90.0, elapsed_s=450.0, energy_kwh=12.0)
    assert ctl.contract_room_kw(T0, mid) == pytest.approx(100.0 - 90.0)    # (25 - 12) * 8 = 104, capped at C
    no_meter = block(None)
    assert (ctl.need_kw(T0, no_meter), ctl.lasting_room_kw(T0, no_meter), ctl.contract_room_kw(T0, no_meter)) == \
        (0.0, 0.0, 0.0)


def test_a_grant_is_reserved_until_the_meter_can_show_it() -> None:
    ctl = EmsController()
    b = block(90.0)
    assert ctl.admission(T0, b, idle("a", "r1"), {"power_on": True}) is None
    assert ctl.lasting_room_kw(T0 + 59.9, b) == pytest.approx(97.0 - 92.0)
    assert ctl.contract_room_kw(T0 + 59.9, b) == pytest.approx(100.0 - 92.0)
    assert ctl.lasting_room_kw(T0 + 60.0, b) == pytest.approx(97.0 - 90.0)   # settle_s later the meter shows it


def test_a_grant_is_kept_while_its_unit_starts_and_freed_when_it_is_taken_back() -> None:
    ctl = EmsController()
    b = block(90.0)
    assert ctl.admission(T0, b, idle("a", "r1"), {"power_on": True}) is None
    ctl.step(T0 + 10, STALE, [view("a", "r1", on=False, power_kw=0.0)])            # starting
    assert ctl.lasting_room_kw(T0 + 10, b) == pytest.approx(5.0)
    ctl.step(T0 + 20, STALE, [view("a", "r1", wanted_on=False)])                   # still running
    assert ctl.lasting_room_kw(T0 + 20, b) == pytest.approx(5.0)
    ctl.step(T0 + 30, STALE, [idle("a", "r1")])                                     # switched off again
    assert ctl.lasting_room_kw(T0 + 30, b) == pytest.approx(7.0)


def test_a_cut_stays_in_flight_when_its_teacher_switches_the_unit_off() -> None:
    ctl = EmsController()
    assert kinds(ctl.step(T0, block(97.5), [view("a", "r1")])) == [("a", SETPOINT)]   # 0.7 kW cut on its way
    acts = ctl.step(T0 + 10, block(97.5), [idle("a", "r1")])
    assert [(a.unit, a.kind, a.reason) for a in acts] == [("a", RESTORE, "r1: restored (nobody wants it on any more)")]
    assert ctl.need_kw(T0 + 10, block(97.5)) == pytest.approx(97.5 - 0.7 - 97.0)


# -- the setpoint reserve ---------------------------------------------------------------------------------------
def test_the_setpoint_reserve_counts_running_wanted_units_below_the_top_not_yet_shed() -> None:
    ctl = EmsController()
    units = [view("a", "r1", power_kw=None),               # no power reported: 80 % of 2 kW, 0.35 of it = 0.56
             view("b", "r2", setpoint_c=28.0),             # at the policy's top already
             view("c", "r3", wanted_on=False),             # running, nobody wants it
             view("d", "r4", on=False, power_kw=None)]     # wanted, not running yet
    ctl.step(T0, block(50.0), units)
    assert ctl.flex_kw(T0) == pytest.approx(0.56)
    ctl.step(T0 + 10, block(98.0), units)                 # a's setpoint is shed (it still shows 26 °C)
    assert ctl.shed_units()["a"] in ("shed_setpoint", "shed_off")
    ctl.step(T0 + 20, block(98.0), units)
    assert ctl.flex_kw(T0 + 20) == 0.0


# -- queues the entry did not take, units nobody wants any more ------------------------------------------------------
def test_a_queue_the_entry_did_not_take_and_a_shed_nobody_wants_are_let_go_without_reservations() -> None:
    ctl = EmsController()
    assert kinds(ctl.step(T0, block(97.5), [view("b", "r2")])) == [("b", SETPOINT)]
    queue(ctl, T0 + 1, "a", "r1")
    full = block(100.0)
    before = ctl.lasting_room_kw(T0 + 2, full)
    # the unit started anyway (a one-shot switch cannot queue); b's teacher switched it off
    acts = ctl.step(T0 + 2, STALE, [view("a", "r1"), idle("b", "r2")])
    assert [(a.unit, a.kind, dict(a.fields), a.reason) for a in acts] == [
        ("a", RESTORE, {}, "r1: started (nobody waits for it)"),
        ("b", RESTORE, {}, "r2: restored (nobody wants it on any more)")]
    assert ctl.shed_units() == {}
    assert ctl.lasting_room_kw(T0 + 2, full) == pytest.approx(before)   # no grant reserved for either
    assert ctl.step(T0 + 100, block(50.0), [view("a", "r1"), idle("b", "r2")]) == []


def test_a_confirmed_queue_is_let_go_when_nobody_wants_the_unit_any_more() -> None:
    ctl = EmsController()
    queue(ctl, T0, "a", "r1")
    assert ctl.step(T0, STALE, [waiting("a", "r1")]) == []
    acts = ctl.step(T0 + 10, STALE, [idle("a", "r1")])
    assert [(a.unit, a.reason) for a in acts] == [("a", "r1: started (nobody wants it on any more)")]


def test_a_queued_start_given_back_is_a_start_and_a_later_shed_of_it_a_restore() -> None:
    ctl = EmsController()
    queue(ctl, T0, "a", "r1")
    ctl.step(T0, STALE, [waiting("a", "r1")])
    acts = ctl.step(T0 + 200, block(90.0), [waiting("a", "r1")])
    assert [(a.unit, a.reason) for a in acts] == [("a", "r1: started (the block has room again)")]
    assert kinds(ctl.step(T0 + 600, block(97.5), [view("a", "r1")])) == [("a", SETPOINT)]
    acts = ctl.step(T0 + 700, block(90.0), [view("a", "r1")])
    assert [(a.unit, a.reason) for a in acts] == [("a", "r1: restored (the block has room again)")]


def test_no_shedding_on_stale_meter_data() -> None:
    assert EmsController().step(T0, block(150.0, stale=True), [view("a", "r1")]) == []


def test_a_restore_needs_more_than_the_margin_and_reserves_what_it_gives_back() -> None:
    ctl = EmsController()
    ctl.step(T0, block(97.5), [view("a", "r1")])                     # setpoint shed: 0.7 kW
    assert ctl.step(T0 + 100, block(95.0), [view("a", "r1")]) == []  # room exactly the 2 kW margin: not more
    acts = ctl.step(T0 + 200, block(94.9), [view("a", "r1")])
    assert [(a.unit, a.kind, dict(a.fields), a.reason) for a in acts] == \
        [("a", RESTORE, {}, "r1: restored (the block has room again)")]
    assert ctl.lasting_room_kw(T0 + 200, block(94.9)) == pytest.approx(97.0 - 94.9 - 0.7)
    assert ctl.off_s_last_hour("r1", T0 + 200) == 0.0               # a raised setpoint is not time off


# -- the room's hour -----------------------------------------------------------------------------------------------
def test_off_time_is_the_rooms_within_the_last_hour_exactly() -> None:
    ctl = EmsController()
    held_off(ctl, {"a": ("r1", T0, T0 + 100), "b": ("r1", T0 + 200, T0 + 500)})
    assert ctl.off_s_last_hour("r1", T0 + 500) == 400.0              # two spells add up
    assert ctl.off_s_last_hour("r1", T0 + 3699) == 400.0 - 99.0      # the hour's window cuts the first
    assert ctl.off_s_last_hour("r2", T0 + 500) == 0.0


def test_the_hours_window_drops_a_spell_that_ended_an_hour_ago() -> None:
    ctl = EmsController()
    units = held_off(ctl, {"a": ("r1", T0, T0 + 600)})
    assert ctl.off_s_last_hour("r1", T0 + 600 + 3599) == 1.0
    assert ctl.off_s_last_hour("r1", T0 + 600 + 3600) == 0.0
    assert units


# -- which room is shed first ----------------------------------------------------------------------------------------
def rise_of(rates: dict[str, float]) -> Callable[[str, float], float | None]:
    def rise(room: str, now: float) -> float | None:
        assert now >= T0                       # the model is asked with the present time
        return rates.get(room)
    return rise


@pytest.mark.parametrize(("temps", "rates", "first"), [
    ({"ac-a": None, "ac-b": 26.0}, {}, "ac-b"),              # no temperature: no headroom known (0 min)
    ({"ac-a": 28.0, "ac-b": None}, {}, "ac-a"),              # both 0 min: the id decides
    ({"ac-a": 27.0, "ac-b": 25.0}, {}, "ac-b"),              # 40 min against 120 min at 1.5 °C/h
    ({"ac-a": 26.0, "ac-b": 27.0}, {"ra": 6.0}, "ac-b"),     # the learned 6 °C/h: 20 min against 40
    ({"ac-a": 27.0, "ac-b": 26.0}, {"ra": 0.05}, "ac-b"),    # 0.05 °C/h is no rise: 1.5 used, 40 min against 80
    ({"ac-a": 27.0, "ac-b": 26.8}, {"ra": 1.0}, "ac-a"),     # 60 min against 48
    ({"ac-a": 26.0, "ac-b": 26.9}, {"ra": 3.0}, "ac-b"),     # 40 min against 44
    ({"ac-a": 28.76, "ac-b": 28.75}, {}, "ac-a"),            # hot rooms bottom out at -30 min: the id decides
    ({"ac-a": 28.75, "ac-b": 28.74}, {}, "ac-b"),            # -30 min against -29.6
    ({"ac-a": 27.8, "ac-b": 27.5}, {}, "ac-b"),              # 8 min against 20
])
def test_the_room_with_the_most_headroom_is_shed_first(temps: dict[str, float | None], rates: dict[str, float],
                                                        first: str) -> None:
    ctl = EmsController(rise_c_per_h=rise_of(rates))
    units = [view(uid, "ra" if uid == "ac-a" else "rb", room_temp_c=t) for uid, t in temps.items()]
    assert kinds(ctl.step(T0, block(97.5), units)) == [(first, SETPOINT)]


@pytest.mark.parametrize(("spans", "temps", "first"), [
    # 100 s and 90 s off both round to 2 min: the headroom decides
    ({"h1": ("ra", T0 - 1000, T0 - 900), "h2": ("rb", T0 - 800, T0 - 710)}, (26.0, 26.5), "ac-a"),
    # 5 min off against none: the room that was not off yet goes first
    ({"h1": ("ra", T0 - 1000, T0 - 700)}, (26.0, 27.0), "ac-b"),
])
def test_time_already_off_counts_in_whole_minutes(spans: dict[str, tuple[str, float, float]],
                                                  temps: tuple[float, float], first: str) -> None:
    ctl = EmsController()
    others = held_off(ctl, spans)
    units = [view("ac-a", "ra", room_temp_c=temps[0]), view("ac-b", "rb", room_temp_c=temps[1]), *others]
    assert kinds(ctl.step(T0, block(97.5), units)) == [(first, SETPOINT)]


# -- shedding --------------------------------------------------------------------------------------------------------
def test_shedding_stops_when_the_need_is_met_exactly() -> None:
    ctl = EmsController(EXACT)
    # need 1 kW; a setpoint shed cuts half of 2 kW
    assert kinds(ctl.step(T0, block(101.0), [view("ac-a", "r1"), view("ac-b", "r2")])) == [("ac-a", SETPOINT)]
    ctl2 = EmsController(EXACT)
    at_top = [view("ac-a", "r1", setpoint_c=28.0, power_kw=1.0), view("ac-b", "r2", setpoint_c=28.0, power_kw=1.0)]
    assert kinds(ctl2.step(T0, block(101.0), at_top)) == [("ac-a", OFF)]


def test_each_shed_counts_against_the_need() -> None:
    ctl = EmsController()
    units = [view(f"ac-{i}", f"r{i}") for i in range(4)]
    acts = ctl.step(T0, block(98.5), units)                          # need 1.5: three cuts of 0.7
    assert kinds(acts) == [(f"ac-{i}", SETPOINT) for i in range(3)]
    assert acts[0].reason == \
        "r0: setpoint raised to 28 °C; projected 98 kW for the block against 97 kW (contract 100 kW)"
    ctl2 = EmsController()
    at_top = [view(f"ac-{i}", f"r{i}", setpoint_c=28.0, power_kw=1.0) for i in range(3)]
    acts = ctl2.step(T0, block(98.5), at_top)                        # need 1.5: two units of 1 kW
    assert kinds(acts) == [("ac-0", OFF), ("ac-1", OFF)]
    assert acts[0].reason == "r0: switched off; projected 98 kW for the block against 97 kW (contract 100 kW)"


def test_a_unit_not_yet_running_is_not_shed() -> None:
    assert EmsController().step(T0, block(99.0), [view("a", "r1", on=False, power_kw=0.0)]) == []


def test_a_unit_given_back_runs_min_on_before_it_is_shed_again() -> None:
    ctl = EmsController()
    assert kinds(ctl.step(T0, block(97.5), [view("a", "r1")])) == [("a", SETPOINT)]
    ctl.step(T0 + 10, block(97.5), [idle("a", "r1")])               # given back at T0 + 10
    assert ctl.step(T0 + 309, block(97.5), [view("a", "r1")]) == []
    assert kinds(ctl.step(T0 + 310, block(97.5), [view("a", "r1")])) == [("a", SETPOINT)]
    ctl2 = EmsController()
    top = view("b", "r1", setpoint_c=28.0)
    assert kinds(ctl2.step(T0, block(98.0), [top])) == [("b", OFF)]
    ctl2.step(T0 + 10, block(98.0), [idle("b", "r1", setpoint_c=28.0)])
    assert ctl2.step(T0 + 110, block(98.0), [top]) == []
    assert kinds(ctl2.step(T0 + 310, block(98.0), [top])) == [("b", OFF)]


def test_a_unit_inside_min_on_is_passed_over_for_the_next() -> None:
    ctl = EmsController()
    a, b = view("ac-a", "r1", setpoint_c=28.0), view("ac-b", "r2", setpoint_c=28.0)
    assert kinds(ctl.step(T0, block(98.0), [a, b])) == [("ac-a", OFF)]
    ctl.step(T0 + 10, block(98.0), [idle("ac-a", "r1", setpoint_c=28.0), b])
    assert kinds(ctl.step(T0 + 110, block(98.0), [a, b])) == [("ac-b", OFF)]


@pytest.mark.parametrize(("off_s", "switched"), [
    (690.0, ["a", "b"]),    # 900 - 180 - 30 = 690 s left to the cap: a may still be switched off
    (700.0, ["b"]),         # 700: its budget ends before the compressor may restart
])
def test_the_hourly_budget_before_a_switch_off(off_s: float, switched: list[str]) -> None:
    ctl = EmsController()
    others = held_off(ctl, {"h": ("ra", T0 - 1000, T0 - 1000 + off_s)})
    units = [view("a", "ra", setpoint_c=28.0), view("b", "rb", setpoint_c=28.0, priority=1), *others]
    # need 3 kW; the block does not go over the contract itself
    assert [u for u, _k in kinds(ctl.step(T0, block(100.0), units))] == switched


def test_the_contract_pass_switches_off_past_the_budgets() -> None:
    def plant() -> tuple[EmsController, list[UnitView]]:
        ctl = EmsController(EXACT)
        others = held_off(ctl, {f"h{i}": (f"r{i}", T0 - 1000, T0 - 300) for i in range(3)})
        units = [view(f"u{i}", f"r{i}", setpoint_c=28.0, priority=i) for i in range(3)]
        return ctl, [*units, *others]

    ctl, units = plant()
    acts = ctl.step(T0, block(104.0), units)                     # need 4: two units, past their rooms' budgets
    assert kinds(acts) == [("u0", OFF), ("u1", OFF)]
    assert acts[0].reason == ("r0: switched off to keep the block under the contract;"
                              " projected 104 kW for the block against 100 kW (contract 100 kW)")
    ctl, units = plant()
    assert kinds(ctl.step(T0, block(102.0), units)) == [("u0", OFF)]                   # need exactly 2
    ctl, units = plant()
    assert kinds(ctl.step(T0, block(101.0), units)) == [("u0", OFF)]                   # need 1
    ctl, units = plant()
    assert kinds(ctl.step(T0, block(103.0), units)) == [("u0", OFF), ("u1", OFF)]      # need 3
    ctl, units = plant()
    assert ctl.step(T0, block(101.0, projected_kw=100.0), units) == []                # the block ends at C
    # a unit already switched off but still running is passed over for the next
    ctl, units = plant()
    ctl.step(T0, block(102.0), units)
    still_on = [view("u0", "r0", setpoint_c=28.0, shed=True), *units[1:]]
    assert kinds(ctl.step(T0 + 10, block(104.0), still_on)) == [("u1", OFF)]


def test_a_switch_off_after_a_setpoint_shed_expects_only_the_rest() -> None:
    ctl = EmsController()
    acts = ctl.step(T0, block(99.5), [view("a", "r1")])           # need 2.5: 0.7 by the setpoint, 1.3 by switching off
    assert kinds(acts) == [("a", SETPOINT), ("a", OFF)]
    assert ctl.need_kw(T0, block(99.5)) == pytest.approx(99.5 - 2.0 - 97.0)
    ctl2 = EmsController()
    ctl2.step(T0, block(99.5), [view("b", "r1", setpoint_c=28.0)])
    assert ctl2.need_kw(T0, block(99.5)) == pytest.approx(99.5 - 2.0 - 97.0)


# -- rotation --------------------------------------------------------------------------------------------------------
def test_rotation_never_gives_back_a_unit_inside_its_minimum_off_time() -> None:
    ctl = EmsController(EmsPolicy(max_off_s_per_h=90.0, rotate_early_s=60.0))
    acts = ctl.step(T0, block(200.0), [view("a", "r1")])          # over the contract: switched off at T0
    assert (acts[-1].unit, acts[-1].kind) == ("a", OFF)
    assert ctl.step(T0 + 120, block(97.0), [waiting("a", "r1")]) == []   # its turn is over, the compressor's is not
    acts = ctl.step(T0 + 180, block(97.0), [waiting("a", "r1")])
    assert [(a.unit, a.kind, a.reason) for a in acts] == \
        [("a", RESTORE, "r1: restored (its 2 minutes off in the hour are used: its turn is over)")]   # 1.5-min cap


def rotation(power_kw: float, rated: dict[str, float], *, stale: bool = False) -> list[str]:
    """Rooms queued at T0, due 840 s later; the units given back by rotation."""
    ctl = EmsController()
    rooms = {uid: f"r{uid}" for uid in rated}
    for uid, kw in rated.items():
        queue(ctl, T0, uid, rooms[uid], rated_kw=kw)
    views = [waiting(uid, rooms[uid], rated_kw=kw) for uid, kw in rated.items()]
    ctl.step(T0, STALE, views)
    acts = ctl.step(T0 + 840, block(power_kw, stale=stale), views)
    return [a.unit for a in acts if a.kind == RESTORE]


def test_rotation_gives_rooms_back_while_the_contract_has_room_for_them() -> None:
    assert rotation(97.0, {"1": 2.0, "2": 2.0}) == ["1"]          # 3 kW under the contract: one room
    assert rotation(96.0, {"1": 2.0, "2": 2.0}) == ["1", "2"]     # 4 kW: both
    assert rotation(97.0, {"1": 5.0, "2": 2.0}) == ["2"]          # the first does not fit, the second does
    assert rotation(99.0, {"1": 2.0, "2": 2.0}, stale=True) == ["1", "2"]   # no meter data: turns are kept


def test_a_room_that_must_wait_is_said_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ems.controller"):
        assert rotation(99.0, {"1": 2.0}) == []
    assert "ems: r1 has been off its share of the hour, but no other room can take its turn now" in \
        [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(("others", "holds", "back"), [
    ([view("b", "r2", power_kw=1.5)], {}, True),                                       # 0.5 + 1.5 = 2
    ([view("x", "r1", power_kw=1.5), view("b", "r2", power_kw=1.0)], {}, False),       # r1 is the room waiting
    ([view("x", "r1", power_kw=1.5), view("b", "r2", power_kw=1.5)], {}, True),
    ([view("c", "r2", on=False, power_kw=None), view("b", "r3", power_kw=1.0)], {}, False),   # c is not running
    ([view("b", "r2", power_kw=0.75), view("d", "r3", power_kw=0.75)], {}, True),
    ([view("b", "r2", power_kw=1.5)], {"h": ("r2", T0 - 1000, T0 - 310)}, True),      # r2 off 690 s: may be shed
    ([view("b", "r2", power_kw=1.5)], {"h": ("r2", T0 - 1000, T0 - 300)}, False),     # 700 s: may not
    ([view("b", "r2", power_kw=1.5), view("d", "r3", power_kw=1.5)], {"h": ("r2", T0 - 1000, T0 - 300)}, True),
])
def test_rotation_counts_what_other_rooms_could_shed(others: list[UnitView],
                                                     holds: dict[str, tuple[str, float, float]], back: bool) -> None:
    ctl = EmsController()
    history = held_off(ctl, holds)
    queue(ctl, T0, "a", "r1")
    units = [waiting("a", "r1"), *others, *history]
    ctl.step(T0, STALE, units)
    acts = ctl.step(T0 + 840, block(99.5), units)                 # 0.5 kW under the contract
    assert (("a", RESTORE) in kinds(acts)) is back


def test_rotation_does_not_count_the_waiting_rooms_own_units() -> None:
    ctl = EmsController(EmsPolicy(rotate_early_s=300.0))          # due after 600 s, within the shed budget
    queue(ctl, T0, "a", "r1")
    units = [waiting("a", "r1"), view("x", "r1", power_kw=1.5), view("b", "r2", power_kw=1.0)]
    ctl.step(T0, STALE, units)
    assert ("a", RESTORE) not in kinds(ctl.step(T0 + 600, block(99.5), units))   # 0.5 + 1.0: x is in r1


def test_rotation_counts_a_unit_given_back_exactly_min_on_ago() -> None:
    ctl = EmsController()
    queue(ctl, T0, "a", "r1")
    ctl.step(T0, STALE, [waiting("a", "r1"), view("b", "r2", power_kw=1.5)])
    assert kinds(ctl.step(T0 + 500, block(97.5), [waiting("a", "r1"), view("b", "r2", power_kw=1.5)])) == \
        [("b", SETPOINT)]
    ctl.step(T0 + 540, STALE, [waiting("a", "r1"), idle("b", "r2")])   # b given back at T0 + 540
    acts = ctl.step(T0 + 840, block(99.5), [waiting("a", "r1"), view("b", "r2", power_kw=1.5)])
    assert ("a", RESTORE) in kinds(acts)                          # 0.5 + b's 1.5, 300 s after its return


def test_rotation_counts_only_what_a_raised_setpoint_has_left() -> None:
    ctl = EmsController()
    queue(ctl, T0, "a", "r1")
    units = [waiting("a", "r1"), view("b", "r2")]
    assert kinds(ctl.step(T0, block(97.5), units)) == [("b", SETPOINT)]   # 0.7 of b's 2 kW taken already
    acts = ctl.step(T0 + 840, block(99.5), units)                 # 0.5 + 1.3 < 2: a waits
    assert ("a", RESTORE) not in kinds(acts)


# -- restores --------------------------------------------------------------------------------------------------------
def test_restores_are_staggered_by_the_gap_exactly() -> None:
    ctl = EmsController()
    units = [view("a", "r1"), view("b", "r2")]
    assert kinds(ctl.step(T0, block(98.0), units)) == [("a", SETPOINT), ("b", SETPOINT)]
    assert kinds(ctl.step(T0 + 100, block(90.0), units)) == [("a", RESTORE)]
    assert kinds(ctl.step(T0 + 130, block(90.0), units)) == [("b", RESTORE)]


@pytest.mark.parametrize(("first_try", "first"), [(179.0, "b"), (180.0, "a")])
def test_units_switched_off_come_back_first_but_not_inside_min_off(first_try: float, first: str) -> None:
    ctl = EmsController()
    units = [view("a", "r1", setpoint_c=28.0), view("b", "r2")]
    assert kinds(ctl.step(T0, block(99.5), units)) == [("b", SETPOINT), ("a", OFF)]
    back = [waiting("a", "r1", setpoint_c=28.0), view("b", "r2")]
    assert kinds(ctl.step(T0 + first_try, block(90.0), back)) == [(first, RESTORE)]


def test_a_shed_lasts_min_shed_s() -> None:
    ctl = EmsController(EmsPolicy(min_shed_s=600.0))
    ctl.step(T0, block(97.5), [view("a", "r1")])
    assert ctl.step(T0 + 599, block(90.0), [view("a", "r1")]) == []
    assert kinds(ctl.step(T0 + 600, block(90.0), [view("a", "r1")])) == [("a", RESTORE)]
    # a queued start is not a shed: it starts as soon as it may
    ctl2 = EmsController(EmsPolicy(min_shed_s=600.0))
    ctl2.step(T0, block(97.5), [view("b", "r2")])
    queue(ctl2, T0, "q", "r1")
    assert kinds(ctl2.step(T0 + 300, block(90.0), [waiting("q", "r1"), view("b", "r2")])) == [("q", RESTORE)]


def test_a_restore_needs_room_for_what_comes_back() -> None:
    # switched off: its rated 3 kW comes back, not the 1.5 kW it drew
    ctl = EmsController()
    ctl.step(T0, block(99.0), [view("a", "r1", setpoint_c=28.0, rated_kw=3.0, power_kw=1.5)])
    assert ctl.step(T0 + 200, block(94.5), [waiting("a", "r1", rated_kw=3.0)]) == []     # 2.5 kW of room
    # a raised setpoint: its 0.7 kW cut comes back, not the rated 3 kW
    ctl2 = EmsController()
    ctl2.step(T0, block(97.5), [view("b", "r1", rated_kw=3.0)])
    assert kinds(ctl2.step(T0 + 200, block(94.5), [view("b", "r1", rated_kw=3.0)])) == [("b", RESTORE)]
    # exactly the room it needs is enough
    ctl3 = EmsController(EmsPolicy(restore_margin_kw=1.0))
    ctl3.step(T0, block(99.0), [view("c", "r1", setpoint_c=28.0)])
    assert kinds(ctl3.step(T0 + 200, block(95.0), [waiting("c", "r1")])) == [("c", RESTORE)]


# -- empty rooms -----------------------------------------------------------------------------------------------------
def test_an_empty_room_is_switched_off_again_each_time_its_class_leaves() -> None:
    ctl = EmsController()
    empty = view("a", "r1", occupied=False)
    assert ctl.step(T0, block(10.0), [view("b", "r2"), empty]) == []
    acts = ctl.step(T0 + 600, block(10.0), [view("b", "r2"), empty])
    assert [(a.unit, a.kind, a.reason) for a in acts] == \
        [("a", ActionKind.SWITCH_OFF, "r1: on in an empty room for 10 min: switched off")]
    ctl.step(T0 + 700, block(10.0), [view("b", "r2"), view("a", "r1")])     # the class is back, the AC on
    ctl.step(T0 + 800, block(10.0), [view("b", "r2"), empty])
    assert kinds(ctl.step(T0 + 1400, block(10.0), [view("b", "r2"), empty])) == [("a", ActionKind.SWITCH_OFF)]


@pytest.mark.parametrize(("grace_s", "reason"), [
    (0.0, None),                                                   # 0: never
    (1.0, "r1: on in an empty room for 0 min: switched off"),
    (90.0, "r1: on in an empty room for 2 min: switched off"),
])
def test_the_empty_room_grace(grace_s: float, reason: str | None) -> None:
    ctl = EmsController(EmsPolicy(empty_grace_s=grace_s))
    empty = view("a", "r1", occupied=False)
    acts = ctl.step(T0, block(10.0), [empty])
    assert acts == []
    acts = ctl.step(T0 + grace_s - 0.5, block(10.0), [empty]) if grace_s else []
    assert acts == []
    acts = ctl.step(T0 + max(grace_s, 1.0), block(10.0), [empty]) + ctl.step(T0 + 5000, block(10.0), [empty])
    assert [a.reason for a in acts] == ([] if reason is None else [reason])


def test_a_room_switched_off_while_its_class_is_away_is_cooled_again_before_it_returns() -> None:
    ctl = EmsController()
    back = T0 + 2400
    ctl.step(T0, block(10.0), [view("a", "r1", occupied=False, back_at=back)])
    ctl.step(T0 + 600, block(10.0), [view("a", "r1", occupied=False, back_at=back)])
    acts = ctl.step(back - 600, block(10.0), [idle("a", "r1", occupied=False, back_at=back)])
    assert [(a.unit, a.kind, a.reason) for a in acts] == \
        [("a", ActionKind.PRECOOL, "r1: switched on again before its class is back")]


# -- admission -------------------------------------------------------------------------------------------------------
def test_what_is_not_a_new_start_is_admitted() -> None:
    ctl = EmsController()
    full = block(100.0)
    assert ctl.admission(T0, full, idle("a", "r1"), {"setpoint_c": 27.0}) is None
    assert ctl.admission(T0, full, waiting("a", "r1"), {"power_on": True}) is None   # the EMS holds it already


def test_stale_meter_data_is_denied_with_a_retry() -> None:
    assert EmsController().admission(T0, block(10.0, stale=True), idle("a", "r1"), {"power_on": True}) == \
        Denial("denied_by_ems", "the site meter has not been read recently: no new starts until it is", 60.0)


def test_a_start_waits_behind_the_rooms_already_waiting() -> None:
    ctl = EmsController()
    queue(ctl, T0, "b", "r2")
    # 3 kW of room; b's 2 kW come back first
    assert isinstance(ctl.admission(T0 + 1, block(94.0), idle("a", "r1"), {"power_on": True}), Queued)


def test_a_small_queued_start_reserves_its_own_power_when_it_starts() -> None:
    ctl = EmsController()
    queue(ctl, T0, "a", "r1", rated_kw=0.5)
    ctl.step(T0, STALE, [waiting("a", "r1", rated_kw=0.5)])
    assert kinds(ctl.step(T0 + 200, block(90.0), [waiting("a", "r1", rated_kw=0.5)])) == [("a", RESTORE)]
    assert ctl.lasting_room_kw(T0 + 200, block(90.0)) == pytest.approx(97.0 - 90.0 - 0.5)


def test_a_start_that_fits_exactly_is_granted() -> None:
    assert EmsController(EXACT).admission(T0, block(98.0), idle("a", "r1"), {"power_on": True}) is None


@pytest.mark.parametrize(("off_s", "queued"), [(690.0, True), (700.0, False)])
def test_a_room_near_its_cap_starts_in_turn(off_s: float, queued: bool) -> None:
    ctl = EmsController()
    held_off(ctl, {"h": ("r1", T0 - 1000, T0 - 1000 + off_s)})
    answer = ctl.admission(T0, block(100.0), idle("a", "r1"), {"power_on": True})
    if queued:
        assert isinstance(answer, Queued)
        assert answer.hold_s == 3600.0
    else:
        assert answer is None                                        # its turn: others are shed instead
        assert ctl.lasting_room_kw(T0, block(90.0)) == pytest.approx(97.0 - 90.0 - 2.0)


@pytest.mark.parametrize(("elapsed_s", "retry_s"), [(400.0, 120.0), (450.0, 120.0), (600.0, 300.0)])
def test_a_denied_start_says_when_to_try_again(elapsed_s: float, retry_s: float) -> None:
    ctl = EmsController(EmsPolicy(queue_starts=False))
    answer = ctl.admission(T0, block(100.0, elapsed_s=elapsed_s, energy_kwh=100.0 * elapsed_s / 3600),
                           idle("a", "r1"), {"power_on": True})
    assert isinstance(answer, Denial)
    assert (answer.code, answer.retry_after_s) == ("denied_by_ems", retry_s)
    assert answer.message.startswith("starting a (2.0 kW) now would take this 15-minute block over 97 kW")

"""ems.blocks and ems.tariff: the rules that survived mutation testing (docs/mutation-results.md).

The numbers are worked out by hand from DOMAIN.md section 2 and the module docstrings: the daemon's
one-hour gap, a block length other than 15 minutes, the sliding window between readings, the energy a
reading without power holds, the unseen start of a block filled at the covered average, the two days of
history, a snapshot taken and restored in every state; the penalty of a month with no peak and its messages.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from ems.blocks import DemandMeter, block_start
from ems.tariff import overrun_penalty_twd

T0 = 1_750_000_500.0 - (1_750_000_500.0 % 1800)   # a boundary of 15- and of 30-minute blocks
C = 100.0


def steady(m: DemandMeter, t_from: float, t_to: float, kw: float, step_s: float = 10.0) -> None:
    t = t_from
    while t <= t_to + 1e-9:
        m.update(t, kw, None)
        t += step_s


def roundtrip(m: DemandMeter, now: float | None = None) -> DemandMeter:
    m2 = DemandMeter(m.contract_kw, block_s=m.block_s)
    m2.restore(json.loads(json.dumps(m.snapshot())), now=now)
    return m2


# -- block alignment ----------------------------------------------------------------------------------------
def test_a_boundary_that_division_rounds_up_to_is_not_taken() -> None:
    # 1.7 / 0.1 rounds to 17.0, but 17 * 0.1 = 1.7000000000000002 lies after 1.7: the block is the one before
    start = block_start(1.7, 0.1)
    assert start <= 1.7 < start + 0.1
    assert start == pytest.approx(1.6)


def test_blocks_of_another_length_align_to_it() -> None:
    m = DemandMeter(C, block_s=1800.0)
    steady(m, T0 + 1000, T0 + 1100, 60.0)
    s = m.status(T0 + 1100)
    assert (s.start, s.elapsed_s) == (T0, 1100.0)
    # the unseen 1000 s filled at 60 kW: 60 kW * 1100 s
    assert s.energy_kwh == pytest.approx(60 * 1100 / 3600)
    m2 = roundtrip(m, now=T0 + 1105)                  # still the same 30-minute block: the energy is kept
    assert m2.status(T0 + 1105).energy_kwh == pytest.approx(60 * 1105 / 3600)


# -- the constructor ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["contract_kw", "stale_after_s", "block_s", "max_gap_s"])
def test_the_constructor_names_the_bad_setting(name: str) -> None:
    kwargs: dict[str, float] = {"stale_after_s": 15.0, "block_s": 900.0, "max_gap_s": 3600.0}
    contract = 0.0 if name == "contract_kw" else C
    if name != "contract_kw":
        kwargs[name] = 0.0
    with pytest.raises(ValueError, match=f"^DemandMeter: {name} must be a positive number, got 0.0$"):
        DemandMeter(contract, **kwargs)


def test_small_positive_settings_are_accepted() -> None:
    m = DemandMeter(0.5, stale_after_s=0.5)          # a 500 W contract; data stale after half a second
    m.update(T0, 0.2, None)
    assert not m.status(T0 + 0.5).stale
    assert m.status(T0 + 0.75).stale


def test_the_default_gap_is_one_hour() -> None:
    m = DemandMeter(C)
    m.update(T0, 50.0, 1000.0)
    m.update(T0 + 3600, 50.0, 1050.0)                 # exactly an hour: 50 kWh over four whole blocks
    assert [(s - T0, round(a, 6)) for s, a in m.completed] == [(0.0, 50.0), (900.0, 50.0), (1800.0, 50.0),
                                                               (2700.0, 50.0)]
    m2 = DemandMeter(C)
    m2.update(T0, 50.0, 1000.0)
    m2.update(T0 + 3601, 50.0, 1050.0)                # one second more: the daemon was down, nothing recorded
    assert list(m2.completed) == []


# -- a reading without power or a usable counter holds the previous power ------------------------------------
def test_a_counter_fault_without_power_holds_the_previous_power() -> None:
    m = DemandMeter(C)
    m.update(T0, None, 1000.0)
    m.update(T0 + 10, None, 1000.2)                   # 0.2 kWh in 10 s: 72 kW
    m.update(T0 + 20, None, 5.0)                      # counter reset: the 72 kW hold
    m.update(T0 + 30, None, 4.0)                      # backwards again: still 72 kW
    assert m.counter_faults == 2
    s = m.status(T0 + 30)
    assert s.power_kw == pytest.approx(72.0)
    assert s.energy_kwh == pytest.approx(0.6)         # 72 kW * 30 s


def test_without_any_power_seen_a_counter_fault_counts_nothing() -> None:
    m = DemandMeter(C)
    m.update(T0, None, 1000.0)
    m.update(T0 + 10, None, 5.0)                      # reset, and no power ever reported
    assert m.status(T0 + 10).energy_kwh == 0.0


# -- a gap longer than max_gap_s ------------------------------------------------------------------------------
def test_the_block_before_a_long_gap_is_recorded_and_the_window_starts_again() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 1500, 60.0)
    assert m.sliding_kw == pytest.approx(60.0)
    m.update(T0 + 1500 + 3700, 30.0, None)            # the daemon was down for more than an hour
    # the second block was seen for 600 s of 900 before the gap: recorded at what was seen
    assert [(s - T0, round(a, 6)) for s, a in m.completed] == [(0.0, 60.0), (900.0, 60.0)]
    assert m.sliding_kw is None
    m2 = DemandMeter(C)
    steady(m2, T0 + 500, T0 + 800, 60.0)
    m2.update(T0 + 800 + 3700, 30.0, None)
    assert list(m2.completed) == []                   # 300 s of 900 seen: less than half


# -- the sliding window between readings ---------------------------------------------------------------------
def test_the_sliding_window_interpolates_between_readings() -> None:
    m = DemandMeter(C)
    m.update(T0, 36.0, None)
    m.update(T0 + 100, 36.0, None)                    # 0..100 s at 36 kW: 1 kWh
    for t in (200, 300, 400, 500, 600, 700, 800, 900, 950):
        m.update(T0 + t, 72.0, None)                  # gaps longer than stale_after_s: the later power, 72 kW
    # the window 50..950 s: 50 s at 36 kW and 850 s at 72 kW = (1800 + 61200) / 900 = 70 kW
    assert m.sliding_kw == pytest.approx(70.0)
    m.update(T0 + 1000, 72.0, None)
    m.update(T0 + 1050, 72.0, None)
    # the window 150..1050 s lies wholly at 72 kW
    assert m.sliding_kw == pytest.approx(72.0)
    assert m.sliding_peak_kw == pytest.approx(72.0)


def test_the_window_after_a_restore_starts_from_the_restored_reading() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 300, 80.0)
    m2 = roundtrip(m, now=T0 + 305)
    steady(m2, T0 + 310, T0 + 1200, 80.0)             # 900 s after the restored reading at T0 + 300
    assert m2.sliding_kw == pytest.approx(80.0)
    assert m2.sliding_peak_kw == pytest.approx(80.0)


# -- status between readings and at the edges of a block ------------------------------------------------------
def test_status_names_a_bad_time() -> None:
    with pytest.raises(ValueError, match=r"^DemandMeter\.status: now must be a finite unix time, got nan$"):
        DemandMeter(C).status(math.nan)


def test_stale_data_in_a_later_block_counts_no_energy() -> None:
    # the last reading was 0 kW: whether or not stale power is held (see docs/mutation-results.md), nothing
    m = DemandMeter(C)
    steady(m, T0, T0 + 100, 0.0)
    s = m.status(T0 + 10_000)
    assert s.stale
    assert (s.energy_kwh, s.avg_kw) == (0.0, 0.0)


def test_fresh_data_just_past_a_boundary_holds_the_latest_power_into_the_new_block() -> None:
    m = DemandMeter(C)
    steady(m, T0 + 800, T0 + 895, 72.0, step_s=5.0)
    s = m.status(T0 + 905)                            # 10 s after the last reading: fresh
    assert (s.start, s.elapsed_s) == (T0 + 900, 5.0)
    assert s.energy_kwh == pytest.approx(0.1)         # 72 kW * 5 s
    assert s.avg_kw == pytest.approx(72.0)


def test_the_unseen_start_is_filled_at_the_covered_average_not_the_latest_power() -> None:
    m = DemandMeter(C)
    steady(m, T0 + 300, T0 + 600, 60.0)
    m.update(T0 + 610, 120.0, None)                   # a trapezoid: 90 kW over the last 10 s
    covered = 60 * 300 / 3600 + 90 * 10 / 3600        # 5.25 kWh over 310 s
    assert m.status(T0 + 610).energy_kwh == pytest.approx(covered * 610 / 310)
    m2 = DemandMeter(C)
    m2.update(T0 + 300, 60.0, None)
    m2.update(T0 + 300.5, 120.0, None)                # half a second seen, averaging 90 kW
    assert m2.status(T0 + 300.5).energy_kwh == pytest.approx(90 * 300.5 / 3600)


def test_the_average_at_the_start_of_a_block_is_the_latest_power() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 900, 80.0)
    assert m.status(T0 + 900).avg_kw == 80.0          # no time into the block yet
    m.update(T0 + 900.5, 100.0, None)                 # half a second: the trapezoid's 90 kW
    assert m.status(T0 + 900.5).avg_kw == pytest.approx(90.0)
    m0 = DemandMeter(C)
    steady(m0, T0, T0 + 900, 0.0)
    assert m0.status(T0 + 900).avg_kw == 0.0


# -- peaks ------------------------------------------------------------------------------------------------------
def test_a_fresh_meter_has_no_peak() -> None:
    m = DemandMeter(C)
    assert (m.peak_kw, m.sliding_peak_kw, m.sliding_kw, m.peak_kw_since(0.0)) == (0.0, 0.0, None, 0.0)
    steady(m, T0, T0 + 600, 10.0)
    assert m.sliding_kw is None                       # not yet a whole window
    m.reset_peak()
    assert m.sliding_peak_kw == 0.0


def test_small_blocks_are_the_peak() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 900, 0.5)
    assert m.peak_kw == pytest.approx(0.5)
    assert m.sliding_peak_kw == pytest.approx(0.5)


def test_a_new_billing_period_starts_from_the_present_window() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 900, 80.0)
    steady(m, T0 + 910, T0 + 1800, 40.0)
    assert m.sliding_peak_kw == pytest.approx(80.0)
    m.reset_peak()
    assert m.peak_kw == 0.0
    assert m.sliding_peak_kw == pytest.approx(m.sliding_kw)
    assert m.sliding_peak_kw == pytest.approx((60 * 10 + 40 * 890) / 900)   # the window 900..1800


def test_two_days_of_blocks_are_kept() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 194 * 900, 50.0, step_s=300.0)
    assert len(m.completed) == 192                    # two days of 15-minute blocks
    assert m.completed[0][0] == T0 + 2 * 900          # the two oldest dropped
    snap = m.snapshot()
    snap["completed"] = [[T0 - 900 * i, 10.0] for i in range(200, 0, -1)] + snap["completed"]
    m2 = DemandMeter(C)
    m2.restore(json.loads(json.dumps(snap)))
    assert len(m2.completed) == 192
    assert m2.completed[-1][0] == T0 + 193 * 900


# -- snapshots ----------------------------------------------------------------------------------------------------
def test_a_fresh_meter_and_one_restored_in_a_later_block_can_be_snapshot_and_restored() -> None:
    fresh = roundtrip(DemandMeter(C))
    assert fresh.status(T0).stale
    m = DemandMeter(C)
    steady(m, T0, T0 + 300, 90.0)
    later = roundtrip(roundtrip(m, now=T0 + 2000), now=T0 + 2000)
    assert later.status(T0 + 2000).energy_kwh == 0.0
    later.update(T0 + 2000, 40.0, None)
    later.update(T0 + 2010, 40.0, None)
    assert later.status(T0 + 2010).avg_kw == pytest.approx(40.0)


def test_a_restore_keeps_the_peak_block_the_counter_and_its_faults() -> None:
    m = DemandMeter(C)
    m.update(T0, 60.0, 1000.0)
    m.update(T0 + 10, 60.0, 5.0)                      # a counter reset: one fault
    steady(m, T0 + 20, T0 + 900, 60.0)
    m.update(T0 + 910, 60.0, 6.0)                     # a counter again, after the power-only readings
    m2 = roundtrip(m, now=T0 + 915)
    assert m2.peak_kw == pytest.approx(60.0)
    assert (m2.peak_start, m2.counter_faults) == (T0, 1)
    m2.update(T0 + 920, 0.0, 6.2)                     # the restored counter is the baseline: +0.2 kWh
    assert m2.status(T0 + 920).energy_kwh == pytest.approx(60 * 10 / 3600 + 0.2)
    assert m2.counter_faults == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"peak_kw": "lots"}, "DemandMeter.restore: a damaged snapshot (ValueError: "),
    ({"version": 2}, "DemandMeter.restore: snapshot version/block_s 2/900.0 does not match 1/900.0"),
    ({"completed": None}, "DemandMeter.restore: a damaged snapshot (TypeError: "),
])
def test_a_damaged_snapshot_says_what_is_wrong(change: dict[str, Any], message: str) -> None:
    snap = {**DemandMeter(C).snapshot(), **change}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        DemandMeter(C).restore(snap)


# -- the penalty (ems.tariff) --------------------------------------------------------------------------------------
def test_a_month_without_demand_or_at_no_charge_costs_nothing() -> None:
    for school in (False, True):
        assert overrun_penalty_twd(0.0, 100.0, 236.2, school_leniency=school) == 0.0
        assert overrun_penalty_twd(0.5, 100.0, 236.2, school_leniency=school) == 0.0
        assert overrun_penalty_twd(120.0, 100.0, 0.0, school_leniency=school) == 0.0


@pytest.mark.parametrize(("args", "message"), [
    ((-1.0, 100.0, 200.0), "overrun_penalty_twd: peak_kw must be a non-negative number, got -1.0"),
    ((110.0, 0.0, 200.0), "overrun_penalty_twd: contract_kw must be a positive number, got 0.0"),
    ((110.0, 100.0, -5.0), "overrun_penalty_twd: rate_twd_per_kw must be a non-negative number, got -5.0"),
])
def test_the_penalty_names_the_bad_input(args: tuple[float, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        overrun_penalty_twd(*args, school_leniency=False)

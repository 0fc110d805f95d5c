"""ems.blocks: the demand block arithmetic, each rule against numbers worked out by hand from DOMAIN.md section 2."""

from __future__ import annotations

import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ems.blocks import DemandMeter, block_start

T0 = 1_750_000_500.0 - (1_750_000_500.0 % 900)   # a block boundary
C = 100.0                                         # contract kW; C*T = 25 kWh


def steady(m: DemandMeter, t_from: float, t_to: float, kw: float, step_s: float = 10.0) -> None:
    t = t_from
    while t <= t_to + 1e-9:
        m.update(t, kw, None)
        t += step_s


# -- the formulas ---------------------------------------------------------------------------------
def test_allow_avg_projection_by_hand() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 300, 120.0)
    s = m.status(T0 + 300)
    # E = 120 kW * 300 s / 3600 = 10 kWh; avg = 10 * 3600 / 300 = 120 kW
    assert s.energy_kwh == pytest.approx(10.0)
    assert s.avg_kw == pytest.approx(120.0)
    # projected = (10 kWh + 120 kW * 600 s / 3600) / 0.25 h = (10 + 20) * 4 = 120 kW
    assert s.projected_kw == pytest.approx(120.0)
    # allow = (C*T - E) / (T - tau) = (25 - 10) kWh / (600/3600 h) = 15 * 6 = 90 kW
    assert s.allow_kw == pytest.approx(90.0)
    # headroom = allow - power = 90 - 120 < 0 -> 0
    assert s.headroom_kw == 0.0
    assert not s.stale
    assert s.start == T0
    assert s.elapsed_s == pytest.approx(300.0)


def test_allow_negative_when_block_is_lost() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 600, 180.0)
    s = m.status(T0 + 600)
    # E = 180 * 600 / 3600 = 30 kWh > C*T = 25 kWh; allow = (25 - 30) / (300/3600) = -5 * 12 = -60 kW
    assert s.energy_kwh == pytest.approx(30.0)
    assert s.allow_kw == pytest.approx(-60.0)


def test_allow_with_headroom() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 450, 40.0)
    s = m.status(T0 + 450)
    # E = 40 * 450 / 3600 = 5 kWh; allow = (25 - 5) / (450/3600) = 20 * 8 = 160 kW; headroom = 160 - 40 = 120
    assert s.allow_kw == pytest.approx(160.0)
    assert s.headroom_kw == pytest.approx(120.0)
    # projected = (5 + 40 * 450/3600) / 0.25 = (5 + 5) * 4 = 40
    assert s.projected_kw == pytest.approx(40.0)


def test_allow_clamped_at_the_end_of_the_block() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 899, 0.0, step_s=1.0)
    # raw: (25 - 0) kWh / (1/3600 h) = 90,000 kW -> clamped to 10 * C
    assert m.status(T0 + 899).allow_kw == pytest.approx(1000.0)
    m2 = DemandMeter(C)
    steady(m2, T0, T0 + 899, 500.0, step_s=1.0)
    # raw: (25 - 500*899/3600) / (1/3600) = 90,000 - 449,500 < -1000 -> clamped to -10 * C, still negative
    assert m2.status(T0 + 899).allow_kw == pytest.approx(-1000.0)


def test_replayed_power_trace_trapezoid() -> None:
    m = DemandMeter(C, stale_after_s=90.0)
    for t, kw in ((0, 50.0), (60, 50.0), (120, 110.0), (180, 110.0)):
        m.update(T0 + t, kw, None)
    s = m.status(T0 + 180)
    # E = 50*60/3600 + (50+110)/2*60/3600 + 110*60/3600 = (50 + 80 + 110) / 60 = 4 kWh
    assert s.energy_kwh == pytest.approx(4.0)
    assert s.avg_kw == pytest.approx(80.0)                 # 4 * 3600 / 180
    assert s.projected_kw == pytest.approx(104.0)          # (4 + 110*720/3600) * 4 = 26 * 4
    assert s.allow_kw == pytest.approx(105.0)              # (25 - 4) * 3600 / 720
    assert s.power_kw == 110.0


def test_status_between_readings_holds_the_latest_power() -> None:
    m = DemandMeter(C)
    m.update(T0, 60.0, None)
    m.update(T0 + 100, 60.0, None)
    # 10 s after the last reading: E = 60 * 110 / 3600
    assert m.status(T0 + 110).energy_kwh == pytest.approx(60 * 110 / 3600)
    # stale (20 s > 15 s): nothing is extrapolated
    assert m.status(T0 + 120).energy_kwh == pytest.approx(60 * 100 / 3600)


# -- counter vs power ------------------------------------------------------------------------------
def test_counter_preferred_over_power() -> None:
    m = DemandMeter(C)
    m.update(T0, 0.0, 1000.0)
    m.update(T0 + 60, 0.0, 1001.0)
    # the counter says 1 kWh in 60 s although the power readings say 0
    assert m.status(T0 + 60).energy_kwh == pytest.approx(1.0)
    assert m.counter_faults == 0


def test_counter_exact_over_a_gap() -> None:
    m = DemandMeter(C)
    m.update(T0, 10.0, 1000.0)
    m.update(T0 + 120, 200.0, 1002.0)   # gap of 120 s > 15 s: power would give 200*120/3600 = 6.67
    assert m.status(T0 + 120).energy_kwh == pytest.approx(2.0)


def test_counter_reset_falls_back_to_power() -> None:
    m = DemandMeter(C, stale_after_s=100.0)
    m.update(T0, 30.0, 1000.0)
    m.update(T0 + 60, 90.0, 5.0)        # counter reset: trapezoid (30+90)/2 * 60/3600 = 1 kWh
    assert m.counter_faults == 1
    assert m.status(T0 + 60).energy_kwh == pytest.approx(1.0)
    m.update(T0 + 120, 0.0, 5.5)        # the new counter is the baseline: +0.5 kWh
    assert m.counter_faults == 1
    assert m.status(T0 + 120).energy_kwh == pytest.approx(1.5)


def test_counter_jump_falls_back_to_power() -> None:
    m = DemandMeter(C, stale_after_s=100.0)
    m.update(T0, 60.0, 1000.0)
    # at most 3 * 100 kW * 60 s = 5 kWh (+0.1 slack) in 60 s; 5.2 kWh is a jump
    m.update(T0 + 60, 60.0, 1005.2)
    assert m.counter_faults == 1
    assert m.status(T0 + 60).energy_kwh == pytest.approx(1.0)    # 60 kW * 60 s
    # 5.1 kWh (the bound itself) is believed
    m2 = DemandMeter(C, stale_after_s=100.0)
    m2.update(T0, 60.0, 0.0)
    m2.update(T0 + 60, 60.0, 5.1)
    assert m2.counter_faults == 0
    assert m2.status(T0 + 60).energy_kwh == pytest.approx(5.1)


def test_a_counter_that_did_not_move_is_believed() -> None:
    m = DemandMeter(C)
    m.update(T0, 50.0, 1000.0)
    m.update(T0 + 10, 50.0, 1000.0)     # a coarse counter between two steps: 0 kWh, it catches up later
    assert m.counter_faults == 0
    assert m.status(T0 + 10).energy_kwh == 0.0
    m.update(T0 + 20, 50.0, 1000.3)
    assert m.status(T0 + 20).energy_kwh == pytest.approx(0.3)


def test_counter_only_meter_projects_with_the_counter_power() -> None:
    m = DemandMeter(C)
    m.update(T0, None, 1000.0)
    m.update(T0 + 10, None, 1000.2)    # 0.2 kWh in 10 s = 72 kW
    s = m.status(T0 + 10)
    assert s.power_kw == pytest.approx(72.0)
    assert s.projected_kw == pytest.approx(72.0)
    assert not s.stale


def test_gap_integrated_with_the_later_power() -> None:
    m = DemandMeter(C, stale_after_s=15.0)
    m.update(T0, 50.0, None)
    m.update(T0 + 60, 200.0, None)     # gap 60 s > 15 s: 200 * 60 / 3600 = 3.33, not (50+200)/2 -> 2.08
    assert m.status(T0 + 60).energy_kwh == pytest.approx(200 * 60 / 3600)
    m2 = DemandMeter(C, stale_after_s=15.0)
    m2.update(T0, 50.0, None)
    m2.update(T0 + 15, 200.0, None)    # exactly stale_after_s: still a trapezoid
    assert m2.status(T0 + 15).energy_kwh == pytest.approx(125 * 15 / 3600)


def test_gap_beyond_max_gap_not_integrated() -> None:
    m = DemandMeter(C, max_gap_s=600.0)
    m.update(T0, 50.0, 1000.0)
    m.update(T0 + 700, 80.0, 1010.0)   # 700 s > 600 s: the counter's 10 kWh are not attributed
    m.update(T0 + 800, 80.0, None)
    s = m.status(T0 + 800)
    # measured from T0 + 700: 100 s at 80 kW; the 700 s unseen are filled at that average: avg 80
    assert s.avg_kw == pytest.approx(80.0)
    assert s.energy_kwh == pytest.approx(80 * 800 / 3600)
    m2 = DemandMeter(C, max_gap_s=600.0)
    m2.update(T0, 50.0, 1000.0)
    m2.update(T0 + 600, 80.0, 1010.0)  # exactly max_gap_s: the counter's 10 kWh count
    assert m2.status(T0 + 600).energy_kwh == pytest.approx(10.0)


def test_bad_values_ignored() -> None:
    m = DemandMeter(C)
    m.update(T0, 60.0, None)
    m.update(T0 + 5, math.nan, None)
    m.update(T0 + 6, math.inf, -3.0)
    assert m.ignored == 2
    m.update(T0 + 10, 60.0, None)
    m.update(T0 + 10, 999.0, None)     # not after the previous one
    m.update(T0 + 8, 999.0, None)
    assert m.ignored == 4
    assert m.status(T0 + 10).energy_kwh == pytest.approx(60 * 10 / 3600)
    m.update(T0 + 20, -40.0, None)     # export: 0 kW of demand
    assert m.status(T0 + 20).power_kw == 0.0
    with pytest.raises(ValueError, match="finite"):
        m.update(math.nan, 1.0, None)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="contract_kw"):
        DemandMeter(0.0)
    with pytest.raises(ValueError, match="stale_after_s"):
        DemandMeter(C, stale_after_s=-1.0)


# -- stale ----------------------------------------------------------------------------------------
def test_no_reading_is_stale_without_raising() -> None:
    s = DemandMeter(C).status(T0 + 100)
    assert s.stale
    assert s.power_kw is None
    assert s.headroom_kw == 0.0
    assert s.energy_kwh == 0.0


def test_stale_after_the_limit() -> None:
    m = DemandMeter(C, stale_after_s=15.0)
    m.update(T0 + 100, 10.0, None)
    assert not m.status(T0 + 115).stale
    assert m.status(T0 + 115.5).stale
    assert m.status(T0 + 115.5).headroom_kw == 0.0
    assert m.status(T0 + 10_000).stale   # far in a later block: still no exception


# -- rollover, peaks --------------------------------------------------------------------------------
def test_rollover_records_completed_blocks_and_peak() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 900, 80.0)
    steady(m, T0 + 910, T0 + 1800, 120.0)
    steady(m, T0 + 1810, T0 + 2700, 60.0)
    starts = [s for s, _ in m.completed]
    assert starts == [T0, T0 + 900, T0 + 1800]
    avgs = [a for _, a in m.completed]
    # block 2: the 10 s from 900 to 910 are a trapezoid (80+120)/2, the rest 120:
    # (100*10 + 120*890) / 900 = 119.555...
    assert avgs[0] == pytest.approx(80.0)
    assert avgs[1] == pytest.approx((100 * 10 + 120 * 890) / 900)
    assert avgs[2] == pytest.approx((90 * 10 + 60 * 890) / 900)
    assert m.peak_kw == pytest.approx(avgs[1])
    assert m.peak_start == T0 + 900
    assert m.peak_kw_since(T0 + 1800) == pytest.approx(avgs[2])
    s = m.status(T0 + 2700)
    assert s.start == T0 + 2700
    assert s.elapsed_s == 0.0
    m.reset_peak()
    assert m.peak_kw == 0.0
    assert len(m.completed) == 3


def test_a_block_seen_for_less_than_half_is_not_recorded() -> None:
    m = DemandMeter(C)
    steady(m, T0 + 500, T0 + 900, 50.0)        # 400 s of 900: less than half
    assert list(m.completed) == []
    m2 = DemandMeter(C)
    steady(m2, T0 + 450, T0 + 900, 50.0)       # 450 s of 900, exactly half: recorded, at the covered average
    assert [(s, round(a, 6)) for s, a in m2.completed] == [(T0, 50.0)]


def test_started_mid_block_fills_the_unseen_start() -> None:
    m = DemandMeter(C)
    steady(m, T0 + 300, T0 + 600, 60.0)
    s = m.status(T0 + 600)
    # seen 300 s at 60 kW = 5 kWh; the unseen 300 s filled at 60 kW = 5 kWh
    assert s.energy_kwh == pytest.approx(10.0)
    assert s.avg_kw == pytest.approx(60.0)
    assert s.allow_kw == pytest.approx((25 - 10) * 3600 / 300)   # 180 kW


def test_sliding_window_peak_sees_what_the_blocks_split() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 450, 0.0)
    steady(m, T0 + 451, T0 + 1350, 100.0, step_s=1.0)
    steady(m, T0 + 1351, T0 + 1800, 0.0, step_s=1.0)
    avgs = [a for _, a in m.completed]
    # each block holds about half a block of 100 kW: ~50 kW; the window 450..1350 holds 100 kW throughout
    assert max(avgs) < 51.0
    assert m.sliding_peak_kw == pytest.approx(100.0, abs=0.2)
    # the last window, 900..1800: 450 s of 100 kW and the 1 s ramp down (50 kW*s) -> 45,050 / 900
    assert m.sliding_kw == pytest.approx(45_050 / 900)


# -- restore ----------------------------------------------------------------------------------------
def test_restore_in_the_same_block_keeps_the_energy() -> None:
    m = DemandMeter(C)
    steady(m, T0 - 900, T0 + 300, 90.0)
    snap = json.loads(json.dumps(m.snapshot()))
    m2 = DemandMeter(C)
    m2.restore(snap, now=T0 + 310)
    assert m2.status(T0 + 310).energy_kwh == pytest.approx(m.status(T0 + 310).energy_kwh)
    assert m2.peak_kw == pytest.approx(90.0)
    assert list(m2.completed) == list(m.completed)
    m2.update(T0 + 320, 90.0, None)    # the 20 s gap is integrated with the later power
    assert m2.status(T0 + 320).energy_kwh == pytest.approx(90 * 320 / 3600)


def test_restore_in_a_later_block_drops_the_old_block_energy() -> None:
    m = DemandMeter(C)
    steady(m, T0, T0 + 300, 90.0)
    m2 = DemandMeter(C)
    m2.restore(json.loads(json.dumps(m.snapshot())), now=T0 + 950)
    s = m2.status(T0 + 950)
    assert s.stale
    assert s.energy_kwh == 0.0
    m2.update(T0 + 950, 40.0, None)
    m2.update(T0 + 960, 40.0, None)
    assert m2.status(T0 + 960).avg_kw == pytest.approx(40.0)


def test_restore_rejects_a_damaged_snapshot() -> None:
    m = DemandMeter(C)
    snap = m.snapshot()
    del snap["completed"]
    with pytest.raises(ValueError, match="damaged snapshot"):
        DemandMeter(C).restore(snap)
    snap = m.snapshot()
    snap["block_s"] = 1800.0
    with pytest.raises(ValueError, match="does not match"):
        DemandMeter(C).restore(snap)


# -- alignment --------------------------------------------------------------------------------------
@pytest.mark.parametrize("zone", ["Asia/Taipei", "Asia/Kathmandu", "Asia/Kolkata"])
def test_epoch_blocks_are_local_quarter_hours(zone: str) -> None:
    tz = ZoneInfo(zone)
    for day in (1, 15, 28):
        for hour, minute in ((0, 0), (7, 45), (8, 0), (13, 15), (23, 30)):
            t = datetime(2026, 6, day, hour, minute, tzinfo=tz).timestamp()
            assert block_start(t) == t
            inside = datetime(2026, 6, day, hour, minute, 14, 59, tzinfo=tz).timestamp()
            assert block_start(inside) == t
            assert block_start(t - 1) == t - 900


def test_block_start_never_after_t() -> None:
    t = 900.0 * 1_944_444 - 1e-6
    assert block_start(t) <= t < block_start(t) + 900


# -- the property -----------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(p_kw=st.floats(0.0, 300.0), tau_s=st.floats(1.0, 899.0), c_kw=st.floats(10.0, 300.0))
def test_constant_power_property(p_kw: float, tau_s: float, c_kw: float) -> None:
    m = DemandMeter(c_kw)
    steady(m, T0, T0 + tau_s, p_kw, step_s=7.0)
    m.update(T0 + tau_s, p_kw, None)
    s = m.status(T0 + tau_s)
    assert s.avg_kw == pytest.approx(p_kw, abs=1e-6)
    assert s.projected_kw == pytest.approx(p_kw, abs=1e-6)
    if p_kw < c_kw * (1 - 1e-9):
        assert s.allow_kw >= c_kw
    elif p_kw > c_kw * (1 + 1e-9):
        assert s.allow_kw < c_kw


def test_a_block_nobody_measured_is_not_filled_with_a_stale_power() -> None:
    """A reading of 60 kW, then nothing for hours: the later block has no energy and no projection made up."""
    m = DemandMeter(100.0)
    m.update(T0, 60.0, None)
    m.update(T0 + 100, 60.0, None)
    st = m.status(T0 + 10_000)
    assert st.stale
    assert st.energy_kwh == 0.0
    assert st.avg_kw == 0.0
    assert st.projected_kw == 0.0

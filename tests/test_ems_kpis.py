"""ems.bench.kpis: each KPI of CONTRACT.md section 5 / DOMAIN.md section 6 on traces worked out by hand."""

from __future__ import annotations

import pytest

from ems.bench import kpis as K

T0 = 1_781_564_400.0      # 2026-06-16 07:00 in Taipei: a block boundary


# -- demand blocks ---------------------------------------------------------------------------------
def test_blocks_are_clock_aligned_averages() -> None:
    # 300 s steps: block 1 = (60 + 90 + 120) / 3 = 90, block 2 = 30
    got = K.block_demands(T0, 300.0, [60.0, 90.0, 120.0, 30.0, 30.0, 30.0])
    assert got == [(T0, pytest.approx(90.0)), (T0 + 900, pytest.approx(30.0))]


def test_an_interval_across_a_boundary_is_split() -> None:
    # from T0 - 300, 600 s steps: [T0-300, T0+300) at 100, [T0+300, T0+900) at 40, [T0+900, T0+1500) at 10
    got = K.block_demands(T0 - 300.0, 600.0, [100.0, 40.0, 10.0])
    # the block before T0 saw 300 s at 100 (covered part only); block T0: 300 s at 100 + 600 s at 40 = 60;
    # block T0+900: 600 s at 10 (covered part)
    assert got == [(T0 - 900, pytest.approx(100.0)), (T0, pytest.approx(60.0)), (T0 + 900, pytest.approx(10.0))]


def test_overruns_count_only_blocks_above_the_contract() -> None:
    blocks = [(T0, 100.0), (T0 + 900, 100.5), (T0 + 1800, 120.0), (T0 + 2700, 99.0)]
    assert K.overruns(blocks, 100.0) == (2, pytest.approx(20.0))
    assert K.overruns(blocks, 120.0) == (0, 0.0)
    assert K.overruns(blocks, 119.5) == (1, pytest.approx(0.5))


def test_sliding_peak() -> None:
    # 300 s steps, 900 s window = 3 samples: windows 40, 70, 70 -> 70; then 40, 70, 90, 60 -> 90
    assert K.sliding_peak_kw(300.0, [10.0, 30.0, 80.0, 100.0, 30.0]) == pytest.approx(70.0)
    assert K.sliding_peak_kw(300.0, [0.0, 30.0, 90.0, 90.0, 90.0, 0.0]) == pytest.approx(90.0)
    assert K.sliding_peak_kw(300.0, [20.0, 40.0]) == pytest.approx(30.0)   # shorter than a window
    assert K.sliding_peak_kw(300.0, []) == 0.0


# -- penalty ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("peak", "standard", "school"), [
    (100.0, 0.0, 0.0),            # at the contract: nothing
    (90.0, 0.0, 0.0),             # under
    (103.0, 2 * 3, 1 * 3),        # X = 3: standard 2x; school 1x (within 5 % of C)
    (107.0, 2 * 7, 5 + 2 * 2),    # X = 7: school 1x on 5, 2x on 2
    (110.0, 2 * 10, 5 + 2 * 5),   # X = 10 = 0.1 C
    (112.0, 2 * 10 + 3 * 2, 5 + 2 * 5 + 3 * 2),   # beyond 10 %: 3x
])
def test_penalty_by_hand(peak: float, standard: float, school: float) -> None:
    rate = 200.0
    assert K.penalty_twd(peak, 100.0, rate, school_leniency=False) == pytest.approx(rate * standard)
    assert K.penalty_twd(peak, 100.0, rate, school_leniency=True) == pytest.approx(rate * school)


# -- energy, comfort --------------------------------------------------------------------------------
def test_energy_is_the_integral_of_power() -> None:
    assert K.energy_kwh(900.0, [40.0, 80.0, 0.0, 20.0]) == pytest.approx(35.0)   # 0.25 h * 140 kW


def test_discomfort_counts_occupied_intervals_by_trapezoids() -> None:
    # 30-min steps, limit 28: interval 0 (occupied) (0 + 2) / 2 * 0.5 h = 0.5; interval 1 unoccupied;
    # interval 2 (occupied) (2 + 0) / 2 * 0.5 = 0.5
    assert K.discomfort_kh(1800.0, [28.0, 30.0, 30.0, 28.0], [1, 0, 1], 28.0) == pytest.approx(1.0)
    assert K.discomfort_kh(1800.0, [28.0, 30.0, 30.0, 28.0], [1, 1, 1], 28.0) == pytest.approx(2.0)
    # below the limit counts nothing (not negative)
    assert K.discomfort_kh(1800.0, [25.0, 25.0, 29.0], [True, True], 28.0) == pytest.approx(0.25)
    assert K.discomfort_kh(3600.0, [28.0, 28.0], [1], 28.0) == 0.0      # at the limit: comfortable


def test_discomfort_needs_one_more_temperature_than_intervals() -> None:
    with pytest.raises(ValueError, match="need one more"):
        K.discomfort_kh(10.0, [30.0, 30.0], [1, 1], 28.0)


# -- compressor -------------------------------------------------------------------------------------
def test_starts_per_unit_hour() -> None:
    assert K.starts_per_unit_h(30, 10, 3.0) == pytest.approx(1.0)
    assert K.starts_per_unit_h(5, 0, 3.0) == 0.0


def test_min_off_violations_within_180_s_of_the_off_command() -> None:
    cmds = [
        (0.0, "a", True), (100.0, "a", False), (279.0, "a", True),      # on 179 s after off: a violation
        (300.0, "a", False), (480.0, "a", True),                        # on exactly 180 s after: fine
        (0.0, "b", False), (10.0, "c", True),                           # c was never switched off
        (20.0, "b", True),                                              # b: 20 s after its off
    ]
    assert K.min_off_violations(sorted(cmds), 180.0) == 2
    assert K.min_off_violations([(0.0, "a", False), (500.0, "a", True), (600.0, "a", True)], 180.0) == 0


def test_longest_held_off_within_any_hour() -> None:
    step = 60.0
    held = [0] * 180
    for i in range(10, 25):       # 15 min
        held[i] = 1
    for i in range(100, 110):     # 10 min, far from the first
        held[i] = 1
    assert K.max_held_off_min(step, held) == pytest.approx(15.0)
    for i in range(50, 58):       # 8 min: 10..24 and 50..57 fit in one hour (10..69)
        held[i] = 1
    assert K.max_held_off_min(step, held) == pytest.approx(23.0)
    assert K.max_held_off_min(step, [1] * 30) == pytest.approx(30.0)        # a run shorter than an hour
    assert K.max_held_off_min(step, [1] * 61) == pytest.approx(60.0)        # never more than the hour
    assert K.max_held_off_min(step, [0] * 100) == 0.0


def test_summary() -> None:
    assert K.summary([1.0, 2.0, 6.0]) == {"min": 1.0, "mean": 3.0, "max": 6.0}
    assert K.summary([]) == {"min": 0.0, "mean": 0.0, "max": 0.0}

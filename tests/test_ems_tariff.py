"""ems.tariff: the overrun penalty against cases worked out by hand from DOMAIN.md section 2."""

from __future__ import annotations

import math

import pytest

from ems.tariff import overrun_penalty_twd

R = 200.0   # NT$ per kW (a round rate keeps the arithmetic readable)

# (peak_kw, contract_kw, standard NT$, school NT$), C = 100 kW: 5 % = 5 kW, 10 % = 10 kW
CASES = [
    (80.0, 100.0, 0.0, 0.0),                      # under the contract: nothing
    (100.0, 100.0, 0.0, 0.0),                     # exactly the contract: X = 0
    (103.0, 100.0, 2 * 3 * R, 1 * 3 * R),         # X = 3: std 2*3*200 = 1200; school 1*3*200 = 600
    (105.0, 100.0, 2 * 5 * R, 1 * 5 * R),         # X = 5 (the 5 % boundary): std 2000; school 1000
    (107.0, 100.0, 2 * 7 * R, (5 + 2 * 2) * R),   # X = 7: std 2800; school (1*5 + 2*2)*200 = 1800
    (110.0, 100.0, 2 * 10 * R, (5 + 2 * 5) * R),  # X = 10 (the 10 % boundary): std 4000; school 15*200 = 3000
    (112.0, 100.0, (20 + 3 * 2) * R, (5 + 10 + 3 * 2) * R),   # X = 12: std (2*10+3*2)*200 = 5200; school 21*200 = 4200
    (150.0, 100.0, (20 + 3 * 40) * R, (15 + 3 * 40) * R),     # X = 50: std 140*200 = 28000; school 135*200 = 27000
    # C = 180 kW: 5 % = 9, 10 % = 18; peak 200 -> X = 20
    (200.0, 180.0, (2 * 18 + 3 * 2) * R, (9 + 2 * 9 + 3 * 2) * R),   # std 42*200 = 8400; school 33*200 = 6600
]


@pytest.mark.parametrize(("peak", "contract", "standard", "school"), CASES)
def test_penalty_table(peak: float, contract: float, standard: float, school: float) -> None:
    assert overrun_penalty_twd(peak, contract, R, school_leniency=False) == pytest.approx(standard)
    assert overrun_penalty_twd(peak, contract, R, school_leniency=True) == pytest.approx(school)


def test_boundaries_are_continuous() -> None:
    # just past each boundary the next rate applies to the excess only
    eps = 1e-6
    assert overrun_penalty_twd(105.0 + eps, 100.0, R, school_leniency=True) == pytest.approx(5 * R + 2 * eps * R)
    assert overrun_penalty_twd(110.0 + eps, 100.0, R, school_leniency=True) == pytest.approx(15 * R + 3 * eps * R)
    assert overrun_penalty_twd(110.0 + eps, 100.0, R, school_leniency=False) == pytest.approx(20 * R + 3 * eps * R)


def test_real_rate() -> None:
    # 236.2 NT$/kW, C = 150, peak 160: X = 10 (6.67 % of C)
    # standard: 2 * 10 * 236.2 = 4724; school: (1 * 7.5 + 2 * 2.5) * 236.2 = 12.5 * 236.2 = 2952.5
    assert overrun_penalty_twd(160.0, 150.0, 236.2, school_leniency=False) == pytest.approx(4724.0)
    assert overrun_penalty_twd(160.0, 150.0, 236.2, school_leniency=True) == pytest.approx(2952.5)


@pytest.mark.parametrize(("peak", "contract", "rate", "field"), [
    (math.nan, 100.0, R, "peak_kw"), (-1.0, 100.0, R, "peak_kw"), (110.0, 0.0, R, "contract_kw"),
    (110.0, math.inf, R, "contract_kw"), (110.0, 100.0, -5.0, "rate_twd_per_kw"),
])
def test_bad_input(peak: float, contract: float, rate: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        overrun_penalty_twd(peak, contract, rate, school_leniency=False)

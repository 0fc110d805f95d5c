"""Taipower's contract-capacity overrun penalty (DOMAIN.md section 2).

The part X of the month's peak block above the contract C is billed at a multiple of the basic
(per-kW) charge: standard 2x up to 10 % of C and 3x beyond; with the school leniency (public primary and
junior-high schools, a switch because it is unconfirmed for today) 1x up to 5 % of C, 2x from 5 to 10 %,
3x beyond.
"""

from __future__ import annotations

import math


def _check(name: str, v: float, *, positive: bool) -> None:
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"overrun_penalty_twd: {name} must be a {'positive' if positive else 'non-negative'}"
                         f" number, got {v!r}")


def overrun_penalty_twd(peak_kw: float, contract_kw: float, rate_twd_per_kw: float, *,
                        school_leniency: bool) -> float:
    """The penalty in NT$ for a month whose highest block averaged `peak_kw` against contract `contract_kw`."""
    _check("peak_kw", peak_kw, positive=False)
    _check("contract_kw", contract_kw, positive=True)
    _check("rate_twd_per_kw", rate_twd_per_kw, positive=False)
    x = max(0.0, peak_kw - contract_kw)
    c10 = 0.10 * contract_kw
    beyond = max(0.0, x - c10)
    if not school_leniency:
        return rate_twd_per_kw * (2 * min(x, c10) + 3 * beyond)
    c5 = 0.05 * contract_kw
    return rate_twd_per_kw * (1 * min(x, c5) + 2 * min(max(x - c5, 0.0), c5) + 3 * beyond)

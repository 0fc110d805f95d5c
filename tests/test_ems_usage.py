"""ems.usage: each class's AC kWh against hand-computed energy; local days, months, quotas, restore."""

from __future__ import annotations

import json
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from ems.usage import DayUsage, QuotaWarning, UsageMeter

TPE = ZoneInfo("Asia/Taipei")
T9 = datetime(2026, 6, 16, 9, 0, tzinfo=TPE).timestamp()    # 09:00 local, 01:00 UTC


def run(m: UsageMeter, unit: str, room: str, t_from: float, t_to: float, *, on: bool = True,
        power_kw: float | None = None, rated_kw: float = 1.7, step_s: float = 10.0) -> list[DayUsage | QuotaWarning]:
    out: list[DayUsage | QuotaWarning] = []
    t = t_from
    while t <= t_to + 1e-9:
        out += m.feed(t, unit, room, on, power_kw, rated_kw)
        t += step_s
    return out


# -- energy and run time ---------------------------------------------------------------------------
def test_rated_power_times_run_time() -> None:
    m = UsageMeter(TPE)
    run(m, "ac-301a", "301", T9, T9 + 1800)
    d = m.today("301")
    assert d.kwh == pytest.approx(0.85)       # 1.7 kW * 0.5 h
    assert d.run_h == pytest.approx(0.5)
    assert d.day == date(2026, 6, 16)


def test_reported_power_preferred_over_rated() -> None:
    m = UsageMeter(TPE)
    run(m, "ac-301a", "301", T9, T9 + 1800, power_kw=1.2)
    assert m.today("301").kwh == pytest.approx(0.6)        # 1.2 kW * 0.5 h, not 1.7 * 0.5


def test_off_counts_standby_power_but_no_run_time() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 1800, on=False)
    assert (m.today("301").kwh, m.today("301").run_h) == (0.0, 0.0)
    run(m, "a", "301", T9 + 1810, T9 + 3610, on=False, power_kw=0.006)
    assert m.today("301").kwh == pytest.approx(0.003)      # 6 W * 0.5 h
    assert m.today("301").run_h == 0.0


def test_the_state_seen_holds_until_the_next_feed() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 590)                       # on at 0..590
    m.feed(T9 + 600, "a", "301", False, None, 1.7)         # off from 600: the unit ran 0..600
    m.feed(T9 + 610, "a", "301", False, None, 1.7)
    assert m.today("301").run_h == pytest.approx(600 / 3600)
    assert m.today("301").kwh == pytest.approx(1.7 * 600 / 3600)


def test_a_gap_longer_than_max_gap_is_not_integrated() -> None:
    m = UsageMeter(TPE, max_gap_s=300.0)
    m.feed(T9, "a", "301", True, None, 1.7)
    m.feed(T9 + 300, "a", "301", True, None, 1.7)          # exactly 300 s: integrated
    assert m.today("301").kwh == pytest.approx(1.7 * 300 / 3600)
    m.feed(T9 + 601, "a", "301", True, None, 1.7)          # 301 s: not
    assert m.today("301").kwh == pytest.approx(1.7 * 300 / 3600)
    m.feed(T9 + 611, "a", "301", True, None, 1.7)          # and counting goes on from the last feed
    assert m.today("301").kwh == pytest.approx(1.7 * 310 / 3600)


def test_units_and_rooms_add_up_separately() -> None:
    m = UsageMeter(TPE)
    for t in range(0, 3601, 10):
        m.feed(T9 + t, "ac-301a", "301", True, None, 1.7)
        m.feed(T9 + t, "ac-301b", "301", True, 1.5, 1.7)
        m.feed(T9 + t, "ac-302a", "302", t < 1800, None, 2.0)
    # 301: 1.7 kWh + 1.5 kWh over an hour; run 2 unit-hours; 302: 2.0 kW for 0.5 h
    assert m.today("301").kwh == pytest.approx(3.2)
    assert m.today("301").run_h == pytest.approx(2.0)
    assert m.today("302").kwh == pytest.approx(1.0)
    assert m.today("302").run_h == pytest.approx(0.5)
    assert m.month("302").kwh == pytest.approx(1.0)
    assert m.rooms() == ["301", "302"]


def test_bad_input() -> None:
    m = UsageMeter(TPE)
    with pytest.raises(ValueError, match="rated_kw of a"):
        m.feed(T9, "a", "301", True, None, -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        m.feed(T9, "a", "", True, None, 1.7)
    with pytest.raises(ValueError, match="finite"):
        m.feed(float("inf"), "a", "301", True, None, 1.7)
    with pytest.raises(ValueError, match="warn_shares"):
        UsageMeter(TPE, warn_shares=(0.2, 1.0))
    with pytest.raises(ValueError, match="nothing has been fed"):
        m.today("301")
    # an unusable power reading falls back to the rated power
    run(m, "a", "301", T9, T9 + 1800, power_kw=float("nan"))
    assert m.today("301").kwh == pytest.approx(0.85)


# -- local days and months ----------------------------------------------------------------------------
def test_day_rollover_at_local_midnight_in_taipei() -> None:
    m = UsageMeter(TPE, max_gap_s=300.0)
    start = datetime(2026, 6, 16, 23, 50, tzinfo=TPE).timestamp()
    midnight = datetime(2026, 6, 17, 0, 0, tzinfo=TPE).timestamp()
    assert run(m, "a", "301", start, midnight + 290) == []       # the day is not closed before 00:05
    closed = m.feed(midnight + 300, "a", "301", True, None, 1.7)
    # 23:50-24:00: 1.7 kW * 10 min = 0.28333 kWh
    assert len(closed) == 1
    assert isinstance(closed[0], DayUsage)
    assert (closed[0].room, closed[0].day) == ("301", date(2026, 6, 16))
    assert closed[0].kwh == pytest.approx(1.7 / 6)
    assert closed[0].run_h == pytest.approx(1 / 6)
    assert m.today("301").day == date(2026, 6, 17)
    assert m.today("301").kwh == pytest.approx(1.7 * 300 / 3600)
    assert closed[0].as_event() == {"id": "usage-301-2026-06-16", "room": "301", "day": "2026-06-16",
                                    "kwh": 0.2833, "run_h": 0.1667}


def test_utc_midnight_is_not_a_day_boundary() -> None:
    m = UsageMeter(TPE)
    utc_midnight = datetime(2026, 6, 17, 8, 0, tzinfo=TPE).timestamp()   # 00:00 UTC
    assert run(m, "a", "301", utc_midnight - 600, utc_midnight + 600) == []
    assert m.today("301").day == date(2026, 6, 17)
    assert m.today("301").kwh == pytest.approx(1.7 * 1200 / 3600)


def test_an_interval_across_midnight_is_split() -> None:
    m = UsageMeter(TPE)
    midnight = datetime(2026, 6, 17, 0, 0, tzinfo=TPE).timestamp()
    m.feed(midnight - 120, "a", "301", True, None, 1.8)
    m.feed(midnight + 60, "a", "301", True, None, 1.8)            # 120 s before, 60 s after
    closed = m.close_days(midnight + 300)
    assert [(d.day, round(d.kwh, 6)) for d in closed] == [(date(2026, 6, 16), 0.06)]   # 1.8 * 120 / 3600
    assert m.today("301").kwh == pytest.approx(0.03)                                    # 1.8 * 60 / 3600
    assert m.close_days(midnight + 400) == []


def test_months() -> None:
    m = UsageMeter(TPE)
    june30 = datetime(2026, 6, 30, 10, 0, tzinfo=TPE).timestamp()
    july1 = datetime(2026, 7, 1, 10, 0, tzinfo=TPE).timestamp()
    run(m, "a", "301", june30, june30 + 3600, rated_kw=2.0)
    assert m.month("301").month == "2026-06"
    assert m.month("301").kwh == pytest.approx(2.0)
    closed = run(m, "a", "301", july1, july1 + 1800, rated_kw=2.0)
    assert [(d.day, round(d.kwh, 6)) for d in closed if isinstance(d, DayUsage)] == [(date(2026, 6, 30), 2.0)]
    assert m.month("301").month == "2026-07"
    assert m.month("301").kwh == pytest.approx(1.0)
    status = m.as_status()
    assert status["day"] == "2026-07-01"
    assert status["rooms"]["301"] == {"today_kwh": 1.0, "today_run_h": 0.5, "month_kwh": 1.0, "month_run_h": 0.5}


# -- quotas -------------------------------------------------------------------------------------------
def test_quota_warnings_once_exhaustion_and_top_up() -> None:
    m = UsageMeter(TPE, warn_shares=(0.2, 0.1))
    assert m.balance("301") is None
    assert not m.exhausted("301")
    m.set_quota("301", 1.0)
    # each 10 s at 1.7 kW uses 1.7 * 10 / 3600 = 0.0047222 kWh
    # 20 % left (used >= 0.8): 0.8 / 0.0047222 = 169.4 -> the 170th step, at 1700 s
    # 10 % left (used >= 0.9): 190.6 -> 191st, at 1910 s; exhausted (used >= 1.0): 211.8 -> 212th, at 2120 s
    out = run(m, "a", "301", T9, T9 + 2400)
    warnings = [w for w in out if isinstance(w, QuotaWarning)]
    assert [(w.share_left, w.ts - T9) for w in warnings] == [(0.2, 1700.0), (0.1, 1910.0), (0.0, 2120.0)]
    assert warnings[0].balance_kwh == pytest.approx(1.0 - 170 * 1.7 * 10 / 3600)
    assert m.exhausted("301")
    balance = m.balance("301")
    assert balance is not None
    assert balance == pytest.approx(1.0 - 1.7 * 2400 / 3600)     # overdrawn while it keeps running
    # a top-up of 1 kWh: credit 2.0, balance 1.0 - 1.1333 + 1.0 = 0.8667 > 20 % of 2.0: all levels re-armed
    assert m.top_up("301", 1.0) == pytest.approx(2.0 - 1.7 * 2400 / 3600)
    assert not m.exhausted("301")
    # 20 % of 2.0 = 0.4 left: used 1.6 of 2.0; 1.6 - 1.1333 = 0.4667 more = 98.8 steps -> 99 steps, at 2400 + 990
    out = run(m, "a", "301", T9 + 2410, T9 + 3600)
    assert [(w.share_left, w.ts - T9) for w in out if isinstance(w, QuotaWarning)] == [(0.2, 3390.0)]
    st = m.as_status()["rooms"]["301"]
    assert st["quota_kwh"] == 2.0
    assert st["exhausted"] is False


def test_top_up_keeps_levels_still_passed() -> None:
    m = UsageMeter(TPE, warn_shares=(0.5,))
    m.set_quota("301", 1.0)
    run(m, "a", "301", T9, T9 + 1900, rated_kw=3.6)               # 0.001 kWh/s: used 1.9, balance -0.9
    m.top_up("301", 0.2)                                          # credit 1.2, balance -0.7: still passed
    assert run(m, "a", "301", T9 + 1910, T9 + 1950, rated_kw=3.6) == []
    with pytest.raises(ValueError, match="no quota"):
        m.top_up("302", 1.0)
    with pytest.raises(ValueError, match="quota of room 301"):
        m.set_quota("301", 0.0)
    m.clear_quota("301")
    assert not m.exhausted("301")


def test_a_new_quota_starts_from_zero_used() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 1800)
    m.set_quota("301", 2.0)
    assert m.balance("301") == 2.0
    run(m, "a", "301", T9 + 1810, T9 + 3600)
    assert m.balance("301") == pytest.approx(2.0 - 0.85)


# -- restore ------------------------------------------------------------------------------------------
def test_restore_continues_as_if_never_stopped() -> None:
    ref, m = UsageMeter(TPE), UsageMeter(TPE)
    midnight = datetime(2026, 6, 17, 0, 0, tzinfo=TPE).timestamp()
    for x in (ref, m):
        x.set_quota("301", 1.0)
    run(ref, "a", "301", midnight - 3600, midnight + 1800)
    run(m, "a", "301", midnight - 3600, midnight - 60)
    m2 = UsageMeter(TPE)
    m2.restore(json.loads(json.dumps(m.snapshot())))
    closed = run(m2, "a", "301", midnight - 50, midnight + 1800)
    assert [(d.day, round(d.kwh, 6)) for d in closed if isinstance(d, DayUsage)] == [(date(2026, 6, 16), 1.7)]
    assert m2.today("301") == ref.today("301")
    assert m2.month("301").kwh == pytest.approx(ref.month("301").kwh)
    assert m2.balance("301") == pytest.approx(ref.balance("301"))
    assert m2.exhausted("301") == ref.exhausted("301")
    assert m2.snapshot()["quotas"] == ref.snapshot()["quotas"]   # the same warnings given


def test_restore_rejects_a_damaged_snapshot() -> None:
    snap = UsageMeter(TPE).snapshot()
    snap["days"] = [["301", "not-a-day", 1.0, 1.0]]
    with pytest.raises(ValueError, match="damaged snapshot"):
        UsageMeter(TPE).restore(snap)
    with pytest.raises(ValueError, match="damaged snapshot"):
        UsageMeter(TPE).restore({"version": 1})


def test_quota_levels_at_their_exact_boundaries() -> None:
    m = UsageMeter(TPE, warn_shares=(0.25,))
    m.set_quota("301", 1.0)
    # 4.5 kW for 100 s = 0.125 kWh a step (exact in binary): 25 % left after 6 steps, 0 left after 8
    out = run(m, "a", "301", T9, T9 + 600, rated_kw=4.5, step_s=100.0)
    assert [(w.share_left, w.balance_kwh) for w in out if isinstance(w, QuotaWarning)] == [(0.25, 0.25)]
    assert not m.exhausted("301")
    out = run(m, "a", "301", T9 + 700, T9 + 800, rated_kw=4.5, step_s=100.0)
    assert [(w.share_left, w.balance_kwh) for w in out if isinstance(w, QuotaWarning)] == [(0.0, 0.0)]
    assert m.exhausted("301")                                    # exactly nothing left is exhausted


def test_a_feed_out_of_order_is_not_counted_twice() -> None:
    m = UsageMeter(TPE)
    m.feed(T9, "a", "301", True, None, 3.6)
    m.feed(T9 + 100, "a", "301", True, None, 3.6)
    m.feed(T9 + 50, "a", "301", True, None, 3.6)                 # older than the last: ignored
    m.feed(T9 + 200, "a", "301", True, None, 3.6)
    assert m.today("301").kwh == pytest.approx(0.2)              # 3.6 kW * 200 s

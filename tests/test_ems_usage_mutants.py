"""ems.usage: the rules that survived mutation testing (docs/mutation-results.md), each pinned by behaviour.

A closed day stays closed (late energy is counted apart), quotas are charged across midnight and warn
highest level first, a top-up exactly back to a level does not re-arm it, months beyond this one and the
last are dropped, a room without use today reads zero, the status and the quota event round to 4 decimals,
a snapshot restores today, the closed days, each unit's reported power and the warnings given, and the
error messages name what is wrong.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_ems_usage import run

from ems.usage import DayUsage, MonthUsage, QuotaWarning, UsageMeter

TPE = ZoneInfo("Asia/Taipei")
T9 = datetime(2026, 6, 16, 9, 0, tzinfo=TPE).timestamp()     # 09:00 local
MIDNIGHT = datetime(2026, 6, 17, 0, 0, tzinfo=TPE).timestamp()




def warnings(out: list[DayUsage | QuotaWarning]) -> list[QuotaWarning]:
    return [w for w in out if isinstance(w, QuotaWarning)]


def roundtrip(m: UsageMeter) -> UsageMeter:
    m2 = UsageMeter(m.tz, max_gap_s=m.max_gap_s)
    m2.restore(json.loads(json.dumps(m.snapshot())))
    return m2


# -- closed days ----------------------------------------------------------------------------------------------
def test_energy_that_arrives_for_a_closed_day_is_counted_apart_and_the_day_stays_closed() -> None:
    m = UsageMeter(TPE, max_gap_s=300.0)
    m.feed(MIDNIGHT - 100, "a", "301", True, None, 3.6)         # 3.6 kW: 0.001 kWh a second
    m.feed(MIDNIGHT - 50, "b", "301", True, None, 3.6)
    assert [(d.room, d.day) for d in m.close_days(MIDNIGHT + 300)] == [("301", date(2026, 6, 16))]
    # the units' next readings come from before the close: their last seconds of the 16th arrive late
    m.feed(MIDNIGHT + 100, "a", "301", True, None, 3.6)
    m.feed(MIDNIGHT + 50, "b", "301", True, None, 3.6)
    assert m.late_kwh == pytest.approx(0.1 + 0.05)
    today = m.today("301")
    assert (today.room, today.day) == ("301", date(2026, 6, 17))
    assert today.kwh == pytest.approx(0.1 + 0.05)
    assert today.run_h == pytest.approx(150 / 3600)
    # the 16th is never reported again; the 17th is, once
    closed = m.close_days(MIDNIGHT + 86_400 + 300)
    assert [(d.room, d.day) for d in closed] == [("301", date(2026, 6, 17))]


def test_days_close_one_after_another() -> None:
    m = UsageMeter(TPE)
    m.feed(T9, "a", "301", True, None, 1.7)
    closed = m.feed(T9 + 86_400, "a", "301", True, None, 1.7)
    assert [d.day for d in closed if isinstance(d, DayUsage)] == [date(2026, 6, 16)]
    closed = m.feed(T9 + 2 * 86_400, "a", "301", True, None, 1.7)
    assert closed == [DayUsage("301", date(2026, 6, 17), 0.0, 0.0)]


# -- what a feed counts ----------------------------------------------------------------------------------------
def test_a_reported_zero_power_counts_no_energy_but_run_time() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 1800, power_kw=0.0)
    assert m.today("301").kwh == 0.0
    assert m.today("301").run_h == pytest.approx(0.5)


def test_feeds_a_second_apart_are_integrated() -> None:
    m = UsageMeter(TPE)
    m.feed(T9, "a", "301", True, None, 3.6)
    m.feed(T9 + 1, "a", "301", True, None, 3.6)
    assert m.today("301").kwh == pytest.approx(0.001)


def test_a_unit_rated_at_zero_is_accepted_and_counts_its_run_time() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 360, rated_kw=0.0)
    assert m.today("301").kwh == 0.0
    assert m.today("301").run_h == pytest.approx(0.1)


# -- quotas ------------------------------------------------------------------------------------------------------
def test_a_quota_is_charged_for_both_sides_of_midnight() -> None:
    m = UsageMeter(TPE)
    m.set_quota("301", 1.0)
    m.feed(MIDNIGHT - 120, "a", "301", True, None, 3.6)
    m.feed(MIDNIGHT + 60, "a", "301", True, None, 3.6)           # 180 s at 0.001 kWh/s
    assert m.balance("301") == pytest.approx(1.0 - 0.18)


def test_a_warning_says_which_room_how_much_is_left_and_of_what() -> None:
    m = UsageMeter(TPE, warn_shares=(0.25,))
    m.set_quota("301", 1.0)
    out = run(m, "a", "301", T9, T9 + 600, rated_kw=4.5, step_s=100.0)   # 0.125 kWh a step
    assert warnings(out) == [QuotaWarning("301", 0.25, 0.25, 1.0, T9 + 600)]


def test_the_quota_event_rounds_to_four_decimals() -> None:
    w = QuotaWarning("301", 0.1, 0.123456, 1.234567, T9)
    assert w.as_event() == {"room": "301", "share_left": 0.1, "balance_kwh": 0.1235, "credit_kwh": 1.2346}


def test_levels_passed_at_once_warn_highest_first() -> None:
    m = UsageMeter(TPE, warn_shares=(0.1, 0.2))
    m.set_quota("301", 1.0)
    m.feed(T9, "a", "301", True, None, 12.0)
    out = m.feed(T9 + 300, "a", "301", True, None, 12.0)         # 1 kWh at once: every level
    assert [w.share_left for w in warnings(out)] == [0.2, 0.1, 0.0]


def test_a_top_up_exactly_back_to_a_level_does_not_rearm_it() -> None:
    m = UsageMeter(TPE, warn_shares=(0.5,))
    m.set_quota("301", 1.0)
    out = run(m, "a", "301", T9, T9 + 600, rated_kw=4.5, step_s=100.0)   # used 0.75: balance 0.25
    assert [w.share_left for w in warnings(out)] == [0.5]
    # credit 1.5, balance 0.75: exactly half again, not above it
    assert m.top_up("301", 0.5) == pytest.approx(0.75)
    assert warnings(run(m, "a", "301", T9 + 700, T9 + 700, rated_kw=4.5)) == []


def test_a_quota_cleared_twice_or_never_set_is_no_error() -> None:
    m = UsageMeter(TPE)
    m.clear_quota("301")
    m.set_quota("301", 1.0)
    m.clear_quota("301")
    m.clear_quota("301")
    assert m.balance("301") is None


# -- months ---------------------------------------------------------------------------------------------------------
def test_this_month_and_the_last_are_kept() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", datetime(2026, 5, 20, 10, 0, tzinfo=TPE).timestamp(),
        datetime(2026, 5, 20, 10, 10, tzinfo=TPE).timestamp())
    m.feed(datetime(2026, 6, 20, 10, 0, tzinfo=TPE).timestamp(), "a", "301", True, None, 1.7)
    june30 = datetime(2026, 6, 30, 23, 50, tzinfo=TPE).timestamp()
    run(m, "a", "301", june30, june30 + 1200)                    # 23:50 on the 30th to 00:10 on the 1st
    month = m.month("301")
    assert (month.room, month.month) == ("301", "2026-07")
    assert month.kwh == pytest.approx(1.7 / 6)
    assert month.run_h == pytest.approx(1 / 6)
    assert {mo for _r, mo, _k, _h in m.snapshot()["months"]} == {"2026-06", "2026-07"}


# -- reading --------------------------------------------------------------------------------------------------------
def test_a_room_without_use_reads_zero() -> None:
    m = UsageMeter(TPE)
    run(m, "a", "301", T9, T9 + 60)
    assert m.today("302") == DayUsage("302", date(2026, 6, 16), 0.0, 0.0)
    assert m.month("302") == MonthUsage("302", "2026-06", 0.0, 0.0)


@pytest.mark.parametrize("what", ["today", "month"])
def test_reading_before_any_feed_says_so(what: str) -> None:
    with pytest.raises(ValueError, match=f"^UsageMeter.{what}: nothing has been fed yet$"):
        getattr(UsageMeter(TPE), what)("301")


def test_the_status_rounds_to_four_decimals_and_says_which_room_is_exhausted() -> None:
    assert UsageMeter(TPE).as_status() == {"day": None, "rooms": {}}
    m = UsageMeter(TPE)
    m.set_quota("301", 1.23456)
    m.set_quota("302", 0.1)
    run(m, "a", "301", T9, T9 + 600)                             # 1.7 kW for 600 s = 0.28333 kWh
    run(m, "b", "302", T9, T9 + 200, rated_kw=3.6)               # 0.2 kWh of a 0.1 kWh quota
    assert m.as_status() == {"day": "2026-06-16", "month": "2026-06", "rooms": {
        "301": {"today_kwh": 0.2833, "today_run_h": 0.1667, "month_kwh": 0.2833, "month_run_h": 0.1667,
                "quota_kwh": 1.2346, "balance_kwh": 0.9512, "exhausted": False},
        "302": {"today_kwh": 0.2, "today_run_h": 0.0556, "month_kwh": 0.2, "month_run_h": 0.0556,
                "quota_kwh": 0.1, "balance_kwh": -0.1, "exhausted": True}}}


# -- snapshots --------------------------------------------------------------------------------------------------------
def test_a_fresh_meter_restores() -> None:
    m = roundtrip(UsageMeter(TPE))
    assert m.as_status() == {"day": None, "rooms": {}}
    run(m, "a", "301", T9, T9 + 360, rated_kw=3.6)
    assert m.today("301").kwh == pytest.approx(0.36)


def test_a_restore_keeps_today_and_the_closed_days() -> None:
    m = UsageMeter(TPE, max_gap_s=300.0)
    m.feed(MIDNIGHT - 100, "a", "301", True, None, 3.6)
    m.feed(MIDNIGHT + 10, "b", "302", True, None, 3.6)
    m.close_days(MIDNIGHT + 300)
    m2 = roundtrip(m)
    assert m2.today("302") == DayUsage("302", date(2026, 6, 17), 0.0, 0.0)
    m2.feed(MIDNIGHT + 100, "a", "301", True, None, 3.6)         # late for the closed 16th
    assert m2.late_kwh == pytest.approx(0.1)
    assert [d.day for d in m2.close_days(MIDNIGHT + 86_400 + 300)] == [date(2026, 6, 17)] * 2


def test_a_restore_keeps_each_units_reported_power() -> None:
    m = UsageMeter(TPE)
    m.feed(T9, "a", "301", True, 1.2, 1.7)
    m.feed(T9, "b", "302", True, None, 1.7)
    m2 = roundtrip(m)
    m2.feed(T9 + 300, "a", "301", True, 1.2, 1.7)
    assert m2.today("301").kwh == pytest.approx(0.1)             # 1.2 kW for 300 s, not the rated 1.7


def test_a_restore_keeps_the_warnings_given() -> None:
    m = UsageMeter(TPE, warn_shares=(0.5,))
    m.set_quota("301", 1.0)
    assert [w.share_left for w in warnings(run(m, "a", "301", T9, T9 + 500, rated_kw=4.5, step_s=100.0))] == [0.5]
    m2 = UsageMeter(TPE, warn_shares=(0.5,))
    m2.restore(json.loads(json.dumps(m.snapshot())))
    assert warnings(run(m2, "a", "301", T9 + 600, T9 + 600, rated_kw=4.5)) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 2}, "UsageMeter.restore: a damaged snapshot (ValueError: version 2 is not 1)"),
    ({"closed_through": None, "today": 5}, "UsageMeter.restore: a damaged snapshot (TypeError: "),
])
def test_a_damaged_snapshot_says_what_is_wrong(change: dict[str, Any], message: str) -> None:
    snap = {**UsageMeter(TPE).snapshot(), **change}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        UsageMeter(TPE).restore(snap)


def test_a_snapshot_without_its_units_names_the_missing_key() -> None:
    snap = UsageMeter(TPE).snapshot()
    del snap["units"]
    with pytest.raises(ValueError, match=re.escape("UsageMeter.restore: a damaged snapshot (KeyError: 'units')")):
        UsageMeter(TPE).restore(snap)


# -- bad input ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rated", "message"), [
    (-1.0, "UsageMeter: rated_kw of a must be a non-negative number, got -1.0"),
    (float("nan"), "UsageMeter: rated_kw of a must be a non-negative number, got nan"),
    (True, "UsageMeter: rated_kw of a must be a non-negative number, got True"),
])
def test_a_bad_rated_power_is_named(rated: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        UsageMeter(TPE).feed(T9, "a", "301", True, None, rated)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match=r"^UsageMeter: max_gap_s must be a positive number, got 0\.0$"):
        UsageMeter(TPE, max_gap_s=0.0)
    with pytest.raises(ValueError, match="warn_shares must lie strictly between 0 and 1"):
        UsageMeter(TPE, warn_shares=(0.2, 0.0))
    m = UsageMeter(TPE)
    m.set_quota("301", 1.0)
    with pytest.raises(ValueError, match=r"^UsageMeter: top-up of room 301 must be a positive number, got 0\.0$"):
        m.top_up("301", 0.0)

"""Schedule parsing and next-fire computation in the school's time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.clock import ManualClock
from edge.schedule import ScheduleRunner, next_fire, parse_days, parse_hhmm

TPE = ZoneInfo("Asia/Taipei")


def test_parse_days() -> None:
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("daily") == frozenset(range(7))
    with pytest.raises(ValueError, match=r"mon\.\.sun"):
        parse_days("weekdays")
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm("25:00")


def test_next_fire_skips_weekend_in_local_time() -> None:
    fri_evening = datetime(2026, 11, 27, 18, 0, tzinfo=TPE).timestamp()  # a Friday
    nxt = next_fire((7, 30), parse_days("mon-fri"), fri_evening, TPE)
    assert datetime.fromtimestamp(nxt, TPE) == datetime(2026, 11, 30, 7, 30, tzinfo=TPE)
    same_day = next_fire((19, 0), parse_days("mon-fri"), fri_evening, TPE)
    assert datetime.fromtimestamp(same_day, TPE).hour == 19


async def test_runner_fires_each_target_in_order() -> None:
    start = datetime(2026, 11, 27, 17, 0, tzinfo=TPE).timestamp()
    clock = ManualClock(start)
    fired: list[tuple[str, str, float]] = []

    async def fire(eid: str, target: str, fields: dict[str, object], hold_s: float | None) -> None:
        fired.append((eid, target, clock.time()))
        if len(fired) >= 3:
            raise SystemExit  # stop the endless runner

    runner = ScheduleRunner([("off", "17:30", "mon-fri", ["ac-1", "ac-2"], {"power_on": False}, 0),
                             ("on", "07:00", "mon-fri", ["ac-1"], {"power_on": True}, 30)], TPE, clock, fire)
    with pytest.raises(SystemExit):
        await runner.run()
    assert [(e, t) for e, t, _ in fired] == [("off", "ac-1"), ("off", "ac-2"), ("on", "ac-1")]
    assert datetime.fromtimestamp(fired[0][2], TPE).strftime("%a %H:%M") == "Fri 17:30"
    assert datetime.fromtimestamp(fired[2][2], TPE).strftime("%a %H:%M") == "Mon 07:00"

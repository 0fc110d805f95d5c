"""Schedule parsing and next-fire computation in the school's time zone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.core.clock import ManualClock
from edge.core.schedule import ScheduleRunner, next_fire, parse_days, parse_hhmm

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


async def test_entries_at_the_same_time_all_fire() -> None:
    clock = ManualClock(datetime(2026, 11, 27, 17, 0, tzinfo=TPE).timestamp())
    fired: list[str] = []

    async def fire(eid: str, target: str, fields: dict[str, object], hold_s: float | None) -> None:
        fired.append(f"{eid}:{target}")
        if len(fired) >= 4:
            raise SystemExit

    runner = ScheduleRunner([("acs-off", "17:30", "daily", ["ac-1"], {"power_on": False}, 0),
                             ("lights-off", "17:30", "daily", ["light-1"], {"on": False}, 0)], TPE, clock, fire)
    with pytest.raises(SystemExit):
        await runner.run()
    assert fired == ["acs-off:ac-1", "lights-off:light-1", "acs-off:ac-1", "lights-off:light-1"]


class JumpingClock(ManualClock):
    """Wall time that NTP corrects by `jump` seconds during the first sleep (a Pi without an RTC)."""

    def __init__(self, start: float, jump: float) -> None:
        super().__init__(start)
        self.jump = jump

    async def sleep(self, seconds: float) -> None:
        if self.jump:
            self.advance(self.jump)
            self.jump = 0.0
            return
        await super().sleep(seconds)


async def test_a_clock_jump_over_an_entry_skips_it_and_later_entries_keep_their_hour() -> None:
    start = datetime(2026, 11, 27, 7, 0, tzinfo=TPE).timestamp()  # stale boot time
    clock = JumpingClock(start, jump=4 * 3600)  # NTP: it is really 11:00
    fired: list[str] = []

    async def fire(eid: str, target: str, fields: dict[str, object], hold_s: float | None) -> None:
        fired.append(datetime.fromtimestamp(clock.time(), TPE).strftime("%H:%M"))
        raise SystemExit

    runner = ScheduleRunner([("morning", "07:30", "daily", ["ac-1"], {"power_on": True}, 0),
                             ("noon", "12:00", "daily", ["ac-1"], {"setpoint_c": 27}, 0)], TPE, clock, fire)
    with pytest.raises(SystemExit):
        await runner.run()
    assert fired == ["12:00"]

"""Time schedules: "all ACs off at 17:30 on school days", "corridor lights on 07:00-17:00".

An entry either *switches* (one-shot: the new state replaces what teachers and earlier defaults
asked for, and anyone may change it again afterwards) or *holds* for `hold_min` minutes at
schedule priority (above teachers, below facility staff and the EMS).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from edge.core.clock import Clock
from edge.core.model import Kind, writable

log = logging.getLogger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_days(text: str) -> frozenset[int]:
    """`mon-fri`, `sat,sun`, `daily`, `mon,wed-fri` -> weekday numbers (Monday = 0)."""
    text = text.strip().lower()
    if text in ("daily", "all", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if lo not in DAYS or (hi and hi not in DAYS):
            raise ValueError(f"days {text!r}: use mon..sun, ranges like mon-fri, or daily")
        a, b = DAYS.index(lo), DAYS.index(hi or lo)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(out)


def parse_hhmm(text: str) -> tuple[int, int]:
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r}: use HH:MM (24 h)")
    return int(m.group(1)), int(m.group(2))


def next_fire(at: tuple[int, int], days: frozenset[int], after: float, tz: ZoneInfo) -> float:
    """Unix time of the first `at` on one of `days` strictly after `after`, in local time `tz`."""
    local = datetime.fromtimestamp(after, tz)
    day: date = local.date()
    for _ in range(8):
        cand = datetime(day.year, day.month, day.day, at[0], at[1], tzinfo=tz)
        if cand.weekday() in days and cand.timestamp() > after:
            return cand.timestamp()
        day += timedelta(days=1)
    raise ValueError("no day selected")


def fields_for(kind: Kind, wanted: dict[str, object]) -> dict[str, object]:
    """What an entry's `set` means for a device of `kind`: `power_on` switches a light or fan too;
    fields a kind does not have are left out (a room's lights take no setpoint)."""
    fields = dict(wanted)
    if kind != Kind.AC and "power_on" in fields:
        fields["on"] = fields.pop("power_on")
    return {k: v for k, v in fields.items() if k in writable(kind)}


MAX_SLEEP_S = 60.0  # re-read the wall clock at least this often
LATE_GRACE_S = 300.0  # an entry this late (a clock jump) is skipped rather than fired

Fire = Callable[[str, str, dict[str, object], float | None], Awaitable[None]]


class ScheduleRunner:
    """Sleeps until the next entry is due and fires it through `fire(entry_id, target, fields, hold_s)`."""

    def __init__(self, entries: Iterable[tuple[str, str, str, list[str], dict[str, object], float]],
                 tz: ZoneInfo, clock: Clock, fire: Fire) -> None:
        self.entries = [(eid, parse_hhmm(at), parse_days(days), targets, fields, hold_min)
                        for eid, at, days, targets, fields, hold_min in entries]
        self.tz = tz
        self.clock = clock
        self.fire = fire
        self.fired = 0

    async def run(self) -> None:
        """Fire entries as they fall due, re-reading the wall clock at least every minute.

        A Pi without a real-time clock boots with a stale time that NTP later corrects: a long
        sleep computed before the correction would fire at the wrong hour. An entry found more
        than LATE_GRACE_S past its time (the clock jumped over it) is skipped, not fired late.
        """
        if not self.entries:
            return
        after = self.clock.time()
        while True:
            fires = [(next_fire(at, days, after, self.tz), i) for i, (_e, at, days, *_r) in enumerate(self.entries)]
            when = min(t for t, _ in fires)
            now = self.clock.time()
            while now < when and now >= after - MAX_SLEEP_S:
                await self.clock.sleep(min(MAX_SLEEP_S, when - now))
                now = self.clock.time()
            if now < when:  # the clock went back: plan again from the new time
                after = now
                continue
            if now - when > LATE_GRACE_S:
                log.warning("schedule: clock jumped past %s by %.0f s; skipping it", when, now - when)
            else:
                for t, i in fires:
                    if t == when:
                        await self._fire(i)
            after = max(when, now) if now - when > LATE_GRACE_S else when

    async def _fire(self, i: int) -> None:
        eid, _at, _days, targets, fields, hold_min = self.entries[i]
        log.info("schedule %s: %s -> %s", eid, fields, ", ".join(targets))
        for target in targets:
            await self.fire(eid, target, dict(fields), hold_min * 60 if hold_min else None)
        self.fired += 1

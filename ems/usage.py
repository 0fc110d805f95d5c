"""Each class's AC usage (issue 9 item 5): kWh and run hours per room, per local day and month, and an
optional prepaid quota per room. Pure and clock-free: the caller feeds each unit's readings with `now`.

Between two feeds of a unit, what the earlier feed said holds: if it reported power, energy is that
power times the interval (standby too), otherwise, if the unit was on, its rated power times the
interval; run time is the interval if it was on. An interval longer than `max_gap_s` (5 min by default)
is not integrated at all: the gateway did not see the unit, so it bills nothing it did not see. An
interval is split at local midnight; the days and months are those of the site's time zone.

A local day is closed once `max_gap_s` have passed after its midnight (no unit can add to it after
that): `feed` and `close_days` return its `DayUsage` records, one per room that had a unit fed that day.

A room's quota is a prepaid credit in kWh: `set_quota` starts one (used = 0), `top_up` adds to it, the
energy the room uses is charged as it is counted. A `QuotaWarning` is given once per level when the
balance falls to a share of the credit (`warn_shares`, 20 % and 10 % by default) and once at
exhaustion (share 0); a top-up that lifts the balance back above a level re-arms it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Final

SNAPSHOT_VERSION: Final = 1
MONTHS_KEPT: Final = 2      # month totals kept: this month and the last


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One room's AC use in one local day."""

    room: str
    day: date
    kwh: float
    run_h: float    # unit-hours: two units on for an hour are 2 h

    def as_event(self) -> dict[str, Any]:
        """The body of the `usage` event (CONTRACT.md section 3)."""
        return {"id": f"usage-{self.room}-{self.day.isoformat()}", "room": self.room, "day": self.day.isoformat(),
                "kwh": round(self.kwh, 4), "run_h": round(self.run_h, 4)}


@dataclass(frozen=True, slots=True)
class MonthUsage:
    room: str
    month: str      # "YYYY-MM", local
    kwh: float
    run_h: float


@dataclass(frozen=True, slots=True)
class QuotaWarning:
    """A room's prepaid balance fell to `share_left` of its credit (0.0: exhausted)."""

    room: str
    share_left: float
    balance_kwh: float
    credit_kwh: float
    ts: float

    def as_event(self) -> dict[str, Any]:
        return {"room": self.room, "share_left": self.share_left, "balance_kwh": round(self.balance_kwh, 4),
                "credit_kwh": round(self.credit_kwh, 4)}


@dataclass(slots=True)
class _Unit:
    room: str
    ts: float
    on: bool
    power_kw: float | None
    rated_kw: float


@dataclass(slots=True)
class _Quota:
    credit_kwh: float
    used_kwh: float = 0.0
    warned: set[float] = field(default_factory=set)   # levels given since they were last armed

    @property
    def balance_kwh(self) -> float:
        return self.credit_kwh - self.used_kwh


def _finite(name: str, v: float, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"UsageMeter: {name} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
    return float(v)


class UsageMeter:
    """Per-room AC kWh and run hours by local day and month, with optional prepaid quotas (module docstring)."""

    def __init__(self, tz: tzinfo, *, max_gap_s: float = 300.0, warn_shares: Iterable[float] = (0.2, 0.1)) -> None:
        self.tz = tz
        self.max_gap_s = _finite("max_gap_s", max_gap_s, positive=True)
        shares = sorted({float(s) for s in warn_shares}, reverse=True)
        if any(not 0 < s < 1 for s in shares):
            raise ValueError(f"UsageMeter: warn_shares must lie strictly between 0 and 1, got {shares}")
        self.warn_shares: tuple[float, ...] = (*shares, 0.0)
        self._units: dict[str, _Unit] = {}
        self._days: dict[tuple[str, date], list[float]] = {}      # open days: (room, day) -> [kwh, run_h]
        self._months: dict[tuple[str, str], list[float]] = {}     # (room, "YYYY-MM") -> [kwh, run_h]
        self._quotas: dict[str, _Quota] = {}
        self._today: date | None = None
        self._closed_through: date | None = None                  # days up to this one are closed
        self.late_kwh = 0.0                                       # energy that arrived for a closed day

    # -- feeding -----------------------------------------------------------------------------------
    def feed(self, now: float, unit_id: str, room: str, on: bool, power_kw: float | None,
             rated_kw: float) -> list[DayUsage | QuotaWarning]:
        """One reading of one AC unit; the days it closed and the quota warnings it caused."""
        if not math.isfinite(now):
            raise ValueError(f"UsageMeter.feed: now must be a finite unix time, got {now!r}")
        if not unit_id or not room:
            raise ValueError(f"UsageMeter.feed: unit_id and room must be non-empty, got {unit_id!r}, {room!r}")
        rated = _finite(f"rated_kw of {unit_id}", rated_kw)
        power = None if power_kw is None or not math.isfinite(power_kw) or power_kw < 0 else float(power_kw)
        out: list[DayUsage | QuotaWarning] = []
        prev = self._units.get(unit_id)
        if prev is not None and 0 < now - prev.ts <= self.max_gap_s:
            kw = prev.power_kw if prev.power_kw is not None else (prev.rated_kw if prev.on else 0.0)
            out += self._add(prev.room, prev.ts, now, kw, prev.on)
        if prev is None or now > prev.ts:
            self._units[unit_id] = _Unit(room, now, on, power, rated)
        self._touch(room, self._day_of(now))
        out += self.close_days(now)
        return out

    def _day_of(self, t: float) -> date:
        return datetime.fromtimestamp(t, self.tz).date()

    def _midnight_after(self, d: date) -> float:
        return datetime.combine(d + timedelta(days=1), time(0), tzinfo=self.tz).timestamp()

    def _touch(self, room: str, day: date) -> list[float] | None:
        if self._closed_through is not None and day <= self._closed_through:
            return None
        if self._today is None or day > self._today:
            self._today = day
        self._months.setdefault((room, day.strftime("%Y-%m")), [0.0, 0.0])
        return self._days.setdefault((room, day), [0.0, 0.0])

    def _add(self, room: str, t0: float, t1: float, kw: float, on: bool) -> list[DayUsage | QuotaWarning]:
        t = t0
        charged = 0.0
        while t < t1:
            day = self._day_of(t)
            end = min(t1, self._midnight_after(day))
            kwh, run_h = kw * (end - t) / 3600.0, (end - t) / 3600.0 if on else 0.0
            acc = self._touch(room, day)
            if acc is None:
                self.late_kwh += kwh
            else:
                acc[0] += kwh
                acc[1] += run_h
                month = self._months[(room, day.strftime("%Y-%m"))]
                month[0] += kwh
                month[1] += run_h
                charged += kwh
            t = end
        return list(self._charge(room, charged, t1))

    def _charge(self, room: str, kwh: float, now: float) -> list[QuotaWarning]:
        q = self._quotas.get(room)
        if q is None:
            return []
        q.used_kwh += kwh
        out = []
        for share in self.warn_shares:
            if share not in q.warned and q.balance_kwh <= share * q.credit_kwh:
                q.warned.add(share)
                out.append(QuotaWarning(room, share, q.balance_kwh, q.credit_kwh, now))
        return out

    def close_days(self, now: float) -> list[DayUsage]:
        """Close every day whose midnight is more than `max_gap_s` ago; their records, by day then room."""
        ready = sorted({d for _, d in self._days if self._midnight_after(d) + self.max_gap_s <= now})
        out = []
        for day in ready:
            for room, d in sorted(k for k in self._days if k[1] == day):
                kwh, run_h = self._days.pop((room, d))
                out.append(DayUsage(room, d, kwh, run_h))
            self._closed_through = day if self._closed_through is None else max(self._closed_through, day)
        if ready:
            self._prune_months()
        return out

    def _prune_months(self) -> None:
        keep = sorted({m for _, m in self._months}, reverse=True)[:MONTHS_KEPT]
        self._months = {k: v for k, v in self._months.items() if k[1] in keep}

    # -- reading -----------------------------------------------------------------------------------
    def today(self, room: str) -> DayUsage:
        """The room's use so far on the latest local day seen."""
        if self._today is None:
            raise ValueError("UsageMeter.today: nothing has been fed yet")
        kwh, run_h = self._days.get((room, self._today), (0.0, 0.0))
        return DayUsage(room, self._today, kwh, run_h)

    def month(self, room: str) -> MonthUsage:
        """The room's use so far in the latest local month seen."""
        if self._today is None:
            raise ValueError("UsageMeter.month: nothing has been fed yet")
        key = self._today.strftime("%Y-%m")
        kwh, run_h = self._months.get((room, key), (0.0, 0.0))
        return MonthUsage(room, key, kwh, run_h)

    def rooms(self) -> list[str]:
        return sorted({u.room for u in self._units.values()} | set(self._quotas))

    def as_status(self) -> dict[str, Any]:
        """Today's and this month's use per room, and each quota's balance, as JSON-able data."""
        if self._today is None:
            return {"day": None, "rooms": {}}
        rooms: dict[str, Any] = {}
        for room in self.rooms():
            d, m = self.today(room), self.month(room)
            entry: dict[str, Any] = {"today_kwh": round(d.kwh, 4), "today_run_h": round(d.run_h, 4),
                                     "month_kwh": round(m.kwh, 4), "month_run_h": round(m.run_h, 4)}
            if (q := self._quotas.get(room)) is not None:
                entry.update(quota_kwh=round(q.credit_kwh, 4), balance_kwh=round(q.balance_kwh, 4),
                             exhausted=self.exhausted(room))
            rooms[room] = entry
        return {"day": self._today.isoformat(), "month": self._today.strftime("%Y-%m"), "rooms": rooms}

    # -- quotas ------------------------------------------------------------------------------------
    def set_quota(self, room: str, kwh: float) -> None:
        """Start a prepaid credit of `kwh` for the room (what it used before does not count)."""
        self._quotas[room] = _Quota(_finite(f"quota of room {room}", kwh, positive=True))

    def clear_quota(self, room: str) -> None:
        self._quotas.pop(room, None)

    def top_up(self, room: str, kwh: float) -> float:
        """Add `kwh` to the room's credit; the new balance. Levels the balance is lifted above are re-armed."""
        q = self._quotas.get(room)
        if q is None:
            raise ValueError(f"UsageMeter.top_up: room {room!r} has no quota (set_quota first)")
        q.credit_kwh += _finite(f"top-up of room {room}", kwh, positive=True)
        q.warned = {s for s in q.warned if q.balance_kwh <= s * q.credit_kwh}
        return q.balance_kwh

    def balance(self, room: str) -> float | None:
        """The room's prepaid kWh left (negative once overdrawn); None without a quota."""
        q = self._quotas.get(room)
        return None if q is None else q.balance_kwh

    def exhausted(self, room: str) -> bool:
        """True when the room has a quota and nothing left of it (its teachers' starts are denied_by_quota)."""
        q = self._quotas.get(room)
        return q is not None and q.balance_kwh <= 0

    # -- persistence -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, as JSON-able data."""
        return {
            "version": SNAPSHOT_VERSION,
            "units": {u: [x.room, x.ts, x.on, x.power_kw, x.rated_kw] for u, x in self._units.items()},
            "days": [[r, d.isoformat(), v[0], v[1]] for (r, d), v in self._days.items()],
            "months": [[r, m, v[0], v[1]] for (r, m), v in self._months.items()],
            "quotas": {r: [q.credit_kwh, q.used_kwh, sorted(q.warned)] for r, q in self._quotas.items()},
            "today": None if self._today is None else self._today.isoformat(),
            "closed_through": None if self._closed_through is None else self._closed_through.isoformat(),
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Take a snapshot back (a damaged one raises ValueError and changes nothing)."""
        try:
            if data["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"version {data['version']!r} is not {SNAPSHOT_VERSION}")
            units = {str(u): _Unit(str(r), float(ts), bool(on), None if p is None else float(p), float(rk))
                     for u, (r, ts, on, p, rk) in data["units"].items()}
            days = {(str(r), date.fromisoformat(d)): [float(k), float(h)] for r, d, k, h in data["days"]}
            months = {(str(r), str(m)): [float(k), float(h)] for r, m, k, h in data["months"]}
            quotas = {str(r): _Quota(float(c), float(u), {float(s) for s in w})
                      for r, (c, u, w) in data["quotas"].items()}
            today = None if data["today"] is None else date.fromisoformat(data["today"])
            closed = None if data["closed_through"] is None else date.fromisoformat(data["closed_through"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"UsageMeter.restore: a damaged snapshot ({type(exc).__name__}: {exc})") from None
        self._units, self._days, self._months, self._quotas = units, days, months, quotas
        self._today, self._closed_through = today, closed

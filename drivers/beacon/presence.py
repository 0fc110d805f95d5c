"""Presence from beacon sightings: who arrived at a scanner and who left, without flapping.

Pure and clock-driven (the clock is injected; nothing here does I/O). Per beacon:

- RSSI is smoothed (an exponential moving average); a pass that starts after a gap longer than
  `window_s` starts the average afresh.
- **arrive**: `sightings` sightings within `window_s` whose smoothed RSSI is at least `enter_dbm`.
  One strong reading from a phone passing in the street is not an arrival (Home Assistant: "new
  beacons must be seen several times before they count").
- **stay**: once present, a sighting keeps the beacon present if its smoothed RSSI is at least
  `stay_dbm`, lower than `enter_dbm`: that gap is the hysteresis that keeps a beacon at the edge of
  the range from flapping.
- **depart**: no sighting that keeps it present for `away_s` (180 s by default, per beacon if
  configured), evaluated by `tick`.

Beacons not in `people` are ignored, or tracked with person None when `report_unknown` is set; at
most `max_unknown` of those are tracked at once, so a street full of strangers cannot grow memory.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.core.clock import Clock

RSSI_MIN_DBM = -126   # bleak reports -127 when BlueZ gave no RSSI; HCI's 127 means "not available"
RSSI_MAX_DBM = 20
MAX_UNKNOWN = 2048
SWEEP_S = 1.0         # the table of unknown beacons is swept of stale entries at most this often


@dataclass(frozen=True, slots=True)
class PresenceRules:
    enter_dbm: float = -80.0
    stay_dbm: float = -90.0
    smoothing: float = 0.3        # weight of a new reading in the moving average
    sightings: int = 3
    window_s: float = 10.0
    away_s: float = 180.0

    def __post_init__(self) -> None:
        if not self.stay_dbm <= self.enter_dbm:
            raise ValueError("stay_dbm must not be above enter_dbm (the hysteresis would be inverted)")
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        if self.sightings < 1 or self.window_s <= 0 or self.away_s <= 0:
            raise ValueError("sightings must be >= 1, window_s and away_s > 0")


@dataclass(frozen=True, slots=True)
class Change:
    beacon: str
    person: str | None
    change: Literal["arrive", "depart"]
    rssi: float                   # smoothed, dBm


@dataclass(slots=True)
class _Beacon:
    smoothed: float
    last_seen: float
    present: bool = False
    last_kept: float = -math.inf              # last sighting that kept (or made) it present
    recent: deque[float] = field(default_factory=deque)   # qualifying sightings while absent


class PresenceTracker:
    """Arrivals and departures of beacons at one scanner."""

    def __init__(self, clock: Clock, rules: PresenceRules | None = None, *, people: Mapping[str, str] | None = None,
                 report_unknown: bool = False, away_s: Mapping[str, float] | None = None,
                 max_unknown: int = MAX_UNKNOWN) -> None:
        self.clock = clock
        self.rules = rules or PresenceRules()
        self.people = dict(people or {})
        self.report_unknown = report_unknown
        self.away_s = dict(away_s or {})
        self.max_unknown = max_unknown
        self._beacons: dict[str, _Beacon] = {}
        self._unknown = 0
        self._swept = -math.inf
        self.ignored = 0          # sightings of beacons nobody asked about
        self.invalid = 0          # sightings without a usable RSSI
        self.dropped = 0          # unknown beacons not tracked because the table was full
        self.arrivals = 0
        self.departures = 0

    def away_for(self, beacon: str) -> float:
        return self.away_s.get(beacon, self.rules.away_s)

    def sight(self, beacon: str, rssi: float) -> Change | None:
        """A beacon was heard at `rssi` dBm now: its arrival, or None."""
        person = self.people.get(beacon)
        if person is None and not self.report_unknown:
            self.ignored += 1
            return None
        if not RSSI_MIN_DBM <= rssi <= RSSI_MAX_DBM:
            self.invalid += 1
            return None
        rules = self.rules
        now = self.clock.monotonic()
        b = self._beacons.get(beacon)
        if b is None:
            if person is None and not self._room_for_unknown(now):
                self.dropped += 1
                return None
            b = self._beacons[beacon] = _Beacon(rssi, now)
            self._unknown += person is None
        elif now - b.last_seen > rules.window_s:
            b.smoothed = rssi     # a new pass: readings from before the gap say nothing about it
        else:
            b.smoothed += rules.smoothing * (rssi - b.smoothed)
        b.last_seen = now
        if b.present:
            if b.smoothed >= rules.stay_dbm:
                b.last_kept = now
            return None
        if b.smoothed < rules.enter_dbm:
            return None
        recent = b.recent
        recent.append(now)
        while now - recent[0] > rules.window_s:
            recent.popleft()
        if len(recent) < rules.sightings:
            return None
        b.present, b.last_kept = True, now
        recent.clear()
        self.arrivals += 1
        return Change(beacon, person, "arrive", round(b.smoothed, 1))

    def tick(self) -> list[Change]:
        """Departures due now; forgets absent beacons not heard for a window."""
        now = self.clock.monotonic()
        out: list[Change] = []
        stale: list[str] = []
        for key, b in self._beacons.items():
            if b.present:
                if now - b.last_kept >= self.away_for(key):
                    b.present = False
                    self.departures += 1
                    out.append(Change(key, self.people.get(key), "depart", round(b.smoothed, 1)))
            elif now - b.last_seen > self.rules.window_s:
                stale.append(key)
        self._forget(stale)
        return out

    def grace(self) -> None:
        """The radio was deaf for a while: nobody is known to have left, so away time counts from now."""
        now = self.clock.monotonic()
        for b in self._beacons.values():
            if b.present:
                b.last_kept = max(b.last_kept, now)

    def present(self) -> dict[str, float]:
        """The beacons present now, with their smoothed RSSI."""
        return {k: b.smoothed for k, b in self._beacons.items() if b.present}

    def tracked(self) -> int:
        return len(self._beacons)

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            del self._beacons[key]
            self._unknown -= key not in self.people

    def _room_for_unknown(self, now: float) -> bool:
        if self._unknown < self.max_unknown:
            return True
        if now - self._swept < SWEEP_S:
            return False
        self._swept = now
        self._forget([k for k, b in self._beacons.items()
                      if not b.present and now - b.last_seen > self.rules.window_s])
        return self._unknown < self.max_unknown

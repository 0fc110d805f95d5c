"""Venue bookings, the pure part: the stored bookings -> which rooms are open now, for how long, and when to look again.

DOMAIN.md section 1: 30 minutes before a booking the room opens by itself, and when the booking
ends it closes at once. A booking holds its room open over [start - lead, end); the bookings of a
room whose intervals overlap or touch merge into one window (the doors do not relock in between).

Clock jumps (a Pi without a real-time clock boots on a stale time that NTP steps later; NTP steps
small errors at any time): a booking is open while `start - lead <= now < end` by the wall clock,
with a hysteresis of `STEP_GRACE_S` against steps back, so that a jump neither fires a transition
twice nor skips one:

- forward into a booking: it opens (late, but it opens); forward past its end: it ends (a booking
  jumped over entirely never opens: it is history);
- back by up to STEP_GRACE_S just after it opened: it stays open; just after it ended: it stays
  over (no relock-and-reopen, no reopen-and-relock);
- back by more: that was no small step but a clock that was wrong, and the doors follow the
  corrected time (a door opened two hours early by a clock two hours fast relocks, and opens again
  when the booking's time really comes).

Nothing of this is stored: after a restart in the middle of a booking the room opens again from
the wall clock alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.core.clock import Clock

log = logging.getLogger(__name__)

DOC_PREFIX = "cloud/bookings/"   # store key of a room's bookings (+ room id): {booking id: booking}
STEP_GRACE_S = 300.0             # a step back this small is a correction, not a reason to fire again

Key = tuple[str, str, float]     # (room, booking id, end): an edited end is another booking


def parse_time(text: str) -> float:
    """Unix seconds of an ISO 8601 date-time with offset; ValueError without one."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"{text!r} has no offset")
    return dt.timestamp()


@dataclass(frozen=True, slots=True)
class Booking:
    room: str
    id: str
    start: float
    end: float
    title: str = ""
    by: str | None = None

    @property
    def key(self) -> Key:
        return (self.room, self.id, self.end)


def from_document(room: str, doc: Any) -> list[Booking]:
    """The bookings of a room's stored document; an entry that does not parse is skipped (logged)."""
    out: list[Booking] = []
    if not isinstance(doc, Mapping):
        return out
    for bid, b in doc.items():
        try:
            start, end = parse_time(b["start"]), parse_time(b["end"])
            if end <= start:
                raise ValueError("end is not after start")
            out.append(Booking(room, str(bid), start, end, str(b.get("title") or ""), b.get("by")))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("booking %s of room %s skipped: %s", bid, room, exc)
    return out


@dataclass(frozen=True, slots=True)
class Window:
    """A room held open over [opens, ends): merged bookings."""

    room: str
    opens: float
    ends: float
    bookings: tuple[str, ...]


def merge(bookings: Iterable[Booking], lead_s: float) -> dict[str, list[Window]]:
    """Per room, the windows [start - lead, end) of `bookings`, overlapping or touching ones merged."""
    by_room: dict[str, list[Booking]] = {}
    for b in bookings:
        by_room.setdefault(b.room, []).append(b)
    out: dict[str, list[Window]] = {}
    for room, items in sorted(by_room.items()):
        windows: list[Window] = []
        for b in sorted(items, key=lambda x: (x.start - lead_s, x.end, x.id)):
            opens = b.start - lead_s
            if windows and opens <= windows[-1].ends:
                w = windows[-1]
                windows[-1] = Window(room, w.opens, max(w.ends, b.end), (*w.bookings, b.id))
            else:
                windows.append(Window(room, opens, b.end, (b.id,)))
        out[room] = windows
    return out


@dataclass(frozen=True, slots=True)
class Open:
    """A room that is open now: for `left_s` more seconds unless something changes, for these bookings."""

    left_s: float
    bookings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    now: float
    open: Mapping[str, Open]              # room -> why and how long it is open
    next_s: float                         # seconds until a booking may open or end (inf: none)
    windows: Mapping[str, list[Window]]   # what is still to come or going on, per room (status)


@dataclass
class Planner:
    """Bookings -> a `Plan` at the clock's time; remembers which bookings opened and which ended."""

    lead_s: float
    clock: Clock
    opened: set[Key] = field(default_factory=set)
    over: set[Key] = field(default_factory=set)

    def plan(self, bookings: Iterable[Booking]) -> Plan:
        now = self.clock.time()
        items = list(bookings)
        live: list[Booking] = []
        rooms: dict[str, tuple[float, list[str]]] = {}
        next_s = math.inf
        for b in items:
            k, opens = b.key, b.start - self.lead_s
            if k in self.over and now >= b.end - STEP_GRACE_S:
                continue
            self.over.discard(k)
            if now >= b.end:
                self.over.add(k)
                self.opened.discard(k)
                continue
            if k in self.opened and now < opens - STEP_GRACE_S:
                self.opened.discard(k)
            if now >= opens:
                self.opened.add(k)
            live.append(b)
            if k not in self.opened:
                next_s = min(next_s, opens - now)
                continue
            next_s = min(next_s, b.end - now)
            held, ids = rooms.get(b.room, (0.0, []))
            rooms[b.room] = (max(held, b.end - now), [*ids, b.id])
        stored = {b.key for b in items}
        self.opened &= stored   # a booking deleted from the store is forgotten
        self.over &= stored
        return Plan(now, {r: Open(left, tuple(sorted(ids))) for r, (left, ids) in sorted(rooms.items())},
                    next_s, merge(live, self.lead_s))

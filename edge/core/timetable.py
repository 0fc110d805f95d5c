"""A school's day: its periods, breaks, lunch and nap, and whether a class is in its room.

Data, not code: the energy manager switches off ACs in rooms the timetable says are empty (a
class at PE, after the last period), and the virtual school heats its rooms with the same day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PUPIL_ACTIVE_W = 50.0   # sensible heat per pupil (DOMAIN.md section 5: 40-55 W; a child ~75 % of an adult's 70 W)
PUPIL_RESTING_W = 40.0  # the after-lunch nap


@dataclass(frozen=True, slots=True)
class Slot:
    """A part of the school day, in minutes after midnight, with the share of the class present."""

    start_min: int
    end_min: int
    name: str
    presence: float
    watts_per_pupil: float = PUPIL_ACTIVE_W
    lesson: bool = False


def _hm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


# A typical New Taipei elementary timetable: 40-minute periods, 10-minute breaks, a 20-minute
# break after period 2, lunch and nap in the classroom.
ELEMENTARY_DAY: tuple[Slot, ...] = (
    Slot(_hm("07:30"), _hm("07:50"), "arrival", 0.6),
    Slot(_hm("07:50"), _hm("08:40"), "morning", 0.95),
    Slot(_hm("08:40"), _hm("09:20"), "period 1", 1.0, lesson=True),
    Slot(_hm("09:20"), _hm("09:30"), "break", 0.5),
    Slot(_hm("09:30"), _hm("10:10"), "period 2", 1.0, lesson=True),
    Slot(_hm("10:10"), _hm("10:30"), "long break", 0.3),
    Slot(_hm("10:30"), _hm("11:10"), "period 3", 1.0, lesson=True),
    Slot(_hm("11:10"), _hm("11:20"), "break", 0.5),
    Slot(_hm("11:20"), _hm("12:00"), "period 4", 1.0, lesson=True),
    Slot(_hm("12:00"), _hm("12:40"), "lunch", 1.0),
    Slot(_hm("12:40"), _hm("13:20"), "nap", 1.0, watts_per_pupil=PUPIL_RESTING_W),
    Slot(_hm("13:30"), _hm("14:10"), "period 5", 1.0, lesson=True),
    Slot(_hm("14:10"), _hm("14:20"), "break", 0.5),
    Slot(_hm("14:20"), _hm("15:00"), "period 6", 1.0, lesson=True),
    Slot(_hm("15:00"), _hm("15:10"), "break", 0.5),
    Slot(_hm("15:10"), _hm("15:50"), "period 7", 1.0, lesson=True),
    Slot(_hm("15:50"), _hm("16:10"), "leaving", 0.4),
)
SCHOOL_DAYS = frozenset(range(5))  # Monday..Friday


def slot_at(local: datetime, day: tuple[Slot, ...] = ELEMENTARY_DAY) -> Slot | None:
    """The timetable slot at local time `local`, or None outside school hours."""
    if local.weekday() not in SCHOOL_DAYS:
        return None
    minute = local.hour * 60 + local.minute
    for slot in day:
        if slot.start_min <= minute < slot.end_min:
            return slot
    return None


def lesson_number(slot: Slot) -> int | None:
    """1..7 for a lesson, None for a break, lunch or nap."""
    return int(slot.name.split()[-1]) if slot.lesson else None


def back_at(local: datetime, away: frozenset[int] = frozenset(), *, lunch_in_room: bool = True) -> datetime | None:
    """When the class is next (mostly) in its room today, from `local` on; None if not again today."""
    if local.weekday() not in SCHOOL_DAYS:
        return None
    minute = local.hour * 60 + local.minute
    for slot in ELEMENTARY_DAY:
        if slot.start_min <= minute:
            continue
        start = local.replace(hour=slot.start_min // 60, minute=slot.start_min % 60, second=0, microsecond=0)
        if occupied(start, away, lunch_in_room=lunch_in_room):
            return start
    return None


def occupied(local: datetime, away: frozenset[int] = frozenset(), *, lunch_in_room: bool = True) -> bool:
    """True while the class is (mostly) in the room: not out of school hours, not at a lesson it spends
    elsewhere (`away`: PE, music), not at lunch where the school eats elsewhere."""
    slot = slot_at(local)
    if slot is None:
        return False
    if slot.name == "lunch" and not lunch_in_room:
        return False
    if slot.lesson and lesson_number(slot) in away:
        return False
    return slot.presence >= 0.5

"""Elementary-school day for the virtual school: when pupils are in the classroom and how much heat
they give off. The day itself is the core's (`edge.core.timetable`): the gateway reads the same one."""

from __future__ import annotations

import random
from datetime import datetime

from edge.core.timetable import (
    ELEMENTARY_DAY,
    PUPIL_ACTIVE_W,
    PUPIL_RESTING_W,
    SCHOOL_DAYS,
    Slot,
    lesson_number,
    occupied,
    slot_at,
)

__all__ = ["ELEMENTARY_DAY", "PUPIL_ACTIVE_W", "PUPIL_RESTING_W", "SCHOOL_DAYS", "Slot", "away_lessons", "occupied",
           "pupil_heat_w", "slot_at"]


def away_lessons(seed: int, room_key: str, day_of_year: int) -> frozenset[int]:
    """Lesson numbers (1..7) a class spends elsewhere (PE, music, library): deterministic per room and day."""
    rng = random.Random(f"{seed}/{room_key}/{day_of_year}")
    return frozenset(n for n in range(1, 8) if rng.random() < 0.2)


def pupil_heat_w(local: datetime, pupils: int, away: frozenset[int]) -> float:
    """Sensible heat of the class in its room at `local`."""
    slot = slot_at(local)
    if slot is None:
        return 0.0
    if slot.lesson and lesson_number(slot) in away:
        return 0.0
    return pupils * slot.presence * slot.watts_per_pupil

"""The teachers of the bench school: one per class, each with a seeded random stream of their own.

A teacher whose class is in and whose room is above `on_above_c` reaches for the app after a short
delay (uniform, mean `reaction_s`) and asks to switch the room's units on with a setpoint from
`setpoint_choices_c`; each unit's ask goes the daemon's one way in (`Desk.ask`: the controller's
admission, then the arbiter); a refused unit is asked for again after about `retry_s` (±20 %). A unit
the energy manager switched off in an empty room (a baseline, not a hold) is no longer the teacher's:
back in a hot room, the teacher asks again. While on, the teacher changes the setpoint now and
then (`override_per_h`, a Poisson process). When the class leaves for a whole lesson elsewhere (PE,
music) or at the end of the day, the teacher switches the units off, unless they forget
(`forget_share`): then the units run on in the empty room, which is what an energy manager's
`switch_off` is for. Units found on (pre-cooled by the energy manager) are not asked for again, and
are switched off with the others. Short breaks, lunch and the gap before the afternoon keep the units on.

Every draw comes from a stream of its own (setpoint, reaction, overrides, forgetting, retries), so
the teachers choose the same setpoints and react as fast whichever controller runs; only the retries
depend on what the controller refused.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ems.bench.sim import BenchSchool
from ems.scenario import Teachers as TeacherModel

RETRY_JITTER = 0.2


class Desk(Protocol):
    """The app's way in for a teacher: the daemon's one way in (validation, admission, the arbiter)."""

    async def ask(self, unit: str, fields: Mapping[str, object]) -> bool:
        """Ask for `fields` on `unit` as the teacher; True when granted."""
        ...

    def wanted_on(self, unit: str) -> bool:
        """Whether the sources below the energy manager still want `unit` on (a schedule may have switched it off)."""
        ...


@dataclass
class _Teacher:
    room: str
    units: tuple[str, ...]
    streams: dict[str, random.Random]
    wished: dict[str, bool] = field(default_factory=dict)   # unit -> the teacher's standing request is "on"
    setpoint_c: float | None = None                         # of the present wish
    ask_at: float | None = None                             # the next attempt to switch on
    refused: bool = False                                   # asked since the wish arose and refused for a unit
    next_override: float | None = None
    was_in: bool = False
    on_now: dict[str, bool] = field(default_factory=dict)   # unit -> the sources below the EMS want it on

    def any_on(self) -> bool:
        return any(self.wished.get(u, False) for u in self.units)

    def missing(self) -> list[str]:
        """Units to ask for: not asked for and not already on (pre-cooled, say)."""
        return [u for u in self.units if not self.wished.get(u, False) and not self.on_now.get(u, False)]


class Teachers:
    """All classes' teachers; `act(now)` once per control period."""

    def __init__(self, model: TeacherModel, school: BenchSchool, seed: int) -> None:
        self.model = model
        self.school = school
        self.asks = 0
        self.grants = 0
        self._t: dict[str, _Teacher] = {}
        for rid, room in school.rooms.items():
            if room.empty:
                continue
            streams = {k: random.Random(f"{seed}/teacher/{rid}/{k}")
                       for k in ("setpoint", "react", "override", "forget", "retry")}
            self._t[rid] = _Teacher(rid, room.units, streams)

    def wants_cooling(self, room: str) -> bool:
        """The teacher has asked for cooling (granted or refused) and not switched it off since."""
        t = self._t.get(room)
        return t is not None and (t.any_on() or t.refused)

    async def _ask(self, desk: Desk, unit: str, fields: Mapping[str, object]) -> bool:
        self.asks += 1
        ok = await desk.ask(unit, fields)
        self.grants += ok
        return ok

    async def act(self, now: float, desk: Desk) -> None:
        """Each teacher looks at the class and the room at `now` and acts."""
        for rid, t in self._t.items():
            t.on_now = {u: desk.wanted_on(u) for u in t.units}
            for u in t.units:   # a wish switched off by someone else (the energy manager's switch-off) is gone
                if t.wished.get(u) and not t.on_now[u]:
                    t.wished[u] = False
            inside = self.school.occupied(rid, now)
            if t.was_in and not inside:
                await self._class_left(now, t, desk)
            t.was_in = inside
            if inside:
                await self._class_in(now, t, desk)

    async def _class_left(self, now: float, t: _Teacher, desk: Desk) -> None:
        why = self.school.leaving_for(t.room, now)
        if why is None:
            return
        t.ask_at, t.refused, t.next_override = None, False, None
        running = [u for u in t.units if t.wished.get(u) or t.on_now.get(u)]   # pre-cooled ones too
        if not running or t.streams["forget"].random() < self.model.forget_share:
            return
        for u in running:
            if await self._ask(desk, u, {"power_on": False}):
                t.wished[u] = False
        if not t.any_on():
            t.setpoint_c = None

    async def _class_in(self, now: float, t: _Teacher, desk: Desk) -> None:
        m = self.model
        if t.missing():
            if not t.refused:
                if self.school.room_temp_c(t.room) <= m.on_above_c:
                    t.ask_at = None
                    return
                if t.ask_at is None:
                    t.ask_at = now + t.streams["react"].uniform(0.0, 2.0 * m.reaction_s)
            if t.ask_at is not None and now >= t.ask_at:
                await self._switch_on(now, t, desk)
        if t.next_override is not None and now >= t.next_override and t.any_on():
            await self._override(now, t, desk)

    async def _switch_on(self, now: float, t: _Teacher, desk: Desk) -> None:
        m = self.model
        if t.setpoint_c is None:
            t.setpoint_c = t.streams["setpoint"].choice(m.setpoint_choices_c)
        wish = {"power_on": True, "setpoint_c": t.setpoint_c}
        for u in t.missing():
            if await self._ask(desk, u, wish):
                t.wished[u] = True
        if t.missing():
            t.refused = True
            t.ask_at = now + m.retry_s * t.streams["retry"].uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
            return
        t.refused, t.ask_at = False, None
        if t.next_override is None:
            t.next_override = self._next_override(now, t)

    async def _override(self, now: float, t: _Teacher, desk: Desk) -> None:
        t.next_override = self._next_override(now, t)
        others = [c for c in self.model.setpoint_choices_c if c != t.setpoint_c]
        if not others:
            return
        new = t.streams["override"].choice(others)
        granted = False
        for u in t.units:
            if t.wished.get(u):
                granted |= await self._ask(desk, u, {"setpoint_c": new})
        if granted:
            t.setpoint_c = new

    def _next_override(self, now: float, t: _Teacher) -> float | None:
        rate = self.model.override_per_h
        return now + t.streams["override"].expovariate(rate / 3600.0) if rate > 0 else None

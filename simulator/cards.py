"""The virtual school's cards: a seeded roster of pupils, each school day's taps, and the bytes readers send.

Who: the pupils of every room that has a door (`kind: door` with `room:`), as many as the room's
`pupils`, named `S<room><nn>` (S10101 is the first pupil of room 101), each with a 125 kHz card
whose number is the site's facility code and a 16-bit number (24 bits: every framing carries it,
Wiegand 26 included), and the doors of their own room. The demo's app sends this roster as the
access list (`access_list`), so the simulator and the gateway agree on who is who.

What happens on a school day (Monday to Friday, the site's local time), from the config's readers:

- gate readers (`purpose: gate`): each pupil taps in between 07:20 and 07:50 (most around 07:40)
  and out between 16:00 and 16:30; a few pupils are absent;
- door readers (`purpose: door`): from 07:52 every 10 minutes until 16:00, a pupil of the door's
  room taps (let in), a minute later a card nobody issued (refused: unknown card), a minute after
  that a pupil of another room (refused: not for this door);
- health readers (`purpose: health`): a pupil visits the health centre at 08:05 and every 50 minutes
  until 15:30.

Everything is drawn from `simulation.seed` and the date, so a day replays the same. The frame
encoders mirror `drivers.rfid.framing`'s (the simulator does not import the drivers: see
tests/test_layers.py); tests/test_simulator_cards.py decodes them with the real decoders.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from drivers.rfid.framing import frame as encode
from drivers.rfid.framing import rdm6300_frame
from edge.core.config import Config, RelayChannel, RfidReader
from edge.core.model import Kind

Framing = Literal["rdm6300", "wiegand26", "wiegand34", "line"]
What = Literal["arrival", "departure", "door", "health"]

FACILITY: Final = 213                      # the school's facility code: the high 8 bits of every card
UNKNOWN_CARD: Final = (99 << 16) | 4242    # a card nobody issued (another school's)
ABSENT_SHARE: Final = 0.03
ARRIVE_FROM, ARRIVE_PEAK, ARRIVE_TO = time(7, 20), time(7, 40), time(7, 50)
LEAVE_FROM, LEAVE_TO = time(16, 0), time(16, 30)
DOOR_FROM, DOOR_UNTIL = time(7, 52), time(16, 0)
DOOR_EVERY_S: Final = 600.0
HEALTH_FROM, HEALTH_UNTIL = time(8, 5), time(15, 30)
HEALTH_EVERY_S: Final = 3000.0
RDM6300_VERSION: Final = 0x1A
RDM6300_HELD: Final = 2                    # frames per tap: an RDM6300 repeats while the card is held


@dataclass(frozen=True, slots=True)
class Pupil:
    person: str                   # S10101
    room: str
    card: int                     # the card number (the decimal string of it is the card id in events)
    doors: tuple[str, ...]        # the doors of their room: what the access list lets them open


@dataclass(frozen=True, slots=True)
class Tap:
    """A card shown at a reader at `ts` (unix seconds of simulated time)."""

    ts: float
    reader: str
    card: int
    person: str | None
    what: What


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One simulated school day: the taps in time order, and who is on site from when to when."""

    day: date
    taps: tuple[Tap, ...]
    on_site: Mapping[str, tuple[float, float]]   # person -> (arrives, leaves), unix seconds


@dataclass(frozen=True, slots=True)
class Roster:
    """The pupils and the readers whose taps the virtual school plays."""

    pupils: tuple[Pupil, ...]
    gates: tuple[str, ...]
    doors: Mapping[str, str]      # door reader -> its door
    health: tuple[str, ...]
    tz: ZoneInfo
    seed: int


def roster(cfg: Config, readers: list[RfidReader] | None = None) -> Roster:
    """The config's pupils (rooms with doors) and `readers` (default: every RFID reader of the config)."""
    doors: dict[str, list[str]] = {}
    for ch in cfg.devices:
        if isinstance(ch, RelayChannel) and ch.kind == Kind.DOOR and ch.room is not None:
            doors.setdefault(ch.room, []).append(ch.id)
    rng = random.Random(f"{cfg.simulation.seed}:cards")
    rooms = [r for r in cfg.rooms if r.id in doors and r.pupils > 0]
    numbers = rng.sample(range(1, 1 << 16), sum(r.pupils for r in rooms))
    pupils: list[Pupil] = []
    for room in rooms:
        for i in range(room.pupils):
            pupils.append(Pupil(f"S{room.id}{i + 1:02d}", room.id, FACILITY << 16 | numbers[len(pupils)],
                                tuple(doors[room.id])))
    rs = [d for d in cfg.devices if isinstance(d, RfidReader)] if readers is None else readers
    return Roster(tuple(pupils), tuple(r.id for r in rs if r.purpose == "gate"),
                  {r.id: r.door for r in rs if r.purpose == "door" and r.door is not None},
                  tuple(r.id for r in rs if r.purpose == "health"), ZoneInfo(cfg.site.timezone), cfg.simulation.seed)


def access_list(pupils: tuple[Pupil, ...], version: int, valid_until: date | None = None) -> dict[str, Any]:
    """The `access.put` params that let each pupil through the doors of their room (any time)."""
    cards: list[dict[str, Any]] = []
    for p in pupils:
        entry: dict[str, Any] = {"card": str(p.card), "person": p.person, "doors": list(p.doors)}
        if valid_until is not None:
            entry["valid_until"] = valid_until.isoformat()
        cards.append(entry)
    return {"version": version, "cards": cards}


# -- a day ------------------------------------------------------------------------------------------
def _at(day: date, t: time, tz: ZoneInfo) -> float:
    return datetime.combine(day, t, tzinfo=tz).timestamp()


def day_plan(r: Roster, day: date) -> DayPlan:
    """The taps of `day` (none on a Saturday or Sunday) and who is on site when."""
    if day.weekday() >= 5:
        return DayPlan(day, (), {})
    rng = random.Random(f"{r.seed}:{day.isoformat()}")
    arrive0, peak, arrive1 = (_at(day, t, r.tz) for t in (ARRIVE_FROM, ARRIVE_PEAK, ARRIVE_TO))
    leave0, leave1 = _at(day, LEAVE_FROM, r.tz), _at(day, LEAVE_TO, r.tz)
    taps: list[Tap] = []
    on_site: dict[str, tuple[float, float]] = {}
    for i, p in enumerate(r.pupils):
        if rng.random() < ABSENT_SHARE:
            continue
        arrives, leaves = rng.triangular(arrive0, arrive1, peak), rng.uniform(leave0, leave1)
        on_site[p.person] = (arrives, leaves)
        if r.gates:
            gate = r.gates[i % len(r.gates)]
            taps += [Tap(arrives, gate, p.card, p.person, "arrival"), Tap(leaves, gate, p.card, p.person, "departure")]
    here = [p for p in r.pupils if p.person in on_site]
    door_end = _at(day, DOOR_UNTIL, r.tz)
    for reader, door in sorted(r.doors.items()):
        ts = _at(day, DOOR_FROM, r.tz)
        allowed = [p for p in here if door in p.doors]
        others = [p for p in here if door not in p.doors]
        while ts < door_end:
            if allowed:
                p = rng.choice(allowed)
                taps.append(Tap(ts, reader, p.card, p.person, "door"))
            taps.append(Tap(ts + 60, reader, UNKNOWN_CARD, None, "door"))
            if others:
                p = rng.choice(others)
                taps.append(Tap(ts + 120, reader, p.card, p.person, "door"))
            ts += DOOR_EVERY_S
    health_end = _at(day, HEALTH_UNTIL, r.tz)
    for reader in r.health:
        ts = _at(day, HEALTH_FROM, r.tz)
        while ts < health_end and here:
            p = rng.choice(here)
            taps.append(Tap(ts, reader, p.card, p.person, "health"))
            ts += HEALTH_EVERY_S
    taps.sort(key=lambda t: (t.ts, t.reader))
    return DayPlan(day, tuple(taps), on_site)


class Days:
    """Day plans by date, built when first asked (a plan is a pure function of the roster and the day)."""

    def __init__(self, r: Roster) -> None:
        self.roster = r
        self.people = frozenset(p.person for p in r.pupils)
        self._plans: dict[date, DayPlan] = {}

    def local_day(self, ts: float) -> date:
        return datetime.fromtimestamp(ts, self.roster.tz).date()

    def plan(self, day: date) -> DayPlan:
        plan = self._plans.get(day)
        if plan is None:
            if len(self._plans) > 3:   # a long run keeps only the days around now
                self._plans = {d: p for d, p in self._plans.items() if abs((d - day).days) <= 1}
            plan = self._plans[day] = day_plan(self.roster, day)
        return plan


class TapPlayer:
    """The taps due as simulated time passes: `due(now)` returns those after the previous call (or `start`)."""

    def __init__(self, days: Days, start: float) -> None:
        self.days = days
        self._from = start
        self._day = days.local_day(start)
        self._queue: deque[Tap] = deque(days.plan(self._day).taps)

    def due(self, now: float) -> list[Tap]:
        out: list[Tap] = []
        while True:
            while self._queue and self._queue[0].ts <= now:
                tap = self._queue.popleft()
                if tap.ts > self._from:
                    out.append(tap)
            next_day = self._day + timedelta(days=1)
            if self._queue or _at(next_day, time(0), self.days.roster.tz) > now:
                break
            self._day = next_day
            self._queue = deque(self.days.plan(next_day).taps)
        return out


# -- the bytes on the line: the reader driver's own encoders ------------------------------------------
def frame(framing: Framing, card: int) -> bytes:
    """What a reader of `framing` sends for one tap of `card` (an RDM6300 repeats while the card is held)."""
    if framing == "rdm6300":
        return rdm6300_frame(card, RDM6300_VERSION) * RDM6300_HELD
    return encode(framing, card)

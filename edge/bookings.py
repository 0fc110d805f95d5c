"""Venue bookings, the service: a booked room's doors open `bookings.lead_s` before the start and relock at the end.

The bookings are the cloud's `booking.put {id, start, end, title?, by?}` on a room and
`booking.delete {id}`, stored by `cloud_sync.dispatch` (one document per room, `edge.core.bookings.DOC_PREFIX`).
The doors of a room are the door channels that name it (`room:`). Which rooms are open, for how
long, and how clock jumps are met is `edge.core.bookings.Planner`'s (pure, clock-injected).

How a door is held open: bookings are a control source (`Source.BOOKING`: below facility staff,
the EMS and safety, above schedules and teachers) and ask through the one entry like everyone else.
An open room's doors get a hardware-timed pulse (`Control.pulse`, `bookings.pulse_s`, 60 s by
default) renewed every `renew_s` (20 s) and never longer than the time the booking has left, so a
gateway that dies leaves its doors to relock by themselves within one pulse, and at the latest at
the booking's end. A facility, EMS or safety hold that keeps a door shut (a lockdown) vetoes the
pulses; they resume when it ends. When the room closes (its end, a delete, a clock jump past the
end) the doors relock at once (`Control.lock`: the channel is written off, which ends the pulse,
and no hold is kept that would veto later unlocks). That relock also ends an unlock someone else
gave the door just before. When the gateway stops, nothing is relocked: a restart (an upgrade)
does not lock people out, and a stopped gateway's doors relock within one pulse anyway.

The loop turns at the next booking transition, at the next renewal, when a booking changes (the
dispatcher publishes on the bus topic "bookings"), and at least every `RECHECK_S` to re-read the
wall clock (a long sleep computed before an NTP step would miss the step).

With `bookings.precool` the room's ACs are also asked on (mode cool) for the open window, at
booking priority: the energy manager's admission hook may refuse (the service asks again at the
next turns), a facility or EMS hold wins, the compressor's minimum off time applies. At the end the
request is released, and a unit that was off before is switched off again unless someone else
asked for it to run.

Who may do what (decided here, enforced by `cloud_sync.dispatch`, tested in tests/test_bookings_dispatch.py):

- A teacher puts bookings only in their own rooms (the verifier checks the token's `rooms`) and
  only as themself: `by` is the token's `sub` (a `by` naming someone else is forbidden; left out,
  it is the `sub`), stored with the booking. A teacher replaces, moves or deletes only their own
  bookings (stored `by` = `sub`), also in their own room: a colleague's booking is not theirs to
  cancel (until now any teacher of the room could delete any booking in it). Facility staff and
  admins put, replace and delete any booking, also on someone's behalf (`by` names the owner).
- A booking id is the site's: a put of an existing id in another room moves the booking.
- Refused as bad_request: a room without doors, an end that is not in the future (the verifier
  refuses an end before the start).
- door.unlock: a teacher's unlock lets people through and no more: at most
  `control.teacher_max_unlock_s` (10 s by default; facility staff and admins up to
  `control.max_unlock_s`, 600 s). A room opened for longer is a booking, which is owned, shown in
  `status`, relocked at its end and cancellable (the verifier and the control entry both apply the
  cap, by role and by source).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from edge.core.arbiter import Arbiter, Source
from edge.core.bookings import DOC_PREFIX, Booking, Plan, Planner, from_document
from edge.core.clock import Clock, iso
from edge.core.config import Config, ModbusDevice
from edge.core.control import Ask, Control
from edge.core.events import EventBus, Subscription
from edge.core.model import Kind
from edge.core.store import Store

log = logging.getLogger(__name__)

RECHECK_S = 60.0      # the wall clock is re-read at least this often (the schedules' MAX_SLEEP_S)
MIN_TURN_S = 0.05     # never turn faster than this (a transition that is due now is planned, not spun on)
PRECOOL = {"power_on": True, "mode": "cool"}


class Host(Protocol):
    """What the service needs of the daemon."""

    cfg: Config
    clock: Clock
    tz: ZoneInfo
    kinds: dict[str, Kind]
    store: Store
    bus: EventBus
    control: Control
    arbiter: Arbiter

    def actual(self, actuator: str) -> Mapping[str, Any]: ...


class BookingService:
    """Opens and relocks booked rooms' doors (see the module docstring); `status()` for the status API."""

    name = "bookings"

    def __init__(self, daemon: Host) -> None:
        self.daemon = daemon
        cfg = daemon.cfg
        self.settings = cfg.bookings
        self.clock = daemon.clock
        self.tz = daemon.tz
        self.doors: dict[str, list[str]] = {}
        for ch in cfg.relay_channels():
            if ch.kind == Kind.DOOR and ch.room is not None and ch.id in daemon.kinds:
                self.doors.setdefault(ch.room, []).append(ch.id)
        self.acs: dict[str, list[str]] = {}
        for dev in cfg.devices:
            if isinstance(dev, ModbusDevice) and dev.kind == Kind.AC and dev.room in self.doors:
                self.acs.setdefault(dev.room, []).append(dev.id)
        self.pulse_s = min(self.settings.pulse_s, cfg.control.max_unlock_s)
        self.renew_s = min(self.settings.renew_s, self.pulse_s / 2)
        if self.pulse_s < self.settings.pulse_s:
            log.warning("bookings: pulse_s %g s is above control.max_unlock_s: pulses of %g s, renewed every %g s",
                        self.settings.pulse_s, self.pulse_s, self.renew_s)
        self.planner = Planner(self.settings.lead_s, self.clock)
        self.plan: Plan | None = None
        self.bookings: list[Booking] = []
        self.held: set[str] = set()              # doors this service unlocked and has not relocked yet
        self.due: dict[str, float] = {}          # door of an open room -> monotonic time of its next pulse
        self.cooling: dict[str, tuple[float, bool]] = {}   # AC -> (wall time its hold ends, was on before)
        self.last: dict[str, str] = {}           # device -> last outcome (status; a failure is logged once)
        self.turns = 0
        self._sub: Subscription | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_daemon(cls, daemon: Host) -> BookingService | None:
        """The service, or None for a site without a door in a room (nothing to book)."""
        service = cls(daemon)
        return service if service.doors else None

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> BookingService:
        self._sub = self.daemon.bus.subscribe("bookings", maxsize=1000, name="bookings")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._task = self._tg.create_task(self._run(), name="bookings")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._tg is not None:
            await self._tg.__aexit__(None, None, None)
        if self._sub is not None:
            self.daemon.bus.unsubscribe(self._sub)

    async def _run(self) -> None:
        while True:
            try:
                delay = await self.step()
            except Exception:   # a bug in one turn must not end the bookings for good: logged, tried again
                log.exception("bookings: turn failed")
                delay = self.renew_s
            await self._wait(delay)

    async def _wait(self, delay: float) -> None:
        """Sleep `delay` seconds of the clock, or until a booking changes."""
        assert self._sub is not None
        queue = self._sub.queue
        if queue.empty():
            sleeper = asyncio.ensure_future(self.clock.sleep(delay))
            getter = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait({sleeper, getter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sleeper, getter):
                    t.cancel()
                await asyncio.gather(sleeper, getter, return_exceptions=True)
        while not queue.empty():
            queue.get_nowait()

    # -- one turn --------------------------------------------------------------------------------
    def load(self) -> list[Booking]:
        out: list[Booking] = []
        for room in self.doors:
            raw = self.daemon.store.get(DOC_PREFIX + room)
            try:
                doc = None if raw is None else json.loads(raw)
            except ValueError:
                log.warning("bookings of room %s: stored document does not parse; ignored", room)
                continue
            out += from_document(room, doc)
        return out

    async def step(self) -> float:
        """Plan at the clock's time and act on it; the seconds until the next turn."""
        self.turns += 1
        self.bookings = self.load()
        plan = self.plan = self.planner.plan(self.bookings)
        mono = self.clock.monotonic()
        for room, doors in self.doors.items():
            opened = plan.open.get(room)
            for door in doors:
                if opened is None:
                    self.due.pop(door, None)
                    if door in self.held:
                        await self._lock(door, room)
                elif mono >= self.due.get(door, -math.inf):
                    await self._pulse(door, opened.left_s, opened.bookings)
            if self.settings.precool:
                await self._precool(room, plan)
        mono = self.clock.monotonic()
        return max(MIN_TURN_S, min([plan.next_s, RECHECK_S, *(at - mono for at in self.due.values())]))

    async def _pulse(self, door: str, left_s: float, ids: tuple[str, ...]) -> None:
        seconds = round(max(1.0, min(self.pulse_s, left_s)), 1)
        out = await self.daemon.control.pulse(door, seconds, Source.BOOKING, "booking:" + ",".join(ids),
                                              announce=door not in self.held)
        # renewed, or (offline, a lockdown that vetoes it) asked again, at the next renewal time
        self.due[door] = self.clock.monotonic() + self.renew_s
        if out.ok:
            if door not in self.held:
                log.info("bookings: %s open for %s", door, ", ".join(ids))
            self.held.add(door)
            self._note(door, "open")
        else:
            self._note(door, f"{out.code}: {out.message}", failed=True)

    async def _lock(self, door: str, room: str) -> None:
        self.held.discard(door)
        out = await self.daemon.control.lock(door, Source.BOOKING, f"booking:{room}")
        if out.ok:
            log.info("bookings: %s relocked", door)
            self._note(door, "locked")
        else:   # its pulse was never longer than the booking: the board relocks it by itself
            self._note(door, f"relock {out.code}: {out.message}", failed=True)

    def _note(self, device: str, what: str, failed: bool = False) -> None:
        if failed and self.last.get(device) != what:
            log.warning("bookings: %s: %s", device, what)
        self.last[device] = what

    # -- pre-cooling -----------------------------------------------------------------------------
    async def _precool(self, room: str, plan: Plan) -> None:
        opened = plan.open.get(room)
        for ac in self.acs.get(room, []):
            have = self.cooling.get(ac)
            if opened is None:
                if have is not None:
                    await self._stop_cooling(ac, room, was_on=have[1])
                continue
            until = plan.now + opened.left_s
            if have is not None and have[0] >= until - 1.0:
                continue
            was_on = have[1] if have is not None else bool(self.daemon.actual(ac).get("power_on"))
            out = await self.daemon.control.ask(Ask(ac, PRECOOL, Source.BOOKING, "booking:" + ",".join(opened.bookings),
                                                    hold_s=max(1.0, opened.left_s)))
            if out.ok:
                self.cooling[ac] = (until, was_on)
                self._note(ac, "precool" + (f": {out.message}" if out.overridden_by or out.deferred_until else ""))
            else:
                self._note(ac, f"precool {out.code}: {out.message}", failed=True)

    async def _stop_cooling(self, ac: str, room: str, was_on: bool) -> None:
        del self.cooling[ac]
        who = f"booking:{room}"
        out = await self.daemon.control.release(ac, Source.BOOKING, who)
        now = self.clock.time()
        asked = any("power_on" in r.fields and (r.expires is None or r.expires > now)
                    for r in self.daemon.arbiter.requests(ac) if r.source > Source.RESTORE)
        if out.ok and not was_on and not asked:
            out = await self.daemon.control.baseline(ac, {"power_on": False}, who)
        self._note(ac, "precool ended" if out.ok else f"precool end {out.code}: {out.message}", failed=not out.ok)

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per room with doors: open or not, its doors and ACs with their last outcome, the windows to come."""
        plan = self.plan
        rooms: dict[str, Any] = {}
        for room, doors in self.doors.items():
            opened = plan.open.get(room) if plan else None
            rooms[room] = {
                "open": opened is not None,
                "until": None if opened is None or plan is None else iso(plan.now + opened.left_s, self.tz),
                "doors": {d: self.last.get(d) for d in doors},
                "windows": [{"opens": iso(w.opens, self.tz), "ends": iso(w.ends, self.tz), "bookings": list(w.bookings)}
                            for w in (plan.windows.get(room, []) if plan else [])],
                "bookings": [{"id": b.id, "title": b.title, "by": b.by, "start": iso(b.start, self.tz),
                              "end": iso(b.end, self.tz)} for b in sorted(self.bookings, key=lambda x: x.start)
                             if b.room == room],
            }
            if self.settings.precool:
                rooms[room]["acs"] = {a: self.last.get(a) for a in self.acs.get(room, [])}
        return {"lead_s": self.settings.lead_s, "pulse_s": self.pulse_s, "renew_s": self.renew_s, "rooms": rooms}

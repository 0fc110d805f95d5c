"""Venue bookings in the real daemon: the booking service, the simulator's Modbus relay board (door-401 in room
401), bookings put and deleted through the cloud dispatcher, and a wall clock the test can step (NTP)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.sites import channel, two_bus_school

import edge.bookings
from cloud_sync.commands import VerifiedCommand
from cloud_sync.dispatch import Dispatcher
from edge.bookings import BookingService
from edge.core.arbiter import Request, Source
from edge.core.clock import SystemClock, iso
from edge.core.config import Config
from edge.core.events import Subscription
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(60)

TZ = ZoneInfo("Asia/Taipei")
START = 1_781_568_000.0   # 2026-06-16 08:00 +08:00, a Tuesday: the daemon's wall clock starts here
DOOR, RELAY = "door-401", "relay-1"   # channel 0 of relay-1
_ids = itertools.count(1)


class ShiftClock(SystemClock):
    """Real time (real sleeps), with a wall clock shifted to START that the test can step like NTP does."""

    def __init__(self, start: float = START) -> None:
        self.offset = start - time.time()

    def time(self) -> float:
        return time.time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


def site_config(tmp: Path, **bookings: Any) -> Config:
    """helpers.sites.two_bus_school, plus a door in room 101 (channel 2), a room without doors, `bookings`."""
    raw = two_bus_school(tmp, free_port())
    raw["devices"].append(channel("door-101", "door", 2, room="101"))
    raw["rooms"].append({"id": "102", "name": "儲藏室", "floor": 1})
    if bookings:
        raw["bookings"] = bookings
    return Config.model_validate(raw)


def door_open(school: VirtualSchool, channel_no: int = 0) -> bool:
    return school.relay(RELAY)[channel_no]


def command(action: str, target: str, params: dict[str, Any], *, role: str = "facility", sub: str = "F001",
            rooms: tuple[str, ...] | None = None) -> VerifiedCommand:
    """A command as the verifier hands it to the dispatcher (signature, audience, time and rooms checked)."""
    now = time.time()
    return VerifiedCommand(f"cmd-{next(_ids)}", action, target, params, sub, role,  # type: ignore[arg-type]
                           rooms if role != "teacher" or rooms else (target,), now, now + 60, "test-key")


def put(bid: str, room: str, start: float, end: float, **kw: Any) -> VerifiedCommand:
    params = {"id": bid, "start": iso(start, TZ), "end": iso(end, TZ)}
    for k in ("title", "by"):
        if k in kw:
            params[k] = kw.pop(k)
    return command("booking.put", room, params, **kw)


def delete(bid: str, room: str, **kw: Any) -> VerifiedCommand:
    return command("booking.delete", room, {"id": bid}, **kw)


class Site:
    def __init__(self, school: VirtualSchool, daemon: Daemon, clock: ShiftClock) -> None:
        self.school, self.daemon, self.clock = school, daemon, clock
        self.dispatcher = Dispatcher(daemon)
        self.events: Subscription = daemon.bus.subscribe("event", name="test")

    @property
    def service(self) -> BookingService:
        [svc] = [s for s in self.daemon.services if isinstance(s, BookingService)]
        return svc

    async def run(self, cmd: VerifiedCommand, wakes: bool = True) -> dict[str, Any]:
        """Carry out `cmd`; when it changes a booking, wait for the service's next turn (the dispatcher wakes it)."""
        turns = self.service.turns
        out = await self.dispatcher.execute(cmd)
        if wakes:
            await until(lambda: self.service.turns > turns, within=2, what="the booking service to turn")
        return out

    def door_events(self) -> list[dict[str, Any]]:
        out = []
        while not self.events.queue.empty():
            p = self.events.queue.get_nowait().payload
            if p["kind"] == "door":
                out.append(p)
        return out


@contextlib.asynccontextmanager
async def gateway(cfg: Config, clock: ShiftClock, school: VirtualSchool) -> AsyncIterator[Site]:
    """The real daemon with the booking service (as DEFAULT_SERVICES will hold it) over `school`."""
    async with Daemon(cfg, clock=clock, status_port=0, services=(BookingService.from_daemon,)) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        s = Site(school, daemon, clock)
        try:
            yield s
        finally:
            daemon.bus.unsubscribe(s.events)


@contextlib.asynccontextmanager
async def running(tmp: Path, **bookings: Any) -> AsyncIterator[Site]:
    cfg = site_config(tmp, **bookings)
    async with VirtualSchool(cfg) as school, gateway(cfg, ShiftClock(), school) as s:
        yield s


async def opened_at(s: Site, within: float, channel_no: int = 0) -> float:
    """Wait for the door to open; the daemon's wall time when it was seen open."""
    await until(lambda: door_open(s.school, channel_no), within=within, what="the door to open")
    return s.clock.time()


async def closed_at(s: Site, within: float, channel_no: int = 0) -> float:
    await until(lambda: not door_open(s.school, channel_no), within=within, what="the door to relock")
    return s.clock.time()


async def stays(s: Site, want: bool, seconds: float, channel_no: int = 0) -> None:
    """The door holds `want` (open or not) all the time for `seconds`, sampled every 50 ms."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert door_open(s.school, channel_no) is want, f"the door flipped to {not want}"
        await asyncio.sleep(0.05)


# -- lead, renewal, end ---------------------------------------------------------------------------------
async def test_the_door_opens_lead_before_the_start_is_renewed_and_relocks_at_the_end(tmp_path: Path) -> None:
    async with running(tmp_path, lead_s=1800, pulse_s=3, renew_s=1) as s:
        now = s.clock.time()
        start, end = now + 1800 + 2.0, now + 1800 + 60
        res = await s.run(put("b1", "401", start, end, title="PTA"))
        assert res["status"] == "ok", res
        assert "open at" in res["message"]
        assert not door_open(s.school)                     # 30 min before the start is still 2 s away
        t_open = await opened_at(s, within=5)
        assert start - 1800 <= t_open <= start - 1800 + 1.0
        await stays(s, True, 3.5)                          # longer than one 3 s pulse: renewed
        st = s.service.status()["rooms"]["401"]
        assert st["open"] is True
        assert st["doors"] == {DOOR: "open"}
        assert st["bookings"][0]["title"] == "PTA"
        assert st["windows"] == [{"opens": iso(start - 1800, TZ), "ends": iso(end, TZ), "bookings": ["b1"]}]
        s.clock.step(end - 1.5 - s.clock.time())           # NTP steps to 1.5 s before the end
        await stays(s, True, 1.2)
        t_closed = await closed_at(s, within=3)
        assert end - 0.2 <= t_closed <= end + 1.0
        events = s.door_events()
        assert {e["action"] for e in events} == {"unlock", "lock"}
        assert all(e["source"] == "booking" and e["door"] == DOOR for e in events)
        assert events[-1]["action"] == "lock"
        assert s.daemon.arbiter.requests(DOOR) == []       # nothing kept that would veto a later unlock
        assert s.service.status()["rooms"]["401"]["open"] is False
        await stays(s, False, 1.0)


async def test_a_booking_in_progress_opens_at_once_and_a_delete_relocks_at_once(tmp_path: Path) -> None:
    async with running(tmp_path) as s:                     # the defaults: 30 min lead, 60 s pulses renewed every 20 s
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now - 600, now + 3600)))["status"] == "ok"
        await opened_at(s, within=2)                       # the put wakes the service
        await stays(s, True, 1.0)
        res = await s.run(delete("b1", "401"))
        assert res["status"] == "ok", res
        before = time.monotonic()
        await closed_at(s, within=2)                       # the 60 s pulse is ended, not waited out
        assert time.monotonic() - before < 1.5
        assert s.daemon.arbiter.requests(DOOR) == []
        # the door is free again: anyone's unlock works as before
        out = await s.daemon.control.pulse(DOOR, 1, Source.LOCAL, "local:test")
        assert out.ok, out


async def test_overlapping_bookings_keep_the_door_open_until_the_last_end(tmp_path: Path) -> None:
    async with running(tmp_path, lead_s=1, pulse_s=3, renew_s=1) as s:
        now = s.clock.time()
        for bid, a, b in (("b1", 1.5, 3.0), ("b2", 2.5, 4.5)):   # b2 starts before b1 ends
            assert (await s.run(put(bid, "401", now + a, now + b)))["status"] == "ok"
        assert s.service.status()["rooms"]["401"]["windows"] == [
            {"opens": iso(now + 0.5, TZ), "ends": iso(now + 4.5, TZ), "bookings": ["b1", "b2"]}]
        await opened_at(s, within=3)
        await stays(s, True, max(0.0, now + 4.2 - s.clock.time()))   # through b1's end: no relock in between
        t_closed = await closed_at(s, within=2)
        assert t_closed >= now + 4.3


# -- clock steps ------------------------------------------------------------------------------------------
async def test_a_step_past_the_end_relocks_and_a_step_back_does_not_reopen(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge.bookings, "RECHECK_S", 0.5)   # the wall clock re-read often (a minute in a school)
    async with running(tmp_path, pulse_s=30, renew_s=1) as s:
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now - 60, now + 600)))["status"] == "ok"
        await opened_at(s, within=2)
        s.clock.step(3600)                                 # NTP: the booking was over long ago
        before = time.monotonic()
        await closed_at(s, within=3)                       # relocked, not left to the 30 s pulse
        assert time.monotonic() - before < 2.0
        s.clock.step(-(3600 - 600 + 60))                   # ... and back to a minute before its end: no reopen
        await stays(s, False, 2.5)
        assert [e["action"] for e in s.door_events()].count("unlock") == 1


async def test_a_step_forward_into_a_booking_opens_the_door(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge.bookings, "RECHECK_S", 0.5)   # the wall clock re-read often (a minute in a school)
    async with running(tmp_path) as s:
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now + 7200, now + 9000)))["status"] == "ok"
        await stays(s, False, 1.0)
        s.clock.step(5400 + 10)                            # NTP: it was past 09:30 all along
        await opened_at(s, within=3)


# -- reboot ---------------------------------------------------------------------------------------------
async def test_a_stopped_gateway_relocks_within_a_pulse_and_a_new_one_reopens(tmp_path: Path) -> None:
    cfg = site_config(tmp_path, pulse_s=3, renew_s=1)
    clock = ShiftClock()
    async with VirtualSchool(cfg) as school:
        async with gateway(cfg, clock, school) as s:
            now = clock.time()
            assert (await s.run(put("b1", "401", now - 60, now + 3600)))["status"] == "ok"
            await opened_at(s, within=2)
        # the gateway is gone (a crash, a reboot): the board relocks by itself within one pulse
        assert door_open(school)
        before = time.monotonic()
        await until(lambda: not door_open(school), within=4, what="the hardware to relock")
        assert time.monotonic() - before <= 3.5
        # a new daemon over the same storage puts the door back as the booking wants it
        async with gateway(cfg, clock, school) as s:
            await opened_at(s, within=3)
            assert s.service.status()["rooms"]["401"]["bookings"][0]["id"] == "b1"


# -- vetoes and pre-cooling -----------------------------------------------------------------------------
async def test_a_facility_lockdown_vetoes_the_booking_until_it_ends(tmp_path: Path) -> None:
    async with running(tmp_path, pulse_s=3, renew_s=1) as s:
        await s.daemon.arbiter.submit(Request(DOOR, Source.FACILITY, {"on": False}, s.clock.time() + 3, "facility:F1"))
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now - 60, now + 600)))["status"] == "ok"
        await stays(s, False, 1.5)
        assert s.service.status()["rooms"]["401"]["doors"][DOOR].startswith("forbidden")
        await opened_at(s, within=4)                       # the hold ended: the booking's pulses resume


async def test_precool_switches_the_rooms_ac_on_for_the_booking_and_off_after(tmp_path: Path) -> None:
    async with running(tmp_path, precool=True) as s:
        ac = s.school.ac("ac-401a")
        assert ac.power_on is False
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now + 60, now + 3600)))["status"] == "ok"
        await until(lambda: s.school.ac("ac-401a").power_on, within=5, what="the room's AC on")
        assert s.school.ac("ac-401a").mode == "cool"
        held = [r for r in s.daemon.arbiter.requests("ac-401a") if r.source == Source.BOOKING]
        assert held
        assert held[0].expires == pytest.approx(now + 3600, abs=2)
        assert s.service.status()["rooms"]["401"]["acs"] == {"ac-401a": "precool"}
        assert (await s.run(delete("b1", "401")))["status"] == "ok"
        await until(lambda: not s.school.ac("ac-401a").power_on, within=5, what="the room's AC off again")
        assert not [r for r in s.daemon.arbiter.requests("ac-401a") if r.source == Source.BOOKING]


async def test_precool_denied_by_the_energy_manager_leaves_the_ac_and_still_opens_the_door(tmp_path: Path) -> None:
    async with running(tmp_path, precool=True, pulse_s=3, renew_s=1) as s:
        s.daemon.control.admission = lambda target, kind, fields, source: "over the contract" if kind == "ac" else None
        now = s.clock.time()
        assert (await s.run(put("b1", "401", now - 60, now + 600)))["status"] == "ok"
        await opened_at(s, within=2)
        await asyncio.sleep(1.5)
        assert s.school.ac("ac-401a").power_on is False
        assert s.service.status()["rooms"]["401"]["acs"]["ac-401a"].startswith("precool denied_by_ems")


# -- the explicit relock (Control.lock) ------------------------------------------------------------------
async def test_control_lock_ends_a_pulse_at_once_and_keeps_no_hold(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        control = s.daemon.control
        assert (await control.pulse(DOOR, 30, Source.FACILITY, "facility:F1")).ok
        assert door_open(s.school)
        out = await control.lock(DOOR, Source.BOOKING, "booking:test")
        assert out.ok, out
        assert out.state is not None
        assert out.state["on"] is False
        assert not door_open(s.school)                     # read back: the board holds it off now
        assert s.daemon.arbiter.requests(DOOR) == []
        assert (await control.pulse(DOOR, 1, Source.TEACHER, "teacher:T1")).ok   # no veto was left behind
        assert door_open(s.school)
        assert [e["action"] for e in s.door_events()] == ["unlock", "lock", "unlock"]
        # what a lock is refused for
        assert (await control.lock("light-401", Source.BOOKING, "x")).code == "bad_request"
        assert (await control.lock("door-999", Source.BOOKING, "x")).code == "unknown_target"
        # an evacuation (safety holds the doors open) is not overridden by a booking's relock ...
        await s.daemon.arbiter.submit(Request(DOOR, Source.SAFETY, {"on": True}, s.clock.time() + 60, "safety:fire"))
        out = await control.lock(DOOR, Source.BOOKING, "booking:test")
        assert (out.status, out.code) == ("rejected", "forbidden")
        assert out.overridden_by is not None
        assert out.overridden_by.source == Source.SAFETY
        assert door_open(s.school)
        # ... but a lock at the same or a higher tier than a hold that keeps it shut is no conflict
        await s.daemon.arbiter.release(DOOR, Source.SAFETY)
        await s.daemon.arbiter.submit(Request(DOOR, Source.SAFETY, {"on": False}, s.clock.time() + 60, "safety:x"))
        assert (await control.lock(DOOR, Source.BOOKING, "booking:test")).ok

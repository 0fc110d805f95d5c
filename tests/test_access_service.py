"""Offline access control with real parts: RDM6300 frames on socat ptys, the real daemon (RFID and Modbus
drivers) with the access service, and the virtual school's Waveshare relay board on its RS-485 pty.

The site is helpers.sites.two_bus_school (door-401 on relay-1 channel 0) with a door reader and a gate
reader added, and no cloud section: everything here runs offline. The daemon's clock is a real-time
clock started on a Wednesday at 10:00 in Taipei, so the list's windows and dates are tested against a
known local time. Nothing here asserts a duration (the bench measures them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.sites import two_bus_school
from test_rfid_driver import card_event_validator

from cloud_sync.commands import VerifiedCommand
from cloud_sync.dispatch import Dispatcher
from drivers.modbus.driver import ModbusDriver
from drivers.rfid.driver import RfidDriver
from drivers.rfid.framing import rdm6300_frame
from edge.access import AccessService
from edge.core.access import DOCUMENT
from edge.core.arbiter import Request, Source
from edge.core.clock import Clock, ScaledClock
from edge.core.config import Config, RfidReader
from edge.core.driver import DriverSink
from edge.core.events import Subscription
from edge.daemon import Daemon
from simulator.app import VirtualSchool
from simulator.ptys import PtyPair

TAIPEI = ZoneInfo("Asia/Taipei")
WED_10 = datetime(2026, 6, 17, 10, 0, tzinfo=TAIPEI).timestamp()
DOOR, READER, GATE = "door-401", "door-401-r", "gate-1"

PUPIL = 13961168          # the contract's example card: door-401 on school days 07:00-18:00
EVENING = 2001            # door-401 in the evening only
LEFT = 2002               # left the school yesterday
OTHER_DOOR = 2003         # may open door-101 only
STRANGER = 2004           # not on the list

SCHOOL_HOURS = [{"days": "mon-fri", "from": "07:00", "to": "18:00"}]


def access_doc(version: int, *cards: dict[str, Any]) -> dict[str, Any]:
    return {"version": version, "cards": list(cards)}


def entry(number: int, person: str, doors: tuple[str, ...] = (DOOR,), **extra: Any) -> dict[str, Any]:
    return {"card": str(number), "person": person, "doors": list(doors), **extra}


THE_LIST = access_doc(4, entry(PUPIL, "S1001", windows=SCHOOL_HOURS, valid_until="2027-07-31"),
                      entry(EVENING, "S1002", windows=[{"days": "mon-fri", "from": "18:00", "to": "21:00"}]),
                      entry(LEFT, "S1003", valid_until="2026-06-16"),
                      entry(OTHER_DOOR, "S1004", doors=("door-101",)))


@dataclass
class Rig:
    school: VirtualSchool
    daemon: Daemon
    events: Subscription
    fds: dict[str, int]
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def event(self, pred: Callable[[dict[str, Any]], bool], what: str, since: int = 0) -> dict[str, Any]:
        """The first event from the `since`-th on that `pred` accepts; every event is kept in `seen`."""
        for body in self.seen[since:]:
            if pred(body):
                return body
        while True:
            try:
                msg = await asyncio.wait_for(self.events.queue.get(), 10)
            except TimeoutError:
                raise AssertionError(f"no event: {what}; seen {[e['kind'] for e in self.seen]}") from None
            self.seen.append(msg.payload)
            if pred(msg.payload):
                return msg.payload

    async def tap(self, reader: str, card: int) -> dict[str, Any]:
        """Show `card` at `reader` (one RDM6300 frame on its pty): the tap's card event."""
        self.events_of("card")   # what came before the tap
        since = len(self.seen)
        os.write(self.fds[reader], rdm6300_frame(card))
        return await self.event(lambda e: e["kind"] == "card" and e["reader"] == reader and e["card"] == str(card),
                                f"card {card} at {reader}", since)

    def events_of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """The events of `kind` published so far (with `match`ing fields)."""
        while not self.events.queue.empty():
            self.seen.append(self.events.queue.get_nowait().payload)
        return [e for e in self.seen if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]

    def door_open(self) -> bool:
        return self.school.relay("relay-1")[0]


def site_config(tmp: Path, ptys: dict[str, PtyPair]) -> Config:
    raw = two_bus_school(tmp, free_port())
    for dev in raw["devices"]:
        if dev["id"] == DOOR:
            dev["unlock_s"] = 1
    raw["devices"] += [
        {"id": READER, "kind": "rfid", "port": ptys[READER].device, "framing": "rdm6300", "purpose": "door",
         "door": DOOR},
        {"id": GATE, "kind": "rfid", "port": ptys[GATE].device, "framing": "rdm6300", "purpose": "gate"},
    ]
    return Config.model_validate(raw)


def readers(cfg: Config, sink: DriverSink, clock: Clock) -> RfidDriver:
    """The site's readers without the repeat window, so the same card may be shown twice in a row."""
    return RfidDriver([d for d in cfg.devices if isinstance(d, RfidReader)], sink, clock, repeat_window_s=0.0)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, stored: str | dict[str, Any] | None = THE_LIST) -> AsyncIterator[Rig]:
    """The school, the daemon with the access service, and the readers' ends of their ptys; `stored` is the
    `cloud/access` document in the store before the daemon starts (text as is, a dict as JSON)."""
    async with contextlib.AsyncExitStack() as stack:
        ptys = {r: await stack.enter_async_context(PtyPair(str(tmp_path / f"tty-{r}"))) for r in (READER, GATE)}
        cfg = site_config(tmp_path, ptys)
        fds = {}
        for r, pty in ptys.items():
            fds[r] = os.open(pty.sim_device, os.O_RDWR | os.O_NOCTTY)
            stack.callback(os.close, fds[r])
        school = await stack.enter_async_context(VirtualSchool(cfg))
        daemon = Daemon(cfg, clock=ScaledClock(1.0, WED_10), status_port=0,
                        drivers=(ModbusDriver.from_config, readers), services=(AccessService.from_daemon,))
        if stored is not None:
            daemon.store.set(DOCUMENT, stored if isinstance(stored, str) else json.dumps(stored))
        events = daemon.bus.subscribe("event", name="test")
        stack.callback(daemon.bus.unsubscribe, events)
        await stack.enter_async_context(daemon)
        await until(lambda: all(s.get("online") for s in daemon.states.values()), within=15, what="every device online")
        yield Rig(school, daemon, events, fds)


def service(daemon: Daemon) -> AccessService:
    (svc,) = daemon.services
    assert isinstance(svc, AccessService)
    return svc


def command(jti: str, params: dict[str, Any]) -> VerifiedCommand:
    now = datetime.now().timestamp()
    return VerifiedCommand(jti, "access.put", "site", params, "A001", "admin", None, now, now + 60, "k")


# -- the doors ------------------------------------------------------------------------------------------
async def test_a_listed_card_opens_its_door_and_the_board_relocks_it(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        assert r.daemon.cloud is None                       # offline: no cloud section at all
        assert r.door_open() is False
        body = await r.tap(READER, PUPIL)
        assert r.door_open() is True                        # the unlock was written before the event
        assert {k: body[k] for k in ("reader", "card", "purpose", "person", "decision", "door", "reason")} == {
            "reader": READER, "card": str(PUPIL), "purpose": "door", "person": "S1001", "decision": "granted",
            "door": DOOR, "reason": "granted"}
        assert not [e.message for e in card_event_validator().iter_errors(body)], body   # docs/asyncapi.yaml
        door = await r.event(lambda e: e["kind"] == "door", "the door event")
        assert {k: door[k] for k in ("door", "action", "seconds", "by", "source")} == {
            "door": DOOR, "action": "unlock", "seconds": 1, "by": f"card:{PUPIL}", "source": "facility"}
        await until(lambda: r.door_open() is False, within=5, what="the board to re-lock by itself")
        assert r.daemon.states[DOOR]["online"] is True
        assert len(r.events_of("card", card=str(PUPIL))) == 1   # one event per tap, with the decision
        st = service(r.daemon).status()
        assert (st["list_version"], st["cards"], st["list_rejected"]) == (4, 4, False)
        assert st["doors"] == {DOOR: {"unlock_s": 1}}
        assert st["counts"] == {"loaded": 1, "granted": 1}
        json.dumps(st)


async def test_cards_the_list_does_not_let_in_leave_the_door_shut(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        for card, person, reason in [(STRANGER, None, "unknown_card"), (EVENING, "S1002", "outside_window"),
                                     (LEFT, "S1003", "expired"), (OTHER_DOOR, "S1004", "not_for_this_door")]:
            body = await r.tap(READER, card)
            assert (body["decision"], body["reason"], body["person"]) == ("denied", reason, person), card
            assert r.door_open() is False                   # a pulse would have come before the event
        # the gate reader is not a door: its one event (from the driver) carries no decision
        gate = await r.tap(GATE, PUPIL)
        assert (gate["purpose"], gate["person"], gate["decision"]) == ("gate", None, None)
        # and the same card still opens its door, tap after tap
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"
        await until(lambda: r.door_open() is False, within=5, what="the board to re-lock")
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"
        assert len(r.events_of("door")) == 2             # Control publishes it before it returns
        assert [len(r.events_of("card", card=str(c), reader=READER)) for c in (STRANGER, EVENING, LEFT)] == [1, 1, 1]
        assert len(r.events_of("card", card=str(PUPIL))) == 3
        assert service(r.daemon).counts["granted"] == 2


async def test_a_safety_hold_keeps_the_door_shut_for_a_listed_card(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        d = r.daemon
        await d.arbiter.submit(Request(DOOR, Source.SAFETY, {"on": False}, d.clock.time() + 60, "test:lockdown"))
        body = await r.tap(READER, PUPIL)
        assert (body["decision"], body["reason"], body["person"]) == ("denied", "forbidden", "S1001")
        assert "safety" in body["message"]
        assert r.door_open() is False
        assert r.events_of("door") == []
        await d.control.release(DOOR, Source.SAFETY, "test:lockdown")
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"


async def test_a_failing_unlock_or_decision_still_reports_the_tap_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(tmp_path) as r:
        svc = service(r.daemon)

        async def broken_pulse(*_args: Any) -> Any:
            raise RuntimeError("the bus vanished")

        monkeypatch.setattr(r.daemon.control, "pulse", broken_pulse)
        body = await r.tap(READER, PUPIL)
        assert (body["decision"], body["reason"], body["message"]) == ("denied", "error", "the bus vanished")
        monkeypatch.undo()

        def broken_decide(_tap: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(svc, "decide", broken_decide)
        body = await r.tap(READER, STRANGER)                # the driver reports it, without a decision
        assert (body["purpose"], body["decision"]) == ("door", None)
        monkeypatch.undo()
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"
        assert len(r.events_of("card", card=str(PUPIL))) == 2
        assert len(r.events_of("card", card=str(STRANGER))) == 1


# -- the list -------------------------------------------------------------------------------------------
async def test_an_older_list_never_replaces_a_newer_one(tmp_path: Path) -> None:
    async with rig(tmp_path, stored=None) as r:
        cloud = Dispatcher(r.daemon)
        assert (await r.tap(READER, PUPIL))["reason"] == "no_access_list"
        out = await cloud.execute(command("v5", access_doc(5, entry(PUPIL, "S1001"))))
        assert (out["status"], out["code"]) == ("ok", "ok"), out
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"     # in force from the next tap
        out = await cloud.execute(command("v3", access_doc(3, entry(STRANGER, "S9")))) # late, older
        assert (out["status"], out["code"]) == ("rejected", "bad_request")
        assert "older" in out["message"]
        assert (await r.tap(READER, STRANGER))["reason"] == "unknown_card"
        assert service(r.daemon).allow is not None
        assert service(r.daemon).allow.version == 5
        # a newer list takes the card off: refused at once
        out = await cloud.execute(command("v6", access_doc(6, entry(STRANGER, "S9"))))
        assert (await r.tap(READER, PUPIL))["reason"] == "unknown_card"
        assert (await r.tap(READER, STRANGER))["person"] == "S9"
        # even written past dispatch, an older stored version is not taken
        r.daemon.store.set(DOCUMENT, json.dumps(access_doc(2, entry(PUPIL, "S1001"))))
        assert (await r.tap(READER, PUPIL))["reason"] == "unknown_card"
        assert service(r.daemon).allow.version == 6


async def test_a_corrupt_stored_list_is_rejected_whole_and_never_stops_the_doors(tmp_path: Path) -> None:
    async with rig(tmp_path, stored='{"version": 4, "cards": [{"card": "13961') as r:
        fault = await r.event(lambda e: e["kind"] == "fault" and e["device"] == "access", "the fault event")
        assert fault["code"] == "access_list_invalid"
        assert "no list" in fault["message"]
        assert (await r.tap(READER, PUPIL))["reason"] == "no_access_list"
        r.daemon.store.set(DOCUMENT, json.dumps(THE_LIST))   # (through dispatch: see the next test)
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"
        back = await r.event(lambda e: e["kind"] == "fault" and e["device"] == "access" and e["code"] == "online",
                             "the recovery")
        assert "version 4" in back["message"]
        # a stored list that fails validation (a window ending before it starts) changes nothing
        bad = access_doc(9, entry(STRANGER, "S9", windows=[{"days": "mon", "from": "18:00", "to": "07:00"}]))
        r.daemon.store.set(DOCUMENT, json.dumps(bad))
        assert (await r.tap(READER, STRANGER))["reason"] == "unknown_card"
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"
        assert len(r.events_of("fault", device="access", code="access_list_invalid")) == 2   # once per bad document
        assert service(r.daemon).allow is not None
        assert service(r.daemon).allow.version == 4


async def test_the_cloud_can_replace_a_corrupt_stored_list(tmp_path: Path) -> None:
    async with rig(tmp_path, stored='{"version": 4, "cards": [{"card": "13961') as r:
        out = await Dispatcher(r.daemon).execute(command("v4", THE_LIST))
        assert out["status"] == "ok", out
        assert (await r.tap(READER, PUPIL))["decision"] == "granted"


async def test_no_service_without_a_door_reader(tmp_path: Path) -> None:
    cfg = Config.model_validate({"site": {"school_id": "014601", "gateway_id": "gw"},
                                 "storage": {"path": str(tmp_path / "state")},
                                 "devices": [{"id": GATE, "kind": "rfid", "port": str(tmp_path / "none"),
                                              "framing": "rdm6300", "purpose": "gate"}]})
    daemon = Daemon(cfg, status_port=0, drivers=(readers,))
    try:
        assert AccessService.from_daemon(daemon) is None
    finally:
        daemon.store.close()

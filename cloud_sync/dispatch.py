"""Carrying out verified cloud commands: each `VerifiedCommand` becomes exactly one result payload.

Actuating actions go through the core's one way in (`edge.core.control.Control`), like every other
control source: `ac.set` and `relay.set` as requests of the command's role (teacher -> TEACHER,
facility/admin -> FACILITY), `door.unlock` as a timed pulse of the door's relay channel. A room
target of `ac.set` fans out to the room's ACs. The control entry validates with the same strict
models and policies as for the local operator and schedules, asks the energy manager's admission
hook, and answers truthfully (`overridden_by`, `deferred_until`). `relay.set` drives lights and
fans only: a door is refused by the control entry too, so a command journalled before that rule
(and re-applied after a restart) cannot latch a door open.

Documents (`alarm.set`, `booking.put`, `booking.delete`, `access.put`) are stored durably in the
daemon's key-value store and answered ok; the EMS, booking and access-control services read them
with `load_document`. A booking is checked first (a room with doors, an end still to come, who may
put or delete it: `edge.bookings` says why) and its change wakes the booking service (bus topic
"bookings"), which opens and relocks the room's doors.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from cloud_sync.commands import TARGET_KINDS, Status, VerifiedCommand, result_payload
from edge.core.arbiter import Source
from edge.core.bookings import DOC_PREFIX, parse_time
from edge.core.clock import Clock, iso
from edge.core.config import Config, RelayChannel
from edge.core.control import REJECTED_CODES, Ask, Control, Result
from edge.core.events import EventBus, Message
from edge.core.model import Kind
from edge.core.store import StorageError, Store

log = logging.getLogger(__name__)

RELAY_SET_KINDS = TARGET_KINDS["relay.set"]
ROLE_SOURCE = {"teacher": Source.TEACHER, "facility": Source.FACILITY, "admin": Source.FACILITY}

# Key-value store keys of the stored documents.
DOC_ALARM = "cloud/alarm"
DOC_ACCESS = "cloud/access"
DOC_BOOKINGS = DOC_PREFIX          # + room id: {booking id: booking}
BOOKING_KEPT_S = 86400.0           # a booking this long over is dropped when its room's document is next written


class Gateway(Protocol):
    """What the dispatcher needs of the daemon."""

    cfg: Config
    clock: Clock
    bus: EventBus
    store: Store
    states: dict[str, dict[str, Any]]
    kinds: dict[str, Kind]
    control: Control

    @property
    def tz(self) -> Any: ...

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None: ...


def load_document(store: Store, key: str) -> Any:
    """A stored document (None when the cloud never sent one)."""
    raw = store.get(key)
    return None if raw is None else json.loads(raw)


class Dispatcher:
    """Turns a verified command into a result payload (CONTRACT.md section 3, extended with `state`)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def _now(self) -> str:
        return iso(self.gw.clock.time(), self.gw.tz)

    def _result(self, cmd: VerifiedCommand, status: Status, code: str, message: str,
                **extra: Any) -> dict[str, Any]:
        out = result_payload(cmd.id, status, code, message, self.gw.clock.time(), self.gw.tz)
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    async def execute(self, cmd: VerifiedCommand, wait_online_s: float = 0.0) -> dict[str, Any]:
        """Carry out `cmd`; never raises for a device problem (the result says it)."""
        handler = {
            "ac.set": self._ac_set, "relay.set": self._relay_set, "door.unlock": self._door_unlock,
            "alarm.set": self._alarm_set, "alarm.ack": self._site, "quota.topup": self._site,
            "usage.report": self._site,
            "booking.put": self._booking_put, "booking.delete": self._booking_delete,
            "access.put": self._access_put,
        }.get(cmd.action)
        if handler is None:
            return self._result(cmd, "rejected", "bad_request", f"unknown action {cmd.action!r}")
        if wait_online_s > 0:
            await self._wait_online(self._devices(cmd), wait_online_s)
        try:
            return await handler(cmd)
        except StorageError as exc:  # a document that is not on disk is never answered ok
            return self._result(cmd, "failed", "storage_full", str(exc))

    # -- actuators -------------------------------------------------------------------------------
    def _room_acs(self, room: str) -> list[str]:
        return [d.id for d in self.gw.cfg.modbus_devices() if Kind(d.kind) == Kind.AC and d.room == room]

    def _devices(self, cmd: VerifiedCommand) -> list[str]:
        """The devices a command needs online."""
        if cmd.action == "ac.set":
            return self._room_acs(cmd.target) if self.gw.kinds.get(cmd.target) is None else [cmd.target]
        if cmd.action in ("relay.set", "door.unlock"):
            return [cmd.target] if isinstance(self._device(cmd.target), RelayChannel) else []
        return []

    def _device(self, device_id: str) -> Any:
        try:
            return self.gw.cfg.device(device_id)
        except KeyError:
            return None

    async def _wait_online(self, devices: list[str], within_s: float) -> None:
        """After a restart nothing is online until its first reading: wait for it (recovery only)."""
        def up() -> bool:
            return all(self.gw.states.get(d, {}).get("online") for d in devices)

        sub = self.gw.bus.subscribe("state", maxsize=1000, name="cloud-recovery")
        try:
            async with asyncio.timeout(within_s):
                while not up():
                    await sub.queue.get()
        except TimeoutError:
            pass
        finally:
            self.gw.bus.unsubscribe(sub)

    async def _one(self, cmd: VerifiedCommand, device: str, fields: Mapping[str, Any]) -> Result:
        return await self.gw.control.ask(Ask(device, fields, ROLE_SOURCE[cmd.role], f"{cmd.role}:{cmd.sub}"))

    def _from_result(self, cmd: VerifiedCommand, out: Result) -> dict[str, Any]:
        return {**result_payload(cmd.id, out.status, out.code, out.message, self.gw.clock.time(), self.gw.tz),
                **out.payload(self.gw.tz)}

    async def _ac_set(self, cmd: VerifiedCommand) -> dict[str, Any]:
        if self.gw.kinds.get(cmd.target) == Kind.AC:
            return self._from_result(cmd, await self._one(cmd, cmd.target, cmd.params))
        units = self._room_acs(cmd.target)
        if not units:
            return self._result(cmd, "rejected", "unknown_target", f"room {cmd.target!r} has no AC")
        outs = await asyncio.gather(*(self._one(cmd, u, cmd.params) for u in units))
        results = {u: o.payload(self.gw.tz) for u, o in zip(units, outs, strict=True)}
        states = {u: r.get("state") for u, r in results.items()}
        bad = [(u, o) for u, o in zip(units, outs, strict=True) if not o.ok]
        notes = {u: {k: r[k] for k in ("overridden_by", "deferred_until") if k in r} for u, r in results.items()}
        notes = {u: n for u, n in notes.items() if n}
        if not bad:
            msg = f"applied to {len(units)} units of room {cmd.target}"
            if notes:
                msg += "; " + "; ".join(f"{u}: {o.message}" for u, o in zip(units, outs, strict=True) if u in notes)
            return self._result(cmd, "ok", "ok", msg, states=states, units=notes or None)
        status: Status = "rejected" if len(bad) == len(units) and all(o.code in REJECTED_CODES for _, o in bad) \
            else "failed"
        msg = "; ".join(f"{u}: {o.code} {o.message}" for u, o in bad)
        done = len(units) - len(bad)
        return self._result(cmd, status, bad[0][1].code, f"{done} of {len(units)} units done; {msg}", states=states)

    async def _relay_set(self, cmd: VerifiedCommand) -> dict[str, Any]:
        kind = self.gw.kinds.get(cmd.target)
        if kind not in RELAY_SET_KINDS:
            return self._result(cmd, "rejected", "bad_request",
                                f"relay.set applies to {sorted(RELAY_SET_KINDS)}, {cmd.target!r} is a {kind}"
                                + ("; doors open with door.unlock" if kind == Kind.DOOR else ""))
        return self._from_result(cmd, await self._one(cmd, cmd.target, {"on": cmd.params["on"]}))

    async def _door_unlock(self, cmd: VerifiedCommand) -> dict[str, Any]:
        out = await self.gw.control.pulse(cmd.target, cmd.params["seconds"], ROLE_SOURCE[cmd.role],
                                          f"{cmd.role}:{cmd.sub}")
        return self._from_result(cmd, out)

    # -- documents -------------------------------------------------------------------------------
    def _meta(self, cmd: VerifiedCommand) -> dict[str, Any]:
        return {"by": cmd.sub, "role": cmd.role, "command": cmd.id, "stored_at": self._now()}

    def _put(self, key: str, doc: Any) -> None:
        self.gw.store.set(key, json.dumps(doc, separators=(",", ":"), ensure_ascii=False))

    async def _alarm_set(self, cmd: VerifiedCommand) -> dict[str, Any]:
        self._put(DOC_ALARM, {**cmd.params, **self._meta(cmd)})
        return self._result(cmd, "ok", "ok", f"{len(cmd.params['levels'])} alarm levels stored")

    async def _site(self, cmd: VerifiedCommand) -> dict[str, Any]:
        """A site-wide action a service of the daemon offers (alarm.ack: the energy manager)."""
        out = await self.gw.control.site(cmd.action, {**cmd.params, "target": cmd.target}, f"{cmd.role}:{cmd.sub}")
        return self._from_result(cmd, out)

    # -- bookings: who may do what is decided in edge.bookings' docstring ----------------------------
    def _room_doors(self, room: str) -> list[str]:
        return [c.id for c in self.gw.cfg.relay_channels() if c.kind == Kind.DOOR and c.room == room]

    def _room_bookings(self, room: str) -> dict[str, Any]:
        book = load_document(self.gw.store, DOC_BOOKINGS + room)
        return book if isinstance(book, dict) else {}

    def _put_bookings(self, room: str, book: dict[str, Any]) -> None:
        now = self.gw.clock.time()

        def kept(b: Any) -> bool:
            try:
                return bool(parse_time(b["end"]) > now - BOOKING_KEPT_S)
            except (KeyError, TypeError, ValueError):
                return False

        self._put(DOC_BOOKINGS + room, {k: b for k, b in book.items() if kept(b)})
        self.gw.bus.publish(Message("bookings", room, {"room": room}, now))   # wakes the booking service

    @staticmethod
    def _not_theirs(cmd: VerifiedCommand, booking: Any) -> str | None:
        """Why a teacher may not replace or delete `booking` (None: they may)."""
        owner = booking.get("by") if isinstance(booking, dict) else None
        if cmd.role != "teacher" or owner == cmd.sub:
            return None
        return f"booking {cmd.params['id']} is {owner or 'nobody'}'s: a teacher changes only their own bookings"

    async def _booking_put(self, cmd: VerifiedCommand) -> dict[str, Any]:
        room, bid = cmd.target, cmd.params["id"]
        owner = cmd.params.get("by") or cmd.sub
        if cmd.role == "teacher" and owner != cmd.sub:
            return self._result(cmd, "rejected", "forbidden", f"a teacher books for themself: by {owner!r} is not"
                                                              f" {cmd.sub!r}")
        if not self._room_doors(room):
            return self._result(cmd, "rejected", "bad_request", f"room {room} has no doors: a booking opens a"
                                                                " room's doors")
        start, end = parse_time(cmd.params["start"]), parse_time(cmd.params["end"])
        now = self.gw.clock.time()
        if end <= now:
            return self._result(cmd, "rejected", "bad_request", f"the booking ended at {iso(end, self.gw.tz)},"
                                                                " before now")
        # a booking id is the site's: a put in another room moves the booking there
        holders = {r.id: b for r in self.gw.cfg.rooms for b in [self._room_bookings(r.id)] if bid in b}
        for r, book in holders.items():
            why = self._not_theirs(cmd, book[bid])
            if why is not None:
                return self._result(cmd, "rejected", "forbidden", why + ("" if r == room else f" (in room {r})"))
        book = holders.get(room) or self._room_bookings(room)
        book[bid] = {**cmd.params, "by": owner, "stored_by": cmd.sub, "role": cmd.role, "command": cmd.id,
                     "stored_at": self._now()}
        self._put_bookings(room, book)
        for r, other in holders.items():
            if r != room:
                del other[bid]
                self._put_bookings(r, other)
        lead = self.gw.cfg.bookings.lead_s
        moved = "".join(f" (moved from room {r})" for r in holders if r != room)
        return self._result(cmd, "ok", "ok", f"booking {bid} of room {room} stored{moved}: its doors open at"
                                             f" {iso(max(start - lead, now), self.gw.tz)} and relock at"
                                             f" {iso(end, self.gw.tz)}")

    async def _booking_delete(self, cmd: VerifiedCommand) -> dict[str, Any]:
        room, bid = cmd.target, cmd.params["id"]
        book = self._room_bookings(room)
        if bid not in book:
            return self._result(cmd, "ok", "ok", f"booking {bid} of room {room} was not stored (nothing to delete)")
        why = self._not_theirs(cmd, book[bid])
        if why is not None:
            return self._result(cmd, "rejected", "forbidden", why)
        del book[bid]
        self._put_bookings(room, book)
        return self._result(cmd, "ok", "ok", f"booking {bid} of room {room} deleted: its doors relock now unless"
                                             " another booking holds them open")

    async def _access_put(self, cmd: VerifiedCommand) -> dict[str, Any]:
        try:
            have = load_document(self.gw.store, DOC_ACCESS)
            stored = int(have["version"]) if isinstance(have, dict) else None
        except (ValueError, KeyError, TypeError):   # a damaged stored list: the cloud must be able to replace it
            log.warning("the stored access list does not parse; access.put replaces it")
            stored = None
        version = int(cmd.params["version"])
        if stored is not None and stored > version:
            # an ok is true: an older list is not stored, and the answer says so
            return self._result(cmd, "rejected", "bad_request", f"version {version} is older than the stored"
                                                                f" version {stored}: not stored")
        self._put(DOC_ACCESS, {**cmd.params, **self._meta(cmd)})
        return self._result(cmd, "ok", "ok", f"access list version {version} stored"
                                             f" ({len(cmd.params['cards'])} cards)")


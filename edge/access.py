"""Access control at the doors, offline: a tap on a door reader opens its door when the stored list says so.

`AccessService` is a daemon service (`edge.daemon.ServiceFactory`): entered after the drivers, it
sets the RFID driver's door hook. For each tap on a `purpose: door` reader it decides from the
allow-list in memory (`edge.core.access.decide`, at the tap's time, in the site's zone) and, when
the card is let in, asks the one way in for a timed unlock of the reader's door:
`Control.pulse(door, unlock_s, Source.FACILITY, "card:<card>")`. It then publishes the tap's one
`card` event: `decision` granted only when the door was unlocked; a card the list lets in but that
the door refused (a safety hold keeps it shut, the board is offline) is denied with the result's
code as the reason. The `door` event comes from the control entry. Gate and health readers are
not touched: their events (decision null) come from the driver.

Why `Source.FACILITY`: the list is the school staff's standing order (an `access.put` is sent by
facility or admin users), so a card opens a door with the same authority as staff unlocking it
from the app or the operator at the gateway, and only what ranks above staff keeps it shut: a
safety lockdown (and the energy manager's tier, which never holds a door).

The list: the document `cloud/access` in the daemon's store (written by the cloud's `access.put`,
which already refuses an older version). The service reads the stored text on every door tap,
a primary-key read of at most a command's 16 KiB, and parses it again only when the text changed:
a card taken off the list is refused from the very next tap, whatever path wrote the document, with
no notification to miss. A document that does not validate is rejected whole and the list in force
stays (at start: no list, every card denied); it is reported once as a `fault` event of device
`access` (code `access_list_invalid`), and `online` follows when a valid one is in force again.
An older version than the one in force is ignored here too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import tzinfo
from types import TracebackType
from typing import Any, Protocol

from drivers.rfid.driver import RfidDriver
from drivers.rfid.taps import Tap
from edge.core.access import DOCUMENT, WRONG_DOOR, AccessListError, AllowList, Decision, decide, load_access
from edge.core.arbiter import Source
from edge.core.config import Config, RelayChannel, RfidReader
from edge.core.control import Control
from edge.core.driver import Driver
from edge.core.store import Store

log = logging.getLogger(__name__)

SOURCE = Source.FACILITY          # see the module docstring
FAULT_DEVICE = "access"           # the `device` of the fault events about the list
INVALID = "access_list_invalid"
INTERRUPTED = "interrupted"       # the gateway stopped while the door was being unlocked
ERROR = "error"                   # the unlock failed unexpectedly (logged): not confirmed, so denied


class Host(Protocol):
    """What the service needs of the daemon."""

    @property
    def cfg(self) -> Config: ...
    @property
    def tz(self) -> tzinfo: ...
    @property
    def store(self) -> Store: ...
    @property
    def control(self) -> Control: ...
    @property
    def drivers(self) -> Sequence[Driver]: ...

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None: ...


class AccessService:
    """Decides on door taps and opens doors (see the module docstring)."""

    name = "access"

    def __init__(self, host: Host, drivers: Sequence[RfidDriver]) -> None:
        self.host = host
        self.drivers = tuple(drivers)
        self.allow: AllowList | None = None
        self.counts: Counter[str] = Counter()     # decisions by reason, and list reloads/rejections
        self._raw: str | None = None              # the stored text last looked at (valid or not)
        self._invalid = False                      # a fault event is out for a rejected document
        self._unlock_s: dict[str, float] = {}
        doors = {d.id: d for d in host.cfg.devices if isinstance(d, RelayChannel)}
        for reader in self.door_readers(host.cfg):
            if reader.door in doors:
                self._unlock_s[reader.door] = doors[reader.door].unlock_s

    @staticmethod
    def door_readers(cfg: Config) -> list[RfidReader]:
        return [d for d in cfg.devices if isinstance(d, RfidReader) and d.purpose == "door"]

    @classmethod
    def from_daemon(cls, host: Host) -> AccessService | None:
        """The service, when the site has a door reader on an RFID driver (the `ServiceFactory`)."""
        ids = {r.id for r in cls.door_readers(host.cfg)}
        drivers = [d for d in host.drivers if isinstance(d, RfidDriver) and ids & set(d.devices())]
        return cls(host, drivers) if drivers else None

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> AccessService:
        self.refresh()
        if self.allow is None:
            log.warning("access: no valid access list stored: every card at a door is denied until one arrives")
        max_s = self.host.cfg.control.max_unlock_s
        for door, seconds in sorted(self._unlock_s.items()):
            if seconds > max_s:
                log.error("access: %s unlock_s %g is above control.max_unlock_s %g: its cards will be refused",
                          door, seconds, max_s)
        for drv in self.drivers:
            drv.on_door_tap = self.on_door_tap
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for drv in self.drivers:
            if drv.on_door_tap == self.on_door_tap:
                drv.on_door_tap = None

    def status(self) -> dict[str, Any]:
        """For the status API: the list in force, the doors decided on, decisions so far by reason."""
        return {"list_version": None if self.allow is None else self.allow.version,
                "cards": 0 if self.allow is None else len(self.allow), "list_rejected": self._invalid,
                "doors": {door: {"unlock_s": s} for door, s in sorted(self._unlock_s.items())},
                "counts": dict(self.counts)}

    # -- the list --------------------------------------------------------------------------------
    def refresh(self) -> AllowList | None:
        """Bring the list in memory up to the stored document (parsed only when its text changed)."""
        try:
            raw = self.host.store.get(DOCUMENT)
        except sqlite3.Error as exc:   # the store is failing: decide from the list in memory
            log.error("access: cannot read %s (%s); keeping version %s", DOCUMENT, exc, self._version())
            return self.allow
        if raw == self._raw:
            return self.allow
        self._raw = raw
        if raw is None:   # nothing stored (dispatch never deletes the list): keep what is in force
            return self.allow
        try:
            new = load_access(raw)
        except AccessListError as exc:
            self.counts["rejected"] += 1
            log.error("access: stored list rejected (%s); keeping version %s", exc, self._version())
            if not self._invalid:
                self._invalid = True
                self.host.on_event("fault", {"device": FAULT_DEVICE, "code": INVALID,
                                             "message": f"stored access list rejected: {exc};"
                                                        f" in force: {self._describe()}"})
            return self.allow
        if self.allow is not None and new.version < self.allow.version:
            log.warning("access: stored list version %d is older than version %d in force: ignored",
                        new.version, self.allow.version)
            return self.allow
        self.allow = new
        self.counts["loaded"] += 1
        log.info("access: list version %d in force (%d cards)", new.version, len(new))
        if self._invalid:
            self._invalid = False
            self.host.on_event("fault", {"device": FAULT_DEVICE, "code": "online",
                                         "message": f"access list version {new.version} in force"})
        return new

    def _version(self) -> str:
        return "none" if self.allow is None else str(self.allow.version)

    def _describe(self) -> str:
        return "no list (every card is denied)" if self.allow is None else f"version {self.allow.version}"

    def decide(self, tap: Tap) -> Decision:
        """The list's answer for `tap` at its reader's door, at the time of the tap."""
        if tap.door is None:   # a door reader without its door (the loader refuses such a config)
            return Decision(False, None, WRONG_DOOR)
        return decide(self.refresh(), tap.card, tap.door, tap.ts, self.host.tz)

    # -- a tap -----------------------------------------------------------------------------------
    async def on_door_tap(self, tap: Tap) -> None:
        """Decide, unlock when let in, publish the tap's one `card` event (the driver's door hook)."""
        decision = self.decide(tap)   # raising here: the driver reports the tap without a decision
        body: dict[str, Any] = {"reader": tap.reader, "card": tap.card, "purpose": tap.purpose,
                                "person": decision.person, "decision": "granted" if decision.granted else "denied",
                                "door": tap.door, "reason": decision.reason}
        if decision.granted and tap.door is not None:   # (a granted tap has its door)
            try:
                out = await self.host.control.pulse(tap.door, self._unlock_s.get(tap.door), SOURCE,
                                                    f"card:{tap.card}")
            except asyncio.CancelledError:
                self._publish({**body, "decision": "denied", "reason": INTERRUPTED})
                raise
            except Exception as exc:   # the tap is still reported once, the loop goes on
                log.exception("access: unlocking %s for card %s failed", tap.door, tap.card)
                body.update(decision="denied", reason=ERROR, message=str(exc) or type(exc).__name__)
            else:
                if not out.ok:
                    body.update(decision="denied", reason=out.code, message=out.message)
        self._publish(body)

    def _publish(self, body: dict[str, Any]) -> None:
        self.counts[body["reason"]] += 1
        self.host.on_event("card", body)

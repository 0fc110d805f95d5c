"""The arbiter: the only writer to actuators.

Every actuator has one effective desired state, resolved field by field from requests by source
priority (safety > EMS > facility/local > booking > schedule > teacher > default), each request
with an expiry (the control entry, `edge.core.control`, gives every request one). When a higher
source lets go, the next one's wish comes back: if the EMS sheds a room for ten minutes, the
teacher's request returns; if nobody had asked for anything, the state from before the override
is restored. A request whose write fails is withdrawn (`submit` answers the failure).

It also enforces the compressor's minimum off time itself (DOMAIN.md section 4): an AC switched
off is never commanded on again within `min_off_s`; the start is deferred, not dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, Protocol

from edge.core.clock import Clock, SystemClock
from edge.core.driver import ApplyError
from edge.core.store import Store

log = logging.getLogger(__name__)

MIN_OFF_S = 180.0  # split units refuse a restart within 3 minutes (Panasonic/Haier service manuals)
TURN_S = 5.0       # the run loop turns at least this often: re-reads wall time, shows it is alive (watchdog)


class Source(IntEnum):
    """Who asks; the value is the priority. One request per source and actuator: a later one replaces it."""

    DEFAULT = 0
    RESTORE = 1  # what an actuator was doing before an override; dropped once the override ends
    TEACHER = 20
    SCHEDULE = 40
    BOOKING = 50
    FACILITY = 60
    # The operator at the gateway acts as facility staff: one tier, so the later of the two wins
    # (an alias: Source.LOCAL is Source.FACILITY; the requester says who it was).
    LOCAL = 60
    EMS = 80
    SAFETY = 100


@dataclass(frozen=True, slots=True)
class Request:
    actuator: str
    source: Source
    fields: Mapping[str, Any]
    expires: float | None = None
    requester: str | None = None
    ts: float = 0.0


class Actuators(Protocol):
    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """Write `fields`, read them back, return the verified values; raise ApplyError."""

    async def pulse(self, actuator: str, seconds: float) -> None:
        """A hardware-timed on-pulse (a door's unlock); raise ApplyError."""

    def actual(self, actuator: str) -> Mapping[str, Any]:
        """The actuator's last known state."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A higher-priority request that keeps a field at another value than the one asked for."""

    source: Source
    until: float | None
    requester: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a submitted request led to."""

    ok: bool
    code: str
    message: str
    effective: Mapping[str, Any]
    verified: Mapping[str, Any]
    deferred_until: float | None = None
    held: Mapping[str, Holder] = field(default_factory=dict)   # asked-for fields a higher source keeps


@dataclass
class _Actuator:
    requests: dict[Source, Request] = field(default_factory=dict)
    applied: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    off_since: float | None = None
    deferred_until: float | None = None
    seen_on: bool | None = None


class Arbiter:
    def __init__(self, actuators: Actuators, store: Store | None = None, clock: Clock | None = None,
                 min_off: Callable[[str], float] | None = None) -> None:
        self._act = actuators
        self._store = store
        self._clock = clock or SystemClock()
        self._min_off = min_off or (lambda _a: 0.0)
        self._state: dict[str, _Actuator] = {}
        self._wake = asyncio.Event()
        self.last_turn = time.monotonic()
        if store is not None:
            for actuator, source, fields, expires, requester, ts in store.load_requests():
                try:
                    src = Source[source]
                except KeyError:
                    log.warning("dropping stored request of unknown source %s for %s", source, actuator)
                    continue
                self._a(actuator).requests[src] = Request(actuator, src, fields, expires, requester, ts)

    def _a(self, actuator: str) -> _Actuator:
        return self._state.setdefault(actuator, _Actuator())

    # -- resolution --------------------------------------------------------------------------
    def effective(self, actuator: str, below: Source | None = None) -> dict[str, Any]:
        """The desired state: each field from the highest-priority live request that sets it; with `below`,
        what it would be without that source and those above it (what the EMS would give back)."""
        now = self._clock.time()
        out: dict[str, Any] = {}
        for src in sorted(self._a(actuator).requests, reverse=True):
            req = self._a(actuator).requests[src]
            if (below is not None and src >= below) or (req.expires is not None and req.expires <= now):
                continue
            for k, v in req.fields.items():
                out.setdefault(k, v)
        return out

    def requests(self, actuator: str) -> list[Request]:
        st = self._state.get(actuator)
        return sorted(st.requests.values(), key=lambda r: -r.source) if st is not None else []

    # -- changes -----------------------------------------------------------------------------
    async def submit(self, req: Request) -> Outcome:
        """Record `req` (replacing the same source's previous one) and drive the actuator."""
        st = self._a(req.actuator)
        if req.source >= Source.EMS:
            self._remember_restore_point(req)
        req = Request(req.actuator, req.source, dict(req.fields), req.expires, req.requester,
                      req.ts or self._clock.time())
        previous = st.requests.get(req.source)
        st.requests[req.source] = req
        self._persist(req)
        self._wake.set()
        out = await self.reconcile(req.actuator, focus=set(req.fields))
        if not out.ok:
            # a request that could not be carried out is withdrawn, not kept to be applied later unannounced
            self._restore(req.actuator, req.source, previous)
            return out
        held = self.holders(req.actuator, req.source, req.fields)
        return replace(out, held=held) if held else out

    def _restore(self, actuator: str, source: Source, previous: Request | None) -> None:
        st = self._a(actuator)
        if previous is None:
            st.requests.pop(source, None)
            if self._store is not None:
                self._store.delete_request(actuator, source.name)
        else:
            st.requests[source] = previous
            self._persist(previous)

    def holders(self, actuator: str, source: Source, fields: Mapping[str, Any]) -> dict[str, Holder]:
        """For each of `fields`, the live higher-priority request that keeps it at another value."""
        out: dict[str, Holder] = {}
        now = self._clock.time()
        for k, v in fields.items():
            for src in sorted(self._a(actuator).requests, reverse=True):
                if src <= source:
                    break
                r = self._a(actuator).requests[src]
                if (r.expires is None or r.expires > now) and k in r.fields:
                    if r.fields[k] != v:
                        out[k] = Holder(src, r.expires, r.requester)
                    break
        return out

    async def pulse(self, actuator: str, source: Source, seconds: float) -> Outcome:
        """A timed pulse (a door's unlock), unless a higher source holds the actuator off (a lockdown)."""
        held = self.holders(actuator, source, {"on": True})
        if held:
            h = held["on"]
            return Outcome(False, "forbidden", f"{actuator} is held closed by {h.source.name.lower()}",
                           self.effective(actuator), {}, held=held)
        try:
            await self._act.pulse(actuator, seconds)
        except ApplyError as exc:
            return Outcome(False, exc.code, exc.message, self.effective(actuator), {})
        return Outcome(True, "ok", f"pulsed for {seconds:g} s", self.effective(actuator), {"on": True})

    async def lock(self, actuator: str, source: Source) -> Outcome:
        """Switch off now, once (a door's relock: ends its pulse), unless a higher source holds it on.

        Nothing is stored: a held "off" would veto every later unlock below its source.
        """
        held = self.holders(actuator, source, {"on": False})
        if held:
            h = held["on"]
            return Outcome(False, "forbidden", f"{actuator} is held open by {h.source.name.lower()}",
                           self.effective(actuator), {}, held=held)
        async with self._a(actuator).lock:
            try:
                verified = dict(await self._act.apply(actuator, {"on": False}))
            except ApplyError as exc:
                return Outcome(False, exc.code, exc.message, self.effective(actuator), {})
        return Outcome(True, "ok", "switched off", self.effective(actuator), verified)

    async def set_baseline(self, actuator: str, fields: Mapping[str, Any], requester: str) -> Outcome:
        """Switch once (a schedule): replace what teachers and defaults asked for these fields."""
        st = self._a(actuator)
        for src in [s for s in st.requests if s < Source.SCHEDULE]:
            req = st.requests[src]
            rest = {k: v for k, v in req.fields.items() if k not in fields}
            if src == Source.DEFAULT:
                continue
            if rest:
                st.requests[src] = Request(actuator, src, rest, req.expires, req.requester, req.ts)
                self._persist(st.requests[src])
            else:
                del st.requests[src]
                if self._store is not None:
                    self._store.delete_request(actuator, src.name)
        base = dict(st.requests[Source.DEFAULT].fields) if Source.DEFAULT in st.requests else {}
        base.update(fields)
        st.requests[Source.DEFAULT] = Request(actuator, Source.DEFAULT, base, None, requester, self._clock.time())
        self._persist(st.requests[Source.DEFAULT])
        out = await self.reconcile(actuator, focus=set(fields))
        held = self.holders(actuator, Source.DEFAULT, fields) if out.ok else {}
        return replace(out, held=held) if held else out

    async def release(self, actuator: str, source: Source) -> Outcome:
        st = self._a(actuator)
        if st.requests.pop(source, None) is not None and self._store is not None:
            self._store.delete_request(actuator, source.name)
        return await self.reconcile(actuator)

    def _remember_restore_point(self, req: Request) -> None:
        """Before an override, keep what the actuator was doing so that it comes back after."""
        st = self._a(req.actuator)
        actual = self._act.actual(req.actuator)
        keep = {k: actual[k] for k in req.fields
                if k in actual and actual[k] is not None
                and not any(k in r.fields for s, r in st.requests.items() if s != req.source)}
        if keep:
            base = dict(st.requests[Source.RESTORE].fields) if Source.RESTORE in st.requests else {}
            base.update(keep)
            st.requests[Source.RESTORE] = Request(req.actuator, Source.RESTORE, base, None, "restore",
                                                  self._clock.time())
            self._persist(st.requests[Source.RESTORE])

    def _persist(self, req: Request) -> None:
        if self._store is not None:
            self._store.save_request(req.actuator, req.source.name, req.fields, req.expires, req.requester, req.ts)

    def observe(self, actuator: str, state: Mapping[str, Any]) -> None:
        """Track what the device does by itself (remote control, lock-out) for the min-off rule."""
        st = self._a(actuator)
        on = state.get("power_on")
        if on is False and st.seen_on is True and st.off_since is None:
            st.off_since = self._clock.time()  # switched off by itself or at the wall: a real stop
        elif on is True:
            st.off_since = None
        if on is not None:
            st.seen_on = bool(on)

    async def reconcile(self, actuator: str, focus: set[str] | None = None) -> Outcome:
        """Write whatever of the effective state has not been applied yet; verify it."""
        st = self._a(actuator)
        async with st.lock:
            want = self.effective(actuator)
            todo = {k: v for k, v in want.items() if st.applied.get(k, _UNSET) != v}
            if focus:  # a new request re-asserts its fields even when we think they are applied
                actual = self._act.actual(actuator)
                todo.update({k: want[k] for k in focus if k in want and actual.get(k, _UNSET) != want[k]})
            deferred = self._defer_start(actuator, st, todo)
            if not todo:
                return Outcome(True, "ok", "nothing to change", want, {}, deferred)
            try:
                verified = dict(await self._act.apply(actuator, todo))
            except ApplyError as exc:
                log.warning("apply %s %s failed: %s %s", actuator, todo, exc.code, exc.message)
                return Outcome(False, exc.code, exc.message, want, {}, deferred)
            st.applied.update(todo)
            if todo.get("power_on") is False:
                st.off_since = self._clock.time()
            elif todo.get("power_on") is True:
                st.off_since = None
            self._drop_applied_restore_point(actuator, st)
            msg = "applied" if deferred is None else f"applied; start deferred {deferred - self._clock.time():.0f} s"
            return Outcome(True, "ok", msg, want, verified, deferred)

    def _defer_start(self, actuator: str, st: _Actuator, todo: dict[str, Any]) -> float | None:
        # any true value is a start (1, "on" ...): the control entry lets only booleans through, and
        # should anything else slip in, deferring it is the safe side
        if not todo.get("power_on") or st.off_since is None:
            st.deferred_until = None
            return None
        allowed = st.off_since + self._min_off(actuator)
        if self._clock.time() >= allowed:
            st.deferred_until = None
            return None
        del todo["power_on"]
        st.deferred_until = allowed
        self._wake.set()
        log.info("start of %s deferred %.0f s (minimum off time)", actuator, allowed - self._clock.time())
        return allowed

    def _drop_applied_restore_point(self, actuator: str, st: _Actuator) -> None:
        if Source.RESTORE not in st.requests:
            return
        if any(s > Source.RESTORE and not self._expired(r) for s, r in st.requests.items()):
            return
        del st.requests[Source.RESTORE]
        if self._store is not None:
            self._store.delete_request(actuator, Source.RESTORE.name)

    def _expired(self, r: Request) -> bool:
        return r.expires is not None and r.expires <= self._clock.time()

    def forget_applied(self, actuator: str) -> None:
        """The device was offline or restarted: re-apply the whole effective state next time."""
        self._a(actuator).applied.clear()

    # -- time --------------------------------------------------------------------------------
    def _next_deadline(self) -> float:
        nxt = math.inf
        for st in self._state.values():
            for r in st.requests.values():
                if r.expires is not None:
                    nxt = min(nxt, r.expires)
            if st.deferred_until is not None:
                nxt = min(nxt, st.deferred_until)
        return nxt

    async def run(self) -> None:
        """Apply expiries and deferred starts when they fall due."""
        while True:
            self.last_turn = time.monotonic()
            self._wake.clear()
            delay = self._next_deadline() - self._clock.time()
            if delay > 0:
                sleeper = asyncio.ensure_future(self._clock.sleep(min(delay, TURN_S)))
                waker = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (sleeper, waker):
                        t.cancel()
                    await asyncio.gather(sleeper, waker, return_exceptions=True)
            await self.tick()

    async def tick(self) -> None:
        """Drop expired requests and start deferred units whose time has come."""
        now = self._clock.time()
        for actuator, st in list(self._state.items()):
            expired = [s for s, r in st.requests.items() if r.expires is not None and r.expires <= now]
            for s in expired:
                del st.requests[s]
                if self._store is not None:
                    self._store.delete_request(actuator, s.name)
            due = st.deferred_until is not None and st.deferred_until <= now
            if expired or due:
                st.deferred_until = None
                await self.reconcile(actuator)


_UNSET = object()

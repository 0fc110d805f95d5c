"""The one way in: every control source asks here, with the same models, policies and answers.

Cloud commands, the local operator (CLI over the control socket), schedules, bookings and the
energy manager all call `Control.ask` (or `pulse` to open a door, `lock` to relock it at once,
`release` to let go). Each request is validated by the same strict models (booleans are booleans,
numbers are numbers: a word such as "off" is parsed once by the CLI, never by `bool(str)`), checked
against the same policies (the setpoint range, the modes, the door pulse's maximum; the compressor's
minimum off time is the arbiter's, for every source), offered to the admission hook (the energy
manager's seat), given a hold (by default until the end of the school day), and answered with one
result vocabulary.

An `ok` is true: without `deferred_until` it means the device now holds the requested values, read
back; when a higher-priority holder keeps a field the result says who (`overridden_by`) and until
when, and the request takes effect when that hold ends (if its own hold has not ended first).
A request whose write failed is withdrawn: it is never applied later unannounced.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from edge.core.arbiter import Arbiter, Holder, Outcome, Request, Source
from edge.core.clock import Clock, iso
from edge.core.config import ControlConfig
from edge.core.model import SWITCH_KINDS, AcMode, FanSpeed, Kind, same

log = logging.getLogger(__name__)

Status = Literal["ok", "rejected", "failed"]
# Codes that mean "refused before acting" (status rejected); every other failure is status failed.
REJECTED_CODES = frozenset({"bad_request", "bad_signature", "expired", "replayed", "wrong_audience", "forbidden",
                            "out_of_range", "unknown_target", "denied_by_ems", "denied_by_quota"})


# -- the models (strict: no coercion of words or numbers into booleans) -------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AcFields(_Strict):
    power_on: StrictBool | None = None
    mode: AcMode | None = Field(None, strict=False)      # an AcMode from its exact word ("cool"), nothing else
    setpoint_c: float | None = Field(None, allow_inf_nan=False)
    fan: FanSpeed | None = Field(None, strict=False)

    @model_validator(mode="after")
    def _something(self) -> AcFields:
        if not self.model_fields_set:
            raise ValueError("at least one of power_on, mode, setpoint_c, fan")
        nulls = sorted(k for k in self.model_fields_set if getattr(self, k) is None)
        if nulls:   # an explicit null is not "leave it": it would reach the device as None
            raise ValueError(f"{', '.join(nulls)}: a value is required (leave the field out to keep it)")
        return self


class SwitchFields(_Strict):
    on: StrictBool


def _problems(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def validate_fields(kind: Kind, fields: Mapping[str, Any], policy: ControlConfig) -> dict[str, Any]:
    """The fields of a request for a device of `kind`, typed; raise Refused (bad_request/out_of_range)."""
    try:
        if kind == Kind.AC:
            ac = AcFields.model_validate(dict(fields))
            if ac.setpoint_c is not None and not policy.setpoint_min_c <= ac.setpoint_c <= policy.setpoint_max_c:
                raise Refused("out_of_range", f"setpoint {ac.setpoint_c:g} °C outside the policy range"
                                              f" {policy.setpoint_min_c:g}–{policy.setpoint_max_c:g} °C")
            return {k: (str(v) if isinstance(v, AcMode | FanSpeed) else v)
                    for k, v in ac.model_dump(exclude_unset=True).items()}
        if kind in SWITCH_KINDS:
            return SwitchFields.model_validate(dict(fields)).model_dump()
    except ValidationError as exc:
        raise Refused("bad_request", _problems(exc)) from None
    if kind == Kind.DOOR:
        raise Refused("bad_request", "a door is not set: it opens with a timed unlock (door.unlock, pulse)")
    raise Refused("bad_request", f"a {kind} device takes no commands")


class Refused(Exception):
    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Denial:
    """What an admission hook answers instead of a plain reason when it has more to say."""

    code: str                             # denied_by_ems | denied_by_quota
    message: str
    retry_after_s: float | None = None    # when trying again may succeed


@dataclass(frozen=True, slots=True)
class Queued:
    """An admission hook's third answer: take the request, but the energy manager holds the start back.

    The entry stores an EMS hold (`power_on: false`, `hold_s`) before the request, so the request is
    kept (answered ok, `overridden_by` the EMS, until when) and the unit starts when the EMS lets go:
    nobody has to ask again, and a queued room takes its turn like a shed one.
    """

    message: str
    hold_s: float


# -- asks and results ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ask:
    target: str                   # a device id
    fields: Mapping[str, Any]     # as received: validated here
    source: Source
    requester: str                # who: "teacher:T123", "local:root", "schedule:evening-off"
    hold_s: float | None = None   # None: the source's default hold (see `Control.default_until`)


@dataclass(frozen=True, slots=True)
class Result:
    status: Status
    code: str
    message: str
    target: str
    state: Mapping[str, Any] | None = None
    deferred_until: float | None = None
    overridden_by: Holder | None = None
    held_fields: tuple[str, ...] = ()
    until: float | None = None    # when this request's own hold ends
    retry_after_s: float | None = None   # a denial: when to try again

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def payload(self, tz: ZoneInfo) -> dict[str, Any]:
        """The JSON form (CONTRACT.md section 3 result fields, without id and ts)."""
        out: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.state is not None:
            out["state"] = dict(self.state)
        if self.deferred_until is not None:
            out["deferred_until"] = iso(self.deferred_until, tz)
        if self.overridden_by is not None:
            h = self.overridden_by
            out["overridden_by"] = {"source": h.source.name.lower(), "by": h.requester,
                                    "until": None if h.until is None else iso(h.until, tz),
                                    "fields": list(self.held_fields)}
        if self.until is not None:
            out["until"] = iso(self.until, tz)
        if self.retry_after_s is not None:
            out["retry_after_s"] = round(self.retry_after_s)
        return out


def refusal(target: str, code: str, message: str, state: Mapping[str, Any] | None = None,
            retry_after_s: float | None = None) -> Result:
    return Result("rejected" if code in REJECTED_CODES else "failed", code, message, target, state,
                  retry_after_s=retry_after_s)


Admission = Callable[[str, Kind, Mapping[str, Any], Source], "str | Denial | Queued | None"]
"""The energy manager's seat: (target, kind, typed fields, source) -> None to admit, or why not
(a reason, answered `denied_by_ems`, or a `Denial` with its own code and a retry hint)."""


def admit_all(_target: str, _kind: Kind, _fields: Mapping[str, Any], _source: Source) -> str | Denial | Queued | None:
    return None


SiteAction = Callable[[Mapping[str, Any], str], Awaitable["Result"]]
"""A site-wide action a service offers (`alarm.ack`, a class's AC quota top-up): (params, requester) -> Result."""


def _denied(reason: str | Denial | Queued) -> Refused:
    if isinstance(reason, Denial):
        return Refused(reason.code, reason.message, reason.retry_after_s)
    return Refused("denied_by_ems", reason.message if isinstance(reason, Queued) else reason)


@dataclass
class Control:
    """The entry every control source uses (see the module docstring)."""

    arbiter: Arbiter
    kinds: Mapping[str, Kind]                     # device id -> kind, every device of the site
    online: Callable[[str], bool]                 # is the hardware behind this device answering?
    actual: Callable[[str], Mapping[str, Any]]    # the device's last known STATE
    can_pulse: Callable[[str], bool]
    policy: ControlConfig
    clock: Clock
    tz: ZoneInfo
    admission: Admission = field(default=admit_all)
    site_actions: dict[str, SiteAction] = field(default_factory=dict)   # registered by services
    events: Callable[[str, Mapping[str, Any]], None] | None = None   # door events go out here

    # -- holds ------------------------------------------------------------------------------------
    def default_until(self, source: Source, now: float) -> float | None:
        """Teachers, staff, the local operator and bookings hold until the end of the school day."""
        if source in (Source.TEACHER, Source.FACILITY, Source.BOOKING):
            hh, mm = (int(x) for x in self.policy.day_end.split(":"))
            local = datetime.fromtimestamp(now, self.tz)
            end = local.replace(hour=hh, minute=mm, second=0, microsecond=0)
            if end.timestamp() <= now:
                end = (local + timedelta(days=1)).replace(hour=hh, minute=mm, second=0, microsecond=0)
            return end.timestamp()
        if source in (Source.EMS, Source.SAFETY):
            return now + 900.0   # an override that nobody renews ends by itself
        return None

    def _until(self, ask: Ask, now: float) -> float | None:
        if ask.hold_s is not None:
            if not 0 < ask.hold_s <= 7 * 86400:
                raise Refused("out_of_range", f"hold {ask.hold_s:g} s; 1 s to 7 days")
            return now + ask.hold_s
        return self.default_until(ask.source, now)

    # -- the entry --------------------------------------------------------------------------------
    def _check(self, target: str, fields: Mapping[str, Any], source: Source,
               *, may_queue: bool = False) -> tuple[Kind, dict[str, Any], Queued | None]:
        kind = self.kinds.get(target)
        if kind is None:
            raise Refused("unknown_target", f"no device {target!r}")
        typed = validate_fields(kind, fields, self.policy)
        if not self.online(target):
            raise Refused("device_offline", f"{target} is offline")
        reason = self.admission(target, kind, typed, source)
        if isinstance(reason, Queued):
            if not may_queue:
                raise Refused("denied_by_ems", reason.message)
            return kind, typed, reason
        if reason is not None:
            raise _denied(reason)
        return kind, typed, None

    async def ask(self, ask: Ask) -> Result:
        """Validate, admit and submit one request; answer truthfully (see the module docstring)."""
        now = self.clock.time()
        # One request per source and device: a new one from the same tier (the same teacher, or a
        # colleague of the same room) changes the standing one, so a new setpoint keeps its "on".
        # Merged before the checks: admission and the quota see what will be written.
        standing = next((r for r in self.arbiter.requests(ask.target)
                         if r.source == ask.source and (r.expires is None or r.expires > now)), None)
        fields = {**standing.fields, **ask.fields} if standing is not None else ask.fields
        try:
            _kind, typed, queued = self._check(ask.target, fields, ask.source, may_queue=ask.source < Source.EMS)
            until = self._until(ask, now)
        except Refused as r:
            return refusal(ask.target, r.code, r.message, self._state(ask.target), r.retry_after_s)
        if queued is not None:
            log.info("%s: start of %s queued by the energy manager: %s", ask.target, ask.requester, queued.message)
            held = await self.arbiter.submit(Request(ask.target, Source.EMS, {"power_on": False},
                                                     now + queued.hold_s, "ems:queue"))
            if not held.ok:   # without the hold the start would go ahead unqueued: refuse instead
                return refusal(ask.target, "denied_by_ems", f"{queued.message} (and it could not be queued:"
                                                            f" {held.message})", self._state(ask.target))
        out = await self.arbiter.submit(Request(ask.target, ask.source, typed, until, ask.requester))
        answer = self._answer(ask.target, typed, out, until)
        if queued is not None and answer.ok:
            answer = replace(answer, message=f"queued: {queued.message}")
        return answer

    async def baseline(self, target: str, fields: Mapping[str, Any], requester: str) -> Result:
        """Switch once (a schedule without hold): the new default, which anyone may change afterwards."""
        try:
            _kind, typed, _queued = self._check(target, fields, Source.SCHEDULE)
        except Refused as r:
            return refusal(target, r.code, r.message, self._state(target))
        return self._answer(target, typed, await self.arbiter.set_baseline(target, typed, requester), None)

    async def site(self, action: str, params: Mapping[str, Any], requester: str) -> Result:
        """A site-wide action (params already validated by the caller's model), if a service offers it."""
        handler = self.site_actions.get(action)
        if handler is None:
            return refusal("site", "bad_request", f"{action}: this gateway has nothing that takes it"
                                                  " (the energy manager is not configured)")
        return await handler(params, requester)

    async def release(self, target: str, source: Source, requester: str) -> Result:
        """Withdraw `source`'s request on `target`: what the others asked for comes back."""
        if target not in self.kinds:
            return refusal(target, "unknown_target", f"no device {target!r}")
        had = any(r.source == source for r in self.arbiter.requests(target))
        out = await self.arbiter.release(target, source)
        if not out.ok:
            return refusal(target, out.code, f"released, but the device could not be set back: {out.message}",
                           self._state(target))
        what = "released" if had else "nothing to release"
        log.info("%s: %s by %s (%s)", target, what, requester, source.name.lower())
        return Result("ok", "ok", what, target, self._state(target))

    async def pulse(self, target: str, seconds: Any, source: Source, requester: str, *,
                    announce: bool = True) -> Result:
        """Open a door for `seconds`: a pulse the relay board ends by itself, unless a higher source holds it shut."""
        kind = self.kinds.get(target)
        if kind is None:
            return refusal(target, "unknown_target", f"no device {target!r}")
        if kind != Kind.DOOR or not self.can_pulse(target):
            return refusal(target, "bad_request", f"{target} is a {kind}: only doors on a pulse-capable board open")
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        cap = self.policy.teacher_max_unlock_s if source == Source.TEACHER else self.policy.max_unlock_s
        if not number or not 1 <= seconds <= cap:
            whose = " for a teacher (longer: book the room)" if source == Source.TEACHER else ""
            return refusal(target, "out_of_range", f"seconds {seconds!r}; 1–{cap:g}{whose}")
        if not self.online(target):
            return refusal(target, "device_offline", f"{target} is offline")
        reason = self.admission(target, kind, {"on": True, "seconds": seconds}, source)
        if reason is not None:
            r = _denied(reason)
            return refusal(target, r.code, r.message, retry_after_s=r.retry_after_s)
        out = await self.arbiter.pulse(target, source, float(seconds))
        if not out.ok:
            h = out.held.get("on")
            return Result("rejected" if out.code in REJECTED_CODES else "failed", out.code, out.message, target,
                          self._state(target), overridden_by=h, held_fields=("on",) if h else ())
        log.info("%s unlocked for %g s by %s", target, seconds, requester)
        if self.events is not None and announce:   # a renewal of a held-open door (bookings) is not news
            self.events("door", {"door": target, "action": "unlock", "seconds": seconds, "by": requester,
                                 "source": source.name.lower()})
        return Result("ok", "ok", f"{target} unlocked for {seconds:g} s", target, self._state(target),
                      until=self.clock.time() + float(seconds))

    async def lock(self, target: str, source: Source, requester: str) -> Result:
        """Relock a door now: its unlock pulse ends at once (a one-shot write, no hold is kept).

        No admission: a lock draws no power. A higher source that holds the door open (an
        evacuation) keeps it open: the answer says who.
        """
        kind = self.kinds.get(target)
        if kind is None:
            return refusal(target, "unknown_target", f"no device {target!r}")
        if kind != Kind.DOOR:
            return refusal(target, "bad_request", f"{target} is a {kind}: only doors lock")
        if not self.online(target):
            return refusal(target, "device_offline", f"{target} is offline")
        out = await self.arbiter.lock(target, source)
        if not out.ok:
            h = out.held.get("on")
            return Result("rejected" if out.code in REJECTED_CODES else "failed", out.code, out.message, target,
                          self._state(target), overridden_by=h, held_fields=("on",) if h else ())
        state = {**self.actual(target), **out.verified}
        if state.get("on") is not False:
            return Result("failed", "write_failed", f"{target} reports on={state.get('on')!r} after the lock",
                          target, state)
        log.info("%s locked by %s", target, requester)
        if self.events is not None:
            self.events("door", {"door": target, "action": "lock", "by": requester, "source": source.name.lower()})
        return Result("ok", "ok", f"{target} locked", target, state)

    # -- answers ----------------------------------------------------------------------------------
    def _state(self, target: str) -> dict[str, Any] | None:
        st = self.actual(target)
        return dict(st) if st else None

    def _answer(self, target: str, typed: Mapping[str, Any], out: Outcome, until: float | None) -> Result:
        if not out.ok:
            return refusal(target, out.code, f"{out.message} (the request was withdrawn)", self._state(target))
        state = {**self.actual(target), **out.verified}
        held = dict(out.held)
        deferred = out.deferred_until
        pending = {k for k in typed if k in held or (k == "power_on" and deferred is not None and typed[k])}
        wrong = [k for k, v in typed.items() if k not in pending and not same(v, state.get(k))]
        if wrong:
            got = ", ".join(f"{k}={state.get(k)!r}" for k in wrong)
            return Result("failed", "write_failed", f"the device reports {got} after the write", target, state)
        holder = max(held.values(), key=lambda h: h.source) if held else None
        parts = ["applied" if len(pending) < len(typed) else "recorded"]
        if holder is not None:
            fields_txt = ", ".join(sorted(held))
            when = "" if holder.until is None else f" until {iso(holder.until, self.tz)}"
            parts.append(f"{fields_txt} held by {holder.source.name.lower()}{when}; yours applies when that ends")
        starts = typed.get("power_on") is True and "power_on" not in held
        if deferred is not None and starts:
            parts.append(f"start deferred until {iso(deferred, self.tz)} (compressor minimum off time)")
        return Result("ok", "ok", "; ".join(parts), target, state,
                      deferred_until=deferred if starts else None,
                      overridden_by=holder, held_fields=tuple(sorted(held)), until=until)

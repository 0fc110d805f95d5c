"""The energy manager in the daemon: the meter's readings into 15-minute blocks, the controller as the
EMS source of the arbiter, its admission on every lower source's path, `ems` events and telemetry.

It runs on the real meter through the one way in (`edge.core.control`): sheds are requests at the
EMS priority (the arbiter gives the teacher's wish back when they end), switch-offs of empty rooms
are one-shot switches, and every start below the EMS (teachers, schedules, bookings, staff, the
local operator) meets `admission` first. It needs nothing of the cloud; a failing turn is logged
and the next one runs (control must not stop on a bug in one turn).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from edge.core.alarms import DOCUMENT as ALARM_DOCUMENT
from edge.core.alarms import AlarmDocumentError, parse_document
from edge.core.arbiter import Arbiter, Source
from edge.core.clock import Clock
from edge.core.config import Config, EmsConfig, ModbusDevice
from edge.core.control import Ask, Control, Denial, Queued, Result, refusal
from edge.core.events import EventBus, Message
from edge.core.model import Kind
from edge.core.schedule import DAYS
from edge.core.store import StorageError, Store
from edge.core.timetable import back_at, occupied
from ems.alarms import AlarmEngine, AlarmEvent, AlarmNotRaised
from ems.blocks import DemandMeter
from ems.controller import EmsController, EmsPolicy
from ems.history import RoomHistory, Sample
from ems.roommodel import RoomModels, SlowTemps, load_models
from ems.types import Action, ActionKind, BlockStatus, UnitView
from ems.usage import DayUsage, QuotaWarning, UsageMeter

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "ems/state"
SNAPSHOT_EVERY_S = 60.0
TICK_S = 1.0              # the meter is read this often into the block (it polls every second)
SHED_HOLD_S = 3600.0      # a shed request expires by itself if the EMS dies: the teacher's wish comes back
SAMPLE_EVERY_S = 60.0     # one history sample per room this often (what `campus-edge ems train` learns from)
MODELS_FILE = Path("models") / "rooms.json"
PRECOOL_MARGIN_C = 1.0    # pre-cool a room already within this of the temperature its teachers switch on at


class Host(Protocol):
    cfg: Config
    clock: Clock
    tz: ZoneInfo
    kinds: dict[str, Kind]
    states: dict[str, dict[str, Any]]
    store: Store
    bus: EventBus
    control: Control
    arbiter: Arbiter

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None: ...


def policy_of(cfg: Config, ems: EmsConfig) -> EmsPolicy:
    return EmsPolicy(target_share=ems.target_share, min_on_s=ems.min_on_s, max_off_s_per_h=ems.max_off_min_per_h * 60,
                     restore_gap_s=ems.restore_gap_s, empty_grace_s=ems.empty_grace_min * 60,
                     comfort_upper_c=ems.comfort_upper_c, min_off_s=cfg.control.min_off_s,
                     queue_starts=ems.queue_starts,
                     setpoint_max_c=cfg.control.setpoint_max_c)


class EnergyService:
    """Demand control for one site (see the module docstring); `status()` for the status API."""

    name = "ems"

    def __init__(self, host: Host, ems: EmsConfig) -> None:
        self.host = host
        self.ems = ems
        cfg = host.cfg
        self.meter = DemandMeter(ems.contract_kw, stale_after_s=ems.stale_after_s)
        self.controller = EmsController(policy_of(cfg, ems), rise_c_per_h=self._rise)
        self.storage = Path(cfg.storage.path)
        self.models: RoomModels = RoomModels({})
        self._models_mtime: float | None = None
        self.slow = SlowTemps()
        self.history: RoomHistory | None = None
        self._room_temp: dict[str, float] = {}
        self._last_sample = -SAMPLE_EVERY_S
        self._precooled: dict[str, str] = {}    # room -> the local day it was pre-cooled
        self.alarms = AlarmEngine(None, hysteresis_pct=ems.alarm_hysteresis_pct, raise_after_s=ems.alarm_raise_s,
                                  clear_after_s=ems.alarm_clear_s)
        self._alarm_doc: str | None = None
        self.usage = UsageMeter(host.tz)
        self.acs = [d for d in cfg.modbus_devices() if d.kind == Kind.AC and d.room is not None]
        self.floor = {r.id: r.floor for r in cfg.rooms}
        self.away = {r.id: {DAYS.index(d): frozenset(n) for d, n in r.away.items()} for r in cfg.rooms}
        self._last_reading: str | None = None
        self._last_snapshot = 0.0
        self._off_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.turns = 0
        self.actions = 0

    @classmethod
    def from_daemon(cls, host: Host) -> EnergyService | None:
        ems = host.cfg.ems
        return cls(host, ems) if ems is not None else None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def __aenter__(self) -> EnergyService:
        self._restore()
        await self._release_stale_holds()
        self._load_models()
        loop = asyncio.get_running_loop()

        def storage_fault(message: str) -> None:   # called from the writer's thread
            loop.call_soon_threadsafe(self.host.on_event, "storage", {"database": "history.db",
                                                                       "action": "write_failed", "message": message})

        # opening checks the file's integrity (seconds on a Pi for a big one): off the event loop
        self.history = await asyncio.to_thread(RoomHistory, self.storage / "history.db", on_error=storage_fault)
        if self.history.set_aside is not None:
            aside = self.history.set_aside
            self.host.on_event("storage", {"database": "history.db", "action": "set_aside", "reason": aside.reason,
                                           "moved_to": str(aside.moved_to), "lost": "the rooms' temperature history"})
        self.host.control.admission = self.admission
        self.host.control.site_actions["alarm.ack"] = self._ack
        self.host.control.site_actions["quota.topup"] = self._top_up
        self.host.control.site_actions["usage.report"] = self._report
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ems")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._snapshot(force=True)
        if self.history is not None:
            await asyncio.to_thread(self.history.close)

    async def _release_stale_holds(self) -> None:
        """Holds of the EMS from before a restart (the arbiter keeps requests across restarts): the controller
        starts afresh, so they are let go now, and the next turns shed again what the block needs."""
        for d in self.acs:
            if any(r.source == Source.EMS for r in self.host.arbiter.requests(d.id)):
                out = await self.host.control.release(d.id, Source.EMS, "ems")
                log.info("ems: %s: hold from before the restart released (%s)", d.id, out.code)

    def _contained(self, what: str, fn: Callable[[], None]) -> None:
        """Alarms, usage and history each fail alone (a damaged database, a full disk): control goes on."""
        try:
            fn()
        except Exception:
            log.exception("ems: %s failed this turn; demand control goes on", what)

    async def _run(self) -> None:
        next_turn = 0.0
        while True:
            now = self.host.clock.time()
            try:
                self._read_meter()
                if now >= next_turn:
                    next_turn = now + self.ems.period_s
                    await self.turn(now)
                self._snapshot()
            except Exception:   # one bad turn must not end demand control: logged, the next one runs
                log.exception("ems: turn failed")
            await self.host.clock.sleep(TICK_S)

    # -- readings -----------------------------------------------------------------------------------
    def _read_meter(self) -> None:
        st = self.host.states.get(self.ems.meter, {})
        ts = st.get("ts")
        if not st.get("online") or ts is None or ts == self._last_reading:
            return
        self._last_reading = ts
        power_w, energy = st.get("power_w"), st.get("energy_kwh")
        self.meter.update(datetime.fromisoformat(ts).timestamp(),
                          power_w / 1000 if isinstance(power_w, int | float) else None,
                          energy if isinstance(energy, int | float) else None)

    def block(self, now: float | None = None) -> BlockStatus:
        return self.meter.status(self.host.clock.time() if now is None else now)

    def view(self, dev: ModbusDevice, now: float) -> UnitView:
        st = self.host.states.get(dev.id, {})
        on = bool(st.get("power_on"))
        if on:
            self._off_since.pop(dev.id, None)
        else:
            self._off_since.setdefault(dev.id, now)
        wanted = self.host.arbiter.effective(dev.id, below=Source.EMS)   # what comes back when the EMS lets go
        power_w = st.get("power_w")
        setpoint = st.get("setpoint_c")
        room = dev.room or ""
        return UnitView(
            id=dev.id, room=room, floor=self.floor.get(room, 1),
            rated_kw=self.ems.unit_rated_kw.get(dev.id, self.ems.rated_kw),
            power_kw=power_w / 1000 if isinstance(power_w, int | float) else None,
            on=on, setpoint_c=float(setpoint) if isinstance(setpoint, int | float) else 26.0,
            room_temp_c=st.get("room_temp_c"), wanted_on=bool(wanted.get("power_on", on)),
            wanted_setpoint_c=float(wanted.get("setpoint_c", setpoint if isinstance(setpoint, int | float) else 26.0)),
            off_since=self._off_since.get(dev.id), occupied=self.occupied(room, now), back_at=self.back_at(room, now),
            priority=self.ems.room_priority.get(room, 0), shed=dev.id in self.controller.shed_units())

    def occupied(self, room: str, now: float) -> bool | None:
        """From the timetable (None without one: unknown)."""
        tt = self.host.cfg.timetable
        if tt is None:
            return None
        local = datetime.fromtimestamp(now, self.host.tz)
        return occupied(local, self.away.get(room, {}).get(local.weekday(), frozenset()),
                        lunch_in_room=tt.lunch_in_room)

    def back_at(self, room: str, now: float) -> float | None:
        """When an empty room's class is due back today (timetable), for the controller's pre-cooling."""
        tt = self.host.cfg.timetable
        if tt is None:
            return None
        local = datetime.fromtimestamp(now, self.host.tz)
        when = back_at(local, self.away.get(room, {}).get(local.weekday(), frozenset()), lunch_in_room=tt.lunch_in_room)
        return None if when is None else when.timestamp()

    # -- one turn -----------------------------------------------------------------------------------
    async def turn(self, now: float) -> list[Action]:
        block = self.block(now)
        views = [self.view(d, now) for d in self.acs if self.host.states.get(d.id, {}).get("online")]
        actions = self.controller.step(now, block, views)
        for a in actions:
            await self._apply(a)
        self._contained("alarms", lambda: self._alarm_turn(now, block))
        self._contained("usage", lambda: self._usage_turn(now, views))
        try:
            await self._history_turn(now, views)
            await self._precool(now, block, views)
        except Exception:
            log.exception("ems: history or pre-cooling failed this turn; demand control goes on")
        self.turns += 1
        self._publish(now, block)
        return actions

    async def _apply(self, a: Action) -> None:
        ctl = self.host.control
        if a.kind == ActionKind.RESTORE:
            out = await ctl.release(a.unit, Source.EMS, "ems")
        elif a.kind in (ActionKind.SWITCH_OFF, ActionKind.PRECOOL):   # once, not held
            out = await ctl.baseline(a.unit, dict(a.fields), "ems")
        else:
            out = await ctl.ask(Ask(a.unit, dict(a.fields), Source.EMS, "ems", hold_s=SHED_HOLD_S))
        self.actions += 1
        if not out.ok:
            log.warning("ems: %s %s: %s %s", a.kind, a.unit, out.code, out.message)
        self.host.on_event("ems", {"action": a.kind.value, "device": a.unit, "reason": a.reason,
                                   "fields": dict(a.fields), "result": out.code})

    def _publish(self, now: float, block: BlockStatus) -> None:
        """The `ems` telemetry (CONTRACT.md section 4) as a state message of the pseudo-device `ems`."""
        self.host.bus.publish(Message("state", "ems", {**self.status_fields(block), "online": True}, now))

    # -- learning the rooms -----------------------------------------------------------------------------
    def _load_models(self) -> None:
        """The coefficients `campus-edge ems train` exported (defaults until then); reloaded when the file changes."""
        path = self.storage / MODELS_FILE
        try:
            mtime: float | None = path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self._models_mtime:
            self._models_mtime = mtime
            self.models = load_models(path)
            log.info("ems: room models %s", f"from {path}" if mtime is not None else "by default (not trained yet)")

    def _rise(self, room: str, now: float) -> float | None:
        """The controller's temperature headroom: °C per hour with the AC off, from the room's model."""
        temp = self._room_temp.get(room)
        if temp is None:
            return None
        local = datetime.fromtimestamp(now, self.host.tz)
        return self.models.model(room).rise_c_per_h(temp, occupied=self.occupied(room, now),
                                                    hour=local.hour + local.minute / 60, slow_c=self.slow.get(room))

    async def _history_turn(self, now: float, views: list[UnitView]) -> None:
        by_room: dict[str, list[UnitView]] = {}
        for v in views:
            by_room.setdefault(v.room, []).append(v)
        for room, units in by_room.items():
            temps = [u.room_temp_c for u in units if u.room_temp_c is not None]
            if temps:
                self._room_temp[room] = sum(temps) / len(temps)
        if now - self._last_sample < SAMPLE_EVERY_S:
            return
        self._last_sample = now
        self._load_models()
        samples = []
        for room, units in by_room.items():
            if room not in self._room_temp:
                continue
            temp = self._room_temp[room]
            self.slow.update(self.models.model(room), temp, now)
            on = [u for u in units if u.on]
            samples.append(Sample(ts=now, room=room, temp_c=round(temp, 2),
                                  setpoint_c=min((u.setpoint_c for u in on), default=units[0].setpoint_c),
                                  units_on=len(on), ac_kw=sum(u.power_kw if u.power_kw is not None else u.rated_kw
                                                              for u in on),
                                  occupied=self.occupied(room, now)))
        if samples and self.history is not None:
            await asyncio.to_thread(self.history.add, samples)

    async def _precool(self, now: float, block: BlockStatus, views: list[UnitView]) -> None:
        """Before the morning rush: a room whose teachers usually switch on within `precool_lead_min`, and
        which is already as warm as when they do, is switched on now, one room a turn, while the block has
        room for it lasting (the rush then finds it cool instead of starting every unit at once)."""
        lead_s = self.ems.precool_lead_min * 60
        if lead_s <= 0 or block.stale:
            return
        local = datetime.fromtimestamp(now, self.host.tz)
        minute = local.hour * 60 + local.minute + local.second / 60
        today = local.date().isoformat()
        by_room: dict[str, list[UnitView]] = {}
        for v in views:
            by_room.setdefault(v.room, []).append(v)
        for room, units in sorted(by_room.items()):
            habits = self.models.habits_of(room)
            first = habits.first_on(local.weekday()) if habits is not None else None
            if habits is None or first is None or self._precooled.get(room) == today:
                continue
            if not 0 < first - minute <= lead_s / 60 or any(u.on or u.wanted_on for u in units):
                continue
            temp = self._room_temp.get(room)
            if temp is None or habits.on_temp_c is None or temp < habits.on_temp_c - PRECOOL_MARGIN_C:
                continue
            need_kw = sum(u.rated_kw for u in units)
            if self.controller.lasting_room_kw(now, block) - need_kw < self.controller.policy.restore_margin_kw:
                return
            self._precooled[room] = today
            for u in units:
                await self._apply(Action(u.id, ActionKind.PRECOOL,
                                         {"power_on": True, "mode": "cool",
                                          "setpoint_c": self.ems.precool_setpoint_c},
                                         f"{room}: pre-cooled before its usual {int(first) // 60:02d}:"
                                         f"{int(first) % 60:02d} start ({temp:.1f} °C)"))
            return

    # -- each class's AC use -------------------------------------------------------------------------
    def _usage_turn(self, now: float, views: list[UnitView]) -> None:
        out: list[DayUsage | QuotaWarning] = []
        for v in views:
            out += self.usage.feed(now, v.id, v.room, v.on, v.power_kw, v.rated_kw)
        out += self.usage.close_days(now)
        for item in out:
            self.host.on_event("usage" if isinstance(item, DayUsage) else "quota", item.as_event())

    async def _top_up(self, params: Mapping[str, Any], requester: str) -> Result:
        room, kwh = str(params.get("target", "")), params.get("kwh")
        if room not in self.floor:
            return refusal(room, "unknown_target", f"no room {room!r}")
        if not isinstance(kwh, int | float) or isinstance(kwh, bool) or not 0 < kwh <= 100_000:
            return refusal(room, "out_of_range", f"kwh {kwh!r}: a number above 0, at most 100000")
        before = self.usage.snapshot()
        if self.usage.balance(room) is None:
            self.usage.set_quota(room, float(kwh))
        else:
            self.usage.top_up(room, float(kwh))
        if not self._snapshot(force=True):   # a credit that is not on disk is not answered ok, nor kept
            self.usage.restore(before)
            return refusal(room, "storage_full", "the top-up could not be stored (the disk is full?); nothing changed")
        balance = self.usage.balance(room) or 0.0
        log.info("quota of room %s topped up by %g kWh by %s: %.1f kWh left", room, kwh, requester, balance)
        self.host.on_event("quota", {"room": room, "top_up_kwh": kwh, "balance_kwh": round(balance, 3),
                                     "by": requester})
        return Result("ok", "ok", f"room {room}: {balance:.1f} kWh left", room)

    async def _report(self, params: Mapping[str, Any], requester: str) -> Result:
        """Today's use so far per room as `usage` events (partial), on request."""
        target = str(params.get("target", "site"))
        try:
            rooms = self.usage.rooms() if target == "site" else [target]
            days = [self.usage.today(room) for room in rooms]
        except ValueError:   # nothing metered yet today
            return Result("ok", "ok", "no AC use metered yet today", target)
        for room, day in zip(rooms, days, strict=True):
            self.host.on_event("usage", {**day.as_event(), "id": f"usage-{room}-{day.day.isoformat()}-partial-"
                                                                  f"{int(self.host.clock.time())}", "partial": True})
        return Result("ok", "ok", f"{len(rooms)} usage report(s) sent", target)

    # -- alarms -------------------------------------------------------------------------------------
    def _alarm_turn(self, now: float, block: BlockStatus) -> None:
        raw = self.host.store.get(ALARM_DOCUMENT)   # a failing store: this part of the turn fails alone
        if raw != self._alarm_doc:
            self._alarm_doc = raw
            try:
                settings = parse_document(json.loads(raw)) if raw is not None else None
            except (ValueError, AlarmDocumentError) as exc:   # the verifier checked it: a damaged row, kept as is
                log.error("ems: stored alarm settings unreadable, keeping the previous ones: %s", exc)
            else:
                self._alarm_events(self.alarms.set_settings(settings, now))
        meter = self.host.states.get(self.ems.meter, {})
        self._alarm_events(self.alarms.update(now, block, meter if meter.get("online") else None))

    def _alarm_events(self, events: list[AlarmEvent]) -> None:
        for ev in events:
            log.warning("alarm %s %s: %s %s (threshold %s)", ev.level, ev.state, ev.metric, ev.value, ev.threshold)
            self.host.on_event("alarm", ev.as_event())

    def acknowledge(self, alarm_or_level: str, by: str) -> tuple[bool, str]:
        """A person acknowledges raised alarms (by id or level): (done, what happened in words)."""
        try:
            events = self.alarms.acknowledge(alarm_or_level, by, self.host.clock.time())
        except AlarmNotRaised as exc:
            return False, str(exc)
        self._alarm_events(events)
        self._snapshot(force=True)
        return True, f"{len(events)} alarm(s) acknowledged" if events else "already acknowledged"

    async def _ack(self, params: Mapping[str, Any], requester: str) -> Result:
        target = str(params.get("alarm") or params.get("level") or "")
        done, message = self.acknowledge(target, requester)
        return Result("ok", "ok", message, "site") if done else refusal("site", "bad_request", message)

    # -- admission ------------------------------------------------------------------------------------
    def admission(self, target: str, kind: Kind, fields: Mapping[str, Any],
                  source: Source) -> str | Denial | Queued | None:
        if kind != Kind.AC or source >= Source.EMS:
            return None
        dev = next((d for d in self.acs if d.id == target), None)
        if dev is None:
            return None
        now = self.host.clock.time()
        room = dev.room or ""
        if source == Source.TEACHER and fields.get("power_on") is True and self.usage.exhausted(room):
            return Denial("denied_by_quota", f"room {room} has used its prepaid AC quota"
                                             f" ({self.usage.balance(room) or 0:.1f} kWh left): staff can top it up")
        self._read_meter()
        return self.controller.admission(now, self.block(now), self.view(dev, now), fields)

    # -- what it shows --------------------------------------------------------------------------------
    def status_fields(self, block: BlockStatus) -> dict[str, Any]:
        return {"block_avg_kw": round(block.avg_kw, 2), "projected_kw": round(block.projected_kw, 2),
                "allow_kw": round(block.allow_kw, 2), "contract_kw": block.contract_kw,
                "shed_units": len(self.controller.shed_units()), "stale": block.stale}

    def status(self) -> dict[str, Any]:
        block = self.block()
        start = datetime.fromtimestamp(block.start, self.host.tz).isoformat()
        return {**self.status_fields(block), "block_start": start,
                "peak_kw": round(self.meter.peak_kw, 2), "sliding_peak_kw": round(self.meter.sliding_peak_kw, 2),
                "shed": self.controller.shed_units(), "turns": self.turns,
                "alarms": [a.as_event() for a in self.alarms.active()], "usage": self.usage.as_status()}

    # -- persistence ----------------------------------------------------------------------------------
    def _snapshot(self, *, force: bool = False) -> bool:
        """Save the block, alarms and usage; False if the store refused (control goes on from memory)."""
        now = self.host.clock.time()
        if not force and now - self._last_snapshot < SNAPSHOT_EVERY_S:
            return True
        self._last_snapshot = now
        try:
            self.host.store.set(SNAPSHOT_KEY, json.dumps({"meter": self.meter.snapshot(),
                                                          "alarms": self.alarms.snapshot(),
                                                          "usage": self.usage.snapshot()}))
        except StorageError as exc:   # a full disk: control goes on from memory
            log.warning("ems: state not saved: %s", exc)
            return False
        return True

    def _restore(self) -> None:
        try:
            raw = self.host.store.get(SNAPSHOT_KEY)
        except Exception as exc:   # a damaged store: start the block afresh rather than not at all
            log.warning("ems: saved state unreadable (%s); starting afresh", exc)
            return
        if raw is None:
            return
        try:
            saved = json.loads(raw)
            self.meter.restore(saved["meter"], self.host.clock.time())
            if "alarms" in saved:
                raw_alarms = self.host.store.get(ALARM_DOCUMENT)
                self._alarm_doc = raw_alarms
                self.alarms.set_settings(parse_document(json.loads(raw_alarms)) if raw_alarms else None,
                                         self.host.clock.time())
                self.alarms.restore(saved["alarms"])
            if "usage" in saved:
                self.usage.restore(saved["usage"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ems: saved state unreadable, starting the block afresh: %s", exc)

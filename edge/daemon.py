"""The daemon: the composition root that wires config, drivers, state, arbiter and APIs.

One supervisor (`asyncio.TaskGroup`) runs every service; SIGTERM/SIGINT set `stop`, the group is
cancelled, the store is flushed, and the process exits 0. Runs fully without a cloud section.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.devices import AC_WRITABLE, NO_COMMUNICATION_FAULT, channel_field, state_for
from drivers.modbus.engine import DeviceHealth, ModbusEngine, Reading, WriteError
from drivers.modbus.profile import Profile
from edge.config import config_warnings
from edge.core.arbiter import MAX_DOOR_UNLOCK_S, MIN_OFF_S, ApplyError, Arbiter, Outcome, Request, Source
from edge.core.clock import Clock, SystemClock, iso
from edge.core.config import Config, RelayChannel
from edge.core.events import EventBus, Message
from edge.core.schedule import ScheduleRunner
from edge.core.store import Store
from edge.http import HttpServer

log = logging.getLogger("campus_edge.daemon")

VERSION = "0.1.0"
FLUSH_S = 60.0  # state rows written to the SD card at most this often (wear)


@dataclass(frozen=True, slots=True)
class Channel:
    """A light, fan or door wired to a relay board channel."""

    device: RelayChannel
    field: str


class Daemon:
    """Everything the gateway runs, as one async context: `async with Daemon(cfg) as d: await d.wait()`."""

    def __init__(self, cfg: Config, clock: Clock | None = None, status_port: int | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.started_at = self.clock.time()
        self.tz = ZoneInfo(cfg.site.timezone)
        self.bus = EventBus()
        self.store = Store(Path(cfg.storage.path) / "state.db")
        self.profiles: dict[str, Profile] = {}
        self.modbus: ModbusEngine | None = None
        self.cloud: Any = None
        self.telemetry: Any = None
        self.kind_of: dict[str, str] = {}
        self.channels_of: dict[str, list[Channel]] = {}
        self.channel_devices: dict[str, Channel] = {}
        self.values: dict[str, dict[str, Any]] = {}
        self._unread: dict[str, set[str]] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.arbiter = Arbiter(self, self.store, self.clock, min_off=self._min_off)
        self.http = HttpServer("127.0.0.1", cfg.status_port if status_port is None else status_port)
        self.schedules = ScheduleRunner(
            [(e.id, e.at, e.days, [a for t in e.targets for a in cfg.actuators_for(t)], dict(e.set), e.hold_min)
             for e in cfg.schedules], self.tz, self.clock, self._fire_schedule)
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._bg: list[asyncio.Task[None]] = []
        self._exit = contextlib.AsyncExitStack()
        self._build()

    # -- wiring ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.modbus = ModbusEngine.from_config(self.cfg, self, clock=self.clock)
        for dev in self.cfg.modbus_devices():
            self.profiles[dev.id] = self.modbus.profile(dev.id)
            self.kind_of[dev.id] = dev.kind
            self._unread[dev.id] = {p.field for p in self.profiles[dev.id].points if p.poll}
        for ch in self.cfg.relay_channels():
            c = Channel(ch, channel_field(ch.channel))
            self.channels_of.setdefault(ch.relay, []).append(c)
            self.channel_devices[ch.id] = c
            self.kind_of[ch.id] = ch.kind
        for dev_id, kind in self.kind_of.items():
            board = self.profiles.get(dev_id)
            blank = {"on": None} if board is None else state_for(kind, {}, board.channels or 0)
            prev = self.store.states.get(dev_id, {})
            # the last state survives a restart but is not vouched for until a fresh reading arrives
            self.states[dev_id] = {**blank, **prev, "online": False,
                                   "ts": prev.get("ts") or iso(self.started_at, self.tz)}

    @property
    def _engine(self) -> ModbusEngine:
        assert self.modbus is not None
        return self.modbus

    def _min_off(self, actuator: str) -> float:
        return MIN_OFF_S if self.kind_of.get(actuator) == "ac" else 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Daemon:
        """Start everything; on a failure half-way, close what had started (in reverse)."""
        self._routes()
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.callback(self._close_store)
            await self.http.start()
            stack.push_async_callback(self.http.close)
            if self.cfg.cloud is not None:
                # entered before the Modbus engine so that it is left after it: fault events that the
                # engine's shutdown produces still reach the durable outbox
                from cloud_sync.service import CloudService  # only sites with a cloud pay for MQTT and crypto

                if self.cfg.cloud.influx is not None:
                    from cloud_sync.telemetry import TelemetryWriter  # only sites with an Influx pay for it

                    self.telemetry = await stack.enter_async_context(TelemetryWriter(
                        self.cfg, self.bus, storage_dir=Path(self.cfg.storage.path), clock=self.clock))
                self.cloud = await stack.enter_async_context(CloudService(self))
            await stack.enter_async_context(self._engine)
            self._tasks = asyncio.TaskGroup()
            await stack.enter_async_context(self._tasks)
            stack.callback(self._cancel_background)
            self._bg = [self._tasks.create_task(self.arbiter.run(), name="arbiter"),
                        self._tasks.create_task(self._flusher(), name="store-flush"),
                        self._tasks.create_task(self.schedules.run(), name="schedules")]
        except BaseException:
            await stack.aclose()
            raise
        self._exit = stack
        for warning in config_warnings(self.cfg):
            log.warning("config: %s", warning)
        log.info("daemon started: %d devices on %d buses, status API on 127.0.0.1:%d",
                 len(self.kind_of), len(self._engine.buses), self.http.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._exit.aclose()
        finally:
            log.info("daemon stopped")

    def _cancel_background(self) -> None:
        for t in self._bg:
            t.cancel()

    def _close_store(self) -> None:
        for dev_id, st in self.states.items():
            self.store.put_state(dev_id, st)
        self.store.close()

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await asyncio.to_thread(self.store.flush)

    # -- readings in (the engines' sink) ---------------------------------------------------------
    def on_reading(self, r: Reading) -> None:
        vals = self.values.setdefault(r.device_id, {})
        vals.update(r.values)
        missing = self._unread.get(r.device_id)
        if missing:
            # a device's first cycle takes several transactions (SDM630: three): publish its STATE
            # once every polled field has been read, not a half-filled one
            missing.difference_update(r.values, r.rejected)
            if missing:
                return
        kind = self.kind_of[r.device_id]
        prof = self.profiles[r.device_id]
        typed = state_for(kind, vals, prof.channels or 0)
        if kind == "ac" and typed["fault"] == NO_COMMUNICATION_FAULT:
            self._set_state(r.device_id, {**typed, "online": False}, r.ts)
        else:
            self._set_state(r.device_id, {**typed, "online": True}, r.ts)
        if kind == "ac":
            self.arbiter.observe(r.device_id, typed)
        for ch in self.channels_of.get(r.device_id, []):
            if ch.field in vals:
                self._set_state(ch.device.id, {"on": bool(vals[ch.field]), "online": True}, r.ts)

    def on_health(self, h: DeviceHealth) -> None:
        # a device back before its first complete reading is shown online by that reading
        show = not (h.online and self._unread.get(h.device_id))
        affected = [h.device_id] + [c.device.id for c in self.channels_of.get(h.device_id, [])]
        for dev_id in affected:
            if show:
                self._set_state(dev_id, {**self.states.get(dev_id, {}), "online": h.online}, self.clock.time())
            if h.online:
                self.arbiter.forget_applied(dev_id)
                if self._tasks is not None:
                    self._tasks.create_task(self.arbiter.reconcile(dev_id), name=f"reapply-{dev_id}")
        self._event("fault", {"device": h.device_id, "code": "offline" if not h.online else "online",
                              "message": h.reason})

    def _set_state(self, dev_id: str, state: Mapping[str, Any], ts: float) -> None:
        old = self.states.get(dev_id, {})
        new = {**state, "ts": iso(ts, self.tz)}
        changed = {k for k in new if k != "ts" and old.get(k) != new[k]}
        self.states[dev_id] = new
        if not changed:
            return
        self.store.put_state(dev_id, new)
        if "fault" in changed and new.get("fault") is not None:
            self._event("fault", {"device": dev_id, "code": new["fault"]})
        self.bus.publish(Message("state", dev_id, new, ts))

    def _event(self, kind: str, body: Mapping[str, Any]) -> None:
        now = self.clock.time()
        payload = {"id": os.urandom(8).hex(), "ts": iso(now, self.tz), "kind": kind, **body}
        log.info("event %s %s", kind, body)
        self.bus.publish(Message("event", kind, payload, now))

    # -- actuators (the arbiter's side) ----------------------------------------------------------
    def actual(self, actuator: str) -> Mapping[str, Any]:
        return self.states.get(actuator, {})

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        ch = self.channel_devices.get(actuator)
        try:
            if ch is not None:
                got = await self._engine.write(ch.device.relay, {ch.field: bool(fields["on"])})
                return {"on": got[ch.field]}
            return await self._engine.write(actuator, dict(fields))
        except WriteError as exc:
            raise ApplyError(exc.code, str(exc)) from exc
        except KeyError as exc:
            raise ApplyError("unknown_target", f"{actuator} has no writable field {exc}") from exc

    async def command(self, target: str, fields: Mapping[str, Any], source: Source,
                      requester: str | None = None, hold_s: float | None = None) -> Outcome:
        """A validated request for one actuator, through the arbiter (local API, schedules, cloud)."""
        kind = self.kind_of.get(target)
        if kind is None:
            return Outcome(False, "unknown_target", f"no device {target!r}", {}, {})
        if kind == "door":
            return Outcome(False, "bad_request", f"{target} is a door: doors open only with door.unlock", {}, {})
        allowed = AC_WRITABLE if kind == "ac" else {"on"} if kind in ("light", "fan") else set()
        bad = set(fields) - allowed
        if not fields or bad:
            return Outcome(False, "bad_request", f"{target} accepts {sorted(allowed)}, got {sorted(fields)}", {}, {})
        physical = self.channel_devices[target].device.relay if target in self.channel_devices else target
        if not self.states.get(physical, {}).get("online", False):
            return Outcome(False, "device_offline", f"{physical} is offline", {}, {})
        expires = None if hold_s is None else self.clock.time() + hold_s
        return await self.arbiter.submit(Request(target, source, dict(fields), expires, requester))

    async def _fire_schedule(self, entry: str, target: str, fields: dict[str, Any], hold_s: float | None) -> None:
        kind = self.kind_of.get(target)
        if kind != "ac" and "power_on" in fields:
            fields = {"on": fields.pop("power_on"), **fields}
        allowed = AC_WRITABLE if kind == "ac" else {"on"}
        fields = {k: v for k, v in fields.items() if k in allowed}
        if not fields:
            return
        requester = f"schedule:{entry}"
        if hold_s:
            out = await self.command(target, fields, Source.SCHEDULE, requester=requester, hold_s=hold_s)
        else:
            out = await self.arbiter.set_baseline(target, fields, requester)
        if not out.ok:
            log.warning("schedule %s on %s: %s %s", entry, target, out.code, out.message)

    async def unlock(self, door_id: str, seconds: float) -> None:
        """Open a door for `seconds`; the relay board re-locks by itself even if we die (flash)."""
        ch = self.channel_devices.get(door_id)
        if ch is None or ch.device.kind != "door":
            raise ApplyError("unknown_target", f"no door {door_id!r}")
        try:
            await self._engine.flash(ch.device.relay, ch.device.channel, on=True,
                                     seconds=min(seconds, MAX_DOOR_UNLOCK_S))
        except WriteError as exc:
            raise ApplyError(exc.code, str(exc)) from exc

    # -- local status API ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"devices": self.states}

    def _routes(self) -> None:
        async def get_status(_path: str, _body: bytes) -> tuple[int, Any]:
            return 200, {**self.status(), "gateway": self.gateway_info()}

        async def get_health(_path: str, _body: bytes) -> tuple[int, Any]:
            return 200, {"ok": True, "uptime_s": round(self.clock.time() - self.started_at, 1)}

        async def get_metrics(_path: str, _body: bytes) -> tuple[int, Any]:
            return 200, self.metrics_text()

        async def post_device(path: str, body: bytes) -> tuple[int, Any]:
            import json

            target = path.rsplit("/", 1)[-1]
            try:
                fields = json.loads(body or b"{}")
                if not isinstance(fields, dict):
                    raise ValueError("a JSON object of fields is expected")
            except ValueError as exc:
                return 400, {"status": "rejected", "code": "bad_request", "message": str(exc)}
            out = await self.command(target, fields, Source.LOCAL, requester="local")
            return (200 if out.ok else 409), {"status": "ok" if out.ok else "failed", "code": out.code,
                                               "message": out.message, "state": self.states.get(target)}

        self.http.route("GET", "/status", get_status)
        self.http.route("GET", "/health", get_health)
        self.http.route("GET", "/metrics", get_metrics)
        self.http.route("POST", "/devices/", post_device)

    def gateway_info(self) -> dict[str, Any]:
        return {"school_id": self.cfg.site.school_id, "gateway_id": self.cfg.site.gateway_id,
                "version": VERSION, "started_at": iso(self.started_at, self.tz),
                "buses": self._engine.stats()}

    def metrics_text(self) -> str:
        """Prometheus text exposition of device health and bus counters."""
        lines = ["# TYPE campus_edge_device_online gauge"]
        lines += [f'campus_edge_device_online{{device="{d}"}} {int(bool(s.get("online")))}'
                  for d, s in sorted(self.states.items())]
        lines.append("# TYPE campus_edge_modbus_requests_total counter")
        lines.append("# TYPE campus_edge_modbus_errors_total counter")
        for bus_id, st in sorted(self._engine.stats().items()):
            lines.append(f'campus_edge_modbus_requests_total{{bus="{bus_id}"}} {st.get("requests", 0)}')
            for kind, n in sorted(st.get("errors", {}).items()):
                lines.append(f'campus_edge_modbus_errors_total{{bus="{bus_id}",kind="{kind}"}} {n}')
        lines.append("# TYPE campus_edge_uptime_seconds gauge")
        lines.append(f"campus_edge_uptime_seconds {self.clock.time() - self.started_at:.0f}")
        return "\n".join(lines) + "\n"

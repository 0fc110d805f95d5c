"""The daemon: the composition root that wires config, drivers, state, arbiter, control and APIs.

Drivers (the Modbus engine today; serial RFID readers and Bluetooth scanners next) plug in through
the core's `Driver` seam: the daemon keeps a list of them and routes by device id. Every control
source asks through one entry (`edge.core.control.Control`). One supervisor (`asyncio.TaskGroup`)
runs every service; SIGTERM/SIGINT set `stop`, the group is cancelled, the store is flushed, and
the process exits 0. Runs fully without a cloud section.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.modbus.driver import ModbusDriver
from edge.bookings import BookingService
from edge.config import config_warnings
from edge.core.arbiter import Arbiter, Source
from edge.core.clock import Clock, SystemClock, iso
from edge.core.config import BeaconScanner, Config, RfidReader
from edge.core.control import Ask, Control, Result
from edge.core.driver import PULSE, ApplyError, Driver, DriverFactory, DriverSink
from edge.core.events import EventBus, Message
from edge.core.model import CHANNEL_KINDS, CONTROLLABLE_KINDS, AcState, DeviceState, Kind, blank_state
from edge.core.schedule import ScheduleRunner, fields_for
from edge.core.store import Store
from edge.energy import EnergyService
from edge.homeassistant import HomeAssistantService
from edge.http import HttpServer
from edge.metrics import render as render_metrics
from edge.screen import ScreenService
from edge.sdnotify import Notifier, watchdog_interval_s

log = logging.getLogger("campus_edge.daemon")

VERSION = "0.1.0"
FLUSH_S = 60.0  # state rows written to the SD card at most this often (wear)

def rfid_driver(cfg: Config, sink: DriverSink, clock: Clock) -> Driver | None:
    """RFID readers, where the site has any."""
    if not any(isinstance(d, RfidReader) for d in cfg.devices):
        return None
    from drivers.rfid.driver import RfidDriver  # lazy: the serial libraries (~6 MB) only where a reader is configured

    return RfidDriver.from_config(cfg, sink, clock)


def beacon_driver(cfg: Config, sink: DriverSink, clock: Clock) -> Driver | None:
    """BLE beacon scanners, where the site has any (bleak itself is imported later still, by its backend)."""
    if not any(isinstance(d, BeaconScanner) for d in cfg.devices):
        return None
    from drivers.beacon.driver import BeaconDriver  # lazy: only where a scanner is configured

    return BeaconDriver.from_config(cfg, sink, clock)


def access_service(daemon: Daemon) -> AbstractAsyncContextManager[Any] | None:
    """Door decisions from the access list, where a door reader is configured."""
    if not any(isinstance(d, RfidReader) and d.purpose == "door" for d in daemon.cfg.devices):
        return None
    from edge.access import AccessService  # lazy: it knows the RFID driver (serial libraries)

    return AccessService.from_daemon(daemon)


DEFAULT_DRIVERS: tuple[DriverFactory, ...] = (ModbusDriver.from_config, rfid_driver, beacon_driver)
"""Every kind of hardware the gateway drives: a new one is a driver factory added here."""

ServiceFactory = Callable[["Daemon"], AbstractAsyncContextManager[Any] | None]
"""A decider that runs beside the drivers (access control, bookings, the energy manager): built from the
running daemon (its control entry, drivers, store, bus, clock), entered after the drivers, left before them."""

DEFAULT_SERVICES: tuple[ServiceFactory, ...] = (BookingService.from_daemon, access_service,
                                                 EnergyService.from_daemon, HomeAssistantService.from_daemon,
                                                 ScreenService.from_daemon)


class Daemon:
    """Everything the gateway runs, as one async context: `async with Daemon(cfg) as d: await d.wait()`."""

    def __init__(self, cfg: Config, clock: Clock | None = None, status_port: int | None = None,
                 drivers: Sequence[DriverFactory] = DEFAULT_DRIVERS,
                 services: Sequence[ServiceFactory] = DEFAULT_SERVICES) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.started_at = self.clock.time()
        self.tz = ZoneInfo(cfg.site.timezone)
        self.bus = EventBus()
        self.store = Store(Path(cfg.storage.path) / "state.db", on_error=self._storage_error)
        self._storage_failing = False
        self.cloud: Any = None
        self.telemetry: Any = None
        self.drivers: list[Driver] = []
        self.owner: dict[str, Driver] = {}
        self.kinds: dict[str, Kind] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self._fresh: set[str] = set()   # devices read since the start (only these are shown online)
        for factory in drivers:
            drv = factory(cfg, self, self.clock)
            if drv is None:
                continue
            self.drivers.append(drv)
            for dev_id, kind in drv.devices().items():
                if dev_id in self.owner:
                    raise ValueError(f"device {dev_id} is claimed by drivers {self.owner[dev_id].name} and {drv.name}")
                self.owner[dev_id] = drv
                self.kinds[dev_id] = kind
        self.unowned = [d.id for d in cfg.devices if d.id not in self.owner]
        for dev_id, kind in self.kinds.items():
            prev = self.store.states.get(dev_id, {})
            # the last state survives a restart but is not vouched for until a fresh reading arrives
            self.states[dev_id] = {**blank_state(kind).as_json(), **prev, "online": False,
                                   "ts": prev.get("ts") or iso(self.started_at, self.tz)}
        self.arbiter = Arbiter(self, self.store, self.clock, min_off=self._min_off)
        self.control = Control(self.arbiter, self.kinds, self.online, self.actual, self._can_pulse,
                               cfg.control, self.clock, self.tz, events=self.on_event)
        self.http = HttpServer("127.0.0.1", cfg.status_port if status_port is None else status_port)
        self.local = HttpServer(unix=cfg.control.socket, group=cfg.control.socket_group,
                                max_connections=cfg.control.max_connections)
        self.schedules = ScheduleRunner(
            [(e.id, e.at, e.days, [a for t in e.targets for a in cfg.actuators_for(t, e.kinds)], dict(e.set),
              e.hold_min) for e in cfg.all_schedules()], self.tz, self.clock, self._fire_schedule)
        self.notifier = Notifier()
        self.watchdog_s = watchdog_interval_s()
        self._service_factories = tuple(services)
        self.services: list[Any] = []
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._bg: list[asyncio.Task[None]] = []
        self._exit = contextlib.AsyncExitStack()

    def _min_off(self, actuator: str) -> float:
        return self.cfg.control.min_off_s if self.kinds.get(actuator) == Kind.AC else 0.0

    def _can_pulse(self, device_id: str) -> bool:
        drv = self.owner.get(device_id)
        return drv is not None and PULSE in drv.capabilities(device_id)

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
            try:
                await self.local.start()
                stack.push_async_callback(self.local.close)
            except OSError as exc:  # local control is lost, the school's control is not
                log.error("local control socket %s unavailable: %s", self.cfg.control.socket, exc)
            if self.cfg.cloud is not None:
                # entered before the drivers so that it is left after them: fault events that their
                # shutdown produces still reach the durable outbox
                from cloud_sync.service import CloudService  # lazy: only sites with a cloud pay for MQTT and crypto

                if self.cfg.cloud.influx is not None:
                    from cloud_sync.telemetry import TelemetryWriter  # lazy: only sites with an Influx pay for it

                    self.telemetry = await stack.enter_async_context(TelemetryWriter(
                        self.cfg, self.bus, storage_dir=Path(self.cfg.storage.path), clock=self.clock))
                self.cloud = await stack.enter_async_context(CloudService(self))
            for drv in self.drivers:
                await stack.enter_async_context(drv)
            for make in self._service_factories:
                service = make(self)
                if service is not None:
                    self.services.append(await stack.enter_async_context(service))
            self._tasks = asyncio.TaskGroup()
            await stack.enter_async_context(self._tasks)
            stack.callback(self._cancel_background)
            self._bg = [self._tasks.create_task(self.arbiter.run(), name="arbiter"),
                        self._tasks.create_task(self._flusher(), name="store-flush"),
                        self._tasks.create_task(self.schedules.run(), name="schedules")]
            if self.watchdog_s is not None:
                self._bg.append(self._tasks.create_task(self._watchdog(self.watchdog_s), name="watchdog"))
        except BaseException:
            await stack.aclose()
            raise
        self._exit = stack
        if self.store.set_aside is not None:
            a = self.store.set_aside
            self.on_event("storage", {"database": a.path.name, "action": "set_aside", "moved_to": str(a.moved_to),
                                      "reason": a.reason, "lost": "device states and held requests"})
        for warning in config_warnings(self.cfg):
            log.warning("config: %s", warning)
        for dev_id in self.unowned:
            log.warning("config: device %s has no driver: nothing reads or drives it", dev_id)
        log.info("daemon started: %d devices by %d drivers, status API on 127.0.0.1:%d, local control on %s",
                 len(self.kinds), len(self.drivers), self.http.port, self.cfg.control.socket)
        self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        try:
            await self._exit.aclose()
        finally:
            self.notifier.close()
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
            wrote = await asyncio.to_thread(self.store.flush)
            if self._storage_failing and (wrote or not self.store.pending()):
                self._storage_failing = False
                self.on_event("storage", {"database": "state.db", "action": "recovered"})

    # -- systemd -----------------------------------------------------------------------------------
    def liveness(self, limit_s: float) -> list[str]:
        """The critical loops that made no progress in the last `limit_s` seconds ([] when all turn)."""
        now = time.monotonic()
        stuck = [] if now - self.arbiter.last_turn <= limit_s else [
            f"arbiter: no turn for {now - self.arbiter.last_turn:.0f} s"]
        for drv in self.drivers:
            stuck += drv.stuck(limit_s)
        cloud_stuck = getattr(self.cloud, "stuck", None)
        if cloud_stuck is not None:
            stuck += cloud_stuck(limit_s)
        return stuck

    def status_line(self) -> str:
        online = sum(1 for s in self.states.values() if s.get("online"))
        cloud = "" if self.cloud is None else "; cloud " + ("connected" if getattr(self.cloud, "connected", False)
                                                             else "disconnected")
        return f"{online}/{len(self.states)} devices online{cloud}"

    async def _watchdog(self, interval_s: float) -> None:
        """Feed systemd's watchdog (WatchdogSec) only while every critical loop turns: a hung one gets us restarted."""
        fed_last = True
        while True:
            await asyncio.sleep(interval_s / 3)
            stuck = self.liveness(interval_s)
            if stuck:
                if fed_last:
                    log.error("watchdog not fed: %s", "; ".join(stuck))
                fed_last = False
                self.notifier.notify(f"STATUS=stuck: {'; '.join(stuck)[:200]}")
                continue
            fed_last = True
            self.notifier.notify("WATCHDOG=1", f"STATUS={self.status_line()}")

    def _storage_error(self, what: str) -> None:
        """A state-store write failed (a full disk): control goes on from memory; one event per outage."""
        if not self._storage_failing:
            self._storage_failing = True
            self.on_event("storage", {"database": "state.db", "action": "write_failed", "message": what})

    # -- the drivers' sink -----------------------------------------------------------------------
    def on_state(self, device_id: str, state: DeviceState, online: bool, ts: float) -> None:
        self._fresh.add(device_id)
        self._set_state(device_id, {**state.as_json(), "online": online}, ts)
        if isinstance(state, AcState):
            self.arbiter.observe(device_id, {"power_on": state.power_on})

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        # a device back before its first complete reading is shown online by that reading
        if not online or device_id in self._fresh:
            self._set_state(device_id, {**self.states.get(device_id, {}), "online": online}, self.clock.time())
        if online:
            self.arbiter.forget_applied(device_id)
            if self._tasks is not None and self.kinds.get(device_id) in CONTROLLABLE_KINDS:
                coro = self.arbiter.reconcile(device_id)
                try:
                    self._tasks.create_task(coro, name=f"reapply-{device_id}")
                except RuntimeError:   # the daemon is stopping (its task group no longer takes tasks)
                    coro.close()
        if self.kinds.get(device_id) not in CHANNEL_KINDS:  # one event per physical device, not per channel
            self.on_event("fault", {"device": device_id, "code": "online" if online else "offline",
                                    "message": reason})

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        now = self.clock.time()
        payload = {"id": os.urandom(8).hex(), "ts": iso(now, self.tz), "kind": kind, **body}
        log.info("event %s %s", kind, dict(body))
        self.bus.publish(Message("event", kind, payload, now))

    def _set_state(self, dev_id: str, state: Mapping[str, Any], ts: float) -> None:
        old = self.states.get(dev_id, {})
        new = {**state, "ts": iso(ts, self.tz)}
        changed = {k for k in new if k != "ts" and old.get(k) != new[k]}
        self.states[dev_id] = new
        if not changed:
            return
        self.store.put_state(dev_id, new)
        if "fault" in changed and new.get("fault") is not None:
            self.on_event("fault", {"device": dev_id, "code": new["fault"]})
        self.bus.publish(Message("state", dev_id, new, ts))

    # -- actuators (the arbiter's side) ----------------------------------------------------------
    def online(self, device_id: str) -> bool:
        return bool(self.states.get(device_id, {}).get("online"))

    def actual(self, actuator: str) -> Mapping[str, Any]:
        return self.states.get(actuator, {})

    def _driver(self, device_id: str) -> Driver:
        drv = self.owner.get(device_id)
        if drv is None:
            raise ApplyError("unknown_target", f"no driver for {device_id!r}")
        return drv

    async def apply(self, actuator: str, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self._driver(actuator).apply(actuator, fields)

    async def pulse(self, actuator: str, seconds: float) -> None:
        await self._driver(actuator).pulse(actuator, seconds)

    async def _fire_schedule(self, entry: str, target: str, fields: dict[str, Any], hold_s: float | None) -> None:
        fields = fields_for(self.kinds[target], fields)
        requester = f"schedule:{entry}"
        if hold_s:
            out = await self.control.ask(Ask(target, fields, Source.SCHEDULE, requester, hold_s))
        else:
            out = await self.control.baseline(target, fields, requester)
        if not out.ok:
            log.warning("schedule %s on %s: %s %s", entry, target, out.code, out.message)

    # -- local APIs ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Device states, who holds what until when, and what each service reports (bookings: rooms open)."""
        holds = {dev: h for dev in self.kinds if (h := self.holds(dev))}
        return {"devices": self.states, "holds": holds,
                **{s.name: s.status() for s in self.services if hasattr(s, "status")}}

    def holds(self, device_id: str) -> list[dict[str, Any]]:
        return [{"source": r.source.name.lower(), "by": r.requester, "fields": dict(r.fields),
                 "until": None if r.expires is None else iso(r.expires, self.tz)}
                for r in self.arbiter.requests(device_id) if r.source > Source.RESTORE]

    def _routes(self) -> None:
        async def get_status(_path: str, _body: bytes, _peer: str | None) -> tuple[int, Any]:
            return 200, {**self.status(), "gateway": self.gateway_info()}

        async def get_health(_path: str, _body: bytes, _peer: str | None) -> tuple[int, Any]:
            return 200, {"ok": True, "uptime_s": round(self.clock.time() - self.started_at, 1)}

        async def get_metrics(_path: str, _body: bytes, _peer: str | None) -> tuple[int, Any]:
            return 200, await self.metrics_text()

        for server in (self.http, self.local):
            server.route("GET", "/status", get_status)
            server.route("GET", "/health", get_health)
            server.route("GET", "/metrics", get_metrics)
        # control only on the Unix socket: its file permissions are the credential
        self.local.route("POST", "/devices/", self._post_device)
        self.local.route("DELETE", "/devices/", self._delete_device)
        self.local.route("GET", "/devices/", self._get_device)

    def _reply(self, out: Result) -> tuple[int, Any]:
        code = 200 if out.ok else 422 if out.status == "rejected" else 409
        return code, out.payload(self.tz)

    async def _post_device(self, path: str, body: bytes, peer: str | None) -> tuple[int, Any]:
        parts = path.strip("/").split("/")   # devices/ID or devices/ID/unlock
        target = parts[1] if len(parts) > 1 else ""
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a JSON object is expected")
        except ValueError as exc:
            return 400, {"status": "rejected", "code": "bad_request", "message": f"body: {exc}"}
        who = f"local:{peer or 'unknown'}"
        if len(parts) == 3 and parts[2] == "unlock":
            return self._reply(await self.control.pulse(target, req.get("seconds"), Source.LOCAL, who))
        hold = req.pop("hold_s", None)
        if hold is not None and (isinstance(hold, bool) or not isinstance(hold, int | float)):
            return 400, {"status": "rejected", "code": "bad_request", "message": "hold_s: a number of seconds"}
        fields = req.pop("set", None)
        if not isinstance(fields, dict) or req:
            return 400, {"status": "rejected", "code": "bad_request",
                         "message": "expected {\"set\": {FIELD: VALUE, ...}, \"hold_s\"?: seconds}"}
        return self._reply(await self.control.ask(Ask(target, fields, Source.LOCAL, who, hold)))

    async def _delete_device(self, path: str, _body: bytes, peer: str | None) -> tuple[int, Any]:
        target = path.rsplit("/", 1)[-1]
        return self._reply(await self.control.release(target, Source.LOCAL, f"local:{peer or 'unknown'}"))

    async def _get_device(self, path: str, _body: bytes, _peer: str | None) -> tuple[int, Any]:
        target = path.rsplit("/", 1)[-1]
        if target not in self.kinds:
            return 404, {"error": f"no device {target!r}"}
        return 200, {"state": self.states.get(target), "holds": self.holds(target)}

    def gateway_info(self) -> dict[str, Any]:
        drivers = {d.name: d.stats() for d in self.drivers}   # each driver asked once
        return {"school_id": self.cfg.site.school_id, "gateway_id": self.cfg.site.gateway_id,
                "version": VERSION, "started_at": iso(self.started_at, self.tz),
                "drivers": drivers, "buses": dict(drivers.get("modbus", {}))}

    async def metrics_text(self) -> str:
        """Prometheus text exposition (edge.metrics): buses, devices, cloud link, outbox, EMS, the process."""
        return await render_metrics(self, VERSION)

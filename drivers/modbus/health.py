"""Device health on one bus: online/offline transitions, and the backoff of failing units and devices.

A unit that times out or answers garbage backs off as a whole (every device behind that unit id is
offline) and is probed with one read at its retry time; a device that answers its own reads with
exceptions backs off alone.  Retry delays double from BACKOFF_BASE_S up to BACKOFF_MAX_S, each
with +-BACKOFF_JITTER, so a dead device is still probed every ~5 min and never delays the others.
"""

from __future__ import annotations

import logging
import random

from drivers.modbus.model import DeviceHealth
from drivers.modbus.state import BusContext, DeviceState
from edge.core.backoff import Backoff

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0  # first retry of a failing unit or device
BACKOFF_MAX_S = 300.0  # a dead device is still probed every ~5 min
BACKOFF_JITTER = 0.2  # +-20 %, so devices that failed together do not retry together


class Health:
    """Online state of a bus's devices and the backoff of its failing units and devices."""

    def __init__(self, ctx: BusContext, rng: random.Random) -> None:
        self.units: dict[int, Backoff] = {}  # units that stopped answering
        self.probing: set[int] = set()  # units whose one probe is queued or in flight
        self._ctx = ctx
        self._devices = ctx.devices
        self._rng = rng

    def _backoff(self) -> Backoff:
        return Backoff(base_s=BACKOFF_BASE_S, max_s=BACKOFF_MAX_S, jitter=BACKOFF_JITTER, rng=self._rng)

    def online(self, device_id: str) -> bool:
        """Answering, and neither it nor its unit in backoff (the connection aside)."""
        dev = self._devices[device_id]
        return bool(dev.online) and dev.backoff is None and dev.spec.unit not in self.units

    def set(self, dev: DeviceState, online: bool, reason: str | None) -> None:
        if dev.online == online:  # transitions only; a new reason while offline is not news
            dev.reason = reason
            return
        dev.online, dev.reason = online, reason
        self._ctx.sink.on_health(DeviceHealth(dev.spec.device_id, online, reason, self._ctx.clock.time()))

    def answered(self, dev: DeviceState, unit: int) -> None:
        """A read of `dev` succeeded: it is online unless it or its unit still backs off."""
        if dev.backoff is None and unit not in self.units:
            self.set(dev, True, None)

    def all_offline(self, reason: str) -> None:
        for dev in self._devices.values():
            if dev.online is not False:
                self.set(dev, False, reason)

    def unit_ok(self, unit: int) -> None:
        self.probing.discard(unit)
        if self.units.pop(unit, None) is not None:
            log.info("bus %s: unit %d answers again", self._ctx.bus_id, unit)

    def unit_failed(self, unit: int, reason: str) -> None:
        state = self.units.setdefault(unit, self._backoff())
        self.probing.discard(unit)
        delay = state.fail(self._ctx.now())
        if state.failures == 1:
            log.warning("bus %s: unit %d %s; retrying with backoff", self._ctx.bus_id, unit, reason)
        log.debug("bus %s: unit %d next probe in %.1f s", self._ctx.bus_id, unit, delay)
        for dev in self._devices.values():
            if dev.spec.unit == unit:
                self.set(dev, False, reason)

    def device_failed(self, device_id: str, reason: str) -> None:
        dev = self._devices[device_id]
        dev.backoff = dev.backoff or self._backoff()
        dev.backoff.fail(self._ctx.now())
        if dev.backoff.failures == 1:
            log.warning("bus %s: device %s %s; retrying with backoff", self._ctx.bus_id, device_id, reason)
        self.set(dev, False, reason)

    def device_recovered(self, device_id: str) -> bool:
        """Its probe was answered; True when it was in backoff (its reads must be planned again)."""
        dev = self._devices[device_id]
        if dev.backoff is None:
            return False
        dev.backoff = None
        return True

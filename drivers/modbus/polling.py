"""The read schedule of one bus, and what becomes of each read's answer.

Healthy devices are read with the planner's merged requests, each at its fixed rate; a device in
backoff is left out of them and read alone as its probe at its retry time; a unit in backoff gets
one probe, whichever of its reads comes due first.  A merged read answered with an exception is
split per device, so one bad sub-unit goes to backoff and its neighbours stay merged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.modbus.health import Health
from drivers.modbus.model import Reading
from drivers.modbus.planner import Part, ReadRequest, device_ranges, plan
from drivers.modbus.profile import Table, decode
from drivers.modbus.state import BusContext
from drivers.modbus.transport import GATEWAY_EXCEPTIONS, DeviceException, Disconnected, Garbage, Timeout

log = logging.getLogger(__name__)

IDLE_WAKE_S = 1.0  # the poll loop looks at the schedule at least this often

Read = Callable[[ReadRequest, int], Awaitable[list[int]]]
"""One read transaction on the bus, with up to this many attempts."""


@dataclass(eq=False)
class Poll:
    request: ReadRequest
    due: float
    queued: bool = False
    cancelled: bool = False
    probe_for: str | None = None  # a device in backoff: this solo read is its probe

    def take(self, now: float) -> None:
        """Mark it queued and move its due time to the next slot."""
        self.queued = True
        period = self.request.poll_s
        # Fixed rate; catch up at most one missed slot so an outage never causes a burst.
        self.due = max(self.due + period, now - period) if self.probe_for is None else math.inf


class Poller:
    """Plans, schedules and runs the reads of one bus's devices; delivers their readings."""

    def __init__(self, ctx: BusContext, health: Health, read: Read, *, retries: int,
                 lost: Callable[[], None], wake: Callable[[], None]) -> None:
        self._ctx = ctx
        self._devices = ctx.devices
        self._health = health
        self._read = read
        self._retries = retries
        self._lost = lost  # the connection went away
        self._wake = wake  # the schedule changed
        self.polls: dict[tuple[int, Table, int, int], Poll] = {}
        self.probes: dict[str, Poll] = {}
        self._anchors: dict[str, tuple[int, Table, int, int]] = {}  # the read that times a device's period
        self.rejected = 0

    @property
    def plan(self) -> list[ReadRequest]:
        """The merged reads of one cycle, as now scheduled (devices in backoff excluded)."""
        return [p.request for p in self.polls.values()]

    def replan(self) -> None:
        now = self._ctx.now()
        healthy = [d.spec for d in self._devices.values() if d.backoff is None]
        sick = [d for d in self._devices.values() if d.backoff is not None]
        avoid = [r for d in sick for r in device_ranges(d.spec)]
        solo = {d.spec.device_id for d in self._devices.values() if d.solo}
        old = self.polls
        self.polls = {}
        for request in plan(healthy, avoid=avoid, solo=solo):
            kept = old.pop(request.key, None)
            if kept is not None and kept.request.parts == request.parts:
                self.polls[request.key] = kept
            else:
                self.polls[request.key] = Poll(request, due=now)
        for gone in old.values():
            gone.cancelled = True
        self._anchors = {}
        for poll in self.polls.values():
            for dev_id in poll.request.device_ids:
                self._anchors.setdefault(dev_id, poll.request.key)
        for dev in sick:
            dev_id = dev.spec.device_id
            assert dev.backoff is not None
            if dev_id not in self.probes or self.probes[dev_id].cancelled:
                first = plan([dev.spec])[0]
                self.probes[dev_id] = Poll(first, due=dev.backoff.retry_at, probe_for=dev_id)
            else:
                self.probes[dev_id].due = dev.backoff.retry_at
        for dev_id in [k for k in self.probes if self._devices[k].backoff is None]:
            self.probes.pop(dev_id).cancelled = True
        self._wake()

    def due(self, now: float) -> tuple[list[Poll], float]:
        """The reads to queue now (taken: marked queued, next slot set), and when to look again."""
        ready: list[Poll] = []
        next_at = now + IDLE_WAKE_S
        for poll in [*self.polls.values(), *self.probes.values()]:
            if poll.queued:
                continue
            unit = poll.request.unit
            backoff = self._health.units.get(unit)
            if backoff is not None:
                if unit in self._health.probing:
                    continue
                if now < backoff.retry_at:
                    next_at = min(next_at, backoff.retry_at)
                    continue
                self._health.probing.add(unit)  # one probe per dead unit, whichever read comes first
            elif poll.due > now:
                next_at = min(next_at, poll.due)
                continue
            poll.take(now)
            ready.append(poll)
        return ready, next_at

    async def run(self, poll: Poll) -> None:
        """Read `poll` and account for the answer: readings, health, backoff."""
        health = self._health
        unit = poll.request.unit
        try:
            if poll.cancelled:
                health.probing.discard(unit)  # this may have been the unit's probe; let another one go
                return
            probing = poll.probe_for is not None or unit in health.units
            try:
                data = await self._read(poll.request, 1 if probing else 1 + self._retries)
            except DeviceException as exc:
                health.unit_ok(unit)
                if exc.code in GATEWAY_EXCEPTIONS:
                    health.unit_failed(unit, f"gateway exception {exc.code}")
                elif len(poll.request.device_ids) > 1:
                    await self._split(poll.request, exc)
                else:
                    health.device_failed(poll.request.device_ids[0], f"exception code {exc.code}")
                    self.replan()
            except (Timeout, Garbage) as exc:
                health.unit_failed(unit, exc.kind)
            except Disconnected:
                self._lost()
            else:
                health.unit_ok(unit)
                if poll.probe_for is not None and health.device_recovered(poll.probe_for):
                    self.replan()
                self.deliver(poll.request, data)
        finally:
            poll.queued = False
            if poll.probe_for is not None:
                sick = self._devices[poll.probe_for].backoff
                poll.due = sick.retry_at if sick is not None else math.inf
            self._wake()

    async def _split(self, request: ReadRequest, exc: DeviceException) -> None:
        """A merged read got an exception: read each device alone to find the culprit."""
        failed = []
        try:
            for dev_id in request.device_ids:
                fields = {p.point.field for p in request.parts if p.device_id == dev_id}
                for solo in plan([self._devices[dev_id].spec], fields=fields):
                    try:
                        data = await self._read(solo, 1 + self._retries)
                    except DeviceException as sub:
                        failed.append(dev_id)
                        self._health.device_failed(dev_id, f"exception code {sub.code}")
                        break
                    self.deliver(solo, data)
            if not failed:
                log.warning("bus %s: read %s failed (%s) only when merged; its devices are read alone from now on",
                            self._ctx.bus_id, request.key, exc)
                for dev_id in request.device_ids:
                    self._devices[dev_id].solo = True
        except (Timeout, Garbage) as sub:
            self._health.unit_failed(request.unit, sub.kind)
        except Disconnected:
            self._lost()
        finally:
            self.replan()

    def deliver(self, request: ReadRequest, data: Sequence[int]) -> None:
        """Decode an answer into each device's values and hand a Reading per device to the sink."""
        ctx = self._ctx
        ts, now = ctx.clock.time(), ctx.now()
        by_device: dict[str, list[Part]] = {}
        for part in request.parts:
            by_device.setdefault(part.device_id, []).append(part)
        for dev_id, parts in by_device.items():
            dev = self._devices[dev_id]
            values: dict[str, Any] = {}
            rejected: dict[str, str] = {}
            for part in parts:
                words = request.words(part, data)
                for i, word in enumerate(words):
                    ctx.raw[(request.unit, request.table, part.address + i)] = word
                result = decode(part.point, words)
                if result.rejected is None:
                    values[part.point.field] = result.value
                    continue
                reason = result.rejected.value
                rejected[part.point.field] = reason
                dev.rejected[part.point.field] += 1
                self.rejected += 1
                if part.point.field not in dev.warned:
                    dev.warned.add(part.point.field)
                    log.warning("device %s: %s rejected (%s, raw %s); warning once", dev_id, part.point.field,
                                reason, list(words))
            dev.values.update(values)
            for name in rejected:
                dev.values.pop(name, None)
            dev.last_ok = ts
            if self._anchors.get(dev_id) == request.key:
                if dev.last_poll is not None:
                    dev.intervals.append(now - dev.last_poll)
                    dev.period.observe(now - dev.last_poll)
                dev.last_poll = now
            self._health.answered(dev, request.unit)
            ctx.sink.on_reading(Reading(dev_id, ts, values, rejected))

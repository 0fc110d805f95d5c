"""Modbus bus engine: one scheduler per bus, one transaction in flight, writes before polls.

`ModbusBus` owns one line (an RTU port or one TCP connection) and its devices.  Its loops run in
one TaskGroup: `connect` (reconnects with jittered backoff), `poll` (puts due reads on the queue;
a read that is still queued is not queued again) and `io` (runs the queue, writes first).  A unit
that times out or answers garbage backs off as a whole and is probed alone at its retry time; a
merged read answered with an exception is split per device, so one bad sub-unit goes to backoff
and its neighbours stay merged.  `ModbusEngine` routes device ids to their buses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar

from drivers.modbus import transport
from drivers.modbus.planner import DeviceSpec, Part, ReadRequest, device_ranges, plan
from drivers.modbus.profile import Point, Profile, Table, decode, encode, load_profile
from drivers.modbus.transport import (
    GATEWAY_EXCEPTIONS,
    DeviceException,
    Disconnected,
    Garbage,
    Timeout,
    TransportError,
)
from drivers.modbus.waveshare import FlashRequest, FlashResponse, flash_steps
from edge.core.clock import Clock, SystemClock
from edge.core.config import Config, RtuBus, TcpBus

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_BASE_S = 1.0  # first retry of a failing unit or device
BACKOFF_MAX_S = 300.0  # a dead device is still probed every ~5 min
BACKOFF_JITTER = 0.2  # +-20 %, so devices that failed together do not retry together
RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 30.0
CONNECT_CHECK_S = 1.0  # how often the connect loop notices a transport that closed by itself
IDLE_WAKE_S = 1.0
STOP_RECANCEL_S = 0.5
STOP_RECANCEL_TRIES = 20
VERIFY_ATTEMPTS = 3  # a device may apply a write a moment after acknowledging it
VERIFY_DELAY_S = 0.2
PERIOD_WINDOW = 1024  # poll intervals kept per device for the jitter stats
WRITE_PRIORITY = 0
POLL_PRIORITY = 1

WriteErrorCode = Literal["device_offline", "write_failed", "out_of_range", "bad_request"]


@dataclass(frozen=True, slots=True)
class Reading:
    """Fields read from one device by one transaction (merge into the device's state)."""

    device_id: str
    ts: float
    values: Mapping[str, Any]
    rejected: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """A device went online or offline (reported on transitions only)."""

    device_id: str
    online: bool
    reason: str | None
    ts: float


class Sink(Protocol):
    """Receives the engine's output; called from the bus loop, so it must not block."""

    def on_reading(self, reading: Reading) -> None: ...

    def on_health(self, health: DeviceHealth) -> None: ...


class WriteError(Exception):
    """A write or flash was not carried out; `code` is the CONTRACT result code."""

    def __init__(self, code: WriteErrorCode, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class _Backoff:
    """Exponential backoff with jitter for one failing unit or device."""

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.probing = False

    def fail(self, now: float, rng: random.Random) -> float:
        self.failures += 1
        self.probing = False
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(self.failures - 1, 30))
        delay *= 1 + rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
        self.retry_at = now + delay
        return delay


@dataclass(eq=False)
class _Poll:
    request: ReadRequest
    due: float
    queued: bool = False
    cancelled: bool = False
    probe_for: str | None = None  # a device in backoff: this solo read is its probe


@dataclass(eq=False)
class _Device:
    spec: DeviceSpec
    online: bool | None = None
    reason: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    last_ok: float | None = None
    last_poll: float | None = None
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=PERIOD_WINDOW))
    rejected: Counter[str] = field(default_factory=Counter)
    warned: set[str] = field(default_factory=set)
    backoff: _Backoff | None = None
    solo: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _period_stats(intervals: Sequence[float]) -> dict[str, float | int]:
    if not intervals:
        return {"n": 0}
    s = sorted(intervals)
    return {"n": len(s), "mean": sum(s) / len(s), "p50": s[len(s) // 2],
            "p99": s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)], "max": s[-1]}


def _same(point: Point, got: Any, wanted: Any) -> bool:
    if point.enum is not None or point.datatype == "bool" or point.boolean:
        return bool(got == wanted) if point.enum is not None else bool(got) == bool(wanted)
    if got is None:
        return False
    tolerance = abs(point.scale) / 2 if point.datatype != "float32" else abs(float(wanted)) * 1e-6
    return bool(abs(got - wanted) <= tolerance + 1e-9)


class ModbusBus:
    """Polls, writes and flashes the devices of one bus; an async context manager."""

    def __init__(self, bus: TcpBus | RtuBus, devices: Iterable[DeviceSpec], sink: Sink, *,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.bus = bus
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._devices = {spec.device_id: _Device(spec) for spec in devices}
        self._unit_backoff: dict[int, _Backoff] = {}
        self._polls: dict[tuple[int, Table, int, int], _Poll] = {}
        self._probes: dict[str, _Poll] = {}
        self._anchors: dict[str, tuple[int, Table, int, int]] = {}
        self._raw: dict[tuple[int, Table, int], int] = {}
        # asyncio primitives bind to a loop lazily (3.10+), so they can be made here.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Callable[[], Awaitable[None]]]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._client: transport.Client | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self._started = 0.0
        self._counts: Counter[str] = Counter()
        self._max_queue = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> ModbusBus:
        self._client = transport.make_client(self.bus, self._timeout(self._devices))
        if any(d.spec.profile.flash for d in self._devices.values()):
            self._client.register(FlashResponse)
        self._started = asyncio.get_running_loop().time()
        self._replan()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        name = f"modbus:{self.bus.id}"
        self._tasks = [self._tg.create_task(self._connect_loop(), name=f"{name}:connect"),
                       self._tg.create_task(self._poll_loop(), name=f"{name}:poll"),
                       self._tg.create_task(self._io_loop(), name=f"{name}:io")]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        # Python 3.11's wait_for (inside pymodbus) can swallow a cancel that lands as an answer
        # arrives; cancel again whatever is still running rather than hang the daemon's exit.
        for _ in range(STOP_RECANCEL_TRIES):
            _done, running = await asyncio.wait(self._tasks, timeout=STOP_RECANCEL_S)
            if not running:
                break
            for task in running:
                task.cancel()
        try:
            if self._tg is not None:
                # The body's own exception propagates unwrapped; only a crashed loop makes a group.
                await self._tg.__aexit__(None, None, None)
        finally:
            for fut in self._pending:
                if not fut.done():
                    fut.set_exception(WriteError("device_offline", f"bus {self.bus.id} stopped"))
            if self._client is not None:
                self._client.close()

    @property
    def device_ids(self) -> list[str]:
        return list(self._devices)

    def spec(self, device_id: str) -> DeviceSpec:
        return self._devices[device_id].spec

    @property
    def plan(self) -> list[ReadRequest]:
        """The merged reads of one cycle, as now scheduled (devices in backoff excluded)."""
        return [p.request for p in self._polls.values()]

    def latest(self, device_id: str) -> dict[str, Any]:
        """Latest accepted value of each field of a device."""
        return dict(self._devices[device_id].values)

    def online(self, device_id: str) -> bool:
        dev = self._devices[device_id]
        unit_down = dev.spec.unit in self._unit_backoff
        return bool(dev.online) and dev.backoff is None and not unit_down and self._is_connected()

    # -- planning --------------------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def _cli(self) -> transport.Client:
        if self._client is None:
            raise RuntimeError(f"bus {self.bus.id} is not running (use `async with`)")
        return self._client

    def _replan(self) -> None:
        now = self._now()
        healthy = [d.spec for d in self._devices.values() if d.backoff is None]
        sick = [d for d in self._devices.values() if d.backoff is not None]
        avoid = [r for d in sick for r in device_ranges(d.spec)]
        solo = {d.spec.device_id for d in self._devices.values() if d.solo}
        old = self._polls
        self._polls = {}
        for request in plan(healthy, avoid=avoid, solo=solo):
            kept = old.pop(request.key, None)
            if kept is not None and kept.request.parts == request.parts:
                self._polls[request.key] = kept
            else:
                self._polls[request.key] = _Poll(request, due=now)
        for gone in old.values():
            gone.cancelled = True
        self._anchors = {}
        for poll in self._polls.values():
            for dev_id in poll.request.device_ids:
                self._anchors.setdefault(dev_id, poll.request.key)
        for dev in sick:
            dev_id = dev.spec.device_id
            assert dev.backoff is not None
            if dev_id not in self._probes or self._probes[dev_id].cancelled:
                first = plan([dev.spec])[0]
                self._probes[dev_id] = _Poll(first, due=dev.backoff.retry_at, probe_for=dev_id)
            else:
                self._probes[dev_id].due = dev.backoff.retry_at
        for dev_id in [k for k in self._probes if self._devices[k].backoff is None]:
            self._probes.pop(dev_id).cancelled = True
        self._wake.set()

    # -- loops -----------------------------------------------------------------------------------
    def _is_connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def _connect_loop(self) -> None:
        client = self._cli
        delay = RECONNECT_BASE_S
        while True:
            if self._is_connected():
                self._connected.set()
                delay = RECONNECT_BASE_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CONNECT_CHECK_S):
                        await self._lost.wait()
                self._lost.clear()
                continue
            self._connected.clear()
            if await transport.connect(client):
                log.info("bus %s connected", self.bus.id)
                self._counts["connects"] += 1
                self._connected.set()
                self._wake.set()
                continue
            self._counts["connect_failures"] += 1
            self._all_offline("connection")
            await asyncio.sleep(delay * (1 + self._rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)))
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _poll_loop(self) -> None:
        while True:
            await self._connected.wait()
            self._wake.clear()
            now = self._now()
            next_at = now + IDLE_WAKE_S
            for poll in [*self._polls.values(), *self._probes.values()]:
                if poll.queued:
                    continue
                unit = self._unit_backoff.get(poll.request.unit)
                if unit is not None:
                    if unit.probing:
                        continue
                    if now < unit.retry_at:
                        next_at = min(next_at, unit.retry_at)
                        continue
                    unit.probing = True  # one probe per dead unit, whichever read comes first
                elif poll.due > now:
                    next_at = min(next_at, poll.due)
                    continue
                self._enqueue_poll(poll, now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - self._now())):
                    await self._wake.wait()

    def _enqueue_poll(self, poll: _Poll, now: float) -> None:
        poll.queued = True
        period = poll.request.poll_s
        # Fixed rate; catch up at most one missed slot so an outage never causes a burst.
        poll.due = max(poll.due + period, now - period) if poll.probe_for is None else math.inf
        self._queue.put_nowait((POLL_PRIORITY, next(self._seq), lambda: self._run_poll(poll)))
        self._max_queue = max(self._max_queue, self._queue.qsize())

    async def _io_loop(self) -> None:
        me = asyncio.current_task()
        while True:
            _prio, _seq, job = await self._queue.get()
            await job()
            # Python 3.11's asyncio.wait_for (inside pymodbus' execute) swallows a cancel that lands
            # just as the answer arrives; without this check the bus would never stop.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError

    async def _submit(self, fn: Callable[[transport.Client], Awaitable[T]]) -> T:
        """Run `fn` with the bus to itself, ahead of every queued poll."""
        client = self._cli
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.add(fut)

        async def job() -> None:
            if fut.done():  # the caller gave up
                return
            try:
                result = await fn(client)
            except Exception as exc:  # handed to the caller, never kills the io loop
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(result)

        self._queue.put_nowait((WRITE_PRIORITY, next(self._seq), job))
        try:
            return await fut
        finally:
            self._pending.discard(fut)

    # -- transactions ----------------------------------------------------------------------------
    def _timeout(self, device_ids: Iterable[str]) -> float:
        return max((self._devices[d].spec.timeout_s or self.bus.timeout_s for d in device_ids),
                   default=self.bus.timeout_s)

    async def _transact(self, fn: Callable[[], Awaitable[T]], attempts: int) -> T:
        """One transaction, retried on timeouts and garbage; counts everything."""
        for attempt in range(attempts):
            self._counts["requests"] += 1
            try:
                return await fn()
            except TransportError as exc:
                self._counts[f"error_{exc.kind}"] += 1
                if isinstance(exc, DeviceException | Disconnected) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def _read(self, request: ReadRequest, attempts: int) -> list[int]:
        client = self._cli
        timeout = self._timeout(request.device_ids)
        return await self._transact(lambda: transport.read(client, request.unit, request.table, request.address,
                                                           request.count, timeout), attempts)

    async def _read_with(self, request: ReadRequest, client: transport.Client) -> list[int]:
        del client  # _submit hands the client over; _read uses the same one
        return await self._read(request, 1 + self.bus.retries)

    async def _run_poll(self, poll: _Poll) -> None:
        try:
            if poll.cancelled:
                unit = self._unit_backoff.get(poll.request.unit)
                if unit is not None:
                    unit.probing = False  # this may have been the unit's probe; let another one go
                return
            probing = poll.probe_for is not None or poll.request.unit in self._unit_backoff
            try:
                data = await self._read(poll.request, 1 if probing else 1 + self.bus.retries)
            except DeviceException as exc:
                self._unit_ok(poll.request.unit)
                if exc.code in GATEWAY_EXCEPTIONS:
                    self._unit_failed(poll.request.unit, f"gateway exception {exc.code}")
                elif len(poll.request.device_ids) > 1:
                    await self._split(poll.request, exc)
                else:
                    self._device_failed(poll.request.device_ids[0], f"exception code {exc.code}")
            except (Timeout, Garbage) as exc:
                self._unit_failed(poll.request.unit, exc.kind)
            except Disconnected:
                self._lost_connection()
            else:
                self._unit_ok(poll.request.unit)
                if poll.probe_for is not None:
                    self._device_recovered(poll.probe_for)
                self._deliver(poll.request, data)
        finally:
            poll.queued = False
            if poll.probe_for is not None:
                sick = self._devices[poll.probe_for].backoff
                poll.due = sick.retry_at if sick is not None else math.inf
            self._wake.set()

    async def _split(self, request: ReadRequest, exc: DeviceException) -> None:
        """A merged read got an exception: read each device alone to find the culprit."""
        failed = []
        try:
            for dev_id in request.device_ids:
                fields = {p.point.field for p in request.parts if p.device_id == dev_id}
                for solo in plan([self._devices[dev_id].spec], fields=fields):
                    try:
                        data = await self._read(solo, 1 + self.bus.retries)
                    except DeviceException as sub:
                        failed.append(dev_id)
                        self._device_failed(dev_id, f"exception code {sub.code}", replan=False)
                        break
                    self._deliver(solo, data)
            if not failed:
                log.warning("bus %s: read %s failed (%s) only when merged; its devices are read alone from now on",
                            self.bus.id, request.key, exc)
                for dev_id in request.device_ids:
                    self._devices[dev_id].solo = True
        except (Timeout, Garbage) as sub:
            self._unit_failed(request.unit, sub.kind)
        except Disconnected:
            self._lost_connection()
        finally:
            self._replan()

    # -- health ----------------------------------------------------------------------------------
    def _set_health(self, dev: _Device, online: bool, reason: str | None) -> None:
        if dev.online == online:  # transitions only; a new reason while offline is not news
            dev.reason = reason
            return
        dev.online, dev.reason = online, reason
        self._emit(functools.partial(self.sink.on_health,
                                     DeviceHealth(dev.spec.device_id, online, reason, self.clock.time())))

    def _emit(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:  # a faulty sink must not stop the bus
            log.exception("bus %s: sink failed", self.bus.id)

    def _all_offline(self, reason: str) -> None:
        for dev in self._devices.values():
            if dev.online is not False:
                self._set_health(dev, False, reason)

    def _lost_connection(self) -> None:
        if self._connected.is_set():  # queued reads fail one after another; say it once
            log.warning("bus %s: connection lost", self.bus.id)
        if self._client is not None:
            self._client.close()
        self._connected.clear()
        self._lost.set()
        self._all_offline("connection")

    def _unit_ok(self, unit: int) -> None:
        if self._unit_backoff.pop(unit, None) is not None:
            log.info("bus %s: unit %d answers again", self.bus.id, unit)

    def _unit_failed(self, unit: int, reason: str) -> None:
        state = self._unit_backoff.setdefault(unit, _Backoff())
        delay = state.fail(self._now(), self._rng)
        if state.failures == 1:
            log.warning("bus %s: unit %d %s; retrying with backoff", self.bus.id, unit, reason)
        log.debug("bus %s: unit %d next probe in %.1f s", self.bus.id, unit, delay)
        for dev in self._devices.values():
            if dev.spec.unit == unit:
                self._set_health(dev, False, reason)

    def _device_failed(self, device_id: str, reason: str, *, replan: bool = True) -> None:
        dev = self._devices[device_id]
        dev.backoff = dev.backoff or _Backoff()
        dev.backoff.fail(self._now(), self._rng)
        if dev.backoff.failures == 1:
            log.warning("bus %s: device %s %s; retrying with backoff", self.bus.id, device_id, reason)
        self._set_health(dev, False, reason)
        if replan:
            self._replan()

    def _device_recovered(self, device_id: str) -> None:
        dev = self._devices[device_id]
        if dev.backoff is not None:
            dev.backoff = None
            self._replan()

    # -- readings --------------------------------------------------------------------------------
    def _deliver(self, request: ReadRequest, data: Sequence[int]) -> None:
        ts, now = self.clock.time(), self._now()
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
                    self._raw[(request.unit, request.table, part.address + i)] = word
                result = decode(part.point, words)
                if result.rejected is None:
                    values[part.point.field] = result.value
                    continue
                reason = result.rejected.value
                rejected[part.point.field] = reason
                dev.rejected[part.point.field] += 1
                self._counts["rejected"] += 1
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
                dev.last_poll = now
            if dev.backoff is None and request.unit not in self._unit_backoff:
                self._set_health(dev, True, None)
            self._emit(functools.partial(self.sink.on_reading, Reading(dev_id, ts, values, rejected)))

    # -- writes ----------------------------------------------------------------------------------
    def _device(self, device_id: str) -> _Device:
        try:
            return self._devices[device_id]
        except KeyError:
            raise WriteError("bad_request", f"unknown device {device_id!r} on bus {self.bus.id}") from None

    def _points(self, dev: _Device, values: Mapping[str, Any]) -> list[Point]:
        if not values:
            raise WriteError("bad_request", "nothing to write")
        points = []
        for name, value in values.items():
            try:
                point = dev.spec.profile.point(name)
            except KeyError:
                raise WriteError("bad_request", f"{dev.spec.device_id} has no field {name!r}") from None
            if not point.writable:
                raise WriteError("bad_request", f"{dev.spec.device_id}.{name} is read-only")
            try:
                encode(point, value)
            except (ValueError, TypeError) as exc:
                raise WriteError("out_of_range", str(exc)) from None
            points.append(point)
        return points

    def _require_online(self, dev: _Device) -> None:
        if not self.online(dev.spec.device_id):
            raise WriteError("device_offline", f"{dev.spec.device_id} is offline ({dev.reason or 'not read yet'})")

    def _compose(self, dev: _Device, points: Sequence[Point], values: Mapping[str, Any]
                 ) -> list[tuple[Table, int, list[int], bool]]:
        """(table, address, words, multiple) writes that store `values`; bit fields keep their neighbours."""
        spec, profile = dev.spec, dev.spec.profile
        words: dict[tuple[Table, int], int] = {}
        whole: dict[str, tuple[Table, int, int]] = {}

        def current(table: Table, address: int, point: Point) -> int:
            if (table, address) in words:
                return words[(table, address)]
            read_table = profile.blocks[point.block].table
            raw = self._raw.get((spec.unit, table, address))
            if raw is None:  # written elsewhere than read (Daikin): start from the register we read
                raw = self._raw.get((spec.unit, read_table, spec.read_address(point)), 0)
            return raw

        for point in points:
            block = point.write_block or point.block
            if profile.blocks[block].write_whole:
                blk = profile.blocks[block]
                whole[block] = (blk.table, spec.address(block, 0), blk.size)
        for block, (table, base, size) in whole.items():
            for i in range(size):
                words[(table, base + i)] = self._raw.get((spec.unit, table, base + i), 0)
            for point in profile.points:
                if not point.writable or (point.write_block or point.block) != block or point.field in values:
                    continue
                if point.field not in dev.values:
                    raise WriteError("write_failed",
                                     f"{spec.device_id}.{point.field} unknown; cannot rewrite its block")
                self._put(words, spec, point, dev.values[point.field])
        for point in points:
            table, address = spec.write_target(point)
            if (table, address) not in words:
                words[(table, address)] = current(table, address, point)
            self._put(words, spec, point, values[point.field])
        out: list[tuple[Table, int, list[int], bool]] = []
        done: set[tuple[Table, int]] = set()
        for table, base, size in whole.values():
            out.append((table, base, [words[(table, base + i)] for i in range(size)], True))
            done.update((table, base + i) for i in range(size))
        for point in points:
            table, address = spec.write_target(point)
            if (table, address) in done:
                continue
            n = point.words
            out.append((table, address, [words[(table, address + i)] for i in range(n)], n > 1))
            done.update((table, address + i) for i in range(n))
        return out

    @staticmethod
    def _put(words: dict[tuple[Table, int], int], spec: DeviceSpec, point: Point, value: Any) -> None:
        table, address = spec.write_target(point)
        encoded = encode(point, value, words.get((table, address), 0))
        for i, word in enumerate(encoded):
            words[(table, address + i)] = word

    async def write(self, device_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Write fields, read them back and return the verified values (raises WriteError)."""
        dev = self._device(device_id)
        points = self._points(dev, values)
        self._require_online(dev)
        spec = dev.spec
        timeout = self._timeout([device_id])
        async with dev.lock:
            writes = self._compose(dev, points, values)

            async def run(client: transport.Client) -> None:
                for table, address, words, multiple in writes:
                    await self._transact(functools.partial(transport.write, client, spec.unit, table, address,
                                                           words, timeout, multiple=multiple), 1)

            try:
                await self._submit(run)
                self._counts["writes"] += 1
            except DeviceException as exc:
                raise WriteError("write_failed", f"{device_id}: device refused the write ({exc})") from exc
            except TransportError as exc:
                raise WriteError("device_offline", f"{device_id}: {exc.kind} while writing") from exc
            return await self._verify(dev, points, values)

    async def _verify(self, dev: _Device, points: Sequence[Point], values: Mapping[str, Any]) -> dict[str, Any]:
        fields = [p.field for p in points]
        got: dict[str, Any] = {}
        for attempt in range(VERIFY_ATTEMPTS):
            if attempt:
                await asyncio.sleep(VERIFY_DELAY_S)
            got = {}
            for request in plan([dev.spec], fields=fields):
                try:
                    data = await self._submit(functools.partial(self._read_with, request))
                except TransportError as exc:
                    raise WriteError("write_failed", f"{dev.spec.device_id}: read-back failed ({exc})") from exc
                for part in request.parts:
                    got[part.point.field] = decode(part.point, request.words(part, data)).value
                self._deliver(request, data)
            if all(_same(p, got.get(p.field), values[p.field]) for p in points):
                return {f: got[f] for f in fields}
        self._counts["verify_failures"] += 1
        wrong = {f: got.get(f) for f in fields if not _same(dev.spec.profile.point(f), got.get(f), values[f])}
        raise WriteError("write_failed", f"{dev.spec.device_id}: read back {wrong} after writing {dict(values)}")

    async def flash(self, device_id: str, channel: int, *, on: bool = True, seconds: float = 5.0) -> None:
        """Waveshare timed flash: the board turns `channel` back after `seconds` by itself."""
        dev = self._device(device_id)
        profile = dev.spec.profile
        if not profile.flash:
            raise WriteError("bad_request", f"{device_id} ({profile.name}) has no timed flash")
        if not 0 <= channel < (profile.channels or 0):
            raise WriteError("out_of_range", f"{device_id} has no channel {channel}")
        try:
            steps = flash_steps(seconds)
        except ValueError as exc:
            raise WriteError("out_of_range", str(exc)) from None
        self._require_online(dev)
        request = FlashRequest(relay=channel, on=on, steps=steps, dev_id=dev.spec.unit)
        timeout = self._timeout([device_id])

        async def run(client: transport.Client) -> Any:
            return await self._transact(lambda: transport.execute(client, request, timeout), 1)

        try:
            response = await self._submit(run)
        except DeviceException as exc:
            raise WriteError("write_failed", f"{device_id}: flash refused ({exc})") from exc
        except TransportError as exc:
            raise WriteError("device_offline", f"{device_id}: {exc.kind} during flash") from exc
        if not isinstance(response, FlashResponse) or not response.echoes(request):
            raise WriteError("write_failed", f"{device_id}: flash echo does not match the request")
        self._counts["flashes"] += 1

    # -- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and per-device health and poll-period statistics (JSON-ready)."""
        elapsed = max(1e-9, self._now() - self._started)
        errors = {k.removeprefix("error_"): v for k, v in self._counts.items() if k.startswith("error_")}
        return {
            "bus": self.bus.id,
            "connected": self._is_connected(),
            "uptime_s": elapsed,
            "requests": self._counts["requests"],
            "requests_per_s": self._counts["requests"] / elapsed,
            "errors": errors,
            "writes": self._counts["writes"],
            "flashes": self._counts["flashes"],
            "verify_failures": self._counts["verify_failures"],
            "rejected": self._counts["rejected"],
            "connects": self._counts["connects"],
            "queue": self._queue.qsize(),
            "max_queue": self._max_queue,
            "requests_per_cycle": len(self._polls),
            "units_in_backoff": sorted(self._unit_backoff),
            "devices": {
                dev_id: {
                    "online": self.online(dev_id),
                    "reason": dev.reason,
                    "last_ok": dev.last_ok,
                    "in_backoff": dev.backoff is not None,
                    "poll_period_s": _period_stats(dev.intervals),
                    "rejected": dict(dev.rejected),
                }
                for dev_id, dev in self._devices.items()
            },
        }


class ModbusEngine:
    """Every bus of a site; routes writes and flashes to the bus that owns the device."""

    def __init__(self, buses: Iterable[tuple[TcpBus | RtuBus, Sequence[DeviceSpec]]], sink: Sink, *,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.buses = [ModbusBus(bus, specs, sink, clock=clock, rng=rng) for bus, specs in buses]
        self._route = {dev_id: b for b in self.buses for dev_id in b.device_ids}
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_config(cls, config: Config, sink: Sink, *, clock: Clock | None = None) -> ModbusEngine:
        """Buses and devices of a validated site config (profiles loaded from its profile_dirs)."""
        specs: dict[str, list[DeviceSpec]] = {b.id: [] for b in config.buses}
        for dev in config.modbus_devices():
            profile = load_profile(dev.profile, config.profile_dirs)
            specs[dev.bus].append(DeviceSpec(dev.id, profile, dev.unit, dev.index, dev.offset,
                                             dev.poll_period_s, dev.timeout_s))
        return cls([(b, specs[b.id]) for b in config.buses if specs[b.id]], sink, clock=clock)

    def profile(self, device_id: str) -> Profile:
        """The register map a device is driven by."""
        return self.bus_of(device_id).spec(device_id).profile

    async def __aenter__(self) -> ModbusEngine:
        async with contextlib.AsyncExitStack() as stack:
            for bus in self.buses:
                await stack.enter_async_context(bus)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    def bus_of(self, device_id: str) -> ModbusBus:
        try:
            return self._route[device_id]
        except KeyError:
            raise WriteError("bad_request", f"unknown Modbus device {device_id!r}") from None

    async def write(self, device_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        return await self.bus_of(device_id).write(device_id, values)

    async def flash(self, device_id: str, channel: int, *, on: bool = True, seconds: float = 5.0) -> None:
        await self.bus_of(device_id).flash(device_id, channel, on=on, seconds=seconds)

    def online(self, device_id: str) -> bool:
        return self.bus_of(device_id).online(device_id)

    def stats(self) -> dict[str, Any]:
        return {b.bus.id: b.stats() for b in self.buses}

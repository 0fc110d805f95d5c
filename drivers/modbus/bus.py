"""One Modbus bus as a scheduler: one transaction in flight, writes before polls, the latest poll wins.

`ModbusBus` owns one line (an RTU port or one TCP connection) and its devices.  Its loops run in
one TaskGroup: `connect` (reconnects with jittered backoff), `poll` (queues the reads the `Poller`
finds due; a read that is still queued is not queued again) and `io` (runs the queue, writes and
pulses first).  Health and backoff live in `health`, the read schedule in `polling`, write
composition in `compose`, read-back in `verify` and the timed pulse in `pulse`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from drivers.modbus import transport
from drivers.modbus.compose import compose, writable_points
from drivers.modbus.health import BACKOFF_JITTER, Health
from drivers.modbus.model import GuardedSink, Sink, WriteError
from drivers.modbus.planner import DeviceSpec, ReadRequest
from drivers.modbus.polling import Poller
from drivers.modbus.pulse import CoilWord, pulse_words
from drivers.modbus.state import BusContext, DeviceState, period_stats
from drivers.modbus.transport import DeviceException, Disconnected, TransportError
from drivers.modbus.verify import NotHeld, verify
from edge.core.backoff import Backoff
from edge.core.clock import Clock, SystemClock
from edge.core.config import RtuBus, TcpBus

log = logging.getLogger(__name__)
T = TypeVar("T")

RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 30.0
CONNECT_CHECK_S = 1.0  # how often the connect loop notices a transport that closed by itself
STOP_RECANCEL_S = 0.5
STOP_RECANCEL_TRIES = 20
WRITE_PRIORITY = 0
POLL_PRIORITY = 1
TURN_S = 5.0  # the poll loop turns at least this often, so the watchdog can tell a live loop from a hung one


class ModbusBus:
    """Polls, writes and pulses the devices of one bus; an async context manager."""

    def __init__(self, bus: TcpBus | RtuBus, devices: Iterable[DeviceSpec], sink: Sink, *,
                 clock: Clock | None = None, rng: random.Random | None = None) -> None:
        self.bus = bus
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._devices = {spec.device_id: DeviceState(spec) for spec in devices}
        # asyncio primitives bind to a loop lazily (3.10+), so they can be made here.
        self._queue: asyncio.PriorityQueue[tuple[int, int, Callable[[], Awaitable[None]]]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        ctx = BusContext(bus.id, self._devices, GuardedSink(sink, bus.id), self.clock, self._now)
        self._raw = ctx.raw
        self._health = Health(ctx, self._rng)
        self._poller = Poller(ctx, self._health, self._read, retries=bus.retries, lost=self._lost_connection,
                              wake=self._wake.set)
        self._client: transport.Client | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Future[Any]] = set()
        self._started = 0.0
        self._counts: Counter[str] = Counter()
        self._max_queue = 0
        self._poll_turn = time.monotonic()
        self._job_since: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> ModbusBus:
        self._client = transport.make_client(self.bus, self._timeout(self._devices))
        if any(d.spec.profile.pulse is not None for d in self._devices.values()):
            self._client.register(CoilWord)
        self._started = asyncio.get_running_loop().time()
        self._poller.replan()
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
        return self._poller.plan

    def latest(self, device_id: str) -> dict[str, Any]:
        """Latest accepted value of each field of a device."""
        return dict(self._devices[device_id].values)

    def online(self, device_id: str) -> bool:
        return self._health.online(device_id) and self._is_connected()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def _cli(self) -> transport.Client:
        if self._client is None:
            raise RuntimeError(f"bus {self.bus.id} is not running (use `async with`)")
        return self._client

    # -- loops -----------------------------------------------------------------------------------
    def _is_connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def _connect_loop(self) -> None:
        client = self._cli
        retry = Backoff(base_s=RECONNECT_BASE_S, max_s=RECONNECT_MAX_S, jitter=BACKOFF_JITTER, rng=self._rng)
        while True:
            if self._is_connected():
                self._connected.set()
                retry.reset()
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
            self._health.all_offline("connection")
            await asyncio.sleep(retry.fail(self._now()))

    async def _poll_loop(self) -> None:
        while True:
            self._poll_turn = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TURN_S):   # a disconnected bus still shows a live loop
                    await self._connected.wait()
            if not self._connected.is_set():
                continue
            self._wake.clear()
            ready, next_at = self._poller.due(self._now())
            for poll in ready:
                self._queue.put_nowait((POLL_PRIORITY, next(self._seq), functools.partial(self._poller.run, poll)))
                self._max_queue = max(self._max_queue, self._queue.qsize())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(TURN_S, max(0.0, next_at - self._now()))):
                    await self._wake.wait()

    def stuck(self, now: float, limit_s: float) -> str | None:
        """Why this bus's loops look hung (for the watchdog), or None while they turn."""
        if now - self._poll_turn > limit_s:
            return f"bus {self.bus.id}: poll loop silent for {now - self._poll_turn:.0f} s"
        if self._job_since is not None and now - self._job_since > limit_s:
            return f"bus {self.bus.id}: one transaction running for {now - self._job_since:.0f} s"
        return None

    async def _io_loop(self) -> None:
        me = asyncio.current_task()
        while True:
            _prio, _seq, job = await self._queue.get()
            self._job_since = time.monotonic()
            try:
                await job()
            finally:
                self._job_since = None
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

    def _lost_connection(self) -> None:
        if self._connected.is_set():  # queued reads fail one after another; say it once
            log.warning("bus %s: connection lost", self.bus.id)
        if self._client is not None:
            self._client.close()
        self._connected.clear()
        self._lost.set()
        self._health.all_offline("connection")

    # -- transactions ----------------------------------------------------------------------------
    def _timeout(self, device_ids: Iterable[str]) -> float:
        return max((self._devices[d].spec.timeout_s or self.bus.timeout_s for d in device_ids),
                   default=self.bus.timeout_s)

    async def _transact(self, fn: Callable[[], Awaitable[T]], attempts: int, devices: Iterable[str] = ()) -> T:
        """One transaction, retried on timeouts and garbage; counts everything, times each attempt."""
        timed = [self._devices[d].latency for d in devices if d in self._devices]
        for attempt in range(attempts):
            self._counts["requests"] += 1
            started = self._now()
            try:
                return await fn()
            except TransportError as exc:
                self._counts[f"error_{exc.kind}"] += 1
                if isinstance(exc, DeviceException | Disconnected) or attempt == attempts - 1:
                    raise
            finally:
                for h in timed:
                    h.observe(self._now() - started)
        raise AssertionError("unreachable")

    async def _read(self, request: ReadRequest, attempts: int) -> list[int]:
        client = self._cli
        timeout = self._timeout(request.device_ids)
        return await self._transact(lambda: transport.read(client, request.unit, request.table, request.address,
                                                           request.count, timeout), attempts, request.device_ids)

    async def _read_with(self, request: ReadRequest, client: transport.Client) -> list[int]:
        del client  # _submit hands the client over; _read uses the same one
        return await self._read(request, 1 + self.bus.retries)

    async def _read_now(self, request: ReadRequest) -> list[int]:
        """A read ahead of the polls (a write's read-back), delivered like a poll's."""
        data = await self._submit(functools.partial(self._read_with, request))
        self._poller.deliver(request, data)
        return data

    # -- writes and pulses -----------------------------------------------------------------------
    def _device(self, device_id: str) -> DeviceState:
        try:
            return self._devices[device_id]
        except KeyError:
            raise WriteError("bad_request", f"unknown device {device_id!r} on bus {self.bus.id}") from None

    def _require_online(self, dev: DeviceState) -> None:
        if not self.online(dev.spec.device_id):
            raise WriteError("device_offline", f"{dev.spec.device_id} is offline ({dev.reason or 'not read yet'})")

    async def write(self, device_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Write fields, read them back and return the verified values (raises WriteError)."""
        dev = self._device(device_id)
        spec = dev.spec
        points = writable_points(spec, values)
        self._require_online(dev)
        timeout = self._timeout([device_id])
        async with dev.lock:
            writes = compose(spec, points, values, self._raw, dev.values)

            async def run(client: transport.Client) -> None:
                for w in writes:
                    await self._transact(functools.partial(transport.write, client, spec.unit, w.table, w.address,
                                                           w.words, timeout, multiple=w.multiple), 1, [device_id])

            try:
                await self._submit(run)
                self._counts["writes"] += 1
            except DeviceException as exc:
                raise WriteError("write_failed", f"{device_id}: device refused the write ({exc})") from exc
            except TransportError as exc:
                raise WriteError("device_offline", f"{device_id}: {exc.kind} while writing") from exc
            try:
                return await verify(spec, points, values, self._read_now)
            except NotHeld:
                self._counts["verify_failures"] += 1
                raise

    async def pulse(self, device_id: str, channel: int, seconds: float, *, on: bool = True) -> None:
        """Switch `channel` on (or off) for `seconds`; the board switches it back by itself (profile `pulse`)."""
        dev = self._device(device_id)
        profile = dev.spec.profile
        if profile.pulse is None:
            raise WriteError("bad_request", f"{device_id} ({profile.name}) declares no timed pulse")
        if not 0 <= channel < (profile.channels or 0):
            raise WriteError("out_of_range", f"{device_id} has no channel {channel}")
        if not on and profile.pulse.off_address is None:
            raise WriteError("bad_request", f"{device_id} ({profile.name}) cannot pulse a channel off")
        try:
            address, value = pulse_words(profile.pulse, channel, seconds, on=on)
        except ValueError as exc:
            raise WriteError("out_of_range", str(exc)) from None
        self._require_online(dev)
        request = CoilWord(address, value, dev_id=dev.spec.unit)
        timeout = self._timeout([device_id])

        async def run(client: transport.Client) -> Any:
            return await self._transact(lambda: transport.execute(client, request, timeout), 1, [device_id])

        try:
            response = await self._submit(run)
        except DeviceException as exc:
            raise WriteError("write_failed", f"{device_id}: pulse refused ({exc})") from exc
        except TransportError as exc:
            raise WriteError("device_offline", f"{device_id}: {exc.kind} during pulse") from exc
        if not isinstance(response, CoilWord) or (response.address, response.value) != (address, value):
            raise WriteError("write_failed", f"{device_id}: pulse echo does not match the request")
        self._counts["pulses"] += 1

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
            "pulses": self._counts["pulses"],
            "verify_failures": self._counts["verify_failures"],
            "rejected": self._poller.rejected,
            "connects": self._counts["connects"],
            "queue": self._queue.qsize(),
            "max_queue": self._max_queue,
            "requests_per_cycle": len(self._poller.polls),
            "units_in_backoff": sorted(self._health.units),
            "devices": {
                dev_id: {
                    "online": self.online(dev_id),
                    "reason": dev.reason,
                    "last_ok": dev.last_ok,
                    "in_backoff": dev.backoff is not None,
                    "poll_period_s": period_stats(dev.intervals),
                    "latency_hist_s": dev.latency.snapshot(),
                    "poll_period_hist_s": dev.period.snapshot(),
                    "rejected": dict(dev.rejected),
                }
                for dev_id, dev in self._devices.items()
            },
        }
